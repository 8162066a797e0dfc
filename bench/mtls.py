#!/usr/bin/env python3
"""mTLS benchmark: the userspace half (ebmesh/mtls). See bench/README.md, "mTLS".

    sudo .venv/bin/python bench/mtls.py            # everything (about a minute)
    .venv/bin/python bench/mtls.py --quick         # fewer rounds
    .venv/bin/python bench/mtls.py --parts handshakes,preauth   # no root needed for these

Parts:
  handshakes  handshakes per second, one client after the other: a local pair (both
              halves in this process, in memory) and a remote pair over
              loopback (the listener in another process)
  preauth     Authenticator.start() for 30 local workloads and all 435 pairs
  attach      compile+attach of a 30-workload policy, without mtls rules, and with
              them plus the authenticator's start (the 2 s goal is on the difference)
  ondemand    from request() to the pair granted, across two network namespaces
              joined by a veth pair (goal: < 50 ms)

Prints a table and writes bench/results/mtls.json. The machine is shared and
has 2 CPUs: medians of several rounds are reported with their spread.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import ebmesh  # noqa: E402
from ebmesh.datapath.parties import Workload  # noqa: E402
from ebmesh.mtls import Authenticator, IdentityStore, Outcome  # noqa: E402
from tests.support import throwaway_cgroup, throwaway_netns, veth_pair  # noqa: E402
from tests.support.authenticator_process import (  # noqa: E402
    AuthenticatorProcess,
    workload_config,
)

TRUST_DOMAIN = "bench.example"
PREFIX = "ebmesh-bench-"
WORKLOADS = 30
GOALS = {"ondemand_ms": 50.0, "attach_extra_s": 2.0}


def _spiffe(name: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/{name}"


def _workload(identity: int, name: str, local: bool = True, addresses=()) -> Workload:
    import ipaddress

    return Workload(
        identity=identity,
        name=name,
        cgroup=name if local else None,
        prefixes=tuple(ipaddress.ip_network(a) for a in addresses),
        spiffe_id=_spiffe(name),
        mtls_required=False,
    )


def _summary(values: list[float]) -> dict:
    ordered = sorted(values)
    median = statistics.median(ordered)
    return {
        "median": median,
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "min": ordered[0],
        "max": ordered[-1],
        "spread": (ordered[-1] - ordered[0]) / median if median else 0.0,
        "n": len(ordered),
    }


def _store(directory: Path) -> IdentityStore:
    return IdentityStore.create(directory, TRUST_DOMAIN)


def bench_handshakes(work: Path, count: int, rounds: int) -> dict:
    store = _store(work / "hs")
    local = Authenticator(store, [_workload(1, "a"), _workload(2, "b")], [(1, 2)], listen=[])
    local.start()
    try:
        local_rates = []
        for _ in range(rounds):
            began = time.perf_counter()
            for _ in range(count):
                assert local.authenticate(1, 2).outcome is Outcome.AUTHENTICATED
            local_rates.append(count / (time.perf_counter() - began))
    finally:
        local.stop()
    listener_config = {
        "directory": str(store.directory),
        "workloads": [
            workload_config(1, "a", _spiffe("a"), False),
            workload_config(2, "b", _spiffe("b"), True),
        ],
        "pairs": [[1, 2]],
        "listen": ["127.0.0.1"],
        "port": 0,
    }
    with AuthenticatorProcess(listener_config) as listener:
        client = Authenticator(
            store,
            [_workload(1, "a"), _workload(2, "b", local=False)],
            [(1, 2)],
            listen=[],
            peer_port=listener.started["port"],
        )
        client.start()
        try:
            remote_rates = []
            for _ in range(rounds):
                began = time.perf_counter()
                for _ in range(count):
                    event = client.authenticate(1, 2, "127.0.0.1")
                    assert event.outcome is Outcome.AUTHENTICATED, event
                remote_rates.append(count / (time.perf_counter() - began))
        finally:
            client.stop()
    return {"local_per_s": _summary(local_rates), "remote_loopback_per_s": _summary(remote_rates)}


def _mesh(workloads: int) -> tuple[list[Workload], list[tuple[int, int]]]:
    chosen = [_workload(i + 1, f"w{i}") for i in range(workloads)]
    pairs = [(a.identity, b.identity) for a in chosen for b in chosen if a.identity < b.identity]
    return chosen, pairs


def bench_preauth(work: Path, rounds: int) -> dict:
    workloads, pairs = _mesh(WORKLOADS)
    store = _store(work / "pre")
    first = Authenticator(store, workloads, pairs, listen=[])
    report = first.start()  # issues the 30 SVIDs
    first.stop()
    assert report.authenticated == len(pairs) == 435, report
    first_seconds = report.seconds
    seconds = []
    for _ in range(rounds):
        authenticator = Authenticator(IdentityStore(store.directory), workloads, pairs, listen=[])
        began = time.perf_counter()
        report = authenticator.start()
        seconds.append(time.perf_counter() - began)
        authenticator.stop()
        assert report.authenticated == len(pairs), report
    both = pairs + [(d, s) for s, d in pairs]  # every direction: still one handshake a pair
    both_seconds = []
    for _ in range(rounds):
        authenticator = Authenticator(IdentityStore(store.directory), workloads, both, listen=[])
        began = time.perf_counter()
        report = authenticator.start()
        both_seconds.append(time.perf_counter() - began)
        authenticator.stop()
        assert report.authenticated == len(both), report
    return {
        "pairs": len(pairs),
        "first_start_s": first_seconds,
        "start_s": _summary(seconds),
        "both_directions_start_s": _summary(both_seconds),
    }


def _policy(mtls: bool) -> str:
    lines = ["mesh bench {", f'    trust_domain "{TRUST_DOMAIN}"']
    lines += [f'    workload w{i} {{ cgroup "w{i}" }}' for i in range(WORKLOADS)]
    flag = " mtls" if mtls else ""
    lines += [
        f"    allow w{i} -> w{j} port 8080/tcp{flag}"
        for i in range(WORKLOADS)
        for j in range(i + 1, WORKLOADS)
    ]
    return "\n".join([*lines, "}", ""])


def bench_attach(work: Path, rounds: int) -> dict:
    children = tuple(f"w{i}" for i in range(WORKLOADS))
    workloads, pairs = _mesh(WORKLOADS)
    store = _store(work / "attach")
    Authenticator(store, workloads, pairs, listen=[]).start()  # issue the SVIDs once
    ebmesh.compile(_policy(False)), ebmesh.compile(_policy(True))  # warm the object cache
    plain, with_mtls = [], []
    with throwaway_cgroup(children, prefix=PREFIX) as cgroup:
        for _ in range(rounds):
            began = time.perf_counter()
            with ebmesh.compile(_policy(False)).attach(cgroup, events="none"):
                plain.append(time.perf_counter() - began)
            began = time.perf_counter()
            with ebmesh.compile(_policy(True)).attach(cgroup, events="none"):
                authenticator = Authenticator(
                    IdentityStore(store.directory), workloads, pairs, listen=[]
                )
                report = authenticator.start()
                with_mtls.append(time.perf_counter() - began)
                authenticator.stop()
            assert report.authenticated == len(pairs), report
    extra = [m - p for m, p in zip(with_mtls, plain)]
    return {
        "without_mtls_s": _summary(plain),
        "with_mtls_s": _summary(with_mtls),
        "extra_s": _summary(extra),
        "note": "with mtls = attach of the same policy with mtls rules + Authenticator.start()",
    }


def bench_ondemand(work: Path, count: int) -> dict:
    store = _store(work / "a")
    b = work / "b"
    (b / "svid").mkdir(parents=True)
    shutil.copy(store.directory / "bundle.pem", b / "bundle.pem")
    store.issue("api", _spiffe("api"))
    for suffix in (".pem", ".key"):
        shutil.move(store.directory / "svid" / f"api{suffix}", b / "svid" / f"api{suffix}")
    host_a, host_b = "10.231.0.1", "10.231.0.2"
    config_a = {
        "directory": str(store.directory),
        "workloads": [
            workload_config(1, "frontend", _spiffe("frontend"), True),
            workload_config(2, "api", _spiffe("api"), False),
        ],
        "pairs": [[1, 2]],
        "listen": [host_a],
    }
    config_b = {
        "directory": str(b),
        "workloads": [
            workload_config(1, "frontend", _spiffe("frontend"), False),
            workload_config(2, "api", _spiffe("api"), True),
        ],
        "pairs": [[1, 2]],
        "listen": [host_b],
    }
    with throwaway_netns(prefix=PREFIX) as ns_a, throwaway_netns(prefix=PREFIX) as ns_b:
        with veth_pair(ns_a, f"{host_a}/24", ns_b, f"{host_b}/24"):
            with AuthenticatorProcess(config_b, ns_b), AuthenticatorProcess(config_a, ns_a) as a:
                first = a.authenticate(1, 2, host_b)
                assert first["event"]["outcome"] == "authenticated", first
                times = []
                for _ in range(count):
                    answer = a.authenticate(1, 2, host_b)
                    assert answer["event"]["outcome"] == "authenticated", answer
                    times.append(answer["seconds"] * 1000)
    return {"first_ms": first["seconds"] * 1000, "ms": _summary(times)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--parts", default="handshakes,preauth,attach,ondemand")
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"handshakes", "preauth", "attach", "ondemand"}
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if parts & {"attach", "ondemand"} and os.geteuid() != 0:
        parser.error("the attach and ondemand parts need root")
    rounds = 3 if args.quick else 7
    results = {"cpus": os.cpu_count(), "load": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="ebmesh-bench-mtls-") as directory:
        work = Path(directory)
        if "handshakes" in parts:
            results["handshakes"] = bench_handshakes(work, 100 if args.quick else 300, rounds)
        if "preauth" in parts:
            results["preauth"] = bench_preauth(work, rounds)
        if "attach" in parts:
            results["attach"] = bench_attach(work, rounds)
        if "ondemand" in parts:
            results["ondemand"] = bench_ondemand(work, 50 if args.quick else 200)
    _print(results)
    out = HERE / "results" / "mtls.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")
    return 0


def _print(results: dict) -> None:
    print(f"mTLS benchmark ({results['cpus']} CPUs, load {results['load'][0]:.2f})")
    if "handshakes" in results:
        local = results["handshakes"]["local_per_s"]
        remote = results["handshakes"]["remote_loopback_per_s"]
        print(
            f"  handshakes/s, one client: local pair {local['median']:.0f} "
            f"(spread {local['spread']:.0%}), remote over loopback {remote['median']:.0f} "
            f"(spread {remote['spread']:.0%})"
        )
    if "preauth" in results:
        pre = results["preauth"]
        print(
            f"  pre-authentication of {pre['pairs']} pairs (30 workloads): start() "
            f"{pre['start_s']['median']:.2f} s median (min {pre['start_s']['min']:.2f}, "
            f"max {pre['start_s']['max']:.2f}); first start, issuing the SVIDs: "
            f"{pre['first_start_s']:.2f} s; all {2 * pre['pairs']} directed pairs: "
            f"{pre['both_directions_start_s']['median']:.2f} s"
        )
    if "attach" in results:
        attach = results["attach"]
        extra = attach["extra_s"]["median"]
        print(
            f"  compile+attach, 30 workloads, 435 rules: {attach['without_mtls_s']['median']:.2f} s "
            f"without mtls, {attach['with_mtls_s']['median']:.2f} s with mtls and the "
            f"authenticator: +{extra:.2f} s (goal <= {GOALS['attach_extra_s']:.0f} s: "
            f"{'met' if extra <= GOALS['attach_extra_s'] else 'MISSED'})"
        )
    if "ondemand" in results:
        ondemand = results["ondemand"]
        median = ondemand["ms"]["median"]
        print(
            f"  on demand across namespaces, request to grant: first {ondemand['first_ms']:.1f} ms, "
            f"then median {median:.1f} ms, p95 {ondemand['ms']['p95']:.1f} ms, max "
            f"{ondemand['ms']['max']:.1f} ms (goal < {GOALS['ondemand_ms']:.0f} ms: "
            f"{'met' if ondemand['ms']['p95'] < GOALS['ondemand_ms'] else 'MISSED'})"
        )


if __name__ == "__main__":
    sys.exit(main())
