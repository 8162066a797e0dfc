"""Shared fixtures. Kernel tests need root and create only throwaway cgroups
(`ebmesh-test-*`) and network namespaces, removed even when a test fails."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import places
from tests.support.places import throwaway_cgroup


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind():
    """After the whole run: no cgroup or namespace this run made may remain, nor a mesh's
    identity directory it made (attaching mtls without identity_dir makes one)."""
    from ebmesh.runtime.attachment import DEFAULT_IDENTITY_ROOT

    def identity_dirs() -> set[Path]:
        return set(DEFAULT_IDENTITY_ROOT.iterdir()) if DEFAULT_IDENTITY_ROOT.is_dir() else set()

    before = identity_dirs()
    yield
    left = places.leftovers()
    left += [str(p) for p in sorted(identity_dirs() - before)]
    from ebmesh.runtime import registry

    mine = f"{places.TEST_PREFIX}{places.RUN}-"
    left += [f"record of {r.mesh} on {r.cgroup}" for r in registry.records() if mine in r.cgroup]
    pinned = {r.mesh for r in registry.records() if r.pinned}
    if registry.PIN_ROOT.is_dir():
        left += [str(p) for p in registry.PIN_ROOT.iterdir() if p.name not in pinned]
    assert not left, f"tests left these behind: {left}"


@pytest.fixture
def root():
    """Kernel tests run as root; anywhere else they fail loudly rather than skip."""
    if os.geteuid() != 0:
        pytest.fail("kernel tests need root (run `make test` as root)")
    if not Path("/sys/kernel/btf/vmlinux").exists():
        pytest.fail("kernel tests need BTF at /sys/kernel/btf/vmlinux")


@pytest.fixture
def cgroup(root):
    """A throwaway cgroup removed after the test, with whatever ran in it."""
    with throwaway_cgroup() as path:
        yield path


@pytest.fixture
def cgroup_tree(root):
    """A factory: cgroup_tree("a", "b/c") makes a throwaway cgroup with those children."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        yield lambda *children: stack.enter_context(throwaway_cgroup(children))


@pytest.fixture
def spawn(root):
    """A factory of agents: spawn(cgroup_path, netns=None) -> Agent, all stopped afterwards."""
    from tests.support import Agent

    started: list[Agent] = []

    def make(cgroup: Path | None = None, netns: str | None = None, name: str = "agent") -> Agent:
        agent = Agent(cgroup, netns, name)
        started.append(agent)
        return agent

    yield make
    for agent in reversed(started):
        agent.stop()
