#!/usr/bin/env python3
"""Put a run's results into bench/README.md: the "Latest results" section (between its
markers) from a results JSON, and its chart as bench/README-chart.png.

    .venv/bin/python bench/readme_results.py [bench/results/latest.json]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import goals  # noqa: E402

START, END = "<!-- results:start -->", "<!-- results:end -->"
KINDS = ("tcp_direct", "tcp_vip", "udp_one", "udp_new")


def _latency(figure) -> str:
    if figure is None:
        return "n/a"
    return f"{figure['p50_us']:.1f} / {figure['p99_us']:.1f} / {figure['p99_9_us']:.0f}"


def _value(check) -> str:
    if check["value"] is None:
        return "not measured"
    if check["bound"].endswith("ns"):
        return f"{check['value']:.0f} ns"
    return f"{check['value']:.3f}x"


def render(results: dict) -> str:
    machine = results["machine"]
    lines = [
        f"Run of {results['when']} on this VM: kernel {machine['kernel']}, "
        f"{machine['cpus']} CPUs ({machine['cpu_model']}), load average "
        f"{machine['loadavg_start'][0]:.1f} at the start and {machine['loadavg_end'][0]:.1f} "
        f"at the end (other sessions share the machine), commit `{machine['git_commit']}`"
        + (" with uncommitted changes" if machine["git_dirty"] else "")
        + f"; {sum(results.get('part_seconds', {}).values()) / 60:.1f} minutes.",
        "",
        "![latency, memory and CPU by configuration](README-chart.png)",
        "",
        "**Must reach** (issues 10 and 8):",
        "",
        "| issue | target | measured | goal | |",
        "|---|---|---|---|---|",
    ]
    for check in goals.evaluate(results):  # today's definitions, from the run's figures
        verdict = "-" if check["met"] is None else ("met" if check["met"] else "**not met**")
        lines.append(
            f"| {check['issue']} | {check['target']} | {_value(check)} | {check['bound']} | {verdict} |"
        )
    floor = goals.floor_text(results)
    if floor:
        lines += ["", floor[0].upper() + floor[1:] + "."]
    mesh = results.get("mesh")
    if mesh:
        lines += [
            "",
            f"**Against no mesh and sidecars** ({mesh['settings']['rounds']} rounds, medians; "
            "round-trip µs p50 / p99 / p99.9; CPU seconds per 100k request/replies). HAProxy and "
            "nginx in L4 mode are lighter than Envoy: the comparison flatters the sidecars.",
            "",
            "| configuration | TCP 64 B | TCP 16 KB | UDP 64 B | Gbit/s | conn/s | CPU s/100k |",
            "|---|---|---|---|---|---|---|",
        ]
        for entry in mesh["configs"].values():
            latency = entry["latency"]
            lines.append(
                f"| {entry['label']} | {_latency(latency['tcp_64'])} | "
                f"{_latency(latency['tcp_16k'])} | {_latency(latency['udp_64'])} | "
                f"{entry['throughput_gbit_s']:.1f} | {entry['connections_per_s']:.0f} | "
                f"{entry['cpu_s_per_100k_requests']:.2f} |"
            )
        accel = mesh["configs"].get("accel")
        if accel is not None:
            shortcut = accel.get("shortcut_counters")
            lines += [
                "",
                "`accelerate on`: "
                + (
                    "this datapath has no socket shortcut, so the row measures the plain path."
                    if shortcut is None
                    else f"{shortcut['shortcut']:,} messages went socket to socket, "
                    f"{shortcut['stack']:,} through the stack."
                ),
            ]
    memory = results.get("memory")
    if memory:
        proxies = list(memory["comparison"]["proxy_rss_bytes"])
        lines += [
            "",
            "**Memory** (MiB; ebmesh = kernel memlock of maps and programs + the agent's RSS; "
            "sidecars = one proxy's RSS under load x workloads):",
            "",
            "| workloads | maps | programs | agent RSS | ebmesh | "
            + " | ".join(f"{p} x N" for p in proxies)
            + " |",
            "|---|---|---|---|---|" + "---|" * len(proxies),
        ]
        for key, record in memory["ebmesh"].items():
            row = memory["comparison"]["rows"][key]
            lines.append(
                f"| {record['workloads']} | {record['maps_memlock_bytes'] / 2**20:.1f} | "
                f"{record['programs_memlock_bytes'] / 2**20:.2f} | "
                f"{record['agent_rss_bytes'] / 2**20:.1f} | {record['total_bytes'] / 2**20:.1f} | "
                + " | ".join(f"{row[p + '_bytes'] / 2**20:.0f}" for p in proxies)
                + " |"
            )
    cost = results.get("cost")
    if cost:
        bare = cost["bare_hooks"]["kinds"]
        lines += [
            "",
            "**Datapath cost**: BPF ns per operation, all programs (over the bare hooks); "
            f"bpf_stats adds about {cost['settings']['bpf_stats_ns_per_run']} ns to every run.",
            "",
            "| rules/events | " + " | ".join(KINDS) + " |",
            "|---|" + "---|" * len(KINDS),
            "| bare hooks | "
            + " | ".join(f"{bare[k]['ns_per_operation']:.0f}" for k in KINDS)
            + " |",
        ]
        for key, entry in cost["configs"].items():
            cells = [
                f"{entry['kinds'][k]['ns_per_operation']:.0f} "
                f"({entry['kinds'][k]['over_bare_ns_per_operation']:+.0f})"
                for k in KINDS
            ]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    source = Path(argv[0]) if argv else HERE / "results" / "latest.json"
    results = json.loads(source.read_text())
    readme = HERE / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        print(f"{readme} has no {START} ... {END} section", file=sys.stderr)
        return 2
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    readme.write_text(f"{before}{START}\n{render(results)}\n{END}{after}")
    chart = source.with_suffix(".png")
    if chart.exists():
        shutil.copyfile(chart, HERE / "README-chart.png")
    print(f"updated {readme} from {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
