"""A test process that lives in a cgroup (and maybe a network namespace) and
opens real sockets on command.

The parent writes one JSON command per line on stdin and reads one JSON
answer per line on stdout. Socket errors come back as errno numbers, with
how long the call took, so tests can assert "EPERM, at once".
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import socket
import sys
import threading
import time

_listeners: dict[int, socket.socket] = {}
_accepted: dict[int, int] = {}
_lock = threading.Lock()


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _serve_tcp(key: int, server: socket.socket) -> None:
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with _lock:
            _accepted[key] = _accepted.get(key, 0) + 1
        try:
            conn.sendall(b"hello\n")
        except OSError:
            pass
        conn.close()


def _serve_udp(key: int, server: socket.socket) -> None:
    while True:
        try:
            data, peer = server.recvfrom(2048)
        except OSError:
            return
        with _lock:
            _accepted[key] = _accepted.get(key, 0) + 1
        try:
            if data == b"who":  # which server answered: for load-balancing tests
                host, port = server.getsockname()[:2]
                server.sendto(f"iam:{host}:{port}".encode(), peer)
                continue
            server.sendto(b"echo:" + data, peer)
        except OSError:
            pass


def _echo(conn: socket.socket) -> None:
    """Send back everything, then half-close when the client has."""
    try:
        while True:
            data = conn.recv(1 << 16)
            if not data:
                break
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        conn.close()


def _serve_echo(key: int, server: socket.socket) -> None:
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with _lock:
            _accepted[key] = _accepted.get(key, 0) + 1
        threading.Thread(target=_echo, args=(conn,), daemon=True).start()


def listen_echo(address: str, port: int) -> dict:
    """A TCP echo server: each connection gets back what it sent, then EOF after its EOF."""
    server = socket.socket(_family(address), socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((address, port))
    server.listen(128)
    key = server.fileno()
    _listeners[key] = server
    threading.Thread(target=_serve_echo, args=(key, server), daemon=True).start()
    return {"ok": True, "id": key, "port": server.getsockname()[1]}


def exchange(address: str, port: int, sizes: list, timeout: float = 10.0) -> dict:
    """Over one connection, write messages of `sizes` bytes (random contents), half-close,
    read the echo to EOF: whether every byte came back in order, and how many."""
    import hashlib

    sock = socket.socket(_family(address), socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sent, received = hashlib.sha256(), hashlib.sha256()
    total_in = total_out = 0
    try:
        sock.connect((address, port))
        reader_done = threading.Event()
        box = {}

        def read_all():
            nonlocal total_in
            try:
                while True:
                    data = sock.recv(1 << 16)
                    if not data:
                        break
                    received.update(data)
                    total_in += len(data)
            except OSError as exc:
                box["error"] = exc.errno
            reader_done.set()

        reader = threading.Thread(target=read_all, daemon=True)
        reader.start()
        for size in sizes:
            payload = os.urandom(size)
            sent.update(payload)
            total_out += size
            sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        reader_done.wait(timeout)
        return {
            "ok": "error" not in box and reader_done.is_set(),
            "intact": sent.digest() == received.digest(),
            "sent": total_out,
            "received": total_in,
            "error": box.get("error"),
        }
    except OSError as exc:
        return {"ok": False, "errno": exc.errno}
    finally:
        sock.close()


def exchange_many(address: str, port: int, connections: list, timeout: float = 20.0) -> dict:
    """`exchange` over several connections at once (one thread each): their results."""
    results: list = [None] * len(connections)

    def one(index: int) -> None:
        results[index] = exchange(address, port, connections[index], timeout)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(connections))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"ok": True, "results": results}


def listen(protocol: str, address: str, port: int) -> dict:
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    server = socket.socket(_family(address), kind)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((address, port))
    if protocol == "tcp":
        server.listen(128)
    key = server.fileno()
    _listeners[key] = server
    target = _serve_tcp if protocol == "tcp" else _serve_udp
    threading.Thread(target=target, args=(key, server), daemon=True).start()
    return {"ok": True, "id": key, "port": server.getsockname()[1]}


class _ListenerGroup:
    """Many TCP listeners served by ONE thread (epoll): accept, send the greeting, close.
    A thread per listener, as `listen` does, would be 1,000 threads for 1,000 backends."""

    def __init__(self, endpoints: list, backlog: int):
        self.selector = selectors.DefaultSelector()
        self.counts: dict[str, int] = {}
        self.sockets: list[socket.socket] = []
        self._wake_read, self._wake_write = socket.socketpair()
        self.selector.register(self._wake_read, selectors.EVENT_READ, None)
        try:
            for address, port in endpoints:
                server = socket.socket(_family(address), socket.SOCK_STREAM)
                self.sockets.append(server)
                server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                server.bind((address, port))
                server.listen(backlog)
                server.setblocking(False)
                name = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
                self.counts[name] = 0
                self.selector.register(server, selectors.EVENT_READ, name)
        except OSError:
            self.close()
            raise
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            for key, _ in self.selector.select():
                if key.data is None:  # woken by close()
                    return
                while True:
                    try:
                        conn, _ = key.fileobj.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        return
                    with _lock:
                        self.counts[key.data] += 1
                    try:
                        conn.sendall(b"hello\n")
                    except OSError:
                        pass
                    conn.close()

    def close(self) -> None:
        self._wake_write.send(b"x")
        if getattr(self, "thread", None) is not None:
            self.thread.join(timeout=2)
        for server in self.sockets:
            server.close()
        self.selector.close()
        self._wake_read.close()
        self._wake_write.close()


_groups: dict[int, _ListenerGroup] = {}


def listen_many(endpoints: list, backlog: int = 128) -> dict:
    """TCP listeners on every [address, port] of `endpoints`, all served by one thread."""
    group = _ListenerGroup(endpoints, backlog)
    key = group._wake_read.fileno()
    _groups[key] = group
    return {"ok": True, "id": key, "listeners": len(group.sockets)}


def accepted_many(id: int) -> dict:
    """Connections each listener of a `listen_many` group has taken, by "ADDRESS:PORT"."""
    with _lock:
        return {"ok": True, "counts": dict(_groups[id].counts)}


def close_many(id: int) -> dict:
    group = _groups.pop(id, None)
    if group is not None:
        group.close()
    return {"ok": True}


def _bind_source(sock: socket.socket, source: str | None, port: int = 0) -> None:
    if source:
        if port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((source, port))


# An IPv6 destination options header holding one PadN option: 8 bytes.
_PADDING_DESTINATION_OPTIONS = bytes([0, 0, 1, 4, 0, 0, 0, 0])
_NO_OPERATION_IP_OPTIONS = bytes([1, 1, 1, 0])  # NOP, NOP, NOP, end of options


def connect(
    address: str,
    port: int,
    source: str | None = None,
    timeout: float = 2.0,
    read: bool = True,
    destination_options: bool = False,
    source_port: int = 0,
    ip_options: bool = False,
) -> dict:
    sock = socket.socket(_family(address), socket.SOCK_STREAM)
    sock.settimeout(timeout)
    started = time.monotonic()
    try:
        if destination_options:  # every packet, the SYN included, carries an extension header
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, _PADDING_DESTINATION_OPTIONS)
        if ip_options:  # every IPv4 header, the SYN's included, is longer than 20 bytes
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, _NO_OPERATION_IP_OPTIONS)
        _bind_source(sock, source, source_port)
        sock.connect((address, port))
        local = sock.getsockname()
        peer = sock.getpeername()
        greeting = sock.recv(64).decode() if read else ""
        return {
            "ok": True,
            "seconds": time.monotonic() - started,
            "local": list(local[:2]),
            "peer": list(peer[:2]),
            "greeting": greeting,
        }
    except TimeoutError:
        return {"ok": False, "errno": errno.ETIMEDOUT, "seconds": time.monotonic() - started}
    except OSError as exc:
        return {"ok": False, "errno": exc.errno, "seconds": time.monotonic() - started}
    finally:
        sock.close()


def retry_connect(address: str, port: int, retry_after: float, within: float = 2.0) -> dict:
    """Connect as an application that retries: again `retry_after` seconds after each
    failure, until one passes or `within` seconds have gone. Every attempt's outcome
    and duration, and when the first one passing started, from the first's start."""
    attempts = []
    started = time.monotonic()
    while True:
        began = time.monotonic()
        result = connect(address, port, timeout=0.5)
        attempts.append(
            {
                "at": began - started,
                "ok": result["ok"],
                "errno": result.get("errno"),
                "seconds": result["seconds"],
            }
        )
        if result["ok"] or time.monotonic() - started > within:
            return {"ok": result["ok"], "attempts": attempts}
        time.sleep(retry_after)


def connect_many(
    address: str,
    port: int,
    count: int,
    source: str | None = None,
    timeout: float = 2.0,
    read: bool = True,
) -> dict:
    """`count` TCP connects in a loop, here in the agent (no JSON round trip per
    connect): each binds `source` if given, connects, reads the greeting if
    `read`, and closes. For benchmarks: returns how many succeeded, the errnos
    of the others, and the wall time of the whole loop."""
    family = _family(address)
    target = (address, port)
    bind_to = (source, 0) if source else None
    succeeded = 0
    errnos: dict[str, int] = {}
    started = time.monotonic()
    for _ in range(count):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            if bind_to is not None:
                sock.bind(bind_to)
            sock.connect(target)
            if read:
                sock.recv(64)
            succeeded += 1
        except TimeoutError:  # socket.timeout is TimeoutError since Python 3.10
            errnos[str(errno.ETIMEDOUT)] = errnos.get(str(errno.ETIMEDOUT), 0) + 1
        except OSError as exc:
            errnos[str(exc.errno)] = errnos.get(str(exc.errno), 0) + 1
        finally:
            sock.close()
    return {
        "ok": succeeded == count,
        "count": count,
        "succeeded": succeeded,
        "errnos": errnos,
        "seconds": time.monotonic() - started,
    }


def send(
    address: str,
    port: int,
    source: str | None = None,
    timeout: float = 1.0,
    connected: bool = False,
    payload: str = "ping",
) -> dict:
    sock = socket.socket(_family(address), socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    started = time.monotonic()
    try:
        _bind_source(sock, source)
        if connected:
            sock.connect((address, port))
            sock.send(payload.encode())
        else:
            sock.sendto(payload.encode(), (address, port))
        sent = time.monotonic() - started
        try:
            data, peer = sock.recvfrom(2048)
            return {"ok": True, "seconds": sent, "reply": data.decode(), "peer": list(peer[:2])}
        except TimeoutError:
            return {"ok": True, "seconds": sent, "reply": None}
    except OSError as exc:
        return {"ok": False, "errno": exc.errno, "seconds": time.monotonic() - started}
    finally:
        sock.close()


def ask_many(
    address: str, port: int, count: int, source: str | None = None, timeout: float = 1.0
) -> dict:
    """`count` datagrams "who" from ONE unconnected UDP socket; the answers and who sent them."""
    sock = socket.socket(_family(address), socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    answers = []
    try:
        _bind_source(sock, source)
        for _ in range(count):
            sock.sendto(b"who", (address, port))
            data, peer = sock.recvfrom(2048)
            answers.append([data.decode(), list(peer[:2])])
        return {"ok": True, "answers": answers}
    except TimeoutError:
        return {"ok": False, "errno": errno.ETIMEDOUT, "answers": answers}
    except OSError as exc:
        return {"ok": False, "errno": exc.errno, "answers": answers}
    finally:
        sock.close()


def stream_udp(address: str, port: int, seconds: float, every: float) -> dict:
    """Wait for one datagram on (address, port), then send to its sender every `every`
    seconds for `seconds`: a stream that one request started. The errnos of failed sends."""
    sock = socket.socket(_family(address), socket.SOCK_DGRAM)
    sock.settimeout(10.0)
    sent, errnos = 0, []
    try:
        sock.bind((address, port))
        _, peer = sock.recvfrom(2048)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                sock.sendto(b"tick", peer)
                sent += 1
            except OSError as exc:
                errnos.append(exc.errno)
            time.sleep(every)
        return {"ok": not errnos, "sent": sent, "errnos": errnos}
    except OSError as exc:
        return {"ok": False, "errno": exc.errno, "sent": sent, "errnos": errnos}
    finally:
        sock.close()


def receive_stream(address: str, port: int, source: str, quiet: float) -> dict:
    """Ask (address, port) for a stream (again every 0.2 s until the first answer: the
    server may not be bound yet), then count what comes back until `quiet` seconds
    pass without any."""
    sock = socket.socket(_family(address), socket.SOCK_DGRAM)
    sock.settimeout(0.2)
    received = 0
    try:
        _bind_source(sock, source)
        for _ in range(50):
            sock.sendto(b"start", (address, port))
            try:
                sock.recvfrom(2048)
                received = 1
                break
            except TimeoutError:
                continue
        sock.settimeout(quiet)
        while received:
            try:
                sock.recvfrom(2048)
                received += 1
            except TimeoutError:
                break
        return {"ok": True, "received": received}
    except OSError as exc:
        return {"ok": False, "errno": exc.errno, "received": received}
    finally:
        sock.close()


def udp_peers(targets: list, source: str | None = None) -> dict:
    """Connect ONE UDP socket to each (address, port) in turn; its peer (getpeername) after each."""
    sock = socket.socket(_family(targets[0][0]), socket.SOCK_DGRAM)
    try:
        _bind_source(sock, source)
        peers = []
        for address, port in targets:
            sock.connect((address, port))
            peers.append(list(sock.getpeername()[:2]))
        return {"ok": True, "peers": peers}
    except OSError as exc:
        return {"ok": False, "errno": exc.errno}
    finally:
        sock.close()


def _probe_source(family: int, address: str, port: int) -> str:
    """The source address the kernel picks for (address, port) from an unbound socket."""
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((address, port))
        return probe.getsockname()[0]


def probe_many(flows: list, timeout: float = 0.25) -> dict:
    """Try every flow at once: [protocol, address, port, bind address or None] each.

    TCP connects are non-blocking and UDP datagrams are sent unconnected, all
    before waiting, so that the ones that go unanswered time out together.
    Each result: outcome ("allowed", "denied at once", "dropped", or "odd: ..."),
    and the local address and port the flow went from."""
    selector = selectors.DefaultSelector()
    results: list = [None] * len(flows)
    sockets = []
    started = time.monotonic()
    for index, (protocol, address, port, source) in enumerate(flows):
        family = _family(address)
        kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(family, kind)
        sockets.append(sock)
        sock.setblocking(False)
        try:
            sock.bind(
                (source, 0) if source else (("::" if family == socket.AF_INET6 else "0.0.0.0"), 0)
            )
            local = source or _probe_source(family, address, port)
            if protocol == "tcp":
                code = sock.connect_ex((address, port))
                if code not in (0, errno.EINPROGRESS):
                    raise OSError(code, os.strerror(code))
                selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, index)
            else:
                sock.sendto(b"ping", (address, port))
                selector.register(sock, selectors.EVENT_READ, index)
            results[index] = {"outcome": "dropped", "local": [local, sock.getsockname()[1]]}
        except OSError as exc:
            outcome = "denied at once" if exc.errno == errno.EPERM else f"odd: {exc}"
            results[index] = {"outcome": outcome, "local": [source, sock.getsockname()[1]]}
    pending = {index for index, result in enumerate(results) if result["outcome"] == "dropped"}
    while pending and time.monotonic() - started < timeout:
        for key, _ in selector.select(timeout=max(0.0, timeout - (time.monotonic() - started))):
            index, sock = key.data, key.fileobj
            if index not in pending:
                continue
            protocol = flows[index][0]
            try:
                if protocol == "tcp":
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code:
                        results[index]["outcome"] = f"odd: errno {code}"
                    else:
                        data = sock.recv(64)
                        if not data:
                            continue
                        results[index]["outcome"] = (
                            "allowed" if data == b"hello\n" else f"odd: {data!r}"
                        )
                else:
                    data = sock.recv(2048)
                    results[index]["outcome"] = "allowed" if data == b"echo:ping" else "dropped"
            except BlockingIOError:
                continue
            except OSError as exc:
                results[index]["outcome"] = f"odd: {exc}"
            pending.discard(index)
            selector.unregister(sock)
    for sock in sockets:
        sock.close()
    selector.close()
    return {"ok": True, "results": results}


def accepted(id: int) -> dict:
    with _lock:
        return {"ok": True, "count": _accepted.get(id, 0)}


def close(id: int) -> dict:
    server = _listeners.pop(id, None)
    if server is not None:
        server.close()
    return {"ok": True}


COMMANDS = {
    "listen": listen,
    "connect": connect,
    "connect_many": connect_many,
    "retry_connect": retry_connect,
    "send": send,
    "ask_many": ask_many,
    "udp_peers": udp_peers,
    "stream_udp": stream_udp,
    "receive_stream": receive_stream,
    "probe_many": probe_many,
    "listen_echo": listen_echo,
    "exchange": exchange,
    "exchange_many": exchange_many,
    "accepted": accepted,
    "close": close,
    "listen_many": listen_many,
    "accepted_many": accepted_many,
    "close_many": close_many,
}


def serve(commands: dict, failures: tuple[type[Exception], ...] = ()) -> None:
    """Answer one command per line until `exit`; an OSError (or one of `failures`) is an
    answer, not the end."""
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        name = request.pop("command")
        if name == "exit":
            break
        try:
            answer = commands[name](**request)
        except OSError as exc:
            answer = {"ok": False, "errno": exc.errno, "error": str(exc)}
        except failures as exc:
            answer = {"ok": False, "errno": 0, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    serve(COMMANDS)
