"""Every error ebmesh raises, in one hierarchy.

Policy mistakes are collected as `Diagnostic`s and raised together in one
`PolicyError`; problems with the machine (no clang, not root, no BTF) are
`EnvironmentProblem`s that say what to do; failures of the kernel or libbpf
are `LibbpfError`s carrying errno and the verifier/libbpf log. Anything a
phase below the language checks cannot handle is an `InternalError`: a bug.
"""

from __future__ import annotations

import errno as _errno
import os
from dataclasses import dataclass, field


class EbmeshError(Exception):
    """Base class of every error ebmesh raises on purpose."""


@dataclass(frozen=True)
class SourceLocation:
    """A point in a policy source, 1-based like compilers print it."""

    file: str
    line: int
    column: int
    length: int = 1  # how many characters the caret line underlines

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Diagnostic:
    """One mistake in a policy: where, what, and (maybe) how to fix it."""

    message: str
    location: SourceLocation | None = None
    source_line: str | None = None
    hint: str | None = None

    def render(self) -> str:
        """`FILE:LINE:COLUMN: message`, the line, a caret under the spot, the hint."""
        head = f"{self.location}: {self.message}" if self.location else self.message
        lines = [head]
        if self.location is not None and self.source_line is not None:
            text, offset = _excerpt(self.source_line.rstrip("\n"), self.location.column - 1)
            lines.append(f"    {text}")
            width = max(1, min(self.location.length, len(text) - offset))
            lines.append(f"    {' ' * offset}^{'~' * (width - 1)}")
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)

    def sort_key(self) -> tuple:
        loc = self.location
        return (loc.file, loc.line, loc.column) if loc else ("", 0, 0)


_SHOWN_BEFORE = 40  # characters of a long source line shown before the caret
_SHOWN_WIDTH = 120


def _excerpt(line: str, offset: int) -> tuple[str, int]:
    """The part of `line` to print, and where `offset` falls in it.

    A long line (a generated policy on one line) is cut to a window around the
    spot: printed whole for each of thousands of errors it would make the
    message gigabytes long. A tab prints as one space and other control
    characters as '?', one for one, so the caret stays aligned and nothing
    reaches the terminal raw. Only the window is converted: converting the
    whole line for each error made 100,000 errors on one 1 MB line take 70 s.
    """
    start = 0
    if len(line) > _SHOWN_WIDTH:
        start = max(0, min(offset - _SHOWN_BEFORE, len(line) - _SHOWN_WIDTH))
    shown = line[start : start + _SHOWN_WIDTH].expandtabs(1)
    if not shown.isprintable():
        shown = "".join(c if c.isprintable() else "?" for c in shown)
    prefix = "..." if start > 0 else ""
    suffix = "..." if start + _SHOWN_WIDTH < len(line) else ""
    return f"{prefix}{shown}{suffix}", len(prefix) + offset - start


class PolicyError(EbmeshError):
    """A policy that cannot be compiled; carries every diagnostic found.

    `diagnostics` holds them all; the message shows the first
    MAX_RENDERED_DIAGNOSTICS: a generated policy can have a hundred thousand
    mistakes, and no reader wants them all on a terminal.
    """

    MAX_RENDERED_DIAGNOSTICS = 100

    def __init__(self, diagnostics):
        self.diagnostics: tuple[Diagnostic, ...] = tuple(
            sorted(diagnostics, key=Diagnostic.sort_key)
        )
        if not self.diagnostics:
            raise ValueError("PolicyError needs at least one diagnostic")
        super().__init__(self.render())

    def render(self) -> str:
        count = len(self.diagnostics)
        shown = self.diagnostics[: self.MAX_RENDERED_DIAGNOSTICS]
        body = "\n".join(d.render() for d in shown)
        if count == 1:
            return body
        if count > len(shown):
            body += f"\n... and {count - len(shown)} more (PolicyError.diagnostics has them all)"
        return f"{body}\n{count} errors"


class EnvironmentProblem(EbmeshError):
    """The machine lacks something ebmesh needs; the message says what to do."""


class ToolchainError(EbmeshError):
    """clang or bpftool failed on input ebmesh produced (a bug in ebmesh)."""

    def __init__(self, message: str, output: str = ""):
        self.output = output
        super().__init__(f"{message}\n{output}".rstrip())


@dataclass
class LibbpfError(EbmeshError):
    """A libbpf call failed. `log` holds what libbpf and the verifier printed."""

    function: str
    errno: int
    log: str = ""
    detail: str = field(default="")

    def __post_init__(self):
        super().__init__(str(self))

    def __str__(self) -> str:
        name = _errno.errorcode.get(self.errno, str(self.errno))
        text = f"{self.function}: {os.strerror(self.errno)} ({name})"
        if self.detail:
            text += f": {self.detail}"
        if self.log:
            text += "\n" + self.log.rstrip()
        return text


class AttachError(EbmeshError):
    """A policy could not be attached (unsafe target, missing cgroup, ...)."""


class InternalError(EbmeshError):
    """A bug in ebmesh, not in the policy or the machine.

    User errors are raised only where the language is checked; a phase below
    the checks that meets input it cannot handle raises this (like vyper's
    CompilerPanic). Please report it with the policy that caused it.
    """
