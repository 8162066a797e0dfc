"""The policy IR: plain, resolved data with no trace of the language's syntax.

Names are gone: workloads and services are identities (small integers), rules
are numbered in source order, addresses are `ipaddress` networks, ports are
ranges. Each rule and declaration keeps a `SourceRef` so that a verdict taken
in the kernel can be traced back to the line that decided it. The parties
(workloads, services) are the datapath's own types: the runtime consumes the
same values.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ebmesh.datapath.parties import (
    NO_IDENTITY,
    Backend,
    IPAddress,
    IPNetwork,
    Protocol,
    Service,
    SourceRef,
    Workload,
)

__all__ = [
    "ALL_PORTS",
    "NO_IDENTITY",
    "Action",
    "AddressMatch",
    "Backend",
    "IPAddress",
    "IPNetwork",
    "Mode",
    "Policy",
    "PortMatch",
    "Protocol",
    "Rule",
    "Selector",
    "Service",
    "SourceRef",
    "Verdict",
    "Workload",
]


class Action(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"


class Verdict(enum.IntEnum):
    DENY = 0
    ALLOW = 1


class Mode(enum.Enum):
    ENFORCE = "enforce"
    AUDIT = "audit"


@dataclass(frozen=True)
class AddressMatch:
    """A CIDR minus its `except` CIDRs: matches by address alone."""

    network: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()

    def contains(self, address: IPAddress) -> bool:
        if address.version != self.network.version or address not in self.network:
            return False
        return not any(address in e for e in self.excepts)


@dataclass(frozen=True)
class Selector:
    """One side of a rule: `any`, identities (workloads, services), address matches."""

    any: bool = False
    identities: frozenset[int] = frozenset()
    addresses: tuple[AddressMatch, ...] = ()


@dataclass(frozen=True)
class PortMatch:
    """An inclusive port range for a set of protocols."""

    low: int
    high: int
    protocols: frozenset[Protocol]

    def contains(self, port: int, protocol: Protocol) -> bool:
        return protocol in self.protocols and self.low <= port <= self.high


ALL_PORTS = (PortMatch(0, 65535, frozenset(Protocol)),)


@dataclass(frozen=True)
class Rule:
    id: int  # 1-based, in source order; lower ids are reported first
    action: Action
    source: Selector
    destination: Selector
    ports: tuple[PortMatch, ...] = ALL_PORTS
    mtls: bool = False
    audit: bool = False
    origin: SourceRef | None = None


@dataclass(frozen=True)
class Policy:
    name: str
    trust_domain: str
    default: Verdict
    mode: Mode
    accelerate: bool
    workloads: tuple[Workload, ...]
    services: tuple[Service, ...]
    rules: tuple[Rule, ...]
    source_name: str = "<policy>"
    settings_origin: dict[str, SourceRef] = field(default_factory=dict, compare=False, hash=False)
