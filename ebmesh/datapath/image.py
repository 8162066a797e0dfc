"""A built policy as the runtime consumes it: the object, its maps' contents, its parties."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

from ebmesh.datapath.naming import Naming
from ebmesh.datapath.parties import Service, Workload
from ebmesh.datapath.tables import DatapathTables, PolicyShape


@dataclass(frozen=True)
class MapContents:
    """Packed keys and values for one map, ready for a batch update."""

    keys: bytes
    values: bytes
    count: int
    max_entries: int


@dataclass(frozen=True)
class DatapathImage:
    """A built object, the contents of its maps, and the parties it names."""

    object_bytes: bytes
    maps: Mapping[str, MapContents]
    shape: PolicyShape
    rule_count: int
    v4_prefix_lengths: tuple[int, ...]  # ascending
    v6_prefix_lengths: tuple[int, ...]
    workloads: tuple[Workload, ...]
    services: tuple[Service, ...]
    naming: Naming
    mesh: str = ""
    trust_domain: str = ""
    auth_pairs: tuple[tuple[int, int], ...] = ()  # to authenticate before the first connection

    @classmethod
    def assemble(
        cls,
        object_bytes: bytes,
        maps: Mapping[str, MapContents],
        shape: PolicyShape,
        tables: DatapathTables,
    ) -> DatapathImage:
        return cls(
            object_bytes=object_bytes,
            maps=maps,
            shape=shape,
            rule_count=tables.rule_count,
            v4_prefix_lengths=tables.v4_lengths,
            v6_prefix_lengths=tables.v6_lengths,
            workloads=tables.workloads,
            services=tables.services,
            naming=Naming(tables.workloads, tables.services, tables.rule_origins),
            mesh=tables.mesh,
            trust_domain=tables.trust_domain,
            auth_pairs=tables.auth_pairs,
        )

    @cached_property
    def digest(self) -> str:
        """Of everything loaded from it: equal digests, equal datapaths (maps and all)."""
        hasher = hashlib.sha256(self.object_bytes)
        for name in sorted(self.maps):
            contents = self.maps[name]
            hasher.update(name.encode() + contents.keys + contents.values)
        hasher.update(repr((self.workloads, self.services, self.rule_count)).encode())
        return hasher.hexdigest()

    @property
    def local_workloads(self) -> tuple[Workload, ...]:
        return tuple(w for w in self.workloads if w.is_local)
