"""Small helpers shared by the loader modules (no libbpf calls here)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

from ..errors import LibbpfError

_Owned = TypeVar("_Owned", bound="OwnedResource")


class OwnedResource:
    """Something this process owns until `close()`: a `with` block or garbage
    collection closes it too (like libbpf-rs objects dropped, or cilium/ebpf's
    Close). Subclasses implement an idempotent `close()`."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _Owned) -> _Owned:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass


@contextmanager
def annotate(detail: str) -> Iterator[None]:
    """Prefix a LibbpfError's detail with `detail` (which map, which program, what we were doing)."""
    try:
        yield
    except LibbpfError as exc:
        raise with_detail(exc, detail).with_traceback(exc.__traceback__) from None


def with_detail(exc: LibbpfError, detail: str) -> LibbpfError:
    """A copy of `exc` whose detail is prefixed with `detail` (for `raise ... from None`)."""
    combined = f"{detail}: {exc.detail}" if exc.detail else detail
    return LibbpfError(exc.function, exc.errno, exc.log, combined)


def path_bytes(path: str | os.PathLike[str]) -> bytes:
    return os.fsencode(os.fspath(path))


def decode(raw: bytes | None) -> str:
    return raw.decode(errors="replace") if raw is not None else ""


@contextmanager
def cgroup_fd(cgroup: int | str | os.PathLike[str]) -> Iterator[int]:
    """An fd for a cgroup given as an fd (borrowed) or a path (opened and closed here)."""
    if isinstance(cgroup, int):
        yield cgroup
        return
    fd = os.open(os.fspath(cgroup), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)
