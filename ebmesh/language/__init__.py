"""The policy language front-end: text to a checked AST.

parse(text, filename)  -> PolicyFile   syntax errors raise PolicyError
check(policy_file)     -> None         semantic errors raise PolicyError
load(source)           -> PolicyFile   both: from text, a file path, or a PolicyFile
"""

from __future__ import annotations

from ebmesh.language.checks import check
from ebmesh.language.loading import load
from ebmesh.language.parser import parse

__all__ = ["check", "load", "parse"]
