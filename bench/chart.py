"""The benchmark's chart (matplotlib, no display): latency by configuration as p50
and p99 bars, memory by workload count, CPU per request; log scales where the
values span orders of magnitude."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server
import matplotlib.pyplot as plt  # noqa: E402
import mesh as mesh_part  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, NullFormatter  # noqa: E402


def draw(results: dict, path: Path) -> Path | None:
    mesh, memory = results.get("mesh"), results.get("memory")
    panels = [p for p in ("latency", "memory", "cpu") if p != "memory" or memory]
    if not mesh:
        panels = [p for p in panels if p == "memory"]
    if not panels:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), dpi=90)
    axes = [axes] if len(panels) == 1 else list(axes)
    for axis, panel in zip(axes, panels):
        {"latency": _latency, "memory": _memory, "cpu": _cpu}[panel](axis, results)
    when = results.get("when", "")[:10]
    figure.suptitle(f"ebmesh benchmark, {when}, {results['machine']['cpus']} CPUs", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def _short(key: str) -> str:
    return {
        "none": "no mesh",
        "bare": "empty\nhooks",
        "ebmesh": "ebmesh",
        "accel": "ebmesh\naccel",
        "vip": "ebmesh\nVIP",
        "haproxy": "HAProxy\npair",
        "nginx": "nginx\npair",
    }[key]


def _latency(axis, results: dict) -> None:
    configs = results["mesh"]["configs"]
    keys = list(configs)
    positions = range(len(keys))
    width = 0.2
    series = [
        ("tcp_64", "p50_us", "TCP 64 B p50", "#1f77b4", ""),
        ("tcp_64", "p99_us", "TCP 64 B p99", "#aec7e8", ""),
        ("udp_64", "p50_us", "UDP 64 B p50", "#ff7f0e", ""),
        ("udp_64", "p99_us", "UDP 64 B p99", "#ffbb78", ""),
    ]
    for index, (kind, stat, label, color, _) in enumerate(series):
        values = [
            (configs[k]["latency"][kind] or {}).get(stat, 0) if configs[k]["latency"][kind] else 0
            for k in keys
        ]
        axis.bar(
            [p + (index - 1.5) * width for p in positions],
            values,
            width,
            label=label,
            color=color,
        )
    axis.set_xticks(list(positions), [_short(k) for k in keys], fontsize=7)
    axis.set_ylabel("round-trip time, us (log)")
    axis.set_yscale("log")
    axis.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    axis.yaxis.set_minor_formatter(NullFormatter())
    axis.set_yticks([10, 20, 50, 100, 200, 500])
    axis.set_title("Loopback ping-pong (sockperf)", fontsize=9)
    axis.legend(fontsize=6, loc="upper left")


def _memory(axis, results: dict) -> None:
    rows = results["memory"]["comparison"]["rows"]
    counts = [row["workloads"] for row in rows.values()]
    axis.plot(
        counts,
        [row["ebmesh_bytes"] / 2**20 for row in rows.values()],
        marker="o",
        label="ebmesh (maps + programs + agent)",
    )
    for proxy in ("haproxy", "nginx"):
        key = f"{proxy}_bytes"
        if all(key in row for row in rows.values()):
            axis.plot(
                counts,
                [row[key] / 2**20 for row in rows.values()],
                marker="s",
                label=f"{mesh_part.LABELS[proxy].split(' sidecar')[0]} per workload",
            )
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("local workloads (log)")
    axis.set_ylabel("MiB (log)")
    axis.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    axis.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_title("Memory by workload count", fontsize=9)
    axis.legend(fontsize=6)


def _cpu(axis, results: dict) -> None:
    configs = results["mesh"]["configs"]
    keys = list(configs)
    axis.bar(
        range(len(keys)),
        [configs[k]["cpu_s_per_100k_requests"] for k in keys],
        color="#2ca02c",
    )
    axis.set_xticks(range(len(keys)), [_short(k) for k in keys], fontsize=7)
    axis.set_ylabel("CPU seconds per 100k request/replies")
    axis.set_title("CPU per request (TCP 64 B)", fontsize=9)
