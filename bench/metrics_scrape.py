"""How long a Prometheus scrape of an attachment takes, with many rules attached.

    sudo .venv/bin/python bench/metrics_scrape.py                 # 10,000 rules, 50 scrapes
    sudo .venv/bin/python bench/metrics_scrape.py --rules 100000
    sudo .venv/bin/python bench/metrics_scrape.py --used 10000   # every rule has decided flows

bench/policy_gen.py's policy of that many rules is attached to a throwaway
cgroup, `Attachment.serve_metrics()` started, and /metrics fetched over HTTP
(urllib) again and again; the last body is parsed with prometheus_client's
parser to check it has one ebmesh_verdicts_total sample per rule in use. A
rule's series appears with its first flow (ebmesh/runtime/metrics.py): real
connections hit a few rules (the measured rule and the default), and
`--used N` writes a count into the first N rules' counters (each CPU's slot)
to measure a scrape where N rules have decided flows. Prints the scrape
times (median, 95th percentile, max) in milliseconds. The goal (issue 11):
under 50 ms with 10,000 rules.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import policy_gen  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import ebmesh  # noqa: E402
from tests.support import throwaway_cgroup  # noqa: E402

PREFIX = "ebmesh-bench-"
GOAL_MS = 50.0


def use_rules(attachment, count: int) -> None:
    """As if each of the first `count` rules had decided one flow on every CPU."""
    counters = attachment._bpf.maps["rule_counters"]
    cpus = len(counters.lookup_percpu(bytes(4)))
    one = (1).to_bytes(8, "little") + bytes(8)
    for rule_id in range(1, count + 1):
        counters.update_percpu(rule_id.to_bytes(4, "little"), [one] * cpus)


def connect_some(root: Path, count: int) -> None:
    """Real connections from the client cgroup: to the measured rule's port, and denied."""
    import os
    import subprocess

    script = (
        "import socket\n"
        f"for i in range({count}):\n"
        "    s = socket.socket()\n"
        "    s.settimeout(0.2)\n"
        "    try: s.connect(('10.250.0.2', (8080, 7)[i % 2]))\n"
        "    except OSError: pass\n"
        "    s.close()\n"
    )
    subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        preexec_fn=lambda: (root / "client" / "cgroup.procs").write_text(str(os.getpid())),
    )


def run(rules: int, scrapes: int, used: int) -> dict:
    generated = policy_gen.generate(rules, "10.250.0.1", "10.250.0.2")
    started = time.perf_counter()
    compiled = ebmesh.compile(generated.text)
    compile_seconds = time.perf_counter() - started
    with throwaway_cgroup(("client", "server"), prefix=PREFIX) as root:
        with compiled.attach(root) as attachment:
            connect_some(root, 20)
            if used:
                use_rules(attachment, min(used, compiled.image.rule_count))
            host, port = attachment.serve_metrics("127.0.0.1", 0)
            url = f"http://{host}:{port}/metrics"
            times, samples = [], 0
            for _ in range(scrapes):
                begun = time.perf_counter()
                body = urllib.request.urlopen(url, timeout=10).read()
                times.append((time.perf_counter() - begun) * 1000)
            for family in text_string_to_metric_families(body.decode()):
                if family.name == "ebmesh_verdicts":
                    samples = sum(1 for s in family.samples if s.name == "ebmesh_verdicts_total")
    times.sort()
    return {
        "rules": compiled.image.rule_count,
        "rules_used_asked": used,
        "compile_seconds": round(compile_seconds, 2),
        "scrapes": scrapes,
        "body_bytes": len(body),
        "verdict_samples": samples,
        "scrape_ms": {
            "median": round(statistics.median(times), 2),
            "p95": round(times[int(len(times) * 0.95) - 1], 2),
            "max": round(times[-1], 2),
        },
        "goal_ms": GOAL_MS,
        "met": times[int(len(times) * 0.95) - 1] < GOAL_MS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=10_000)
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--used", type=int, default=0, help="rules with decided flows")
    args = parser.parse_args()
    result = run(args.rules, args.scrapes, args.used)
    print(json.dumps(result, indent=1))
    sys.exit(0 if result["met"] and result["verdict_samples"] >= min(args.used, 1) else 1)


if __name__ == "__main__":
    main()
