"""Verdict events and rule counters, read back from the datapath with names."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

from ebmesh.datapath import abi
from ebmesh.datapath.naming import Naming
from ebmesh.datapath.parties import SourceRef

_PROTOCOLS = {6: "tcp", 17: "udp"}


@dataclass(frozen=True)
class VerdictEvent:
    """One verdict the kernel took, with the rule (and line) that decided it."""

    time: float  # seconds since the epoch
    direction: str  # "egress" | "ingress"
    verdict: str  # "allow" | "deny": what the kernel did
    protocol: str
    src_name: str
    src_identity: int
    src_address: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    src_port: int
    dst_name: str
    dst_identity: int
    dst_address: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst_port: int
    rule_id: int  # 0: the default decided
    rule: SourceRef | None
    audit_rule_id: int
    audit_rule: SourceRef | None
    would_deny: bool  # mode audit let a denial through
    needs_mtls: bool
    cgroup_id: int
    backend_address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = (
        None  # where a service flow went
    )
    backend_port: int = 0
    no_backend: bool = False  # a service with no usable backend refused it
    too_deep: bool = False  # the local socket's cgroup is nested too deep to be told apart: refused
    unauthenticated: bool = False  # refused for want of mTLS authentication of the pair

    @property
    def decided_by(self) -> str:
        return f"rule {self.rule_id} ({self.rule})" if self.rule else "the default"

    def __str__(self) -> str:
        clock = (
            time.strftime("%H:%M:%S", time.localtime(self.time))
            + f".{int(self.time % 1 * 1000):03d}"
        )
        src = f"{self.src_address}:{self.src_port}" if self.src_address else f"*:{self.src_port}"
        verdict = (
            "DENY"
            if self.verdict == "deny"
            else ("ALLOW (would deny)" if self.would_deny else "ALLOW")
        )
        text = (
            f"{clock} {self.direction:<7} {self.protocol} {self.src_name} {src} -> "
            f"{self.dst_name} {self.dst_address}:{self.dst_port}  {verdict} by {self.decided_by}"
        )
        if self.backend_address is not None:
            host = (
                f"[{self.backend_address}]"
                if self.backend_address.version == 6
                else str(self.backend_address)
            )
            text += f"  => backend {host}:{self.backend_port}"
        if self.no_backend:
            text += "  (no backend: ECONNREFUSED)"
        if self.too_deep:
            text += "  (cgroup nested too deep to identify: refused)"
        if self.unauthenticated:
            text += " [mtls: the pair is not authenticated]"
        elif self.needs_mtls:
            text += " [mtls]"
        if self.audit_rule:
            text += f"  audit: rule {self.audit_rule_id} ({self.audit_rule}) would deny"
        return text


_WALL_CLOCK_OFFSET = time.time() - time.monotonic()


def decode_event(record: bytes, naming: Naming) -> VerdictEvent:
    event = abi.VerdictEvent.from_buffer_copy(record[: abi.ctypes.sizeof(abi.VerdictEvent)])
    flow, decision = event.flow, event.decision
    src_known = bool(flow.flags & abi.FLOW_SRC_ADDRESS_KNOWN)
    return VerdictEvent(
        time=event.timestamp_ns / 1e9 + _WALL_CLOCK_OFFSET,
        direction="ingress" if flow.direction == abi.DIRECTION_INGRESS else "egress",
        verdict="allow" if decision.verdict == abi.VERDICT_ALLOW else "deny",
        protocol=_PROTOCOLS.get(flow.protocol, str(flow.protocol)),
        src_name=naming.name_of(flow.src_identity),
        src_identity=flow.src_identity,
        src_address=abi.address_from_words(flow.family, flow.src_addr) if src_known else None,
        src_port=flow.src_port,
        dst_name=naming.name_of(flow.dst_identity),
        dst_identity=flow.dst_identity,
        dst_address=abi.address_from_words(flow.family, flow.dst_addr),
        dst_port=flow.dst_port,
        rule_id=decision.rule,
        rule=naming.rule(decision.rule),
        audit_rule_id=decision.audit_rule,
        audit_rule=naming.rule(decision.audit_rule),
        would_deny=bool(decision.flags & abi.DECISION_WOULD_DENY),
        needs_mtls=bool(decision.flags & abi.DECISION_NEEDS_MTLS),
        cgroup_id=event.cgroup_id,
        backend_address=abi.address_from_words(flow.family, event.backend_addr)
        if event.backend_port
        else None,
        backend_port=event.backend_port,
        no_backend=bool(decision.flags & abi.DECISION_NO_BACKEND),
        too_deep=bool(decision.flags & abi.DECISION_TOO_DEEP),
        unauthenticated=bool(decision.flags & abi.DECISION_UNAUTHENTICATED),
    )


@dataclass(frozen=True)
class RuleCount:
    """How often a rule decided a verdict, and matched as an audit rule."""

    rule_id: int  # 0: the default
    rule: SourceRef | None
    decided: int
    audited: int


def _rfc3339(seconds: float) -> str:
    moment = time.gmtime(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", moment) + f".{int(seconds % 1 * 1e6):06d}Z"


def _ref(rule_id: int, where: SourceRef | None) -> dict:
    return {
        "id": rule_id,
        "line": where.line if where else None,
        "text": where.text if where else None,
    }


def _name(name: str) -> str | None:
    return None if name == "-" else name


def event_json(event: VerdictEvent) -> dict:
    """The stable JSON shape of a verdict event (docs/observability.md)."""
    return {
        "time": _rfc3339(event.time),
        "timestamp": round(event.time, 6),
        "direction": event.direction,
        "verdict": event.verdict,
        "would_deny": event.would_deny,
        "protocol": event.protocol,
        "source": {
            "workload": _name(event.src_name),
            "address": str(event.src_address) if event.src_address is not None else None,
            "port": event.src_port or None,
        },
        "destination": {
            "workload": _name(event.dst_name),
            "address": str(event.dst_address),
            "port": event.dst_port,
        },
        "rule": {**_ref(event.rule_id, event.rule), "default": event.rule_id == 0},
        "audit_rule": _ref(event.audit_rule_id, event.audit_rule) if event.audit_rule else None,
        "backend": (
            {"address": str(event.backend_address), "port": event.backend_port}
            if event.backend_address is not None
            else None
        ),
        "no_backend": event.no_backend,
        "too_deep": event.too_deep,
        "mtls": {"required": event.needs_mtls, "unauthenticated": event.unauthenticated},
        "cgroup_id": event.cgroup_id,
    }
