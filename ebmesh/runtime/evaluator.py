"""`evaluate`: the compiled decision code, run in the kernel for one flow.

cgroup/connect4 programs cannot be test-run, so the object carries a
SEC("syscall") harness that calls the very same `decide()` the hooks call,
over the very same maps. BPF_PROG_TEST_RUN writes the answer back into the
request buffer.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Union

from ebmesh.datapath import abi
from ebmesh.datapath.image import DatapathImage
from ebmesh.datapath.parties import NO_IDENTITY, Protocol, Service, SourceRef
from ebmesh.datapath.programs import EVALUATE_PROGRAM
from ebmesh.errors import EbmeshError
from ebmesh.runtime.instance import load_image

AddressLike = Union[str, ipaddress.IPv4Address, ipaddress.IPv6Address]

_LOOPBACK = {4: ipaddress.IPv4Address("127.0.0.1"), 6: ipaddress.IPv6Address("::1")}


class EvaluationError(EbmeshError):
    """`evaluate` was asked about a flow it cannot describe (unknown name, bad address)."""


@dataclass(frozen=True)
class Evaluation:
    """The kernel's verdict on one flow, with what decided it."""

    verdict: str  # "allow" | "deny": what the kernel would do
    rule_id: int  # 0: the default decided
    rule: SourceRef | None
    audit_rule_id: int
    audit_rule: SourceRef | None
    source: str  # the source's identity name; else its address; "-" for neither
    destination: str
    by_default: bool
    would_deny: bool
    needs_mtls: bool
    default: str = "deny"

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


class Evaluator:
    """A loaded copy of the policy holding only the evaluate harness."""

    def __init__(self, image: DatapathImage):
        self._image = image
        self._loaded = load_image(image, programs=(EVALUATE_PROGRAM,), events="none")
        self._program = self._loaded.bpf.programs[EVALUATE_PROGRAM]

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
        """See `CompiledPolicy.evaluate`."""
        flow = self.describe(
            source,
            destination,
            port,
            protocol,
            source_address=source_address,
            destination_address=destination_address,
        )
        resolved, decision = self.run(flow)
        return self._evaluation(resolved, decision)

    def describe(
        self,
        source: str | AddressLike | None,
        destination: str | AddressLike,
        port: int,
        protocol: str,
        *,
        source_address: AddressLike | None,
        destination_address: AddressLike | None,
    ) -> abi.Flow:
        """The flow, as an egress hook of the source would present it to `decide()`."""
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
            flow.src_identity = self._party(source).identity
        else:
            src_addr = _address(source)
            flow.flags |= abi.FLOW_SRC_BY_ADDRESS

        dst_addr = _address(destination_address) if destination_address is not None else None
        if isinstance(destination, str) and _address_or_none(destination) is None:
            party = self._party(destination)
            if isinstance(party, Service):
                dst_addr = dst_addr or party.vip
                flow.flags |= abi.FLOW_DST_BY_ADDRESS  # found again as the VIP, like the hooks do
            else:
                flow.dst_identity = party.identity
                if dst_addr is None:
                    dst_addr = party.prefixes[0].network_address if party.prefixes else _LOOPBACK[4]
        else:
            dst_addr = _address(destination)
            flow.flags |= abi.FLOW_DST_BY_ADDRESS

        if src_addr is not None and src_addr.version != dst_addr.version:
            raise EvaluationError(
                f"source {src_addr} and destination {dst_addr} are of different IP families"
            )
        flow.family = abi.FAMILY_IPV4 if dst_addr.version == 4 else abi.FAMILY_IPV6
        flow.dst_addr[:] = abi.address_words(dst_addr.packed)
        if src_addr is not None:
            flow.src_addr[:] = abi.address_words(src_addr.packed)
            flow.flags |= abi.FLOW_SRC_ADDRESS_KNOWN
        return flow

    def run(self, flow: abi.Flow) -> tuple[abi.Flow, abi.Decision]:
        """The decision for `flow`, and the flow with the identities the kernel resolved."""
        request = bytearray(bytes(abi.EvaluateRequest(flow=flow)))
        self._program.test_run(request)
        answer = abi.EvaluateRequest.from_buffer_copy(request)
        return answer.flow, answer.decision

    def _party(self, name: str):
        party = self._image.naming.party(name)
        if party is None:
            known = ", ".join(self._image.naming.workload_names()) or "none"
            raise EvaluationError(f"no workload named {name!r} (workloads: {known})")
        return party

    def _evaluation(self, flow: abi.Flow, decision: abi.Decision) -> Evaluation:
        naming = self._image.naming
        destination = naming.name_of(flow.dst_identity)
        if flow.dst_identity == NO_IDENTITY:
            destination = str(abi.address_from_words(flow.family, flow.dst_addr))
        source = naming.name_of(flow.src_identity)
        if flow.src_identity == NO_IDENTITY and flow.flags & abi.FLOW_SRC_ADDRESS_KNOWN:
            source = str(
                abi.address_from_words(flow.family, flow.src_addr)
            )  # a peer of no workload
        return Evaluation(
            verdict="allow" if decision.verdict == abi.VERDICT_ALLOW else "deny",
            rule_id=decision.rule,
            rule=naming.rule(decision.rule),
            audit_rule_id=decision.audit_rule,
            audit_rule=naming.rule(decision.audit_rule),
            source=source,
            destination=f"{destination}:{flow.dst_port}/{Protocol(flow.protocol).label}",
            by_default=bool(decision.flags & abi.DECISION_BY_DEFAULT),
            would_deny=bool(decision.flags & abi.DECISION_WOULD_DENY),
            needs_mtls=bool(decision.flags & abi.DECISION_NEEDS_MTLS),
            default="allow" if self._image.shape.default_allow else "deny",
        )

    def close(self) -> None:
        self._loaded.close()

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


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
