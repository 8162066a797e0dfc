"""The authenticator's TCP listener: accepts connections and hands each to a worker."""

from __future__ import annotations

import contextlib
import ipaddress
import selectors
import socket
import threading
from collections.abc import Callable, Iterable

from ebmesh.datapath.parties import IPAddress
from ebmesh.errors import EnvironmentProblem


def peer_address(text: str) -> IPAddress:
    """An address as the key of a pair: IPv4 peers of a dual-stack socket become IPv4."""
    address = ipaddress.ip_address(text.split("%", 1)[0])
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _bind(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and ipaddress.ip_address(address).is_unspecified:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 peers too
        sock.bind((address, port))
        sock.listen(128)
    except OSError as error:
        sock.close()
        raise EnvironmentProblem(
            f"the mTLS authenticator cannot listen on {address} port {port}: {error.strerror}"
            + ("; another authenticator may hold it: give another port" if port else "")
        ) from None
    return sock


class Listener:
    """Listening sockets on `addresses`, all on one port, served by one thread.

    `handle(sock, peer)` runs for each accepted connection; it must return at
    once (it queues the work, or closes the socket when too much is queued).
    """

    def __init__(
        self,
        addresses: Iterable[str],
        port: int,
        handle: Callable[[socket.socket, IPAddress], None],
    ):
        self._sockets: list[socket.socket] = []
        self._handle = handle
        try:
            for address in addresses:
                # Port 0: the kernel picks one for the first address, the others share it.
                self._sockets.append(_bind(address, port or self.port))
        except BaseException:
            self.close()
            raise
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._thread = threading.Thread(
            target=self._serve, name="ebmesh-mtls-listener", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return self._sockets[0].getsockname()[1] if self._sockets else 0

    @property
    def addresses(self) -> list[str]:
        return [s.getsockname()[0] for s in self._sockets]

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            for sock in self._sockets:
                selector.register(sock, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj is self._wake_reader:
                        return
                    with contextlib.suppress(OSError):  # the peer gave up before accept
                        connection, peer = key.fileobj.accept()
                        self._handle(connection, peer_address(peer[0]))

    def close(self) -> None:
        if hasattr(self, "_thread"):
            self._wake_writer.send(b"x")
            self._thread.join()
            self._wake_reader.close()
            self._wake_writer.close()
            del self._thread
        for sock in self._sockets:
            sock.close()
        self._sockets = []
