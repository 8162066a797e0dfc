"""BPF programs, their run statistics, and what is attached to a cgroup."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import LibbpfError
from ._common import annotate, cgroup_fd, decode, with_detail
from .constants import BPF_F_QUERY_EFFECTIVE, BPF_STATS_RUN_TIME, AttachType, ProgType, to_enum
from .libbpf import BpfProgInfo, BpfTestRunOpts, lib
from .links import BpfLink

if TYPE_CHECKING:
    from .object import BpfObject


@dataclass(frozen=True)
class ProgramInfo:
    """What the kernel reports about a loaded program (bpf_obj_get_info_by_fd)."""

    id: int
    name: str
    type: ProgType | int
    tag: str
    run_time_ns: int
    run_cnt: int
    recursion_misses: int
    verified_insns: int
    xlated_prog_len: int
    jited_prog_len: int
    load_time_ns: int  # since boot

    @property
    def stats(self) -> ProgramStats:
        return ProgramStats(self.run_time_ns, self.run_cnt)


@dataclass(frozen=True)
class ProgramStats:
    """Run statistics; zero unless stats are enabled (`enable_run_time_stats`)."""

    run_time_ns: int
    run_cnt: int

    @property
    def avg_ns(self) -> float:
        return self.run_time_ns / self.run_cnt if self.run_cnt else 0.0


def _prog_info(fd: int) -> ProgramInfo:
    info = BpfProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size))
    return ProgramInfo(
        id=info.id,
        name=decode(info.name),
        type=to_enum(ProgType, info.type),
        tag=bytes(info.tag).hex(),
        run_time_ns=info.run_time_ns,
        run_cnt=info.run_cnt,
        recursion_misses=info.recursion_misses,
        verified_insns=info.verified_insns,
        xlated_prog_len=info.xlated_prog_len,
        jited_prog_len=info.jited_prog_len,
        load_time_ns=info.load_time,
    )


def program_info(prog_id: int) -> ProgramInfo:
    """Info of any loaded program by id (e.g. one `query_cgroup` returned)."""
    with annotate(f"program id {prog_id}"):
        fd = lib.bpf_prog_get_fd_by_id(prog_id)
        try:
            return _prog_info(fd)
        finally:
            os.close(fd)


class BpfProgram:
    """One program of a `BpfObject`; valid until the object is closed."""

    def __init__(self, handle, owner: BpfObject):
        self._handle = handle  # BpfProgramPtr
        self._owner = owner

    def _live(self):
        if self._owner.closed:
            raise ValueError("program of a closed BPF object")
        return self._handle

    @property
    def name(self) -> str:
        return decode(lib.bpf_program__name(self._live()))

    @property
    def section(self) -> str:
        return decode(lib.bpf_program__section_name(self._live()))

    @property
    def type(self) -> ProgType | int:
        return to_enum(ProgType, lib.bpf_program__type(self._live()))

    @property
    def expected_attach_type(self) -> AttachType | int:
        return to_enum(AttachType, lib.bpf_program__expected_attach_type(self._live()))

    @property
    def insn_count(self) -> int:
        """Instructions after libbpf's relocations (before the verifier's rewrites)."""
        return lib.bpf_program__insn_cnt(self._live())

    @property
    def autoload(self) -> bool:
        return bool(lib.bpf_program__autoload(self._live()))

    def set_autoload(self, autoload: bool) -> None:
        """Whether load() loads this program; only before load."""
        with annotate(f"program {self.name!r}: autoload can only be set before load()"):
            lib.bpf_program__set_autoload(self._live(), autoload)

    @property
    def fd(self) -> int:
        fd = lib.bpf_program__fd(self._live())
        if fd < 0:
            raise LibbpfError(
                "bpf_program__fd",
                errno.EBADF,
                detail=f"program {self.name!r} is not loaded (not loaded yet, or autoload is off)",
            )
        return fd

    def __repr__(self) -> str:
        try:
            return f"<BpfProgram {self.name!r} SEC({self.section!r})>"
        except ValueError:
            return "<BpfProgram (closed)>"

    # --- kernel state ---------------------------------------------------------

    def info(self) -> ProgramInfo:
        with annotate(f"program {self.name!r}: reading info"):
            return _prog_info(self.fd)

    @property
    def id(self) -> int:
        return self.info().id

    def stats(self) -> ProgramStats:
        """run_time_ns and run_cnt; they only move while stats are enabled."""
        return self.info().stats

    # --- attaching and running ------------------------------------------------------

    def attach_cgroup(self, cgroup: int | str | os.PathLike[str]) -> BpfLink:
        """Attach to a cgroup (an fd, or a path opened here) as a bpf_link.

        The attach type is the program's expected attach type (from its SEC()).
        The caller chooses the cgroup: this layer does not judge whether it is safe.
        """
        target = cgroup if isinstance(cgroup, int) else os.fspath(cgroup)
        with (
            cgroup_fd(cgroup) as fd,
            annotate(f"attaching program {self.name!r} to cgroup {target}"),
        ):
            handle = lib.bpf_program__attach_cgroup(self._live(), fd)
        return BpfLink(handle, f"{self.name} -> cgroup {target}")

    def attach_to_map(self, bpf_map) -> None:
        """Attach an sk_msg (or sk_skb) program to a sockmap/sockhash (bpf_prog_attach with
        the program's expected attach type). It stays attached as long as the map lives."""
        with annotate(f"attaching program {self.name!r} to map {bpf_map.name!r}"):
            lib.bpf_prog_attach(self.fd, bpf_map.fd, int(self.expected_attach_type), 0)

    def test_run(self, ctx_in: bytearray | None = None) -> int:
        """Run a SEC("syscall") program once (BPF_PROG_TEST_RUN); returns its return value.

        Only ctx_in is passed: the kernel writes the context back into `ctx_in`,
        so pass a bytearray to see what the program wrote.
        """
        opts = BpfTestRunOpts(sz=ctypes.sizeof(BpfTestRunOpts))
        keepalive = None
        if ctx_in is not None:
            if not isinstance(ctx_in, bytearray):
                raise TypeError("ctx_in must be a bytearray (the kernel writes the context back)")
            if len(ctx_in):
                keepalive = (ctypes.c_char * len(ctx_in)).from_buffer(ctx_in)
                opts.ctx_in = ctypes.addressof(keepalive)
                opts.ctx_size_in = len(ctx_in)
        with annotate(f"test run of program {self.name!r}"):
            lib.bpf_prog_test_run_opts(self.fd, ctypes.byref(opts))
        del keepalive
        return opts.retval


@contextmanager
def enable_run_time_stats() -> Iterator[None]:
    """Turn on run_time_ns/run_cnt accounting (bpf_enable_stats) for the block.

    Stats stay on while any process holds such an fd (or the
    kernel.bpf_stats_enabled sysctl is set).
    """
    with annotate("enabling BPF run-time stats"):
        fd = lib.bpf_enable_stats(BPF_STATS_RUN_TIME)
    try:
        yield
    finally:
        os.close(fd)


def query_cgroup(
    cgroup: int | str | os.PathLike[str], attach_type: AttachType | int, *, effective: bool = False
) -> list[int]:
    """Ids of the programs attached to a cgroup at `attach_type` (bpf_prog_query).

    `effective=True` includes programs inherited from ancestor cgroups.
    """
    flags = BPF_F_QUERY_EFFECTIVE if effective else 0
    target = cgroup if isinstance(cgroup, int) else os.fspath(cgroup)
    capacity = 64
    with cgroup_fd(cgroup) as fd:
        while True:
            ids = (ctypes.c_uint32 * capacity)()
            count = ctypes.c_uint32(capacity)
            attach_flags = ctypes.c_uint32(0)
            try:
                lib.bpf_prog_query(
                    fd,
                    int(attach_type),
                    flags,
                    ctypes.byref(attach_flags),
                    ids,
                    ctypes.byref(count),
                )
            except LibbpfError as exc:
                if exc.errno == errno.ENOSPC and count.value > capacity:
                    capacity = count.value  # the kernel told us how many there are
                    continue
                name = getattr(attach_type, "name", attach_type)
                raise with_detail(exc, f"querying cgroup {target} for {name}") from None
            return list(ids[: count.value])
