"""Random policies and flows, as hypothesis strategies.

Addresses are drawn from a small space so that prefixes nest, overlap, and
excepts cut into each other often; ports cluster around a few values so that
ranges meet at their edges.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from hypothesis import strategies as st

PORTS = (0, 1, 22, 53, 79, 80, 81, 443, 1023, 1024, 5353, 8080, 65535)


@dataclass
class Universe:
    """Workloads and services a policy may name, and the addresses in play."""

    local: list[str] = field(default_factory=list)  # names with a cgroup
    remote: list[str] = field(default_factory=list)  # names with addresses only
    services: list[str] = field(default_factory=list)
    declarations: list[str] = field(default_factory=list)
    prefixes: list[ipaddress._BaseNetwork] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return self.local + self.remote


def _prefix(draw, family: int) -> ipaddress._BaseNetwork:
    if family == 4:
        base = 10 << 24  # 10.0.0.0/12: small enough to collide
        value = base | draw(st.integers(0, (1 << 20) - 1))
        length = draw(st.sampled_from([8, 12, 16, 20, 23, 24, 25, 28, 31, 32]))
        return ipaddress.IPv4Network((value, length), strict=False)
    base = int(ipaddress.IPv6Address("fd00::"))
    value = base | draw(st.integers(0, (1 << 24) - 1))
    length = draw(st.sampled_from([8, 16, 64, 104, 112, 120, 127, 128]))
    return ipaddress.IPv6Network((value, length), strict=False)


def _text(network) -> str:
    return (
        str(network.network_address) if network.prefixlen == network.max_prefixlen else str(network)
    )


@st.composite
def universes(draw, families=(4, 6)) -> Universe:
    universe = Universe()
    used: set = set()
    count = draw(st.integers(1, 5))
    for index in range(count):
        name = f"w{index}"
        local = draw(st.booleans()) or index == 0
        addresses = []
        for _ in range(draw(st.integers(0 if local else 1, 2))):
            network = _prefix(draw, draw(st.sampled_from(families)))
            if network not in used:
                used.add(network)
                addresses.append(network)
        if not local and not addresses:
            local = True
        parts = []
        if local:
            parts.append(f'cgroup "{name}"')
            universe.local.append(name)
        else:
            universe.remote.append(name)
        if addresses:
            parts.append("address " + ", ".join(_text(a) for a in addresses))
            universe.prefixes.extend(addresses)
        universe.declarations.append(f"workload {name} {{ {' '.join(parts)} }}")
    vips: set = set()
    for index in range(draw(st.integers(0, 2))):
        family = draw(st.sampled_from(families))
        vip = _prefix(draw, family).network_address
        port = draw(st.sampled_from([p for p in PORTS if p]))  # a service port is 1-65535
        protocol = draw(st.sampled_from(["tcp", "udp"]))
        if (vip, port, protocol) in vips:
            continue
        vips.add((vip, port, protocol))
        backend = _prefix(draw, family).network_address
        vip_text = f"[{vip}]" if family == 6 else str(vip)
        backend_text = f"[{backend}]" if family == 6 else str(backend)
        name = f"s{index}"
        universe.services.append(name)
        universe.declarations.append(
            f"service {name} {vip_text}:{port}/{protocol} {{ backend {backend_text}:80 }}"
        )
        universe.prefixes.append(ipaddress.ip_network(vip))
    return universe


@st.composite
def address_peers(draw, universe: Universe, families) -> str:
    if universe.prefixes and draw(st.booleans()):
        network = draw(st.sampled_from(universe.prefixes))
    else:
        network = _prefix(draw, draw(st.sampled_from(families)))
    text = _text(network)
    if network.prefixlen < network.max_prefixlen - 1 and draw(st.integers(0, 3)) == 0:
        inner = list(
            network.subnets(
                new_prefix=min(network.max_prefixlen, network.prefixlen + draw(st.integers(1, 6)))
            )
        )
        excepts = draw(st.lists(st.sampled_from(inner[:64]), min_size=1, max_size=3, unique=True))
        text += " except " + ", ".join(_text(e) for e in excepts)
    return text


@st.composite
def sides(draw, universe: Universe, families, destination: bool) -> str:
    names = universe.names + (universe.services if destination else [])
    choices = ["any", "address"] + (["name"] * 3 if names else [])
    items = []
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(st.sampled_from(choices))
        if kind == "any":
            items.append("any")
        elif kind == "name":
            items.append(draw(st.sampled_from(names)))
        else:
            items.append(draw(address_peers(universe, families)))
    if len(items) == 1:
        return items[0]
    # an except list swallows the CIDRs after it: keep excepts last
    items.sort(key=lambda item: " except " in item)
    return "[" + ", ".join(items) + "]"


@st.composite
def port_clauses(draw) -> str:
    if draw(st.integers(0, 3)) == 0:
        return ""
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        low = draw(st.sampled_from(PORTS))
        if draw(st.booleans()):
            high = draw(st.sampled_from([p for p in PORTS if p >= low]))
            text = f"{low}-{high}" if high != low else str(low)
        else:
            text = str(low)
        protocol = draw(st.sampled_from(["", "", "/tcp", "/udp"]))
        parts.append(text + protocol)
    return " port " + ", ".join(parts)


@st.composite
def policies(
    draw, families=(4, 6), max_rules: int = 12, universe: Universe | None = None
) -> tuple[str, Universe]:
    universe = universe or draw(universes(families))
    lines = [
        "mesh random {",
        f"    default {draw(st.sampled_from(['deny', 'allow']))}",
        f"    mode {draw(st.sampled_from(['enforce'] * 4 + ['audit']))}",
    ]
    lines += [f"    {d}" for d in universe.declarations]
    for _ in range(draw(st.integers(0, max_rules))):
        action = draw(st.sampled_from(["allow", "deny"]))
        source = draw(sides(universe, families, destination=False))
        target = draw(sides(universe, families, destination=True))
        if source in universe.remote and target in universe.remote + universe.services:
            source = "any"  # neither end could be local: such a rule cannot be enforced
        names_a_service = any(
            service in target.strip("[]").split(", ") for service in universe.services
        )
        ports = "" if names_a_service else draw(port_clauses())  # a service has its own port
        rule = f"    {action} {source} -> {target}{ports}"
        if action == "deny" and draw(st.integers(0, 4)) == 0:
            rule += " audit"
        if (
            action == "allow"
            and source in universe.local
            and target in universe.local
            and draw(st.integers(0, 5)) == 0
        ):
            rule += " mtls"
        lines.append(rule)
    lines.append("}")
    return "\n".join(lines) + "\n", universe


def interesting_addresses(universe: Universe, family: int) -> list:
    """Addresses at the edges of the universe's prefixes, and a stranger."""
    found = []
    for network in universe.prefixes:
        if network.version != family:
            continue
        found.append(network.network_address)
        found.append(network.broadcast_address)
        if network.num_addresses > 2:
            found.append(network.network_address + 1)
    found.append(ipaddress.ip_address("10.200.0.1" if family == 4 else "fd99::1"))
    return found
