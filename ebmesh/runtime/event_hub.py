"""Verdict events for every reader: one hub per attachment reads the ring and fans out.

A BPF ring buffer has one consumer position: two processes reading it would
each get some of the events. So one hub per attachment reads the ring, keeps
a bounded recent history, and serves every reader over a unix socket,
/run/ebmesh/events/<mesh>-<attach cgroup id>.sock (docs/observability.md):

* the process holding the attachment runs the hub when asked
  (`Attachment.serve_events()`; `ebmesh apply` always does, and a pinned
  attachment does when its events are first polled), and reads its own
  events through it too;
* for a pinned attachment no process holds, the first reader (`ebmesh
  events`, `ebmesh diff`) becomes the hub, over the pinned ring, and later
  readers connect to it; when it exits, the next reader to find the socket
  dead takes over. Events that came meanwhile wait in the ring;
* a hub over pinned maps gives way to a process that takes the attachment
  over and serves it (asked to `yield`, it stops; its readers reconnect).

Who is the hub is settled by an exclusive flock on <socket>.lock. Records
travel as the kernel wrote them (struct verdict_event): readers decode and
filter them themselves. A reader that falls behind has its events dropped
and counted, never the hub held up.
"""

from __future__ import annotations

import collections
import ctypes
import fcntl
import json
import os
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ebmesh.datapath import abi
from ebmesh.errors import EbmeshError
from ebmesh.loader import RingBuffer
from ebmesh.runtime import registry

EVENTS_DIR = registry.RECORDS.parent / "events"
RECORD_SIZE = ctypes.sizeof(abi.VerdictEvent)
HISTORY_EVENTS = 65_536  # the recent history a hub keeps, for --since and `diff`
READER_BACKLOG = 8 << 20  # bytes queued for one reader before its events are dropped
LOST_CHECK_SECONDS = 0.1
ATTACHED_CHECK_SECONDS = 1.0

# Frames: kind, payload length, payload.
_HEADER = struct.Struct("<BxxxI")
FRAME_EVENTS = 1  # records, RECORD_SIZE bytes each
FRAME_LOST = 2  # _LOST: lost by the datapath since the last frame, dropped for this reader
FRAME_POLICY = 3  # JSON {"digest"}: the policy was replaced, its names changed
FRAME_END = 4  # the history asked for is sent; no --follow: the hub closes next
_LOST = struct.Struct("<QQ")


class EventsUnavailable(EbmeshError):
    """The events of an attachment cannot be read from here (and why, and what to do)."""


class HubBusy(Exception):
    """Another process serves this attachment's events, or is becoming its hub."""


def socket_path(mesh: str, cgroup_id: int) -> Path:
    return EVENTS_DIR / f"{mesh}-{cgroup_id}.sock"


def record_time_ns(record: bytes | memoryview, offset: int = 0) -> int:
    """A record's CLOCK_MONOTONIC timestamp (its first field)."""
    return int.from_bytes(record[offset : offset + 8], "little")


def frame(kind: int, payload: bytes = b"") -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


# ---- the lock that makes one process the hub -------------------------------------------


class _HubLock:
    """An exclusive flock on <socket>.lock, held as long as the hub serves."""

    def __init__(self, path: Path):
        self.path = path.with_suffix(".lock")
        EVENTS_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise HubBusy(str(path)) from None
            try:  # the file may have been removed by a hub that stopped meanwhile
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    self.fd = fd
                    return
            except FileNotFoundError:
                pass
            os.close(fd)

    def release(self) -> None:
        self.path.unlink(missing_ok=True)  # while held: a waiter re-checks the inode
        os.close(self.fd)


# ---- the hub ---------------------------------------------------------------------------


@dataclass
class _Reader:
    sock: socket.socket
    request: bytes = b""  # until its request line is whole
    follow: bool = False
    started: bool = False
    out: bytearray = None
    dropped: int = 0
    closing: bool = False  # close once `out` is sent

    def __post_init__(self):
        self.out = bytearray()


class OwnEvents:
    """The hub's process's own reader (Attachment.poll_events): a bounded queue, no socket."""

    def __init__(self, capacity: int = HISTORY_EVENTS):
        self._chunks: collections.deque[bytes] = collections.deque()
        self._queued, self._capacity = 0, capacity
        self.dropped = 0
        self._ready = threading.Condition()
        self._signal = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def push(self, chunk: bytes) -> None:
        count = len(chunk) // RECORD_SIZE
        with self._ready:
            if self._queued + count > self._capacity:
                self.dropped += count
                return
            self._chunks.append(chunk)
            self._queued += count
            self._ready.notify()
        os.eventfd_write(self._signal, 1)

    def clear(self) -> None:
        with self._ready:
            self._chunks.clear()
            self._queued = 0

    def take(self, timeout: float) -> list[bytes]:
        """The records queued, waiting up to `timeout` seconds for the first."""
        with self._ready:
            if not self._chunks and timeout > 0:
                self._ready.wait(timeout)
            chunks, self._chunks, self._queued = list(self._chunks), collections.deque(), 0
        try:
            os.eventfd_read(self._signal)
        except BlockingIOError:
            pass
        data = b"".join(chunks)
        return [data[i : i + RECORD_SIZE] for i in range(0, len(data), RECORD_SIZE)]

    def fileno(self) -> int:
        return self._signal

    def close(self) -> None:
        os.close(self._signal)


class EventHub:
    """Reads one attachment's ring buffer and serves its records to every reader.

    `owner`: the process holding the attachment (it gives way to nobody); a hub
    over pinned maps (`owner=False`) stops when an owner asks it to yield."""

    def __init__(
        self,
        path: Path,
        ring_map,
        lost_counter: Callable[[], int],
        *,
        owner: bool,
        still_attached: Callable[[], bool] | None = None,
    ):
        self.path, self.owner = path, owner
        # a hub over pinned maps outlives no detach: it checks, and stops
        self._still_attached = still_attached
        self._lock = _HubLock(path)  # raises HubBusy
        self._source = (ring_map, lost_counter)
        self._pending: list[bytes] = []
        self._history: collections.deque[tuple[int, bytes]] = collections.deque()
        self._history_count = 0
        self._readers: dict[int, _Reader] = {}
        self._own: list[OwnEvents] = []
        self._commands: list[Callable[[], None]] = []
        self._commands_lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stopping = False
        self.yielded = False
        self.received = 0
        try:
            path.unlink(missing_ok=True)  # a socket left by a hub that died
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._listener.bind(str(path))
            self._socket_inode = os.stat(path).st_ino
            os.chmod(path, 0o600)
            self._listener.listen(64)
            self._listener.setblocking(False)
            self._ring = RingBuffer(ring_map, self._pending.append)
            self._lost_seen = lost_counter()
        except BaseException:
            self._lock.release()
            raise
        self._thread = threading.Thread(target=self._serve, name=f"ebmesh-hub-{path.stem}")
        self._thread.daemon = True
        self._thread.start()

    # ---- asked from other threads ----

    def own_reader(self) -> OwnEvents:
        reader = OwnEvents()
        self._call(lambda: self._own.append(reader))
        return reader

    def swap(self, ring_map, lost_counter: Callable[[], int]) -> None:
        """The policy was replaced: read its new ring; the history starts afresh."""
        done = threading.Event()

        def swap():
            self._consume()
            self._ring.close()
            self._source = (ring_map, lost_counter)
            self._ring = RingBuffer(ring_map, self._pending.append)
            self._lost_seen = lost_counter()
            self._history.clear()
            self._history_count = 0
            for own in self._own:
                own.clear()
            self._broadcast(frame(FRAME_POLICY, b"{}"), count=0)
            done.set()

        self._call(swap)
        done.wait(5)

    def stop(self) -> None:
        self._stopping = True
        self._wake()
        if self._thread is not threading.current_thread():
            self._thread.join(5)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _call(self, command: Callable[[], None]) -> None:
        with self._commands_lock:
            self._commands.append(command)
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    # ---- its thread ----

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ, "accept")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        ring_fd = self._ring.epoll_fd
        selector.register(ring_fd, selectors.EVENT_READ, "ring")
        next_lost_check = next_attached_check = 0.0
        try:
            while not self._stopping:
                for key, mask in selector.select(LOST_CHECK_SECONDS):
                    what = key.data
                    if what == "accept":
                        self._accept(selector)
                    elif what == "wake":
                        self._run_commands()
                        if self._ring.epoll_fd != ring_fd:  # swapped
                            selector.unregister(ring_fd)
                            ring_fd = self._ring.epoll_fd
                            selector.register(ring_fd, selectors.EVENT_READ, "ring")
                    elif isinstance(what, _Reader):
                        if mask & selectors.EVENT_READ:
                            self._read_request(selector, what)
                        if mask & selectors.EVENT_WRITE and what.sock.fileno() >= 0:
                            self._flush(selector, what)
                self._consume()
                now = time.monotonic()
                if now >= next_lost_check:
                    next_lost_check = now + LOST_CHECK_SECONDS
                    self._check_lost()
                if self._still_attached is not None and now >= next_attached_check:
                    next_attached_check = now + ATTACHED_CHECK_SECONDS
                    if not self._still_attached():
                        break  # detached: its readers are told when they reconnect
                for reader in list(self._readers.values()):
                    if reader.out or reader.closing:
                        self._flush(selector, reader)
        finally:
            self._shut(selector)

    def _run_commands(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        with self._commands_lock:
            commands, self._commands = self._commands, []
        for command in commands:
            command()

    def _consume(self) -> None:
        self._ring.consume()
        if not self._pending:
            return
        chunk = b"".join(self._pending)
        self._pending.clear()
        count = len(chunk) // RECORD_SIZE
        self.received += count
        self._history.append((record_time_ns(chunk, len(chunk) - RECORD_SIZE), chunk))
        self._history_count += count
        while self._history_count - len(self._history[0][1]) // RECORD_SIZE >= HISTORY_EVENTS:
            self._history_count -= len(self._history.popleft()[1]) // RECORD_SIZE
        for own in self._own:
            own.push(chunk)
        self._broadcast(frame(FRAME_EVENTS, chunk), count)

    def _check_lost(self) -> None:
        try:
            lost = self._source[1]()
        except Exception:  # noqa: BLE001 - a map gone with a detach: nothing more comes
            return
        if lost > self._lost_seen:
            self._broadcast(frame(FRAME_LOST, _LOST.pack(lost - self._lost_seen, 0)), count=0)
            self._lost_seen = lost

    def _broadcast(self, data: bytes, count: int) -> None:
        for reader in self._readers.values():
            if not (reader.started and reader.follow):
                continue
            if count and len(reader.out) >= READER_BACKLOG:
                reader.dropped += count  # too slow a reader: it is told, the hub goes on
                continue
            if reader.dropped and len(reader.out) < READER_BACKLOG // 2:
                reader.out += frame(FRAME_LOST, _LOST.pack(0, reader.dropped))
                reader.dropped = 0
            reader.out += data

    def _accept(self, selector) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            reader = _Reader(sock)
            self._readers[sock.fileno()] = reader
            selector.register(sock, selectors.EVENT_READ, reader)

    def _read_request(self, selector, reader: _Reader) -> None:
        try:
            data = reader.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(selector, reader)
            return
        if reader.started:
            return  # nothing more is asked of a reader once it is served
        reader.request += data
        if b"\n" not in reader.request:
            if len(reader.request) > 4096:
                self._drop(selector, reader)
            return
        try:
            request = json.loads(reader.request.split(b"\n", 1)[0])
        except ValueError:
            self._drop(selector, reader)
            return
        if request.get("yield"):
            if not self.owner:  # an owner serves now: its readers come to it
                self.yielded = True
                self._stopping = True
            self._drop(selector, reader)
            return
        reader.started, reader.follow = True, bool(request.get("follow"))
        reader.out += frame(
            FRAME_EVENTS, self._recent(request.get("since_ns"), request.get("last"))
        )
        reader.out += frame(FRAME_END)
        reader.closing = not reader.follow

    def _recent(self, since_ns: int | None, last: int | None) -> bytes:
        chunks = []
        for last_ns, chunk in self._history:
            if since_ns is not None and last_ns < since_ns:
                continue
            if since_ns is not None and record_time_ns(chunk) < since_ns:
                chunk = b"".join(
                    chunk[i : i + RECORD_SIZE]
                    for i in range(0, len(chunk), RECORD_SIZE)
                    if record_time_ns(chunk, i) >= since_ns
                )
            chunks.append(chunk)
        data = b"".join(chunks)
        if last is not None:
            data = data[len(data) - min(len(data), max(0, int(last)) * RECORD_SIZE) :]
        return data

    def _flush(self, selector, reader: _Reader) -> None:
        while reader.out:
            try:
                sent = reader.sock.send(reader.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(selector, reader)
                return
            del reader.out[:sent]
        if reader.dropped and len(reader.out) < READER_BACKLOG // 2:  # told once it catches up
            reader.out += frame(FRAME_LOST, _LOST.pack(0, reader.dropped))
            reader.dropped = 0
            self._flush(selector, reader)
            return
        if not reader.out and reader.closing:
            self._drop(selector, reader)
            return
        wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if reader.out else 0)
        try:
            selector.modify(reader.sock, wanted, reader)
        except (KeyError, ValueError):
            pass

    def _drop(self, selector, reader: _Reader) -> None:
        self._readers.pop(reader.sock.fileno(), None)
        try:
            selector.unregister(reader.sock)
        except (KeyError, ValueError):
            pass
        reader.sock.close()

    def _shut(self, selector) -> None:
        try:
            self._consume()  # what is read is handed on before the readers go
            for reader in list(self._readers.values()):
                reader.sock.setblocking(True)
                reader.sock.settimeout(1)
                try:
                    reader.sock.sendall(reader.out)
                except OSError:
                    pass
        except Exception:  # noqa: BLE001 - the ring may be gone with its attachment
            pass
        for reader in list(self._readers.values()):
            self._drop(selector, reader)
        selector.close()
        try:
            if os.stat(self.path).st_ino == self._socket_inode:  # not a successor's
                self.path.unlink()
        except OSError:
            pass
        self._listener.close()
        self._ring.close()
        self._wake_r.close()
        self._wake_w.close()
        self._lock.release()


def remove_stale(mesh: str, cgroup_id: int) -> None:
    """After a detach: the socket a killed hub left, if no hub answers there."""
    path = socket_path(mesh, cgroup_id)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
            return  # a hub serves: it stops by itself, and removes it
        except FileNotFoundError:
            return
        except OSError:
            pass
    path.unlink(missing_ok=True)
    if path.with_suffix(".lock").exists():
        try:
            _HubLock(path).release()  # unlinks the lock file nobody holds
        except HubBusy:
            pass


def ask_to_yield(path: Path) -> None:
    """Ask the hub serving `path` to give way (a hub over pinned maps does)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        try:
            sock.connect(str(path))
            sock.sendall(b'{"yield": true}\n')
            sock.recv(1)
        except OSError:
            pass


def serve_owned(path: Path, ring_map, lost_counter: Callable[[], int]) -> EventHub:
    """The hub of the process holding the attachment; a hub over pinned maps gives way."""
    deadline = time.monotonic() + 5
    while True:
        try:
            return EventHub(path, ring_map, lost_counter, owner=True)
        except HubBusy:
            if time.monotonic() > deadline:
                raise EventsUnavailable(
                    f"another process serves the events at {path} and does not give way"
                ) from None
            ask_to_yield(path)
            time.sleep(0.05)


# ---- a reader ------------------------------------------------------------------------


@dataclass(frozen=True)
class Lost:
    """Events a reader will not see: lost by the datapath (ring full) or dropped by the hub."""

    datapath: int
    dropped: int

    @property
    def count(self) -> int:
        return self.datapath + self.dropped


class PolicyChanged:
    """The attachment's policy was replaced: decode what follows with its new names."""


class EndOfHistory:
    """Everything recent was sent; with follow, live events come next."""


def _pinned_ring(record: registry.Record):
    """The pinned ring and lost counter of `record`, for a hub of no holder."""
    from ebmesh.loader import MapHandle

    maps = registry.pin_dir(record.mesh) / "maps"
    ring = MapHandle.from_pinned(maps / "verdict_events")
    lost_map = MapHandle.from_pinned(maps / "lost_events")

    def lost() -> int:
        per_cpu = lost_map.lookup_percpu(bytes(4)) or []
        return sum(int.from_bytes(v[:8], "little") for v in per_cpu)

    return ring, lost


def _attached(record: registry.Record) -> Callable[[], bool]:
    def check() -> bool:
        now = registry.read(record.cgroup_id)
        return now is not None and now.mesh == record.mesh and now.alive()

    return check


def _holder_alive(pid: int) -> bool:
    # this process reads through a hub like any other
    return pid != os.getpid() and registry.process_alive(pid)


class EventStream:
    """The raw records of one attachment through its hub (becoming it when there is none).

    Iterating yields record batches (bytes), `Lost`, `PolicyChanged` and
    `EndOfHistory`. With `follow`, a hub that goes away is replaced (by this
    reader if no other is first) and reading goes on from the last record seen."""

    def __init__(
        self,
        record: registry.Record,
        *,
        since_ns: int | None = None,
        last: int | None = None,
        follow: bool = False,
    ):
        self.record = record
        self.path = socket_path(record.mesh, record.cgroup_id)
        self._since_ns, self._last, self._follow = since_ns, last, follow
        self._hub: EventHub | None = None
        self._sock: socket.socket | None = None
        self.last_ns: int | None = None

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + 5
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.path))
                return sock
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
            self._become_hub()
            if time.monotonic() > deadline:
                raise EventsUnavailable(f"no hub answers at {self.path}")
            time.sleep(0.02)

    def _become_hub(self) -> None:
        record = registry.read(self.record.cgroup_id)
        if record is None or not record.alive():
            raise EventsUnavailable(
                f"no ebmesh policy is attached to {self.record.cgroup} any more"
            )
        if not record.released and _holder_alive(record.pid):
            how = "pinned, held" if record.pinned else "held"
            raise EventsUnavailable(
                f"the attachment on {record.cgroup} is {how} by pid {record.pid}, which does "
                "not serve its events: run it with `ebmesh apply`, or call "
                "Attachment.serve_events() in that process"
            )
        if not record.pinned:
            raise EventsUnavailable(
                f"the attachment on {record.cgroup} is held by this process, which does not "
                "serve its events: call Attachment.serve_events() first"
            )
        if self._hub is not None and self._hub.alive:
            return
        try:
            ring, lost = _pinned_ring(record)
        except OSError as error:
            raise EventsUnavailable(
                f"cannot open the pinned events of {record.mesh}: {error}"
            ) from None
        try:
            self._hub = EventHub(
                self.path, ring, lost, owner=False, still_attached=_attached(record)
            )
        except HubBusy:
            ring.close()  # another reader is becoming the hub: connect to it next
        except OSError as error:
            ring.close()
            raise EventsUnavailable(f"cannot serve the events at {self.path}: {error}") from None

    def __iter__(self) -> Iterator[bytes | Lost | PolicyChanged | EndOfHistory]:
        since_ns, last = self._since_ns, self._last
        while True:
            self._sock = self._connect()
            request = {"since_ns": since_ns, "last": last, "follow": self._follow}
            try:
                self._sock.sendall(json.dumps(request).encode() + b"\n")
            except OSError:  # the hub went between accepting and reading (a detach, a kill)
                self._sock.close()
                self._sock = None
                continue  # whoever serves next, or the end of the policy, says what follows
            stream = self._sock.makefile("rb", buffering=1 << 20)
            yield from self._frames(stream)
            stream.close()
            self._sock.close()
            self._sock = None
            if not self._follow:
                return
            # The hub went: carry on from the last record seen, with whoever serves next.
            since_ns = None if self.last_ns is None else self.last_ns + 1
            last = None if self.last_ns is not None else 0

    def _frames(self, stream) -> Iterator[bytes | Lost | PolicyChanged | EndOfHistory]:
        header_size = _HEADER.size
        while True:
            try:
                header = stream.read(header_size)
                if len(header) < header_size:
                    return
                kind, length = _HEADER.unpack(header)
                payload = stream.read(length) if length else b""
            except (ConnectionResetError, OSError):
                return  # the hub went (a detach, its process ended)
            if len(payload) < length:
                return
            if kind == FRAME_EVENTS:
                if payload:
                    self.last_ns = record_time_ns(payload, len(payload) - RECORD_SIZE)
                    yield payload
            elif kind == FRAME_LOST:
                yield Lost(*_LOST.unpack(payload))
            elif kind == FRAME_POLICY:
                yield PolicyChanged()
            elif kind == FRAME_END:
                yield EndOfHistory()
                if not self._follow:
                    return

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._hub is not None:
            self._hub.stop()
            self._hub = None


def records_of(payload: bytes) -> Iterator[bytes]:
    for offset in range(0, len(payload), RECORD_SIZE):
        yield payload[offset : offset + RECORD_SIZE]
