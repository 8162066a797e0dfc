"""ebmesh's memory for 1, 30 and 300 local workloads, against a sidecar per workload.

For each count, `ebmesh apply` (the agent a node would run) attaches a
generated policy of that many local workloads (bench/policy_gen.py
`workloads_policy`: a cgroup and an address each, three rules each) to a
throwaway cgroup. Once it says it is attached, the benchmark reads what the
kernel reports for every BPF map and program the agent holds
(/proc/PID/fdinfo: `memlock` of each map and program, counted once per id;
the programs' JIT size from their info) and the agent's RSS (VmRSS). ebmesh's
total is maps + programs + the agent's RSS. The sidecars' figure is the RSS of
one proxy measured under load in the mesh part (bench/mesh.py), times the
workload count: a sidecar mesh runs one proxy per workload.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import policy_gen
from processes import Launcher, rss_bytes

from ebmesh.loader import program_info
from tests.support import throwaway_cgroup

PREFIX = "ebmesh-bench-"
DEFAULT_WORKLOADS = (1, 30, 300)
ROOT = Path(__file__).resolve().parent.parent


def _fdinfo(pid: int) -> dict:
    """Every BPF map and program the process holds, by id, with the kernel's memlock."""
    maps, programs = {}, {}
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        with contextlib.suppress(OSError):
            fields = dict(
                line.split(":", 1) for line in info.read_text().splitlines() if ":" in line
            )
            fields = {key.strip(): value.strip() for key, value in fields.items()}
            if "map_id" in fields:
                maps[int(fields["map_id"])] = {
                    "type": int(fields["map_type"]),
                    "max_entries": int(fields.get("max_entries", 0)),
                    "memlock": int(fields["memlock"]),
                }
            elif "prog_type" in fields and "link_id" not in fields:
                programs[int(fields["prog_id"])] = {"memlock": int(fields["memlock"])}
    return {"maps": maps, "programs": programs}


def measure_one(workloads: int, launcher: Launcher, safe_target) -> dict:
    children = tuple(f"w{i}" for i in range(workloads))
    with contextlib.ExitStack() as local:
        root = local.enter_context(throwaway_cgroup(children, prefix=PREFIX))
        agent_cgroup = local.enter_context(throwaway_cgroup(prefix=PREFIX))
        policy = launcher.workdir / f"node{workloads}.mesh"
        policy.write_text(policy_gen.workloads_policy(workloads))
        started = time.perf_counter()
        agent = launcher.start(
            f"agent-{workloads}",
            [
                sys.executable,
                "-m",
                "ebmesh",
                "apply",
                str(policy),
                "--cgroup",
                str(safe_target(root)),
                "--no-watch",
            ],
            agent_cgroup,
            ready="attached to",
            timeout=120,
            cwd=ROOT,  # `-m ebmesh` is this repository's
        )
        local.callback(agent.stop)  # detaches (SIGTERM) before the cgroups go
        ready_s = time.perf_counter() - started
        time.sleep(0.5)  # let it settle into its event loop
        held = _fdinfo(agent.pid)
        agent_rss = rss_bytes([agent.pid])
        maps_memlock = sum(m["memlock"] for m in held["maps"].values())
        programs_memlock = sum(p["memlock"] for p in held["programs"].values())
        jited = sum(program_info(i).jited_prog_len for i in held["programs"])
        agent.stop()
    return {
        "workloads": workloads,
        "policy_bytes": len(policy_gen.workloads_policy(workloads)),
        "compile_attach_s": ready_s,
        "maps": len(held["maps"]),
        "programs": len(held["programs"]),
        "maps_memlock_bytes": maps_memlock,
        "programs_memlock_bytes": programs_memlock,
        "programs_jited_bytes": jited,
        "agent_rss_bytes": agent_rss,
        "total_bytes": maps_memlock + programs_memlock + agent_rss,
        "largest_maps": sorted(
            ({"id": i, **m} for i, m in held["maps"].items()),
            key=lambda m: m["memlock"],
            reverse=True,
        )[:5],
    }


def run(args, launcher: Launcher, safe_target) -> dict:
    results = {}
    for workloads in sorted(args.memory_workloads):
        record = measure_one(workloads, launcher, safe_target)
        results[str(workloads)] = record
        print(
            f"  memory: {workloads} workloads: {record['total_bytes'] / 2**20:.1f} MiB "
            f"(maps {record['maps_memlock_bytes'] / 2**20:.1f}, programs "
            f"{record['programs_memlock_bytes'] / 2**20:.2f}, agent RSS "
            f"{record['agent_rss_bytes'] / 2**20:.1f})",
            flush=True,
        )
    return {
        "settings": {
            "workloads": sorted(args.memory_workloads),
            "agent": "`python -m ebmesh apply FILE --cgroup PATH` (events: all), in a cgroup "
            "of its own; measured 0.5 s after it reports the attach",
            "kernel": "memlock from /proc/PID/fdinfo of every map and program fd the agent "
            "holds, once per id",
        },
        "ebmesh": results,
    }


def compare(memory: dict, mesh: dict | None) -> dict:
    """ebmesh's total against N proxies, N = workloads, with the RSS measured under load."""
    proxies = {}
    if mesh is not None:
        for key in ("haproxy", "nginx"):
            entry = mesh["configs"].get(key)
            if entry and entry.get("proxies"):
                proxies[key] = entry["proxies"]["rss_bytes_one_proxy"]
    rows = {}
    for key, record in memory["ebmesh"].items():
        n = record["workloads"]
        rows[key] = {
            "workloads": n,
            "ebmesh_bytes": record["total_bytes"],
            **{f"{proxy}_bytes": rss * n for proxy, rss in proxies.items()},
        }
    return {
        "proxy_rss_bytes": proxies,
        "note": "sidecars = one proxy's RSS under the benchmark's load (mesh part) x workloads",
        "rows": rows,
    }


def print_report(memory: dict, comparison: dict) -> None:
    print()
    print("Memory: ebmesh (kernel memlock of maps + programs, + the agent's RSS) against one")
    print("sidecar per workload (one proxy's RSS under load, from the mesh part, x workloads)")
    proxies = list(comparison["proxy_rss_bytes"])
    header = (
        f"{'workloads':>9} | {'maps MiB':>8} | {'progs MiB':>9} | {'agent RSS MiB':>13} | "
        f"{'ebmesh MiB':>10} | " + " | ".join(f"{p + ' MiB':>12}" for p in proxies)
    )
    print(header)
    print("-" * len(header))
    for key, record in memory["ebmesh"].items():
        row = comparison["rows"][key]
        print(
            f"{record['workloads']:>9} | {record['maps_memlock_bytes'] / 2**20:>8.1f} | "
            f"{record['programs_memlock_bytes'] / 2**20:>9.2f} | "
            f"{record['agent_rss_bytes'] / 2**20:>13.1f} | {record['total_bytes'] / 2**20:>10.1f} | "
            + " | ".join(f"{row[p + '_bytes'] / 2**20:>12.0f}" for p in proxies)
        )
    if not proxies:
        print("  (no proxy RSS: run the mesh part too, --parts mesh,memory, for the comparison)")
