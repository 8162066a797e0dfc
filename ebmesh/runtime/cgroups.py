"""cgroup v2 paths: where the mount is, which cgroup a path names, and safety.

Attaching a deny-by-default policy to the root cgroup would cut off every
process on the machine, this one included; the library refuses it unless the
caller insists.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from ebmesh.errors import AttachError, EnvironmentProblem


@cache
def cgroup2_mount() -> Path:
    """The cgroup v2 mount point (e.g. /sys/fs/cgroup or /sys/fs/cgroup/unified)."""
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            separator = fields.index("-")
            if fields[separator + 1] == "cgroup2":
                return Path(fields[4])
    raise EnvironmentProblem(
        "no cgroup v2 hierarchy is mounted; mount one with "
        "`mount -t cgroup2 none /sys/fs/cgroup/unified` (or boot with systemd's unified hierarchy)"
    )


def resolve(path: str | os.PathLike) -> Path:
    """An absolute cgroup directory from a path absolute or relative to the cgroup2 mount."""
    mount = cgroup2_mount()
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = mount / candidate
    candidate = Path(os.path.normpath(candidate))
    if candidate != mount and mount not in candidate.parents:
        raise AttachError(f"{candidate} is not inside the cgroup v2 hierarchy at {mount}")
    if not (candidate / "cgroup.procs").exists():
        raise AttachError(
            f"{candidate} is not a cgroup (no cgroup.procs there); create it with mkdir"
        )
    return candidate


def is_root(path: Path) -> bool:
    return path == cgroup2_mount()


def refuse_root(path: Path, force: bool, *, how_to_force: str = "pass force=True") -> None:
    """AttachError for the root cgroup unless forced. `how_to_force` is the
    caller's own spelling of forcing it (the CLI's is `--force`)."""
    if is_root(path) and not force:
        raise AttachError(
            f"refusing to attach to the root cgroup {path}: every process on this machine, "
            "this one included, would be under the policy. Attach to a cgroup of its own, "
            f"or {how_to_force} if you really mean it."
        )


def cgroup_id(path: Path) -> int:
    """The kernel's id of a cgroup: its kernfs inode number, what BPF helpers report."""
    return os.stat(path).st_ino
