"""The policy IR: plain, resolved data with no trace of the language's syntax.

Names are gone: workloads and services are identities (small integers), rules
are numbered in source order, addresses are `ipaddress` networks, ports are
ranges. Each rule and declaration keeps a `SourceRef` so that a verdict taken
in the kernel can be traced back to the line that decided it.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Union

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

# Identity 0 is "no workload": a peer known only by its address, or a local
# process that belongs to no workload. Workloads are numbered from 1 in
# declaration order, services after them.
NO_IDENTITY = 0


class Protocol(enum.IntEnum):
    """IP protocol numbers, as the kernel sees them."""

    TCP = 6
    UDP = 17

    @property
    def label(self) -> str:
        return self.name.lower()


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
class SourceRef:
    """Where something was written: file, 1-based line and column, and the line's text."""

    file: str
    line: int
    column: int = 1
    text: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Workload:
    identity: int
    name: str
    cgroup: str | None  # relative to the attach cgroup; None: not local
    prefixes: tuple[IPNetwork, ...]
    spiffe_id: str
    mtls_required: bool
    source: SourceRef | None = None

    @property
    def is_local(self) -> bool:
        return self.cgroup is not None


@dataclass(frozen=True)
class Backend:
    address: IPAddress
    port: int
    weight: int
    source: SourceRef | None = None


@dataclass(frozen=True)
class Service:
    identity: int
    name: str
    vip: IPAddress
    port: int
    protocol: Protocol
    backends: tuple[Backend, ...]
    source: SourceRef | None = None


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

    def identity_name(self, identity: int) -> str:
        if identity == NO_IDENTITY:
            return "-"
        for item in (*self.workloads, *self.services):
            if item.identity == identity:
                return item.name
        return f"#{identity}"

    def rule(self, rule_id: int) -> Rule:
        return self.rules[rule_id - 1]
