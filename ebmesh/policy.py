"""A compiled policy: a spec (its C, its object, its tables), and what can be done with it.

Like cilium/ebpf's CollectionSpec, a `CompiledPolicy` is plain data: it loads
nothing. `attach()` brings a copy to life on a cgroup (an `Attachment`),
`evaluate()` runs its decision code in the kernel through a copy of its own,
`inspect()` reads the object. The run side is imported only when one of them
is called, so compiling never loads libbpf.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ebmesh.datapath.image import DatapathImage
from ebmesh.datapath.limits import MAX_BACKEND_CAPACITY
from ebmesh.datapath.tables import DatapathTables, PolicyShape
from ebmesh.ir.model import Policy

if TYPE_CHECKING:
    from ebmesh.language.ast import PolicyFile
    from ebmesh.loader.inspect import ObjectInfo
    from ebmesh.runtime.attachment import Attachment
    from ebmesh.runtime.evaluator import AddressLike, Evaluation, Evaluator
    from ebmesh.toolchain.clang import BuildResult


@dataclass
class CompiledPolicy:
    """What `ebmesh.compile` returns: attach it, evaluate flows, or look inside."""

    tree: PolicyFile
    policy: Policy
    shape: PolicyShape
    tables: DatapathTables
    sources: dict[str, str]  # generated C: file name -> text
    image: DatapathImage
    build: BuildResult
    timings: dict[str, float]
    _evaluator: Evaluator | None = field(default=None, repr=False)

    @property
    def object_bytes(self) -> bytes:
        return self.image.object_bytes

    @property
    def generated_header(self) -> str:
        return self.sources["policy.h"]

    def inspect(self) -> ObjectInfo:
        from ebmesh.loader.inspect import inspect_object

        return inspect_object(self.object_bytes)

    def attach(
        self,
        cgroup,
        *,
        force: bool = False,
        events: str = "all",
        backend_capacity: int | None = None,
        pin: bool = False,
        identity_dir=None,
        authenticator_port: int | None = None,
        progress=None,
    ) -> Attachment:
        """Attach to a cgroup v2 directory (absolute, or relative to the cgroup2 mount).

        Workload `cgroup "x"` paths resolve below it and must exist. Refuses the
        root cgroup unless `force=True`, and a cgroup that (or whose ancestor or
        descendant) already carries an ebmesh policy. `events`: "all", "denied"
        or "none". `backend_capacity`: how many backends the services may hold
        in all, counting live changes (default: four times those declared, plus
        1,024), a whole number from the count declared (at least 1) to
        MAX_BACKEND_CAPACITY (1,048,576); else ValueError, before anything
        loads. `pin`: pin links and maps under /sys/fs/bpf/ebmesh/<mesh>/, so
        that the policy keeps enforcing with no process alive; if this mesh is
        pinned on this cgroup already, take it over without a gap.
        `identity_dir`: with `mtls` in the policy, where the identity material is
        (default /var/lib/ebmesh/<mesh>/: bundle.pem, maybe ca.pem/ca.key, svid/);
        the authenticator listens on `authenticator_port` (default 4250) and
        authenticates the local pairs the policy needs before this returns.
        `progress(phase)` is called as "load", "map fill" and "attach" start.
        """
        from ebmesh.runtime.attachment import Attachment

        if backend_capacity is not None:
            self._check_backend_capacity(backend_capacity)
        return Attachment(
            self.image,
            cgroup,
            force=force,
            events=events,
            backend_capacity=backend_capacity,
            pin=pin,
            identity_dir=identity_dir,
            progress=progress,
            **({} if authenticator_port is None else {"authenticator_port": authenticator_port}),
        )

    def _check_backend_capacity(self, capacity) -> None:
        declared = sum(len(service.backends) for service in self.policy.services)
        least = max(1, declared)
        if not isinstance(capacity, int) or isinstance(capacity, bool):
            raise ValueError(
                f"backend_capacity must be a whole number of backends, not {capacity!r}"
            )
        if not least <= capacity <= MAX_BACKEND_CAPACITY:
            held = f"the {declared} backends the policy declares" if declared > 1 else "one backend"
            raise ValueError(
                f"backend_capacity must be from {least:,} ({held}) to {MAX_BACKEND_CAPACITY:,}, "
                f"not {capacity:,}"
            )

    def evaluate(
        self,
        source: str | AddressLike | None,
        destination: str | AddressLike,
        port: int,
        protocol: str = "tcp",
        *,
        source_address: AddressLike | None = None,
        destination_address: AddressLike | None = None,
    ) -> Evaluation:
        """Run the compiled decision code in the kernel for one flow.

        `source` is a workload name (a local workload, its address unknown
        unless `source_address` is given), an address (a peer known by address),
        or None (a local process of no workload). `destination` is an address
        (a service VIP, a workload's address, anything), a service name (its
        VIP and port) or a workload name (reached locally: known by its cgroup).
        """
        return self.evaluator().evaluate(
            source,
            destination,
            port,
            protocol,
            source_address=source_address,
            destination_address=destination_address,
        )

    def evaluator(self) -> Evaluator:
        if self._evaluator is None:
            from ebmesh.runtime.evaluator import Evaluator

            self._evaluator = Evaluator(self.image)
        return self._evaluator

    def close(self) -> None:
        """Unload the copy `evaluate` uses (attachments have their own)."""
        if self._evaluator is not None:
            self._evaluator.close()
            self._evaluator = None

    def __enter__(self) -> CompiledPolicy:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
