"""The authenticator: one per attachment, it keeps the pairs a policy needs authenticated.

It listens on port 4250 (configurable) and answers, for the local workloads
it has SVIDs for, the handshakes of other hosts' authenticators. It
authenticates every pair of local workloads the policy needs when it starts
(so their first connection already passes), tries the remote pairs whose
host it knows, and authenticates any pair on demand (`request`, for a
connection the kernel refused). It re-authenticates each pair before it
expires, picks up replaced SVIDs and bundles, renews SVIDs at half-life when
it has an issuer, and revokes. Results go to a `PairSink` (the datapath's
map); what happened goes to `AuthEvent`s.

Threads: one listener, one scheduler (timers, polling the identity
directory), a pool of initiators (client halves, and both halves of a local
pair's handshake, which never waits for the listener's pool: a flood of remote
connections cannot starve local pre-authentication) and a pool answering
remote clients.
"""

from __future__ import annotations

import collections
import concurrent.futures
import socket
import ssl
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ebmesh.datapath.parties import IPAddress, Workload
from ebmesh.errors import EbmeshError
from ebmesh.mtls import certificates as certs
from ebmesh.mtls import handshake, tls
from ebmesh.mtls.events import AuthEvent, Outcome
from ebmesh.mtls.handshake import Authenticated, PeerCertificate, Role, ServedWorkloads
from ebmesh.mtls.listener import Listener, peer_address
from ebmesh.mtls.pairs import AuthenticatedPair, Pair, PairSink, PairTable
from ebmesh.mtls.reasons import AuthFailure, Reason
from ebmesh.mtls.store import IdentityStore, Svid, SvidUnavailable

DEFAULT_PORT = 4250
# A pair is authenticated again once this share of its lifetime has passed: with
# 1 h SVIDs renewed at half-life, that leaves a quarter of an hour to succeed.
REFRESH_AT = 0.75
MIN_RETRY_INTERVAL = 1.0  # a refresh that could not reach the peer is retried this often
MAX_EVENTS = 10_000  # kept for poll_events(); the oldest go first
MAX_PENDING_ANSWERS = 256  # remote handshakes queued or running; more are closed at once
_SEEN_PER_IDENTITY = 16  # peer certificates remembered per SPIFFE ID, for revoke()
# Failures that say nothing about the certificates: an existing pair survives them
# until it expires (a peer briefly unreachable must not cut working connections).
_TRANSIENT = {Reason.UNREACHABLE, Reason.PROTOCOL}


class UnknownIdentity(EbmeshError, LookupError):
    """revoke() or renew() named no workload or SPIFFE ID of the policy."""


@dataclass
class _Record:
    expires_at: float
    refresh_at: float | None  # None: the peer initiated it and refreshes it
    fingerprints: frozenset[str]  # both certificates it was made with
    peer_der: bytes


@dataclass(frozen=True)
class StartReport:
    """What `start()` did: how many local pairs are authenticated, the failed handshakes
    (one event each: a handshake also stands for its pair's reverse), and the local
    workloads that have no SVID (they cannot authenticate)."""

    seconds: float
    authenticated: int
    failed: tuple[AuthEvent, ...]
    without_svid: dict[str, str]


def _host_addresses(workload: Workload) -> list[IPAddress]:
    """Where a remote workload's host may be reached: its single addresses (a CIDR names
    no host to dial)."""
    return [p.network_address for p in workload.prefixes if p.num_addresses == 1]


class Authenticator:
    """Authenticates pairs of the policy's identities; see the module's docstring.

    `workloads` are the policy's (`ebmesh.datapath.parties.Workload`: identity,
    name, spiffe_id, is_local, prefixes). `pairs` are the (source, destination)
    identity pairs the policy's mtls rules and `mtls required` workloads need;
    only those are authenticated (None: any pair of the policy's workloads, and
    none pre-authenticated). `listen` are the addresses of the listener (None:
    every address, IPv6 and IPv4; empty: no listener, local pairs only), on
    `port`; other hosts are dialled on `peer_port` (default: `port`, or 4250
    when `port` is 0).
    """

    def __init__(
        self,
        store: IdentityStore | str | Path,
        workloads: Iterable[Workload],
        pairs: Iterable[tuple[int, int]] | None = None,
        *,
        sink: PairSink | None = None,
        listen: Iterable[str] | None = None,
        port: int = DEFAULT_PORT,
        peer_port: int | None = None,
        on_event: Callable[[AuthEvent], None] | None = None,
        handshake_timeout: float = 2.0,
        connect_timeout: float = 1.0,
        reload_interval: float = 1.0,
        retry_after_failure: float = 0.25,
        workers: int = 4,
    ):
        self.store = store if isinstance(store, IdentityStore) else IdentityStore(store)
        self.sink: PairSink = sink if sink is not None else PairTable()
        self._workloads = {w.identity: w for w in workloads}
        self._local = {w.name: w for w in self._workloads.values() if w.is_local}
        self._by_spiffe_id: dict[str, list[int]] = collections.defaultdict(list)
        for workload in self._workloads.values():
            self._by_spiffe_id[workload.spiffe_id].append(workload.identity)
        self._needed = None if pairs is None else frozenset((s, d) for s, d in pairs)
        self._listen = listen
        self._port = port
        self.peer_port = peer_port if peer_port is not None else (port or DEFAULT_PORT)
        self._on_event = on_event
        self.handshake_timeout, self.connect_timeout = handshake_timeout, connect_timeout
        self.reload_interval, self.retry_after_failure = reload_interval, retry_after_failure
        self._workers = workers

        self._lock = threading.RLock()  # state below, and every call of the sink
        self._svids: dict[str, Svid] = {}
        self._without_svid: dict[str, SvidUnavailable] = {}
        self._bundle_pem = ""
        self._contexts: dict[tuple[str, str], tuple[ssl.SSLContext, ssl.SSLContext]] = {}
        self._served: ServedWorkloads | None = None
        self._records: dict[Pair, _Record] = {}
        self._revoked: dict[str, str] = {}
        self._seen: dict[str, dict[str, float]] = collections.defaultdict(dict)
        self._in_flight: dict[Pair, concurrent.futures.Future] = {}
        self._failed_until: dict[Pair, float] = {}
        self._pending_answers = 0
        # Handshakes done, by (side, outcome): "client"/"listener", "authenticated"/"failed"
        # (plain ints, read by the metrics at scrape time).
        self._handshakes: collections.Counter[tuple[str, str]] = collections.Counter()

        self._events: collections.deque[AuthEvent] = collections.deque(maxlen=MAX_EVENTS)
        self._events_ready = threading.Condition()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._listener: Listener | None = None
        self._scheduler: threading.Thread | None = None
        self._initiators = self._answerers = None
        self.started = False

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> StartReport:
        """Load the identities, listen, pre-authenticate the local pairs (returns once they
        are done), then keep everything fresh in the background."""
        if self.started or self._stopping.is_set():
            raise RuntimeError("an authenticator starts once")
        began = time.monotonic()
        self._bundle_pem = self.store.bundle_pem()  # no bundle: IdentityDirectoryError
        self._revoked = self.store.revoked()
        self.store.reload()  # what is on disk now is the baseline of change detection
        self._initiators = concurrent.futures.ThreadPoolExecutor(
            self._workers, "ebmesh-mtls-client"
        )
        self._answerers = concurrent.futures.ThreadPoolExecutor(
            2 * self._workers, "ebmesh-mtls-answer"
        )
        self.started = True
        try:
            self._refresh_svids(self._local)
            if self._listen is None or list(self._listen):
                self._listener = self._open_listener()
            # Remote pairs are tried too, but not waited for: their hosts may be down.
            local = [f for key, f in self._authenticate_needed(self._local) if key.host is None]
            failed = [
                e for e in (f.result() for f in local) if e.outcome is not Outcome.AUTHENTICATED
            ]
        except BaseException:
            self.stop()
            raise
        self._scheduler = threading.Thread(
            target=self._schedule, name="ebmesh-mtls-scheduler", daemon=True
        )
        self._scheduler.start()
        with self._lock:
            authenticated = sum(1 for key in self._records if key.host is None)
        return StartReport(
            seconds=time.monotonic() - began,
            authenticated=authenticated,
            failed=tuple(failed),
            without_svid=self.without_svid(),
        )

    def _open_listener(self) -> Listener:
        if self._listen is not None:
            return Listener(self._listen, self._port, self._accepted)
        try:
            return Listener(["::"], self._port, self._accepted)
        except EbmeshError:
            if socket.has_ipv6 and Path("/proc/net/if_inet6").exists():
                raise
            return Listener(["0.0.0.0"], self._port, self._accepted)  # IPv6 is off here

    def stop(self) -> None:
        """Stop listening and refreshing. Pairs already granted stay in the sink until they
        expire (the datapath checks expiry itself)."""
        self._stopping.set()
        self._wake.set()
        if self._scheduler is not None:
            self._scheduler.join()
        if self._listener is not None:
            self._listener.close()
        for pool in (self._initiators, self._answerers):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self.started = False

    def serve_forever(self) -> None:
        """Run in the foreground until `stop()` (from a signal handler or another thread)."""
        if not self.started:
            self.start()
        self._stopping.wait()

    def __enter__(self) -> Authenticator:
        if not self.started:
            self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The listener's port (the one the kernel chose, for port 0)."""
        return self._listener.port if self._listener else 0

    @property
    def addresses(self) -> list[str]:
        return self._listener.addresses if self._listener else []

    # -- the API ---------------------------------------------------------------------------------

    def request(
        self, src: int, dst: int, peer_host: str | IPAddress | None = None
    ) -> concurrent.futures.Future | None:
        """Authenticate (src, dst) soon: for a connection the kernel refused for want of it.

        Returns at once. `peer_host` is the remote end's address when one workload
        is not local (the destination's for a local source, the source's for a local
        destination); the handshake goes to its port 4250. The Future's result is the
        AuthEvent; None when the same pair is already being authenticated or failed
        less than `retry_after_failure` seconds ago.
        """
        key = self._key(src, dst, peer_host)
        with self._lock:
            if self._failed_until.get(key, 0.0) > time.time():
                return None
        return self._submit(key)

    def authenticate(
        self, src: int, dst: int, peer_host: str | IPAddress | None = None
    ) -> AuthEvent:
        """`request` and wait: the event that says how it went."""
        if not self.started:
            raise RuntimeError("start() the authenticator first")
        key = self._key(src, dst, peer_host)
        future = self._submit(key)
        if future is None:  # already in flight: wait for that one
            with self._lock:
                future = self._in_flight.get(key)
        return future.result() if future is not None else self._authenticate(key)

    def revoke(self, identity: str) -> list[Pair]:
        """Drop every pair with this identity (a SPIFFE ID or a workload name) at once, and
        refuse its current certificates (this host's SVID of it, and every one seen from
        peers) until a new SVID replaces them. Returns the pairs dropped."""
        numbers, spiffe_ids, local_names = self._resolve(identity)
        with self._lock:
            fingerprints = {}
            for name in local_names:
                if name in self._svids:
                    fingerprints[self._svids[name].fingerprint] = self._svids[name].spiffe_id
            for spiffe_id in spiffe_ids:
                fingerprints.update(dict.fromkeys(self._seen.get(spiffe_id, {}), spiffe_id))
            self._revoked.update(fingerprints)
            detail = "revoked"
            try:
                self.store.revoke(fingerprints)
            except OSError as error:
                detail = f"revoked (not written to {self.store.directory}: {error.strerror})"
            for name in local_names:
                if self._svids.pop(name, None) is not None:
                    self._without_svid[name] = SvidUnavailable(
                        name, Reason.REVOKED, "its SVID was revoked; a new one must replace it"
                    )
            self._rebuild_served()
            dropped = [key for key in self._records if key.src in numbers or key.dst in numbers]
            events = [self._drop(key, Outcome.REVOKED, Reason.REVOKED, detail) for key in dropped]
        self._emit_all(events)
        return dropped

    def renew(self, workload: str) -> Svid:
        """Issue a fresh SVID for a local workload now (this directory must have an issuer),
        e.g. after revoke(); its pairs are authenticated again with it, the local ones
        before this returns."""
        if workload not in self._local:
            raise UnknownIdentity(f"no local workload {workload!r} in the policy")
        svid = self.store.issue(workload, self._local[workload].spiffe_id)
        self._after_svid_change(self._refresh_svids({workload: self._local[workload]}))
        # As start(): the local pairs are authenticated again when this returns. A handshake
        # already in flight (one a refused connection asked for, with the revoked SVID) is
        # waited for, and the pair tried again with the new SVID.
        pending = [key for key in self._keys_needed([workload]) if key.host is None]
        deadline = time.monotonic() + self.handshake_timeout + self.connect_timeout
        while pending and time.monotonic() < deadline:
            with self._lock:
                running = [self._in_flight.get(key) for key in pending]
            futures = [f or self._submit(key) for f, key in zip(running, pending)]
            concurrent.futures.wait(
                [f for f in futures if f is not None], timeout=deadline - time.monotonic()
            )
            with self._lock:
                pending = [key for key in pending if key not in self._records]
            if pending:
                time.sleep(0.01)  # a handshake that failed at once: not in a tight loop
        return svid

    def reload(self):
        """Look at the identity directory now instead of at the next poll; returns what
        changed (`store.Changes`)."""
        changes = self.store.reload()
        if changes:
            self._apply(changes)
        return changes

    def authenticated(self) -> list[AuthenticatedPair]:
        """The pairs authenticated now, with their expiry."""
        now = time.time()
        with self._lock:
            return sorted(
                (
                    AuthenticatedPair(key.src, key.dst, key.host, record.expires_at)
                    for key, record in self._records.items()
                    if record.expires_at > now
                ),
                key=lambda p: (p.src, p.dst, str(p.host)),
            )

    def without_svid(self) -> dict[str, str]:
        """Local workloads that cannot authenticate, and why."""
        with self._lock:
            return {name: why.detail for name, why in sorted(self._without_svid.items())}

    def poll_events(self, timeout: float = 0.0) -> list[AuthEvent]:
        """The events since the previous call, waiting at most `timeout` for the first."""
        with self._events_ready:
            if not self._events and timeout > 0:
                self._events_ready.wait(timeout)
            events = list(self._events)
            self._events.clear()
        return events

    # -- identities and contexts ------------------------------------------------------------------

    def _resolve(self, identity: str) -> tuple[set[int], set[str], set[str]]:
        chosen = [w for w in self._workloads.values() if identity in (w.name, w.spiffe_id)]
        if not chosen:
            raise UnknownIdentity(f"no workload or SPIFFE ID {identity!r} in the policy")
        spiffe_ids = {w.spiffe_id for w in chosen}
        numbers = {n for i in spiffe_ids for n in self._by_spiffe_id[i]}
        local_names = {
            w.name for w in self._workloads.values() if w.spiffe_id in spiffe_ids and w.is_local
        }
        return numbers, spiffe_ids, local_names

    def _refresh_svids(self, workloads: dict[str, Workload]) -> list[str]:
        """Read the SVIDs of `workloads` again (issuing where due); the names whose SVID
        changed, appeared or went."""
        loaded = {}
        for name, workload in workloads.items():
            try:
                loaded[name] = self.store.load(name, workload.spiffe_id)
            except SvidUnavailable as unavailable:
                loaded[name] = unavailable
            except EbmeshError as error:  # the directory itself, e.g. half an issuer
                loaded[name] = SvidUnavailable(name, Reason.NO_SVID, str(error))
        changed = []
        with self._lock:
            for name, svid in loaded.items():
                before = self._svids.get(name)
                if isinstance(svid, Svid):
                    self._svids[name] = svid
                    self._without_svid.pop(name, None)
                else:
                    self._svids.pop(name, None)
                    self._without_svid[name] = svid
                after = self._svids.get(name)
                if (before and before.fingerprint) != (after and after.fingerprint):
                    changed.append(name)
            if changed or self._served is None:
                self._rebuild_served()
        return changed

    def _contexts_of(self, svid: Svid) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        """(client, server) contexts presenting `svid`, made once per SVID and bundle."""
        key = (svid.fingerprint, self._bundle_pem)
        if key not in self._contexts:
            self._contexts[key] = (
                tls.client_context(svid, self._bundle_pem),
                tls.server_context(svid, self._bundle_pem),
            )
        return self._contexts[key]

    def _rebuild_served(self) -> None:
        current = {(s.fingerprint, self._bundle_pem) for s in self._svids.values()}
        for key in set(self._contexts) - current:
            del self._contexts[key]
        served = {}
        for svid in self._svids.values():
            served.setdefault(svid.spiffe_id, (svid, self._contexts_of(svid)[1]))
        self._served = ServedWorkloads(self._bundle_pem, served)

    # -- authenticating ---------------------------------------------------------------------------

    def _key(self, src: int, dst: int, peer_host) -> Pair:
        source, destination = self._workloads.get(src), self._workloads.get(dst)
        if (
            source is not None
            and destination is not None
            and source.is_local
            and destination.is_local
        ):
            return Pair(src, dst, None)
        host = peer_host if peer_host is None else peer_address(str(peer_host))
        return Pair(src, dst, host)

    def _authenticate_needed(
        self, workloads: Iterable[str]
    ) -> list[tuple[Pair, concurrent.futures.Future]]:
        """Start authenticating every needed pair involving these local workloads: local
        pairs, and remote ones at each address their host may have."""
        submitted = [(key, self._submit(key)) for key in self._keys_needed(workloads)]
        return [(key, future) for key, future in submitted if future is not None]

    def _keys_needed(self, workloads: Iterable[str]) -> list[Pair]:
        """The pairs the policy needs that involve these local workloads, one per
        handshake (a reverse pair the same handshake grants is left out)."""
        if self._needed is None:
            return []
        names = set(workloads)
        keys = []
        for src, dst in sorted(self._needed):
            source, destination = self._workloads.get(src), self._workloads.get(dst)
            if source is None or destination is None:
                continue
            if not ({source.name, destination.name} & names & self._local.keys()):
                continue
            if source.is_local and destination.is_local:
                keys.append(Pair(src, dst, None))
            elif source.is_local or destination.is_local:
                remote = destination if source.is_local else source
                keys += [Pair(src, dst, host) for host in _host_addresses(remote)]
        chosen: dict[Pair, None] = {}
        for key in keys:  # one handshake serves both directions: skip a reverse already in
            if Pair(key.dst, key.src, key.host) not in chosen:
                chosen[key] = None
        return list(chosen)

    def _directions(self, key: Pair) -> list[Pair]:
        """The pairs one handshake for `key` authenticates: `key`, and its reverse when the
        policy needs that too. The handshake is mutual: it proves each identity to the
        other whichever of them was TLS's client."""
        reverse = Pair(key.dst, key.src, key.host)
        needed = self._needed is None or (reverse.src, reverse.dst) in self._needed
        return [key, reverse] if needed and reverse != key else [key]

    def _submit(self, key: Pair) -> concurrent.futures.Future | None:
        with self._lock:
            if key in self._in_flight or self._stopping.is_set() or not self.started:
                return None
            try:
                future = self._initiators.submit(self._authenticate, key)
            except RuntimeError:  # shutting down
                return None
            covered = [k for k in self._directions(key) if k not in self._in_flight]
            for covered_key in covered:
                self._in_flight[covered_key] = future
        future.add_done_callback(lambda _: self._landed(covered, future))
        return future

    def _landed(self, keys: list[Pair], future: concurrent.futures.Future) -> None:
        with self._lock:
            for key in keys:
                if self._in_flight.get(key) is future:
                    del self._in_flight[key]

    def _authenticate(self, key: Pair) -> AuthEvent:
        """One handshake for `key`, as the client. Runs in the initiator pool."""
        try:
            result = self._handshake(key)
        except AuthFailure as failure:
            event = self._failed(key, failure)
        except Exception as error:  # a bug; reported as an event, the thread survives
            traceback.print_exc(file=sys.stderr)
            event = self._failed(key, AuthFailure(Reason.PROTOCOL, f"internal error: {error!r}"))
        else:
            event = self._granted(self._directions(key), result, initiated=True)
        self._count_handshake("client", event.outcome is Outcome.AUTHENTICATED)
        return event

    def _count_handshake(self, side: str, authenticated: bool) -> None:
        with self._lock:
            self._handshakes[(side, "authenticated" if authenticated else "failed")] += 1

    def handshakes(self) -> dict[tuple[str, str], int]:
        """Handshakes so far by (side, outcome): side "client" (this host asked) or
        "listener" (a remote host asked), outcome "authenticated" or "failed"."""
        with self._lock:
            return dict(self._handshakes)

    def _handshake(self, key: Pair) -> Authenticated:
        source, destination = self._workloads.get(key.src), self._workloads.get(key.dst)
        if source is None or destination is None:
            raise AuthFailure(Reason.UNKNOWN_IDENTITY, "no such identity in the policy")
        if self._needed is not None and (key.src, key.dst) not in self._needed:
            raise AuthFailure(Reason.NOT_IN_POLICY, "no mtls rule of the policy needs this pair")
        if source.is_local:
            own, peer, role = source, destination, Role.SOURCE
        elif destination.is_local:
            own, peer, role = destination, source, Role.DESTINATION
        else:
            raise AuthFailure(Reason.NO_SVID, "neither workload runs on this host")
        if key.host is None and not (source.is_local and destination.is_local):
            raise AuthFailure(
                Reason.UNREACHABLE, f"{peer.name} is not local: its host's address is needed"
            )
        with self._lock:
            svid = self._usable_svid(own.name)
            if source.is_local and destination.is_local:
                self._usable_svid(peer.name)  # else the listener's half could not answer
            client_context = self._contexts_of(svid)[0]
            served = self._served
        if key.host is None:  # both halves here: no port, no address, no second thread
            return handshake.mutual_in_memory(
                client_context, svid, peer.spiffe_id, role, served, self._check_peer
            )
        try:
            sock = socket.create_connection((str(key.host), self.peer_port), self.connect_timeout)
        except OSError as error:
            raise AuthFailure(
                Reason.UNREACHABLE,
                f"no authenticator at {key.host} port {self.peer_port}: {error.strerror or error}",
            ) from None
        with sock:
            _no_delay(sock)
            return handshake.initiate(
                sock,
                client_context,
                svid,
                peer.spiffe_id,
                role,
                self._check_peer,
                self.handshake_timeout,
            )

    def _usable_svid(self, name: str) -> Svid:
        """A local workload's SVID, or the AuthFailure that says why it has none (the lock is
        held)."""
        svid = self._svids.get(name)
        if svid is None:
            why = self._without_svid.get(name)
            raise AuthFailure(
                why.reason if why else Reason.NO_SVID, why.detail if why else f"{name} has no SVID"
            )
        if svid.not_after <= time.time():
            raise AuthFailure(Reason.EXPIRED, f"the SVID of {name} expired")
        return svid

    def _accepted(self, sock: socket.socket, host: IPAddress) -> None:
        """A remote client connected to the listener (runs on the listener's thread)."""
        with self._lock:
            if self._pending_answers >= MAX_PENDING_ANSWERS or self._stopping.is_set():
                sock.close()
                return
            self._pending_answers += 1
        try:
            self._answerers.submit(self._answer_remote, sock, host)
        except RuntimeError:  # shutting down
            sock.close()

    def _answer_remote(self, sock: socket.socket, host: IPAddress) -> None:
        try:
            with sock:
                _no_delay(sock)
                handshake.answer(
                    sock,
                    self._served,
                    self._check_peer,
                    lambda result: self._admit(result, host),
                    self.handshake_timeout,
                )
            self._count_handshake("listener", True)
        except AuthFailure as failure:
            self._count_handshake("listener", False)
            self._emit(
                AuthEvent(
                    time.time(), Outcome.FAILED, None, None, host,
                    reason=failure.reason, detail=failure.detail, side="listener",
                )
            )  # fmt: skip
        except Exception:  # a bug: the listener keeps serving
            traceback.print_exc(file=sys.stderr)
        finally:
            with self._lock:
                self._pending_answers -= 1

    def _check_peer(self, peer: PeerCertificate) -> None:
        """Called by both halves once OpenSSL verified the peer's chain."""
        with self._lock:
            if peer.fingerprint in self._revoked:
                raise AuthFailure(
                    Reason.REVOKED,
                    f"the certificate of {peer.spiffe_id} ({peer.fingerprint[:16]}...) is revoked",
                )
            if peer.spiffe_id not in self._by_spiffe_id:
                raise AuthFailure(
                    Reason.UNKNOWN_IDENTITY, f"{peer.spiffe_id} is no workload of the policy"
                )
            seen = self._seen[peer.spiffe_id]
            seen[peer.fingerprint] = peer.not_after
            if len(seen) > _SEEN_PER_IDENTITY:
                del seen[min(seen, key=seen.get)]

    def _admit(self, result: Authenticated, host: IPAddress) -> None:
        """The listener's half accepted a remote client: record the pairs, before the client
        is told (so both hosts have it once the client does)."""
        forward = [
            (src, dst)
            for src in self._by_spiffe_id[result.source_id]
            for dst in self._by_spiffe_id[result.destination_id]
        ]
        keys = [  # both directions: the handshake is mutual (see _directions)
            Pair(src, dst, host)
            for src, dst in dict.fromkeys(forward + [(d, s) for s, d in forward])
            if self._needed is None or (src, dst) in self._needed
        ]
        if not keys:
            raise AuthFailure(
                Reason.NOT_IN_POLICY,
                f"no mtls rule of this host's policy needs {result.source_id} -> {result.destination_id}",
            )
        event = self._granted(keys, result, initiated=False)
        if event.outcome is not Outcome.AUTHENTICATED:
            raise AuthFailure(event.reason, event.detail)

    # -- recording ----------------------------------------------------------------------------------

    def _granted(self, keys: list[Pair], result: Authenticated, *, initiated: bool) -> AuthEvent:
        now = time.time()
        fingerprints = frozenset({result.own.fingerprint, result.peer.fingerprint})
        expires_at = result.expires_at
        side = "client" if initiated else "listener"
        with self._lock:
            revoked = fingerprints & self._revoked.keys()
            if revoked or expires_at <= now:  # revoked or expired while the handshake was under way
                failure = AuthFailure(
                    Reason.REVOKED if revoked else Reason.EXPIRED,
                    f"a certificate was {'revoked' if revoked else 'expired'} during the handshake",
                )
                events = [e for k in keys for e in self._record_failure(k, failure, side)]
            else:
                lifetime = expires_at - now
                refresh_at = now + max(REFRESH_AT * lifetime, min(MIN_RETRY_INTERVAL, lifetime / 2))
                events = []
                for key in keys:
                    self._records[key] = _Record(
                        expires_at, refresh_at if initiated else None, fingerprints, result.peer.der
                    )
                    self._failed_until.pop(key, None)
                    self.sink.grant(key.src, key.dst, key.host, expires_at)
                    events.append(
                        self._event(key, Outcome.AUTHENTICATED, expires_at=expires_at, side=side)
                    )
        self._emit_all(events)
        return events[0]

    def _failed(self, key: Pair, failure: AuthFailure) -> AuthEvent:
        events = self._record_failure(key, failure, "client")
        self._emit_all(events)
        return events[0]

    def _record_failure(self, key: Pair, failure: AuthFailure, side: str) -> list[AuthEvent]:
        """The FAILED event, and a REVOKED one if an existing pair goes with it (to emit once
        the lock is released)."""
        now = time.time()
        with self._lock:
            self._failed_until[key] = now + self.retry_after_failure
            events = [
                self._event(
                    key, Outcome.FAILED, reason=failure.reason, detail=failure.detail, side=side
                )
            ]
            for direction in self._directions(key):
                record = self._records.get(direction)
                if record is None:
                    continue
                if failure.reason in _TRANSIENT:
                    record.refresh_at = min(now + MIN_RETRY_INTERVAL, record.expires_at)
                else:  # the certificates no longer pass: the pair goes now
                    events.append(
                        self._drop(direction, Outcome.REVOKED, failure.reason, failure.detail)
                    )
        return events

    def _drop(self, key: Pair, outcome: Outcome, reason: Reason | None, detail: str) -> AuthEvent:
        """Remove a pair (the lock is held); the event to emit once it is released."""
        del self._records[key]
        self.sink.revoke(key.src, key.dst, key.host)
        return self._event(key, outcome, reason=reason, detail=detail)

    def _event(self, key: Pair, outcome: Outcome, **fields) -> AuthEvent:
        source, destination = self._workloads.get(key.src), self._workloads.get(key.dst)
        return AuthEvent(
            time=time.time(),
            outcome=outcome,
            src=key.src,
            dst=key.dst,
            host=key.host,
            src_name=source.name if source else None,
            dst_name=destination.name if destination else None,
            **fields,
        )

    def _emit(self, event: AuthEvent) -> None:
        with self._events_ready:
            self._events.append(event)
            self._events_ready.notify_all()
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # the caller's bug must not stop authentication
                traceback.print_exc(file=sys.stderr)

    def _emit_all(self, events: list[AuthEvent]) -> None:
        for event in events:
            self._emit(event)

    # -- keeping fresh ------------------------------------------------------------------------------

    def _schedule(self) -> None:
        next_reload = time.time() + self.reload_interval
        while not self._stopping.is_set():
            now = time.time()
            if now >= next_reload:
                next_reload = now + self.reload_interval
                try:
                    self.reload()
                except Exception:  # a broken file must not stop the timers
                    traceback.print_exc(file=sys.stderr)
            wake = min(next_reload, self._tick(time.time()))
            self._wake.wait(max(0.005, wake - time.time()))
            self._wake.clear()

    def _tick(self, now: float) -> float:
        """Expire, refresh and renew what is due; when the next thing will be."""
        due, expired = [], []
        with self._lock:
            for key, record in self._records.items():
                if record.expires_at <= now:
                    expired.append(key)
                elif (
                    record.refresh_at is not None
                    and record.refresh_at <= now
                    and key not in self._in_flight
                ):
                    due.append(key)
            events = [
                self._drop(k, Outcome.EXPIRED, None, "no fresh handshake in time") for k in expired
            ]
        self._emit_all(events)
        issuer = self.store.issuer() is not None
        with self._lock:
            renewals = {  # due for renewal, or expired (then they go to without_svid)
                name: self._local[name]
                for name, svid in self._svids.items()
                if (issuer and svid.renew_at <= now) or svid.not_after <= now
            }
        for key in due:
            if self._submit(key) is not None:
                with self._lock:
                    if key in self._records:  # not again before this attempt lands
                        self._records[key].refresh_at = now + MIN_RETRY_INTERVAL
        if renewals:
            self._after_svid_change(self._refresh_svids(renewals))
        with self._lock:
            times = [r.expires_at for r in self._records.values()]
            times += [r.refresh_at for r in self._records.values() if r.refresh_at is not None]
            times += [s.renew_at if issuer else s.not_after for s in self._svids.values()]
        # What is overdue (in flight, or a renewal that could not issue) is looked at again
        # at the next reload, not in a busy loop.
        later = now + self.reload_interval
        return min((t if t > now else later for t in times), default=later)

    def _apply(self, changes) -> None:
        """React to what changed in the identity directory."""
        events = []
        names = set(changes.svids) & self._local.keys()
        if changes.bundle or changes.issuer or changes.revoked:
            names = set(self._local)
        bundle = None
        if changes.bundle:
            try:
                bundle_pem, bundle = self.store.bundle_pem(), self.store.bundle()
            except EbmeshError:
                bundle = None  # a bundle being rewritten: keep trusting the last good one
            else:
                with self._lock:
                    self._bundle_pem = bundle_pem
                    self._rebuild_served()
        if changes.revoked:
            with self._lock:
                self._revoked.update(self.store.revoked())
                gone = [
                    k for k, r in self._records.items() if r.fingerprints & self._revoked.keys()
                ]
                events += [
                    self._drop(k, Outcome.REVOKED, Reason.REVOKED, "listed in revoked.txt")
                    for k in gone
                ]
        # The SVIDs first: a pair re-authenticated below must use what is valid now.
        changed = self._refresh_svids({n: self._local[n] for n in names})
        if bundle is not None:
            with self._lock:
                now = time.time()
                for key, record in list(self._records.items()):
                    if record.refresh_at is not None:
                        record.refresh_at = now  # the scheduler re-authenticates it next
                    elif not certs.chains_to([_certificate(record.peer_der)], bundle):
                        # Answered here, the peer's leaf no longer leads to the bundle (or
                        # through intermediates this side never saw): a fresh handshake
                        # decides.
                        events.append(
                            self._drop(
                                key,
                                Outcome.REVOKED,
                                Reason.UNKNOWN_CA,
                                "no longer trusted by bundle.pem",
                            )
                        )
        self._emit_all(events)
        self._after_svid_change(changed)
        self._wake.set()

    def _after_svid_change(self, names: list[str]) -> None:
        """A local SVID changed: authenticate its pairs with it now (rotation), without
        waiting for their refresh."""
        with self._lock:
            names = [n for n in names if n in self._svids]
        if names:
            self._authenticate_needed(names)


def _no_delay(sock: socket.socket) -> None:
    """The exchange is a few small writes each way: with Nagle's algorithm, the one after
    the TLS handshake waits for the peer's delayed ACK (40 ms on Linux)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _certificate(der: bytes):
    return handshake.parse_certificate(der)[0]
