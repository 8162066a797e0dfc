"""Names: valid, not keywords, unique across workloads and services."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ebmesh.language.ast import Mesh, Name, Service, Workload
from ebmesh.language.grammar import KEYWORDS
from ebmesh.language.semantic.report import Report, line_of

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
KEYWORD_TEXTS = frozenset(KEYWORDS.values())


@dataclass
class Declarations:
    """What each name means; the first declaration wins when a name is reused."""

    workloads: dict[str, Workload] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)

    def all_names(self) -> list[str]:
        return [*self.workloads, *self.services]


def declare_names(mesh: Mesh, report: Report) -> Declarations:
    declared = Declarations()
    check_name(mesh.name, report)
    declarations: list[Workload | Service] = sorted(
        [*mesh.workloads, *mesh.services],
        key=lambda d: (d.span.line, d.span.column) if d.span else (0, 0),
    )
    for declaration in declarations:
        name = declaration.name
        check_name(name, report)
        earlier = declared.workloads.get(name.value) or declared.services.get(name.value)
        if earlier is not None:
            kind = "workload" if isinstance(earlier, Workload) else "service"
            report.error(
                name.span,
                f"'{name.value}' is already declared as a {kind}{line_of(earlier.name.span)}",
                hint="names are unique across workloads and services",
            )
        elif isinstance(declaration, Workload):
            declared.workloads[name.value] = declaration
        else:
            declared.services[name.value] = declaration
    return declared


def check_name(name: Name, report: Report) -> None:
    """For trees built by hand: the parser only makes valid names."""
    if name.value in KEYWORD_TEXTS:
        report.error(name.span, f"'{name.value}' is a keyword and cannot be a name")
    elif not NAME.fullmatch(name.value) or "->" in name.value:
        report.error(
            name.span, f"invalid name '{name.value}'", hint="a name is [A-Za-z_][A-Za-z0-9_-]*"
        )
