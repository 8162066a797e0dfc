"""Workloads: local or known by address, a sound cgroup path, SPIFFE identities, unique prefixes."""

from __future__ import annotations

import re

from ebmesh.language.ast import Cidr, IPNetwork, Mesh, StringLiteral, Workload
from ebmesh.language.semantic.addresses import check_cidr
from ebmesh.language.semantic.report import Report, first_on, line_of

# SPIFFE ID: spiffe://TRUST_DOMAIN/PATH; the path's segments are [A-Za-z0-9._-]+,
# never '.' or '..'.
SPIFFE_ID = re.compile(r"spiffe://([a-z0-9._-]+)((?:/[A-Za-z0-9._-]+)+)")
CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


def check_workloads(mesh: Mesh, trust_domain: str, report: Report) -> None:
    cgroup_owner: dict[str, tuple[Workload, StringLiteral]] = {}
    prefix_owner: dict[IPNetwork, tuple[Workload, Cidr]] = {}
    for workload in mesh.workloads:
        name = workload.name.value
        if not workload.cgroups and not workload.addresses:
            report.error(
                workload.name.span,
                f"workload '{name}' has neither a cgroup nor an address",
                hint='add `cgroup "PATH"` to make it local, or `address` to recognise it by address',
            )
        _check_repeats(workload, "cgroup", workload.cgroups, report)
        _check_repeats(workload, "identity", workload.identities, report)
        for cgroup in workload.cgroups:
            if _check_cgroup_path(cgroup, report):
                _claim_cgroup(workload, cgroup, cgroup_owner, report)
        for identity in workload.identities:
            _check_identity(identity, trust_domain, report)
        for cidr in workload.addresses:
            check_cidr(cidr, report)
            _claim_prefix(workload, cidr, prefix_owner, report)
        if workload.mtls_required and not workload.cgroups:
            report.error(
                workload.mtls_span or workload.name.span,
                f"workload '{name}' requires mtls but has no cgroup: no SVID can be issued to it",
                hint="give it a cgroup, or remove 'mtls required'",
            )


def _check_repeats(
    workload: Workload, keyword: str, items: list[StringLiteral], report: Report
) -> None:
    for repeated in items[1:]:
        report.error(
            repeated.span,
            f"workload '{workload.name.value}' has a second {keyword}{first_on(items[0].span)}",
            hint=f"a workload has one {keyword}",
        )


def _check_cgroup_path(cgroup: StringLiteral, report: Report) -> bool:
    """True if the path is one a workload can have."""
    path = cgroup.value
    relative = "cgroup paths are relative to the cgroup the policy is attached to"
    if not path:
        report.error(cgroup.span, "empty cgroup path", hint=f'{relative}, e.g. "frontend"')
        return False
    if CONTROL_CHARACTER.search(path):
        report.error(cgroup.span, f"cgroup path {cgroup.value!r} contains a control character")
        return False
    if path.startswith("/"):
        report.error(
            cgroup.span,
            f'cgroup path "{path}" is absolute',
            hint=f'{relative}: write "{path.lstrip("/")}"',
        )
        return False
    parts = path.split("/")
    if ".." in parts:
        report.error(
            cgroup.span,
            f"cgroup path \"{path}\" contains '..'",
            hint=f"{relative}, and stay below it",
        )
        return False
    if "" in parts or "." in parts:
        tidy = "/".join(p for p in parts if p not in ("", "."))
        report.error(
            cgroup.span,
            f"cgroup path \"{path}\" has an empty or '.' component",
            hint=f'write "{tidy}"' if tidy else relative,
        )
        return False
    return True


def _claim_cgroup(workload: Workload, cgroup: StringLiteral, owner: dict, report: Report) -> None:
    if cgroup.value not in owner:
        owner[cgroup.value] = (workload, cgroup)
        return
    first, first_cgroup = owner[cgroup.value]
    if first is workload:
        return  # a repeated cgroup statement, already reported
    report.error(
        cgroup.span,
        f"cgroup \"{cgroup.value}\" already belongs to workload '{first.name.value}'{line_of(first_cgroup.span)}",
        hint="a socket belongs to one workload: give each workload its own cgroup",
    )


def _claim_prefix(workload: Workload, cidr: Cidr, owner: dict, report: Report) -> None:
    network = cidr.network
    if network not in owner:
        owner[network] = (workload, cidr)
        return
    first, first_cidr = owner[network]
    where = (
        "twice in this workload"
        if first is workload
        else f"already in workload '{first.name.value}'"
    )
    report.error(
        cidr.span,
        f"{network} is {where}{line_of(first_cidr.span)}",
        hint="a prefix belongs to one workload (overlapping prefixes are fine: the most specific wins)",
    )


def _check_identity(identity: StringLiteral, trust_domain: str, report: Report) -> None:
    value = identity.value
    example = "e.g. spiffe://shop.example/ns/prod/sa/api"
    if not value.startswith("spiffe://"):
        report.error(
            identity.span,
            f'identity "{value}" is not a SPIFFE ID',
            hint=f"it starts with spiffe://, {example}",
        )
        return
    match = SPIFFE_ID.fullmatch(value)
    if match is None or any(s in (".", "..") for s in value.split("/")[3:]):
        report.error(
            identity.span,
            f'invalid SPIFFE ID "{value}"',
            hint=(
                "spiffe://TRUST_DOMAIN/PATH: a lowercase trust domain ([a-z0-9._-]), then a path of "
                f"segments made of [A-Za-z0-9._-], {example}"
            ),
        )
    elif match.group(1) != trust_domain:
        report.error(
            identity.span,
            f"identity \"{value}\" is in trust domain '{match.group(1)}', not the mesh's '{trust_domain}'",
            hint="the mesh's certificate authority issues SVIDs in its own trust domain only",
        )
