"""Benchmark policies: the same shape at every size.

`generate(rules, client_ip, server_ip)` writes a mesh with two local
workloads the benchmark drives (`client` and `server`, each a cgroup with one
loopback address), many address-only peer workloads, and exactly `rules`
rules mixing the contract's forms in fixed proportions (each form at least
once, so even the 10-rule policy has every form):

    form         example                                               share
    wl_port      allow client -> peer17 port 443/tcp                    22%
    peer_in      allow peer9 -> server port 9000/tcp                    14%
    any_cidr     allow any -> 10.40.3.0/24 port 5432/tcp                14%
    except       deny client -> 10.7.0.0/16 except 10.7.9.0/24 port 1-1023/tcp
                                                                         5%
    cidr_src     allow 172.16.4.0/24 -> server port 8443/tcp             12%
    range        allow client -> peer3 port 1000-1337/tcp (unaligned)   12%
    udp          allow client -> 10.53.2.9 port 53/udp / any -> peer udp 10%
    list         allow [client, 172.20.1.0/24] -> [peer1, peer2] port 80  5%
    audit        deny client -> peer5 port 23/tcp audit                   3%
    local_pair   allow/deny client -> server port <not 8080>             0.1%
    broad        deny any -> 0.0.0.0/0 port 25/tcp, allow client -> 10.0.0.0/8 ...
                                                                        0.05%
    measured     allow client -> server port 8080/tcp                   the LAST rule

Every rule has a side that can be local (`client`, `server`, `any` or a
CIDR): two address-only peers on both sides "cannot be enforced".

Address plan (IPv4): peers are mostly /32 in 10.1.0.0-10.127.255.255 and
/24 in 10.128.0.0-10.255.255.0; rule CIDRs are /32 and /24 in 10/8, /24 in
172.16.0.0/12 (sources), /16 with /24 excepts in 10/8, a few /8 and
0.0.0.0/0. No rule matches client -> server 8080/tcp but the last one, and no
deny or audit rule covers it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MEASURED_PORT = 8080

# (form, share). A policy of fewer than 12 rules takes the first forms, one
# each: the 10-rule policy has one of each of the first nine (every form
# that touches the measured flow's lookups among them) and the measured rule.
FORMS: tuple[tuple[str, float], ...] = (
    ("wl_port", 0.22),
    ("any_cidr", 0.14),
    ("except", 0.05),
    ("cidr_src", 0.12),
    ("range", 0.12),
    ("udp", 0.10),
    ("audit", 0.03),
    ("local_pair", 0.001),
    ("broad", 0.0005),
    ("peer_in", 0.14),
    ("list", 0.05),
)

# Ports people write in policies; 8080 only ever in the measured rule.
COMMON_PORTS = (
    22,
    80,
    443,
    3306,
    5432,
    6379,
    9000,
    9090,
    9200,
    9300,
    11211,
    27017,
    8443,
    8000,
    8081,
    8888,
    5000,
    5672,
    15672,
    2379,
    2380,
    6443,
    10250,
    9092,
    2181,
    7000,
    7001,
    9042,
    3000,
    4000,
)
BROAD = (
    "deny any -> 0.0.0.0/0 port {p}/tcp",
    "allow client -> 10.0.0.0/8 port {p}/tcp",
    "deny any -> 192.168.0.0/16 port {p}",
    "allow 10.0.0.0/8 -> server port {p}/tcp",
    "deny client -> 172.16.0.0/12 port {p}/udp",
    "allow any -> 0.0.0.0/0 port {p}/udp",
)
BROAD_PORTS = (25, 445, 137, 139, 161, 389, 636, 1433, 1521, 2049)


@dataclass(frozen=True)
class GeneratedPolicy:
    text: str
    rules: int
    peers: int
    form_counts: dict[str, int]
    measured_rule_line: int


def form_counts(rules: int) -> dict[str, int]:
    """How many rules of each form a policy of `rules` rules has (the measured one apart)."""
    others = rules - 1
    if others < len(FORMS) - 2:
        raise ValueError(f"at least {len(FORMS) - 1} rules are needed for the benchmark's shape")
    counts = {form: 0 for form, _ in FORMS}
    if others < len(FORMS):
        for form, _ in FORMS[:others]:
            counts[form] = 1
        return counts
    for form, share in FORMS:
        counts[form] = max(1, round(share * others))
    # The remainder (rounding) goes to the most common form.
    counts["wl_port"] += others - sum(counts.values())
    return counts


def peer_count(rules: int) -> int:
    return max(4, rules // 10)


def _peer_address(index: int) -> str:
    """Peer i: 3 of 4 are one /32 in 10.1-127.x.y, 1 of 4 a /24 in 10.128-255.x.0."""
    if index % 4 == 3:
        n = index // 4
        return f"10.{128 + (n // 256) % 128}.{n % 256}.0/24"
    n = index - index // 4
    return f"10.{1 + (n // 65024) % 127}.{(n // 254) % 256}.{1 + n % 254}"


def _unaligned_range(rng: random.Random) -> str:
    low = rng.randrange(1025, 60000)
    return f"{low}-{low + rng.randrange(3, 900)}"


def generate(
    rules: int,
    client_ip: str,
    server_ip: str,
    *,
    seed: int = 1,
    measured_ports: str = f"{MEASURED_PORT}/tcp",
    settings: tuple[str, ...] = (),
    declarations: tuple[str, ...] = (),
    extra_rules: tuple[str, ...] = (),
) -> GeneratedPolicy:
    """A policy of exactly `rules` rules (plus `extra_rules`), deterministic for a seed.

    `measured_ports` is the port clause of the measured rule (the last one);
    `settings` (e.g. "accelerate on") and `declarations` (services) go with the
    mesh's others, `extra_rules` (rules naming those services) just before the
    measured rule, so that it stays last."""
    rng = random.Random(seed)
    counts = form_counts(rules)
    peers = peer_count(rules)

    def peer() -> str:
        return f"peer{rng.randrange(peers)}"

    def port() -> int:
        return rng.choice(COMMON_PORTS)

    def ten_slash32() -> str:
        return f"10.{rng.randrange(1, 256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"

    def ten_slash24() -> str:
        return f"10.{rng.randrange(1, 256)}.{rng.randrange(256)}.0/24"

    def make(form: str, index: int) -> str:
        if form == "wl_port":
            return f"allow client -> {peer()} port {port()}/tcp"
        if form == "peer_in":
            return f"allow {peer()} -> server port {port()}/tcp"
        if form == "any_cidr":
            dst = ten_slash24() if index % 3 else ten_slash32()
            return f"allow any -> {dst} port {port()}/tcp"
        if form == "except":
            # A /16 carries one fixed except wherever it appears: rules
            # share its pieces, as real policies repeat one carve-out.
            second = rng.randrange(1, 256)
            third = (second * 37) % 256
            low = rng.choice((1, 1, 22, 1024))
            high = low + rng.choice((1022, 977, 3000))
            return (
                f"deny client -> 10.{second}.0.0/16 except 10.{second}.{third}.0/24 "
                f"port {low}-{high}/tcp"
            )
        if form == "cidr_src":
            return f"allow 172.{16 + index % 16}.{(index // 16) % 256}.0/24 -> server port {port()}/tcp"
        if form == "range":
            return f"allow client -> {peer()} port {_unaligned_range(rng)}/tcp"
        if form == "udp":
            if index % 2:
                return f"allow client -> 10.53.{rng.randrange(256)}.{rng.randrange(1, 255)} port 53/udp"
            return f"allow any -> {peer()} port {_unaligned_range(rng)}/udp"
        if form == "list":
            return (
                f"allow [client, 172.20.{index % 256}.0/24] -> [{peer()}, {peer()}, {ten_slash24()}] "
                f"port {port()}, {_unaligned_range(rng)}/tcp"
            )
        if form == "audit":
            return f"deny client -> {peer()} port {rng.choice((23, 21, 69, 111, 135))}/tcp audit"
        if form == "local_pair":
            # client -> server rules on other ports: the measured pair's own port table.
            ports = (
                f"{9000 + 10 * index}-{9000 + 10 * index + 4}" if index % 2 else str(20000 + index)
            )
            action = "deny" if index % 5 == 4 else "allow"
            return f"{action} client -> server port {ports}/tcp"
        if form == "broad":
            template = BROAD[index % len(BROAD)]
            return template.format(p=BROAD_PORTS[(index // len(BROAD)) % len(BROAD_PORTS)])
        raise AssertionError(form)

    # Interleave the forms evenly through the file (not in blocks).
    schedule: list[tuple[float, str, int]] = []
    for order, (form, _) in enumerate(FORMS):
        count = counts[form]
        for index in range(count):
            schedule.append(((index + 0.5) / count + order * 1e-9, form, index))
    schedule.sort()

    lines = [
        "# Generated by bench/policy_gen.py: do not edit.",
        f"mesh bench{rules} {{",
        "    default deny",
        "    mode enforce",
        *(f"    {setting}" for setting in settings),
        f'    workload client {{ cgroup "client" address {client_ip} }}',
        f'    workload server {{ cgroup "server" address {server_ip} }}',
    ]
    lines += [f"    workload peer{i} {{ address {_peer_address(i)} }}" for i in range(peers)]
    lines += [f"    {declaration}" for declaration in declarations]
    lines += [f"    {make(form, index)}" for _, form, index in schedule]
    lines += [f"    {rule}" for rule in extra_rules]
    lines.append(
        f"    allow client -> server port {measured_ports}   # the measured flow: the LAST rule"
    )
    measured_line = len(lines)
    lines.append("}")
    text = "\n".join(lines) + "\n"
    counts = dict(counts, measured=1)
    assert sum(counts.values()) == rules, (counts, rules)
    if extra_rules:
        counts["extra"] = len(extra_rules)
    return GeneratedPolicy(text, rules + len(extra_rules), peers, counts, measured_line)


def workloads_policy(workloads: int, *, octet: int = 60) -> str:
    """A mesh of `workloads` local workloads (cgroups w0, w1, ...; one loopback address
    each, in 127.OCTET/16 and up), as a node with that many pods would run: each may
    call the next on 8080/tcp, anyone may reach its metrics port, and it may not ssh
    into 10/8. Three rules per workload, the rest of the policy shared."""
    if workloads > 250 * 250:
        raise ValueError("at most 62,500 workloads")
    lines = [
        "# Generated by bench/policy_gen.py: do not edit.",
        f"mesh node{workloads} {{",
        "    default deny",
        "    mode enforce",
    ]
    for i in range(workloads):
        address = f"127.{octet + i // 62500}.{(i // 250) % 250 + 1}.{i % 250 + 1}"
        lines.append(f'    workload w{i} {{ cgroup "w{i}" address {address} }}')
    for i in range(workloads):
        lines += [
            f"    allow w{i} -> w{(i + 1) % workloads} port 8080/tcp",
            f"    allow any -> w{i} port 9090/tcp",
            f"    deny w{i} -> 10.0.0.0/8 port 22/tcp",
        ]
    lines += ["    allow any -> 10.53.0.0/16 port 53/udp", "}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # print a policy: python bench/policy_gen.py 10
    import sys

    print(
        generate(int(sys.argv[1]) if len(sys.argv) > 1 else 10, "127.0.1.1", "127.0.2.1").text,
        end="",
    )
