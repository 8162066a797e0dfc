"""ebmesh against no mesh and against sidecar meshes: latency, throughput, connection
rate and CPU, every configuration in every round.

Configurations, each a throwaway cgroup with `client` and `server` below it,
its own loopback addresses (127.OCTET.1.x client side, 127.OCTET.2.x server
side) and its own servers, all set up before the first round:

    none      nothing attached
    bare      EMPTY programs (bench/empty_hooks.bpf.c) on exactly the hooks the
              ebmesh configuration attaches: the floor any cgroup-hook datapath
              pays, to read ebmesh's own share against (needs ebmesh in the run)
    ebmesh    a realistic policy of 1,000 rules (bench/policy_gen.py), the measured
              flows allowed by its last rule
    accel     the same policy with `accelerate on`
    vip       the same policy plus services: the client talks to VIPs, translated
              to the server at connect()/sendmsg()
    haproxy   two HAProxy processes in TCP mode, the client's in the client cgroup,
              the server's in the server cgroup (bench/sidecars.py)
    nginx     the same with nginx's stream module (which also proxies UDP)

Each round runs, per configuration (the order rotating every round): sockperf
ping-pong over TCP with 64-byte and 16 KB messages and over UDP with 64-byte
messages (round-trip times, --full-rtt), one iperf3 TCP stream, and rr's
connection loop (bench/rr.c: connect, 2 bytes each way, close). The CPU used
during the 64-byte TCP ping-pong is read from the configuration's cgroup
(cpu.stat usage_usec: every process of client, server and proxies, with the
softirq work done in their context) plus the ksoftirqd threads, and divided
by the request/replies sockperf counted. HAProxy proxies no UDP: its UDP
figures are absent.
"""

from __future__ import annotations

import contextlib
import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cost
import loadgen
import policy_gen
import sidecars
from processes import (
    Launcher,
    cgroup_cpu_usec,
    ksoftirqd_seconds,
    require_tool,
    rss_bytes,
    system_cpu_seconds,
)

import ebmesh
from ebmesh.loader import AttachType
from tests.support import throwaway_cgroup

PREFIX = "ebmesh-bench-"
CONFIGS = ("none", "bare", "ebmesh", "accel", "vip", "haproxy", "nginx")
LABELS = {
    "none": "no mesh",
    "bare": "empty programs, same hooks",
    "ebmesh": "ebmesh, 1k rules",
    "accel": "ebmesh, accelerate on",
    "vip": "ebmesh, via a service VIP",
    "haproxy": "HAProxy sidecar pair",
    "nginx": "nginx stream sidecar pair",
}
SIDECARS = ("haproxy", "nginx")
SOCKPERF_PORT = 8080  # TCP and UDP
IPERF_PORT = 8081
RR_PORT = 8082
DENIED_PORT = 9999
# (key, protocol, message bytes) of the sockperf runs.
PING_PONGS = (("tcp_64", "tcp", 64), ("tcp_16k", "tcp", 16384), ("udp_64", "udp", 64))
# sockperf runs per round and configuration. A run's p50 moves by 3-6% from one run to
# the next, more than ebmesh's whole share of a UDP round trip (about 1%, over empty
# programs that cost 3-4%): UDP, whose target sits nearest that floor, is run twice,
# and the round's figures are the two runs' means.
PING_PONG_RUNS = {"tcp_64": 1, "tcp_16k": 1, "udp_64": 2}
_PERCENTILES = ("p50_us", "p99_us", "p99_9_us")
POLICY_RULES = 1000


@dataclass
class MeshConfig:
    key: str
    octet: int
    root: Path | None = None
    attachment: object = None
    proxies: dict = field(default_factory=dict)  # "client"/"server" -> Started
    proxy_rss: list = field(default_factory=list)  # per round: {"client": bytes, "server": bytes}
    rounds: list = field(default_factory=list)

    @property
    def label(self) -> str:
        return LABELS[self.key]

    @property
    def client_ip(self) -> str:
        return f"127.{self.octet}.1.1"

    @property
    def server_ip(self) -> str:
        return f"127.{self.octet}.2.1"

    @property
    def client_proxy_ip(self) -> str:
        return f"127.{self.octet}.1.2"

    @property
    def server_proxy_ip(self) -> str:
        return f"127.{self.octet}.2.2"

    @property
    def vip(self) -> str:
        return f"127.{self.octet}.0.10"

    def supports(self, protocol: str) -> bool:
        return protocol == "tcp" or self.key != "haproxy"

    def target(self, port: int) -> tuple[str, int]:
        """Where the client sends to reach the server's `port`."""
        if self.key in SIDECARS:
            return (self.client_proxy_ip, port)
        if self.key == "vip":
            return (self.vip, port)
        return (self.server_ip, port)


def policy_text(config: MeshConfig) -> str:
    settings = ("accelerate on",) if config.key == "accel" else ()
    declarations, extra_rules = (), ()
    if config.key == "vip":
        services = [
            ("sockperf_tcp", SOCKPERF_PORT, "tcp"),
            ("sockperf_udp", SOCKPERF_PORT, "udp"),
            ("iperf", IPERF_PORT, "tcp"),
            ("rr", RR_PORT, "tcp"),
        ]
        declarations = tuple(
            f"service {name} {config.vip}:{port}/{protocol} {{ backend {config.server_ip}:{port} }}"
            for name, port, protocol in services
        )
        extra_rules = tuple(f"allow client -> {name}" for name, _, _ in services)
    return policy_gen.generate(
        POLICY_RULES,
        config.client_ip,
        config.server_ip,
        measured_ports=f"{SOCKPERF_PORT}-{RR_PORT}",  # TCP and UDP
        settings=settings,
        declarations=declarations,
        extra_rules=extra_rules,
    ).text


# ---- set-up ----------------------------------------------------------------------------------


def _hops(config: MeshConfig, side: str) -> list[sidecars.Hop]:
    ports = [(SOCKPERF_PORT, "tcp"), (IPERF_PORT, "tcp"), (RR_PORT, "tcp")]
    if config.supports("udp"):
        ports.append((SOCKPERF_PORT, "udp"))
    if side == "client":
        return [
            sidecars.Hop(
                (config.client_proxy_ip, p), (config.server_proxy_ip, p), config.client_ip, proto
            )
            for p, proto in ports
        ]
    return [
        sidecars.Hop(
            (config.server_proxy_ip, p), (config.server_ip, p), config.server_proxy_ip, proto
        )
        for p, proto in ports
    ]


def _start_proxies(config: MeshConfig, launcher: Launcher) -> None:
    for side in ("server", "client"):
        hops = _hops(config, side)
        name = f"{config.key}-{side}"
        cgroup = config.root / side
        if config.key == "haproxy":
            require_tool("haproxy")
            path = launcher.workdir / f"{name}.cfg"
            path.write_text(sidecars.haproxy_config(name, hops))
            command = sidecars.haproxy_command(path)
        else:
            require_tool("nginx")
            if not sidecars.NGINX_STREAM_MODULE.exists():
                raise RuntimeError(
                    "nginx's stream module is missing: run `make bench` (libnginx-mod-stream)"
                )
            path = launcher.workdir / f"{name}.conf"
            path.write_text(sidecars.nginx_config(name, hops, launcher.workdir))
            command = sidecars.nginx_command(path, launcher.workdir)
        first = hops[0].listen
        config.proxies[side] = launcher.start(name, command, cgroup, ready_port=(*first, "tcp"))


def _start_servers(config: MeshConfig, launcher: Launcher, rr: Path) -> None:
    server = config.root / "server"
    name = config.key
    loadgen.sockperf_server(
        launcher, f"{name}-sockperf-tcp", server, config.server_ip, SOCKPERF_PORT, "tcp"
    )
    loadgen.sockperf_server(
        launcher, f"{name}-sockperf-udp", server, config.server_ip, SOCKPERF_PORT, "udp"
    )
    loadgen.iperf3_server(launcher, f"{name}-iperf3", server, config.server_ip, IPERF_PORT)
    loadgen.rr_server(launcher, rr, f"{name}-rr", server, "tcp", [(config.server_ip, RR_PORT)])


def _sanity(config: MeshConfig, launcher: Launcher, rr: Path) -> None:
    """The measured path works; under a policy, a port no rule allows is denied."""
    client = config.root / "client"
    passed = loadgen.rr_client(
        launcher, rr, client, "tcp", 5, config.target(RR_PORT), config.client_ip
    )
    if passed["succeeded"] != 5:
        raise RuntimeError(f"{config.label}: connects through the measured path failed: {passed}")
    if config.attachment is not None:
        denied = loadgen.rr_client(
            launcher, rr, client, "tcp", 1, (config.server_ip, DENIED_PORT), config.client_ip
        )
        if denied["errnos"] != {"1": 1}:
            raise RuntimeError(f"{config.label}: port {DENIED_PORT} should be EPERM: {denied}")


def _empty_hooks_like(configs: list[MeshConfig]) -> set[AttachType]:
    """The cgroup hooks the ebmesh configuration's attachment uses."""
    ebmesh_config = next((c for c in configs if c.key == "ebmesh"), None)
    if ebmesh_config is None or ebmesh_config.attachment is None:
        raise RuntimeError("the 'bare' configuration needs 'ebmesh' in --mesh-configs")
    hooks = cost.attached_hooks(ebmesh_config.attachment).values()
    return {AttachType[hook] for hook in hooks if hook != cost.NOT_A_CGROUP_HOOK}


def setup(args, stack: contextlib.ExitStack, launcher: Launcher, rr: Path, safe_target):
    configs = [MeshConfig(key, 70 + index) for index, key in enumerate(args.mesh_configs)]
    # The bare hooks copy the ebmesh configuration's: set up after it.
    for config in sorted(configs, key=lambda c: c.key == "bare"):
        config.root = stack.enter_context(throwaway_cgroup(("client", "server"), prefix=PREFIX))
        _start_servers(config, launcher, rr)
        if config.key in SIDECARS:
            _start_proxies(config, launcher)
        elif config.key == "bare":
            cost.load_empty_hooks(_empty_hooks_like(configs), safe_target(config.root), stack)
        elif config.key != "none":
            compiled = ebmesh.compile(policy_text(config))
            config.attachment = stack.enter_context(
                compiled.attach(safe_target(config.root), events=args.events)
            )
            del compiled
        _sanity(config, launcher, rr)
        print(f"  mesh: {config.label} ready", flush=True)
    return configs


# ---- measuring -------------------------------------------------------------------------------


def _cpu_mark(config: MeshConfig) -> dict:
    system = system_cpu_seconds()
    return {
        "cgroup_s": cgroup_cpu_usec(config.root) / 1e6,
        "ksoftirqd_s": ksoftirqd_seconds(),
        "system_busy_s": system["busy"],
        "system_softirq_s": system["softirq"],
    }


def _mean_of_runs(runs: list[dict]) -> dict:
    """One figure of several sockperf runs: their percentiles' means, their counts'
    sums, and the runs themselves."""
    if len(runs) == 1:
        return runs[0]
    combined = {name: sum(r[name] for r in runs) / len(runs) for name in _PERCENTILES}
    for name in ("valid_seconds", "valid_replies", "total_seconds", "total_sent", "total_replies"):
        combined[name] = sum(r[name] for r in runs)
    combined["min_us"] = min(r["min_us"] for r in runs)
    combined["max_us"] = max(r["max_us"] for r in runs)
    return {**combined, "runs": runs}


def _measure_round(config: MeshConfig, launcher: Launcher, rr: Path, args) -> dict:
    client = config.root / "client"
    result: dict = {}
    for key, protocol, size in PING_PONGS:
        if not config.supports(protocol):
            continue
        before = _cpu_mark(config) if key == "tcp_64" else None
        runs = [
            loadgen.sockperf_ping_pong(
                launcher,
                client,
                config.target(SOCKPERF_PORT),
                config.client_ip,
                protocol,
                size,
                args.mesh_seconds,
            )
            for _ in range(PING_PONG_RUNS[key])
        ]
        run = _mean_of_runs(runs)
        if before is not None:
            after = _cpu_mark(config)
            spent = {name: after[name] - before[name] for name in before}
            replies = run["total_replies"]
            run["cpu"] = {
                **spent,
                "replies": replies,
                # The benchmark's own processes and the softirq work outside them.
                "cpu_s_per_100k": (spent["cgroup_s"] + spent["ksoftirqd_s"]) / replies * 1e5,
                "system_busy_s_per_100k": spent["system_busy_s"] / replies * 1e5,
            }
        result[key] = run
    result["iperf3"] = loadgen.iperf3_client(
        launcher, client, config.target(IPERF_PORT), config.client_ip, args.mesh_seconds
    )
    rate = loadgen.rr_client(
        launcher,
        rr,
        client,
        "tcp-for",
        args.mesh_rate_seconds,
        config.target(RR_PORT),
        config.client_ip,
    )
    if rate["succeeded"] != rate["count"]:
        raise RuntimeError(f"{config.label}: failed connections in the rate loop: {rate}")
    result["connection_rate"] = {**rate, "per_second": rate["count"] / rate["seconds"]}
    shortcut = getattr(config.attachment, "shortcut_counters", None)
    if shortcut is not None:  # a datapath with `accelerate on`'s sockmap shortcut
        result["shortcut_counters_total"] = shortcut()
    if config.proxies:
        config.proxy_rss.append(
            {side: rss_bytes(proxy.pids()) for side, proxy in config.proxies.items()}
        )
    return result


def measure(configs: list[MeshConfig], launcher: Launcher, rr: Path, args) -> None:
    for number in range(args.mesh_rounds):
        if args.quick:
            # A smoke run checks the plumbing: every configuration at once, in seconds
            # (sockperf alone idles 2 s before each run). Its figures are not comparable.
            with ThreadPoolExecutor(len(configs)) as pool:
                measured = pool.map(lambda c: _measure_round(c, launcher, rr, args), configs)
                for config, result in zip(configs, list(measured)):
                    config.rounds.append(result)
        else:
            shift = number % len(configs)
            for config in configs[shift:] + configs[:shift]:
                config.rounds.append(_measure_round(config, launcher, rr, args))
        cells = [f"{c.key} {c.rounds[-1]['tcp_64']['p50_us']:.1f}" for c in configs if c.rounds]
        print(
            f"  mesh round {number + 1}/{args.mesh_rounds} (TCP 64 B p50 RTT us): "
            + ", ".join(cells),
            flush=True,
        )


# ---- summary ---------------------------------------------------------------------------------


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _proxy_summary(config: MeshConfig) -> dict | None:
    if not config.proxy_rss:
        return None
    per_side = {
        side: max(sample[side] for sample in config.proxy_rss) for side in config.proxy_rss[0]
    }
    return {
        "rss_bytes_per_proxy": per_side,
        # One proxy per workload: the larger of the pair stands for a workload's sidecar.
        "rss_bytes_one_proxy": max(per_side.values()),
        "processes_per_proxy": {side: len(proxy.pids()) for side, proxy in config.proxies.items()},
        "note": "VmRSS of the proxy's processes (nginx: master and worker), the largest "
        "sample after each round, under the benchmark's load",
    }


def summarize(configs: list[MeshConfig], args) -> dict:
    entries = {}
    for config in configs:
        rounds = config.rounds
        figures = {}
        for key, protocol, _ in PING_PONGS:
            if not config.supports(protocol):
                figures[key] = None
                continue
            figures[key] = {stat: _median(r[key][stat] for r in rounds) for stat in _PERCENTILES}
            figures[key]["p50_us_rounds"] = [r[key]["p50_us"] for r in rounds]
        cpu = [r["tcp_64"]["cpu"] for r in rounds]
        entries[config.key] = {
            "label": config.label,
            "latency": figures,
            "throughput_gbit_s": _median(r["iperf3"]["gbit_per_s"] for r in rounds),
            "throughput_gbit_s_rounds": [r["iperf3"]["gbit_per_s"] for r in rounds],
            "connections_per_s": _median(r["connection_rate"]["per_second"] for r in rounds),
            "connections_per_s_rounds": [r["connection_rate"]["per_second"] for r in rounds],
            "cpu_s_per_100k_requests": _median(c["cpu_s_per_100k"] for c in cpu),
            "system_busy_s_per_100k_requests": _median(c["system_busy_s_per_100k"] for c in cpu),
            "proxies": _proxy_summary(config),
            # Messages sent socket to socket and through the stack, since the attach
            # (None: the datapath has no shortcut, `accelerate on` changes nothing).
            "shortcut_counters": rounds[-1].get("shortcut_counters_total"),
            "rounds": rounds,
        }
    return {
        "settings": {
            "configurations": [c.key for c in configs],
            "rounds": args.mesh_rounds,
            "seconds_per_measurement": args.mesh_seconds,
            "policy_rules": POLICY_RULES,
            "events": args.events,
            "latency": "sockperf ping-pong round-trip time (--full-rtt), microseconds; "
            "median over rounds of each round's percentile",
            "throughput": "iperf3, one TCP stream, received bits per second",
            "connection_rate": "bench/rr.c: one client, connect + 2 B each way + close, "
            "for the measurement's duration",
            "cpu": "during the TCP 64 B ping-pong: cpu.stat usage_usec of the "
            "configuration's cgroup (client, server, proxies, and the softirq work done in "
            "their context) + ksoftirqd threads, per 100k request/replies; "
            "system_busy is /proc/stat's whole machine (other processes included)",
            "sidecars": "HAProxy (TCP mode) and nginx (stream) are L4 proxies, lighter than "
            "Envoy (not in the registries reached here), so the comparison flatters the "
            "sidecars",
        },
        "configs": entries,
    }


def _ratio_rounds(entries: dict, key: str, base: str, pick) -> float | None:
    """Median of the per-round ratios key/base (the same round: side by side)."""
    if key not in entries or base not in entries:
        return None
    pairs = zip(entries[key]["rounds"], entries[base]["rounds"])
    ratios = []
    for mine, theirs in pairs:
        a, b = pick(mine), pick(theirs)
        if a is not None and b:
            ratios.append(a / b)
    return statistics.median(ratios) if ratios else None


def p50(kind: str):
    return lambda r: r[kind]["p50_us"] if kind in r else None


def ratio(mesh: dict, key: str, base: str, pick) -> float | None:
    return _ratio_rounds(mesh["configs"], key, base, pick)


def print_report(mesh: dict) -> None:
    entries = mesh["configs"]
    settings = mesh["settings"]
    print()
    print(
        f"ebmesh against no mesh and sidecars: {settings['rounds']} rounds x "
        f"{settings['seconds_per_measurement']} s per measurement, medians; round-trip "
        "times in us (sockperf --full-rtt)"
    )
    header = (
        f"{'configuration':<27} | {'TCP 64B p50/p99/p99.9':>21} | {'TCP 16KB p50/p99/p99.9':>22} | "
        f"{'UDP 64B p50/p99/p99.9':>21} | {'Gbit/s':>6} | {'conn/s':>6} | {'CPU s/100k':>10}"
    )
    print(header)
    print("-" * len(header))

    def cell(figure, width):
        if figure is None:
            return f"{'n/a':>{width}}"
        text = f"{figure['p50_us']:.1f}/{figure['p99_us']:.1f}/{figure['p99_9_us']:.0f}"
        return f"{text:>{width}}"

    for entry in entries.values():
        latency = entry["latency"]
        print(
            f"{entry['label']:<27} | {cell(latency['tcp_64'], 21)} | {cell(latency['tcp_16k'], 22)} | "
            f"{cell(latency['udp_64'], 21)} | {entry['throughput_gbit_s']:>6.1f} | "
            f"{entry['connections_per_s']:>6.0f} | {entry['cpu_s_per_100k_requests']:>10.2f}"
        )
    print(
        "  HAProxy proxies no UDP (n/a). HAProxy and nginx in L4 mode are lighter than Envoy "
        "(not in the registries reached here): the comparison flatters the sidecars."
    )
    print(
        "  CPU: cgroup cpu.stat of client, server and proxies (softirq in their context "
        "included) + ksoftirqd, during the TCP 64 B ping-pong."
    )
    if "accel" in entries:
        shortcut = entries["accel"]["shortcut_counters"]
        if shortcut is None:
            print(
                "  accelerate on: this datapath has no socket shortcut (the setting changes nothing)"
            )
        else:
            print(
                f"  accelerate on: {shortcut['shortcut']:,} messages went socket to socket, "
                f"{shortcut['stack']:,} through the stack"
            )
    for key in SIDECARS:
        proxies = entries.get(key, {}).get("proxies") if key in entries else None
        if proxies:
            sides = ", ".join(
                f"{side} {rss / 2**20:.1f} MiB"
                for side, rss in proxies["rss_bytes_per_proxy"].items()
            )
            print(f"  {LABELS[key]}: RSS per proxy under load: {sides}")
