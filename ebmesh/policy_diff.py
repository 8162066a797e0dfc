"""What applying a policy file would change where a policy runs: rules, and verdicts.

Rules are compared by their text (whitespace aside): a rule kept word for
word is the same rule, wherever it moved in the file; one edited is one
removed and one added. Flows are the recent verdict events of the running
attachment (its hub's history), each asked of the new policy's decision code
in the kernel (`CompiledPolicy.evaluate`): those whose verdict would change
are listed. Nothing here touches the running attachment.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from ebmesh.datapath.parties import SourceRef
from ebmesh.policy import CompiledPolicy
from ebmesh.runtime.evaluator import EvaluationError
from ebmesh.runtime.events import VerdictEvent
from ebmesh.runtime.policy_record import PolicyRecord


def _words(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class RuleChange:
    line: int
    text: str

    def to_json(self) -> dict:
        return {"line": self.line, "text": self.text}


@dataclass(frozen=True)
class FlowChange:
    """One flow seen recently, and what the new policy would make of it."""

    event: VerdictEvent
    seen: int  # how many recent events were of this flow
    new_verdict: str
    new_rule_id: int
    new_rule: SourceRef | None

    def describe(self) -> str:
        e = self.event
        source = e.src_name if e.src_name != "-" else str(e.src_address or "-")
        old = f"rule {e.rule_id} ({e.rule})" if e.rule else "the default"
        new = f"rule {self.new_rule_id} ({self.new_rule})" if self.new_rule else "the default"
        return (
            f"{e.protocol} {source} -> {e.dst_name if e.dst_name != '-' else ''}"
            f"{' ' if e.dst_name != '-' else ''}{e.dst_address}:{e.dst_port} ({e.direction}, "
            f"seen {self.seen}x): {e.verdict.upper()} by {old} -> "
            f"{self.new_verdict.upper()} by {new}"
        )

    def to_json(self) -> dict:
        from ebmesh.runtime.events import event_json

        return {
            "flow": event_json(self.event),
            "seen": self.seen,
            "verdict": {"running": self.event.verdict, "new": self.new_verdict},
            "rule": {
                "running": {
                    "id": self.event.rule_id,
                    "line": getattr(self.event.rule, "line", None),
                },
                "new": {"id": self.new_rule_id, "line": getattr(self.new_rule, "line", None)},
            },
        }


@dataclass
class PolicyDiff:
    running_mesh: str | None
    new_mesh: str
    removed: list[RuleChange] = field(default_factory=list)
    added: list[RuleChange] = field(default_factory=list)
    default_change: tuple[str, str] | None = None  # (running, new) default verdicts
    flows_checked: int = 0
    flows_unavailable: str | None = None  # why no recent flows could be read
    changed: list[FlowChange] = field(default_factory=list)
    not_evaluated: list[str] = field(default_factory=list)

    @property
    def differs(self) -> bool:
        return bool(
            self.removed
            or self.added
            or self.changed
            or self.default_change
            or self.running_mesh != self.new_mesh
        )


def _rules(rules: dict[int, SourceRef]) -> list[RuleChange]:
    return [RuleChange(r.line, r.text.strip()) for _, r in sorted(rules.items()) if r]


def _not_among(rules: list, others: list) -> list:
    """The rules of `rules` that `others` does not have, counting repeats (a rule written
    twice and kept once is one removed)."""
    left = collections.Counter(_words(r.text) for r in others)
    missing = []
    for rule in rules:
        words = _words(rule.text)
        if left[words]:
            left[words] -= 1
        else:
            missing.append(rule)
    return missing


def diff_rules(running: PolicyRecord | None, new: CompiledPolicy, result: PolicyDiff) -> None:
    old_rules = _rules(running.rules) if running else []
    new_rules = _rules(new.image.naming.rules)
    result.removed += _not_among(old_rules, new_rules)
    result.added += _not_among(new_rules, old_rules)
    if running is not None and running.default_allow != new.shape.default_allow:
        verdict = {True: "allow", False: "deny"}
        result.default_change = (verdict[running.default_allow], verdict[new.shape.default_allow])


def _flow_key(event: VerdictEvent) -> tuple:
    return (
        event.direction,
        event.protocol,
        event.src_name,
        str(event.src_address) if event.src_address else None,
        event.dst_name,
        str(event.dst_address),
        event.dst_port,
    )


def _ask(new: CompiledPolicy, event: VerdictEvent):
    """The new policy's evaluation of a flow as the kernel saw it: parties by name where
    the new policy has them, by address otherwise."""
    workloads = {w.name for w in new.image.workloads}
    if event.src_name in workloads:
        source, source_address = event.src_name, event.src_address
    else:
        source, source_address = (str(event.src_address) if event.src_address else None), None
    destination, destination_address = str(event.dst_address), None
    if event.direction == "ingress" and event.dst_name in workloads:
        destination, destination_address = event.dst_name, event.dst_address
    return new.evaluate(
        source,
        destination,
        event.dst_port,
        event.protocol,
        source_address=source_address,
        destination_address=destination_address,
    )


def diff_flows(events: list[VerdictEvent], new: CompiledPolicy, result: PolicyDiff) -> None:
    flows: dict[tuple, list[VerdictEvent]] = {}
    for event in events:
        flows.setdefault(_flow_key(event), []).append(event)
    result.flows_checked = len(flows)
    for seen in flows.values():
        event = seen[-1]
        try:
            evaluation = _ask(new, event)
        except EvaluationError as error:
            result.not_evaluated.append(f"{_flow_key(event)}: {error}")
            continue
        if evaluation.verdict != event.verdict:
            result.changed.append(
                FlowChange(
                    event, len(seen), evaluation.verdict, evaluation.rule_id, evaluation.rule
                )
            )


def to_json(result: PolicyDiff) -> dict:
    return {
        "differs": result.differs,
        "mesh": {"running": result.running_mesh, "new": result.new_mesh},
        "rules": {
            "removed": [r.to_json() for r in result.removed],
            "added": [r.to_json() for r in result.added],
        },
        "default": (
            {"running": result.default_change[0], "new": result.default_change[1]}
            if result.default_change
            else None
        ),
        "flows": {
            "checked": result.flows_checked,
            "unavailable": result.flows_unavailable,
            "changed": [c.to_json() for c in result.changed],
            "not_evaluated": result.not_evaluated,
        },
    }


def describe(result: PolicyDiff, file: str, cgroup: str) -> str:
    lines = []
    if result.running_mesh is None:
        lines.append(f"nothing runs on {cgroup}: every rule of {file} would be new")
    elif result.running_mesh != result.new_mesh:
        lines.append(
            f"mesh: {result.running_mesh} runs on {cgroup}; {file} is mesh {result.new_mesh}"
        )
    for rule in result.removed:
        lines.append(f"- rule (running, line {rule.line}): {rule.text}")
    for rule in result.added:
        lines.append(f"+ rule ({file}:{rule.line}): {rule.text}")
    if result.default_change:
        lines.append(f"~ default: {result.default_change[0]} -> {result.default_change[1]}")
    if result.flows_unavailable:
        lines.append(f"recent flows: not available ({result.flows_unavailable})")
    else:
        lines.append(
            f"recent flows: {result.flows_checked} checked, "
            f"{len(result.changed)} would change verdict"
        )
        lines += [f"  {change.describe()}" for change in result.changed]
        lines += [f"  not evaluated: {why}" for why in result.not_evaluated]
    if not result.differs:
        lines.append(f"no difference: {file} is what runs on {cgroup}")
    return "\n".join(lines)
