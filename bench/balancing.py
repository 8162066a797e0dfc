"""Load-balancing part of the benchmark: what a connect to a service VIP costs.

Called by bench/run.py (`make bench`); see bench/README.md. Two measurements:

1. Per-connection BPF time of a connect to a service VIP with 1, 100 and
   1,000 backends (random weights 1..65535, fixed seed), and with 1,000
   backends in a policy that also declares 10,000 other services. It is
   the sum over ALL attached programs of delta run_time_ns / connects,
   with bpf_stats on. The datapath's choice is an alias table: the cost
   must not grow with the number of backends, nor of services.
2. Whole-connect wall time, VIP against a direct connect to one of the
   service's backends (a rule allows that path too), side by side: the
   same attachment, the same server process and listener thread, the two
   paths back to back in every round (which goes first alternates). bpf_stats
   is off for this part, as in production. The same pair also runs in a
   cgroup with nothing attached (the server there listens on the "VIP"
   itself), for the bare cost of a connect.

Every configuration is its own throwaway cgroup (`ebmesh-bench-cg-*`, with
`client` and `web` below it) with its own policy attached, its own client
agent and its own server agent, which listens on all the backends with one
thread (`Agent.listen_many`). Nothing listens on an attached VIP: a connect
that was not translated would be refused, and the run would stop.
"""

from __future__ import annotations

import contextlib
import errno
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import ebmesh
from ebmesh.datapath import limits
from ebmesh.loader import enable_run_time_stats
from tests.support import Agent, throwaway_cgroup

PREFIX = "ebmesh-bench-"
VIP_PORT = 80
BACKEND_PORT = 8080
DENIED_PORT = 9999  # no rule allows client -> web 9999: the sanity check expects EPERM
DEFAULT_BACKENDS = (1, 100, 1000)
# 10,000 other services, or as many as the datapath tells apart beside the measured one
# (a datapath that numbers services in a socket's storage bounds them: MAX_SERVICES).
DEFAULT_EXTRA_SERVICES = min(10_000, getattr(limits, "MAX_SERVICES", 10_001) - 1)
# Goals. The issue: a connect to a VIP costs at most 1.2x a direct connect,
# and the choice of a backend is O(1). The O(1) bound is this benchmark's:
# per-connection BPF time at 1,000 backends (also with 10,000 services) within
# 1.2x of 1 backend. Anything that walked the backends would be far above it.
O1_GOAL = 1.2
VIP_DIRECT_GOAL = 1.2
PATHS = ("vip", "direct")


# ---- policies --------------------------------------------------------------------------------


def _backend_address(octet: int, k: int) -> str:
    """Backend k of a configuration: 127.OCTET.(128 + k // 250).(1 + k % 250)."""
    if k >= 250 * 128:
        raise ValueError("at most 32,000 backends per configuration")
    return f"127.{octet}.{128 + k // 250}.{1 + k % 250}"


def _extra_service(j: int) -> str:
    if j >= 250 * 256:
        raise ValueError("at most 64,000 extra services")
    return (
        f"    service extra{j} 10.100.{j // 250}.{1 + j % 250}:{VIP_PORT}/tcp "
        f"{{ backend 10.101.{j // 250}.{1 + j % 250}:{BACKEND_PORT} }}"
    )


@dataclass
class LbConfig:
    key: str
    label: str
    backends: int  # of the measured service; 0: nothing attached
    extra_services: int
    octet: int  # every address of the configuration is in 127.OCTET/16
    client_ip: str = ""
    vip: str = ""
    endpoints: list = field(default_factory=list)  # the backends, (address, port)
    weights: list = field(default_factory=list)
    text: str = ""
    root: Path | None = None
    client: Agent | None = None
    server: Agent | None = None
    group: int = 0  # the server's listen_many group
    attachment: object = None
    record: dict = field(default_factory=dict)  # compile+attach
    connects: dict = field(default_factory=lambda: {"vip": 0, "direct": 0})
    bpf_rounds: dict = field(default_factory=lambda: {"vip": [], "direct": []})
    wall_rounds: list = field(default_factory=list)

    @property
    def attached(self) -> bool:
        return self.backends > 0

    @property
    def direct(self) -> tuple[str, int]:
        return self.endpoints[0]

    @property
    def service_count(self) -> int:
        return 1 + self.extra_services if self.attached else 0


def make_config(index: int, backends: int, extra_services: int, seed: int) -> LbConfig:
    octet = 40 + index
    label = f"{backends} backend{'s' if backends != 1 else ''}"
    if extra_services:
        label += f" + {extra_services:,} services"
    config = LbConfig(
        key=f"{backends}" + (f"+{extra_services}svc" if extra_services else ""),
        label=label,
        backends=backends,
        extra_services=extra_services,
        octet=octet,
        client_ip=f"127.{octet}.0.1",
        vip=f"127.{octet}.0.10",
    )
    rng = random.Random(seed * 1_000_003 + backends)
    config.endpoints = [(_backend_address(octet, k), BACKEND_PORT) for k in range(backends)]
    config.weights = [rng.randint(1, 65535) for _ in range(backends)]
    lines = [
        "# Generated by bench/balancing.py: do not edit.",
        f"mesh lb{config.key.replace('+', '_')} {{",
        "    default deny",
        "    mode enforce",
        f'    workload client {{ cgroup "client" address {config.client_ip} }}',
        f'    workload web    {{ cgroup "web"    address 127.{octet}.128.0/17 }}',
    ]
    lines += [_extra_service(j) for j in range(extra_services)]
    lines.append(f"    service svc {config.vip}:{VIP_PORT}/tcp {{   # the measured one: the LAST")
    lines += [
        f"        backend {address}:{port} weight {weight}"
        for (address, port), weight in zip(config.endpoints, config.weights)
    ]
    lines += [
        "    }",
        "    allow client -> svc",
        f"    allow client -> web port {BACKEND_PORT}/tcp   # the direct path",
        "}",
    ]
    config.text = "\n".join(lines) + "\n"
    return config


def make_bare(octet: int = 39) -> LbConfig:
    """Nothing attached: the server listens on the "VIP" and on one backend."""
    config = LbConfig(
        key="none",
        label="nothing attached",
        backends=0,
        extra_services=0,
        octet=octet,
        client_ip=f"127.{octet}.0.1",
        vip=f"127.{octet}.0.10",
    )
    config.endpoints = [(_backend_address(octet, 0), BACKEND_PORT)]
    return config


# ---- set-up ----------------------------------------------------------------------------------


def _start(config: LbConfig, stack: contextlib.ExitStack, args, pin) -> None:
    server_child = "web" if config.attached else "server"
    config.root = stack.enter_context(throwaway_cgroup(("client", server_child), prefix=PREFIX))
    config.server = Agent(config.root / server_child, name=f"lb-server-{config.key}")
    stack.callback(config.server.stop)
    config.client = Agent(config.root / "client", name=f"lb-client-{config.key}")
    stack.callback(config.client.stop)
    if args.pin is not None:
        # Before the server starts its listener thread, which inherits the placement.
        pin(config.client.pid, args.pin[0])
        pin(config.server.pid, args.pin[1])
    listeners = list(config.endpoints)
    if not config.attached:
        listeners.append((config.vip, VIP_PORT))
    config.group = config.server.listen_many(listeners)


def _attach(config: LbConfig, args, safe_target) -> None:
    started = time.perf_counter()
    compiled = ebmesh.compile(config.text)
    compiled_at = time.perf_counter()
    attachment = compiled.attach(safe_target(config.root), events=args.events)
    attached_at = time.perf_counter()
    config.attachment = attachment
    config.record = {
        "compile_s": compiled_at - started,
        "attach_s": attached_at - compiled_at,
        "total_s": attached_at - started,
        "cache_hit": compiled.build.cache_hit,
        "phases_s": dict(compiled.timings),
        "policy_bytes": len(config.text),
        "services_declared": len(compiled.image.services),
        "map_entries": {name: c.count for name, c in compiled.image.maps.items()},
    }


def _expect(condition: bool, config: LbConfig, what: str, got) -> None:
    if not condition:
        raise RuntimeError(f"load balancing, {config.label}: {what}, got {got}")


def _sanity(config: LbConfig) -> None:
    """The VIP is translated (and shows as the peer), the direct path is allowed,
    a port no rule allows is denied at once."""
    vip = config.client.connect(config.vip, VIP_PORT, source=config.client_ip)
    _expect(vip.get("ok") and vip.get("greeting") == "hello\n", config, "VIP connect", vip)
    _expect(vip.get("peer") == [config.vip, VIP_PORT], config, "getpeername = the VIP", vip)
    direct = config.client.connect(*config.direct, source=config.client_ip)
    _expect(direct.get("ok"), config, "direct connect to a backend", direct)
    config.connects["vip"] += 1
    config.connects["direct"] += 1
    if config.attached:
        denied = config.client.connect(config.direct[0], DENIED_PORT, source=config.client_ip)
        _expect(
            not denied.get("ok") and denied.get("errno") == errno.EPERM,
            config,
            f"EPERM to port {DENIED_PORT}",
            denied,
        )


def _check_counts(config: LbConfig) -> dict:
    """Every VIP connect was balanced (the service's counters) and reached a backend
    (the server's accept counts)."""
    accepted = config.server.accepted_many(config.group)
    result = {
        "vip_connects": config.connects["vip"],
        "direct_connects": config.connects["direct"],
        "accepted": sum(accepted.values()),
    }
    _expect(
        result["accepted"] == config.connects["vip"] + config.connects["direct"],
        config,
        "accepted = VIP + direct connects",
        (result, config.connects),
    )
    if config.attached:
        counted = config.attachment.backend_counters()["svc"]
        result["balanced"] = sum(counted.values())
        result["backends_used"] = sum(1 for value in counted.values() if value)
        _expect(
            result["balanced"] == config.connects["vip"],
            config,
            "backend counters = VIP connects",
            result,
        )
        direct = f"{config.direct[0]}:{config.direct[1]}"
        mismatched = [
            name
            for name, value in counted.items()
            if accepted.get(name, 0) != value + (config.connects["direct"] if name == direct else 0)
        ]
        _expect(not mismatched, config, "accepted per backend = counted", mismatched[:5])
    return result


# ---- measurements ----------------------------------------------------------------------------


def _connect_many(config: LbConfig, path: str, connects: int) -> dict:
    target = (config.vip, VIP_PORT) if path == "vip" else config.direct
    result = config.client.connect_many(*target, connects, source=config.client_ip)
    _expect(
        result["succeeded"] == connects,
        config,
        f"{connects} {path} connects to succeed",
        {k: v for k, v in result.items() if k != "ok"},
    )
    config.connects[path] += connects
    return result


def _bpf_round(config: LbConfig, path: str, connects: int) -> dict:
    before = config.attachment.program_stats()
    result = _connect_many(config, path, connects)
    after = config.attachment.program_stats()
    programs = {}
    for name in after:
        run_time = after[name][0] - before[name][0]
        runs = after[name][1] - before[name][1]
        programs[name] = {"run_time_ns": run_time, "runs": runs}
    total = sum(p["run_time_ns"] for p in programs.values())
    return {
        "connects": connects,
        "ns_per_connection": total / connects,
        "wall_us_per_connect": result["seconds"] / connects * 1e6,
        "programs": programs,
    }


def _rotated(items: list, round_number: int) -> list:
    shift = round_number % len(items)
    return items[shift:] + items[:shift]


def _paths(round_number: int) -> tuple[str, str]:
    return PATHS if round_number % 2 == 0 else PATHS[::-1]


def measure_bpf(configs: list[LbConfig], args) -> None:
    """bpf_stats on: per-connection BPF time, VIP and direct, every configuration."""
    with enable_run_time_stats():
        print(f"  BPF time: warm-up {args.warmup} connects per configuration and path", flush=True)
        for config in configs:
            for path in PATHS:
                _bpf_round(config, path, args.warmup)
        for round_number in range(args.lb_rounds):
            cells = []
            for config in _rotated(configs, round_number):
                for path in _paths(round_number):
                    config.bpf_rounds[path].append(_bpf_round(config, path, args.connects))
                cells.append(
                    f"{config.key}: {config.bpf_rounds['vip'][-1]['ns_per_connection']:.0f}"
                    f"/{config.bpf_rounds['direct'][-1]['ns_per_connection']:.0f}"
                )
            print(
                f"  BPF round {round_number + 1}/{args.lb_rounds} (VIP/direct ns): "
                + ", ".join(cells),
                flush=True,
            )


def measure_wall(configs: list[LbConfig], args) -> None:
    """bpf_stats off: wall time per connect, VIP and direct back to back, every configuration
    and the cgroup with nothing attached."""
    print(f"  wall time: warm-up {args.warmup} connects per configuration and path", flush=True)
    for config in configs:
        for path in PATHS:
            _connect_many(config, path, args.warmup)
    for round_number in range(args.lb_rounds):
        cells = []
        for config in _rotated(configs, round_number):
            row = {"first": _paths(round_number)[0]}
            for path in _paths(round_number):
                result = _connect_many(config, path, args.connects)
                row[f"{path}_us"] = result["seconds"] / args.connects * 1e6
            row["ratio"] = row["vip_us"] / row["direct_us"]
            config.wall_rounds.append(row)
            cells.append(f"{config.key}: {row['vip_us']:.1f}/{row['direct_us']:.1f}")
        print(
            f"  wall round {round_number + 1}/{args.lb_rounds} (VIP/direct us): "
            + ", ".join(cells),
            flush=True,
        )


# ---- summary ---------------------------------------------------------------------------------


def _median(values) -> float:
    return statistics.median(values) if values else 0.0


def _spread(values) -> float:
    return (max(values) - min(values)) / _median(values) if values else 0.0


def _summarize_bpf(rounds: list[dict]) -> dict:
    per_conn = [r["ns_per_connection"] for r in rounds]
    programs = {}
    for name in rounds[0]["programs"]:
        runs = [r["programs"][name]["runs"] for r in rounds]
        times = [r["programs"][name]["run_time_ns"] for r in rounds]
        programs[name] = {
            "ns_per_run": _median([t / n for t, n in zip(times, runs) if n]),
            "runs_per_connection": _median([n / r["connects"] for n, r in zip(runs, rounds)]),
            "ns_per_connection": _median([t / r["connects"] for t, r in zip(times, rounds)]),
        }
    return {
        "ns_per_connection": _median(per_conn),
        "ns_per_connection_rounds": per_conn,
        "ns_per_connection_spread": _spread(per_conn),
        "wall_us_per_connect_with_stats": _median([r["wall_us_per_connect"] for r in rounds]),
        "programs": programs,
        "rounds": rounds,
    }


def _summarize_wall(rounds: list[dict]) -> dict:
    ratios = [r["ratio"] for r in rounds]
    return {
        "vip_us_per_connect": _median([r["vip_us"] for r in rounds]),
        "direct_us_per_connect": _median([r["direct_us"] for r in rounds]),
        "vip_over_direct": _median(ratios),  # median of the per-round ratios
        "vip_over_direct_rounds": ratios,
        "vip_over_direct_min_max": [min(ratios), max(ratios)],
        "rounds": rounds,
    }


def summarize(configs: list[LbConfig], bare: LbConfig, args, counts: dict) -> dict:
    entries = {}
    for config in configs:
        bpf = {path: _summarize_bpf(config.bpf_rounds[path]) for path in PATHS}
        entries[config.key] = {
            "label": config.label,
            "backends": config.backends,
            "services": config.service_count,
            "vip": f"{config.vip}:{VIP_PORT}/tcp",
            "direct": f"{config.direct[0]}:{config.direct[1]}/tcp",
            "weights": {
                "min": min(config.weights),
                "max": max(config.weights),
                "sum": sum(config.weights),
            },
            "compile_attach": config.record,
            "bpf": bpf,
            "bpf_vip_minus_direct_ns": bpf["vip"]["ns_per_connection"]
            - bpf["direct"]["ns_per_connection"],
            "wall": _summarize_wall(config.wall_rounds),
            "connection_counts": counts[config.key],
        }
    base_key = min((c for c in configs if not c.extra_services), key=lambda c: c.backends).key
    base = entries[base_key]
    goals = {}
    for key, entry in entries.items():
        vip_ns = entry["bpf"]["vip"]["ns_per_connection"]
        entry["bpf_ratio_vs_base"] = vip_ns / base["bpf"]["vip"]["ns_per_connection"]
        checks = {
            "vip_over_direct_wall": {
                "goal": f"<= {VIP_DIRECT_GOAL}x",
                "value": entry["wall"]["vip_over_direct"],
                "met": entry["wall"]["vip_over_direct"] <= VIP_DIRECT_GOAL,
            }
        }
        if entry is not base:
            checks["bpf_ratio_vs_base"] = {
                "goal": f"<= {O1_GOAL}x of {base['label']} (O(1))",
                "value": entry["bpf_ratio_vs_base"],
                "met": entry["bpf_ratio_vs_base"] <= O1_GOAL,
            }
        goals[key] = checks
    return {
        "settings": {
            "backends": [c.backends for c in configs if not c.extra_services],
            "extra_services": args.lb_services,
            "rounds": args.lb_rounds,
            "connects_per_round": args.connects,
            "warmup_connects": args.warmup,
            "events": args.events,
            "seed": args.seed,
            "weights": "random 1..65535, fixed seed",
            "pinned_cpus_client_server": args.pin,
            "per_connection": "sum over all attached programs of delta run_time_ns / connects "
            "(median of rounds; bpf_stats on)",
            "wall": "connect_many seconds / connects inside the client agent (bpf_stats off); "
            "VIP and direct back to back in each round, order alternating; ratio = median of "
            "per-round VIP/direct",
            "server": "one agent per configuration, every backend listener served by one "
            "epoll thread (Agent.listen_many)",
        },
        "base": base_key,
        "configs": entries,
        "nothing_attached": {
            "vip": f"{bare.vip}:{VIP_PORT}/tcp (a plain listener)",
            "direct": f"{bare.direct[0]}:{bare.direct[1]}/tcp",
            "wall": _summarize_wall(bare.wall_rounds),
            "connection_counts": counts[bare.key],
        },
        "goals": goals,
        "all_goals_met": all(c["met"] for checks in goals.values() for c in checks.values()),
    }


def print_report(lb: dict) -> None:
    configs = lb["configs"]
    settings = lb["settings"]
    print()
    print(
        f"Load balancing: {settings['rounds']} rounds x {settings['connects_per_round']} connects "
        "(median), weights random 1..65535"
    )
    print(
        "Per-connection BPF time, sum over all 10 programs / connects (bpf_stats on). "
        "VIP = service VIP:80, direct = its first backend:8080"
    )
    header = (
        f"{'backends':>8} | {'services':>8} | {'VIP ns/conn':>11} | {'ratio':>10} | "
        f"{'direct ns':>9} | {'VIP-direct':>10} | {'spread':>6} | {'compile+attach s':>16} | goal met?"
    )
    print(header)
    print("-" * len(header))
    for key, entry in configs.items():
        vip = entry["bpf"]["vip"]
        ratio = entry["bpf_ratio_vs_base"]
        check = lb["goals"][key].get("bpf_ratio_vs_base")
        met = "(baseline)" if check is None else ("yes" if check["met"] else "NO")
        record = entry["compile_attach"]
        print(
            f"{entry['backends']:>8} | {entry['services']:>8} | {vip['ns_per_connection']:>11.0f} | "
            f"{ratio:>10.3f} | {entry['bpf']['direct']['ns_per_connection']:>9.0f} | "
            f"{entry['bpf_vip_minus_direct_ns']:>+10.0f} | {vip['ns_per_connection_spread'] * 100:>5.0f}% | "
            f"{record['compile_s']:>6.2f} + {record['attach_s']:<7.2f} | {met}"
        )
    base = configs[lb["base"]]["label"]
    print(
        f"  ratio: VIP ns/conn / that of {base}. Goal: O(1), at most {O1_GOAL}x. "
        "spread: (max-min)/median of the VIP rounds."
    )

    print()
    print("Per program, VIP (direct): ns per run x runs per connection = ns per connection")
    names = list(next(iter(configs.values()))["bpf"]["vip"]["programs"])
    for name in names:
        cells = []
        for key, entry in configs.items():
            vip = entry["bpf"]["vip"]["programs"][name]
            direct = entry["bpf"]["direct"]["programs"][name]
            if vip["runs_per_connection"] == 0 and direct["runs_per_connection"] == 0:
                continue
            cells.append(
                f"{key}: "
                f"{vip['ns_per_run']:.0f} x {vip['runs_per_connection']:.2f} = {vip['ns_per_connection']:.0f}"
                f" ({direct['ns_per_connection']:.0f})"
            )
        if cells:
            print(f"  {name:<16} " + " | ".join(cells))

    print()
    print(
        "Whole connect, wall time per connect (us, median; bpf_stats off): VIP and direct "
        "side by side, same attachment and server"
    )
    header = f"{'configuration':<32} | {'VIP us':>7} | {'direct us':>9} | {'VIP/direct':>10} | {'min-max':>11} | goal met?"
    print(header)
    print("-" * len(header))
    rows = [(key, entry["label"], entry["wall"]) for key, entry in configs.items()]
    rows.append((None, "nothing attached (context)", lb["nothing_attached"]["wall"]))
    for key, label, wall in rows:
        low, high = wall["vip_over_direct_min_max"]
        if key is None:
            met = "-"
        else:
            met = "yes" if lb["goals"][key]["vip_over_direct_wall"]["met"] else "NO"
        print(
            f"{label:<32} | {wall['vip_us_per_connect']:>7.1f} | {wall['direct_us_per_connect']:>9.1f} | "
            f"{wall['vip_over_direct']:>10.3f} | {low:.3f}-{high:.3f} | {met}"
        )
    bare = lb["nothing_attached"]["wall"]
    print(
        f"  Goal: VIP/direct <= {VIP_DIRECT_GOAL}x. With nothing attached the 'VIP' is a plain "
        "listener: its ratio is the noise floor (A/A)."
    )
    attached = [entry["wall"]["direct_us_per_connect"] for entry in configs.values()]
    if attached and bare["direct_us_per_connect"]:
        print(
            f"  Attached vs nothing attached, direct path: {_median(attached):.1f} vs "
            f"{bare['direct_us_per_connect']:.1f} us "
            f"({_median(attached) / bare['direct_us_per_connect']:.3f}x)"
        )
    print(
        "Load-balancing goals: "
        + ("all met." if lb["all_goals_met"] else "some NOT met (see 'goal met?').")
    )


# ---- entry point -----------------------------------------------------------------------------


@contextlib.contextmanager
def _cache(vmlinux_dir: Path | None):
    """A fresh object cache for the run (vmlinux.h copied in): the user's cache is left alone."""
    import os

    cache = Path(tempfile.mkdtemp(prefix=f"{PREFIX}lbcache-"))
    previous = os.environ.get("EBMESH_CACHE_DIR")
    try:
        if vmlinux_dir is not None:
            shutil.copytree(vmlinux_dir, cache / "vmlinux")
        os.environ["EBMESH_CACHE_DIR"] = str(cache)
        yield cache
    finally:
        if previous is None:
            os.environ.pop("EBMESH_CACHE_DIR", None)
        else:
            os.environ["EBMESH_CACHE_DIR"] = previous
        shutil.rmtree(cache, ignore_errors=True)


def run(args, stack: contextlib.ExitStack, *, safe_target, pin, vmlinux_dir: Path | None) -> dict:
    """The whole load-balancing part. Everything it creates is registered on `stack`."""
    counts = sorted(set(args.lb_backends))
    print(
        f"load balancing: backends {counts}, plus {max(counts)} backends with "
        f"{args.lb_services:,} other services; {args.lb_rounds} rounds x {args.connects} connects",
        flush=True,
    )
    configs = [make_config(i, n, 0, args.seed) for i, n in enumerate(counts)]
    if args.lb_services:
        configs.append(make_config(len(configs), max(counts), args.lb_services, args.seed))
    bare = make_bare()
    with _cache(vmlinux_dir):
        for config in configs:
            _start(config, stack, args, pin)
            _attach(config, args, safe_target)
            config.attachment = stack.enter_context(config.attachment)
            _sanity(config)
            record = config.record
            print(
                f"  {config.label}: compile {record['compile_s']:.2f} s "
                f"({'cached' if record['cache_hit'] else 'built'}) + attach {record['attach_s']:.2f} s",
                flush=True,
            )
    _start(bare, stack, args, pin)
    _sanity(bare)
    measure_bpf(configs, args)
    measure_wall(configs + [bare], args)
    counts_checked = {config.key: _check_counts(config) for config in configs + [bare]}
    return summarize(configs, bare, args, counts_checked)
