"""Numbers back to names (for events, counters and `evaluate`), and names to numbers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ebmesh.datapath.parties import NO_IDENTITY, Service, SourceRef, Workload


class Naming:
    """Every identity of one policy by number and by name, and every rule by id."""

    def __init__(
        self,
        workloads: Iterable[Workload] = (),
        services: Iterable[Service] = (),
        rules: Mapping[int, SourceRef] | None = None,
    ):
        self._by_identity: dict[int, Workload | Service] = {}
        self._by_name: dict[str, Workload | Service] = {}
        for party in (*workloads, *services):
            self._by_identity[party.identity] = party
            self._by_name[party.name] = party
        self.rules: Mapping[int, SourceRef] = rules or {}

    def name_of(self, identity: int) -> str:
        """The name of an identity: "-" for none, "#N" for one this policy does not have."""
        party = self._by_identity.get(identity)
        if party is not None:
            return party.name
        return "-" if identity == NO_IDENTITY else f"#{identity}"

    def party(self, name: str) -> Workload | Service | None:
        return self._by_name.get(name)

    def party_of(self, identity: int) -> Workload | Service | None:
        return self._by_identity.get(identity)

    def workload_names(self) -> list[str]:
        return [p.name for p in self._by_name.values() if isinstance(p, Workload)]

    def rule(self, rule_id: int) -> SourceRef | None:
        return self.rules.get(rule_id)
