"""Every example of docs/language.md does what the page says.

A ```mesh block is a complete policy that must load without error. A
```mesh-error block must fail, and the ```error block right after it holds the
exact text ebmesh prints for it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ebmesh.errors import PolicyError
from ebmesh.language import load

DOCS = Path(__file__).resolve().parents[2] / "docs" / "language.md"
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```$", re.M | re.S)


def blocks() -> list[tuple[str, str, int]]:
    text = DOCS.read_text()
    return [
        (m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)
    ]


def examples(kind: str) -> list:
    found = blocks()
    out = []
    for index, (block_kind, body, line) in enumerate(found):
        if block_kind != kind:
            continue
        following = found[index + 1] if index + 1 < len(found) else None
        out.append(pytest.param(body, following, id=f"line{line}"))
    return out


def test_the_page_has_examples_of_both_kinds():
    kinds = [kind for kind, _, _ in blocks()]
    assert kinds.count("mesh") >= 5 and kinds.count("mesh-error") >= 5


@pytest.mark.parametrize("body, following", examples("mesh"))
def test_mesh_examples_load(body, following):
    load(body)


@pytest.mark.parametrize("body, following", examples("mesh-error"))
def test_mesh_error_examples_fail_with_the_documented_message(body, following):
    assert following is not None and following[0] == "error", (
        "a mesh-error block is followed by an error block"
    )
    with pytest.raises(PolicyError) as caught:
        load(body)
    assert caught.value.render() + "\n" == following[1]


def test_every_error_block_follows_a_mesh_error_block():
    found = blocks()
    for index, (kind, _, line) in enumerate(found):
        if kind == "error":
            assert index > 0 and found[index - 1][0] == "mesh-error", f"line {line}"
