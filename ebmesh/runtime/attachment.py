"""A policy attached to a cgroup: an owned object whose end detaches it.

Like cilium/ebpf's link.Link and libbpf-rs's links, an `Attachment` owns its
programs' links; `detach()`, leaving its `with` block, or being garbage
collected removes everything it attached. `replace()` swaps in another
compiled policy hook by hook, each in one step, with no moment unguarded,
and carries the connections' state over. While attached, a background
thread (ebmesh/runtime/watcher.py) keeps the cgroup index up to date and
reads the datapath's notices.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from ebmesh.datapath import abi
from ebmesh.datapath.image import DatapathImage
from ebmesh.datapath.programs import RECORDER, hooks_needed
from ebmesh.errors import AttachError
from ebmesh.loader import BpfLink, RingBuffer
from ebmesh.runtime import cgroups
from ebmesh.runtime.cgroup_index import CgroupIndex, index_size, tree
from ebmesh.runtime.events import RuleCount, VerdictEvent, decode_event
from ebmesh.runtime.instance import LoadedImage, home_netns, load_image
from ebmesh.runtime.watcher import AttachmentNotice, Watcher

# Maps that hold the connections' state rather than the policy: a replacement
# takes them over as they are, so that no connection the old policy let start
# is cut by the new one having forgotten it.
STATE_MAPS = (
    "flows",
    "socket_states",
    "udp_replies",
    "udp_affinity",
    "udp_translations",
    "signals",
)


def spans_namespaces(root: Path) -> bool:
    """Whether a process below `root` lives in another network namespace than this one."""
    home = home_netns()
    for cgroup in tree(root):
        try:
            pids = (cgroup / "cgroup.procs").read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                if os.stat(f"/proc/{pid}/ns/net").st_ino != home:
                    return True
            except OSError:
                continue  # gone meanwhile
    return False


class Attachment:
    """The datapath of one policy, live on one cgroup."""

    def __init__(
        self,
        image: DatapathImage,
        cgroup,
        *,
        force: bool = False,
        events: str = "all",
        backend_capacity: int | None = None,
    ):
        self.cgroup: Path = cgroups.resolve(cgroup)
        cgroups.refuse_root(self.cgroup, force)
        self.forced, self.event_level, self._backend_capacity = force, events, backend_capacity
        self._links: dict[str, BpfLink] = {}
        self._ring: RingBuffer | None = None
        self._pending: list[VerdictEvent] = []
        self._notices: list[AttachmentNotice] = []
        self._lock = threading.RLock()
        self._loaded: LoadedImage | None = None
        self._watcher: Watcher | None = None
        self._cgroup_slots = index_size(len(tree(self.cgroup)))
        workload_cgroups = self._resolve_workload_cgroups(image)

        self._loaded, self._index = self._load(image, workload_cgroups, shared={})
        self._image, self.workload_cgroups = image, workload_cgroups
        try:
            self._attach(hooks_needed(image.services, recorder=spans_namespaces(self.cgroup)))
            self._watch()
        except BaseException:
            self.detach()
            raise

    def _resolve_workload_cgroups(self, image: DatapathImage) -> dict[int, Path]:
        resolved, missing = {}, []
        for workload in image.local_workloads:
            path = self.cgroup / workload.cgroup
            if (path / "cgroup.procs").exists():
                resolved[workload.identity] = path
            else:
                missing.append(f"{workload.name} ({path})")
        if missing:
            raise AttachError(
                "workload cgroups missing below "
                f"{self.cgroup}: {', '.join(missing)}; create them (mkdir) before attaching"
            )
        return resolved

    def _load(
        self, image: DatapathImage, workload_cgroups: dict[int, Path], shared: dict
    ) -> tuple[LoadedImage, CgroupIndex]:
        """A verified copy of `image` with every map filled, not attached yet."""
        loaded = load_image(
            image,
            programs=hooks_needed(image.services, recorder=True),
            attach_cgroup_id=cgroups.cgroup_id(self.cgroup),
            events=self.event_level,
            backend_capacity=self._backend_capacity,
            cgroup_slots=self._cgroup_slots,
            shared_maps=shared,
        )
        try:
            index = CgroupIndex(loaded.bpf.maps, self.cgroup, workload_cgroups)
            index.map_tree()
        except BaseException:
            loaded.close()
            raise
        return loaded, index

    def _attach(self, names: tuple[str, ...]) -> None:
        for name in names:
            if name not in self._links:
                self._links[name] = self._bpf.programs[name].attach_cgroup(self.cgroup)
        if RECORDER in self._links:  # the datapath need not ask for it
            signals = abi.DatapathSignals.packer().pack(abi.SIGNAL_FOREIGN_NETNS_SEEN, 0)
            self._bpf.maps["signals"].update(bytes(4), signals)

    def _watch(self) -> None:
        previous, self._watcher = (
            self._watcher,
            Watcher(
                self.cgroup,
                self._bpf.maps["notices"],
                on_cgroup=self._cgroup_made,
                on_gone=self._cgroup_removed,
                on_notice=self._datapath_notice,
                on_root_gone=self._root_removed,
            ),
        )
        if previous is not None:
            previous.stop()
        with self._lock:  # what was made before the watches were set
            self._index.map_tree()

    # ---- what the watcher reports (its thread) -------------------------------------

    def _note(self, kind: str, message: str, path: Path | None = None, identity: int = 0) -> None:
        with self._lock:
            self._notices.append(AttachmentNotice(time.time(), kind, message, path, identity))

    def _cgroup_made(self, path: Path) -> list[Path]:
        with self._lock:
            added = self._index.map_tree(path)
            identities = self._index.mapped()
        for made in added:
            identity = identities.get(made, 0)
            if identity and self.workload_cgroups.get(identity) == made:
                name = self._image.naming.name_of(identity)
                self._note(
                    "cgroup-mapped",
                    f"workload {name}'s cgroup {made} is enforced again",
                    made,
                    identity,
                )
        return added

    def _cgroup_removed(self, path: Path) -> None:
        with self._lock:
            for gone in [p for p in self._index.mapped() if p == path or path in p.parents]:
                self._index.unmap(gone)
        self._note("cgroup-removed", f"cgroup {path} was removed", path)

    def _datapath_notice(self, notice: abi.Notice) -> None:
        if notice.kind == abi.NOTICE_FOREIGN_NETNS:
            with self._lock:
                if self._links and RECORDER not in self._links:
                    self._attach((RECORDER,))
                    self._note(
                        "recorder-attached",
                        f"a socket of the mesh in network namespace {notice.netns}: "
                        "senders are now recorded for receivers in other namespaces",
                    )

    def _root_removed(self) -> None:
        self._note("attach-cgroup-removed", f"the attach cgroup {self.cgroup} was removed")

    def poll_notices(self) -> list[AttachmentNotice]:
        """What the attachment did or saw since the last call (cgroups mapped, ...)."""
        with self._lock:
            notices, self._notices = self._notices, []
        return notices

    @property
    def _bpf(self):
        return self._loaded.bpf

    # ---- lifecycle --------------------------------------------------------------

    @property
    def attached(self) -> bool:
        return bool(self._links)

    @property
    def attached_programs(self) -> tuple[str, ...]:
        return tuple(self._links)

    def replace(self, image: DatapathImage) -> None:
        """Enforce another compiled policy here, without a gap.

        The new object is loaded and filled first, sharing the running one's
        connection state (STATE_MAPS); then each hook's link swaps its program
        for the new one in one step (BPF_LINK_UPDATE), so no connect meets no
        policy, nor two, and no connection the old policy let start is
        forgotten. Counters and the event stream start afresh. If anything
        fails before the swap, the running policy stays.
        """
        with self._lock:
            if not self._links:
                raise AttachError("this attachment was detached")
            workload_cgroups = self._resolve_workload_cgroups(image)
            shared = {name: self._bpf.maps[name] for name in STATE_MAPS}
            loaded, index = self._load(image, workload_cgroups, shared)
            wanted = hooks_needed(image.services, recorder=RECORDER in self._links)
            swapped = []
            try:
                for name, link in self._links.items():
                    if name in wanted:
                        link.update_program(loaded.bpf.programs[name])
                        swapped.append((link, name))
            except BaseException:
                for link, name in swapped:  # put the running policy back
                    link.update_program(self._loaded.bpf.programs[name])
                loaded.close()
                raise
            if self._ring is not None:
                self._ring.close()
                self._ring = None
            self._pending.clear()
            previous, self._loaded, self._index = self._loaded, loaded, index
            self._image, self.workload_cgroups = image, workload_cgroups
            self._attach(wanted)  # hooks the new policy needs and the old did not
            for name in [n for n in self._links if n not in wanted]:
                self._links.pop(name).detach()
            self._watch()
            previous.close()

    def detach(self) -> None:
        """Remove every program this attachment attached, and its maps. Idempotent."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        links, self._links = self._links, {}
        for link in reversed(list(links.values())):
            link.detach()  # detaches even a link something else still holds
        loaded, self._loaded = self._loaded, None
        if loaded is not None:
            loaded.close()

    def __enter__(self) -> Attachment:
        return self

    def __exit__(self, *exc_info) -> None:
        self.detach()

    def __del__(self):
        if getattr(self, "_links", None) or getattr(self, "_loaded", None):
            self.detach()

    # ---- what it saw --------------------------------------------------------------

    def counters(self) -> dict[int, RuleCount]:
        """Per rule id (0: the default): verdicts decided and audit matches, summed over CPUs."""
        counters = self._bpf.maps["rule_counters"]
        packer = abi.RuleCounter.packer()
        result = {}
        for rule_id in range(self._image.rule_count + 1):
            per_cpu = counters.lookup_percpu(rule_id.to_bytes(4, "little")) or []
            decided = audited = 0
            for value in per_cpu:
                d, a = packer.unpack(value[: packer.size])
                decided += d
                audited += a
            result[rule_id] = RuleCount(rule_id, self._image.naming.rule(rule_id), decided, audited)
        return result

    # ---- services -------------------------------------------------------------------

    def set_backends(self, service: str, backends: Mapping[str, int]) -> None:
        """Replace a service's backends and weights in place: `{"10.0.2.10:8080": 3, ...}`.

        No reload, no failed connection: connects in flight see the old table or
        the new one whole. Weight 0 keeps a backend declared but unused; no
        backend of nonzero weight makes connects to the VIP fail with ECONNREFUSED.
        """
        self._loaded.balancer.set_backends(service, backends)

    def backends(self, service: str) -> dict[str, int]:
        return self._loaded.balancer.backends(service)

    def backend_counters(self) -> dict[str, dict[str, int]]:
        """Per service, per backend: connections (TCP) and sockets (UDP) sent to it."""
        return self._loaded.balancer.counters()

    def lost_events(self) -> int:
        per_cpu = self._bpf.maps["lost_events"].lookup_percpu((0).to_bytes(4, "little")) or []
        return sum(int.from_bytes(v[:8], "little") for v in per_cpu)

    def _on_event(self, record: bytes) -> None:
        self._pending.append(decode_event(record, self._image.naming))

    def poll_events(self, timeout: float = 0.0) -> list[VerdictEvent]:
        """Events that arrived, waiting up to `timeout` seconds for the first."""
        if self._ring is None:
            self._ring = RingBuffer(self._bpf.maps["verdict_events"], self._on_event)
        self._ring.poll(int(timeout * 1000))
        events, self._pending = self._pending, []
        return events

    def events(self, timeout: float | None = None) -> Iterator[VerdictEvent]:
        """Verdict events as they happen. Stops after `timeout` seconds without one
        (None: never stops; break out of the loop, or Ctrl-C, to end it)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = 0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic()))
            batch = self.poll_events(wait)
            if batch:
                yield from batch
                if deadline is not None:
                    deadline = time.monotonic() + timeout
            elif deadline is not None and time.monotonic() >= deadline:
                return

    def fileno(self) -> int:
        """An fd that is readable when events wait (for select/poll loops)."""
        if self._ring is None:
            self._ring = RingBuffer(self._bpf.maps["verdict_events"], self._on_event)
        return self._ring.epoll_fd

    def program_ids(self) -> dict[str, int]:
        """Kernel ids of the attached programs."""
        return {name: self._bpf.programs[name].id for name in self._links}

    def program_stats(self) -> dict[str, tuple[int, int]]:
        """run_time_ns and run_cnt per attached program (they move only while stats are enabled)."""
        result = {}
        for name in self._links:
            stats = self._bpf.programs[name].stats()
            result[name] = (stats.run_time_ns, stats.run_cnt)
        return result

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return f"<Attachment {state} to {self.cgroup}>"
