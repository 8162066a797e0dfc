"""The benchmark suite (bench/run.py) in --quick mode, one small configuration of
each part: it runs to the end, its JSON has every figure the README explains, its
chart is a PNG, and nothing it made is left behind; interrupted, it cleans up too."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ebmesh.runtime.cgroups import cgroup2_mount

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]
SMALL = [
    "--quick",
    "--connects", "300",
    "--warmup", "50",
    "--sizes", "10",
    "--lb-backends", "1",
    "--lb-services", "0",
    "--memory-workloads", "1",
    "--cost-sizes", "10",
]  # fmt: skip
MESH_CONFIGS = ("none", "bare", "ebmesh", "accel", "vip", "haproxy", "nginx")
COST_KINDS = ("tcp_direct", "tcp_vip", "udp_one", "udp_new")
MAX_TW_BUCKETS = Path("/proc/sys/net/ipv4/tcp_max_tw_buckets")


def _left_behind(run_id: str) -> list[str]:
    mine = f"ebmesh-bench-{run_id}-"
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [str(p) for p in cgroup2_mount().glob(f"{mine}*")] + [
        line.split()[0] for line in namespaces.splitlines() if line.startswith(mine)
    ]


def _run_id(output: str) -> str:
    for line in output.splitlines():
        if line.startswith("ebmesh benchmark, run "):
            return line.split()[3].rstrip(":")
    raise AssertionError(f"no run id in the output:\n{output[:2000]}")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, root_required):
    output = tmp_path_factory.mktemp("bench") / "latest.json"
    done = subprocess.run(
        [sys.executable, "bench/run.py", *SMALL, "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return json.loads(output.read_text()), output, done.stdout


@pytest.fixture(scope="module")
def root_required():
    import os

    if os.geteuid() != 0:
        pytest.fail("the benchmark smoke test needs root (run `make test` as root)")


def test_every_part_is_in_the_json(quick_run):
    results, _, _ = quick_run
    for part in ("sizes", "balancing", "mesh", "memory", "cost", "must_reach", "machine"):
        assert part in results, part
    assert results["sizes"]["10"]["datapath"]["ns_per_connection"] > 0
    assert results["balancing"]["configs"]["1"]["bpf"]["vip"]["ns_per_connection"] > 0


def test_the_mesh_part_has_every_figure_of_every_configuration(quick_run):
    mesh = quick_run[0]["mesh"]["configs"]
    assert tuple(mesh) == MESH_CONFIGS
    for key, entry in mesh.items():
        for kind in ("tcp_64", "tcp_16k", "udp_64"):
            figure = entry["latency"][kind]
            if key == "haproxy" and kind == "udp_64":
                assert figure is None  # HAProxy proxies no UDP
                continue
            assert 0 < figure["p50_us"] <= figure["p99_us"] <= figure["p99_9_us"], (key, kind)
        assert entry["throughput_gbit_s"] > 0
        assert entry["connections_per_s"] > 0
        assert entry["cpu_s_per_100k_requests"] > 0
        if key in ("haproxy", "nginx"):
            assert entry["proxies"]["rss_bytes_one_proxy"] > 1 << 20
        else:
            assert entry["proxies"] is None
        assert "shortcut_counters" in entry  # None where the datapath has no shortcut


def test_memory_compares_ebmesh_with_both_proxies(quick_run):
    memory = quick_run[0]["memory"]
    record = memory["ebmesh"]["1"]
    assert record["maps"] > 0 and record["programs"] > 0
    assert record["maps_memlock_bytes"] > 0 and record["programs_memlock_bytes"] > 0
    assert record["agent_rss_bytes"] > 1 << 20
    assert record["total_bytes"] == (
        record["maps_memlock_bytes"] + record["programs_memlock_bytes"] + record["agent_rss_bytes"]
    )
    row = memory["comparison"]["rows"]["1"]
    assert row["haproxy_bytes"] > 0 and row["nginx_bytes"] > 0


def test_cost_has_every_kind_with_and_over_the_bare_hooks(quick_run):
    cost = quick_run[0]["cost"]
    assert set(cost["configs"]) == {"10/denied", "10/all"}
    bare = cost["bare_hooks"]
    # The control has an empty program on exactly the cgroup hooks ebmesh attached.
    attached = set(cost["configs"]["10/denied"]["hooks"].values()) - {"not at a cgroup hook"}
    assert attached and set(bare["hooks"].values()) == attached
    for kind in COST_KINDS:
        assert bare["kinds"][kind]["ns_per_operation"] > 0
    for entry in cost["configs"].values():
        for kind in COST_KINDS:
            figures = entry["kinds"][kind]
            assert figures["ns_per_operation"] > 0
            assert "over_bare_ns_per_operation" in figures
            ran = [p for p in figures["programs"].values() if p["runs_per_operation"]]
            assert ran, kind
            for program in ran:
                assert program["ns_per_run"] > 0 and program["over_bare_ns_per_run"] is not None
    assert cost["settings"]["bpf_stats_ns_per_run"] == 55


def test_every_target_is_evaluated(quick_run):
    checks = quick_run[0]["must_reach"]
    assert len([c for c in checks if c["issue"] == 10]) == 7
    assert len([c for c in checks if c["issue"] == 8]) == 8
    for check in checks:
        if check["target"].startswith("every figure"):
            assert check["value"] is None  # one size only: nothing to compare
            continue
        assert check["value"] is not None, check
        assert check["met"] in (True, False), check


def test_the_terminal_shows_the_tables_and_the_chart_is_a_png(quick_run):
    _, output, stdout = quick_run
    for heading in (
        "ebmesh against no mesh and sidecars",
        "Memory:",
        "Datapath cost",
        "Must reach",
    ):
        assert heading in stdout
    assert "flatters the sidecars" in stdout
    chart = output.with_suffix(".png")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nothing_is_left_behind(quick_run):
    results, _, stdout = quick_run
    assert _left_behind(_run_id(stdout)) == []
    # TIME_WAIT was off for the run (bench/time_wait.py) and is back as it was.
    restored = results["machine"]["tcp_max_tw_buckets_outside_the_run"]
    assert restored > 0
    assert int(MAX_TW_BUCKETS.read_text()) == restored


def test_an_interrupted_run_removes_its_processes_and_cgroups(root_required, tmp_path):
    time_wait_buckets = int(MAX_TW_BUCKETS.read_text())
    run = subprocess.Popen(
        [sys.executable, "bench/run.py", "--quick", "--parts", "mesh",
         "--mesh-configs", "ebmesh,haproxy,nginx", "--output", str(tmp_path / "x.json")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = run.stdout.readline()
        lines.append(line)
        if "nginx stream sidecar pair ready" in line or not line:
            break
    run_id = _run_id("".join(lines))
    assert _left_behind(run_id), "the run should have its cgroups by now"
    assert MAX_TW_BUCKETS.read_text().strip() == "0", "TIME_WAIT is off during a run"
    run.send_signal(signal.SIGINT)
    rest, _ = run.communicate(timeout=30)
    assert run.returncode == 130, "".join(lines) + rest
    assert _left_behind(run_id) == []
    assert int(MAX_TW_BUCKETS.read_text()) == time_wait_buckets
    assert not (tmp_path / "x.json").exists()
