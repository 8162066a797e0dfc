"""The load generators: sockperf (ping-pong latency), iperf3 (throughput) and rr
(bench/rr.c: connection rate and the datapath-cost traffic), run in cgroups and
read back into numbers."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from processes import Launcher, Started, require_tool

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PERCENTILE = re.compile(r"---> percentile\s+([0-9.]+)\s*=\s*([0-9.]+)")
_EXTREME = re.compile(r"---> <(MAX|MIN)> observation\s*=\s*([0-9.]+)")
_VALID = re.compile(
    r"\[Valid Duration\] RunTime=([0-9.]+) sec; SentMessages=(\d+); ReceivedMessages=(\d+)"
)
_TOTAL = re.compile(
    r"\[Total Run\] RunTime=([0-9.]+) sec;.*SentMessages=(\d+); ReceivedMessages=(\d+)"
)


# ---- rr --------------------------------------------------------------------------------------


def build_rr(workdir: Path) -> Path:
    """Compile bench/rr.c into the run's directory (clang, which ebmesh needs anyway)."""
    source = Path(__file__).resolve().parent / "rr.c"
    binary = workdir / "rr"
    subprocess.run(
        ["clang", "-O2", "-Wall", "-o", str(binary), str(source)],
        check=True,
        capture_output=True,
        text=True,
    )
    return binary


def rr_server(
    launcher: Launcher,
    rr: Path,
    name: str,
    cgroup: Path,
    protocol: str,
    endpoints,
) -> Started:
    return launcher.start(
        name,
        [str(rr), f"serve-{protocol}", *(f"{a}:{p}" for a, p in endpoints)],
        cgroup,
        ready="ready",
    )


def rr_client(
    launcher: Launcher,
    rr: Path,
    cgroup: Path,
    mode: str,
    amount: float,
    target: tuple[str, int],
    source: str,
) -> dict:
    """One rr client run: {"count", "succeeded", "errnos", "seconds"}."""
    seconds = amount if mode == "tcp-for" else 60
    output = launcher.run(
        f"rr-{mode}",
        [str(rr), mode, str(amount), f"{target[0]}:{target[1]}", source],
        cgroup,
        timeout=seconds + 30,
    )
    return json.loads(output.strip().splitlines()[-1])


# ---- sockperf ---------------------------------------------------------------------------------


def sockperf_server(
    launcher: Launcher, name: str, cgroup: Path, address: str, port: int, protocol: str
) -> Started:
    command = [require_tool("sockperf"), "server", "-i", address, "-p", str(port)]
    if protocol == "tcp":
        command.append("--tcp")
    return launcher.start(name, command, cgroup, ready_port=(address, port, protocol))


def sockperf_ping_pong(
    launcher: Launcher,
    cgroup: Path,
    target: tuple[str, int],
    source: str,
    protocol: str,
    message_bytes: int,
    seconds: int,
) -> dict:
    """Round-trip latency percentiles in microseconds (--full-rtt), and message counts."""
    command = [
        require_tool("sockperf"),
        "ping-pong",
        "-i",
        target[0],
        "-p",
        str(target[1]),
        "-m",
        str(message_bytes),
        "-t",
        str(seconds),
        "--full-rtt",
        "--client_ip",
        source,
    ]
    if protocol == "tcp":
        command.append("--tcp")
    output = _ANSI.sub("", launcher.run("sockperf-client", command, cgroup, timeout=seconds + 30))
    return parse_sockperf(output)


def parse_sockperf(output: str) -> dict:
    percentiles = {float(p): float(v) for p, v in _PERCENTILE.findall(output)}
    extremes = dict(_EXTREME.findall(output))
    valid, total = _VALID.search(output), _TOTAL.search(output)
    if not percentiles or valid is None or total is None:
        raise RuntimeError(f"cannot read sockperf's output: {output[-1500:]}")
    return {
        "p50_us": percentiles[50.0],
        "p99_us": percentiles[99.0],
        "p99_9_us": percentiles[99.9],
        "min_us": float(extremes.get("MIN", 0.0)),
        "max_us": float(extremes.get("MAX", 0.0)),
        "valid_seconds": float(valid.group(1)),
        "valid_replies": int(valid.group(3)),
        "total_seconds": float(total.group(1)),
        "total_sent": int(total.group(2)),
        "total_replies": int(total.group(3)),
    }


# ---- iperf3 ------------------------------------------------------------------------------------


def iperf3_server(launcher: Launcher, name: str, cgroup: Path, address: str, port: int) -> Started:
    return launcher.start(
        name,
        [require_tool("iperf3"), "--server", "--bind", address, "--port", str(port)],
        cgroup,
        ready_port=(address, port, "tcp"),
    )


def iperf3_client(
    launcher: Launcher, cgroup: Path, target: tuple[str, int], source: str, seconds: int
) -> dict:
    """One TCP stream for `seconds` (whole seconds: iperf3 takes no fraction): bits per
    second received."""
    output = launcher.run(
        "iperf3-client",
        [
            require_tool("iperf3"),
            "--client",
            target[0],
            "--port",
            str(target[1]),
            "--bind",
            source,
            "--time",
            str(seconds),
            "--json",
        ],
        cgroup,
        timeout=seconds + 30,
    )
    result = json.loads(output)
    if "error" in result:
        raise RuntimeError(f"iperf3: {result['error']}")
    received = result["end"]["sum_received"]
    return {
        "gbit_per_s": received["bits_per_second"] / 1e9,
        "bytes": received["bytes"],
        "seconds": received["seconds"],
    }
