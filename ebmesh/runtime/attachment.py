"""A policy attached to a cgroup: an owned object whose end detaches it.

Like cilium/ebpf's link.Link and libbpf-rs's links, an `Attachment` owns its
programs' links; `detach()` or leaving its `with` block removes everything it
attached, and `close()` lets go of it (a pinned one stays attached). Until one
of them it is held alive (keepalive.py), kept by its caller or not, and the
end of the process closes what is left. `replace()` swaps in
another compiled policy hook by hook, each in one step, with no moment
unguarded, and carries the connections' state over. While attached, a
background thread (ebmesh/runtime/watcher.py) keeps the cgroup index up to
date and reads the datapath's notices.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from ebmesh.datapath import abi
from ebmesh.datapath.image import DatapathImage
from ebmesh.datapath.programs import RECORDER, SHORTCUT, hooks_needed
from ebmesh.errors import AttachError
from ebmesh.loader import AttachType, BpfLink, RingBuffer, program_info, query_cgroup
from ebmesh.mtls import (
    DEFAULT_PORT,
    Authenticator,
    AuthEvent,
    IdentityDirectoryError,
    IdentityStore,
    Outcome,
)
from ebmesh.runtime import cgroups, event_hub, keepalive, pins, registry
from ebmesh.runtime.auth_pairs import KernelPairs
from ebmesh.runtime.cgroup_index import CgroupIndex, index_size, tree
from ebmesh.runtime.events import RuleCount, VerdictEvent, decode_event
from ebmesh.runtime.instance import LoadedImage, home_netns, load_image
from ebmesh.runtime.policy_record import PolicyRecord
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


def describe(record: registry.Record) -> str:
    """`shop (pinned, since 12:03:01)` or `shop (held by pid 4242, since ...)`."""
    since = time.strftime("%H:%M:%S", time.localtime(record.since))
    holder = "pinned" if record.pinned else f"held by pid {record.pid}"
    return f"{record.mesh} ({holder}, since {since})"


def ebmesh_programs_around(cgroup: Path) -> list[tuple[Path, int]]:
    """(cgroup, program id) of every ebmesh program acting on `cgroup` from an ancestor,
    or attached to one of its descendants. Every policy attaches connect4."""
    found = []
    for ancestor in [
        p
        for p in cgroup.parents
        if p == cgroups.cgroup2_mount() or cgroups.cgroup2_mount() in p.parents
    ]:
        for program_id in query_cgroup(ancestor, AttachType.CGROUP_INET4_CONNECT):
            found.append((ancestor, program_id))
    for below in tree(cgroup):
        for program_id in query_cgroup(below, AttachType.CGROUP_INET4_CONNECT):
            found.append((below, program_id))
    return [(where, pid) for where, pid in found if _is_ebmesh(pid)]


def _is_ebmesh(program_id: int) -> bool:
    try:
        return program_info(program_id).name.startswith("ebmesh_")
    except Exception:  # noqa: BLE001 - gone meanwhile
        return False


# Where a mesh keeps its identity material unless told otherwise: DEFAULT_IDENTITY_ROOT/<mesh>.
DEFAULT_IDENTITY_ROOT = Path("/var/lib/ebmesh")


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
        pin: bool = False,
        identity_dir=None,
        authenticator_port: int = DEFAULT_PORT,
        progress: Callable[[str], None] | None = None,
    ):
        self.cgroup: Path = cgroups.resolve(cgroup)
        # told "load", "map fill", "attach" as each starts (for the CLI's progress)
        self._progress = progress or (lambda phase: None)
        cgroups.refuse_root(self.cgroup, force)
        # kept: the record is found by it even once the cgroup is removed
        self._cgroup_id = cgroups.cgroup_id(self.cgroup)
        self.forced, self.event_level, self._backend_capacity = force, events, backend_capacity
        self.pinned = pin
        self._links: dict[str, BpfLink] = {}
        self._ring: RingBuffer | None = None
        self._hub: event_hub.EventHub | None = None  # serve_events(): every reader's events
        self._own_events: event_hub.OwnEvents | None = None
        self._metrics = None  # serve_metrics()
        self._recorded_digest: str | None = None
        self._pending: list[VerdictEvent] = []
        self._notices: list[AttachmentNotice] = []
        # its own lock: the authenticator's threads note while replace() holds _lock
        self._notices_lock = threading.Lock()
        self._lock = threading.RLock()
        self._loaded: LoadedImage | None = None
        self._watcher: Watcher | None = None
        self._authenticator: Authenticator | None = None
        self._identity_dir, self._authenticator_port = identity_dir, authenticator_port
        self._cgroup_slots = index_size(len(tree(self.cgroup)))
        self._since = time.time()
        adopted = self._adoptable(image)
        workload_cgroups = self._resolve_workload_cgroups(image)

        try:
            if adopted is not None:
                self._adopt(image, workload_cgroups, adopted)
            else:
                self._loaded, self._index = self._load(image, workload_cgroups, shared={})
                self._image, self.workload_cgroups = image, workload_cgroups
                self._authenticator = self._start_authenticator(image, self._bpf.maps)
                self._progress("attach")
                self._attach(
                    hooks_needed(
                        image.services,
                        recorder=spans_namespaces(self.cgroup),
                        accelerate=image.shape.accelerate,
                    )
                )
            if pin:
                self._pin()
            self._watch()
            self._record()
        except BaseException:
            self.detach()
            raise
        keepalive.hold(self)

    # ---- what is there already -------------------------------------------------------

    def _adoptable(self, image: DatapathImage) -> registry.Record | None:
        """The pinned attachment of this mesh on this cgroup, to take over; or None, after
        making sure no other ebmesh policy acts on this cgroup, above or below it."""
        here = registry.on_cgroup(self.cgroup)
        if here is not None and here.pinned and here.mesh == image.mesh and self.pinned:
            return here
        if here is not None:
            raise AttachError(
                f"{self.cgroup} already carries ebmesh policy {describe(here)}: change it with "
                "Attachment.replace() or `ebmesh apply` (same mesh), or remove it first with "
                f"`ebmesh detach --cgroup {self.cgroup}`"
            )
        for cgroup, program_id in ebmesh_programs_around(self.cgroup):
            holder = next(
                (r for r in registry.records() if program_id in r.programs.values()), None
            )
            what = describe(holder) if holder else f"(program id {program_id})"
            where = "above" if cgroup in self.cgroup.parents else "below"
            raise AttachError(
                f"the cgroup {cgroup}, {where} {self.cgroup}, already carries ebmesh policy "
                f"{what}; two stacked policies would each translate and judge the other's "
                "traffic (a VIP connect would meet the second as a backend). Attach to one of "
                "them only, change the one there with `ebmesh apply`, or detach it first"
            )
        if self.pinned and registry.pin_dir(image.mesh).exists():
            held = next((r for r in registry.records() if r.pinned and r.mesh == image.mesh), None)
            if held is not None:
                raise AttachError(
                    f"mesh {image.mesh} is pinned on {held.cgroup} already; a mesh is pinned "
                    "on one cgroup (pins live under "
                    f"{registry.pin_dir(image.mesh)}): detach it there first"
                )
            pins.remove(registry.pin_dir(image.mesh))  # left by an attachment that is gone
        return None

    def _resolve_workload_cgroups(self, image: DatapathImage) -> dict[int, Path]:
        """The local workloads' cgroups that exist here. A workload whose cgroup is not
        here but that has addresses lives on another host (a mesh's policy is one for
        all its hosts): here it is known by address. One with neither is an error, and
        so is a cgroup tree with none of the policy's workloads."""
        resolved, missing, self.elsewhere = {}, [], []
        for workload in image.local_workloads:
            path = self.cgroup / workload.cgroup
            if (path / "cgroup.procs").exists():
                resolved[workload.identity] = path
            elif workload.prefixes:
                self.elsewhere.append(workload.name)
            else:
                missing.append(f"{workload.name} ({path})")
        if image.local_workloads and not resolved:  # no workload here: a wrong cgroup
            missing += [f"{w.name} ({self.cgroup / w.cgroup})" for w in image.local_workloads]
            missing = list(dict.fromkeys(missing))
        if missing:
            raise AttachError(
                "workload cgroups missing below "
                f"{self.cgroup}: {', '.join(missing)}; create them (mkdir) before attaching"
            )
        for name in self.elsewhere:
            self._note(
                "elsewhere",
                f"workload {name} has no cgroup below {self.cgroup}: it is taken to run on "
                "another host, known here by its address",
            )
        return resolved

    def _load(
        self, image: DatapathImage, workload_cgroups: dict[int, Path], shared: dict
    ) -> tuple[LoadedImage, CgroupIndex]:
        """A verified copy of `image` with every map filled, not attached yet."""
        loaded = load_image(
            image,
            programs=(
                *hooks_needed(image.services, recorder=True, accelerate=image.shape.accelerate),
            )
            + ((SHORTCUT,) if image.shape.accelerate else ()),
            attach_cgroup_id=self._cgroup_id,
            events=self.event_level,
            backend_capacity=self._backend_capacity,
            cgroup_slots=self._cgroup_slots,
            shared_maps=shared,
            progress=self._progress,
        )
        try:
            declared = {w.identity: self.cgroup / w.cgroup for w in image.local_workloads}
            index = CgroupIndex(loaded.bpf.maps, self.cgroup, declared)
            index.map_tree()
        except BaseException:
            loaded.close()
            raise
        return loaded, index

    def _adopt(self, image: DatapathImage, workload_cgroups, record: registry.Record) -> None:
        """Take over the pinned attachment: a new object over its maps (all of them for
        the very same policy, so counters and events go on; the connection state
        otherwise), swapped into its pinned links. No moment without a policy."""
        root = registry.pin_dir(image.mesh)
        held = pins.pinned_maps(root)
        names = held if record.digest == image.digest else STATE_MAPS
        shared = {name: held[name] for name in names if name in held}
        try:
            self._loaded, self._index = self._load(image, workload_cgroups, shared=shared)
        finally:
            for handle in held.values():
                handle.close()  # the new object holds what it took over
        self._image, self.workload_cgroups = image, workload_cgroups
        self._since = record.since
        self._authenticator = self._start_authenticator(image, self._bpf.maps)
        links = pins.pinned_links(root)
        wanted = hooks_needed(
            image.services,
            recorder=RECORDER in links or spans_namespaces(self.cgroup),
            accelerate=image.shape.accelerate,
        )
        for name, link in links.items():
            if name in wanted:
                link.update_program(self._bpf.programs[name])
                self._links[name] = link
            else:
                link.detach()
                pins.unpin_link(root, name)
        self._attach(wanted)
        self._note("adopted", f"took over the pinned policy of mesh {image.mesh} on {self.cgroup}")

    def _pin(self) -> None:
        """Pin every link and map (the .rodata config is the object's own: not pinned)."""
        root = registry.pin_dir(self._image.mesh)
        pins.prepare(root)
        for name, link in self._links.items():
            if link.pin_path is None:
                pins.pin_link(root, name, link)
        for name, bpf_map in self._bpf.maps.items():
            if not bpf_map.is_internal:
                pins.pin_map(root, name, bpf_map)

    def _record(self) -> None:
        if self._recorded_digest != self._image.digest:  # the names readers decode events with
            registry.write_policy(self._cgroup_id, PolicyRecord.of(self._image))
            self._recorded_digest = self._image.digest
        registry.write(
            registry.new_record(
                since=self._since,
                mesh=self._image.mesh,
                cgroup=str(self.cgroup),
                cgroup_id=self._cgroup_id,
                pinned=self.pinned,
                digest=self._image.digest,
                rules=self._image.rule_count,
                events=self.event_level,
                links={name: link.info().id for name, link in self._links.items()},
                programs=self.program_ids(),
            )
        )

    def _attach(self, names: tuple[str, ...]) -> None:
        programs = self._bpf.programs
        if SHORTCUT in programs and programs[SHORTCUT].autoload and not self._loaded.shortcut_on:
            # before sock_ops fills the map: a socket there must find the redirect ready
            programs[SHORTCUT].attach_to_map(self._bpf.maps["shortcuts"])
            self._loaded.shortcut_on = True
        for name in names:
            if name not in self._links:
                self._links[name] = programs[name].attach_cgroup(self.cgroup)
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
        with self._notices_lock:
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
        if notice.kind == abi.NOTICE_AUTH_NEEDED:
            authenticator = self._authenticator
            if authenticator is not None:
                host = abi.address_from_words(notice.family, notice.host) if notice.family else None
                authenticator.request(notice.src, notice.dst, host)
            return
        if notice.kind == abi.NOTICE_FOREIGN_NETNS:
            with self._lock:
                if self._links and RECORDER not in self._links:
                    self._attach((RECORDER,))
                    if self.pinned:
                        self._pin()
                    self._record()
                    self._note(
                        "recorder-attached",
                        f"a socket of the mesh in network namespace {notice.netns}: "
                        "senders are now recorded for receivers in other namespaces",
                    )

    # ---- mTLS ------------------------------------------------------------------

    def _start_authenticator(
        self, image: DatapathImage, maps, workload_cgroups: dict[int, Path] | None = None
    ) -> Authenticator | None:
        """With `mtls` in the policy: its authenticator over one loaded copy's maps, started
        (every pair of workloads here that needs it is authenticated when this returns)."""
        if not image.shape.has_mtls:
            return None
        if self._identity_dir is None:
            # The mesh's own directory: its issuer is made on first use (language.md).
            directory = DEFAULT_IDENTITY_ROOT / image.mesh
            try:
                if IdentityStore.create_if_absent(directory, image.trust_domain):
                    self._note("issuer-created", f"made the mesh's issuer in {directory}")
            except (IdentityDirectoryError, OSError) as error:
                raise AttachError(
                    f"cannot make the mesh's issuer in {directory}: {error}"
                ) from None
        else:
            # A directory given is where the material is said to be: none there is an error.
            directory = Path(self._identity_dir)
            if not (directory / "bundle.pem").is_file():
                raise AttachError(
                    f"the policy needs mTLS and {directory} has no bundle.pem: make an issuer "
                    f"there with `ebmesh ca init {directory}`, or put the trusted CAs in "
                    f"{directory / 'bundle.pem'} and the SVIDs in {directory / 'svid'}/"
                )
        here = set(self.workload_cgroups if workload_cgroups is None else workload_cgroups)
        # A declared workload whose cgroup is not here runs on another host: the
        # authenticator dials that host instead of holding the workload's SVID.
        workloads = [
            w if w.identity in here or not w.is_local else dataclasses.replace(w, cgroup=None)
            for w in image.workloads
        ]
        authenticator = Authenticator(
            directory,
            workloads,
            image.auth_pairs,
            sink=KernelPairs(maps),
            port=self._authenticator_port,
            on_event=self._auth_event,
        )
        try:
            report = authenticator.start()
        except IdentityDirectoryError as error:
            raise AttachError(
                f"the policy needs mTLS and the identity material at {directory} is not "
                f"usable: {error}"
            ) from None
        for name, why in report.without_svid.items():
            self._note("no-svid", f"workload {name} cannot authenticate: {why}")
        return authenticator

    def _auth_event(self, event: AuthEvent) -> None:
        kind = {
            Outcome.AUTHENTICATED: "authenticated",
            Outcome.FAILED: "authentication-failed",
            Outcome.REVOKED: "revoked",
            Outcome.EXPIRED: "authentication-expired",
        }.get(event.outcome, "authentication")
        self._note(kind, str(event))

    def authenticated(self):
        """The authenticated pairs (source, destination, host, expiry), with mTLS in the policy."""
        return self._authenticator.authenticated() if self._authenticator else []

    def handshakes(self) -> dict[tuple[str, str], int]:
        """mTLS handshakes by (side, outcome), with mTLS in the policy (Authenticator.handshakes)."""
        return self._authenticator.handshakes() if self._authenticator else {}

    def revoke(self, identity: str):
        """Drop every authenticated pair with this identity (a SPIFFE ID or a workload name)
        at once; its current certificate is not accepted again until a new SVID replaces it."""
        if self._authenticator is None:
            raise AttachError("this policy has no mtls: nothing is authenticated")
        return self._authenticator.revoke(identity)

    def renew(self, workload: str):
        """Issue a local workload a fresh SVID now (the identity directory must hold the
        issuer), e.g. after revoke(); its pairs are authenticated again with it."""
        if self._authenticator is None:
            raise AttachError("this policy has no mtls: nothing is authenticated")
        return self._authenticator.renew(workload)

    def _root_removed(self) -> None:
        self._note("attach-cgroup-removed", f"the attach cgroup {self.cgroup} was removed")

    def poll_notices(self) -> list[AttachmentNotice]:
        """What the attachment did or saw since the last call (cgroups mapped, ...)."""
        with self._notices_lock:
            notices, self._notices = self._notices, []
        return notices

    @property
    def _bpf(self):
        return self._loaded.bpf

    # ---- lifecycle --------------------------------------------------------------

    @property
    def image(self) -> DatapathImage:
        """The compiled policy running here now (replace() changes it)."""
        return self._image

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
            wanted = hooks_needed(
                image.services,
                recorder=RECORDER in self._links,
                accelerate=image.shape.accelerate,
            )
            # The new copy's pairs are authenticated before it enforces. The old
            # authenticator lets go of its port first; its grants stay in the old
            # copy's map, which enforces until the swap.
            previous_authenticator, self._authenticator = self._authenticator, None
            if previous_authenticator is not None:
                previous_authenticator.stop()
            swapped = []
            try:
                authenticator = self._start_authenticator(image, loaded.bpf.maps, workload_cgroups)
                for name, link in self._links.items():
                    if name in wanted:
                        link.update_program(loaded.bpf.programs[name])
                        swapped.append((link, name))
            except BaseException:
                for link, name in swapped:  # put the running policy back
                    link.update_program(self._loaded.bpf.programs[name])
                loaded.close()
                self._authenticator = self._start_authenticator(self._image, self._bpf.maps)
                raise
            self._authenticator = authenticator
            if self._ring is not None:
                self._ring.close()
                self._ring = None
            self._pending.clear()
            previous, self._loaded, self._index = self._loaded, loaded, index
            if self._hub is not None:  # readers go on, with the new policy's events
                self._hub.swap(self._bpf.maps["verdict_events"], self.lost_events)
            self._image, self.workload_cgroups = image, workload_cgroups
            self._attach(wanted)  # hooks the new policy needs and the old did not
            for name in [n for n in self._links if n not in wanted]:
                self._links.pop(name).detach()
                if self.pinned:
                    pins.unpin_link(registry.pin_dir(image.mesh), name)
            if self.pinned:
                self._pin()
            self._watch()
            self._record()
            previous.close()

    def detach(self) -> None:
        """Remove every program this attachment attached, and its maps, pinned or not. Idempotent."""
        links = self._release()
        for link in reversed(list(links.values())):
            link.detach()  # detaches even a link something else still holds
        if links:
            registry.remove(self._cgroup_id)
            event_hub.remove_stale(self._image.mesh, self._cgroup_id)
        if self.pinned and getattr(self, "_image", None) is not None:
            pins.remove(registry.pin_dir(self._image.mesh))

    def close(self) -> None:
        """Let go of the attachment: a pinned one stays attached (for another process
        to take over, or `ebmesh detach`); an owned one is detached."""
        if not self.pinned:
            self.detach()
            return
        links = self._release()
        for link in links.values():
            link.close()  # the pin keeps it attached
        if links:
            registry.release(self._cgroup_id)

    def _release(self) -> dict[str, BpfLink]:
        keepalive.release(self)
        authenticator, self._authenticator = self._authenticator, None
        if authenticator is not None:
            authenticator.stop()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        self._stop_serving()
        links, self._links = self._links, {}
        loaded, self._loaded = self._loaded, None
        if loaded is not None:
            loaded.close()
        return links

    def __enter__(self) -> Attachment:
        return self

    def __exit__(self, *exc_info) -> None:
        self.detach()

    # ---- what it saw --------------------------------------------------------------

    def counters(self) -> dict[int, RuleCount]:
        """Per rule id (0: the default): verdicts decided and audit matches, summed over CPUs."""
        naming = self._image.naming
        return {
            rule_id: RuleCount(rule_id, naming.rule(rule_id), decided, audited)
            for rule_id, (decided, audited) in enumerate(self.counter_totals())
        }

    def counter_totals(self) -> list[tuple[int, int]]:
        """(decided, audited) per rule id, summed over CPUs: the counters in one batch
        read (a scrape of 10,000 rules must not be 10,000 syscalls)."""
        counters = self._bpf.maps["rule_counters"]
        raw = counters.array_values()
        stride, cpus = counters.percpu_stride, len(raw) // counters.percpu_stride
        per_rule = cpus // (self._image.rule_count + 1)
        words = memoryview(raw).cast("Q")  # decided, audited (then padding, if any) per CPU
        step = stride // 8
        totals = []
        for rule_id in range(self._image.rule_count + 1):
            base = rule_id * per_rule * step
            cells = words[base : base + per_rule * step]
            totals.append((sum(cells[0::step]), sum(cells[1::step])))
        return totals

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

    def shortcut_counters(self) -> dict[str, int]:
        """`accelerate on`: messages sent socket to socket, and messages of accelerated
        sockets whose peer was not accelerated (they went through the stack)."""
        counters = self._bpf.maps["shortcut_counters"]
        totals = []
        for index in (0, 1):
            per_cpu = counters.lookup_percpu(index.to_bytes(4, "little")) or []
            totals.append(sum(int.from_bytes(v[:8], "little") for v in per_cpu))
        return {"shortcut": totals[0], "stack": totals[1]}

    def lost_events(self) -> int:
        per_cpu = self._bpf.maps["lost_events"].lookup_percpu((0).to_bytes(4, "little")) or []
        return sum(int.from_bytes(v[:8], "little") for v in per_cpu)

    def _on_event(self, record: bytes) -> None:
        self._pending.append(decode_event(record, self._image.naming))

    def poll_events(self, timeout: float = 0.0) -> list[VerdictEvent]:
        """Events that arrived, waiting up to `timeout` seconds for the first.

        A pinned attachment serves its events (serve_events()) from the first
        call: other readers of its pinned ring would take events from it."""
        if self._hub is None and self.pinned:
            self.serve_events()
        if self._own_events is not None:
            naming = self._image.naming
            return [decode_event(r, naming) for r in self._own_events.take(timeout)]
        if self._ring is None:
            self._ring = RingBuffer(self._bpf.maps["verdict_events"], self._on_event)
        self._ring.poll(int(timeout * 1000))
        events, self._pending = self._pending, []
        return events

    # ---- observability: events for every reader, metrics ------------------------

    def serve_events(self) -> Path:
        """Serve this attachment's verdicts to every reader (`ebmesh events`, diff,
        dry-run) over a unix socket, and to poll_events() here: a ring buffer has
        one consumer, so one hub reads it for all (event_hub.py). Idempotent;
        returns the socket's path. A hub another process runs over the pinned
        ring gives way to this one."""
        with self._lock:
            if self._hub is not None:
                return self._hub.path
            if not self._links:
                raise AttachError("this attachment was detached")
            if self._ring is not None:  # what it has not read yet waits in the ring
                self._ring.close()
                self._ring = None
            path = event_hub.socket_path(self._image.mesh, self._cgroup_id)
            self._hub = event_hub.serve_owned(
                path, self._bpf.maps["verdict_events"], self.lost_events
            )
            self._own_events = self._hub.own_reader()
            return path

    def serve_metrics(self, address: str = "127.0.0.1", port: int = 9090):
        """Expose Prometheus metrics at http://ADDRESS:PORT/metrics, read from the maps at
        each scrape (runtime/metrics.py); port 0 picks one. Returns the (address, port)
        served. Stops with detach()/close()."""
        from ebmesh.runtime import metrics

        with self._lock:
            if self._metrics is not None:
                self._metrics.stop()
            self._metrics = metrics.serve(self, address, port)
            return self._metrics.address

    def _stop_serving(self) -> None:
        hub, self._hub = self._hub, None
        if hub is not None:
            hub.stop()
        own, self._own_events = self._own_events, None
        if own is not None:
            own.close()
        served, self._metrics = self._metrics, None
        if served is not None:
            served.stop()

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
        if self._hub is None and self.pinned:
            self.serve_events()
        if self._own_events is not None:
            return self._own_events.fileno()
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
