"""The syntax tree of a policy.

Every node carries the `Span` of source it came from, so later phases can point
at it. A tree built by hand (not parsed) may leave spans out; diagnostics about
it then have no location. The tree is what the source says, unresolved: names
are strings, addresses are as written. Checking and resolving happen later
(`ebmesh.language.checks`, `ebmesh.language.lower`).

Nodes come in two kinds, by how many of them a policy has:

* the leaves and the parts of rules (`Span`, `Name`, `StringLiteral`, `Cidr`,
  the peers, `PortRange`, `Rule`) are frozen, slotted dataclasses. A
  100,000-rule policy has 1.4 million of them, and building one as a
  pydantic model costs about 1 µs validated, 2 µs with `model_construct`,
  against 0.5 µs as a dataclass: 1.4 to 2.5 s more on a 4.5 s parse.
  The parser is what makes their values right; tests/unit/test_grammar.py
  validates parsed trees against the declared types, through pydantic.
* the declarations (`Setting`, `Workload`, `Backend`, `Service`, `Mesh`,
  `PolicyFile`) are frozen pydantic models, validated when built: a policy
  has a few thousand at most. Dataclass values in their fields are taken as
  given, not validated again.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Protocol = Literal["tcp", "udp"]


@dataclass(frozen=True, slots=True)
class Span:
    """Where a node sits in its source: 1-based line and column, end exclusive."""

    line: int
    column: int
    end_line: int
    end_column: int

    @property
    def length(self) -> int:
        """Characters to underline: the node's width on its first line."""
        if self.end_line != self.line:
            return 1
        return max(1, self.end_column - self.column)


# Keyword-only, so that `span`, which every node has and a tree built by hand
# may leave out, can come first.
_leaf = dataclass(frozen=True, slots=True, kw_only=True)


@_leaf
class Name:
    """An identifier as written, e.g. a workload name in a rule."""

    span: Optional[Span] = None
    value: str


@_leaf
class StringLiteral:
    span: Optional[Span] = None
    value: str  # without the quotes, escapes resolved


@_leaf
class Cidr:
    """An address or CIDR as written. A bare address is a full-length prefix.

    `text` is kept verbatim; `network` is parsed with strict=False so that a
    CIDR with host bits set (10.0.1.5/24) still parses and the checker can
    report it with a hint.
    """

    span: Optional[Span] = None
    text: str
    network: IPNetwork
    host_bits_set: bool = False


# ---- rules -------------------------------------------------------------------


@_leaf
class AnyPeer:
    """`any`: every source or destination."""

    span: Optional[Span] = None
    kind: Literal["any"] = "any"


@_leaf
class NamedPeer:
    """A workload or service name."""

    span: Optional[Span] = None
    kind: Literal["name"] = "name"
    name: Name


@_leaf
class AddressPeer:
    """A CIDR or address, optionally `except CIDR, ...`: matches by address alone."""

    span: Optional[Span] = None
    kind: Literal["address"] = "address"
    cidr: Cidr
    excepts: list[Cidr] = field(default_factory=list)


Peer = Union[AnyPeer, NamedPeer, AddressPeer]


@_leaf
class PortRange:
    """`N`, `N-M`, `N/tcp`, `N-M/udp`. protocol None means both."""

    span: Optional[Span] = None
    low: int
    high: int
    protocol: Optional[Protocol] = None


@_leaf
class Rule:
    """`ACTION SRC -> DST [port PORTS] [mtls] [audit]`.

    `ports` is None when the rule has no `port` clause (every port, both
    protocols). `mtls_span`/`audit_span` locate the keywords for diagnostics.
    """

    span: Optional[Span] = None
    action: Literal["allow", "deny"]
    action_span: Optional[Span] = None
    sources: list[Peer]
    destinations: list[Peer]
    ports: Optional[list[PortRange]] = None
    mtls: bool = False
    mtls_span: Optional[Span] = None
    audit: bool = False
    audit_span: Optional[Span] = None


# ---- declarations --------------------------------------------------------------


class Node(BaseModel):
    model_config = ConfigDict(frozen=True)

    span: Optional[Span] = None


class Workload(Node):
    name: Name
    cgroups: list[StringLiteral] = Field(default_factory=list)  # more than one is an error
    addresses: list[Cidr] = Field(default_factory=list)
    identities: list[StringLiteral] = Field(default_factory=list)  # more than one is an error
    mtls_required: bool = False
    mtls_span: Optional[Span] = None


class Backend(Node):
    address: IPAddress
    address_span: Optional[Span] = None
    port: int
    port_span: Optional[Span] = None
    weight: int = 1
    weight_span: Optional[Span] = None


class Service(Node):
    name: Name
    vip: IPAddress
    vip_span: Optional[Span] = None
    port: int
    port_span: Optional[Span] = None
    protocol: Protocol = "tcp"
    backends: list[Backend] = Field(default_factory=list)


class Setting(Node):
    """`trust_domain "x"`, `default deny`, `mode audit`, `accelerate on`.

    Settings are kept as written (the parser accepts any value word for them)
    so the checker can report a wrong value with a hint; `value_span` points
    at the value.
    """

    key: Literal["trust_domain", "default", "mode", "accelerate"]
    value: str
    value_span: Optional[Span] = None


class Mesh(Node):
    name: Name
    settings: list[Setting] = Field(default_factory=list)
    workloads: list[Workload] = Field(default_factory=list)
    services: list[Service] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)


class PolicyFile(BaseModel):
    """A parsed source: its name (for diagnostics), its text and its mesh."""

    model_config = ConfigDict(frozen=True)

    filename: str = "<policy>"
    text: str = ""
    mesh: Mesh
