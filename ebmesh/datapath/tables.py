"""What lowering makes of a policy for the datapath: its shape and its tables.

`PolicyShape` becomes the generated header policy.h (constants the C code is
specialised on: default verdict, mode, nesting depths, which kinds of rule
pairs exist). `DatapathTables` holds the maps' rows as plain numbers, and the
parties the runtime writes itself when it attaches (workload cgroups,
services' backends). No name from a policy reaches C: only numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ebmesh.datapath.parties import Service, SourceRef, Workload


@dataclass(frozen=True)
class RuleLine:
    """A rule id and where it was written, for the header's comments."""

    rule_id: int
    line: int
    action: str  # "allow", "deny", "deny audit", "allow mtls"


@dataclass(frozen=True)
class PolicyShape:
    source_name: str
    default_allow: bool
    mode_audit: bool
    has_mtls_required: bool
    has_mtls: bool  # some rule says `mtls`, or some workload `mtls required`
    has_services: bool
    accelerate: bool  # `accelerate on`: local TCP takes the socket shortcut
    pair_kinds: int
    max_src_prefix_nesting: int
    max_dst_prefix_nesting: int
    port_search_steps: int
    rules: tuple[RuleLine, ...] = ()
    default_line: int | None = None
    mode_line: int | None = None


@dataclass
class DatapathTables:
    """Map rows, as tuples of numbers (see bpf_src/ebmesh_types.h), and the parties.

    address_classes: (family, length, packed network address, class_id,
        workload, src_start, dst_start); class ids start at 1. Markers of the
        binary search on lengths are rows too (class_id 0, or the values of
        the longest real prefix containing them).
    v4_lengths, v6_lengths: the prefix lengths used, ascending.
    class_links: (src_parent, dst_parent) indexed by class id (entry 0 unused).
    rule_pairs: (src side, dst side, tcp_first, udp_first, tcp_count, udp_count).
    port_intervals: (low, high, deny, allow, mtls, audit).
    identity_flags: flags indexed by identity (entry 0: no identity).
    workloads, services: as the policy declares them; the runtime maps the
        workloads' cgroups and writes the services' backends at attach.
    rule_origins: rule id -> where it was written.
    """

    address_classes: list[tuple] = field(default_factory=list)
    class_links: list[tuple[int, int]] = field(default_factory=lambda: [(0, 0)])
    rule_pairs: list[tuple] = field(default_factory=list)
    port_intervals: list[tuple] = field(default_factory=list)
    identity_flags: list[int] = field(default_factory=lambda: [0])
    rule_count: int = 0
    v4_lengths: tuple[int, ...] = ()
    v6_lengths: tuple[int, ...] = ()
    workloads: tuple[Workload, ...] = ()
    services: tuple[Service, ...] = ()
    rule_origins: dict[int, SourceRef] = field(default_factory=dict)
    mesh: str = ""  # the mesh's name: what pinned attachments are filed under
    trust_domain: str = ""  # of the mesh's SPIFFE IDs: a first-use issuer is made for it
    # (source, destination) identities to authenticate before the first connection
    auth_pairs: tuple[tuple[int, int], ...] = ()
