"""The cyclic garbage collector is paused once per call of an entry point, and only there."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

import ebmesh
from ebmesh import compiler
from ebmesh.language import check, loading, parse

SHOP = (Path(__file__).resolve().parents[2] / "examples" / "shop.mesh").read_text()


@pytest.fixture
def pauses(monkeypatch):
    """Counts the pauses taken (calls of gc.disable) while the collector was running."""
    taken = []
    real_disable = gc.disable

    def disable():
        taken.append(gc.isenabled())
        real_disable()

    monkeypatch.setattr(gc, "disable", disable)
    assert gc.isenabled()
    yield taken
    assert gc.isenabled(), "the collector was left paused"


def spy(monkeypatch, module, name, seen):
    """Wrap module.name so that each call records whether the collector is running."""
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        seen.append(gc.isenabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


def test_load_pauses_once_for_parse_and_check(pauses, monkeypatch):
    running = []
    spy(monkeypatch, loading, "parse", running)
    spy(monkeypatch, loading, "check", running)
    loading.load(SHOP)
    assert running == [False, False]
    assert pauses == [True]


def test_parse_and_check_alone_do_not_pause(pauses):
    check(parse(SHOP))
    assert pauses == []


def test_compile_pauses_once_from_parse_to_the_object(pauses, monkeypatch):
    running = []
    spy(monkeypatch, compiler, "parse_and_check", running)
    spy(monkeypatch, compiler, "lower_to_ir", running)
    spy(monkeypatch, compiler, "lower", running)

    class Stop(Exception):
        pass

    def build_object(*args, **kwargs):
        running.append(gc.isenabled())
        raise Stop  # the pause is what is tested here, not clang

    monkeypatch.setattr(compiler, "build_object", build_object)
    with pytest.raises(Stop):
        ebmesh.compile(SHOP)
    assert running == [False, False, False, False]
    assert pauses == [True]
