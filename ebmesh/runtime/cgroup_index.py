"""Every cgroup below the attach cgroup, mapped to its identity in the datapath's index.

A socket belongs to the workload whose cgroup is its cgroup or the nearest
ancestor of it (NO_IDENTITY if none). The datapath resolves that in one
probe of `cgroup_index`, a direct-mapped array over the cgroup id's low
bits; a cgroup whose slot another live cgroup holds goes to the
`cgroup_workloads` hash, and the slot stays taken so that the datapath knows
to look there (bpf_src/identity.h). A cgroup not mapped yet is resolved
through its parents, so mapping is never late for correctness, only for
speed, except for a workload's own cgroup (see `CgroupWatcher`).
"""

from __future__ import annotations

import os
from pathlib import Path

from ebmesh.datapath import abi
from ebmesh.datapath.parties import NO_IDENTITY
from ebmesh.runtime import cgroups

MIN_SLOTS = 1024
MAX_SLOTS = 1 << 20


def index_size(cgroup_count: int) -> int:
    """Slots for a tree of `cgroup_count` cgroups: room to grow fourfold, a power of two."""
    wanted = max(MIN_SLOTS, 4 * cgroup_count)
    return min(MAX_SLOTS, 1 << (wanted - 1).bit_length())


def tree(root: Path) -> list[Path]:
    """`root` and every cgroup below it, parents before children."""
    found = []
    for directory, subdirectories, _ in os.walk(root):
        found.append(Path(directory))
        subdirectories.sort()
    return found


class CgroupIndex:
    """Writes and keeps `cgroup_index` and `cgroup_workloads` for one attachment."""

    def __init__(self, maps, root: Path, workload_cgroups: dict[int, Path]):
        self._slots = maps["cgroup_index"]
        self._overflow = maps["cgroup_workloads"]
        self._mask = self._slots.max_entries - 1
        self.root = root
        self._workload_of_path = {path: identity for identity, path in workload_cgroups.items()}
        self._holder: dict[int, int] = {}  # slot -> cgroup id holding it
        self._mapped: dict[Path, tuple[int, int]] = {}  # path -> (cgroup id, identity)

    def identity_of(self, path: Path) -> int:
        """The nearest workload cgroup at or above `path`, up to the root."""
        for candidate in (path, *path.parents):
            identity = self._workload_of_path.get(candidate)
            if identity is not None:
                return identity
            if candidate == self.root:
                break
        return NO_IDENTITY

    def map_tree(self, top: Path | None = None) -> list[Path]:
        """Map `top` (default: the root) and everything below it; the paths mapped anew."""
        added = []
        for path in tree(top or self.root):
            if self.map(path):
                added.append(path)
        return added

    def map(self, path: Path) -> bool:
        """Map one cgroup; False if it was mapped already with the same id, or is gone."""
        try:
            cgroup_id = cgroups.cgroup_id(path)
        except FileNotFoundError:
            return False
        known = self._mapped.get(path)
        if known is not None and known[0] == cgroup_id:
            return False
        if known is not None:  # recreated under the same name: a new id
            self.unmap(path)
        identity = self.identity_of(path)
        slot = cgroup_id & self._mask
        value = abi.CgroupSlot.packer().pack(cgroup_id, identity, 0)
        if slot not in self._holder:
            self._holder[slot] = cgroup_id
            self._slots.update(slot.to_bytes(4, "little"), value)
        else:
            self._overflow.update(cgroup_id.to_bytes(8, "little"), identity.to_bytes(4, "little"))
        self._mapped[path] = (cgroup_id, identity)
        return True

    def unmap(self, path: Path) -> None:
        """Forget a removed cgroup. Its slot stays as it is (a dead id matches no socket)
        when some overflow entry may hash to it; else it is freed for the next cgroup."""
        known = self._mapped.pop(path, None)
        if known is None:
            return
        cgroup_id, _ = known
        slot = cgroup_id & self._mask
        if self._holder.get(slot) == cgroup_id:
            if not any(cid & self._mask == slot for cid, _ in self._mapped.values()):
                del self._holder[slot]
                self._slots.update(slot.to_bytes(4, "little"), bytes(abi.CgroupSlot.packer().size))
        else:
            self._overflow.delete(cgroup_id.to_bytes(8, "little"))

    def mapped(self) -> dict[Path, int]:
        """Every mapped cgroup and its identity."""
        return {path: identity for path, (_, identity) in self._mapped.items()}
