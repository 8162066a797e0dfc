"""Can `ebmesh events -o json --follow` keep up? Connections at a steady rate, readers counting.

    sudo .venv/bin/python bench/events_rate.py                   # 20,000/s for 10 s, 1 reader
    sudo .venv/bin/python bench/events_rate.py --rate 20000 --seconds 10 --readers 2
    sudo .venv/bin/python bench/events_rate.py --holder owner    # the hub in the holding process

A policy is attached to a throwaway cgroup, and `ebmesh events -o json
--follow` readers started. bench/connect_rate.c, in the cgroup, connects at
the rate asked: half to an allowed loopback port nothing listens on
(ECONNREFUSED), half to a denied one (EPERM): every connect is one verdict
event. Each reader's JSON lines are counted once the load is over. The
attachment is pinned and let go (`--holder pinned`: the first reader becomes
the hub, over the pinned ring) or held by this process serving its events
(`--holder owner`). Prints connections/s, events each reader received, and
the events lost (the datapath's counter, and the readers' `{"lost": N}`).
The goal (issue 11): 20,000 connections/s with 0 lost and every event read.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import ebmesh  # noqa: E402
from ebmesh.runtime import event_hub, registry  # noqa: E402
from ebmesh.runtime.status import detach_cgroup  # noqa: E402
from tests.support import throwaway_cgroup  # noqa: E402

PREFIX = "ebmesh-bench-"
ALLOWED, DENIED = 7411, 7412  # loopback ports nothing listens on

POLICY = f"""\
mesh eventsbench {{
    workload client {{ cgroup "client" }}
    allow client -> 127.0.0.1 port {ALLOWED}
}}
"""


def build(workdir: Path) -> Path:
    binary = workdir / "connect_rate"
    subprocess.run(
        ["clang", "-O2", "-Wall", "-o", str(binary), str(REPO / "bench" / "connect_rate.c")],
        check=True,
    )
    return binary


def join(cgroup: Path):
    def prepare():
        (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    return prepare


def start_reader(cgroup: Path, output: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ebmesh", "events", "--cgroup", str(cgroup), "-o", "json", "-f"],
        stdout=output.open("wb"),
        stderr=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def count(output: Path) -> tuple[int, int]:
    events = lost = 0
    with output.open() as lines:
        for line in lines:
            record = json.loads(line)
            if "lost" in record:
                lost += record["lost"]
            else:
                events += 1
    return events, lost


def run(rate: float, seconds: float, readers: int, holder: str) -> dict:
    with (
        tempfile.TemporaryDirectory(prefix="ebmesh-events-bench-") as work,
        throwaway_cgroup(("client",), prefix=PREFIX) as root,
    ):
        work = Path(work)
        connect_rate = build(work)
        compiled = ebmesh.compile(POLICY)
        attachment = compiled.attach(root, pin=holder == "pinned")
        try:
            record = registry.on_cgroup(root)
            if holder == "pinned":
                attachment.close()  # pinned, no process holds it: the first reader is the hub
            else:
                attachment.serve_events()
            outputs = [work / f"reader{i}.jsonl" for i in range(readers)]
            started = [start_reader(root, output) for output in outputs]
            socket = event_hub.socket_path(record.mesh, record.cgroup_id)
            deadline = time.monotonic() + 20
            while not socket.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.5)  # every reader connected
            lost_before = _lost(attachment, record, holder)
            generators = [
                subprocess.Popen(
                    [str(connect_rate), str(rate / 2), str(seconds), f"127.0.0.1:{port}"],
                    stdout=subprocess.PIPE,
                    text=True,
                    preexec_fn=join(root / "client"),
                )
                for port in (ALLOWED, DENIED)
            ]
            results = [json.loads(g.communicate(timeout=seconds + 60)[0]) for g in generators]
            connections = sum(r["count"] for r in results)
            wall = max(r["seconds"] for r in results)
            # the readers catch up (or not) before they are stopped
            settle = time.monotonic() + 30
            while time.monotonic() < settle:
                if all(count(o)[0] >= connections for o in outputs):
                    break
                time.sleep(0.5)
            lost_after = _lost(attachment, record, holder)
            for reader in started:
                reader.send_signal(signal.SIGINT)
            for reader in started:
                reader.wait(10)
            received = [count(o) for o in outputs]
            return {
                "rate_asked": rate,
                "connections": connections,
                "connections_per_second": round(connections / wall),
                "errnos": [r["errnos"] for r in results],
                "holder": holder,
                "readers": [{"events": e, "lost_records": lost} for e, lost in received],
                "datapath_lost": lost_after - lost_before,
                "every_event_read": all(e == connections for e, _ in received),
            }
        finally:
            if holder == "pinned":
                detach_cgroup(root)
            else:
                attachment.detach()


def _lost(attachment, record, holder: str) -> int:
    if holder == "owner":
        return attachment.lost_events()
    _, lost = event_hub._pinned_ring(record)
    return lost()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20_000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--readers", type=int, default=1)
    parser.add_argument("--holder", choices=("pinned", "owner"), default="pinned")
    args = parser.parse_args()
    result = run(args.rate, args.seconds, args.readers, args.holder)
    print(json.dumps(result, indent=1))
    sys.exit(0 if result["every_event_read"] and not result["datapath_lost"] else 1)


if __name__ == "__main__":
    main()
