"""`parse(text) -> PolicyFile`: policy text to AST, or a `PolicyError` with every syntax error.

One parse, by Lark's LALR parser: the builder makes the tree during it
(builder.py), and at a syntax error Lark calls the reporter, which records it
and recovers so that the parse goes on (syntax_errors.py). A policy without
errors never enters the reporter. At most MAX_SYNTAX_ERRORS syntax errors
and malformed literals are reported, then the last diagnostic says that the
parse stopped, at the next one.

`parse` does not pause the cyclic garbage collector; `load` and
`ebmesh.compile` do, once per call (gc_pause.py).
"""

from __future__ import annotations

from ebmesh.errors import Diagnostic, PolicyError
from ebmesh.language.ast import Mesh, PolicyFile
from ebmesh.language.builder import Problem
from ebmesh.language.grammar import grammar
from ebmesh.language.source import SourceText, normalised
from ebmesh.language.syntax_errors import MAX_SYNTAX_ERRORS, SyntaxErrorReporter


def parse(text: str, filename: str = "<policy>") -> PolicyFile:
    """Parse one policy file. Raises `PolicyError` listing every syntax error and malformed literal.

    The text is read `normalised` (no byte-order mark, every line ending '\\n'),
    and the tree keeps it so: positions are counted in it.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse() takes the policy text as str, not {type(text).__name__}")
    text = normalised(text)
    source = SourceText(filename, text)
    compiled = grammar()
    with compiled.lock:
        compiled.builder.reset()
        try:
            reporter = SyntaxErrorReporter(source, compiled)
            mesh = reporter.parse()
            diagnostics = _capped(
                source,
                reporter.diagnostics
                + [_literal_diagnostic(source, problem) for problem in compiled.builder.problems],
                reporter.stopped_at,
            )
        finally:
            compiled.builder.reset()
    if diagnostics or not isinstance(mesh, Mesh):
        raise PolicyError(diagnostics or [source.at(1, 1, "the policy could not be parsed")])
    return PolicyFile(filename=filename, text=text, mesh=mesh)


def _capped(
    source: SourceText, diagnostics: list[Diagnostic], stopped_at: tuple[int, int, int] | None
) -> list[Diagnostic]:
    """The first MAX_SYNTAX_ERRORS, by position, then "too many errors" at the next error.

    `stopped_at` is where the reporter stopped the parse, if it did: every
    diagnostic found lies before it.
    """
    if len(diagnostics) <= MAX_SYNTAX_ERRORS and stopped_at is None:
        return diagnostics
    ordered = sorted(diagnostics, key=Diagnostic.sort_key)
    if len(ordered) > MAX_SYNTAX_ERRORS:
        location = ordered[MAX_SYNTAX_ERRORS].location
        stopped_at = (location.line, location.column, location.length)
    line, column, length = stopped_at
    return ordered[:MAX_SYNTAX_ERRORS] + [
        source.at(
            line,
            column,
            "too many errors; stopping",
            length=length,
            hint=f"the parse stops after {MAX_SYNTAX_ERRORS} syntax errors and malformed "
            "literals: fix these and check again",
        )
    ]


def _literal_diagnostic(source: SourceText, problem: Problem) -> Diagnostic:
    return source.at(
        problem.line, problem.column, problem.message, length=problem.length, hint=problem.hint
    )
