"""Agents: test processes placed in a cgroup and maybe a network namespace.

The process side is tests/support/agent.py, run as `python -m tests.support.agent`
from the repository's root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]  # the repository, where `-m tests.support.agent` runs


class AgentError(RuntimeError):
    """An agent could not do what it was told (its answer says why)."""


def _join(cgroup: Path | None):
    """Runs in the child between fork and exec: join the cgroup (children inherit it)."""

    def prepare():
        if cgroup is not None:
            with open(cgroup / "cgroup.procs", "w") as procs:
                procs.write(str(os.getpid()))

    return prepare


class Agent:
    """A process in `cgroup` (and `netns`) that opens sockets on command."""

    MODULE = "tests.support.agent"  # the process side

    def __init__(self, cgroup: Path | None = None, netns: str | None = None, name: str = "agent"):
        self.name = name
        self.cgroup = cgroup
        self._listeners: dict[tuple[str, str, int], int] = {}
        # nsenter --net, not `ip netns exec`: the latter remounts /sys and hides the cgroup2 mount.
        enter = ["nsenter", f"--net=/run/netns/{netns}"] if netns is not None else []
        self.process = subprocess.Popen(
            [*enter, sys.executable, "-m", self.MODULE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=_ROOT,
            preexec_fn=_join(cgroup),
        )
        hello = self._read()
        self.pid = hello["pid"]

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise AgentError(f"agent {self.name} died (exit code {self.process.poll()})")
        return json.loads(line)

    def call(self, command: str, **arguments) -> dict:
        self.process.stdin.write(json.dumps({"command": command, **arguments}) + "\n")
        self.process.stdin.flush()
        return self._read()

    def _must(self, command: str, **arguments) -> dict:
        """`call`, for commands that have no reason to fail."""
        answer = self.call(command, **arguments)
        if not answer["ok"]:
            raise AgentError(f"agent {self.name}: {command} failed: {answer}")
        return answer

    def listen(self, protocol: str, address: str, port: int = 0) -> int:
        answer = self._must("listen", protocol=protocol, address=address, port=port)
        self._listeners[(protocol, address, answer["port"])] = answer["id"]
        return answer["port"]

    def listen_many(self, endpoints: list[tuple[str, int]], backlog: int = 128) -> int:
        """TCP listeners on every (address, port), all served by one thread of the agent
        (a thread per listener, as `listen` has, does not scale to 1,000 backends).
        Each accepted connection gets the greeting and is closed. Returns the group's id."""
        answer = self._must("listen_many", endpoints=[list(e) for e in endpoints], backlog=backlog)
        return answer["id"]

    def accepted_many(self, group: int) -> dict[str, int]:
        """Connections taken per listener of a `listen_many` group, by "ADDRESS:PORT"."""
        return self.call("accepted_many", id=group)["counts"]

    def close_many(self, group: int) -> None:
        self.call("close_many", id=group)

    def connect(
        self,
        address: str,
        port: int,
        source: str | None = None,
        timeout: float = 2.0,
        destination_options: bool = False,
        source_port: int = 0,
        ip_options: bool = False,
    ) -> dict:
        return self.call(
            "connect",
            address=address,
            port=port,
            source=source,
            timeout=timeout,
            destination_options=destination_options,
            source_port=source_port,
            ip_options=ip_options,
        )

    def udp_peers(self, targets: list[tuple[str, int]], source: str | None = None) -> dict:
        """One UDP socket connected to each target in turn: its getpeername() after each."""
        return self.call("udp_peers", targets=[list(t) for t in targets], source=source)

    def retry_connect(self, address: str, port: int, retry_after: float, within: float = 2.0):
        """TCP connects until one passes, `retry_after` seconds apart (agent.retry_connect)."""
        return self.call(
            "retry_connect", address=address, port=port, retry_after=retry_after, within=within
        )

    def connect_many(
        self,
        address: str,
        port: int,
        count: int,
        source: str | None = None,
        timeout: float = 2.0,
        read: bool = True,
    ) -> dict:
        """`count` connects in a loop inside the agent: {succeeded, errnos, seconds, ...}."""
        return self.call(
            "connect_many",
            address=address,
            port=port,
            count=count,
            source=source,
            timeout=timeout,
            read=read,
        )

    def send(
        self,
        address: str,
        port: int,
        source: str | None = None,
        timeout: float = 1.0,
        connected: bool = False,
    ) -> dict:
        return self.call(
            "send", address=address, port=port, source=source, timeout=timeout, connected=connected
        )

    def ask_many(
        self, address: str, port: int, count: int, source: str | None = None, timeout: float = 1.0
    ) -> dict:
        return self.call(
            "ask_many", address=address, port=port, count=count, source=source, timeout=timeout
        )

    def listen_echo(self, address: str, port: int = 0) -> int:
        """A TCP echo server (half-closes after the client does); returns its port."""
        return self._must("listen_echo", address=address, port=port)["port"]

    def exchange(self, address: str, port: int, sizes: list[int], timeout: float = 10.0) -> dict:
        """One connection: messages of `sizes` bytes out, half-close, the echo back to EOF:
        {ok, intact, sent, received}."""
        return self.call("exchange", address=address, port=port, sizes=sizes, timeout=timeout)

    def exchange_many(
        self, address: str, port: int, connections: list[list[int]], timeout: float = 20.0
    ) -> list[dict]:
        """`exchange` over several connections at once, inside the agent."""
        answer = self._must(
            "exchange_many", address=address, port=port, connections=connections, timeout=timeout
        )
        return answer["results"]

    def probe_many(self, flows: list[tuple[str, str, int, str | None]], timeout: float = 0.25):
        """Every (protocol, address, port, bind address or None) at once: each one's outcome
        ("allowed", "denied at once", "dropped", "odd: ...") and the local address and port."""
        return self._must("probe_many", flows=[list(f) for f in flows], timeout=timeout)["results"]

    def accepted(self, protocol: str, address: str, port: int) -> int:
        """Connections (TCP) or datagrams (UDP) the listener on (address, port) has taken."""
        return self.call("accepted", id=self._listeners[(protocol, address, port)])["count"]

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"command": "exit"}) + "\n")
                self.process.stdin.flush()
                self.process.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            stream.close()


class MeshHost(Agent):
    """A process (in `netns`) that attaches one policy and answers for it: another host
    of the mesh, for tests across namespaces. Its process side is tests/support/mesh_host.py."""

    MODULE = "tests.support.mesh_host"

    def attach(self, policy: str, cgroup: Path, identity_dir: Path, port: int = 4250) -> float:
        """Seconds the attach took (its local pairs are authenticated when it returns)."""
        answer = self._must(
            "attach", policy=policy, cgroup=str(cgroup), identity_dir=str(identity_dir), port=port
        )
        return answer["seconds"]

    def authenticated(self) -> list[tuple[int, int, str | None]]:
        return [tuple(p) for p in self._must("authenticated")["pairs"]]

    def notices(self) -> list[tuple[str, str]]:
        return [tuple(n) for n in self._must("notices")["notices"]]

    def events(self, timeout: float = 0.2) -> list[dict]:
        return self._must("events", timeout=timeout)["events"]

    def revoke(self, identity: str) -> int:
        return self._must("revoke", identity=identity)["dropped"]

    def detach(self) -> None:
        self._must("detach")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.call("detach")  # before exit: a host killed later leaves no record behind
        super().stop()
