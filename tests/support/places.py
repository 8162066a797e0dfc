"""Throwaway cgroups and network namespaces that are always removed.

Everything here is named `<prefix><run>-<kind>-<random>`: the prefix is
`ebmesh-test-` for tests and `ebmesh-demo-` for the demo, the run is unique to
this process, so `leftovers()` finds what this run made by name alone. The
context managers tear everything down even when the test inside fails:
processes are killed (cgroup.kill), cgroups removed deepest first, namespaces
deleted.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from ebmesh.runtime.cgroups import cgroup2_mount

TEST_PREFIX = "ebmesh-test-"
RUN = uuid.uuid4().hex[:6]


def _unique(kind: str, prefix: str) -> str:
    return f"{prefix}{RUN}-{kind}-{uuid.uuid4().hex[:8]}"


def _remove_cgroup_tree(root: Path) -> None:
    if not root.exists():
        return
    kill = root / "cgroup.kill"
    if kill.exists():
        kill.write_text("1")
    for directory in sorted(
        (p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
    ) + [root]:
        for _ in range(200):
            try:
                directory.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.01)  # processes still dying
        else:
            raise RuntimeError(f"could not remove cgroup {directory}")


@contextlib.contextmanager
def throwaway_cgroup(children: tuple[str, ...] = (), prefix: str = TEST_PREFIX) -> Iterator[Path]:
    """A fresh cgroup under the cgroup2 mount, with `children` (paths like "a/b") made below it."""
    root = cgroup2_mount() / _unique("cg", prefix)
    root.mkdir()
    try:
        for child in children:
            (root / child).mkdir(parents=True, exist_ok=True)
        yield root
    finally:
        _remove_cgroup_tree(root)


def ip(*arguments: str, namespace: str | None = None) -> None:
    command = ["ip", *(["-n", namespace] if namespace else []), *arguments]
    subprocess.run(command, check=True, capture_output=True, text=True)


@contextlib.contextmanager
def throwaway_netns(addresses: tuple[str, ...] = (), prefix: str = TEST_PREFIX) -> Iterator[str]:
    """A fresh network namespace with loopback up and `addresses` (CIDRs) on lo."""
    name = _unique("ns", prefix)
    ip("netns", "add", name)
    try:
        ip("link", "set", "lo", "up", namespace=name)
        for address in addresses:
            ip(
                "address",
                "add",
                address,
                "dev",
                "lo",
                *(["nodad"] if ":" in address else []),
                namespace=name,
            )
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


@contextlib.contextmanager
def veth_pair(
    left_ns: str, left_address: str, right_ns: str, right_address: str
) -> Iterator[tuple[str, str]]:
    """A veth link between two namespaces (it dies with them); yields the two devices' names."""
    left, right = f"veth{uuid.uuid4().hex[:6]}", f"veth{uuid.uuid4().hex[:6]}"
    ip(
        "link",
        "add",
        left,
        "netns",
        left_ns,
        "type",
        "veth",
        "peer",
        "name",
        right,
        "netns",
        right_ns,
    )
    for namespace, device, address in (
        (left_ns, left, left_address),
        (right_ns, right, right_address),
    ):
        ip(
            "address",
            "add",
            address,
            "dev",
            device,
            *(["nodad"] if ":" in address else []),
            namespace=namespace,
        )
        ip("link", "set", device, "up", namespace=namespace)
    yield left, right


def leftovers(prefix: str = TEST_PREFIX) -> list[str]:
    """The cgroups and namespaces this run made under `prefix` that are still there."""
    mine = f"{prefix}{RUN}-"
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [str(p) for p in cgroup2_mount().glob(f"{mine}*")] + [
        name
        for name in (line.split()[0] for line in namespaces.splitlines() if line.strip())
        if name.startswith(mine)
    ]
