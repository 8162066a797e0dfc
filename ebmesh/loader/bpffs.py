"""The BPF filesystem, where links and maps are pinned."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

from ..errors import EnvironmentProblem
from .libbpf import libc

BPFFS_DEFAULT = "/sys/fs/bpf"


def _unescape(field: str) -> str:
    """/proc/self/mountinfo escapes space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field) - i >= 4 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def bpffs_mounted(path: str | os.PathLike[str] = BPFFS_DEFAULT) -> bool:
    """Whether a bpf filesystem is mounted exactly at `path`."""
    target = os.path.realpath(os.fspath(path))
    try:
        with open("/proc/self/mountinfo") as mountinfo:
            for line in mountinfo:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if (
                    len(fields) >= 5
                    and right.split()[:1] == ["bpf"]
                    and _unescape(fields[4]) == target
                ):
                    return True
    except OSError as exc:
        raise EnvironmentProblem(
            f"cannot read /proc/self/mountinfo ({exc}): is /proc mounted?"
        ) from exc
    return False


def ensure_bpffs(path: str | os.PathLike[str] = BPFFS_DEFAULT) -> Path:
    """Mount bpffs at `path` unless it already is; idempotent. Returns the path."""
    target = Path(os.path.realpath(os.fspath(path)))
    if bpffs_mounted(target):
        return target
    if os.geteuid() != 0:
        raise EnvironmentProblem(
            f"no BPF filesystem at {target} and mounting one needs root: "
            f"run `sudo mount -t bpf bpf {target}` (or run ebmesh as root)"
        )
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EnvironmentProblem(f"cannot create {target} to mount bpffs on: {exc}") from exc
    if libc.mount(b"bpf", os.fsencode(str(target)), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        if err == errno.EBUSY and bpffs_mounted(target):  # somebody else was quicker
            return target
        raise EnvironmentProblem(
            f"mounting bpffs at {target} failed: {os.strerror(err)}. "
            f"Check that the kernel has CONFIG_BPF_SYSCALL and try `mount -t bpf bpf {target}`"
        )
    return target
