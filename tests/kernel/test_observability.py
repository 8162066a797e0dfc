"""`ebmesh events`, metrics and diff against real attachments, connections and readers.

Several readers of one attachment each get every event (the hub fans the
one ring buffer out); a reader that exits hands the ring to the next; a
reader that does not read is dropped-counted while the others go on; the
filters pick what they say; a Prometheus scrape over HTTP counts the real
connections; `diff` and `apply --dry-run` report rules and verdict changes
and change nothing.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import ebmesh
from ebmesh.loader import AttachType, query_cgroup
from ebmesh.mtls import IdentityStore
from ebmesh.runtime import event_hub, registry
from ebmesh.runtime.events import decode_event
from ebmesh.runtime.status import detach_cgroup

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
SERVER = "127.0.11.5"  # nothing listens: an allowed connect is refused, a denied one EPERM
ALLOWED, DENIED_BY_RULE, DENIED_BY_DEFAULT = 7501, 7502, 7503
VIP, BACKEND = "10.96.11.1", "127.0.11.6"


def policy(mesh: str, rules: str | None = None) -> str:
    rules = rules or (
        f"allow client -> server port {ALLOWED}\ndeny client -> {SERVER} port {DENIED_BY_RULE}"
    )
    return (
        textwrap.dedent(
            f"""\
        mesh {mesh} {{
            workload client {{ cgroup "client" }}
            workload server {{ cgroup "server" address {SERVER} }}
            service web {VIP}:80/tcp {{
                backend {BACKEND}:{ALLOWED}
            }}
            allow client -> web
        """
        )
        + textwrap.indent(rules, "    ")
        + "\n}\n"
    )


@pytest.fixture
def world(cgroup_tree, spawn):
    root = cgroup_tree("client", "server")
    client = spawn(root / "client", name="client")
    mesh = f"obs{uuid.uuid4().hex[:8]}"
    yield root, client, mesh
    if registry.on_cgroup(root) is not None:  # a test failed half-way
        detach_cgroup(root)
    # no hub's socket or lock outlives the attachment, even a killed hub's
    assert list(event_hub.EVENTS_DIR.glob(f"{mesh}-*")) == []


def connect(client, port: int, count: int, address: str = SERVER) -> dict:
    return client.connect_many(address, port, count, timeout=1.0, read=False)["errnos"]


def ebmesh_cli(*arguments: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ebmesh", *arguments],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=timeout,
    )


class Follower:
    """`ebmesh events -o json --follow` in a process, its lines gathered."""

    def __init__(self, root: Path, *extra: str):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ebmesh", "events", "--cgroup", str(root), "-o", "json", "-f"]
            + list(extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        self.lines: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(json.loads(line))

    def events(self) -> list[dict]:
        return [line for line in self.lines if "lost" not in line]

    def wait_for(self, count: int, timeout: float = 30) -> list[dict]:
        return self.wait_until(lambda events: len(events) >= count, timeout)

    def wait_until(self, done, timeout: float = 30) -> list[dict]:
        deadline = time.monotonic() + timeout
        while not done(self.events()) and time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        return self.events()

    def exited(self) -> str:
        """How it ended, if it did: for failure messages."""
        code = self.process.poll()
        return "running" if code is None else f"exit {code}: {self.process.stderr.read()}"

    def stop(self, sig=signal.SIGINT) -> str:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        self.process.wait(10)
        self._reader.join(5)
        return self.process.stderr.read()


def ready(readers: list[Follower], client) -> int:
    """Every reader is connected once each has seen a first connection (sentinels until then)."""
    sent = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        connect(client, DENIED_BY_DEFAULT, 1)
        sent += 1
        time.sleep(0.2)
        if all(r.events() for r in readers):
            return sent
    raise AssertionError(f"readers never saw an event: {[r.stop() for r in readers]}")


def by_port(events: list[dict]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for event in events:
        port = event["destination"]["port"]
        counts[port] = counts.get(port, 0) + 1
    return counts


# ---- several readers, each every event -------------------------------------------------------


def test_two_readers_of_a_pinned_attachment_each_get_every_event(world):
    root, client, mesh = world
    ebmesh.compile(policy(mesh)).attach(root, pin=True).close()  # pinned, no process holds it
    first, second = Follower(root), Follower(root)
    try:
        sentinels = ready([first, second], client)
        assert connect(client, ALLOWED, 200) == {str(errno.ECONNREFUSED): 200}
        assert connect(client, DENIED_BY_RULE, 150) == {str(errno.EPERM): 150}
        for reader in (first, second):
            events = reader.wait_until(
                lambda got: (
                    by_port(got).get(DENIED_BY_RULE, 0) >= 150
                    and by_port(got).get(ALLOWED, 0) >= 200
                )
            )
            counts = by_port(events)
            # sentinels sent before a reader connected are not its: at least one is
            assert counts[ALLOWED] == 200 and counts[DENIED_BY_RULE] == 150
            assert 1 <= counts[DENIED_BY_DEFAULT] <= sentinels
            assert not [line for line in reader.lines if "lost" in line]
        allowed = next(e for e in first.events() if e["destination"]["port"] == ALLOWED)
        assert allowed["verdict"] == "allow" and allowed["direction"] == "egress"
        assert allowed["source"]["workload"] == "client"
        assert allowed["destination"] == {"workload": "server", "address": SERVER, "port": ALLOWED}
        assert allowed["rule"]["id"] == 2 and allowed["rule"]["default"] is False
        assert allowed["rule"]["text"].strip() == f"allow client -> server port {ALLOWED}"
        assert allowed["time"].endswith("Z") and abs(allowed["timestamp"] - time.time()) < 60
        denied = next(e for e in first.events() if e["destination"]["port"] == DENIED_BY_DEFAULT)
        assert denied["verdict"] == "deny" and denied["rule"] == {
            "id": 0,
            "line": None,
            "text": None,
            "default": True,
        }
    finally:
        for reader in (first, second):
            reader.stop()
        detach_cgroup(root)


def test_when_the_hub_reader_dies_another_reader_takes_the_ring_over(world):
    root, client, mesh = world
    ebmesh.compile(policy(mesh)).attach(root, pin=True).close()
    hub = Follower(root)
    try:
        ready([hub], client)
        other = Follower(root)  # the hub is there: this one connects to it
        ready([other], client)
        hub.stop(signal.SIGKILL)  # no goodbye: its socket stays, dead, until `other` sees it
        seen = len(other.events())
        # meanwhile the events wait in the ring; the next reader to find the hub gone
        # (this one) becomes it and reads them
        assert connect(client, DENIED_BY_RULE, 300) == {str(errno.EPERM): 300}
        events = other.wait_for(seen + 300)
        assert by_port(events[seen:]).get(DENIED_BY_RULE) == 300, other.exited()
        # the policy detached: the follower (now the hub) notices, says so and ends
        detach_cgroup(root)
        assert other.process.wait(15) == 0
        assert "no ebmesh policy is attached" in other.stop()
    finally:
        other.stop()
        hub.stop()


def test_the_owner_polls_its_own_events_while_readers_follow_and_filters_pick(world):
    root, client, mesh = world
    compiled = ebmesh.compile(policy(mesh))
    with compiled.attach(root) as attachment:
        attachment.serve_events()
        follower = Follower(root, "--verdict", "deny")
        ready([follower], client)
        attachment.poll_events(0.5)  # the sentinels
        connect(client, ALLOWED, 20)
        connect(client, DENIED_BY_RULE, 10)
        mine: list = []
        deadline = time.monotonic() + 10
        while len(mine) < 30 and time.monotonic() < deadline:
            mine += attachment.poll_events(0.2)
        assert sorted({e.dst_port for e in mine}) == [ALLOWED, DENIED_BY_RULE] and len(mine) == 30
        # the follower asked for denials only
        follower.wait_for(11)
        assert all(e["verdict"] == "deny" for e in follower.events())
        assert by_port(follower.events()[-10:]) == {DENIED_BY_RULE: 10}
        follower.stop()

        def history(*filters: str) -> list[dict]:
            done = ebmesh_cli("events", "--cgroup", str(root), "-o", "json", *filters)
            assert done.returncode == 0, done.stderr
            return [json.loads(line) for line in done.stdout.splitlines()]

        everything = history("--since", "5m")
        assert by_port(everything)[ALLOWED] == 20 and by_port(everything)[DENIED_BY_RULE] == 10
        assert len(history()) == 20  # without --since: the last 20, as hubble observe
        assert len(history("--last", "3")) == 3
        assert by_port(history("--since", "5m", "--verdict", "allow")) == {ALLOWED: 20}
        assert by_port(history("--since", "5m", "--to", f"{SERVER}:{DENIED_BY_RULE}")) == {
            DENIED_BY_RULE: 10
        }
        assert by_port(history("--since", "5m", "--rule", "3")) == {DENIED_BY_RULE: 10}
        assert DENIED_BY_RULE not in by_port(history("--since", "5m", "--rule", "default"))
        assert len(history("--since", "5m", "--from", "client")) == len(everything)
        assert history("--since", "5m", "--from", SERVER) == []
        time.sleep(1.2)
        assert history("--since", "1s") == []

        text = ebmesh_cli("events", "--cgroup", str(root), "--last", "1", "--to", "server")
        assert text.returncode == 0
        (line,) = text.stdout.splitlines()
        assert f"client *:0 -> server {SERVER}:{DENIED_BY_RULE}" in line or "ALLOW" in line
        assert " by rule " in line and ":" in line

        # hostile and wrong arguments: exit 2, with what is wrong
        for filters, said in (
            (("--from", "nobody"), "no workload or service of that name"),
            (("--rule", "99"), "rules 1 to 3"),
            (("--rule", "x"), "rule id"),
        ):
            done = ebmesh_cli("events", "--cgroup", str(root), *filters)
            assert done.returncode == 2 and said in done.stderr, done.stderr
        done = ebmesh_cli("events", "--cgroup", str(root), "--since", "5 minutes")
        assert done.returncode == 2 and "duration" in done.stderr


def test_no_attachment_or_several_are_told_and_a_process_that_does_not_serve_is_named(world):
    root, client, mesh = world
    done = ebmesh_cli("events", "--cgroup", str(root))
    assert done.returncode == 2 and "no ebmesh policy is attached" in done.stderr
    with ebmesh.compile(policy(mesh)).attach(root):  # owned here, serving nothing
        done = ebmesh_cli("events", "--cgroup", str(root))
        assert done.returncode == 2
        assert f"held by pid {os.getpid()}" in done.stderr and "serve_events" in done.stderr


def test_a_reader_that_does_not_read_is_dropped_counted_and_holds_nobody_up(world, monkeypatch):
    root, client, mesh = world
    monkeypatch.setattr(event_hub, "READER_BACKLOG", 128 << 10)
    with ebmesh.compile(policy(mesh)).attach(root) as attachment:
        attachment.serve_events()
        record = registry.on_cgroup(root)
        stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(str(event_hub.socket_path(mesh, record.cgroup_id)))
        stuck.sendall(b'{"follow": true, "last": 0}\n')
        good = Follower(root)
        try:
            ready([good], client)
            seen = len(good.events())
            for batch in range(8):  # the good reader keeps up; the stuck one falls behind
                assert connect(client, DENIED_BY_RULE, 500) == {str(errno.EPERM): 500}
                good.wait_for(seen + 500 * (batch + 1))
            assert by_port(good.events()[seen:]) == {DENIED_BY_RULE: 4000}
            assert not [line for line in good.lines if "lost" in line]
            mine = []
            while len(mine) < 4000 + seen:
                batch = attachment.poll_events(1.0)
                if not batch:
                    break
                mine += batch
            assert len([e for e in mine if e.dst_port == DENIED_BY_RULE]) == 4000
            # the stuck reader now reads: it got some, then is told how many it missed
            stuck.settimeout(2)
            items = list(_frames_of(stuck, event_hub.socket_path(mesh, record.cgroup_id)))
            dropped = sum(i.dropped for i in items if isinstance(i, event_hub.Lost))
            received = sum(len(i) // event_hub.RECORD_SIZE for i in items if isinstance(i, bytes))
            assert dropped > 0 and received + dropped >= 4000
        finally:
            good.stop()
            stuck.close()


def _frames_of(sock, path):
    """The frames a raw reader got, until nothing comes for a while."""
    stream = event_hub.EventStream.__new__(event_hub.EventStream)
    stream._follow, stream.last_ns = True, None
    received, frames = b"", []
    try:
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            received += chunk
    except TimeoutError:
        pass
    import io

    for item in stream._frames(io.BytesIO(received)):
        frames.append(item)
    return frames


# ---- metrics ------------------------------------------------------------------------------


def scrape(url: str) -> dict:
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            samples[key] = sample.value
    return samples


def test_a_prometheus_scrape_counts_the_real_connections(world, spawn):
    root, client, mesh = world
    backend = spawn(root / "server", name="backend")
    backend.listen("tcp", BACKEND, ALLOWED)
    compiled = ebmesh.compile(policy(mesh))
    with compiled.attach(root) as attachment:
        host, port = attachment.serve_metrics("127.0.0.1", 0)
        url = f"http://{host}:{port}/metrics"
        before = scrape(url)
        assert (
            before[
                ("ebmesh_verdicts_total", (("line", ""), ("rule", "default"), ("verdict", "deny")))
            ]
            == 0
        )
        assert not [k for k in before if k[0] == "ebmesh_verdicts_total" and ("rule", "2") in k[1]]
        connect(client, ALLOWED, 5)
        connect(client, DENIED_BY_RULE, 3)
        connect(client, DENIED_BY_DEFAULT, 2)
        assert connect(client, 80, 4, address=VIP) == {}
        after = scrape(url)
        rule_line = {r.rule_id: r.line for r in compiled.shape.rules}

        def verdicts(rule: str, verdict: str) -> float:
            line = "" if rule == "default" else str(rule_line[int(rule)])
            return after[
                ("ebmesh_verdicts_total", (("line", line), ("rule", rule), ("verdict", verdict)))
            ]

        assert verdicts("1", "allow") == 4  # allow client -> web
        assert verdicts("2", "allow") == 5
        assert verdicts("3", "deny") == 3
        assert verdicts("default", "deny") == 2
        assert (
            after[
                (
                    "ebmesh_backend_connections_total",
                    (("backend", f"{BACKEND}:{ALLOWED}"), ("service", "web")),
                )
            ]
            == 4
        )
        assert after[("ebmesh_events_lost_total", ())] == 0
        info = [k for k in after if k[0] == "ebmesh_policy_info"]
        assert len(info) == 1 and ("mesh", mesh) in info[0][1] and ("rules", "3") in info[0][1]
        assert not [k for k in after if k[0].startswith("ebmesh_mtls")]  # no mtls in the policy
    with pytest.raises(OSError):  # the server went with the attachment
        urllib.request.urlopen(url, timeout=2)


def test_the_mtls_metrics_count_the_pairs_and_handshakes(world, tmp_path):
    """With mtls: the pair authenticated at attach is one pair and one client handshake;
    revoked, the pair is gone from the gauge and the handshake stays counted."""
    root, client, mesh = world
    IdentityStore.create(tmp_path, mesh)
    text = policy(mesh, f"allow client -> server port {ALLOWED} mtls")
    with ebmesh.compile(text).attach(
        root, identity_dir=tmp_path, authenticator_port=0
    ) as attachment:
        host, port = attachment.serve_metrics("127.0.0.1", 0)
        url = f"http://{host}:{port}/metrics"
        handshakes = "ebmesh_mtls_handshakes_total"
        before = scrape(url)
        assert before[("ebmesh_mtls_authenticated_pairs", ())] == 1
        assert before[(handshakes, (("outcome", "authenticated"), ("side", "client")))] == 1
        assert before[(handshakes, (("outcome", "failed"), ("side", "client")))] == 0
        assert before[(handshakes, (("outcome", "authenticated"), ("side", "listener")))] == 0
        assert len(attachment.revoke("client")) == 1
        after = scrape(url)
        assert after[("ebmesh_mtls_authenticated_pairs", ())] == 0
        assert after[(handshakes, (("outcome", "authenticated"), ("side", "client")))] == 1


def test_apply_serves_metrics_and_events_and_refuses_a_bad_address(world):
    root, client, mesh = world
    done = ebmesh_cli("apply", "-", "--cgroup", str(root), "--metrics", "nonsense")
    assert done.returncode == 2 and "ADDR:PORT" in done.stderr
    path = Path("/tmp") / f"{mesh}.ebm"
    path.write_text(policy(mesh))
    apply = subprocess.Popen(
        [sys.executable, "-m", "ebmesh", "apply", str(path), "--cgroup", str(root),
         "--metrics", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        url = None
        for line in apply.stderr:
            if "metrics at " in line:
                url = line.split("metrics at ")[1].strip()
                break
        assert url and url.startswith("http://127.0.0.1:")
        follower = Follower(root)
        ready([follower], client)
        connect(client, ALLOWED, 7)
        assert by_port(follower.wait_for(len(follower.events()) + 7)).get(ALLOWED) == 7
        follower.stop()
        rule_line = next(r.line for r in ebmesh.compile(policy(mesh)).shape.rules if r.rule_id == 2)
        samples = scrape(url)
        assert (
            samples[
                (
                    "ebmesh_verdicts_total",
                    (("line", str(rule_line)), ("rule", "2"), ("verdict", "allow")),
                )
            ]
            == 7
        )
    finally:
        apply.send_signal(signal.SIGINT)
        apply.wait(20)
        path.unlink()


# ---- diff and dry-run ----------------------------------------------------------------------


def test_diff_and_dry_run_tell_rules_and_verdict_changes_and_change_nothing(world, tmp_path):
    root, client, mesh = world
    compiled = ebmesh.compile(policy(mesh))
    with compiled.attach(root) as attachment:
        attachment.serve_events()
        connect(client, ALLOWED, 3)
        connect(client, DENIED_BY_RULE, 2)
        attachment.poll_events(0.5)
        same = tmp_path / "same.ebm"
        same.write_text(policy(mesh))
        done = ebmesh_cli("diff", str(same), "--cgroup", str(root))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "no difference" in done.stdout and "2 checked, 0 would change" in done.stdout

        edited = tmp_path / "edited.ebm"
        edited.write_text(
            policy(
                mesh,
                f"allow client -> server port {ALLOWED}\n"
                f"allow client -> {SERVER} port {DENIED_BY_RULE}",
            )
        )
        programs = {
            t: query_cgroup(root, t)
            for t in (AttachType.CGROUP_INET4_CONNECT, AttachType.CGROUP_INET6_CONNECT)
        }
        done = ebmesh_cli("diff", str(edited), "--cgroup", str(root))
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"- rule (running, line 9): deny client -> {SERVER} port {DENIED_BY_RULE}" in (
            done.stdout
        )
        assert f"+ rule ({edited}:9): allow client -> {SERVER} port {DENIED_BY_RULE}" in done.stdout
        assert "1 would change verdict" in done.stdout
        assert f"{SERVER}:{DENIED_BY_RULE}" in done.stdout and "DENY by rule 3" in done.stdout

        done = ebmesh_cli("diff", str(edited), "--cgroup", str(root), "-o", "json")
        assert done.returncode == 1
        result = json.loads(done.stdout)
        assert result["differs"] is True
        assert [r["text"] for r in result["rules"]["removed"]] == [
            f"deny client -> {SERVER} port {DENIED_BY_RULE}"
        ]
        (changed,) = result["flows"]["changed"]
        assert changed["verdict"] == {"running": "deny", "new": "allow"} and changed["seen"] == 2
        assert changed["flow"]["destination"]["port"] == DENIED_BY_RULE

        dry = ebmesh_cli("apply", str(edited), "--cgroup", str(root), "--dry-run")
        assert dry.returncode == 1 and "1 would change verdict" in dry.stdout, dry.stderr

        # nothing changed: the same programs, the same verdict
        assert {t: query_cgroup(root, t) for t in programs} == programs
        assert connect(client, DENIED_BY_RULE, 1) == {str(errno.EPERM): 1}
        assert registry.on_cgroup(root).digest == compiled.image.digest

        broken = tmp_path / "broken.ebm"
        broken.write_text("mesh x { allow nobody -> 1.2.3.4 port 80 }")
        done = ebmesh_cli("diff", str(broken), "--cgroup", str(root))
        assert done.returncode == 2 and "nobody" in done.stderr

    done = ebmesh_cli("diff", str(same), "--cgroup", str(root))  # nothing runs there now
    assert done.returncode == 1 and "nothing runs on" in done.stdout
    done = ebmesh_cli("diff", str(same), "--cgroup", str(root / "nope"))
    assert done.returncode == 2


def test_recent_flows_decode_with_the_names_recorded_beside_the_record(world):
    root, client, mesh = world
    compiled = ebmesh.compile(policy(mesh))
    with compiled.attach(root) as attachment:
        attachment.serve_events()
        connect(client, DENIED_BY_RULE, 1)
        attachment.poll_events(0.5)
        record = registry.on_cgroup(root)
        names = registry.read_policy(record.cgroup_id)
        assert names.digest == compiled.image.digest and names.name_of(1) == "client"
        stream = event_hub.EventStream(record, since_ns=0)
        (event,) = [
            decode_event(r, names)
            for i in stream
            if isinstance(i, bytes)
            for r in event_hub.records_of(i)
        ]
        assert event.rule_id == 3 and event.rule.text.strip().startswith("deny client")
    assert registry.read_policy(record.cgroup_id) is None  # removed with the record
