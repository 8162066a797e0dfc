"""A "host" of a mesh: a process, maybe in its own network namespace, that attaches a
policy there and answers for it, as ebmesh does on each host of a multi-host mesh.

Parent side: `MeshHost` (tests.support.processes). Process side: `python -m
tests.support.mesh_host`, serving the same one-JSON-line-per-command protocol as
the agent. Its authenticator lives in its namespace, so two hosts' authenticators
reach each other over the veth pair between them, as two machines would.
"""

from __future__ import annotations

import time

import ebmesh
from ebmesh.errors import EbmeshError
from tests.support.agent import serve

_attachment = None


def attach(policy: str, cgroup: str, identity_dir: str, port: int = 4250) -> dict:
    global _attachment
    began = time.monotonic()
    _attachment = ebmesh.compile(policy).attach(
        cgroup, identity_dir=identity_dir, authenticator_port=port
    )
    return {"ok": True, "seconds": time.monotonic() - began}


def authenticated() -> dict:
    pairs = [
        [p.src, p.dst, None if p.host is None else str(p.host)] for p in _attachment.authenticated()
    ]
    return {"ok": True, "pairs": pairs}


def notices() -> dict:
    return {"ok": True, "notices": [[n.kind, n.message] for n in _attachment.poll_notices()]}


def events(timeout: float = 0.2) -> dict:
    found = [
        {
            "direction": e.direction,
            "verdict": e.verdict,
            "src": e.src_name,
            "dst": e.dst_name,
            "unauthenticated": e.unauthenticated,
        }
        for e in _attachment.events(timeout=timeout)
    ]
    return {"ok": True, "events": found}


def revoke(identity: str) -> dict:
    return {"ok": True, "dropped": len(_attachment.revoke(identity))}


def detach() -> dict:
    global _attachment
    attachment, _attachment = _attachment, None
    if attachment is not None:
        attachment.detach()
    return {"ok": True}


COMMANDS = {
    "attach": attach,
    "authenticated": authenticated,
    "notices": notices,
    "events": events,
    "revoke": revoke,
    "detach": detach,
}

if __name__ == "__main__":
    serve(COMMANDS, failures=(EbmeshError,))
