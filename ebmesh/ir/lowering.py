"""Lowering: the IR becomes the datapath's tables and shape.

Rules become entries of hashes keyed by numbers, so that a verdict costs the
same whether the policy has ten rules or a hundred thousand:

- Every prefix the policy mentions (workload addresses, rule CIDRs with their
  `except`s cut out) is an *address class*. An address belongs to the class of
  the longest prefix containing it; every rule prefix containing the address
  is then that class or one of its ancestors, reachable by parent links.
- Each rule is expanded to (source side, destination side) pairs, a side
  being `any`, an identity, or an address class. Each pair gets a port table:
  per protocol, disjoint port intervals, each holding the earliest rule of
  each kind (deny, allow, mtls allow, audit) that covers it. Identical tables
  are stored once.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass

from ebmesh.datapath import abi
from ebmesh.datapath.limits import MAX_PREFIX_NESTING
from ebmesh.datapath.tables import DatapathTables, PolicyShape, RuleLine
from ebmesh.errors import InternalError
from ebmesh.ir.model import Action, Mode, Policy, Protocol, Rule, Verdict
from ebmesh.ir.prefixes import Prefix, bits, contains, prefix_of, subtract_prefixes

NO_RULE = abi.NO_RULE


@dataclass
class _ClassInfo:
    prefix: Prefix
    class_id: int = 0
    workload: int = 0  # identity whose address this prefix is, 0 if none
    src_atom: bool = False
    dst_atom: bool = False


def _side_keys(selector, class_of: dict[Prefix, int], atoms: dict[int, list[Prefix]]) -> list[int]:
    keys = []
    if selector.any:
        keys.append(abi.SIDE_ANY)
    keys.extend(abi.SIDE_IDENTITY | identity for identity in sorted(selector.identities))
    for index in range(len(selector.addresses)):
        keys.extend(abi.SIDE_CLASS | class_of[p] for p in atoms[index])
    return keys


def _side_kind(key: int) -> int:
    top = key & ~abi.SIDE_VALUE_MASK
    return {abi.SIDE_IDENTITY: abi.SIDE_KIND_IDENTITY, abi.SIDE_ANY: abi.SIDE_KIND_ANY}.get(
        top, abi.SIDE_KIND_CLASS
    )


# Contribution kinds: the slot of the rule_set a rule fills.
DENY, ALLOW, MTLS, AUDIT = range(4)


def _kind(rule: Rule) -> int:
    if rule.action is Action.DENY:
        return AUDIT if rule.audit else DENY
    return MTLS if rule.mtls else ALLOW


class _PortTables:
    """Builds and deduplicates per-pair port tables into one interval array."""

    def __init__(self):
        self.intervals: list[tuple] = []
        self._stored: dict[tuple, tuple[int, int]] = {}
        self.longest = 0

    def store(self, intervals: tuple) -> tuple[int, int]:
        found = self._stored.get(intervals)
        if found is None:
            found = (len(self.intervals), len(intervals))
            self.intervals.extend(intervals)
            self._stored[intervals] = found
            self.longest = max(self.longest, len(intervals))
        return found

    def table(self, contributions: list[tuple[int, int, tuple]]) -> tuple[int, int, int, int]:
        tcp_first, tcp_count = self.store(_intervals(contributions, Protocol.TCP))
        udp_first, udp_count = self.store(_intervals(contributions, Protocol.UDP))
        return tcp_first, udp_first, tcp_count, udp_count


def _intervals(contributions: list[tuple[int, int, tuple]], protocol: Protocol) -> tuple:
    """Disjoint sorted (low, high, deny, allow, mtls, audit) for one protocol."""
    ranges = []  # (low, high, kind, rule_id)
    for rule_id, kind, ports in contributions:
        for port in ports:
            if protocol in port.protocols:
                ranges.append((port.low, port.high, kind, rule_id))
    if not ranges:
        return ()
    if len(ranges) == 1:
        low, high, kind, rule_id = ranges[0]
        rules = [NO_RULE] * 4
        rules[kind] = rule_id
        return ((low, high, *rules),)

    # Sweep the cut points in order; per kind, a heap of the ranges open here
    # gives the earliest rule (ranges that ended are dropped lazily).
    ranges.sort()
    cuts = sorted({low for low, _, _, _ in ranges} | {high + 1 for _, high, _, _ in ranges})
    open_ranges: list[list[tuple[int, int]]] = [[], [], [], []]
    next_range = 0
    result = []
    for start, end in zip(cuts, cuts[1:]):
        while next_range < len(ranges) and ranges[next_range][0] <= start:
            _, high, kind, rule_id = ranges[next_range]
            heapq.heappush(open_ranges[kind], (rule_id, high))
            next_range += 1
        rules = []
        for heap in open_ranges:
            while heap and heap[0][1] < start:
                heapq.heappop(heap)
            rules.append(heap[0][0] if heap else NO_RULE)
        if rules == [NO_RULE] * 4:
            continue
        if result and result[-1][1] == start - 1 and list(result[-1][2:]) == rules:
            result[-1] = (result[-1][0], end - 1, *rules)
        else:
            result.append((start, end - 1, *rules))
    return tuple(result)


def _markers(prefix: Prefix, lengths: list[int]) -> list[Prefix]:
    """Where the binary search on `lengths` must be told to look longer to find `prefix`."""
    family, length, value = prefix
    width = bits(family)
    target = lengths.index(length)
    low, high = 0, len(lengths)  # as the datapath searches: [low, high)
    found = []
    while low < high:
        middle = (low + high) // 2
        if middle == target:
            break
        if middle < target:
            shift = width - lengths[middle]
            found.append(
                (family, lengths[middle], (value >> shift) << shift if shift < width else 0)
            )
            low = middle + 1
        else:
            high = middle
    return found


def _best_values_at(stack, marker: Prefix) -> tuple:
    """The row of the longest real prefix on `stack` (the ancestors of the
    prefix being placed) that contains `marker`; zeros if none does."""
    for prefix, values, _, _ in reversed(stack):
        if prefix[1] <= marker[1]:
            return values
    return (0, 0, 0, 0)


def lower(policy: Policy) -> tuple[PolicyShape, DatapathTables]:
    """The datapath shape and tables of a checked policy.

    The checks (ebmesh.language.semantic.nesting) have refused any policy
    past the datapath's limits; meeting one here is a bug in ebmesh.
    """
    classes: dict[Prefix, _ClassInfo] = {}

    def class_for(prefix: Prefix) -> _ClassInfo:
        info = classes.get(prefix)
        if info is None:
            info = classes[prefix] = _ClassInfo(prefix)
        return info

    for workload in policy.workloads:
        for network in workload.prefixes:
            class_for(prefix_of(network)).workload = workload.identity

    # Each rule side's address matches, with excepts cut out, as positive prefixes.
    rule_atoms: list[tuple[dict[int, list[Prefix]], dict[int, list[Prefix]]]] = []
    for rule in policy.rules:
        sides = []
        for side_name, selector in (("src", rule.source), ("dst", rule.destination)):
            atoms: dict[int, list[Prefix]] = {}
            for index, match in enumerate(selector.addresses):
                positive = subtract_prefixes(
                    prefix_of(match.network), [prefix_of(e) for e in match.excepts]
                )
                atoms[index] = positive
                for prefix in positive:
                    info = class_for(prefix)
                    if side_name == "src":
                        info.src_atom = True
                    else:
                        info.dst_atom = True
            sides.append(atoms)
        rule_atoms.append((sides[0], sides[1]))

    tables = DatapathTables(rule_count=len(policy.rules))
    class_links = [(0, 0)]
    class_of: dict[Prefix, int] = {}
    ordered = sorted(classes.values(), key=lambda c: (c.prefix[0], c.prefix[2], c.prefix[1]))
    for class_id, info in enumerate(sorted(classes.values(), key=lambda c: c.prefix), start=1):
        info.class_id = class_id
        class_of[info.prefix] = class_id
        class_links.append((0, 0))

    lengths = {
        4: sorted({p[1] for p in classes if p[0] == 4}),
        6: sorted({p[1] for p in classes if p[0] == 6}),
    }
    tables.v4_lengths, tables.v6_lengths = tuple(lengths[4]), tuple(lengths[6])

    # One sweep in address order keeps the prefixes containing the current one
    # on a stack; each class inherits its nearest ancestors' values.
    max_depth = {"src": 0, "dst": 0}
    rows: dict[Prefix, tuple] = {}
    markers: dict[Prefix, tuple] = {}
    stack: list[tuple[Prefix, tuple, int, int]] = []  # (prefix, row values, src depth, dst depth)
    for info in ordered:
        while stack and not contains(stack[-1][0], info.prefix):
            stack.pop()
        if stack:
            _, (_, parent_workload, parent_src, parent_dst), src_depth, dst_depth = stack[-1]
        else:
            parent_workload = parent_src = parent_dst = src_depth = dst_depth = 0
        values = (
            info.class_id,
            info.workload or parent_workload,
            info.class_id if info.src_atom else parent_src,
            info.class_id if info.dst_atom else parent_dst,
        )
        src_depth += info.src_atom
        dst_depth += info.dst_atom
        for side, depth in (("src", src_depth), ("dst", dst_depth)):
            if depth > MAX_PREFIX_NESTING:
                raise InternalError(
                    f"{depth} {side} prefixes nest around {info.prefix}: the checks let "
                    f"through more than the datapath's {MAX_PREFIX_NESTING}"
                )
            max_depth[side] = max(max_depth[side], depth)
        class_links[info.class_id] = (
            parent_src if info.src_atom else 0,
            parent_dst if info.dst_atom else 0,
        )
        rows[info.prefix] = values
        for marker in _markers(info.prefix, lengths[info.prefix[0]]):
            if marker not in markers:
                markers[marker] = _best_values_at(stack, marker)
        stack.append((info.prefix, values, src_depth, dst_depth))
    tables.class_links = class_links
    for prefix, values in markers.items():
        rows.setdefault(prefix, values)
    for (family, length, value), values in sorted(rows.items()):
        packed = value.to_bytes(4 if family == 4 else 16, "big")
        tables.address_classes.append((family, length, packed, *values))

    # Rules -> (source side, destination side) pairs -> port tables.
    pairs: dict[tuple[int, int], list[tuple[int, int, tuple]]] = defaultdict(list)
    for rule, (src_atoms, dst_atoms) in zip(policy.rules, rule_atoms):
        contribution = (rule.id, _kind(rule), rule.ports)
        src_keys = _side_keys(rule.source, class_of, src_atoms)
        dst_keys = _side_keys(rule.destination, class_of, dst_atoms)
        for src in src_keys:
            for dst in dst_keys:
                pairs[(src, dst)].append(contribution)

    port_tables = _PortTables()
    pair_kinds = 0
    for (src, dst), contributions in pairs.items():
        tables.rule_pairs.append((src, dst, *port_tables.table(contributions)))
        pair_kinds |= 1 << (_side_kind(src) * 3 + _side_kind(dst))
    tables.port_intervals = port_tables.intervals

    identity_count = len(policy.workloads) + len(policy.services)
    flags = [0] * (identity_count + 1)
    for workload in policy.workloads:
        flags[workload.identity] = abi.IDENTITY_MTLS_REQUIRED if workload.mtls_required else 0
    tables.identity_flags = flags
    tables.workloads = policy.workloads
    tables.services = policy.services
    tables.rule_origins = {rule.id: rule.origin for rule in policy.rules if rule.origin}
    tables.mesh = policy.name
    tables.trust_domain = policy.trust_domain
    tables.auth_pairs = pairs_to_authenticate(policy)

    shape = PolicyShape(
        source_name=policy.source_name,
        default_allow=policy.default is Verdict.ALLOW,
        mode_audit=policy.mode is Mode.AUDIT,
        has_mtls_required=any(w.mtls_required for w in policy.workloads),
        has_mtls=any(w.mtls_required for w in policy.workloads)
        or any(r.mtls for r in policy.rules),
        has_services=bool(policy.services),
        accelerate=policy.accelerate,
        pair_kinds=pair_kinds,
        max_src_prefix_nesting=max_depth["src"],
        max_dst_prefix_nesting=max_depth["dst"],
        port_search_steps=max(1, port_tables.longest.bit_length()),
        rules=tuple(_rule_line(rule) for rule in policy.rules),
        default_line=_setting_line(policy, "default"),
        mode_line=_setting_line(policy, "mode"),
    )
    return shape, tables


def pairs_to_authenticate(policy: Policy) -> tuple[tuple[int, int], ...]:
    """The (source, destination) workload pairs whose connections may need mTLS: those an
    `allow ... mtls` rule can match, and those an allow rule or `default allow` can let
    into a workload with `mtls required`. Only these are ever authenticated (a peer host
    cannot ask for others); the local ones before the first connection."""
    workloads = policy.workloads
    requiring = [w for w in workloads if w.mtls_required]
    if not requiring and not any(r.mtls for r in policy.rules):
        return ()  # most policies: no rule looks at pairs (and 100k rules cost nothing here)

    def selected(selector, among):
        """The workloads of `among` the selector names, by identity or by address."""
        if selector.any:
            return among
        chosen = {w.identity: w for w in among if w.identity in selector.identities}
        if selector.addresses:
            for workload in among:
                if workload.identity not in chosen and any(
                    prefix.version == match.network.version and prefix.overlaps(match.network)
                    for match in selector.addresses
                    for prefix in workload.prefixes
                ):
                    chosen[workload.identity] = workload
        return list(chosen.values())

    pairs: set[tuple[int, int]] = set()
    if policy.default is Verdict.ALLOW:
        pairs.update((s.identity, d.identity) for d in requiring for s in workloads)
    for rule in policy.rules:
        if rule.action is not Action.ALLOW:
            continue
        # an mtls rule needs its every pair; another allow, only those into `mtls required`
        destinations = selected(rule.destination, workloads if rule.mtls else requiring)
        if not destinations:
            continue
        sources = selected(rule.source, workloads)
        pairs.update((s.identity, d.identity) for d in destinations for s in sources)
    return tuple(sorted(pairs))


def _rule_line(rule: Rule) -> RuleLine:
    words = rule.action.value
    if rule.mtls:
        words += " mtls"
    if rule.audit:
        words += " audit"
    return RuleLine(rule.id, rule.origin.line if rule.origin else 0, words)


def _setting_line(policy: Policy, key: str) -> int | None:
    origin = policy.settings_origin.get(key)
    return origin.line if origin else None
