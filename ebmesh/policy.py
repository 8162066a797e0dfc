"""A compiled policy: its C, its object, and what can be done with them."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union

from ebmesh.errors import EbmeshError
from ebmesh.ir.model import NO_IDENTITY, Policy, Protocol
from ebmesh.runtime import abi
from ebmesh.runtime.events import address_from_words, words_from_address
from ebmesh.runtime.image import DatapathImage, RuleOrigin

if TYPE_CHECKING:
    from ebmesh.codegen.datapath import DatapathTables, PolicyShape
    from ebmesh.language.ast import PolicyFile
    from ebmesh.loader.inspect import ObjectInfo
    from ebmesh.runtime.attachment import Attachment
    from ebmesh.runtime.evaluator import Evaluator
    from ebmesh.toolchain.clang import BuildResult

AddressLike = Union[str, ipaddress.IPv4Address, ipaddress.IPv6Address]


class EvaluationError(EbmeshError):
    """`evaluate` was asked about a flow it cannot describe (unknown name, bad address)."""


@dataclass(frozen=True)
class Evaluation:
    """The kernel's verdict on one flow, with what decided it."""

    verdict: str  # "allow" | "deny": what the kernel would do
    rule_id: int  # 0: the default decided
    rule: RuleOrigin | None
    audit_rule_id: int
    audit_rule: RuleOrigin | None
    source: str  # the source's identity name, "-" for none
    destination: str
    by_default: bool
    would_deny: bool
    needs_mtls: bool
    default: str = field(default="deny")

    @property
    def allowed(self) -> bool:
        return self.verdict == "allow"

    @property
    def line(self) -> int | None:
        return self.rule.line if self.rule else None

    def __str__(self) -> str:
        if self.rule:
            why = f"rule {self.rule_id} at {self.rule}: {self.rule.text}"
        else:
            why = f"the default ({self.default}): no rule matches"
        text = f"{self.verdict.upper()} {self.source} -> {self.destination}, decided by {why}"
        if self.needs_mtls:
            text += "\n  mTLS is required" + (
                "" if self.allowed else " and the pair is not authenticated"
            )
        if self.would_deny:
            text += "\n  mode audit: enforce would deny this; it is reported and allowed"
        if self.audit_rule:
            text += f"\n  audit: rule {self.audit_rule_id} at {self.audit_rule} would deny it"
        return text


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
    ) -> Attachment:
        """Attach to a cgroup v2 directory (absolute, or relative to the cgroup2 mount).

        Workload `cgroup "x"` paths resolve below it and must exist. Refuses the
        root cgroup unless `force=True`. `events`: "all", "denied" or "none".
        `backend_capacity`: how many backends the services may hold in all,
        counting live changes (default: four times those declared, plus 1,024).
        """
        from ebmesh.runtime.attachment import Attachment

        return Attachment(
            self.image, cgroup, force=force, events=events, backend_capacity=backend_capacity
        )

    # ---- evaluate -------------------------------------------------------------

    def _identity(self, name: str) -> int:
        for item in (*self.policy.workloads, *self.policy.services):
            if item.name == name:
                return item.identity
        known = ", ".join(w.name for w in self.policy.workloads) or "none"
        raise EvaluationError(f"no workload named {name!r} (workloads: {known})")

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
        flow = abi.Flow(direction=abi.DIRECTION_EGRESS)
        try:
            flow.protocol = int(Protocol[protocol.upper()])
        except KeyError:
            raise EvaluationError(f"protocol must be tcp or udp, not {protocol!r}") from None
        if not 0 <= port <= 65535:
            raise EvaluationError(f"port {port} is outside 0-65535")
        flow.dst_port = port

        src_addr = _address(source_address) if source_address is not None else None
        if source is None:
            flow.src_identity = NO_IDENTITY
        elif isinstance(source, str) and _address_or_none(source) is None:
            flow.src_identity = self._identity(source)
        else:
            src_addr = _address(source)
            flow.flags |= abi.FLOW_SRC_BY_ADDRESS

        dst_addr = _address(destination_address) if destination_address is not None else None
        if isinstance(destination, str) and _address_or_none(destination) is None:
            identity = self._identity(destination)
            service = next((s for s in self.policy.services if s.identity == identity), None)
            if service is not None:
                dst_addr = dst_addr or service.vip
                flow.flags |= abi.FLOW_DST_BY_ADDRESS  # found again as the VIP, like the hooks do
            else:
                flow.dst_identity = identity
                workload = next(w for w in self.policy.workloads if w.identity == identity)
                if dst_addr is None:
                    dst_addr = (
                        workload.prefixes[0].network_address if workload.prefixes else _LOOPBACK[4]
                    )
        else:
            dst_addr = _address(destination)
            flow.flags |= abi.FLOW_DST_BY_ADDRESS

        if src_addr is not None and src_addr.version != dst_addr.version:
            raise EvaluationError(
                f"source {src_addr} and destination {dst_addr} are of different IP families"
            )
        flow.family = abi.FAMILY_IPV4 if dst_addr.version == 4 else abi.FAMILY_IPV6
        flow.dst_addr[:] = words_from_address(dst_addr)
        if src_addr is not None:
            flow.src_addr[:] = words_from_address(src_addr)
            flow.flags |= abi.FLOW_SRC_ADDRESS_KNOWN

        resolved, decision = self.evaluator().run(flow)
        return self._evaluation(resolved, decision)

    def evaluator(self) -> Evaluator:
        if self._evaluator is None:
            from ebmesh.runtime.evaluator import Evaluator

            self._evaluator = Evaluator(self.image)
        return self._evaluator

    def _evaluation(self, flow: abi.Flow, decision: abi.Decision) -> Evaluation:
        naming = self.image.naming
        destination = naming.identity(flow.dst_identity)
        if flow.dst_identity == NO_IDENTITY:
            destination = str(address_from_words(flow.family, flow.dst_addr))
        return Evaluation(
            verdict="allow" if decision.verdict == abi.VERDICT_ALLOW else "deny",
            rule_id=decision.rule,
            rule=naming.rules.get(decision.rule),
            audit_rule_id=decision.audit_rule,
            audit_rule=naming.rules.get(decision.audit_rule),
            source=naming.identity(flow.src_identity),
            destination=f"{destination}:{flow.dst_port}/{Protocol(flow.protocol).label}",
            by_default=bool(decision.flags & abi.DECISION_BY_DEFAULT),
            would_deny=bool(decision.flags & abi.DECISION_WOULD_DENY),
            needs_mtls=bool(decision.flags & abi.DECISION_NEEDS_MTLS),
            default=self.policy.default.name.lower(),
        )

    def close(self) -> None:
        """Unload the copy `evaluate` uses (attachments have their own)."""
        if self._evaluator is not None:
            self._evaluator.close()
            self._evaluator = None

    def __enter__(self) -> CompiledPolicy:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


_LOOPBACK = {4: ipaddress.IPv4Address("127.0.0.1"), 6: ipaddress.IPv6Address("::1")}


def _address_or_none(text: str):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _address(value: AddressLike):
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return value
    address = _address_or_none(str(value))
    if address is None:
        raise EvaluationError(f"{value!r} is not an IP address")
    return address
