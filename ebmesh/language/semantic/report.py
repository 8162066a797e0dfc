"""Collects semantic diagnostics, each at a node's span."""

from __future__ import annotations

from ebmesh.errors import Diagnostic
from ebmesh.language.ast import Span
from ebmesh.language.source import SourceText


class Report:
    def __init__(self, source: SourceText):
        self.source = source
        self.diagnostics: list[Diagnostic] = []

    def error(self, span: Span | None, message: str, hint: str | None = None) -> None:
        self.diagnostics.append(self.source.at_span(span, message, hint=hint))


def line_of(span: Span | None) -> str:
    """' (line 12)', or '' for a node built by hand."""
    return f" (line {span.line})" if span is not None else ""


def first_on(span: Span | None) -> str:
    """' (first on line 12)', or '' for a node built by hand."""
    return f" (first on line {span.line})" if span is not None else ""
