"""What a record keeps of its policy: names, rules and their text, beside the record.

Another process reads verdicts of an attachment it did not load (`ebmesh
events`, `ebmesh diff`): to name the identities and rules in them, and to
compare the running rules with a file, it needs the running policy's names.
They are written next to the record, as /run/ebmesh/attachments/<id>.policy
(JSON; not `.json`, so that listing records does not read it), whenever the
record is, and removed with it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ebmesh.datapath.image import DatapathImage
from ebmesh.datapath.parties import NO_IDENTITY, SourceRef


def path_of(records: Path, cgroup_id: int) -> Path:
    return records / f"{cgroup_id}.policy"


@dataclass
class PolicyRecord:
    """The names of a running policy: enough to decode its events and list its rules."""

    digest: str
    source_name: str
    default_allow: bool
    mode_audit: bool
    names: dict[int, str] = field(default_factory=dict)  # identity -> workload or service
    workloads: tuple[str, ...] = ()
    rules: dict[int, SourceRef] = field(default_factory=dict)  # rule id -> where it was written
    actions: dict[int, str] = field(default_factory=dict)  # rule id -> "allow", "deny audit", ...

    @classmethod
    def of(cls, image: DatapathImage) -> PolicyRecord:
        return cls(
            digest=image.digest,
            source_name=image.shape.source_name,
            default_allow=image.shape.default_allow,
            mode_audit=image.shape.mode_audit,
            names={p.identity: p.name for p in (*image.workloads, *image.services)},
            workloads=tuple(w.name for w in image.workloads),
            rules=dict(image.naming.rules),
            actions={r.rule_id: r.action for r in image.shape.rules},
        )

    # the two methods decode_event asks of a Naming
    def name_of(self, identity: int) -> str:
        name = self.names.get(identity)
        if name is not None:
            return name
        return "-" if identity == NO_IDENTITY else f"#{identity}"

    def rule(self, rule_id: int) -> SourceRef | None:
        return self.rules.get(rule_id)

    def to_json(self) -> dict:
        return {
            "digest": self.digest,
            "source_name": self.source_name,
            "default_allow": self.default_allow,
            "mode_audit": self.mode_audit,
            "names": {str(k): v for k, v in self.names.items()},
            "workloads": list(self.workloads),
            "rules": {str(k): [r.file, r.line, r.column, r.text] for k, r in self.rules.items()},
            "actions": {str(k): v for k, v in self.actions.items()},
        }

    @classmethod
    def from_json(cls, data: dict) -> PolicyRecord:
        return cls(
            digest=data["digest"],
            source_name=data["source_name"],
            default_allow=data["default_allow"],
            mode_audit=data["mode_audit"],
            names={int(k): v for k, v in data["names"].items()},
            workloads=tuple(data["workloads"]),
            rules={int(k): SourceRef(*v) for k, v in data["rules"].items()},
            actions={int(k): v for k, v in data["actions"].items()},
        )


def write(records: Path, cgroup_id: int, policy: PolicyRecord) -> None:
    records.mkdir(parents=True, exist_ok=True)
    path = path_of(records, cgroup_id)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(policy.to_json()))
    os.replace(temporary, path)


def read(records: Path, cgroup_id: int) -> PolicyRecord | None:
    try:
        return PolicyRecord.from_json(json.loads(path_of(records, cgroup_id).read_text()))
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        return None


def remove(records: Path, cgroup_id: int) -> None:
    path_of(records, cgroup_id).unlink(missing_ok=True)
