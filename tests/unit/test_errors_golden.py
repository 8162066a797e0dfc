"""Golden tests for the exact text of errors: tests/golden/errors/NAME.mesh -> NAME.expected.

Each .expected file is the rendered PolicyError for its .mesh file, named by
its base name. To regenerate after a deliberate change of wording:

    EBMESH_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/unit/test_errors_golden.py

then read every changed file: the line, the column and the caret must be right.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ebmesh.errors import PolicyError
from ebmesh.language import check, parse

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "errors"
CASES = sorted(GOLDEN.glob("*.mesh"))
UPDATE = os.environ.get("EBMESH_UPDATE_GOLDEN") == "1"


def rendered_error(path: Path) -> str:
    try:
        check(parse(path.read_text(), filename=path.name))
    except PolicyError as error:
        return error.render() + "\n"
    raise AssertionError(f"{path.name} compiled without error")


def test_there_are_golden_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_error_text(path: Path):
    expected_path = path.with_suffix(".expected")
    actual = rendered_error(path)
    if UPDATE:
        expected_path.write_text(actual)
    assert expected_path.exists(), (
        f"no {expected_path.name}: run with EBMESH_UPDATE_GOLDEN=1 and review it"
    )
    assert actual == expected_path.read_text()


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_every_caret_sits_on_its_line(path: Path):
    """Independent of the wording: each location names a real spot of the file."""
    lines = path.read_text().split("\n")
    try:
        check(parse(path.read_text(), filename=path.name))
    except PolicyError as error:
        for diagnostic in error.diagnostics:
            location = diagnostic.location
            assert location is not None and location.file == path.name
            assert 1 <= location.line <= len(lines)
            assert 1 <= location.column <= len(lines[location.line - 1]) + 1
            assert diagnostic.source_line == lines[location.line - 1]
