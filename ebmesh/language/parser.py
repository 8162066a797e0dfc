"""`parse(text) -> PolicyFile`: policy text to AST, or a `PolicyError` with every syntax error.

A policy without syntax errors goes through the fast table-driven parser
(fast_parser.py); one with errors is parsed again by Lark itself, whose error
recovery reports each of them (syntax_errors.py). Both build the tree with
the same builder, during the parse.
"""

from __future__ import annotations

from ebmesh.errors import Diagnostic, PolicyError
from ebmesh.language.ast import Mesh, PolicyFile
from ebmesh.language.builder import Problem
from ebmesh.language.fast_parser import FastPathUnavailable
from ebmesh.language.gc_pause import cyclic_gc_paused
from ebmesh.language.grammar import Grammar, grammar
from ebmesh.language.source import SourceText
from ebmesh.language.syntax_errors import SyntaxErrorReporter


def parse(text: str, filename: str = "<policy>") -> PolicyFile:
    """Parse one policy file. Raises `PolicyError` listing every syntax error and malformed literal."""
    return _parse(text, filename, fast=True)


def parse_with_lark(text: str, filename: str = "<policy>") -> PolicyFile:
    """`parse` through Lark's own parser only: slower; for tests that compare both paths."""
    return _parse(text, filename, fast=False)


def _parse(text: str, filename: str, fast: bool) -> PolicyFile:
    if not isinstance(text, str):
        raise TypeError(f"parse() takes the policy text as str, not {type(text).__name__}")
    source = SourceText(filename, text)
    compiled = grammar()
    with cyclic_gc_paused():
        mesh, diagnostics = _build(compiled, source, fast)
        if diagnostics or not isinstance(mesh, Mesh):
            raise PolicyError(diagnostics or [source.at(1, 1, "the policy could not be parsed")])
        return PolicyFile(filename=filename, text=text, mesh=mesh)


def _build(
    compiled: Grammar, source: SourceText, fast: bool
) -> tuple[Mesh | None, list[Diagnostic]]:
    text = source.text
    with compiled.lock:
        compiled.builder.reset()
        try:
            if not fast:
                raise FastPathUnavailable
            mesh = compiled.table_parser.parse(text)
            diagnostics: list[Diagnostic] = []
        except FastPathUnavailable:
            compiled.builder.reset()
            reporter = SyntaxErrorReporter(source, compiled.lark)
            mesh = reporter.parse()
            diagnostics = reporter.diagnostics
        diagnostics += [
            _literal_diagnostic(source, problem) for problem in compiled.builder.problems
        ]
        compiled.builder.reset()
    return mesh, diagnostics


def _literal_diagnostic(source: SourceText, problem: Problem) -> Diagnostic:
    return source.at(
        problem.line, problem.column, problem.message, length=problem.length, hint=problem.hint
    )
