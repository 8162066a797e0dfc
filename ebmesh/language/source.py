"""A policy's text, and `Diagnostic`s located in it.

Lines are split on '\\n' only, as Lark counts them, so a line and column from
the parser always land on the right character (str.splitlines would also split
on '\\x0b', '\\x1c', '\\u2028', ...).
"""

from __future__ import annotations

from ebmesh.errors import Diagnostic, SourceLocation
from ebmesh.language.ast import Span


class SourceText:
    def __init__(self, filename: str, text: str):
        self.filename = filename
        self.text = text
        self._lines: list[str] | None = None

    def line(self, number: int) -> str | None:
        if self._lines is None:
            self._lines = self.text.split("\n")
        if 1 <= number <= len(self._lines):
            return self._lines[number - 1].rstrip("\r")
        return None

    def at(
        self, line: int, column: int, message: str, *, length: int = 1, hint: str | None = None
    ) -> Diagnostic:
        location = SourceLocation(self.filename, line, column, max(1, length))
        return Diagnostic(message, location, self.line(line), hint)

    def at_span(self, span: Span | None, message: str, *, hint: str | None = None) -> Diagnostic:
        """A diagnostic at `span`, or with no location for a tree built by hand."""
        if span is None:
            return Diagnostic(f"{self.filename}: {message}", None, None, hint)
        return self.at(span.line, span.column, message, length=span.length, hint=hint)
