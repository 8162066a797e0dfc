"""The object's programs, by the names the C gives them (bpf_src/ebmesh.bpf.c),
and which of them a policy needs attached."""

from __future__ import annotations

from collections.abc import Iterable

from ebmesh.datapath.parties import Protocol, Service

CONNECT = ("ebmesh_connect4", "ebmesh_connect6")
SENDMSG = ("ebmesh_sendmsg4", "ebmesh_sendmsg6")
INGRESS = ("ebmesh_ingress",)
GETPEERNAME = ("ebmesh_getpeername4", "ebmesh_getpeername6")
RECVMSG = ("ebmesh_recvmsg4", "ebmesh_recvmsg6")
# Notes who sent each new flow that leaves a network namespace; needed only
# when the mesh spans namespaces of this host.
RECORDER = "ebmesh_recorder"
# `accelerate on`: the sock_ops program puts established connections in the
# shortcut map; the sk_msg program, attached to that map, sends their messages
# socket to socket.
SOCKOPS = "ebmesh_sockops"
SHORTCUT = "ebmesh_shortcut"

# Every hook program, in the order they are attached: the recorder first, so
# that ingress never sees a flow its sender's recorder missed; connect and
# sendmsg last, so that nothing is translated before it can be translated back.
HOOK_PROGRAMS = (RECORDER, *INGRESS, *GETPEERNAME, *RECVMSG, *CONNECT, *SENDMSG, SOCKOPS)

# The SEC("syscall") harness behind `CompiledPolicy.evaluate`.
EVALUATE_PROGRAM = "ebmesh_evaluate"


def hooks_needed(
    services: Iterable[Service], *, recorder: bool, accelerate: bool = False
) -> tuple[str, ...]:
    """The cgroup hook programs to attach, in attach order.

    connect, sendmsg and ingress judge every policy's traffic; getpeername
    runs only where something may be translated back (a service: it also runs
    at every accept(), so it is left out when there is none), recvmsg only
    for UDP services; sock_ops only with `accelerate on` (it runs several
    times per connection).
    """
    services = tuple(services)
    wanted = {*INGRESS, *CONNECT, *SENDMSG}
    if services:
        wanted.update(GETPEERNAME)
    if any(s.protocol is Protocol.UDP for s in services):
        wanted.update(RECVMSG)
    if recorder:
        wanted.add(RECORDER)
    if accelerate:
        wanted.add(SOCKOPS)
    return tuple(name for name in HOOK_PROGRAMS if name in wanted)
