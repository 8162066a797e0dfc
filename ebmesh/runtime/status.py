"""What runs where: every ebmesh attachment on this machine, and removing one from a cgroup."""

from __future__ import annotations

from dataclasses import dataclass

from ebmesh.errors import AttachError
from ebmesh.loader import detach_link, link_ids, link_info, program_info
from ebmesh.runtime import cgroups, event_hub, pins, registry


@dataclass(frozen=True)
class AttachmentStatus:
    mesh: str
    cgroup: str
    pinned: bool
    pid: int
    agent_alive: bool  # the process that attached it (or last took it over) still runs
    since: float
    rules: int
    events: str
    programs: tuple[str, ...]


def attachments() -> list[AttachmentStatus]:
    """Every live ebmesh attachment, oldest first (stale records are dropped on the way)."""
    return [
        AttachmentStatus(
            mesh=r.mesh,
            cgroup=r.cgroup,
            pinned=r.pinned,
            pid=r.pid,
            agent_alive=registry.process_alive(r.pid),
            since=r.since,
            rules=r.rules,
            events=r.events,
            programs=tuple(sorted(r.links)),
        )
        for r in registry.records()
    ]


def detach_cgroup(cgroup) -> str:
    """Remove the ebmesh policy on `cgroup`, whoever holds it; what was removed.

    Its links are detached by id, so an attachment owned by a running process
    is removed too (that process then enforces nothing). Also finds ebmesh
    links no record names (the kernel's own list of links is the truth)."""
    path = cgroups.resolve(cgroup)
    cgroup_id = cgroups.cgroup_id(path)
    record = registry.read(cgroup_id)
    detached = 0
    for link_id in link_ids():
        info = link_info(link_id)
        if info is None or info.cgroup_id != cgroup_id:
            continue
        try:
            name = program_info(info.prog_id).name
        except Exception:  # noqa: BLE001 - gone meanwhile
            continue
        if name.startswith("ebmesh_") and detach_link(link_id):
            detached += 1
    registry.remove(cgroup_id)
    if record is not None:
        event_hub.remove_stale(record.mesh, cgroup_id)
    if record is not None and record.pinned:
        pins.remove(registry.pin_dir(record.mesh))
    if not detached and record is None:
        raise AttachError(f"no ebmesh policy is attached to {path}")
    mesh = record.mesh if record else "an unrecorded policy"
    return f"detached {mesh} from {path} ({detached} hooks)"
