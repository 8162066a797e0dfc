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
  crosshost   the same through the datapath: two hosts attach while their link is
              down; then an application's connect is refused (goal: < 10 ms), the
              hook's notice makes the authenticator handshake, and a retry passes
              (goal: < 50 ms after the refusal; an application retrying once after
              50 ms succeeds)
  cost        per-connection BPF time of one allow rule with and without mtls
              (goal: within 1.1x)

Prints a table and writes bench/results/mtls.json. The machine is shared and
has 2 CPUs: medians of several rounds are reported with their spread.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))  # loadgen and processes, as bench/run.py has them

import ebmesh  # noqa: E402
from ebmesh.datapath.parties import Workload  # noqa: E402
from ebmesh.mtls import Authenticator, IdentityStore, Outcome  # noqa: E402
from tests.support import (  # noqa: E402
    Agent,
    MeshHost,
    throwaway_cgroup,
    throwaway_netns,
    veth_pair,
)
from tests.support.authenticator_process import (  # noqa: E402
    AuthenticatorProcess,
    workload_config,
)
from tests.support.identity import second_host  # noqa: E402

TRUST_DOMAIN = "bench.example"
PREFIX = "ebmesh-bench-"
WORKLOADS = 30
GOALS = {"ondemand_ms": 50.0, "attach_extra_s": 2.0, "refusal_ms": 10.0, "cost_ratio": 1.1}
PARTS = ("handshakes", "preauth", "attach", "ondemand", "crosshost", "cost")


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
    """compile+attach of the same 30-workload policy, without and with `mtls` on all 435
    pairs, through the real Attachment: with mtls it starts the authenticator and
    pre-authenticates every local pair before its hooks enforce."""
    children = tuple(f"w{i}" for i in range(WORKLOADS))
    identity_dir = _store(work / "attach").directory
    plain_policy, mtls_policy = _policy(False), _policy(True)
    ebmesh.compile(plain_policy), ebmesh.compile(mtls_policy)  # warm the object cache
    plain, with_mtls, authenticated = [], [], 0
    with throwaway_cgroup(children, prefix=PREFIX) as cgroup:
        # the first attach with mtls issues the 30 SVIDs: not counted
        with ebmesh.compile(mtls_policy).attach(cgroup, events="none", identity_dir=identity_dir):
            pass
        for _ in range(rounds):
            began = time.perf_counter()
            with ebmesh.compile(plain_policy).attach(cgroup, events="none"):
                plain.append(time.perf_counter() - began)
            began = time.perf_counter()
            with ebmesh.compile(mtls_policy).attach(
                cgroup, events="none", identity_dir=identity_dir
            ) as attachment:
                with_mtls.append(time.perf_counter() - began)
                authenticated = len(attachment.authenticated())
    assert authenticated == 435, authenticated
    extra = [m - p for m, p in zip(with_mtls, plain)]
    return {
        "pairs": authenticated,
        "without_mtls_s": _summary(plain),
        "with_mtls_s": _summary(with_mtls),
        "extra_s": _summary(extra),
        "note": "compile (cached object) + Attachment, which with mtls pre-authenticates",
    }


CROSS_A, CROSS_B = "10.233.0.1", "10.233.0.130"


def _two_hosts_policy() -> str:
    # Each workload known by a subnet, not a host address: no host to dial at attach, so
    # nothing is pre-authenticated and the first connection is authenticated on demand.
    return f"""
mesh crosshost {{
    trust_domain "{TRUST_DOMAIN}"
    workload frontend {{ cgroup "frontend" address 10.233.0.0/25 }}
    workload api      {{ cgroup "api" address 10.233.0.128/25  mtls required }}
    allow frontend -> api port 8080/tcp
}}
"""


def bench_crosshost(work: Path, rounds: int) -> dict:
    """Two hosts (network namespaces joined by a veth pair), each attaching the policy in
    a process of its own. frontend's application on A connects to api on B, and retries
    after each refusal: every other round every 5 ms (to time when the pair passes), the
    others once after 50 ms (the goal's application). The whole path is the real one: the
    refusal at A's connect, the hook's notice, A's authenticator's handshake with B's,
    both kernels' maps; each round attaches afresh, so each starts unauthenticated."""
    store = _store(work / "cross-a")
    dir_b = second_host(store, work / "cross-b", "api", _spiffe("api"))
    policy = _two_hosts_policy()
    ebmesh.compile(policy)  # the object cache, for both hosts
    refusals, until_pass, retry_once = [], [], []
    with (
        throwaway_cgroup(("frontend",), prefix=PREFIX) as tree_a,
        throwaway_cgroup(("api",), prefix=PREFIX) as tree_b,
        throwaway_netns(prefix=PREFIX) as ns_a,
        throwaway_netns(prefix=PREFIX) as ns_b,
        veth_pair(ns_a, f"{CROSS_A}/24", ns_b, f"{CROSS_B}/24"),
        contextlib.ExitStack() as agents,
    ):
        frontend = Agent(tree_a / "frontend", ns_a, "frontend")
        agents.callback(frontend.stop)
        api = Agent(tree_b / "api", ns_b, "api")
        agents.callback(api.stop)
        api.listen("tcp", CROSS_B, 8080)
        for number in range(rounds):
            host_a, host_b = MeshHost(None, ns_a, "host-a"), MeshHost(None, ns_b, "host-b")
            try:
                host_b.attach(policy, tree_b, dir_b)
                host_a.attach(policy, tree_a, store.directory)
                assert host_a.authenticated() == [], host_a.authenticated()
                every = 0.005 if number % 2 == 0 else 0.050
                result = frontend.retry_connect(CROSS_B, 8080, retry_after=every, within=3.0)
                attempts = result["attempts"]
                assert result["ok"], result
                assert all(a["errno"] == errno.EPERM for a in attempts if not a["ok"]), attempts
                refusals += [a["seconds"] * 1000 for a in attempts if not a["ok"]]
                if every < 0.05:
                    until_pass.append(attempts[-1]["at"] * 1000)
                else:
                    retry_once.append(len(attempts) <= 2)
            finally:
                host_a.stop()
                host_b.stop()
    return {
        "refusal_ms": _summary(refusals),
        "first_refusal_to_pass_ms": _summary(until_pass),
        "retry_once_after_50ms_passed": f"{sum(retry_once)}/{len(retry_once)}",
    }


def bench_ondemand(work: Path, count: int) -> dict:
    store = _store(work / "a")
    b = second_host(store, work / "b", "api", _spiffe("api"))
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


def _cost_policy(octet: int, mtls: bool) -> str:
    return f"""
mesh cost{"mtls" if mtls else "plain"} {{
    trust_domain "{TRUST_DOMAIN}"
    workload client {{ cgroup "client" address 127.{octet}.1.1 }}
    workload server {{ cgroup "server" address 127.{octet}.2.1 }}
    allow client -> server port 8080/tcp{" mtls" if mtls else ""}
}}
"""


def bench_cost(work: Path, rounds: int, connections: int) -> dict:
    """Per-connection BPF time of one allow rule, and of the same rule with `mtls` (the
    pair authenticated at attach), side by side: two cgroup trees, rr's TCP connects from
    client to server in each, rounds alternating, bpf_stats on (each run's ~55 ns of
    bpf_stats is in both)."""
    import loadgen
    from processes import Launcher

    from ebmesh.loader import enable_run_time_stats

    identity_dir = _store(work / "cost").directory
    results = {"plain": [], "mtls": []}
    with contextlib.ExitStack() as stack:
        launcher = Launcher(stack, work)
        rr = loadgen.build_rr(work)
        setups = {}
        for kind, octet in (("plain", 60), ("mtls", 61)):
            root = stack.enter_context(throwaway_cgroup(("client", "server"), prefix=PREFIX))
            server = f"127.{octet}.2.1"
            loadgen.rr_server(
                launcher, rr, f"mtls-cost-{kind}", root / "server", "tcp", [(server, 8080)]
            )
            attachment = stack.enter_context(
                ebmesh.compile(_cost_policy(octet, kind == "mtls")).attach(
                    root, events="denied", identity_dir=identity_dir
                )
            )
            setups[kind] = (root, attachment, (server, 8080), f"127.{octet}.1.1")
        assert len(setups["mtls"][1].authenticated()) == 1, setups["mtls"][1].authenticated()
        with enable_run_time_stats():
            for number in range(rounds + 1):  # the first round warms up
                order = ("plain", "mtls") if number % 2 else ("mtls", "plain")
                for kind in order:
                    root, attachment, target, source = setups[kind]
                    before = attachment.program_stats()
                    outcome = loadgen.rr_client(
                        launcher, rr, root / "client", "tcp", connections, target, source
                    )
                    after = attachment.program_stats()
                    assert outcome["succeeded"] == connections, (kind, outcome)
                    spent = sum(after[n][0] - before[n][0] for n in after)
                    if number:
                        results[kind].append(spent / connections)
        denied = [e for e in setups["mtls"][1].poll_events(0.0) if e.verdict == "deny"]
        assert not denied, denied[:3]
    plain, mtls = statistics.median(results["plain"]), statistics.median(results["mtls"])
    return {
        "plain_ns_per_connection": _summary(results["plain"]),
        "mtls_ns_per_connection": _summary(results["mtls"]),
        "ratio": mtls / plain,
        "connections_per_round": connections,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--parts", default=",".join(PARTS))
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if parts - {"handshakes", "preauth"} and os.geteuid() != 0:
        parser.error("the attach, ondemand, crosshost and cost parts need root")
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
        if "crosshost" in parts:
            results["crosshost"] = bench_crosshost(work, 4 if args.quick else 8)
        if "cost" in parts:
            results["cost"] = bench_cost(work, rounds, 2000 if args.quick else 5000)
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
    if "crosshost" in results:
        cross = results["crosshost"]
        to_pass, refusal = cross["first_refusal_to_pass_ms"], cross["refusal_ms"]
        print(
            f"  across hosts through the datapath, the first refusal to a pass (retrying every "
            f"5 ms): median {to_pass['median']:.1f} ms, max {to_pass['max']:.1f} ms (goal < "
            f"{GOALS['ondemand_ms']:.0f} ms: "
            f"{'met' if to_pass['max'] < GOALS['ondemand_ms'] else 'MISSED'}); an application "
            f"retrying once after 50 ms passed {cross['retry_once_after_50ms_passed']}; "
            f"refusals took median {refusal['median']:.2f} ms, max {refusal['max']:.2f} ms "
            f"(goal < {GOALS['refusal_ms']:.0f} ms: "
            f"{'met' if refusal['max'] < GOALS['refusal_ms'] else 'MISSED'})"
        )
    if "cost" in results:
        cost = results["cost"]
        print(
            f"  BPF ns per TCP connection, one allow rule: "
            f"{cost['plain_ns_per_connection']['median']:.0f} without mtls, "
            f"{cost['mtls_ns_per_connection']['median']:.0f} with mtls (authenticated): "
            f"{cost['ratio']:.3f}x (goal <= {GOALS['cost_ratio']}x: "
            f"{'met' if cost['ratio'] <= GOALS['cost_ratio'] else 'MISSED'})"
        )


if __name__ == "__main__":
    sys.exit(main())
