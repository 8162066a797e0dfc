"""A policy's text, and `Diagnostic`s located in it.

Lines are split on '\\n' only, as Lark counts them, so a line and column from
the parser always land on the right character (str.splitlines would also split
on '\\x0b', '\\x1c', '\\u2028', ...). `normalised` makes every line end in
'\\n' before anything reads the text.
"""

from __future__ import annotations

import re

from ebmesh.errors import Diagnostic, SourceLocation
from ebmesh.language.ast import Span

BYTE_ORDER_MARK = "\ufeff"
_LINE_ENDING = re.compile(r"\r\n?")


def normalised(text: str) -> str:
    """`text` with a leading byte-order mark dropped and every line ending '\\n'.

    An editor's byte-order mark is not part of the policy, read from a file or
    given as a str. A line may end in '\\r\\n' (Windows) or a lone '\\r' (classic
    Mac OS) as well: left alone, a lone '\\r' would be no line break to the lexer
    or to line numbers, and a comment would run to the end of the file.
    """
    if text.startswith(BYTE_ORDER_MARK):
        text = text[1:]
    return _LINE_ENDING.sub("\n", text) if "\r" in text else text


class SourceText:
    def __init__(self, filename: str, text: str):
        self.filename = filename
        self.text = text
        self._lines: list[str] | None = None

    def line(self, number: int) -> str | None:
        if self._lines is None:
            self._lines = self.text.split("\n")
        if 1 <= number <= len(self._lines):
            return self._lines[number - 1]
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
