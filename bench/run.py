#!/usr/bin/env python3
"""ebmesh benchmark suite: ebmesh against no mesh and a sidecar mesh (latency,
throughput, connection rate, CPU, memory), the datapath's cost per connection
over the bare hooks, compile+attach time by policy size, and load balancing.

    sudo .venv/bin/python bench/run.py                  # what `make bench` runs
    sudo .venv/bin/python bench/run.py --quick          # a smoke run, a few seconds a part
    sudo .venv/bin/python bench/run.py --parts mesh,memory --rounds 5
    sudo .venv/bin/python bench/run.py --parts rules --sizes 10,10000

Parts (--parts, all by default), one module each:
    rules   compile+attach time and BPF time per connection, by policy size (this file)
    lb      load balancing: a connect to a service VIP (bench/balancing.py)
    mesh    no mesh / ebmesh / accelerate on / VIP / HAProxy pair / nginx pair (bench/mesh.py)
    memory  ebmesh's maps, programs and agent for 1, 30, 300 workloads (bench/memory.py)
    cost    issue 8's BPF time per program and connection, over empty hooks (bench/cost.py)

Prints tables and the "must reach" targets (bench/goals.py), writes
bench/results/latest.json and a chart beside it (bench/chart.py). See
bench/README.md. Needs root: it attaches the policies to throwaway cgroups it
creates (`ebmesh-bench-*`) and removes them, with their programs, processes
and namespaces, whatever happens (exceptions, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import balancing  # noqa: E402
import cost  # noqa: E402
import goals  # noqa: E402
import loadgen  # noqa: E402
import memory  # noqa: E402
import mesh  # noqa: E402
import policy_gen  # noqa: E402
from processes import Launcher  # noqa: E402
from time_wait import time_wait_off  # noqa: E402

import ebmesh  # noqa: E402
from ebmesh.loader import BpfObject, MapAccess, enable_run_time_stats, program_info  # noqa: E402
from ebmesh.runtime.cgroups import cgroup2_mount  # noqa: E402
from tests.support import Agent, places, throwaway_cgroup  # noqa: E402

PREFIX = "ebmesh-bench-"
DEFAULT_SIZES = (10, 10_000, 100_000)
BASELINE = 10
MEASURED_PORT = policy_gen.MEASURED_PORT
DENIED_PORT = 9999  # no rule allows client -> server 9999: the sanity check expects EPERM
# Goals from the issue.
RATIO_GOAL = 1.5  # per-connection BPF time at 100k rules / at 10 rules
TIME_GOALS = {10_000: 3.0, 100_000: 20.0}  # cold compile+attach, seconds
DECISION_PROGRAMS = ("ebmesh_connect4", "ebmesh_ingress")
PARTS = ("rules", "lb", "mesh", "memory", "cost")


def _addresses(index: int) -> tuple[str, str]:
    """Each size has its own client and server loopback address, in its own 127.N/16."""
    return f"127.{10 + index}.1.1", f"127.{10 + index}.2.1"


# ---- small helpers ----------------------------------------------------------------------


class GcWatch:
    """Pauses of the cyclic garbage collector while active: (start, seconds, generation) each."""

    def __init__(self):
        self.events: list[tuple[float, float, int]] = []
        self.collected = {0: 0, 1: 0, 2: 0}  # unreachable objects found, by generation
        self._started = 0.0

    def _callback(self, phase, info):
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.events.append(
                (self._started, time.perf_counter() - self._started, info["generation"])
            )
            self.collected[info["generation"]] += info["collected"]

    def __enter__(self):
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc_info):
        gc.callbacks.remove(self._callback)

    @property
    def total(self) -> float:
        return sum(seconds for _, seconds, _ in self.events)

    def by_generation(self) -> dict[int, dict]:
        result = {g: {"collections": 0, "seconds": 0.0} for g in (0, 1, 2)}
        for _, seconds, generation in self.events:
            result[generation]["collections"] += 1
            result[generation]["seconds"] += seconds
        for generation, collected in self.collected.items():
            result[generation]["objects_collected"] = collected
        return result

    def by_phase(self, started: float, phases: dict[str, float]) -> dict[str, float]:
        """GC seconds inside each phase; `phases` are consecutive durations from `started`."""
        bounds, at = [], started
        for name, seconds in phases.items():
            bounds.append((name, at, at + seconds))
            at += seconds
        result = {name: 0.0 for name in phases}
        for start, seconds, _ in self.events:
            for name, low, high in bounds:
                if low <= start < high:
                    result[name] += seconds
                    break
        return result


@contextlib.contextmanager
def attach_breakdown(into: dict):
    """Times the two costly parts of `attach()` (program load/verify, map batch
    updates) by wrapping the loader's methods while the block runs. The wrappers
    only read a clock; behaviour is unchanged."""
    original_load, original_update = BpfObject.load, MapAccess.update_batch
    into.setdefault("load_verify", 0.0)
    into.setdefault("map_fill", 0.0)

    def load(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return original_load(self, *args, **kwargs)
        finally:
            into["load_verify"] += time.perf_counter() - started

    def update_batch(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return original_update(self, *args, **kwargs)
        finally:
            into["map_fill"] += time.perf_counter() - started

    BpfObject.load, MapAccess.update_batch = load, update_batch
    try:
        yield into
    finally:
        BpfObject.load, MapAccess.update_batch = original_load, original_update


@contextlib.contextmanager
def cache_dir(path: Path):
    """EBMESH_CACHE_DIR=path for the block."""
    previous = os.environ.get("EBMESH_CACHE_DIR")
    os.environ["EBMESH_CACHE_DIR"] = str(path)
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop("EBMESH_CACHE_DIR", None)
        else:
            os.environ["EBMESH_CACHE_DIR"] = previous


class _PartClock:
    """Wall seconds of each part, for the JSON and the run-time budget."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def timed(self, part: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] = time.perf_counter() - started
            print(f"  ({part}: {self.seconds[part]:.0f} s)", flush=True)


PART_SECONDS = _PartClock()


def _safe_attach_target(path: Path) -> Path:
    """Only ever a cgroup this run created: directly under the cgroup2 mount, named ebmesh-bench-*."""
    mount = cgroup2_mount()
    if path.parent != mount or not path.name.startswith(PREFIX) or path == mount:
        raise RuntimeError(f"refusing to attach to {path}: not a benchmark cgroup")
    return path


def _machine() -> dict:
    from ebmesh.toolchain.clang import clang_version, find_clang

    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        ).stdout
        modified = [line[3:] for line in status.splitlines() if line.strip()]
        dirty = bool(modified)
    except OSError:
        commit, dirty, modified = "", False, []
    return {
        "kernel": platform.release(),
        "clang": clang_version(find_clang()).text,
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "git_commit": commit,
        "git_dirty": dirty,
        "git_modified_tracked_files": modified,  # uncommitted changes the numbers include
        "loadavg_start": os.getloadavg(),
    }


def _busiest_other_processes(limit: int = 3) -> list[str]:
    """Other processes eating CPU now: the numbers are noisier while they run."""
    try:
        out = subprocess.run(
            ["ps", "-eo", "pcpu,pid,comm", "--sort=-pcpu", "--no-headers"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    busy = []
    for line in out.splitlines():
        parts = line.split(None, 2)
        if (
            len(parts) == 3
            and float(parts[0]) >= 20.0
            and int(parts[1]) != os.getpid()
            and parts[2] != "ps"
        ):
            busy.append(f"{parts[2]} (pid {parts[1]}, {parts[0]}% CPU)")
    return busy[:limit]


# ---- one policy size ----------------------------------------------------------------------


@dataclass
class SizeRun:
    rules: int
    index: int
    client_ip: str = ""
    server_ip: str = ""
    policy: policy_gen.GeneratedPolicy | None = None
    root: Path | None = None
    client: Agent | None = None
    server: Agent | None = None
    attachment: object = None
    cold: dict = field(default_factory=dict)
    warm: dict = field(default_factory=dict)
    shape: dict = field(default_factory=dict)
    programs: dict = field(default_factory=dict)
    rounds: list = field(default_factory=list)


def _compile_and_attach(run: SizeRun, events: str) -> tuple[object, dict]:
    """compile(text) through attach() returning, with its phases. Returns (attachment, record)."""
    gc.collect()  # every measurement starts with no garbage pending
    breakdown: dict = {}
    with GcWatch() as watch:
        started = time.perf_counter()
        compiled = ebmesh.compile(run.policy.text)
        compiled_at = time.perf_counter()
        with attach_breakdown(breakdown):
            attachment = compiled.attach(_safe_attach_target(run.root), events=events)
        attached_at = time.perf_counter()
    phases = {**compiled.timings, "attach": attached_at - compiled_at}
    record = {
        "compile_s": compiled_at - started,
        "attach_s": attached_at - compiled_at,
        "total_s": attached_at - started,
        "cache_hit": compiled.build.cache_hit,
        "phases_s": phases,
        "attach_phases_s": {
            **breakdown,
            "other": (attached_at - compiled_at) - sum(breakdown.values()),
        },
        "gc_s": watch.total,
        "gc_s_by_phase": watch.by_phase(started, phases),
        "gc_by_generation": watch.by_generation(),
    }
    if not run.shape:
        shape = compiled.shape
        run.shape = {
            "peers": run.policy.peers,
            "form_counts": run.policy.form_counts,
            "policy_bytes": len(run.policy.text),
            "v4_prefix_lengths": list(compiled.tables.v4_lengths),
            "max_src_prefix_nesting": shape.max_src_prefix_nesting,
            "max_dst_prefix_nesting": shape.max_dst_prefix_nesting,
            "port_search_steps": shape.port_search_steps,
            "pair_kinds": hex(shape.pair_kinds),
            "map_entries": {name: contents.count for name, contents in compiled.image.maps.items()},
            "object_bytes": len(compiled.object_bytes),
        }
    del compiled
    return attachment, record


def _pin(pid: int, cpu: int) -> None:
    """Pin every thread of an agent we started to one CPU."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {cpu})


def _median_record(records: list[dict]) -> dict:
    """The run whose total is the median (the upper one of an even count), phases and all."""
    ordered = sorted(records, key=lambda r: r["total_s"])
    return dict(ordered[len(ordered) // 2])


def _sanity(run: SizeRun) -> None:
    """The measured flow passes and a flow with no rule is denied at once."""
    ok = run.client.connect(run.server_ip, MEASURED_PORT, source=run.client_ip)
    if not ok.get("ok"):
        raise RuntimeError(
            f"{run.rules} rules: client -> server:{MEASURED_PORT} should be allowed, got {ok}"
        )
    denied = run.client.connect(run.server_ip, DENIED_PORT, source=run.client_ip)
    if denied.get("ok") or denied.get("errno") != 1:  # EPERM
        raise RuntimeError(
            f"{run.rules} rules: client -> server:{DENIED_PORT} should be EPERM, got {denied}"
        )


def prepare_size(run: SizeRun, stack: contextlib.ExitStack, args, vmlinux_dir: Path) -> None:
    run.client_ip, run.server_ip = _addresses(run.index)
    run.policy = policy_gen.generate(run.rules, run.client_ip, run.server_ip, seed=args.seed)
    run.root = stack.enter_context(throwaway_cgroup(("client", "server"), prefix=PREFIX))
    run.server = Agent(run.root / "server", name=f"server-{run.rules}")
    stack.callback(run.server.stop)
    run.client = Agent(run.root / "client", name=f"client-{run.rules}")
    stack.callback(run.client.stop)
    if args.pin is not None:
        # The same placement for every size, before the server starts its accept thread.
        _pin(run.client.pid, args.pin[0])
        _pin(run.server.pid, args.pin[1])
    run.server.listen("tcp", run.server_ip, MEASURED_PORT)

    print(f"  {run.rules:>7} rules: compile+attach, cold:", end="", flush=True)
    cold_runs, warm_runs = [], []
    for repeat in range(args.compile_repeats):
        # A fresh object cache: only vmlinux.h (one per kernel, made once) is copied in.
        cache = Path(tempfile.mkdtemp(prefix=f"{PREFIX}cache-"))
        try:
            shutil.copytree(vmlinux_dir, cache / "vmlinux")
            with cache_dir(cache):
                attachment, record = _compile_and_attach(run, args.events)
                try:
                    if record["cache_hit"]:
                        raise RuntimeError(
                            "the cold compile hit the object cache: the cache was not fresh"
                        )
                    if repeat == 0:
                        _sanity(run)
                finally:
                    started = time.perf_counter()
                    attachment.detach()
                    record["detach_s"] = time.perf_counter() - started
                cold_runs.append(record)
                print(f" {record['total_s']:.2f}", end="", flush=True)
                if repeat == args.compile_repeats - 1:
                    print(" s; warm:", end="", flush=True)
                    for warm_repeat in range(args.compile_repeats):
                        attachment, record = _compile_and_attach(run, args.events)
                        if not record["cache_hit"]:
                            attachment.detach()
                            raise RuntimeError(
                                "the warm compile missed the object cache (did bpf_src/ change during the run?)"
                            )
                        warm_runs.append(record)
                        print(f" {record['total_s']:.2f}", end="", flush=True)
                        if warm_repeat < args.compile_repeats - 1:
                            attachment.detach()
                    # The last warm attachment stays for the datapath rounds.
                    run.attachment = stack.enter_context(attachment)
                    print(" s", flush=True)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    run.cold, run.warm = _median_record(cold_runs), _median_record(warm_runs)
    run.cold["all_total_s"] = [r["total_s"] for r in cold_runs]
    run.warm["all_total_s"] = [r["total_s"] for r in warm_runs]
    _sanity(run)
    for name, program_id in run.attachment.program_ids().items():
        info = program_info(program_id)
        run.programs[name] = {
            "verified_insns": info.verified_insns,
            "xlated_bytes": info.xlated_prog_len,
            "jited_bytes": info.jited_prog_len,
        }


# ---- the datapath measurement ----------------------------------------------------------------


def _stats(run: SizeRun) -> dict[str, tuple[int, int]]:
    return run.attachment.program_stats()


def _drain_events(run: SizeRun) -> None:
    while run.attachment.poll_events(0.0):
        pass


def measure_round(run: SizeRun, connects: int, events: str) -> dict:
    if events == "all":
        _drain_events(run)  # room in the ring buffer for this round's events
    before = _stats(run)
    result = run.client.connect_many(run.server_ip, MEASURED_PORT, connects, source=run.client_ip)
    after = _stats(run)
    if result["succeeded"] != connects:
        raise RuntimeError(
            f"{run.rules} rules: {result['succeeded']}/{connects} connects succeeded: {result}"
        )
    per_program = {}
    for name in after:
        run_time = after[name][0] - before[name][0]
        runs = after[name][1] - before[name][1]
        per_program[name] = {
            "run_time_ns": run_time,
            "runs": runs,
            "ns_per_run": run_time / runs if runs else 0.0,
            "runs_per_connection": runs / connects,
        }
    total = sum(p["run_time_ns"] for p in per_program.values())
    runs = sum(p["runs"] for p in per_program.values())
    decision = sum(per_program[name]["run_time_ns"] for name in DECISION_PROGRAMS)
    return {
        "connects": connects,
        "ns_per_connection": total / connects,
        "decision_ns_per_connection": decision / connects,
        "ns_per_run_all_programs": total / runs if runs else 0.0,
        "wall_us_per_connect": result["seconds"] / connects * 1e6,
        "programs": per_program,
    }


def measure_datapath(runs: list[SizeRun], args) -> None:
    with enable_run_time_stats():
        print(f"  warm-up: {args.warmup} connects per size", flush=True)
        for run in runs:
            measure_round(run, args.warmup, args.events)
        for round_number in range(args.rounds):
            # Rotate the order every round: no size always runs first, or last.
            order = runs[round_number % len(runs) :] + runs[: round_number % len(runs)]
            cells = []
            for run in order:
                result = measure_round(run, args.connects, args.events)
                run.rounds.append(result)
                cells.append(f"{run.rules}: {result['ns_per_connection']:.0f} ns")
            print(f"  round {round_number + 1}/{args.rounds}: " + ", ".join(cells), flush=True)


def _median(values) -> float:
    return statistics.median(values) if values else 0.0


def summarize(run: SizeRun) -> dict:
    programs = {}
    for name in run.rounds[0]["programs"]:
        programs[name] = {
            "ns_per_run": _median([r["programs"][name]["ns_per_run"] for r in run.rounds]),
            "runs_per_connection": _median(
                [r["programs"][name]["runs_per_connection"] for r in run.rounds]
            ),
            "ns_per_connection": _median(
                [r["programs"][name]["run_time_ns"] / r["connects"] for r in run.rounds]
            ),
            **run.programs.get(name, {}),
        }
    per_conn = [r["ns_per_connection"] for r in run.rounds]
    decision = [r["decision_ns_per_connection"] for r in run.rounds]
    return {
        "ns_per_connection": _median(per_conn),
        "ns_per_connection_rounds": per_conn,
        "ns_per_connection_spread": (max(per_conn) - min(per_conn)) / _median(per_conn)
        if per_conn
        else 0.0,
        "decision_ns_per_connection": _median(decision),
        "decision_ns_per_connection_rounds": decision,
        "ns_per_run_all_programs": _median([r["ns_per_run_all_programs"] for r in run.rounds]),
        "wall_us_per_connect": _median([r["wall_us_per_connect"] for r in run.rounds]),
        "programs": programs,
    }


# ---- report ----------------------------------------------------------------------


def _fmt_s(value: float) -> str:
    return f"{value:.2f}"


def build_results(runs: list[SizeRun], args, machine: dict, toolchain: dict) -> dict:
    sizes = {}
    for run in runs:
        sizes[str(run.rules)] = {
            "rules": run.rules,
            "client": run.client_ip,
            "server": f"{run.server_ip}:{MEASURED_PORT}/tcp",
            "measured_rule_line": run.policy.measured_rule_line,
            "shape": run.shape,
            "cold": run.cold,
            "warm": run.warm,
            "datapath": summarize(run),
            "rounds": run.rounds,
        }
    base = sizes.get(str(BASELINE))
    goals = {}
    for key, entry in sizes.items():
        rules = entry["rules"]
        datapath = entry["datapath"]
        entry["ratio_vs_10"] = (
            datapath["ns_per_connection"] / base["datapath"]["ns_per_connection"] if base else None
        )
        entry["decision_ratio_vs_10"] = (
            (
                datapath["decision_ns_per_connection"]
                / base["datapath"]["decision_ns_per_connection"]
            )
            if base
            else None
        )
        checks = {}
        if rules in TIME_GOALS:
            checks["compile_attach_s"] = {
                "goal": f"<= {TIME_GOALS[rules]} s (cold)",
                "value": entry["cold"]["total_s"],
                "met": entry["cold"]["total_s"] <= TIME_GOALS[rules],
            }
        if rules == 100_000 and base:
            checks["per_connection_ratio"] = {
                "goal": f"<= {RATIO_GOAL}x of {BASELINE} rules",
                "value": entry["ratio_vs_10"],
                "met": entry["ratio_vs_10"] <= RATIO_GOAL,
            }
        if checks:
            goals[key] = checks
    machine = dict(
        machine, loadavg_end=os.getloadavg(), busy_processes_at_end=_busiest_other_processes()
    )
    return {
        "benchmark": "ebmesh bench/run.py",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine,
        "settings": {
            "sizes": [run.rules for run in runs],
            "rounds": args.rounds,
            "connects_per_round": args.connects,
            "warmup_connects": args.warmup,
            "events": args.events,
            "seed": args.seed,
            "pinned_cpus_client_server": args.pin,
            "compile_repeats": args.compile_repeats,
            "parts": sorted(args.parts),
            "cold_cache": "fresh EBMESH_CACHE_DIR per cold run; vmlinux.h pre-warmed (copied in), objects cold",
            "per_connection": "sum over all attached programs of delta run_time_ns / connects (median of rounds)",
            "decision_programs": list(DECISION_PROGRAMS),
        },
        "toolchain": toolchain,
        "sizes": sizes,
        "goals": goals,
        "all_goals_met": all(
            check["met"] for checks in goals.values() for check in checks.values()
        ),
    }


def print_report(results: dict) -> None:
    sizes = results["sizes"]
    goals = results["goals"]
    m = results["machine"]
    print()
    print(
        f"ebmesh benchmark — kernel {m['kernel']}, {m['clang']}, {m['cpus']} CPUs ({m['cpu_model']}), "
        f"load avg {m['loadavg_start'][0]:.2f} -> {m['loadavg_end'][0]:.2f}"
    )
    print(
        f"events={results['settings']['events']}, {results['settings']['rounds']} rounds x "
        f"{results['settings']['connects_per_round']} connects (median), cold = fresh object cache "
        "with vmlinux.h pre-warmed"
    )
    print()
    header = (
        f"{'rules':>8} | {'BPF ns/conn':>11} | {'decision ns':>11} | {'ratio vs 10':>11} | "
        f"{'compile s':>9} | {'attach s':>8} | {'total s':>7} | {'warm s':>6} | goal met?"
    )
    print(header)
    print("-" * len(header))
    for key, entry in sizes.items():
        datapath, cold = entry["datapath"], entry["cold"]
        ratio = entry["ratio_vs_10"]
        decision_ratio = entry["decision_ratio_vs_10"]
        ratio_text = f"{ratio:.2f}/{decision_ratio:.2f}" if ratio is not None else "-"
        checks = goals.get(key)
        if checks:
            verdicts = []
            for name, check in checks.items():
                label = "time" if name == "compile_attach_s" else "ratio"
                verdicts.append(f"{label} {'yes' if check['met'] else 'NO'}")
            met = ", ".join(verdicts)
        else:
            met = "(baseline)" if entry["rules"] == BASELINE else "-"
        print(
            f"{entry['rules']:>8} | {datapath['ns_per_connection']:>11.0f} | "
            f"{datapath['decision_ns_per_connection']:>11.0f} | {ratio_text:>11} | "
            f"{_fmt_s(cold['compile_s']):>9} | {_fmt_s(cold['attach_s']):>8} | {_fmt_s(cold['total_s']):>7} | "
            f"{_fmt_s(entry['warm']['total_s']):>6} | {met}"
        )
    print(
        "  ratio: all programs / decision programs (connect4 + ingress) only. "
        "Goals: ratio <= 1.5 at 100k; cold total <= 3 s at 10k, <= 20 s at 100k."
    )

    print()
    print("Where compile+attach time goes: seconds (of which cyclic GC pauses), per phase;")
    print("cold = fresh object cache, warm = object cache hit (clang skipped):")
    phase_names = ["parse_and_check", "ir", "tables", "clang", "encode", "attach"]
    header = (
        f"{'rules':>8} |      | "
        + " | ".join(f"{name:>15}" for name in phase_names)
        + f" | {'GC total':>8} | {'load+verify':>11} | {'map fill':>8}"
    )
    print(header)
    print("-" * len(header))
    for entry in sizes.values():
        for label, record in (("cold", entry["cold"]), ("warm", entry["warm"])):
            phases, gc_phases = record["phases_s"], record["gc_s_by_phase"]
            attach = record["attach_phases_s"]
            cells = [f"{phases.get(n, 0.0):.3f} ({gc_phases.get(n, 0.0):.2f})" for n in phase_names]
            print(
                f"{entry['rules']:>8} | {label} | "
                + " | ".join(f"{c:>15}" for c in cells)
                + f" | {record['gc_s']:>8.3f} | {attach['load_verify']:>11.3f} | {attach['map_fill']:>8.3f}"
            )
    print(
        "  encode includes naming_of() (rule origins for events); load+verify and map fill are inside attach."
    )

    print()
    print("Per program (median over rounds): ns per run x runs per connection = ns per connection")
    names = list(next(iter(sizes.values()))["datapath"]["programs"])
    for name in names:
        cells = []
        for entry in sizes.values():
            p = entry["datapath"]["programs"][name]
            if p["runs_per_connection"] == 0:
                continue
            cells.append(
                f"{entry['rules']}: {p['ns_per_run']:.0f} x {p['runs_per_connection']:.2f} = "
                f"{p['ns_per_connection']:.0f}  ({p.get('verified_insns', '?')} insns verified)"
            )
        if cells:
            print(f"  {name:<16} " + " | ".join(cells))
    print()
    print(
        "Shape: "
        + "; ".join(
            f"{e['rules']} rules: {e['shape']['peers']} peers, {len(e['shape']['v4_prefix_lengths'])} v4 prefix lengths, "
            f"nesting src/dst {e['shape']['max_src_prefix_nesting']}/{e['shape']['max_dst_prefix_nesting']}, "
            f"port search steps {e['shape']['port_search_steps']}"
            for e in sizes.values()
        )
    )
    spread = ", ".join(
        f"{e['rules']}: {e['datapath']['ns_per_connection_spread'] * 100:.0f}%"
        for e in sizes.values()
    )
    print(f"Round-to-round spread of BPF ns/conn (max-min)/median: {spread}")
    if m.get("busy_processes_at_end"):
        print(
            "Note: other busy processes during the run (noise): "
            + "; ".join(m["busy_processes_at_end"])
        )
    print()
    rule_goals_met = all(c["met"] for checks in goals.values() for c in checks.values())
    print(
        "Rule-count goals: all met."
        if rule_goals_met
        else "Rule-count goals: some NOT met (see 'goal met?')."
    )


# ---- main ----------------------------------------------------------------------


def _prepare_toolchain() -> tuple[Path, dict]:
    """vmlinux.h generated once (timed) in a scratch cache; a tiny compile warms
    imports, the parser and clang's version probe, so the first size is not charged for them."""
    scratch = Path(tempfile.mkdtemp(prefix=f"{PREFIX}toolchain-"))
    from ebmesh.toolchain.vmlinux import vmlinux_header

    try:
        with cache_dir(scratch):
            started = time.perf_counter()
            header = vmlinux_header()
            vmlinux_s = time.perf_counter() - started
            started = time.perf_counter()
            ebmesh.compile(policy_gen.generate(10, "127.9.1.1", "127.9.2.1", seed=12345).text)
            first_compile_s = time.perf_counter() - started
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return scratch, {
        "vmlinux_h_s": vmlinux_s,
        "vmlinux_h_bytes": header.stat().st_size,
        "first_compile_in_process_s": first_compile_s,
        "vmlinux_dir": str(header.parent.parent),
    }


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        default=",".join(map(str, DEFAULT_SIZES)),
        help="comma-separated rule counts (default: %(default)s)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="rounds of every part, medians reported (defaults: rules 5, lb 5, mesh 5, cost 5; "
        "--lb-rounds, --mesh-rounds, --cost-rounds set one part's)",
    )
    parser.add_argument("--connects", type=int, help="connects per round (default 3000)")
    parser.add_argument("--warmup", type=int, help="warm-up connects per size (default 500)")
    parser.add_argument(
        "--events",
        choices=("none", "denied", "all"),
        default="denied",
        help="attach(events=...); the measured connections are allowed, so 'denied' "
        "emits none (default: %(default)s)",
    )
    parser.add_argument(
        "--compile-repeats",
        type=int,
        help="cold (and warm) compile+attach runs per size; the median is reported (default 3)",
    )
    parser.add_argument(
        "--pin",
        default="0,1",
        help="CPUs for the client and the server agents, the same for every size, or 'none' "
        "(default: %(default)s). Unpinned, where the scheduler happens to put each size's "
        "pair biases that size by several percent for the whole run",
    )
    parser.add_argument("--seed", type=int, default=1, help="policy generator (and weights) seed")
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help="which parts to run, comma-separated: 'rules' (by policy size), 'lb' (load "
        "balancing), 'mesh' (against no mesh and sidecars), 'memory', 'cost' (BPF time over "
        "the bare hooks) (default: %(default)s)",
    )
    parser.add_argument(
        "--mesh-configs",
        default=",".join(mesh.CONFIGS),
        help="configurations of the mesh part (default: %(default)s)",
    )
    parser.add_argument("--mesh-rounds", type=int, help="mesh part rounds (default 5)")
    parser.add_argument(
        "--mesh-seconds",
        type=int,
        help="seconds of each sockperf, iperf3 and connection-rate run (default 1; sockperf adds 2 s of its own to each)",
    )
    parser.add_argument(
        "--cpu",
        default="1",
        help="the one CPU every process of the mesh and cost parts runs on, or 'none' "
        "(default: %(default)s). On this VM a wake-up across CPUs costs 30-80 us and varies "
        "from run to run, which would drown the differences measured",
    )
    parser.add_argument(
        "--memory-workloads",
        default=",".join(map(str, memory.DEFAULT_WORKLOADS)),
        help="local workload counts of the memory part (default: %(default)s)",
    )
    parser.add_argument(
        "--cost-sizes",
        default=",".join(map(str, cost.DEFAULT_SIZES)),
        help="rule counts of the cost part (default: %(default)s)",
    )
    parser.add_argument("--cost-rounds", type=int, help="cost part rounds (default 5)")
    parser.add_argument(
        "--cost-operations",
        type=int,
        help="connections or exchanges per traffic kind and round in the cost part (default 2000)",
    )
    parser.add_argument(
        "--cost-warmup", type=int, help="cost part warm-up operations per kind (default 500)"
    )
    parser.add_argument(
        "--lb-backends",
        default=",".join(map(str, balancing.DEFAULT_BACKENDS)),
        help="backend counts of the measured service (default: %(default)s)",
    )
    parser.add_argument(
        "--lb-services",
        type=int,
        default=balancing.DEFAULT_EXTRA_SERVICES,
        help="other services (1 backend each) declared next to the largest backend count, "
        "in one more configuration; 0: none (default: %(default)s)",
    )
    parser.add_argument(
        "--lb-rounds", type=int, help="load-balancing rounds, median reported (default 5)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: a few seconds per configuration (rules: 3 rounds of 1000 connects, "
        "one compile+attach of each kind; mesh: 1 round of 1 s runs; cost: 2 rounds of 300)",
    )
    parser.add_argument("--output", type=Path, default=HERE / "results" / "latest.json")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.parts = {part.strip() for part in args.parts.split(",") if part.strip()}
    if not args.parts or args.parts - set(PARTS):
        parser.error(f"--parts takes some of {', '.join(PARTS)}")
    args.mesh_configs = [c.strip() for c in args.mesh_configs.split(",") if c.strip()]
    if not args.mesh_configs or set(args.mesh_configs) - set(mesh.CONFIGS):
        parser.error(f"--mesh-configs takes some of {', '.join(mesh.CONFIGS)}")
    args.memory_workloads = [int(n) for n in args.memory_workloads.split(",") if n.strip()]
    args.cost_sizes = [int(n) for n in args.cost_sizes.split(",") if n.strip()]
    if min(args.memory_workloads, default=0) < 1 or min(args.cost_sizes, default=0) < 10:
        parser.error("--memory-workloads wants counts >= 1, --cost-sizes rule counts >= 10")
    if args.cpu == "none":
        args.cpu = None
    else:
        args.cpu = int(args.cpu)
        if args.cpu not in os.sched_getaffinity(0):
            parser.error(f"--cpu wants one of {sorted(os.sched_getaffinity(0))}, or 'none'")
    args.lb_backends = [int(n) for n in args.lb_backends.split(",") if n.strip()]
    if not args.lb_backends or min(args.lb_backends) < 1:
        parser.error("--lb-backends wants positive backend counts")
    if args.pin == "none":
        args.pin = None
    else:
        args.pin = tuple(int(cpu) for cpu in args.pin.split(","))
        if len(args.pin) != 2 or any(cpu not in os.sched_getaffinity(0) for cpu in args.pin):
            parser.error(f"--pin wants two CPUs among {sorted(os.sched_getaffinity(0))}, or 'none'")
    defaults = {
        "rounds": 5,
        "connects": 3000,
        "warmup": 500,
        "compile_repeats": 3,
        "lb_rounds": 5,
        "mesh_rounds": 5,
        "mesh_seconds": 1,
        "cost_rounds": 5,
        "cost_operations": 2000,
        "cost_warmup": 500,
    }
    if args.quick:
        defaults.update(
            rounds=3,
            connects=1000,
            warmup=200,
            compile_repeats=1,
            lb_rounds=3,
            mesh_rounds=1,
            mesh_seconds=1,
            cost_rounds=2,
            cost_operations=300,
            cost_warmup=50,
        )
    if args.rounds is not None:  # --rounds sets every part's, unless a part's own is given
        defaults.update(lb_rounds=args.rounds, mesh_rounds=args.rounds, cost_rounds=args.rounds)
    for name, value in defaults.items():  # explicit options win over --quick
        if getattr(args, name) is None:
            setattr(args, name, value)
    # sockperf and iperf3 take whole seconds; the connection-rate loop (rr) takes any.
    args.mesh_rate_seconds = 0.5 if args.quick else args.mesh_seconds
    return args


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    args = _parse_args(argv)
    if os.geteuid() != 0:
        print(
            "bench/run.py needs root: it attaches eBPF programs to throwaway cgroups",
            file=sys.stderr,
        )
        return 2
    if not Path("/sys/kernel/btf/vmlinux").exists():
        print("bench/run.py needs kernel BTF at /sys/kernel/btf/vmlinux", file=sys.stderr)
        return 2
    try:
        import chart  # matplotlib: only `make bench` installs it
    except ModuleNotFoundError as missing:
        print(f"bench/run.py needs {missing.name}: `make bench` installs it", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    machine = dict(_machine(), run_id=places.RUN)
    # Everything this run creates is named ebmesh-bench-RUN-*: so is what it would leave.
    print(f"ebmesh benchmark, run {places.RUN}: parts {', '.join(sorted(args.parts))}", flush=True)
    busy = _busiest_other_processes()
    if "rules" in args.parts:
        print(
            f"ebmesh benchmark: sizes {args.sizes}, {args.rounds} rounds x {args.connects} connects"
        )
    if busy:
        print("  note: other busy processes (expect noise): " + "; ".join(busy))
    runs = (
        [SizeRun(rules, index) for index, rules in enumerate(sorted(args.sizes))]
        if "rules" in args.parts
        else []
    )
    with contextlib.ExitStack() as stack:
        # Every part opens connections by the thousands: none leaves a TIME_WAIT socket
        # for the next to meet (bench/time_wait.py).
        machine["tcp_max_tw_buckets_outside_the_run"] = stack.enter_context(time_wait_off())
        scratch, toolchain = _prepare_toolchain()
        stack.callback(shutil.rmtree, scratch, True)
        print(
            f"  toolchain: vmlinux.h {toolchain['vmlinux_h_s']:.2f} s (once per kernel; pre-warmed in the "
            f"cold runs), first in-process compile {toolchain['first_compile_in_process_s']:.2f} s"
        )
        vmlinux_dir = Path(toolchain["vmlinux_dir"])
        # Each part removes what it attached and created before the next one starts.
        if runs:
            with PART_SECONDS.timed("rules"), contextlib.ExitStack() as rules_stack:
                for run in runs:
                    prepare_size(run, rules_stack, args, vmlinux_dir)
                measure_datapath(runs, args)
        lb = None
        if "lb" in args.parts:
            with PART_SECONDS.timed("lb"), contextlib.ExitStack() as lb_stack:
                lb = balancing.run(
                    args,
                    lb_stack,
                    safe_target=_safe_attach_target,
                    pin=_pin,
                    vmlinux_dir=vmlinux_dir,
                )
        results = build_results(runs, args, machine, toolchain)
        if lb is not None:
            results["balancing"] = lb
            results["all_goals_met"] = results["all_goals_met"] and lb["all_goals_met"]
        if args.parts & {"mesh", "memory", "cost"}:
            with contextlib.ExitStack() as tools_stack:
                results.update(_run_tool_parts(args, tools_stack, vmlinux_dir))
    # Everything attached or created above is gone by now.
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["part_seconds"] = dict(PART_SECONDS.seconds)
    results["must_reach"] = goals.evaluate(results)
    if runs:
        print_report(results)
    if lb is not None:
        balancing.print_report(lb)
    if "mesh" in results:
        mesh.print_report(results["mesh"])
    if "memory" in results:
        memory.print_report(results["memory"], results["memory"]["comparison"])
    if "cost" in results:
        cost.print_report(results["cost"])
    goals.print_report(results["must_reach"])
    goals.print_floor(results)
    print()
    if runs or lb is not None:
        print(
            "Rule-count and load-balancing goals: "
            + ("all met." if results["all_goals_met"] else "some NOT met (see 'goal met?').")
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")
    picture = chart.draw(results, args.output.with_suffix(".png"))
    if picture is not None:
        print(f"wrote {picture}")
    return 0


def _run_tool_parts(args, stack: contextlib.ExitStack, vmlinux_dir: Path) -> dict:
    """The parts that run external tools: mesh, memory, cost. Each removes what it made
    before the next starts; they share one scratch directory, rr and an object cache."""
    work = Path(tempfile.mkdtemp(prefix=f"{PREFIX}work-"))
    stack.callback(shutil.rmtree, work, True)
    shutil.copytree(vmlinux_dir, work / "cache" / "vmlinux")
    stack.enter_context(cache_dir(work / "cache"))
    rr = loadgen.build_rr(work)
    results = {}
    if "mesh" in args.parts:
        print(f"mesh: {', '.join(args.mesh_configs)}; {args.mesh_rounds} rounds", flush=True)
        with PART_SECONDS.timed("mesh"), contextlib.ExitStack() as part:
            launcher = Launcher(part, work, cpu=args.cpu)
            configs = mesh.setup(args, part, launcher, rr, _safe_attach_target)
            mesh.measure(configs, launcher, rr, args)
            results["mesh"] = mesh.summarize(configs, args)
    if "memory" in args.parts:
        print(f"memory: {args.memory_workloads} workloads", flush=True)
        with PART_SECONDS.timed("memory"), contextlib.ExitStack() as part:
            results["memory"] = memory.run(args, Launcher(part, work), _safe_attach_target)
        results["memory"]["comparison"] = memory.compare(results["memory"], results.get("mesh"))
    if "cost" in args.parts:
        print(f"cost: sizes {sorted(args.cost_sizes)}; {args.cost_rounds} rounds", flush=True)
        with PART_SECONDS.timed("cost"), contextlib.ExitStack() as part:
            launcher = Launcher(part, work, cpu=args.cpu)
            configs, control = cost.setup(args, part, launcher, rr, _safe_attach_target)
            cost.measure(configs, control, args, launcher, rr)
            results["cost"] = cost.summarize(configs, control, args)
    return results


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: cleaned up", file=sys.stderr)
        sys.exit(130)
