"""Datapath cost (issue 8's figures): BPF time per program and per connection, over
the bare hooks.

For each policy size (10, 10k, 100k rules, bench/policy_gen.py, with a TCP and
a UDP service added) and each event level (`denied`, `all`), one attachment to
a cgroup of its own, with its own loopback addresses; and one control cgroup with EMPTY programs
(bench/empty_hooks.bpf.c) on exactly the hooks the attachments attached (found
by querying the attached cgroup for every cgroup attach type). With bpf_stats on,
rounds of four kinds of traffic from a client process to a server process
(bench/rr.c), every configuration in every round, their order rotating:

    tcp_direct  connect, 2 bytes, 2 bytes back, close (the server closes first)
    tcp_vip     the same through the TCP service's VIP
    udp_one     one unconnected UDP socket: sendto + recv per exchange
    udp_new     a new UDP socket per exchange (a resolver without a socket cache)

Each policy is compiled once, but attached only for its own turn in a round
and detached after it: while one configuration is measured, no other policy is
loaded (the control's empty programs stay). Held all at once, the same datapath
cost up to 1.4x more per connect when attached after three others than when
attached first, at 10 rules as at 100k (likely the per-CPU maps: later ones
come from vmalloc'd chunks, 4 KiB pages): the
rule-count comparison measured the attach order. Attached in turn, every
configuration meets what a node running one policy has.

Per program: ns per run (delta run_time_ns / delta run_cnt) and ns per
connection (delta run_time_ns / operations); the total is the sum over every
program the attachment has. "Over the bare hooks" subtracts the control's
figure for the same hook (per program) or the control's total (per connection).
bpf_stats adds its own cost to every run (about 55 ns on this kernel, two
clock reads), to ebmesh's programs and the empty ones alike: the "over the bare
hooks" figures have it taken out, the absolute ones include it.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import loadgen
import policy_gen
from processes import Launcher

import ebmesh
from ebmesh.loader import AttachType, BpfObject, enable_run_time_stats, query_cgroup
from ebmesh.toolchain.clang import build_object
from tests.support import throwaway_cgroup

PREFIX = "ebmesh-bench-"
DEFAULT_SIZES = (10, 10_000, 100_000)
EVENT_LEVELS = ("denied", "all")
KINDS = ("tcp_direct", "tcp_vip", "udp_one", "udp_new")
SERVER_PORT = 8080
TCP_VIP_PORT = 80
UDP_VIP_PORT = 53
DENIED_PORT = 9999
DETACH_SETTLE_S = 0.2
BPF_STATS_NS_PER_RUN = 55  # measured on this kernel (issue 8); stated with every figure
# The cgroup hooks a datapath can use, and the empty program of bench/empty_hooks.bpf.c for each.
EMPTY_PROGRAMS = {
    AttachType.CGROUP_INET_INGRESS: "empty_ingress",
    AttachType.CGROUP_INET_EGRESS: "empty_egress",
    AttachType.CGROUP_INET4_CONNECT: "empty_connect4",
    AttachType.CGROUP_INET6_CONNECT: "empty_connect6",
    AttachType.CGROUP_UDP4_SENDMSG: "empty_sendmsg4",
    AttachType.CGROUP_UDP6_SENDMSG: "empty_sendmsg6",
    AttachType.CGROUP_UDP4_RECVMSG: "empty_recvmsg4",
    AttachType.CGROUP_UDP6_RECVMSG: "empty_recvmsg6",
    AttachType.CGROUP_INET4_GETPEERNAME: "empty_getpeername4",
    AttachType.CGROUP_INET6_GETPEERNAME: "empty_getpeername6",
    AttachType.CGROUP_INET4_GETSOCKNAME: "empty_getsockname4",
    AttachType.CGROUP_INET6_GETSOCKNAME: "empty_getsockname6",
    AttachType.CGROUP_INET4_BIND: "empty_bind4",
    AttachType.CGROUP_INET6_BIND: "empty_bind6",
    AttachType.CGROUP_INET4_POST_BIND: "empty_post_bind4",
    AttachType.CGROUP_INET6_POST_BIND: "empty_post_bind6",
    AttachType.CGROUP_INET_SOCK_CREATE: "empty_sock_create",
    AttachType.CGROUP_INET_SOCK_RELEASE: "empty_sock_release",
    AttachType.CGROUP_SOCK_OPS: "empty_sockops",
}


@dataclass
class CostConfig:
    """One attachment (or the control), with its own loopback addresses in 127.OCTET/16.
    Its processes stay in the agent's network namespace: a datapath may attach more
    when the mesh spans namespaces (a recorder of senders), which is not the case
    measured."""

    key: str
    rules: int  # 0: the control (empty programs)
    events: str
    octet: int
    root: Path | None = None
    compiled: object = None  # the policy, attached for its turn in each round
    attach_cgroup: Path | None = None
    attachment: object = None  # while attached
    empty: BpfObject | None = None
    hooks: dict = field(default_factory=dict)  # program name -> attach type name
    denial_samples: list = field(default_factory=list)
    rounds: dict = field(default_factory=lambda: {kind: [] for kind in KINDS})

    @property
    def client_ip(self) -> str:
        return f"127.{self.octet}.1.1"

    @property
    def server_ip(self) -> str:
        return f"127.{self.octet}.2.1"

    @property
    def vip(self) -> str:
        return f"127.{self.octet}.0.10"

    def target(self, kind: str) -> tuple[str, int]:
        if kind == "tcp_vip":
            return (self.vip, TCP_VIP_PORT)
        return (self.server_ip, SERVER_PORT)

    def stats(self) -> dict[str, tuple[int, int]]:
        if self.empty is not None:
            return {
                name: (s.run_time_ns, s.run_cnt)
                for name, s in ((n, self.empty.programs[n].stats()) for n in self.hooks)
            }
        return self.attachment.program_stats()


def policy_text(config: CostConfig) -> str:
    server = f"{config.server_ip}:{SERVER_PORT}"
    return policy_gen.generate(
        config.rules,
        config.client_ip,
        config.server_ip,
        measured_ports=str(SERVER_PORT),  # TCP and UDP
        declarations=(
            f"service tvip {config.vip}:{TCP_VIP_PORT}/tcp {{ backend {server} }}",
            f"service uvip {config.vip}:{UDP_VIP_PORT}/udp {{ backend {server} }}",
        ),
        extra_rules=("allow client -> tvip", "allow client -> uvip"),
    ).text


NOT_A_CGROUP_HOOK = "not at a cgroup hook"


def attached_hooks(attachment) -> dict[str, str]:
    """Which hook each of the attachment's programs is attached at: the cgroup queried
    for every cgroup attach type, matched by program id. A program found at none (an
    sk_msg program runs on a sockmap, not a cgroup) has no empty twin in the control."""
    by_id = {program_id: name for name, program_id in attachment.program_ids().items()}
    hooks = dict.fromkeys(by_id.values(), NOT_A_CGROUP_HOOK)
    for attach_type in EMPTY_PROGRAMS:
        for program_id in query_cgroup(attachment.cgroup, attach_type):
            if program_id in by_id:
                hooks[by_id[program_id]] = attach_type.name
    return hooks


def load_empty_hooks(attach_types: set[AttachType], cgroup: Path, stack) -> BpfObject:
    source = (Path(__file__).resolve().parent / "empty_hooks.bpf.c").read_text()
    built = build_object(source, include_dirs=[], name="empty_hooks")
    empty = BpfObject.open(built.object, "empty_hooks")
    stack.callback(empty.close)
    wanted = {EMPTY_PROGRAMS[t] for t in attach_types}
    for name, program in empty.programs.items():
        program.set_autoload(name in wanted)
    empty.load()
    for name in sorted(wanted):
        link = empty.programs[name].attach_cgroup(cgroup)
        stack.callback(link.detach)
    return empty


# ---- set-up ----------------------------------------------------------------------------------


def _sanity(config: CostConfig, launcher: Launcher, rr: Path) -> None:
    for kind in KINDS:
        result = _traffic(config, launcher, rr, kind, 3)
        if result["succeeded"] != 3:
            raise RuntimeError(f"cost, {config.key}: {kind} should pass, got {result}")
    if config.compiled is not None:
        denied = loadgen.rr_client(
            launcher,
            rr,
            config.root / "client",
            "tcp",
            1,
            (config.server_ip, DENIED_PORT),
            config.client_ip,
        )
        if denied["errnos"] != {"1": 1}:  # EPERM, from connect()
            raise RuntimeError(f"cost, {config.key}: port {DENIED_PORT} should be EPERM: {denied}")


def setup(args, stack: contextlib.ExitStack, launcher: Launcher, rr: Path, safe_target):
    configs = []
    for rules in sorted(args.cost_sizes):
        for events in EVENT_LEVELS:
            configs.append(CostConfig(f"{rules}/{events}", rules, events, 100 + len(configs)))
    control = CostConfig("bare hooks", 0, "-", 100 + len(configs))
    for config in [*configs, control]:
        config.root = stack.enter_context(throwaway_cgroup(("client", "server"), prefix=PREFIX))
        server = config.root / "server"
        # Under empty programs nothing translates a VIP: the server listens on it itself.
        tcp = [(config.server_ip, SERVER_PORT)] + (
            [] if config.rules else [(config.vip, TCP_VIP_PORT)]
        )
        udp = [(config.server_ip, SERVER_PORT)] + (
            [] if config.rules else [(config.vip, UDP_VIP_PORT)]
        )
        for protocol, endpoints in (("tcp", tcp), ("udp", udp)):
            loadgen.rr_server(
                launcher, rr, f"cost-{protocol}-{config.octet}", server, protocol, endpoints
            )
    for config in configs:
        # The same shape at both event levels: clang runs once per size (the object
        # cache), the policy's front-end once per configuration (its own addresses).
        print(f"  cost: compile {config.rules:,} rules, events={config.events}", flush=True)
        config.compiled = ebmesh.compile(policy_text(config))
        config.attach_cgroup = safe_target(config.root)
        with attached(config):
            config.hooks = attached_hooks(config.attachment)
            _sanity(config, launcher, rr)
    attach_types = {
        AttachType[hook]
        for config in configs
        for hook in config.hooks.values()
        if hook != NOT_A_CGROUP_HOOK
    }
    control.empty = load_empty_hooks(attach_types, safe_target(control.root), stack)
    control.hooks = {EMPTY_PROGRAMS[t]: t.name for t in attach_types}
    _sanity(control, launcher, rr)
    return configs, control


@contextlib.contextmanager
def attached(config: CostConfig):
    """The configuration's policy attached for the block (the control's programs stay)."""
    if config.compiled is None:
        yield
        return
    with config.compiled.attach(config.attach_cgroup, events=config.events) as attachment:
        config.attachment = attachment
        try:
            yield
        finally:
            config.attachment = None
    # The maps go with their last fd, but the kernel frees them from a work queue: a
    # moment for it to finish before the next attachment allocates its own.
    time.sleep(DETACH_SETTLE_S)


# ---- measuring -------------------------------------------------------------------------------


def _traffic(config: CostConfig, launcher: Launcher, rr: Path, kind: str, count: int) -> dict:
    mode = {"tcp_direct": "tcp", "tcp_vip": "tcp", "udp_one": "udp-one", "udp_new": "udp-new"}[kind]
    return loadgen.rr_client(
        launcher,
        rr,
        config.root / "client",
        mode,
        count,
        config.target(kind),
        config.client_ip,
    )


def _drain(config: CostConfig) -> int:
    """Empty the ring buffer (room for the next round's events); the denials in it, the
    first few kept as text (the sanity check's own denial is drained before round one)."""
    denied = 0
    if config.attachment is not None:  # both event levels report denials
        while batch := config.attachment.poll_events(0.0):
            for event in batch:
                if event.verdict == "deny":
                    denied += 1
                    if len(config.denial_samples) < 5:
                        config.denial_samples.append(str(event))
    return denied


def _round(config: CostConfig, launcher: Launcher, rr: Path, kind: str, count: int) -> dict:
    _drain(config)
    before = config.stats()
    result = _traffic(config, launcher, rr, kind, count)
    after = config.stats()
    programs = {}
    for name in after:
        programs[name] = {
            "run_time_ns": after[name][0] - before[name][0],
            "runs": after[name][1] - before[name][1],
        }
    # An operation that failed (a UDP reply lost) is counted, not fatal: every figure
    # is per operation attempted, and the report shows how many failed, and why.
    record = {
        "operations": count,
        "failed": count - result["succeeded"],
        "errnos": result["errnos"],
        "seconds": result["seconds"],
        "programs": programs,
    }
    if config.attachment is not None:
        record["lost_events_total"] = config.attachment.lost_events()
        record["denied_events"] = _drain(config)
    return record


def measure(configs: list[CostConfig], control: CostConfig, args, launcher, rr) -> None:
    everything = [*configs, control]
    with enable_run_time_stats():
        for number in range(args.cost_rounds):
            shift = number % len(everything)
            for config in everything[shift:] + everything[:shift]:
                with attached(config):
                    # A fresh attachment's caches are empty: warm them, then measure.
                    for kind in KINDS:
                        _round(config, launcher, rr, kind, args.cost_warmup)
                    for kind in KINDS:
                        config.rounds[kind].append(
                            _round(config, launcher, rr, kind, args.cost_operations)
                        )
            print(f"  cost round {number + 1}/{args.cost_rounds} done", flush=True)


# ---- summary ---------------------------------------------------------------------------------


def _median(values) -> float:
    values = list(values)
    return statistics.median(values) if values else 0.0


def _merged(counts) -> dict[str, int]:
    total: dict[str, int] = {}
    for count in counts:
        for key, value in count.items():
            total[key] = total.get(key, 0) + value
    return total


def _summarize_kind(rounds: list[dict], hooks: dict[str, str]) -> dict:
    programs = {}
    for name in rounds[0]["programs"]:
        per_round = [r["programs"][name] for r in rounds]
        programs[name] = {
            "hook": hooks.get(name, "?"),
            "ns_per_run": _median(p["run_time_ns"] / p["runs"] for p in per_round if p["runs"]),
            "runs_per_operation": _median(
                p["runs"] / r["operations"] for p, r in zip(per_round, rounds)
            ),
            "ns_per_operation": _median(
                p["run_time_ns"] / r["operations"] for p, r in zip(per_round, rounds)
            ),
        }
    totals = [
        sum(p["run_time_ns"] for p in r["programs"].values()) / r["operations"] for r in rounds
    ]
    return {
        "ns_per_operation": _median(totals),
        "ns_per_operation_rounds": totals,
        "failed_operations": sum(r["failed"] for r in rounds),
        "failed_errnos": _merged(r["errnos"] for r in rounds),
        "denied_events": sum(r.get("denied_events", 0) for r in rounds),
        "wall_us_per_operation": _median(r["seconds"] / r["operations"] * 1e6 for r in rounds),
        "programs": programs,
    }


def summarize(configs: list[CostConfig], control: CostConfig, args) -> dict:
    bare = {kind: _summarize_kind(control.rounds[kind], control.hooks) for kind in KINDS}
    bare_by_hook = {kind: {p["hook"]: p for p in bare[kind]["programs"].values()} for kind in KINDS}
    entries = {}
    for config in configs:
        kinds = {}
        for kind in KINDS:
            summary = _summarize_kind(config.rounds[kind], config.hooks)
            summary["over_bare_ns_per_operation"] = (
                summary["ns_per_operation"] - bare[kind]["ns_per_operation"]
            )
            for program in summary["programs"].values():
                twin = bare_by_hook[kind].get(program["hook"])
                program["bare_ns_per_run"] = twin["ns_per_run"] if twin else None
                program["over_bare_ns_per_run"] = (
                    program["ns_per_run"] - twin["ns_per_run"] if twin else None
                )
            kinds[kind] = summary
        entries[config.key] = {
            "rules": config.rules,
            "events": config.events,
            "hooks": config.hooks,
            "denial_samples": config.denial_samples,
            "kinds": kinds,
        }
    return {
        "settings": {
            "sizes": sorted(args.cost_sizes),
            "event_levels": list(EVENT_LEVELS),
            "rounds": args.cost_rounds,
            "operations_per_round": args.cost_operations,
            "warmup_operations": args.cost_warmup,
            "traffic": {
                "tcp_direct": "connect, send 2 B, read 2 B, read the server's close, close",
                "tcp_vip": "the same to the TCP service's VIP (one backend: the server)",
                "udp_one": "one unconnected UDP socket, sendto + recv of 2 B per exchange",
                "udp_new": "a new UDP socket per exchange",
            },
            "per_operation": "sum over all the attachment's programs of delta run_time_ns "
            "/ operations (median of rounds); operation = one connection or one exchange",
            "bpf_stats_ns_per_run": BPF_STATS_NS_PER_RUN,
            "bpf_stats_note": "bpf_stats adds about 55 ns to every program run (two clock "
            "reads): included in the absolute figures, cancelled in 'over the bare hooks'",
            "control": "empty programs (bench/empty_hooks.bpf.c) on the same hooks, in the same "
            "run and rounds, attached to a cgroup of their own",
        },
        "bare_hooks": {"hooks": control.hooks, "kinds": bare},
        "configs": entries,
    }


def print_report(cost: dict) -> None:
    print()
    print(
        "Datapath cost (BPF time, bpf_stats on: every program run includes about "
        f"{cost['settings']['bpf_stats_ns_per_run']} ns of bpf_stats itself)"
    )
    print(
        "ns per operation, all programs (over the bare hooks); operation = one connection "
        "(TCP) or one request/reply (UDP)"
    )
    header = f"{'rules/events':<14} | " + " | ".join(f"{kind:>20}" for kind in KINDS)
    print(header)
    print("-" * len(header))
    bare = cost["bare_hooks"]["kinds"]
    print(
        f"{'bare hooks':<14} | "
        + " | ".join(f"{bare[kind]['ns_per_operation']:>20.0f}" for kind in KINDS)
    )
    for key, entry in cost["configs"].items():
        cells = [
            f"{k['ns_per_operation']:>9.0f} ({k['over_bare_ns_per_operation']:>+7.0f})"
            for k in (entry["kinds"][kind] for kind in KINDS)
        ]
        print(f"{key:<14} | " + " | ".join(f"{c:>20}" for c in cells))
    for key, entry in [("bare hooks", cost["bare_hooks"]), *cost["configs"].items()]:
        for kind, figures in entry["kinds"].items():
            if figures["failed_operations"]:
                print(
                    f"  note: {key}, {kind}: {figures['failed_operations']} operations failed "
                    f"(errno: count {figures['failed_errnos']}; 11 = no reply in 200 ms), "
                    f"{figures['denied_events']} denials seen in the events"
                )
    print()
    print("Per program: ns per run (over the bare hook) x runs per operation = ns per operation")
    for key, entry in cost["configs"].items():
        for kind in KINDS:
            cells = []
            for name, p in entry["kinds"][kind]["programs"].items():
                if not p["runs_per_operation"]:
                    continue
                over = p["over_bare_ns_per_run"]
                over_text = f" ({over:+.0f})" if over is not None else ""
                cells.append(
                    f"{name.removeprefix('ebmesh_')} {p['ns_per_run']:.0f}{over_text} x "
                    f"{p['runs_per_operation']:.1f} = {p['ns_per_operation']:.0f}"
                )
            print(f"  {key:<14} {kind:<10} " + "; ".join(cells))
