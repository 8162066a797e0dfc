"""IP prefixes as (family, length, value) triples: containment, subtraction, nesting.

The checks (how deeply a policy nests rule prefixes) and the lowering (which
turns prefixes into address classes) both reason about prefixes this way.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Prefix = tuple[int, int, int]  # (family 4|6, length, network address as int)


def bits(family: int) -> int:
    return 32 if family == 4 else 128


def prefix_of(network) -> Prefix:
    return (network.version, network.prefixlen, int(network.network_address))


def network_of(prefix: Prefix):
    family, length, value = prefix
    if family == 4:
        return ipaddress.IPv4Network((value, length))
    return ipaddress.IPv6Network((value, length))


def contains(outer: Prefix, inner: Prefix) -> bool:
    family, length, value = outer
    if family != inner[0] or length > inner[1]:
        return False
    shift = bits(family) - length
    return (value >> shift) == (inner[2] >> shift)


def subtract_prefixes(network: Prefix, excepts: list[Prefix]) -> list[Prefix]:
    """`network` minus `excepts`, as the fewest disjoint prefixes, sorted."""
    if any(contains(e, network) for e in excepts):
        return []
    holes = [e for e in excepts if contains(network, e)]
    if not holes:
        return [network]
    holes = [h for h in holes if not any(o != h and contains(o, h) for o in holes)]
    pieces: list[Prefix] = []
    _carve(network, sorted(set(holes)), pieces)
    return sorted(pieces)


def _carve(block: Prefix, holes: list[Prefix], pieces: list[Prefix]) -> None:
    """Add `block` minus `holes` (each strictly inside it, none inside another) to `pieces`."""
    family, length, value = block
    width = bits(family)
    if len(holes) == 1:
        # The common case, without a search: what remains of the block around one hole is
        # the sibling of each of the hole's ancestors below the block.
        _, hole_length, hole_value = holes[0]
        for level in range(length + 1, hole_length + 1):
            shift = width - level
            pieces.append((family, level, ((hole_value >> shift) ^ 1) << shift))
        return
    level = length + 1
    for half in ((family, level, value), (family, level, value | (1 << (width - level)))):
        inside = [h for h in holes if contains(half, h)]
        if not inside:
            pieces.append(half)
        elif inside != [half]:
            _carve(half, inside, pieces)


def address_order(prefix: Prefix) -> tuple[int, int, int]:
    """Sort key that puts every prefix right after the prefixes containing it."""
    family, length, value = prefix
    return (family, value, length)


def nesting_depths(prefixes: Iterable[Prefix]) -> Iterable[tuple[Prefix, int]]:
    """Each distinct prefix, in address order, with how many of them contain it (itself included)."""
    stack: list[Prefix] = []
    for prefix in sorted(set(prefixes), key=address_order):
        while stack and not contains(stack[-1], prefix):
            stack.pop()
        stack.append(prefix)
        yield prefix, len(stack)
