"""Lowering (ebmesh/ir/lowering.py): the IR becomes the datapath's tables.

No kernel and no clang: every test here builds IR or parses policy text and
looks at the tables, checking them against brute force or a plain-Python
copy of what the datapath does with them. The last part holds the reference
evaluator (tests/support/reference.py) to the contract's example, with expected
verdicts worked out by hand from the contract's text.
"""

from __future__ import annotations

import ipaddress
import random
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ebmesh
from ebmesh.datapath import abi
from ebmesh.datapath.limits import MAX_PREFIX_NESTING
from ebmesh.errors import InternalError
from ebmesh.ir.lowering import lower
from ebmesh.ir.model import (
    ALL_PORTS,
    Action,
    AddressMatch,
    Mode,
    Policy,
    PortMatch,
    Protocol,
    Rule,
    Selector,
    Verdict,
    Workload,
)
from ebmesh.ir.prefixes import network_of, prefix_of, subtract_prefixes
from ebmesh.language import load, parse
from ebmesh.language.lower import lower_to_ir
from tests.support import reference

REPO = Path(__file__).resolve().parents[2]
SHOP = REPO / "examples" / "shop.mesh"
ANY = Selector(any=True)
TCP, UDP = frozenset({Protocol.TCP}), frozenset({Protocol.UDP})
BOTH = frozenset(Protocol)


def net(text: str):
    return ipaddress.ip_network(text)


def policy_of(rules=(), workloads=(), default=Verdict.DENY, mode=Mode.ENFORCE) -> Policy:
    return Policy(
        name="t",
        trust_domain="t",
        default=default,
        mode=mode,
        accelerate=False,
        workloads=tuple(workloads),
        services=(),
        rules=tuple(rules),
    )


def rule(
    rule_id,
    source=ANY,
    destination=ANY,
    ports=ALL_PORTS,
    action=Action.ALLOW,
    mtls=False,
    audit=False,
):
    return Rule(rule_id, action, source, destination, tuple(ports), mtls, audit)


def to_dst(*networks, excepts=()) -> Selector:
    return Selector(addresses=tuple(AddressMatch(n, tuple(excepts)) for n in networks))


def size(prefix) -> int:
    family, length, _ = prefix
    return 1 << ((32 if family == 4 else 128) - length)


def covers(prefix, address: int) -> bool:
    family, length, value = prefix
    shift = (32 if family == 4 else 128) - length
    return (address >> shift) == (value >> shift)


# ---- subtract_prefixes ----------------------------------------------------------


def test_subtract_a_24_from_an_8():
    whole, hole = prefix_of(net("10.0.0.0/8")), prefix_of(net("10.0.3.0/24"))
    pieces = subtract_prefixes(whole, [hole])

    # Exactly the difference, in the fewest prefixes: one per bit between /8 and /24.
    assert sum(size(p) for p in pieces) == (1 << 24) - (1 << 8)
    assert len(pieces) == 24 - 8
    assert pieces == sorted(pieces)
    networks = [network_of(p) for p in pieces]
    for a, b in zip(networks, networks[1:]):
        assert not a.overlaps(b), (a, b)
    for piece in networks:
        assert piece.subnet_of(net("10.0.0.0/8")) and not piece.overlaps(net("10.0.3.0/24"))

    edges = [
        "10.0.0.0",
        "10.0.2.255",
        "10.0.3.0",
        "10.0.3.128",
        "10.0.3.255",
        "10.0.4.0",
        "10.255.255.255",
    ]
    rng = random.Random(7)
    samples = [int(ipaddress.IPv4Address(a)) for a in edges]
    samples += [(10 << 24) | rng.getrandbits(24) for _ in range(2000)]
    samples += [(10 << 24) | (3 << 8) | rng.getrandbits(8) for _ in range(200)]  # inside the hole
    for address in samples:
        inside_difference = covers(whole, address) and not covers(hole, address)
        holders = [p for p in pieces if covers(p, address)]
        assert len(holders) == (1 if inside_difference else 0), (
            ipaddress.IPv4Address(address),
            holders,
        )


def test_subtract_edge_cases():
    ten = prefix_of(net("10.0.0.0/8"))
    assert subtract_prefixes(ten, []) == [ten]
    assert subtract_prefixes(ten, [prefix_of(net("11.0.0.0/8"))]) == [ten]  # outside: no effect
    assert subtract_prefixes(ten, [prefix_of(net("0.0.0.0/0"))]) == []  # swallowed whole
    assert subtract_prefixes(ten, [ten]) == []
    six = prefix_of(net("fd00::/64"))
    pieces = subtract_prefixes(six, [prefix_of(net("fd00::/65"))])
    assert pieces == [prefix_of(net("fd00:0:0:0:8000::/65"))]


@st.composite
def network_and_excepts(draw):
    """A prefix and excepts drawn near one anchor address: inside it, around it, over it."""
    family = draw(st.sampled_from([4, 6]))
    bits = 32 if family == 4 else 128
    anchor = draw(st.integers(0, (1 << bits) - 1))

    def masked(value, length):
        return (family, length, (value >> (bits - length)) << (bits - length) if length else 0)

    length = draw(st.integers(0, bits - 4))
    excepts = []
    for _ in range(draw(st.integers(0, 5))):
        except_length = draw(st.integers(max(0, length - 2), min(bits, length + 12)))
        flip = draw(st.integers(0, bits - 1))
        value = anchor ^ (1 << flip) if draw(st.booleans()) else anchor
        excepts.append(masked(value, except_length))
    return masked(anchor, length), excepts, anchor, bits


@settings(max_examples=150, deadline=None)
@given(network_and_excepts(), st.randoms(use_true_random=False))
def test_subtract_is_exactly_the_difference(case, rng):
    whole, excepts, anchor, bits = case
    pieces = subtract_prefixes(whole, excepts)
    pieces_net = [network_of(p) for p in pieces]
    for a, b in zip(pieces_net, pieces_net[1:]):
        assert not a.overlaps(b)

    # Size: |whole| - |whole ∩ union(excepts)|, the union counted without overlaps.
    cut = [e for e in excepts if covers(whole, e[2]) and e[1] >= whole[1]]
    if any(e[1] <= whole[1] and covers(e, whole[2]) for e in excepts):
        expected = 0
    else:
        outermost = [
            e for e in cut if not any(o != e and o[1] < e[1] and covers(o, e[2]) for o in cut)
        ]
        expected = size(whole) - sum(size(e) for e in set(outermost))
    assert sum(size(p) for p in pieces) == expected

    samples = [anchor, whole[2], whole[2] + size(whole) - 1]
    samples += [e[2] for e in excepts] + [e[2] + size(e) - 1 for e in excepts]
    samples += [(e[2] - 1) % (1 << bits) for e in excepts] + [
        (e[2] + size(e)) % (1 << bits) for e in excepts
    ]
    samples += [whole[2] + rng.randrange(size(whole)) for _ in range(50)]
    for address in samples:
        wanted = covers(whole, address) and not any(covers(e, address) for e in excepts)
        assert sum(covers(p, address) for p in pieces) == int(wanted)


# ---- address classes: the binary search on prefix lengths ------------------------

MAX_LENGTH_PROBES = 8  # bpf_src/addresses.h
CAPACITY = {4: abi.MAX_PREFIX_LENGTHS_V4, 6: abi.MAX_PREFIX_LENGTHS_V6}


def test_probe_bound_matches_the_datapath():
    """The simulation below is only as good as its constants: read them from the C."""
    text = (REPO / "bpf_src" / "addresses.h").read_text()
    assert re.search(r"#define MAX_LENGTH_PROBES (\d+)", text).group(1) == str(MAX_LENGTH_PROBES)
    # 8 probes cover up to 255 lengths, enough for the 129 of IPv6; 6 cover IPv4's 33.
    assert (1 << MAX_LENGTH_PROBES) > abi.MAX_PREFIX_LENGTHS_V6


def search_lengths(rows: dict, family: int, address: int, lengths: tuple[int, ...]):
    """bpf_src/addresses.h `search_lengths`, line for line: [low, high) over the
    ascending lengths, a hit goes longer, a miss shorter, and every hit whose
    class_id is not 0 is the best so far."""
    bits = 32 if family == 4 else 128
    best = None
    low, high = 0, len(lengths)
    for _ in range(MAX_LENGTH_PROBES):
        if low >= high:
            break
        middle = (low + high) // 2
        if middle >= CAPACITY[family]:
            break
        length = lengths[middle]
        masked = (address >> (bits - length)) << (bits - length) if length else 0
        found = rows.get((family, length, masked))
        if found is not None:
            if found[0]:
                best = found
            low = middle + 1
        else:
            high = middle
    return best


def rows_of(tables) -> dict:
    rows = {}
    for family, length, packed, *values in tables.address_classes:
        key = (family, length, int.from_bytes(packed, "big"))
        assert key not in rows, f"two rows for {key}"
        rows[key] = tuple(values)
    return rows


@st.composite
def prefix_sets(draw):
    """Workload prefixes and source/destination rule prefixes, drawn around a few
    anchor addresses so that they nest, share markers and leave gaps."""
    family = draw(st.sampled_from([4, 4, 6]))
    bits = 32 if family == 4 else 128
    anchors = draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=1, max_size=3))

    def prefixes(max_size):
        drawn = draw(
            st.lists(
                st.tuples(st.integers(0, len(anchors) - 1), st.integers(0, bits)), max_size=max_size
            )
        )
        return sorted(
            {
                (
                    family,
                    length,
                    (anchors[i] >> (bits - length)) << (bits - length) if length else 0,
                )
                for i, length in drawn
            }
        )

    return (
        family,
        bits,
        anchors,
        prefixes(8),
        prefixes(MAX_PREFIX_NESTING - 4),
        prefixes(MAX_PREFIX_NESTING - 4),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix_sets(), st.randoms(use_true_random=False))
def test_search_finds_the_longest_containing_prefix(case, rng):
    family, bits, anchors, workload_prefixes, src_prefixes, dst_prefixes = case
    workloads = [
        Workload(identity, f"w{identity}", None, (network_of(p),), f"spiffe://t/w{identity}", False)
        for identity, p in enumerate(workload_prefixes, start=1)
    ]
    rules = [rule(n, source=to_dst(network_of(p))) for n, p in enumerate(src_prefixes, start=1)]
    rules += [
        rule(len(rules) + n, destination=to_dst(network_of(p)))
        for n, p in enumerate(dst_prefixes, start=1)
    ]
    policy = policy_of(rules, workloads)
    _, tables = lower(policy)

    rows = rows_of(tables)
    lengths = tables.v4_lengths if family == 4 else tables.v6_lengths
    classes = set(workload_prefixes) | set(src_prefixes) | set(dst_prefixes)
    assert list(lengths) == sorted({p[1] for p in classes})
    class_ids = {p: rows[p][0] for p in classes}
    assert sorted(class_ids.values()) == list(range(1, len(classes) + 1))

    samples = list(anchors) + [rng.getrandbits(bits) for _ in range(8)]
    for anchor in anchors:  # leave the nest at every depth
        samples += [anchor ^ (1 << rng.randrange(bits)) for _ in range(12)]
    for address in samples:
        found = search_lengths(rows, family, address, lengths)
        holders = sorted((p for p in classes if covers(p, address)), key=lambda p: p[1])
        if not holders:
            assert found is None
            continue
        assert found is not None, f"{address:#x}: no class found, expected {holders[-1]}"
        class_id, workload, src_start, dst_start = found
        assert class_id == class_ids[holders[-1]]
        ip = ipaddress.IPv4Address(address) if family == 4 else ipaddress.IPv6Address(address)
        assert workload == reference.workload_by_address(policy, ip)

        # The parent links walk every rule prefix of a side that holds the address, longest first.
        for start, side_prefixes, side in (
            (src_start, src_prefixes, 0),
            (dst_start, dst_prefixes, 1),
        ):
            chain, current = [], start
            while current:
                chain.append(current)
                current = tables.class_links[current][side]
            expected = [
                class_ids[p]
                for p in sorted(side_prefixes, key=lambda p: -p[1])
                if covers(p, address)
            ]
            assert chain == expected


def test_search_on_the_contract_example():
    tables = lower(lower_to_ir(load(SHOP)))[1]
    rows = rows_of(tables)
    # A marker row carries the values of a shorter real prefix; the real one is the shortest.
    prefix_of_class = {}
    for key, values in sorted(rows.items(), key=lambda item: -item[0][1]):
        if values[0]:
            prefix_of_class[values[0]] = key

    def classify(text):
        address = ipaddress.ip_address(text)
        lengths = tables.v4_lengths if address.version == 4 else tables.v6_lengths
        return search_lengths(rows, address.version, int(address), lengths)

    # Workloads by address: api's /32s (2), db inside the except (3), frontend's /24 and /64 (1).
    assert classify("10.0.2.10")[1] == 2
    assert classify("10.0.3.5")[1] == 3
    assert classify("10.0.1.77")[1] == 1
    assert classify("fd00:1::9")[1] == 1
    assert classify("fd00:2::9") is None  # no IPv6 prefix holds it
    # 10.0.3.7 is in 10.0.0.0/8 but inside its except: the longest destination
    # prefix of a rule holding it is 0.0.0.0/0 (rule 5).
    family, length, value = prefix_of_class[classify("10.0.3.7")[3]]
    assert (family, length, value) == (4, 0, 0)
    # 10.0.4.1 is in rule 6's 10.0.0.0/8-minus-the-except: its chain is that piece, then 0.0.0.0/0.
    start = classify("10.0.4.1")[3]
    piece = network_of(prefix_of_class[start])
    assert piece.subnet_of(net("10.0.0.0/8")) and not piece.overlaps(net("10.0.3.0/24"))
    assert prefix_of_class[tables.class_links[start][1]] == (4, 0, 0)


# ---- rule pairs and port tables ------------------------------------------------

KINDS = {  # kind index in a port interval row -> (action, mtls, audit)
    0: (Action.DENY, False, False),
    1: (Action.ALLOW, False, False),
    2: (Action.ALLOW, True, False),
    3: (Action.DENY, False, True),
}


def table_of(tables, pair_key, protocol):
    row = next(r for r in tables.rule_pairs if (r[0], r[1]) == pair_key)
    _, _, tcp_first, udp_first, tcp_count, udp_count = row
    first, count = (tcp_first, tcp_count) if protocol is Protocol.TCP else (udp_first, udp_count)
    return tables.port_intervals[first : first + count]


port_ranges = st.tuples(
    st.sampled_from([0, 1, 22, 79, 80, 81, 443, 1023, 1024, 8080, 65534, 65535]),
    st.integers(0, 300),
).map(lambda t: (t[0], min(65535, t[0] + t[1])))


@st.composite
def rule_lists(draw):
    rules = []
    for rule_id in range(1, draw(st.integers(1, 12)) + 1):
        kind = draw(st.sampled_from(sorted(KINDS)))
        action, mtls, audit = KINDS[kind]
        ports = tuple(
            PortMatch(low, high, draw(st.sampled_from([TCP, UDP, BOTH])))
            for low, high in draw(st.lists(port_ranges, min_size=1, max_size=3))
        )
        rules.append(rule(rule_id, ports=ports, action=action, mtls=mtls, audit=audit))
    return rules


@settings(max_examples=200, deadline=None)
@given(rule_lists())
def test_port_intervals_hold_the_earliest_rule_of_each_kind(rules):
    _, tables = lower(policy_of(rules))
    assert len(tables.rule_pairs) == 1  # every rule is any -> any: one pair
    for protocol in Protocol:
        intervals = table_of(tables, (abi.SIDE_ANY, abi.SIDE_ANY), protocol)
        for low, high, *_ in intervals:
            assert 0 <= low <= high <= 65535
        for a, b in zip(intervals, intervals[1:]):
            assert a[1] < b[0], "intervals must be sorted and disjoint"

        # Between two consecutive cut points every port sees the same rules, so
        # checking each elementary segment's first and last port is exhaustive.
        cuts = {0, 65536}
        for r in rules:
            for p in r.ports:
                cuts |= {p.low, p.high + 1}
        cuts = sorted(cuts)
        for start, end in zip(cuts, cuts[1:]):
            for port in (start, end - 1):
                expected = []
                for kind in sorted(KINDS):
                    ids = [
                        r.id
                        for r in rules
                        if (r.action, r.mtls, r.audit) == KINDS[kind]
                        and any(p.contains(port, protocol) for p in r.ports)
                    ]
                    expected.append(min(ids) if ids else abi.NO_RULE)
                held = [i for i in intervals if i[0] <= port <= i[1]]
                if expected == [abi.NO_RULE] * 4:
                    assert held == [], (port, protocol, held)
                else:
                    assert len(held) == 1 and list(held[0][2:]) == expected, (
                        port,
                        protocol,
                        held,
                        expected,
                    )
        # Neighbouring intervals with the same rules are merged.
        for a, b in zip(intervals, intervals[1:]):
            assert not (a[1] + 1 == b[0] and a[2:] == b[2:])


def test_identical_port_tables_are_stored_once():
    a, b, c = (
        Workload(i, n, n, (), f"spiffe://t/{n}", False) for i, n in ((1, "a"), (2, "b"), (3, "c"))
    )
    both = Selector(identities=frozenset({1, 3}))
    rules = [
        rule(
            1,
            source=both,
            destination=Selector(identities=frozenset({2})),
            ports=[PortMatch(80, 80, TCP)],
        ),
        rule(
            2,
            source=Selector(identities=frozenset({2})),
            destination=ANY,
            ports=[PortMatch(53, 53, UDP)],
        ),
    ]
    _, tables = lower(policy_of(rules, [a, b, c]))
    pairs = {(r[0], r[1]): r[2:] for r in tables.rule_pairs}
    identity = abi.SIDE_IDENTITY
    # Rule 1 expands to a->b and c->b: one table, stored once.
    assert pairs[(identity | 1, identity | 2)] == pairs[(identity | 3, identity | 2)]
    assert pairs[(identity | 1, identity | 2)][2:] == (1, 0)  # tcp: one interval; udp: none
    assert pairs[(identity | 2, abi.SIDE_ANY)][2:] == (0, 1)
    assert len(tables.port_intervals) == 2

    # In general: no run of intervals is stored twice.
    shop = lower(lower_to_ir(load(SHOP)))[1]
    for t in (tables, shop):
        runs = {}
        for _, _, tcp_first, udp_first, tcp_count, udp_count in t.rule_pairs:
            for first, count in ((tcp_first, tcp_count), (udp_first, udp_count)):
                if count:
                    runs.setdefault(tuple(t.port_intervals[first : first + count]), set()).add(
                        (first, count)
                    )
        assert all(len(places) == 1 for places in runs.values()), runs
        assert sum(len(run) for run in runs) == len(t.port_intervals)


def pair_kinds_of(text: str) -> int:
    return lower(lower_to_ir(load(text)))[0].pair_kinds


def test_pair_kinds_bitmask():
    # kind values: identity 0, any 1, class 2; bit (src * 3 + dst)
    head = 'mesh t { workload a { cgroup "a" address 10.1.0.0/16 } workload b { cgroup "b" }\n'
    assert pair_kinds_of(head + "allow a -> b }") == 1 << 0
    assert pair_kinds_of(head + "allow a -> any }") == 1 << 1
    assert pair_kinds_of(head + "allow a -> 10.0.0.0/8 }") == 1 << 2
    assert pair_kinds_of(head + "allow any -> b }") == 1 << 3
    assert pair_kinds_of(head + "allow any -> any }") == 1 << 4
    assert pair_kinds_of(head + "allow 10.0.0.0/8 -> b }") == 1 << 6
    assert pair_kinds_of(head + "allow 10.0.0.0/8 -> 10.0.0.0/8 }") == 1 << 8
    assert pair_kinds_of(head + "allow [a, 10.0.0.0/8] -> [b, any] }") == (1 << 0) | (1 << 1) | (
        1 << 6
    ) | (1 << 7)
    assert pair_kinds_of(head + "}") == 0
    # The contract's example: identity->identity, any->class, identity->class.
    assert pair_kinds_of(SHOP.read_text()) == (1 << 0) | (1 << 5) | (1 << 2)


def test_pair_kind_numbering_agrees_with_the_datapath():
    text = (REPO / "bpf_src" / "decide.h").read_text()
    defined = dict(re.findall(r"#define SIDE_KIND_(\w+) (\d+)", text))
    assert defined == {
        "IDENTITY": str(abi.SIDE_KIND_IDENTITY),
        "ANY": str(abi.SIDE_KIND_ANY),
        "CLASS": str(abi.SIDE_KIND_CLASS),
    }
    assert "#define PAIR_KIND(src, dst) (1u << ((src) * 3 + (dst)))" in text


def test_nesting_limit():
    def nested(count):
        rules = "\n".join(f"allow any -> 10.0.0.0/{8 + i}" for i in range(count))
        return f"mesh t {{\n{rules}\n}}\n"

    shape, _ = lower(lower_to_ir(load(nested(MAX_PREFIX_NESTING))))
    assert shape.max_dst_prefix_nesting == MAX_PREFIX_NESTING
    # One too many is the policy's mistake, found where the language is checked...
    with pytest.raises(ebmesh.PolicyError, match="cannot be enforced") as raised:
        load(nested(MAX_PREFIX_NESTING + 1))
    # ... located at the rule whose prefix is one too many.
    assert raised.value.diagnostics[0].location.line == MAX_PREFIX_NESTING + 2
    # Below the checks, such a policy can only come from a bug in ebmesh.
    with pytest.raises(InternalError, match="nest"):
        lower(lower_to_ir(parse(nested(MAX_PREFIX_NESTING + 1))))


def test_nesting_counts_the_pieces_an_except_leaves():
    """10.0.0.0/8 except 10.0.0.0/24 is not one prefix but the disjoint pieces it leaves, /9 to
    /24: one deep. Its piece 10.128.0.0/9 and 15 CIDRs inside it are 16 deep, not 17."""
    cut = "allow any -> 10.0.0.0/8 except 10.0.0.0/24"
    load(f"mesh t {{\n{cut}\n}}\n")
    rules = [f"allow any -> 10.128.0.0/{10 + i}" for i in range(MAX_PREFIX_NESTING - 1)]
    ok = "\n".join([cut, *rules])
    shape, _ = lower(lower_to_ir(load(f"mesh t {{\n{ok}\n}}\n")))
    assert shape.max_dst_prefix_nesting == MAX_PREFIX_NESTING
    one_more = "\n".join([cut, *rules, "allow any -> 10.128.0.1"])
    with pytest.raises(ebmesh.PolicyError, match=f"{MAX_PREFIX_NESTING + 1} destination"):
        load(f"mesh t {{\n{one_more}\n}}\n")
    # Many lengths, but side by side rather than nested: nothing to refuse.
    apart = "\n".join(f"allow any -> {20 + i}.0.0.0/{8 + i}" for i in range(MAX_PREFIX_NESTING + 8))
    assert lower(lower_to_ir(load(f"mesh t {{\n{apart}\n}}\n")))[0].max_dst_prefix_nesting == 1
    sources = "\n".join(f"allow 10.0.0.0/{8 + i} -> any" for i in range(MAX_PREFIX_NESTING + 1))
    with pytest.raises(ebmesh.PolicyError, match=f"{MAX_PREFIX_NESTING + 1} source"):
        load(f"mesh t {{\n{sources}\n}}\n")


# ---- the reference evaluator on the contract's example ---------------------------------
#
# Identities: workloads in order, then services: frontend 1, api 2, db 3, api-svc 4.
# Rules (ids in source order):
#   1 allow frontend -> api-svc
#   2 allow frontend -> api port 8080/tcp mtls
#   3 allow api -> db port 5432/tcp
#   4 allow any -> 10.53.0.0/16 port 53/udp, 53/tcp
#   5 deny  any -> 0.0.0.0/0 port 25/tcp
#   6 deny  api -> 10.0.0.0/8 except 10.0.3.0/24 port 1-1023/tcp
#   7 deny  frontend -> 10.0.2.0/24 port 22/tcp audit
# default deny, mode enforce; api says `mtls required`.

FRONTEND, API, DB, API_SVC = 1, 2, 3, 4
FRONT_API = frozenset({(FRONTEND, API)})
# (name, flow keyword arguments, authenticated pairs, verdict, deciding rule, audit rule, needs mtls)
SHOP_FLOWS = [
    # Traffic to a service is judged by the service's name. (The pair is authenticated
    # so that the row holds whether or not api's `mtls required` reaches through the VIP.)
    (
        "frontend to the service",
        dict(src_identity=FRONTEND, dst_identity=API_SVC, dst_address="10.96.0.10", port=80),
        FRONT_API,
        "allow",
        1,
        0,
        None,
    ),
    (
        "mtls allow, not authenticated",
        dict(src_identity=FRONTEND, dst_identity=API, dst_address="10.0.2.10", port=8080),
        frozenset(),
        "deny",
        2,
        0,
        True,
    ),
    (
        "mtls allow, authenticated",
        dict(src_identity=FRONTEND, dst_identity=API, dst_address="10.0.2.10", port=8080),
        FRONT_API,
        "allow",
        2,
        0,
        True,
    ),
    (
        "mtls rule is tcp only",
        dict(
            src_identity=FRONTEND,
            dst_identity=API,
            dst_address="10.0.2.10",
            port=8080,
            protocol=Protocol.UDP,
        ),
        FRONT_API,
        "deny",
        0,
        0,
        False,
    ),
    (
        "api known by address",
        dict(src_identity=FRONTEND, dst_address="10.0.2.11", port=8080),
        FRONT_API,
        "allow",
        2,
        0,
        True,
    ),
    (
        "audit rule reports, default decides",
        dict(src_identity=FRONTEND, dst_address="10.0.2.10", port=22),
        FRONT_API,
        "deny",
        0,
        7,
        False,
    ),
    (
        "api to db",
        dict(src_identity=API, dst_address="10.0.3.5", port=5432),
        frozenset(),
        "allow",
        3,
        0,
        False,
    ),
    (
        "api to db, another port: the except keeps rule 6 out",
        dict(src_identity=API, dst_address="10.0.3.5", port=22),
        frozenset(),
        "deny",
        0,
        0,
        False,
    ),
    (
        "api into 10/8 low ports",
        dict(src_identity=API, dst_address="10.0.4.1", port=22),
        frozenset(),
        "deny",
        6,
        0,
        False,
    ),
    (
        "deny beats an earlier allow",
        dict(src_identity=API, dst_address="10.53.0.1", port=53),
        frozenset(),
        "deny",
        6,
        0,
        False,
    ),
    (
        "the deny is tcp only",
        dict(src_identity=API, dst_address="10.53.0.1", port=53, protocol=Protocol.UDP),
        frozenset(),
        "allow",
        4,
        0,
        False,
    ),
    (
        "a process of no workload, DNS",
        dict(src_identity=0, dst_address="10.53.200.7", port=53, protocol=Protocol.UDP),
        frozenset(),
        "allow",
        4,
        0,
        False,
    ),
    (
        "a process of no workload, DNS over tcp",
        dict(src_identity=0, dst_address="10.53.0.1", port=53),
        frozenset(),
        "allow",
        4,
        0,
        False,
    ),
    (
        "outside the DNS range",
        dict(src_identity=0, dst_address="10.54.0.1", port=53, protocol=Protocol.UDP),
        frozenset(),
        "deny",
        0,
        0,
        False,
    ),
    (
        "smtp anywhere",
        dict(src_identity=FRONTEND, dst_address="192.0.2.1", port=25),
        frozenset(),
        "deny",
        5,
        0,
        False,
    ),
    (
        "smtp to the VIP address is not the service",
        dict(src_identity=FRONTEND, dst_address="10.96.0.10", port=25),
        frozenset(),
        "deny",
        5,
        0,
        False,
    ),
    (
        "0.0.0.0/0 is IPv4 only",
        dict(src_identity=FRONTEND, dst_address="2001:db8::1", port=25),
        frozenset(),
        "deny",
        0,
        0,
        False,
    ),
    (
        "a frontend address from outside is frontend",
        dict(src_address="10.0.1.7", dst_identity=API_SVC, dst_address="10.96.0.10", port=80),
        FRONT_API,
        "allow",
        1,
        0,
        None,
    ),
    (
        "a stranger's address is nobody",
        dict(src_address="192.0.2.9", dst_identity=API_SVC, dst_address="10.96.0.10", port=80),
        frozenset(),
        "deny",
        0,
        0,
        False,
    ),
    (
        "frontend's IPv6 prefix is frontend too",
        dict(src_address="fd00:1::5", dst_identity=API, dst_address="fd00:5::1", port=8080),
        FRONT_API,
        "allow",
        2,
        0,
        True,
    ),
]


@pytest.fixture(scope="module")
def shop_policy():
    return lower_to_ir(load(SHOP))


def test_contract_example_numbering(shop_policy):
    """The table above assumes these numbers; the contract fixes the order."""
    assert [(w.name, w.identity) for w in shop_policy.workloads] == [
        ("frontend", 1),
        ("api", 2),
        ("db", 3),
    ]
    assert [(s.name, s.identity) for s in shop_policy.services] == [("api-svc", 4)]
    lines = SHOP.read_text().split("\n")
    written = [n for n, text in enumerate(lines, 1) if re.match(r"\s*(allow|deny)\s", text)]
    assert [r.origin.line for r in shop_policy.rules] == written


@pytest.mark.parametrize(
    "name, flow, authenticated, verdict, rule_id, audit_rule, needs_mtls",
    SHOP_FLOWS,
    ids=[row[0] for row in SHOP_FLOWS],
)
def test_reference_on_the_contract_example(
    shop_policy, name, flow, authenticated, verdict, rule_id, audit_rule, needs_mtls
):
    arguments = dict(flow)
    arguments["dst_address"] = ipaddress.ip_address(arguments["dst_address"])
    if "src_address" in arguments:
        arguments["src_address"] = ipaddress.ip_address(arguments["src_address"])
    arguments.setdefault("protocol", Protocol.TCP)
    decision = reference.decide(shop_policy, reference.Flow(**arguments), authenticated)
    assert decision.verdict is (Verdict.ALLOW if verdict == "allow" else Verdict.DENY)
    assert decision.rule == rule_id
    assert decision.by_default == (rule_id == 0)
    assert decision.audit_rule == audit_rule
    assert not decision.would_deny
    if needs_mtls is not None:
        assert decision.needs_mtls == needs_mtls


def test_reference_mode_audit_lets_denials_through():
    text = SHOP.read_text().replace("mode enforce", "mode audit")
    policy = lower_to_ir(load(text))
    smtp = reference.Flow(
        ipaddress.ip_address("192.0.2.1"), 25, Protocol.TCP, src_identity=FRONTEND
    )
    decision = reference.decide(policy, smtp)
    assert (decision.verdict, decision.rule, decision.would_deny) == (Verdict.ALLOW, 5, True)
    unauthenticated = reference.Flow(
        ipaddress.ip_address("10.0.2.10"),
        8080,
        Protocol.TCP,
        src_identity=FRONTEND,
        dst_identity=API,
    )
    decision = reference.decide(policy, unauthenticated)
    assert (decision.verdict, decision.rule, decision.would_deny, decision.needs_mtls) == (
        Verdict.ALLOW,
        2,
        True,
        True,
    )
    dns = reference.Flow(ipaddress.ip_address("10.53.0.1"), 53, Protocol.UDP, src_identity=0)
    decision = reference.decide(policy, dns)
    assert (decision.verdict, decision.rule, decision.would_deny) == (Verdict.ALLOW, 4, False)


def test_rule_text_is_the_text_of_its_line():
    """What `explain` and events quote for a rule is the line the rule is on,
    whatever characters a comment above it holds."""
    text = "mesh t {\n    # form\x0cfeed, record\x1eseparator\n    allow any -> 10.0.0.0/8 port 80\n}\n"
    (only,) = lower_to_ir(load(text)).rules
    assert only.origin.line == 3
    assert only.origin.text.strip() == "allow any -> 10.0.0.0/8 port 80"


# ---- the pairs mTLS needs -----------------------------------------------------------

MTLS = """
mesh m {
    workload web   { cgroup "web" }
    workload api   { cgroup "api" address 10.0.0.2 }
    workload db    { cgroup "db" mtls required }
    workload batch { address 10.0.0.9 }
    workload other { cgroup "other" }
    allow web -> api port 8080/tcp mtls
    allow 10.0.0.0/24 -> db
    allow any -> other
    deny web -> db
}
"""


def names_of_pairs(text: str) -> set[tuple[str, str]]:
    tables = lower(lower_to_ir(load(text)))[1]
    name = {w.identity: w.name for w in tables.workloads}
    return {(name[s], name[d]) for s, d in tables.auth_pairs}


def test_the_pairs_are_those_of_mtls_rules_and_into_mtls_required():
    """An mtls rule's pairs; into db (mtls required) whoever an allow rule lets in there,
    a workload on another host too (batch, by its address); `any -> other` needs no mTLS;
    a deny rule makes no pair."""
    assert names_of_pairs(MTLS) == {("web", "api"), ("api", "db"), ("batch", "db")}


def test_default_allow_needs_every_pair_into_mtls_required():
    pairs = names_of_pairs(MTLS.replace("mesh m {", "mesh m {\n    default allow"))
    into_db = {s for s, d in pairs if d == "db"}
    assert into_db == {"web", "api", "db", "batch", "other"}
    assert ("web", "api") in pairs and not any(d == "other" for _, d in pairs)


def test_a_policy_without_mtls_needs_no_pair():
    plain = MTLS.replace(" mtls required", "").replace(" mtls\n", "\n")
    assert names_of_pairs(plain) == set()
