"""A policy attached to a cgroup: an owned object whose end detaches it.

Like cilium/ebpf's link.Link and libbpf-rs's links, an `Attachment` owns its
programs' links; `detach()`, leaving its `with` block, or being garbage
collected removes everything it attached. `replace()` swaps in another
compiled policy hook by hook, each in one step, with no moment unguarded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from ebmesh.datapath import abi
from ebmesh.datapath.image import DatapathImage
from ebmesh.datapath.programs import HOOK_PROGRAMS
from ebmesh.errors import AttachError
from ebmesh.loader import BpfLink, RingBuffer
from ebmesh.runtime import cgroups
from ebmesh.runtime.events import RuleCount, VerdictEvent, decode_event
from ebmesh.runtime.instance import LoadedImage, load_image


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
        self._links: list[BpfLink] = []
        self._ring: RingBuffer | None = None
        self._pending: list[VerdictEvent] = []
        self._loaded: LoadedImage | None = None
        workload_cgroups = self._resolve_workload_cgroups(image)

        self._loaded = self._load(image, workload_cgroups)
        self._image, self.workload_cgroups = image, workload_cgroups
        try:
            for name in HOOK_PROGRAMS:
                self._links.append(self._loaded.bpf.programs[name].attach_cgroup(self.cgroup))
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

    def _load(self, image: DatapathImage, workload_cgroups: dict[int, Path]) -> LoadedImage:
        """A verified copy of `image` with every map filled, not attached yet."""
        loaded = load_image(
            image,
            programs=HOOK_PROGRAMS,
            attach_cgroup_id=cgroups.cgroup_id(self.cgroup),
            events=self.event_level,
            backend_capacity=self._backend_capacity,
        )
        try:
            workloads = loaded.bpf.maps["cgroup_workloads"]
            for identity, path in workload_cgroups.items():
                workloads.update(
                    cgroups.cgroup_id(path).to_bytes(8, "little"), identity.to_bytes(4, "little")
                )
        except BaseException:
            loaded.close()
            raise
        return loaded

    @property
    def _bpf(self):
        return self._loaded.bpf

    # ---- lifecycle --------------------------------------------------------------

    @property
    def attached(self) -> bool:
        return bool(self._links)

    def replace(self, image: DatapathImage) -> None:
        """Enforce another compiled policy here, without a gap.

        The new object is loaded and filled first; then each hook's link swaps
        its program for the new one in one step (BPF_LINK_UPDATE), so no
        connect meets no policy, nor two. Counters and the event stream start
        afresh. If anything fails before the swap, the running policy stays.
        """
        if not self._links:
            raise AttachError("this attachment was detached")
        workload_cgroups = self._resolve_workload_cgroups(image)
        loaded = self._load(image, workload_cgroups)
        swapped = []
        try:
            for link, name in zip(self._links, HOOK_PROGRAMS):
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
        previous, self._loaded = self._loaded, loaded
        self._image, self.workload_cgroups = image, workload_cgroups
        previous.close()

    def detach(self) -> None:
        """Remove every program this attachment attached, and its maps. Idempotent."""
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        links, self._links = self._links, []
        for link in reversed(links):
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
        return {name: self._bpf.programs[name].id for name in HOOK_PROGRAMS}

    def program_stats(self) -> dict[str, tuple[int, int]]:
        """run_time_ns and run_cnt per attached program (they move only while stats are enabled)."""
        result = {}
        for name in HOOK_PROGRAMS:
            stats = self._bpf.programs[name].stats()
            result[name] = (stats.run_time_ns, stats.run_cnt)
        return result

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return f"<Attachment {state} to {self.cgroup}>"
