"""The parties of a policy, resolved to numbers: what both the compiler and the runtime know.

Workloads and services are identities (small integers); addresses are
`ipaddress` values; every declaration keeps a `SourceRef` so that what the
kernel reports can be traced back to the line that said it.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
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

    @property
    def endpoint(self) -> str:
        """`10.0.2.10:8080` or `[fd00::1]:8080`."""
        return endpoint_text(self.address, self.port)


@dataclass(frozen=True)
class Service:
    identity: int
    name: str
    vip: IPAddress
    port: int
    protocol: Protocol
    backends: tuple[Backend, ...]
    source: SourceRef | None = None

    @property
    def family(self) -> int:
        return self.vip.version


def endpoint_text(address: IPAddress, port: int) -> str:
    """`10.0.2.10:8080` or `[fd00::1]:8080`."""
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
