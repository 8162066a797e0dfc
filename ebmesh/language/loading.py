"""`load(source)`: a checked `PolicyFile` from policy text, a file, or a parsed tree."""

from __future__ import annotations

from pathlib import Path

from ebmesh.errors import Diagnostic, PolicyError
from ebmesh.language.ast import PolicyFile
from ebmesh.language.checks import check
from ebmesh.language.gc_pause import cyclic_gc_paused
from ebmesh.language.parser import parse


def load(source: str | Path | PolicyFile, *, filename: str = "<policy>") -> PolicyFile:
    """Parse (unless already parsed) and check. Raises `PolicyError` with every mistake found.

    A str is policy text, not a file name, named `filename` in diagnostics; a
    Path is read as UTF-8 and named in diagnostics as given. Either way a
    leading byte-order mark is dropped and '\\r\\n' or a lone '\\r' ends a line
    (source.normalised). The cyclic garbage collector is paused for the call
    (gc_pause.py).
    """
    with cyclic_gc_paused():
        return parse_and_check(source, filename=filename)


def parse_and_check(source: str | Path | PolicyFile, *, filename: str = "<policy>") -> PolicyFile:
    """`load` without its pause, for a caller whose own pause covers more (`ebmesh.compile`)."""
    if isinstance(source, PolicyFile):
        policy = source
    elif isinstance(source, Path):
        policy = parse(_read(source), filename=str(source))
    elif isinstance(source, str):
        policy = parse(source, filename=filename)
    else:
        raise TypeError(
            f"load() takes policy text (str), a Path or a PolicyFile, not {type(source).__name__}"
        )
    check(policy)
    return policy


def _read(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise PolicyError(
            [Diagnostic(f"{path}: cannot read the policy: {error.strerror or error}")]
        ) from None
    return decode(data, str(path))


def decode(data: bytes, filename: str) -> str:
    """A policy file's bytes as text: UTF-8 (PolicyError at the first bad byte's line)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise PolicyError(
            [Diagnostic(f"{filename}:{line}: the policy is not valid UTF-8 (byte {error.start})")]
        ) from None
