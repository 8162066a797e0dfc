"""Every ebmesh attachment on this machine: a record per attach cgroup, and the pins.

A record (a small JSON file under /run/ebmesh/attachments/, named by the
attach cgroup's id) says which mesh runs on which cgroup, through which
links, since when, and who holds it: a process (owned: its links die with
it) or bpffs (pinned under /sys/fs/bpf/ebmesh/<mesh>/: the policy outlives
every process). Records are checked against the kernel when read: one whose
links are gone is stale, and dropped. Both /run and bpffs are in memory, so
neither survives a reboot, and neither should.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ebmesh.loader import link_info
from ebmesh.runtime import cgroups, policy_record

RECORDS = Path(os.environ.get("EBMESH_RUN_DIR", "/run/ebmesh")) / "attachments"
PIN_ROOT = Path(os.environ.get("EBMESH_PIN_ROOT", "/sys/fs/bpf/ebmesh"))


@dataclass
class Record:
    mesh: str
    cgroup: str
    cgroup_id: int
    pinned: bool
    pid: int  # the process that attached it (an owned attachment lives as long as it does)
    since: float  # seconds since the epoch
    digest: str  # of the compiled policy: a re-adoption of the same policy keeps every map
    rules: int
    events: str
    links: dict[str, int] = field(default_factory=dict)  # program name -> link id
    programs: dict[str, int] = field(default_factory=dict)  # program name -> program id
    # A pinned attachment its process let go of (close()): no process holds it any more,
    # though that process may still run; the first events reader becomes its hub.
    released: bool = False

    @property
    def pin_dir(self) -> Path:
        return pin_dir(self.mesh)

    def alive(self) -> bool:
        """Whether its links are still attached to its cgroup."""
        if not self.links:
            return False
        for link_id in self.links.values():
            info = link_info(link_id)
            if info is None or info.cgroup_id != self.cgroup_id:
                return False
        return True


def process_alive(pid: int) -> bool:
    """Whether the process of a record's pid still runs (signal 0 asks, sends nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pin_dir(mesh: str) -> Path:
    return PIN_ROOT / mesh


def _path(cgroup_id: int) -> Path:
    return RECORDS / f"{cgroup_id}.json"


def release(cgroup_id: int) -> None:
    """Note that the process holding a pinned attachment let go of it."""
    record = read(cgroup_id)
    if record is not None and record.pid == os.getpid():
        record.released = True
        write(record)


def write(record: Record) -> None:
    RECORDS.mkdir(parents=True, exist_ok=True)
    path = _path(record.cgroup_id)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(asdict(record), indent=1, sort_keys=True))
    os.replace(temporary, path)


def remove(cgroup_id: int) -> None:
    try:
        _path(cgroup_id).unlink()
    except FileNotFoundError:
        pass
    policy_record.remove(RECORDS, cgroup_id)


def write_policy(cgroup_id: int, policy: policy_record.PolicyRecord) -> None:
    """The running policy's names, beside its record (policy_record.py)."""
    policy_record.write(RECORDS, cgroup_id, policy)


def read_policy(cgroup_id: int) -> policy_record.PolicyRecord | None:
    return policy_record.read(RECORDS, cgroup_id)


def read(cgroup_id: int) -> Record | None:
    try:
        return Record(**json.loads(_path(cgroup_id).read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None


def records(*, drop_stale: bool = True) -> list[Record]:
    """Every live attachment's record, oldest first; stale ones are removed."""
    found = []
    for path in sorted(RECORDS.glob("*.json")) if RECORDS.is_dir() else []:
        try:
            record = Record(**json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, TypeError):
            continue
        if record.alive():
            found.append(record)
        elif drop_stale:
            path.unlink(missing_ok=True)
            policy_record.remove(RECORDS, record.cgroup_id)
    return sorted(found, key=lambda r: r.since)


def on_cgroup(path: Path) -> Record | None:
    """The live record of the attachment on exactly this cgroup."""
    record = read(cgroups.cgroup_id(path))
    return record if record is not None and record.alive() else None


def new_record(*, since: float | None = None, **fields) -> Record:
    return Record(pid=os.getpid(), since=time.time() if since is None else since, **fields)
