"""What an attachment keeps up with while it runs: the cgroup tree, and the datapath's notices.

One background thread per attachment. It watches every cgroup below the
attach cgroup with inotify: a cgroup made there is mapped to its identity at
once (a workload's cgroup removed and made again, as a container restart
does, gets a new id the datapath must learn: until then its sockets are "a
local process of no workload"); a removed one is forgotten. It also reads the
datapath's notices (a socket of the mesh seen in another network namespace;
a connection refused for want of authentication) and hands them on.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from inotify_simple import INotify
from inotify_simple import flags as inotify_flags

from ebmesh.datapath import abi
from ebmesh.loader import RingBuffer

logger = logging.getLogger("ebmesh.runtime")

_WATCHED = (
    inotify_flags.CREATE
    | inotify_flags.DELETE
    | inotify_flags.MOVED_TO
    | inotify_flags.MOVED_FROM
    | inotify_flags.DELETE_SELF
    | inotify_flags.ONLYDIR
)


@dataclass(frozen=True)
class AttachmentNotice:
    """Something the running attachment did or saw, besides verdicts."""

    time: float
    kind: str  # "cgroup-mapped", "adopted", "no-svid", ...: every kind in docs/python-api.md
    message: str
    path: Path | None = None
    identity: int = 0

    def __str__(self) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(self.time))
        return f"{clock} {self.kind}: {self.message}"


class Watcher:
    """The thread. `on_cgroup(path)`/`on_gone(path)` map and unmap; `on_notice(notice)`
    gets each `abi.Notice` of the datapath. Call `stop()` before the maps go."""

    def __init__(
        self,
        root: Path,
        notices_map,
        *,
        on_cgroup: Callable[[Path], list[Path]],
        on_gone: Callable[[Path], None],
        on_notice: Callable[[abi.Notice], None],
        on_root_gone: Callable[[], None],
    ):
        self.root = root
        self._on_cgroup, self._on_gone = on_cgroup, on_gone
        self._on_notice, self._on_root_gone = on_notice, on_root_gone
        self._inotify = INotify()
        self._paths: dict[int, Path] = {}  # watch descriptor -> directory
        self._notices = RingBuffer(notices_map, self._notice)
        self._wake_read, self._wake_write = os.pipe()
        self._stopping = threading.Event()
        for directory, _, _ in os.walk(root):
            self._watch(Path(directory))
        # cgroupfs (kernfs) sends no DELETE_SELF for a removed cgroup, only DELETE to
        # its parent: the root's removal is seen there.
        try:
            self._parent = self._inotify.add_watch(
                root.parent, inotify_flags.DELETE | inotify_flags.MOVED_FROM | inotify_flags.ONLYDIR
            )
        except OSError:
            self._parent = None
        self._thread = threading.Thread(
            target=self._run, name=f"ebmesh-watch {root.name}", daemon=True
        )
        self._thread.start()

    def _watch(self, directory: Path) -> None:
        try:
            descriptor = self._inotify.add_watch(directory, _WATCHED)
        except OSError:  # gone already
            return
        self._paths[descriptor] = directory

    def _notice(self, record: bytes) -> None:
        self._on_notice(abi.Notice.from_buffer_copy(record[: abi.ctypes.sizeof(abi.Notice)]))

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._inotify.fileno(), select.POLLIN)
        poller.register(self._notices.epoll_fd, select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        while not self._stopping.is_set():
            ready = {fd for fd, _ in poller.poll(1000)}
            try:
                if self._inotify.fileno() in ready:
                    self._cgroup_changes()
                if self._notices.epoll_fd in ready:
                    self._notices.consume()
            except Exception:  # noqa: BLE001 - the thread must outlive one bad event
                logger.exception("ebmesh: watching %s", self.root)

    def _cgroup_changes(self) -> None:
        for event in self._inotify.read(timeout=0):
            if event.wd == self._parent:
                if event.name == self.root.name:
                    self._on_root_gone()
                continue
            directory = self._paths.get(event.wd)
            if directory is None:
                continue
            if event.mask & inotify_flags.DELETE_SELF:
                self._paths.pop(event.wd, None)
                if directory == self.root:
                    self._on_root_gone()
                continue
            if not event.name:
                continue
            path = directory / event.name
            if event.mask & (inotify_flags.CREATE | inotify_flags.MOVED_TO):
                # Watch first, then map: a child made in between is found by the mapping walk.
                for below, _, _ in os.walk(path):
                    self._watch(Path(below))
                self._on_cgroup(path)
            elif event.mask & (inotify_flags.DELETE | inotify_flags.MOVED_FROM):
                self._on_gone(path)

    def stop(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        os.write(self._wake_write, b"x")
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        self._notices.close()
        self._inotify.close()
        os.close(self._wake_read)
        os.close(self._wake_write)
