"""An mTLS authenticator in its own process, maybe in another network namespace: a "host".

Parent side: `AuthenticatorProcess(config, netns=...)`. Process side: `python -m
tests.support.authenticator_process`, which reads the configuration as its first
line of stdin, starts an `ebmesh.mtls.Authenticator`, and then answers one JSON
command per line (request, authenticated, revoke, events, exit).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]


def workload_config(identity, name, spiffe_id, local, addresses=()) -> dict:
    return {
        "identity": identity,
        "name": name,
        "spiffe_id": spiffe_id,
        "local": local,
        "addresses": list(addresses),
    }


class AuthenticatorProcess:
    """A host's authenticator, driven over pipes. `config`: directory, workloads (from
    `workload_config`), pairs, listen, port, peer_port."""

    def __init__(self, config: dict, netns: str | None = None):
        enter = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []
        self.process = subprocess.Popen(
            [*enter, sys.executable, "-m", "tests.support.authenticator_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=_ROOT,
        )
        self.started = self._send(config)

    def _send(self, message: dict) -> dict:
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"authenticator process died (exit code {self.process.wait()})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def authenticate(self, src: int, dst: int, peer_host: str | None) -> dict:
        """The event, and `seconds` from the call to the sink's grant (or to the failure)."""
        return self._send(
            {"command": "authenticate", "src": src, "dst": dst, "peer_host": peer_host}
        )

    def authenticated(self) -> list[dict]:
        return self._send({"command": "authenticated"})["pairs"]

    def revoke(self, identity: str) -> list:
        return self._send({"command": "revoke", "identity": identity})["dropped"]

    def events(self) -> list[dict]:
        return self._send({"command": "events"})["events"]

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                self._send({"command": "exit"})
                self.process.wait(timeout=5)
            except (OSError, RuntimeError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self.process.stdin.close()
        self.process.stdout.close()

    def __enter__(self) -> AuthenticatorProcess:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


# -- the process side -------------------------------------------------------------------


def _event(event) -> dict:
    return {
        "outcome": event.outcome.value,
        "src": event.src,
        "dst": event.dst,
        "host": None if event.host is None else str(event.host),
        "reason": event.reason.value if event.reason else None,
        "detail": event.detail,
        "side": event.side,
        "expires_at": event.expires_at,
    }


class _TimedSink:
    """A PairTable that remembers when each pair was last granted."""

    def __init__(self):
        from ebmesh.mtls import PairTable

        self.table = PairTable()
        self.granted_at: dict[tuple, float] = {}
        self.changed = threading.Condition()

    def grant(self, src, dst, host, expires_at):
        self.table.grant(src, dst, host, expires_at)
        with self.changed:
            self.granted_at[(src, dst, None if host is None else str(host))] = time.perf_counter()
            self.changed.notify_all()

    def revoke(self, src, dst, host):
        self.table.revoke(src, dst, host)


def _serve() -> None:
    import ipaddress

    from ebmesh.datapath.parties import Workload
    from ebmesh.mtls import Authenticator

    config = json.loads(sys.stdin.readline())
    workloads = [
        Workload(
            identity=w["identity"],
            name=w["name"],
            cgroup=w["name"] if w["local"] else None,
            prefixes=tuple(ipaddress.ip_network(a) for a in w["addresses"]),
            spiffe_id=w["spiffe_id"],
            mtls_required=False,
        )
        for w in config["workloads"]
    ]
    sink = _TimedSink()
    authenticator = Authenticator(
        config["directory"],
        workloads,
        [tuple(p) for p in config["pairs"]],
        sink=sink,
        listen=config.get("listen"),
        port=config.get("port", 4250),
        peer_port=config.get("peer_port"),
    )
    try:
        report = authenticator.start()
    except Exception as error:  # told to the parent, which raises it
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}), flush=True)
        return
    events = []
    print(
        json.dumps(
            {
                "port": authenticator.port,
                "authenticated": report.authenticated,
                "without_svid": report.without_svid,
                "failed": [_event(e) for e in report.failed],
            }
        ),
        flush=True,
    )
    for line in sys.stdin:
        command = json.loads(line)
        name = command["command"]
        events += authenticator.poll_events()
        if name == "authenticate":
            began = time.perf_counter()
            event = authenticator.authenticate(command["src"], command["dst"], command["peer_host"])
            key = (command["src"], command["dst"], None if event.host is None else str(event.host))
            granted = sink.granted_at.get(key, 0.0)
            ended = granted if granted >= began else time.perf_counter()  # failed: no grant
            answer = {"event": _event(event), "seconds": ended - began}
        elif name == "authenticated":
            answer = {
                "pairs": [
                    [p.src, p.dst, None if p.host is None else str(p.host), p.expires_at]
                    for p in sink.table.pairs()
                ]
            }
        elif name == "revoke":
            dropped = authenticator.revoke(command["identity"])
            answer = {
                "dropped": [
                    [k.src, k.dst, None if k.host is None else str(k.host)] for k in dropped
                ]
            }
        elif name == "events":
            answer, events = {"events": [_event(e) for e in events]}, []
        elif name == "exit":
            authenticator.stop()
            print(json.dumps({"ok": True}), flush=True)
            return
        else:
            answer = {"error": f"unknown command {name!r}"}
        print(json.dumps(answer), flush=True)
    authenticator.stop()


if __name__ == "__main__":
    _serve()
