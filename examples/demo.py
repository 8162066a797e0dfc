"""`make demo`: compile a mesh, attach it to throwaway cgroups, show what it does.

Everything the demo creates (cgroups named ebmesh-demo-*, the processes in
them, the attachment) is removed at the end, even on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's tests.support

import ebmesh  # noqa: E402
from ebmesh.mtls import IdentityStore  # noqa: E402
from tests.support import Agent, throwaway_cgroup  # noqa: E402

HERE = Path(__file__).resolve().parent
ADDRESS = {
    "frontend": "127.0.1.1",
    "api": "127.0.2.1",
    "db": "127.0.3.1",
    "dns": "127.0.53.1",
    "mail": "127.0.25.1",
    "api-svc": "127.0.96.10",
}
API_BACKENDS = ("127.0.2.1", "127.0.2.2")


def say(text: str = "") -> None:
    print(text, flush=True)


def attempt(agents, attachment, client: str, server: str, port: int, protocol: str = "tcp") -> None:
    agent, source = agents[client], ADDRESS[client]
    if protocol == "tcp":
        result = agent.connect(ADDRESS[server], port, source=source, timeout=1.0)
    else:
        result = agent.send(ADDRESS[server], port, source=source, timeout=1.0)
    if result["ok"] and (protocol == "tcp" or result.get("reply")):
        outcome = f"{'connected' if protocol == 'tcp' else 'answered'} in {result['seconds'] * 1000:.2f} ms"
    elif result["ok"]:
        outcome = "sent, no answer"
    else:
        outcome = f"{errno.errorcode[result['errno']]} after {result['seconds'] * 1000:.2f} ms"
    events = [e for e in attachment.poll_events(0.2) if e.direction == "egress"]
    why = ""
    if events:
        event = events[0]
        why = (
            f"rule {event.rule_id}, line {event.rule.line}: {event.rule.text}"
            if event.rule
            else "the default (deny)"
        )
        if event.unauthenticated:
            why += "   [mtls: the pair is not authenticated]"
        if event.audit_rule:
            why += f"   [audit: line {event.audit_rule.line} would deny]"
    say(f"  {client:>8} -> {server:<8} {port:>5}/{protocol}  {outcome:<28} {why}")


def balance(agents, attachment, client: str, connects: int) -> None:
    before = attachment.backend_counters()["api-svc"]
    result = agents[client].connect_many(ADDRESS["api-svc"], 80, connects, source=ADDRESS[client])
    after = attachment.backend_counters()["api-svc"]
    for backend, count in after.items():
        share = count - before.get(backend, 0)
        say(f"   {backend:<16} {share:>4} connects {'#' * (share // 8)}")
    failed = connects - result["succeeded"]
    say(
        f"   {result['succeeded']} of {connects} connected ({failed} failed) in {result['seconds']:.2f} s"
    )
    attachment.poll_events(0.0)  # drop these verdicts from the stream


def mtls(agents, attachment, compiled) -> None:
    say("\n== mTLS: db requires authenticated peers")
    names = compiled.image.naming.name_of
    for pair in attachment.authenticated():
        until = time.strftime("%H:%M", time.localtime(pair.expires_at))
        say(
            f"   authenticated at attach (TLS 1.3, SVIDs): {names(pair.src)} -> {names(pair.dst)}, until {until}"
        )
    attempt(agents, attachment, "api", "db", 5432)
    # A process outside the mesh, bound to api's address: an address is not an identity.
    result = agents["outside"].connect(ADDRESS["db"], 5432, source=API_BACKENDS[0], timeout=0.5)
    outcome = (
        "connected"
        if result["ok"]
        else f"{errno.errorcode[result['errno']]} (dropped at db's ingress)"
    )
    say(f"   outsider from api's address {API_BACKENDS[0]} -> db 5432/tcp  {outcome}")
    attachment.poll_events(0.0)
    dropped = attachment.revoke("api")
    say(f"   revoke api: {len(dropped)} pair(s) dropped at once")
    attempt(agents, attachment, "api", "db", 5432)
    attachment.renew("api")
    say("   renew api: a fresh SVID, the pair authenticated again")
    attempt(agents, attachment, "api", "db", 5432)


def main() -> int:
    if os.geteuid() != 0:
        say("make demo attaches eBPF programs to cgroups: run it as root.")
        return 2
    policy_path = HERE / "demo.mesh"
    say(f"== compiling {policy_path.name}")
    started = time.perf_counter()
    compiled = ebmesh.compile(policy_path)
    info = compiled.inspect()
    say(
        f"   {len(compiled.policy.rules)} rules -> {len(info.programs)} programs, {len(info.maps)} maps, "
        f"in {time.perf_counter() - started:.2f} s ({'cached object' if compiled.build.cache_hit else 'clang ran'})"
    )
    for program in info.programs:
        say(f"     {program.section:<20} {program.name:<18} {program.insn_count:>5} instructions")

    with (
        throwaway_cgroup(("frontend", "api", "db"), prefix="ebmesh-demo-") as root,
        contextlib.ExitStack() as stack,
    ):
        agents = {}
        try:
            for name in ("frontend", "api", "db"):
                agents[name] = Agent(root / name, name=name)
            agents["outside"] = Agent(None, name="outside")  # dns and mail: off the mesh
            for backend in API_BACKENDS:
                agents["api"].listen("tcp", backend, 8080)
            agents["db"].listen("tcp", ADDRESS["db"], 5432)
            agents["outside"].listen("udp", ADDRESS["dns"], 53)
            agents["outside"].listen("tcp", ADDRESS["mail"], 25)

            say(f"\n== attaching to {root}")
            identity_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            IdentityStore.create(identity_dir, compiled.image.trust_domain)  # the mesh's issuer
            with compiled.attach(root, identity_dir=identity_dir) as attachment:
                say(
                    "   workloads: "
                    + ", ".join(
                        f"{n} -> {p.relative_to(root)}"
                        for n, p in (
                            (compiled.image.naming.name_of(i), p)
                            for i, p in attachment.workload_cgroups.items()
                        )
                    )
                )
                say(
                    "\n== connections under the policy (verdicts read back from the kernel's event ring)"
                )
                attempt(agents, attachment, "frontend", "api", 8080)
                attempt(agents, attachment, "frontend", "api-svc", 80)
                attempt(agents, attachment, "frontend", "db", 5432)
                attempt(agents, attachment, "api", "db", 5432)
                attempt(agents, attachment, "api", "mail", 25)
                attempt(agents, attachment, "frontend", "dns", 53, "udp")
                attempt(agents, attachment, "db", "api", 8080)

                say(
                    "\n== load balancing: frontend connects to api-svc (127.0.96.10:80), backends weighted 3:1"
                )
                balance(agents, attachment, "frontend", connects=400)
                say("   set_backends live, no reload: weights 1:3")
                attachment.set_backends(
                    "api-svc", {f"{API_BACKENDS[0]}:8080": 1, f"{API_BACKENDS[1]}:8080": 3}
                )
                balance(agents, attachment, "frontend", connects=400)
                result = agents["frontend"].connect(
                    ADDRESS["api-svc"], 80, source=ADDRESS["frontend"]
                )
                say(
                    f"   the application sees the VIP as its peer: getpeername() = {result['peer'][0]}:{result['peer'][1]}"
                )
                attachment.poll_events(0.0)

                mtls(agents, attachment, compiled)

                say("\n== per-rule counters")
                for count in attachment.counters().values():
                    if count.decided or count.audited:
                        where = (
                            f"rule {count.rule_id} (line {count.rule.line})"
                            if count.rule
                            else "default"
                        )
                        say(
                            f"   {where:<18} decided {count.decided}, audit matches {count.audited}"
                        )

                say("\n== the kernel's own decision code, asked directly (evaluate)")
                say(f"   {compiled.evaluate('frontend', ADDRESS['db'], 5432, 'tcp')}")
            compiled.close()

            say("\n== detached: the same denied connection now goes through")
            result = agents["frontend"].connect(ADDRESS["db"], 5432, source=ADDRESS["frontend"])
            say(
                f"  frontend -> db       5432/tcp  {'connected' if result['ok'] else errno.errorcode[result['errno']]}"
            )
        finally:
            for agent in agents.values():
                agent.stop()
    say("\n== cleaned up: cgroups, processes and programs are gone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
