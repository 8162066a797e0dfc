"""What the runtime needs to bring a compiled policy to life, as plain data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ebmesh.runtime.balancing import ServiceSpec


@dataclass(frozen=True)
class MapContents:
    """Packed keys and values for one map, ready for a batch update."""

    keys: bytes
    values: bytes
    count: int
    max_entries: int


@dataclass(frozen=True)
class RuleOrigin:
    """Where a rule was written, to name the rule behind a verdict."""

    rule_id: int
    file: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Naming:
    """Numbers back to names, for events and counters."""

    identities: Mapping[int, str] = field(default_factory=dict)
    rules: Mapping[int, RuleOrigin] = field(default_factory=dict)

    def identity(self, number: int) -> str:
        return self.identities.get(number, "-" if number == 0 else f"#{number}")


@dataclass(frozen=True)
class DatapathImage:
    """A built object, the contents of its maps, and the cgroups it names."""

    object_bytes: bytes
    maps: Mapping[str, MapContents]
    rule_count: int
    workload_cgroups: tuple[tuple[int, str], ...]  # (identity, path relative to the attach cgroup)
    v4_prefix_lengths: tuple[int, ...]  # ascending
    v6_prefix_lengths: tuple[int, ...]
    services: tuple[ServiceSpec, ...] = ()
    naming: Naming = field(default_factory=Naming)
