"""Where the grammar and the C templates live.

In a checkout (and an editable install) they sit beside the package; an
installed copy finds them under `<prefix>/share/ebmesh/`.
"""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path


@cache
def resource_dir(name: str) -> Path:
    """The folder `grammar` or `bpf_src`."""
    candidates = [
        Path(__file__).resolve().parent.parent / name,
        Path(sys.prefix) / "share" / "ebmesh" / name,
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"ebmesh resource folder {name!r} not found in {candidates}")


def grammar_path() -> Path:
    return resource_dir("grammar") / "ebmesh.lark"


def bpf_source_dir() -> Path:
    return resource_dir("bpf_src")
