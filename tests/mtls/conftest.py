"""Fixtures of the mTLS tests: identity directories, workloads, authenticators on loopback."""

from __future__ import annotations

import ipaddress
from contextlib import ExitStack

import pytest

from ebmesh.datapath.parties import Workload
from ebmesh.mtls import Authenticator, IdentityStore, PairTable

TRUST_DOMAIN = "shop.example"


def spiffe_id(name: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/{name}"


def workload(identity: int, name: str, local: bool = True, addresses=()) -> Workload:
    return Workload(
        identity=identity,
        name=name,
        cgroup=name if local else None,
        prefixes=tuple(ipaddress.ip_network(a) for a in addresses),
        spiffe_id=spiffe_id(name),
        mtls_required=False,
    )


@pytest.fixture
def store(tmp_path) -> IdentityStore:
    """A fresh identity directory with an issuer (what `ebmesh ca init` makes)."""
    return IdentityStore.create(tmp_path / "shop", TRUST_DOMAIN)


@pytest.fixture
def authenticators():
    """A factory of started authenticators on loopback (port chosen by the kernel), all
    stopped afterwards: make(store, workloads, pairs, **options) -> (authenticator, sink)."""
    with ExitStack() as stack:

        def make(store, workloads, pairs, **options):
            sink = options.pop("sink", None) or PairTable()
            options.setdefault("listen", ["127.0.0.1"])
            options.setdefault("port", 0)
            authenticator = Authenticator(store, workloads, pairs, sink=sink, **options)
            stack.callback(authenticator.stop)
            authenticator.report = authenticator.start()
            return authenticator, sink

        yield make
