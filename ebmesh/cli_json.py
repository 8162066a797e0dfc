"""The JSON each command prints with `-o json`: the shapes docs/cli.md documents as stable.

Every document is one object with a `kind` naming its shape; keys are
snake_case, lists are lists of objects, addresses and times are strings
(times in RFC 3339 with the local offset), sizes and counts are numbers.
Keys may be added in later versions; none is renamed or removed.
"""

from __future__ import annotations

import datetime


def moment(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")


def check(name: str, mesh) -> dict:
    return {
        "kind": "check",
        "file": name,
        "ok": True,
        "mesh": mesh.name.value,
        "workloads": [w.name.value for w in mesh.workloads],
        "services": [s.name.value for s in mesh.services],
        "rules": len(mesh.rules),
        "errors": [],
    }


def check_failed(name: str, error) -> dict:
    return {"kind": "check", "file": name, "ok": False, "errors": diagnostics(error)}


def diagnostics(error) -> list[dict]:
    found = []
    for diagnostic in error.diagnostics:
        where = diagnostic.location
        found.append(
            {
                "message": diagnostic.message,
                "file": where.file if where else None,
                "line": where.line if where else None,
                "column": where.column if where else None,
                "hint": diagnostic.hint,
            }
        )
    return found


def compiled(name: str, output, compiled, inspected=None) -> dict:
    document = {
        "kind": "compile",
        "file": name,
        "object": str(output),
        "size": len(compiled.object_bytes),
        "cached": compiled.build.cache_hit,
        "timings": {phase: round(seconds, 6) for phase, seconds in compiled.timings.items()},
    }
    if inspected is not None:
        document["inspect"] = inspection(inspected)
    return document


def _enum_name(value) -> str | None:
    if value is None:
        return None
    return getattr(value, "name", str(value)).lower()


def _program(program) -> dict:
    return {
        "name": program.name,
        "section": program.section,
        "prog_type": _enum_name(program.prog_type),
        "attach_type": _enum_name(program.attach_type),
        "instructions": program.insn_count,
        "maps": list(program.maps),
        "calls": list(program.calls),
        "kfuncs": list(program.kfuncs),
        "core_relocations": len(program.core_relocations),
    }


def inspection(info) -> dict:
    return {
        "programs": [_program(p) for p in info.programs],
        "subprograms": [_program(p) for p in info.subprograms],
        "maps": [
            {
                "name": m.name,
                "type": _enum_name(m.type),
                "key_size": m.key_size,
                "value_size": m.value_size,
                "max_entries": m.max_entries,
                "flags": m.flags,
                "key_type": m.key_type,
                "value_type": m.value_type,
            }
            for m in info.maps
        ],
        "data_sections": [
            {
                "name": d.name,
                "size": d.size,
                "readonly": d.readonly,
                "variables": [
                    {"name": v.name, "offset": v.offset, "size": v.size, "type": v.type}
                    for v in d.variables
                ],
            }
            for d in info.data_sections
        ],
        "externs": [{"name": e.name, "kind": e.kind} for e in info.externs],
        "license": info.license,
        "btf_types": info.btf_types,
        "has_btf_ext": info.has_btf_ext,
        "core_relocations": len(info.core_relocations),
    }


def _place(reference) -> dict | None:
    if reference is None:
        return None
    return {
        "file": reference.file,
        "line": reference.line,
        "column": reference.column,
        "text": reference.text,
    }


def explained(evaluation, destination: str, port: int, protocol: str) -> dict:
    return {
        "kind": "explain",
        "verdict": evaluation.verdict,
        "source": evaluation.source,
        "destination": evaluation.destination,
        "to": {"address": destination, "port": port, "protocol": protocol},
        "rule": None
        if evaluation.rule is None
        else {"id": evaluation.rule_id} | _place(evaluation.rule),
        "by_default": evaluation.by_default,
        "default": evaluation.default,
        "needs_mtls": evaluation.needs_mtls,
        "would_deny": evaluation.would_deny,
        "audit_rule": None
        if evaluation.audit_rule is None
        else {"id": evaluation.audit_rule_id} | _place(evaluation.audit_rule),
    }


def status(found) -> dict:
    return {
        "kind": "status",
        "attachments": [
            {
                "mesh": s.mesh,
                "cgroup": s.cgroup,
                "pinned": s.pinned,
                "pid": s.pid,
                "agent_alive": s.agent_alive,
                "since": moment(s.since),
                "rules": s.rules,
                "events": s.events,
                "programs": list(s.programs),
            }
            for s in found
        ],
    }


def _certificate(role: str, info) -> dict:
    return {
        "role": role,
        "path": info.path,
        "name": info.name,
        "key_type": info.key_type,
        "not_before": moment(info.not_before),
        "not_after": moment(info.not_after),
        "status": info.status,
        "fingerprint": info.fingerprint,
    }


def ca_inventory(inventory) -> dict:
    certificates = [_certificate("trusted", c) for c in inventory.bundle]
    if inventory.issuer:
        certificates.append(_certificate("issuer", inventory.issuer))
    certificates += [_certificate("svid", c) for c in inventory.svids]
    return {
        "kind": "ca",
        "directory": str(inventory.directory),
        "certificates": certificates,
        "has_issuer": inventory.issuer is not None,
        "revoked": inventory.revoked,
        "problems": list(inventory.problems),
    }


def ca_created(directory, trust_domain: str, key_type: str, issuer, bundled: int) -> dict:
    return {
        "kind": "ca_init",
        "directory": str(directory),
        "trust_domain": trust_domain,
        "spiffe_id": f"spiffe://{trust_domain}",
        "key_type": key_type,
        "issuer": _certificate("issuer", issuer),
        "bundle_cas": bundled,
    }
