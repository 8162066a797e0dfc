"""`check(policy)`: every semantic mistake in a parsed policy, raised together as one `PolicyError`.

The checks themselves live in ebmesh/language/semantic/, one module per
concern; docs/language.md lists them.
"""

from __future__ import annotations

from ebmesh.errors import PolicyError
from ebmesh.language.ast import PolicyFile
from ebmesh.language.semantic.names import declare_names
from ebmesh.language.semantic.report import Report
from ebmesh.language.semantic.rules import check_rules
from ebmesh.language.semantic.services import check_services
from ebmesh.language.semantic.settings import check_settings, trust_domain
from ebmesh.language.semantic.workloads import check_workloads
from ebmesh.language.source import SourceText


def check(policy: PolicyFile) -> None:
    """Raise `PolicyError` with every diagnostic of the file, sorted by position; None if it is sound."""
    report = Report(SourceText(policy.filename, policy.text))
    mesh = policy.mesh
    check_settings(mesh, report)
    declared = declare_names(mesh, report)
    check_workloads(mesh, trust_domain(mesh), report)
    check_services(mesh, report)
    check_rules(mesh.rules, declared, report)
    if report.diagnostics:
        raise PolicyError(report.diagnostics)
