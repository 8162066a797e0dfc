"""mTLS in the datapath: connections that need it pass only for authenticated pairs.

A policy with `mtls` rules or `mtls required` workloads starts an authenticator
with its attachment; the local pairs it needs are authenticated before attach()
returns, so their first connection passes. A pair that is not authenticated is
refused at once (EPERM at connect: an error, not a hang); the datapath tells the
authenticator, which does the handshake, and the next attempt passes, or never
does when the certificates are bad. Across namespaces, two attachments in their
own processes (two "hosts") authenticate each other over a veth pair.
"""

from __future__ import annotations

import errno
import shutil
import socket
import time
from pathlib import Path

import pytest

import ebmesh
from ebmesh.errors import AttachError
from ebmesh.mtls import IdentityStore
from tests.support import MeshHost, pki, places, throwaway_netns, veth_pair
from tests.support.identity import second_host
from tests.support.places import ip

pytestmark = pytest.mark.kernel

WEB, API, DB, ADMIN = "127.0.7.1", "127.0.7.2", "127.0.7.3", "127.0.7.4"
TRUST_DOMAIN = "shop.example"

POLICY = f"""
mesh shop {{
    trust_domain "{TRUST_DOMAIN}"
    workload web   {{ cgroup "web" }}
    workload api   {{ cgroup "api" address {API} }}
    workload db    {{ cgroup "db" address {DB}  mtls required }}
    workload admin {{ cgroup "admin" address {ADMIN} }}
    allow web -> api port 8080/tcp mtls
    allow api -> db port 5432/tcp
    allow web -> admin port 9000/tcp
}}
"""


def spiffe_id(name: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/{name}"


def refused_at_once(result) -> bool:
    return not result["ok"] and result["errno"] == errno.EPERM and result["seconds"] < 0.1


def eventually(check, seconds: float = 5.0, every: float = 0.01):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    return check()


@pytest.fixture
def shop(cgroup_tree, spawn):
    """The policy's cgroups, with api, db and admin listening; (root, agents by name)."""
    root = cgroup_tree("web", "api", "db", "admin")
    agents = {name: spawn(root / name, name=name) for name in ("web", "api", "db", "admin")}
    agents["api"].listen("tcp", API, 8080)
    agents["db"].listen("tcp", DB, 5432)
    agents["admin"].listen("tcp", ADMIN, 9000)
    return root, agents


@pytest.fixture
def identity(tmp_path):
    """An identity directory with the mesh's issuer (what `ebmesh ca init` makes)."""
    return IdentityStore.create(tmp_path / "shop", TRUST_DOMAIN).directory


def attach(root, directory, policy=POLICY):
    return ebmesh.compile(policy).attach(root, identity_dir=directory, authenticator_port=0)


def test_local_pairs_are_authenticated_before_attach_returns(shop, identity):
    """Every local pair the policy needs has its handshake before attach() returns, with
    SVIDs the issuer makes: the first connections pass."""
    root, agents = shop
    with attach(root, identity) as attachment:
        assert (identity / "svid" / "web.pem").exists()
        names = attachment._image.naming.name_of
        assert {(names(p.src), names(p.dst), p.host) for p in attachment.authenticated()} == {
            ("web", "api", None),
            ("api", "db", None),
        }
        assert agents["web"].connect(API, 8080)["ok"]
        assert agents["api"].connect(DB, 5432)["ok"]
        assert agents["web"].connect(ADMIN, 9000)["ok"]  # needs no mTLS
        allowed = [e for e in attachment.events(timeout=0.3) if e.direction == "egress"]
        assert {(e.dst_name, e.verdict, e.needs_mtls) for e in allowed} == {
            ("api", "allow", True),
            ("db", "allow", True),
            ("admin", "allow", False),
        }


def test_the_mesh_directory_gets_its_issuer_on_first_use(shop):
    """No identity_dir: the mesh's own directory, /var/lib/ebmesh/<mesh>, and its issuer
    are made on first use (language.md: "created on first use")."""
    root, agents = shop
    mesh = f"shoptest{places.RUN}"
    directory = Path("/var/lib/ebmesh") / mesh
    try:
        policy = POLICY.replace("mesh shop {", f"mesh {mesh} {{")
        with ebmesh.compile(policy).attach(root, authenticator_port=0) as attachment:
            assert "issuer-created" in [n.kind for n in attachment.poll_notices()]
            assert (directory / "ca.pem").exists() and (directory / "svid" / "web.pem").exists()
            assert agents["web"].connect(API, 8080)["ok"]
        with ebmesh.compile(policy).attach(root, authenticator_port=0) as attachment:
            assert "issuer-created" not in [n.kind for n in attachment.poll_notices()]
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_directory_given_without_identity_material_refuses_the_attach(shop, tmp_path):
    """identity_dir says where the material is; none there is a clear error, and nothing
    is left attached."""
    root, agents = shop
    with pytest.raises(AttachError, match=r"has no bundle.pem: make an issuer there with"):
        attach(root, tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()
    assert agents["web"].connect(ADMIN, 9000)["ok"]


def test_mtls_required_lets_in_authenticated_workloads_only(shop, spawn, identity):
    """With `default allow`, every workload's pair into db (mtls required) is needed and
    made before attach() returns; a process outside the mesh never is authenticated, even
    bound to a workload's address: db's ingress drops it."""
    root, agents = shop
    policy = POLICY.replace("mesh shop {", "mesh shop {\n    default allow")
    outsider = spawn(None, name="outsider")
    with attach(root, identity, policy) as attachment:
        assert agents["admin"].connect(DB, 5432)["ok"]
        assert agents["web"].connect(DB, 5432)["ok"]
        for source in (None, API):
            attempt = outsider.connect(DB, 5432, source=source, timeout=0.5)
            assert not attempt["ok"] and attempt["errno"] == errno.ETIMEDOUT, attempt
        refused = [e for e in attachment.events(timeout=0.3) if e.verdict == "deny"]
        assert refused and all(
            e.direction == "ingress" and e.src_name == "-" and e.unauthenticated for e in refused
        )


@pytest.mark.parametrize(
    "bad",
    ["expired", "foreign CA", "another workload's SPIFFE ID", "forged signature", "not a key pair"],
)
def test_bad_certificates_never_authenticate(shop, tmp_path, bad):
    """web's SVID, given as files, is bad in one way: web -> api is refused at once,
    every time, while api -> db (good SVIDs) passes. The failure is told, with why."""
    root, agents = shop
    ca = pki.make_ca(TRUST_DOMAIN)
    (tmp_path / "bundle.pem").write_bytes(ca.pem)
    for name in ("api", "db", "admin"):
        pki.make_leaf(ca, spiffe_id(name)).write(tmp_path, name)
    web = {
        "expired": lambda: pki.make_leaf(
            ca,
            spiffe_id("web"),
            not_before=pki.now() - 3 * pki.HOUR,
            not_after=pki.now() - pki.HOUR,
        ),
        "foreign CA": lambda: pki.make_leaf(
            pki.make_ca(TRUST_DOMAIN, "other CA"), spiffe_id("web")
        ),
        "another workload's SPIFFE ID": lambda: pki.make_leaf(ca, spiffe_id("api")),
        "forged signature": lambda: pki.make_leaf(
            ca, spiffe_id("web"), signer=pki.make_ca(TRUST_DOMAIN).key
        ),
        "not a key pair": lambda: pki.with_other_key(pki.make_leaf(ca, spiffe_id("web"))),
    }[bad]()
    web.write(tmp_path, "web")
    with attach(root, tmp_path) as attachment:
        kinds = {n.kind for n in attachment.poll_notices()}
        assert kinds & {"no-svid", "authentication-failed"}, kinds
        for _ in range(20):
            attempt = agents["web"].connect(API, 8080)
            assert refused_at_once(attempt), attempt
            time.sleep(0.02)
        assert agents["api"].connect(DB, 5432)["ok"]
        names = attachment._image.naming.name_of
        assert {(names(p.src), names(p.dst)) for p in attachment.authenticated()} == {("api", "db")}
        refused = [e for e in attachment.events(timeout=0.3) if e.verdict == "deny"]
        assert refused and all(e.unauthenticated and e.src_name == "web" for e in refused)


def test_revoke_cuts_at_once_and_a_new_svid_restores(shop, identity):
    """A revoked identity's pairs end at once, cached verdicts too: the next connect is
    refused; its old certificate is refused in later handshakes; a new SVID restores it."""
    root, agents = shop
    with attach(root, identity) as attachment:
        assert agents["web"].connect(API, 8080)["ok"]
        assert attachment.revoke("web")  # by workload name
        for _ in range(10):
            attempt = agents["web"].connect(API, 8080)
            assert refused_at_once(attempt), attempt
            time.sleep(0.05)
        assert agents["api"].connect(DB, 5432)["ok"]  # other pairs go on
        attachment.renew("web")
        assert agents["web"].connect(API, 8080)["ok"]  # authenticated when renew() returns


def test_a_pair_ends_with_its_certificates_in_the_kernel_too(shop, tmp_path):
    """SVIDs delivered with 3 s to live and no issuer to renew them: the pair passes, then
    the kernel's own expiry (no userspace call needed) refuses it."""
    root, agents = shop
    ca = pki.make_ca(TRUST_DOMAIN)
    (tmp_path / "bundle.pem").write_bytes(ca.pem)
    ends = pki.now() + pki.HOUR / 1200
    for name in ("web", "api", "db", "admin"):
        pki.make_leaf(ca, spiffe_id(name), not_after=ends).write(tmp_path, name)
    with attach(root, tmp_path) as attachment:
        assert agents["web"].connect(API, 8080)["ok"]
        time.sleep(max(0.0, ends.timestamp() - time.time()) + 0.2)
        attempt = agents["web"].connect(API, 8080)
        assert refused_at_once(attempt), attempt
        assert attachment.authenticated() == []


def test_replace_authenticates_the_new_policy_before_it_enforces(shop, identity):
    """After replace() with a new mtls rule, its pair's first connection passes."""
    root, agents = shop
    with attach(root, identity) as attachment:
        edited = POLICY.replace("allow web -> admin port 9000/tcp", "allow web -> admin mtls")
        attachment.replace(ebmesh.compile(edited).image)
        assert agents["web"].connect(ADMIN, 9000)["ok"]
        assert agents["web"].connect(API, 8080)["ok"]
        assert any(e.needs_mtls and e.dst_name == "admin" for e in attachment.events(timeout=0.3))


def test_a_policy_without_mtls_starts_no_authenticator(shop, tmp_path):
    """No listener, no identity directory touched."""
    root, agents = shop
    plain = POLICY.replace(" mtls required", "").replace(" mtls\n", "\n")
    with ebmesh.compile(plain).attach(root, identity_dir=tmp_path / "never") as attachment:
        assert agents["web"].connect(API, 8080)["ok"]
        assert attachment.authenticated() == []
        with pytest.raises(AttachError, match="no mtls"):
            attachment.revoke("web")
    assert not (tmp_path / "never").exists()
    with socket.socket(socket.AF_INET6) as probe:  # the default port is free
        probe.bind(("::", 4250))


def test_unusable_identity_material_refuses_the_attach(shop, tmp_path):
    """A bundle that is not PEM: attach fails, says where, and leaves nothing attached."""
    root, agents = shop
    (tmp_path / "bundle.pem").write_text("not a certificate\n")
    with pytest.raises(AttachError, match=str(tmp_path)):
        attach(root, tmp_path)
    assert agents["web"].connect(ADMIN, 9000)["ok"]  # nothing left enforcing


# ---- two hosts --------------------------------------------------------------------------

HOST_A, HOST_B = "10.232.0.1", "10.232.0.2"

TWO_HOSTS = f"""
mesh shop {{
    trust_domain "{TRUST_DOMAIN}"
    workload frontend {{ cgroup "frontend" address {HOST_A} }}
    workload api      {{ cgroup "api" address {HOST_B}  mtls required }}
    allow frontend -> api port 8080/tcp
}}
"""


@pytest.fixture
def two_hosts(root, cgroup_tree, spawn, tmp_path):
    """Host A (frontend) and host B (api): a namespace, a cgroup tree and a MeshHost
    each, joined by a veth pair. B has the bundle and api's SVID from A's issuer."""
    store = IdentityStore.create(tmp_path / "a", TRUST_DOMAIN)
    b = second_host(store, tmp_path / "b", "api", spiffe_id("api"))
    tree_a, tree_b = cgroup_tree("frontend"), cgroup_tree("api")
    with throwaway_netns() as ns_a, throwaway_netns() as ns_b:
        with veth_pair(ns_a, f"{HOST_A}/24", ns_b, f"{HOST_B}/24") as (_, device_b):
            frontend = spawn(tree_a / "frontend", netns=ns_a, name="frontend")
            api = spawn(tree_b / "api", netns=ns_b, name="api")
            api.listen("tcp", HOST_B, 8080)
            host_a, host_b = MeshHost(None, ns_a, "host-a"), MeshHost(None, ns_b, "host-b")
            try:
                yield (
                    (host_a, tree_a, store.directory),
                    (host_b, tree_b, b),
                    frontend,
                    (ns_b, device_b),
                )
            finally:
                host_a.stop()
                host_b.stop()


def test_across_hosts_pairs_are_authenticated_when_both_hosts_are_up(two_hosts):
    """frontend (host A) -> api (host B, mtls required): when A comes up it dials B for
    the pair, so the first connection passes; each host holds the pair bound to the other
    host's address, and B's ingress knows frontend by its address."""
    (host_a, tree_a, dir_a), (host_b, tree_b, dir_b), frontend, _ = two_hosts
    host_b.attach(TWO_HOSTS, tree_b, dir_b)
    host_a.attach(TWO_HOSTS, tree_a, dir_a)
    assert eventually(lambda: (1, 2, HOST_B) in host_a.authenticated())
    assert frontend.connect(HOST_B, 8080)["ok"]
    assert (1, 2, HOST_A) in host_b.authenticated()
    ingress = [e for e in host_b.events() if e["direction"] == "ingress"]
    assert ingress and all(e["src"] == "frontend" and e["verdict"] == "allow" for e in ingress)


def test_across_hosts_after_a_partition_the_first_connection_is_refused_then_passes(two_hosts):
    """Both hosts came up while the link between them was down: nothing is authenticated.
    With the link back, frontend's first connection is refused at once, the datapath asks
    A's authenticator, which does the handshake with B, and the next attempts pass."""
    (host_a, tree_a, dir_a), (host_b, tree_b, dir_b), frontend, (ns_b, device_b) = two_hosts
    ip("link", "set", device_b, "down", namespace=ns_b)
    host_b.attach(TWO_HOSTS, tree_b, dir_b)
    host_a.attach(TWO_HOSTS, tree_a, dir_a)
    time.sleep(0.3)  # the first tries of both have failed
    ip("link", "set", device_b, "up", namespace=ns_b)
    assert host_a.authenticated() == [] and host_b.authenticated() == []
    first = frontend.connect(HOST_B, 8080)
    assert refused_at_once(first), first
    refused_at = time.monotonic()
    assert eventually(lambda: frontend.connect(HOST_B, 8080, timeout=0.5)["ok"], every=0.005)
    assert time.monotonic() - refused_at < 2.0
    assert (1, 2, HOST_B) in host_a.authenticated()
    assert (1, 2, HOST_A) in host_b.authenticated()


def test_across_hosts_a_host_with_another_trust_never_passes(two_hosts, tmp_path):
    """B trusts another CA than the one that issued frontend's SVID: the handshakes fail,
    frontend stays refused at once, and B's ingress never lets a packet of it in."""
    (host_a, tree_a, dir_a), (host_b, tree_b, dir_b), frontend, _ = two_hosts
    other = pki.make_ca(TRUST_DOMAIN, "other CA")
    (dir_b / "bundle.pem").write_bytes(other.pem)
    pki.make_leaf(other, spiffe_id("api")).write(dir_b, "api")
    host_b.attach(TWO_HOSTS, tree_b, dir_b)
    host_a.attach(TWO_HOSTS, tree_a, dir_a)
    for _ in range(20):
        attempt = frontend.connect(HOST_B, 8080, timeout=0.5)
        assert refused_at_once(attempt), attempt
        time.sleep(0.05)
    assert host_a.authenticated() == [] and host_b.authenticated() == []
    assert any(kind == "authentication-failed" for kind, _ in host_a.notices())
