"""BPF links: an attachment of a program to a hook, owned like a file."""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass

from ..errors import LibbpfError
from ._common import OwnedResource, annotate, decode, path_bytes
from .libbpf import BpfLinkInfo, lib

BPF_LINK_TYPE_CGROUP = 3


@dataclass(frozen=True)
class LinkInfo:
    """What the kernel says of a link: its id, its program, and for a cgroup link where."""

    id: int
    type: int
    prog_id: int
    cgroup_id: int  # 0 unless a cgroup link
    attach_type: int


def _link_info(fd: int) -> LinkInfo:
    info = BpfLinkInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size))
    cgroup = info.type == BPF_LINK_TYPE_CGROUP
    return LinkInfo(
        info.id,
        info.type,
        info.prog_id,
        info.cgroup_id if cgroup else 0,
        info.attach_type if cgroup else 0,
    )


def link_info(link_id: int) -> LinkInfo | None:
    """The link with this id, or None if there is none (any more)."""
    try:
        fd = lib.bpf_link_get_fd_by_id(link_id)
    except LibbpfError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    try:
        return _link_info(fd)
    finally:
        os.close(fd)


def link_ids() -> list[int]:
    """Every link id in the kernel (bpf_link_get_next_id)."""
    found, current = [], ctypes.c_uint32(0)
    while True:
        try:
            lib.bpf_link_get_next_id(current.value, ctypes.byref(current))
        except LibbpfError as exc:
            if exc.errno == errno.ENOENT:
                return found
            raise
        found.append(current.value)


def detach_link(link_id: int) -> bool:
    """Detach the link with this id from its hook, whoever holds it; False if it is gone."""
    try:
        fd = lib.bpf_link_get_fd_by_id(link_id)
    except LibbpfError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    try:
        with annotate(f"detaching link {link_id}"):
            lib.bpf_link_detach(fd)
    finally:
        os.close(fd)
    return True


class BpfLink(OwnedResource):
    """An owned bpf_link (from `BpfProgram.attach_cgroup` or `BpfLink.open_pinned`).

    `close()` destroys our handle: the program is detached unless the link is
    pinned (the pin keeps it attached). `detach()` detaches the program from
    its hook even if pinned, then closes. A link that is garbage-collected is
    closed, so keep a reference (or pin it) for as long as the program should
    stay attached.
    """

    def __init__(self, handle, description: str = ""):
        self._handle = handle  # BpfLinkPtr
        self._description = description

    @classmethod
    def open_pinned(cls, path: str | os.PathLike[str]) -> BpfLink:
        """Reopen a link pinned in bpffs (bpf_link__open)."""
        with annotate(f"opening pinned link {os.fspath(path)!r}"):
            handle = lib.bpf_link__open(path_bytes(path))
        return cls(handle, f"pinned at {os.fspath(path)}")

    def _live(self):
        if self._handle is None:
            raise ValueError(f"link {self._description} is closed")
        return self._handle

    @property
    def closed(self) -> bool:
        return self._handle is None

    @property
    def fd(self) -> int:
        return lib.bpf_link__fd(self._live())

    def info(self) -> LinkInfo:
        return _link_info(self.fd)

    @property
    def pin_path(self) -> str | None:
        raw = lib.bpf_link__pin_path(self._live())
        return decode(raw) if raw is not None else None

    def pin(self, path: str | os.PathLike[str]) -> None:
        """Pin in bpffs: the attachment then outlives this handle (and this process)."""
        with annotate(f"pinning link {self._description} at {os.fspath(path)!r}"):
            lib.bpf_link__pin(self._live(), path_bytes(path))

    def unpin(self) -> None:
        with annotate(f"unpinning link {self._description}"):
            lib.bpf_link__unpin(self._live())

    def update_program(self, program) -> None:
        """Swap the attached program for `program` (a loaded BpfProgram) in one
        step (BPF_LINK_UPDATE): the hook never runs neither, nor both."""
        with annotate(f"replacing the program of link {self._description} with {program.name!r}"):
            lib.bpf_link__update_program(self._live(), program._live())

    def detach(self) -> None:
        """Detach the program from its hook (even if pinned), then close the handle."""
        handle = self._live()
        try:
            with annotate(f"detaching link {self._description}"):
                lib.bpf_link__detach(handle)
        finally:
            self.close()

    def close(self) -> None:
        """Destroy the handle (bpf_link__destroy); detaches unless pinned. Idempotent."""
        handle, self._handle = self._handle, None
        if handle is not None:
            with annotate(f"destroying link {self._description}"):
                lib.bpf_link__destroy(handle)

    def __repr__(self) -> str:
        state = "closed" if self._handle is None else "open"
        return f"<BpfLink {self._description} {state}>"
