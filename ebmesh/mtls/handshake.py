"""The authentication handshake between two authenticators, over one TCP connection.

1. The client connects to the listener (port 4250) and starts TLS 1.3 with its
   workload's SVID as client certificate and, as server name (SNI), the digest
   of the SPIFFE ID it wants to reach (`spiffe.server_name`). The listener
   picks the SVID of the local workload with that ID, or refuses the handshake
   (alert `unrecognized_name`). Both sides' OpenSSL verify the other's chain
   against bundle.pem.
2. The client checks the listener's SVID: exactly one URI SAN, the very SPIFFE
   ID it asked for, not revoked. Then it sends one JSON line, its role in the
   pair: `{"v": 1, "role": "source"}` (the usual case: the client's workload
   connects to the listener's) or `"destination"` (a host whose ingress needs
   the pair asks the source's host), or `{"v": 1, "refuse": REASON, "detail":
   ...}` when the listener's certificate failed its checks.
3. The listener checks the client's SVID the same way (its SPIFFE ID must be a
   workload of the policy), records the pair (bound to the client's address)
   and answers `{"ok": true, "expires_at": T}` or `{"ok": false, "reason":
   REASON, "detail": ...}`. The client records the pair on `ok` only.

Both sides compute the same lifetime: until the earlier of the two leaf
certificates' expiry. The exchange after the handshake is what lets the
client know the listener accepted its certificate: in TLS 1.3 a client's
handshake completes before the server has checked the client certificate.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import json
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509

from ebmesh.mtls import certificates as certs
from ebmesh.mtls import spiffe, tls
from ebmesh.mtls.reasons import AuthFailure, Reason, failure_from_ssl
from ebmesh.mtls.store import Svid

PROTOCOL_VERSION = 1
_MAX_LINE = 4096


class Role(enum.Enum):
    """The client's part in the pair it authenticates."""

    SOURCE = "source"
    DESTINATION = "destination"


@dataclass(frozen=True)
class PeerCertificate:
    """The peer's leaf certificate, once OpenSSL verified its chain."""

    spiffe_id: str
    fingerprint: str
    not_after: float
    der: bytes


@dataclass(frozen=True)
class Authenticated:
    """A handshake that succeeded on this side: this side's SVID, and the peer's."""

    own: Svid
    peer: PeerCertificate
    own_is_source: bool  # this side's workload is the pair's source

    @property
    def expires_at(self) -> float:
        return min(self.own.not_after, self.peer.not_after)

    @property
    def source_id(self) -> str:
        return self.own.spiffe_id if self.own_is_source else self.peer.spiffe_id

    @property
    def destination_id(self) -> str:
        return self.peer.spiffe_id if self.own_is_source else self.own.spiffe_id


@functools.lru_cache(maxsize=4096)
def parse_certificate(der: bytes) -> tuple[x509.Certificate, str]:
    """A peer's certificate and its fingerprint, parsed once: the same few certificates
    come back in handshake after handshake."""
    certificate = x509.load_der_x509_certificate(der)
    return certificate, certs.fingerprint_der(der)


def read_peer(der: bytes | None, whose: str) -> PeerCertificate:
    """The peer's SVID as OpenSSL handed it over (DER), or why it is no SVID."""
    if not der:
        raise AuthFailure(Reason.NOT_AN_SVID, f"{whose} side presented no certificate")
    certificate, fingerprint = parse_certificate(der)
    spiffe_id = certs.spiffe_id_of_svid(certificate, whose)
    return PeerCertificate(spiffe_id, fingerprint, certs.not_after(certificate), der)


def _send(connection: ssl.SSLSocket, message: dict) -> None:
    connection.sendall(json.dumps(message).encode() + b"\n")


def _receive(connection: ssl.SSLSocket, whose: str) -> dict:
    data = b""
    while b"\n" not in data:
        if len(data) > _MAX_LINE:
            raise AuthFailure(Reason.PROTOCOL, f"{whose} message is too long")
        chunk = connection.recv(_MAX_LINE)
        if not chunk:
            raise AuthFailure(Reason.PROTOCOL, f"{whose} side closed the connection early")
        data += chunk
    try:
        message = json.loads(data.split(b"\n", 1)[0])
    except ValueError:
        raise AuthFailure(Reason.PROTOCOL, f"{whose} message is not JSON") from None
    if not isinstance(message, dict):
        raise AuthFailure(Reason.PROTOCOL, f"{whose} message is not a JSON object")
    return message


def _refusal(message: dict, whose: str) -> AuthFailure:
    """The peer's refusal, as it stated it: its reasons are about our certificate."""
    detail = str(message.get("detail", ""))[:500]
    return AuthFailure(
        Reason.PEER_REFUSED,
        f"{whose} side refused: {message.get('refuse') or message.get('reason')}: {detail}",
    )


def _guarded(whose: str):
    """Turn socket and TLS errors of a handshake step into AuthFailures."""

    def wrap(step):
        @functools.wraps(step)
        def run(*arguments, **keywords):
            try:
                return step(*arguments, **keywords)
            except ssl.SSLError as error:
                raise failure_from_ssl(error, whose) from None
            except TimeoutError:
                raise AuthFailure(Reason.PROTOCOL, f"{whose} side did not answer in time") from None
            except OSError as error:
                raise AuthFailure(Reason.PROTOCOL, f"connection to {whose} side: {error}") from None

        return run

    return wrap


@_guarded("the listener's")
def initiate(
    sock: socket.socket,
    context: ssl.SSLContext,
    own: Svid,
    expected_peer: str,
    role: Role,
    check_peer: Callable[[PeerCertificate], None],
    timeout: float,
) -> Authenticated:
    """The client's side, on a connected socket: `own` is presented, the listener must be
    `expected_peer`. `check_peer` raises AuthFailure for a peer this side refuses."""
    sock.settimeout(timeout)
    with context.wrap_socket(sock, server_hostname=spiffe.server_name(expected_peer)) as connection:
        try:
            peer = read_peer(connection.getpeercert(binary_form=True), "the listener's")
            if peer.spiffe_id != expected_peer:
                raise AuthFailure(
                    Reason.WRONG_SPIFFE_ID,
                    f"the listener presented an SVID of {peer.spiffe_id}, not of {expected_peer}",
                )
            check_peer(peer)
        except AuthFailure as failure:
            with contextlib.suppress(OSError):  # the refusal is a courtesy; the failure stands
                _send(
                    connection,
                    {
                        "v": PROTOCOL_VERSION,
                        "refuse": failure.reason.value,
                        "detail": failure.detail,
                    },
                )
            raise
        _send(connection, {"v": PROTOCOL_VERSION, "role": role.value})
        answer = _receive(connection, "the listener's")
        if answer.get("ok") is not True:
            if answer.get("reason") in {r.value for r in _PASSED_ON}:
                raise AuthFailure(
                    Reason(answer["reason"]), f"the listener: {answer.get('detail', '')}"
                )
            raise _refusal(answer, "the listener's")
        return Authenticated(own, peer, own_is_source=role is Role.SOURCE)


# Reasons of a listener's refusal that are about the pair, not about our certificate:
# they keep their code on the client side.
_PASSED_ON = {Reason.NOT_IN_POLICY, Reason.UNKNOWN_DESTINATION}


class ServedWorkloads:
    """What a listener answers for: the SVID and server context of each local SPIFFE ID.

    Immutable: a rotation builds a new one and the listener switches to it, while
    handshakes in flight finish with the old.
    """

    def __init__(self, bundle_pem: str, served: dict[str, tuple[Svid, ssl.SSLContext]]):
        self._by_server_name = {spiffe.server_name(i): entry for i, entry in served.items()}
        self._chosen = threading.local()
        self.context = tls.server_context(None, bundle_pem)
        self.context.sni_callback = self._choose

    def _choose(self, connection, server_name, initial_context):
        entry = self._by_server_name.get(server_name or "")
        self._chosen.asked, self._chosen.entry, self._chosen.name = True, entry, server_name
        if entry is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        connection.context = entry[1]
        return None

    def accept(self, sock: socket.socket) -> tuple[ssl.SSLSocket, Svid]:
        """The listener's TLS handshake on an accepted socket, and the SVID it presented."""
        self._chosen.asked, self._chosen.entry, self._chosen.name = False, None, None
        try:
            connection = self.context.wrap_socket(sock, server_side=True)
        except ssl.SSLError as error:
            raise self.failure(error) from None
        if self._chosen.entry is None:  # OpenSSL asks even without SNI; this is a safeguard
            connection.close()
            raise AuthFailure(Reason.UNKNOWN_DESTINATION, "the client named no workload")
        return connection, self._chosen.entry[0]

    def accept_in_memory(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> ssl.SSLObject:
        """The listener's half over memory buffers (see `mutual_in_memory`)."""
        self._chosen.asked, self._chosen.entry, self._chosen.name = False, None, None
        return self.context.wrap_bio(incoming, outgoing, server_side=True)

    @property
    def chosen(self) -> Svid | None:
        """The SVID the last handshake of this thread presented."""
        return self._chosen.entry[0] if self._chosen.entry else None

    def failure(self, error: ssl.SSLError) -> AuthFailure:
        """What a failed handshake of the listener's half means."""
        if self._chosen.asked and self._chosen.entry is None:
            return AuthFailure(
                Reason.UNKNOWN_DESTINATION,
                f"no local workload answers to server name {self._chosen.name!r}",
            )
        return failure_from_ssl(error, "the client's")


@_guarded("the client's")
def answer(
    sock: socket.socket,
    served: ServedWorkloads,
    check_peer: Callable[[PeerCertificate], None],
    admit: Callable[[Authenticated], None],
    timeout: float,
) -> Authenticated:
    """The listener's side, on an accepted socket. `admit` records the pair (or raises
    AuthFailure) before the client is told it may record it too."""
    sock.settimeout(timeout)
    connection, own = served.accept(sock)
    with connection:
        request = None
        try:
            peer = read_peer(connection.getpeercert(binary_form=True), "the client's")
            check_peer(peer)
            request = _receive(connection, "the client's")
            if "refuse" in request:
                raise _refusal(request, "the client's")
            if request.get("v") != PROTOCOL_VERSION or request.get("role") not in {
                r.value for r in Role
            }:
                raise AuthFailure(
                    Reason.PROTOCOL, f"the client's request {request!r} is not understood"
                )
            # The client names its own role; this side's is the other.
            result = Authenticated(own, peer, own_is_source=request["role"] == "destination")
            admit(result)
        except AuthFailure as failure:
            if request is None or "refuse" not in request:
                with contextlib.suppress(OSError):
                    _send(
                        connection,
                        {"ok": False, "reason": failure.reason.value, "detail": failure.detail},
                    )
            raise
        _send(connection, {"ok": True, "expires_at": result.expires_at})
        return result


def mutual_in_memory(
    context: ssl.SSLContext,
    own: Svid,
    expected_peer: str,
    role: Role,
    served: ServedWorkloads,
    check_peer: Callable[[PeerCertificate], None],
) -> Authenticated:
    """The handshake of two local workloads: both halves in this thread, over memory.

    The same TLS 1.3 handshake as between hosts (the same contexts, server name and
    checks on both sides), with OpenSSL's records passed between the two halves
    in memory instead of through a socket: there is no one else to tell, so the
    JSON exchange is not needed either. Once both halves have finished, each has
    verified the other's chain; then each leaf is checked as `initiate` and `answer`
    check them.
    """
    to_listener, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(
        to_client, to_listener, server_hostname=spiffe.server_name(expected_peer)
    )
    listener = served.accept_in_memory(to_listener, to_client)
    client_done = listener_done = False
    while not (client_done and listener_done):
        if not client_done:
            try:
                client.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as error:  # this half's own verification
                raise failure_from_ssl(error, "the listener's") from None
        if not listener_done:
            try:
                listener.do_handshake()
                listener_done = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as error:  # it runs second: a refusal is seen here first
                raise served.failure(error) from None
        if not (to_listener.pending or to_client.pending or (client_done and listener_done)):
            raise AuthFailure(Reason.PROTOCOL, "the in-memory handshake stalled")
    peer = read_peer(client.getpeercert(binary_form=True), "the listener's")
    if peer.spiffe_id != expected_peer:
        raise AuthFailure(
            Reason.WRONG_SPIFFE_ID,
            f"the listener presented an SVID of {peer.spiffe_id}, not of {expected_peer}",
        )
    check_peer(peer)
    check_peer(read_peer(listener.getpeercert(binary_form=True), "the client's"))
    return Authenticated(own, peer, own_is_source=role is Role.SOURCE)
