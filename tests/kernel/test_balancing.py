"""Weighted load balancing at the socket, with real sockets.

A client in the mesh connects to a service's VIP; the connect is translated
to one of the backends (each a workload process listening on its own
address), the application keeps seeing the VIP as its peer.
"""

from __future__ import annotations

import errno
import math
import threading
import time

import pytest

import ebmesh
from ebmesh.datapath.limits import MAX_BACKEND_CAPACITY
from ebmesh.loader import AttachType, query_cgroup
from tests.support import throwaway_netns

pytestmark = pytest.mark.kernel

VIP = "127.0.96.10"  # on loopback: a process outside the mesh reaches the real holder of it
BACKENDS = ("127.0.2.1", "127.0.2.2", "127.0.2.3")
CLIENT = "127.0.1.1"


def chi_square_p_value(observed: list[int], expected: list[float]) -> float:
    """P(X >= statistic) for a chi-square test with len-1 degrees of freedom."""
    statistic = sum((o - e) ** 2 / e for o, e in zip(observed, expected))
    k = (len(observed) - 1) / 2
    x = statistic / 2
    if x == 0:
        return 1.0
    # regularized upper incomplete gamma Q(k, x), by its continued fraction (Lentz)
    if x < k + 1:
        term = total = 1 / k
        for n in range(1, 500):
            term *= x / (k + n)
            total += term
        return 1 - math.exp(-x + k * math.log(x) - math.lgamma(k)) * total
    b, c, d = x + 1 - k, 1e300, 1 / (x + 1 - k)
    h = d
    for n in range(1, 500):
        a = -n * (n - k)
        b += 2
        d = 1 / (a * d + b)
        c = b + a / c
        h *= d * c
    return math.exp(-x + k * math.log(x) - math.lgamma(k)) * h


def policy(weights=(6, 3, 1), extra_rules: str = "allow client -> web") -> str:
    backends = "\n".join(
        f"        backend {address}:8080 weight {w}" for address, w in zip(BACKENDS, weights)
    )
    return f"""
    mesh lb {{
        workload client {{ cgroup "client" address {CLIENT} }}
        workload web    {{ cgroup "web"    address 127.0.2.0/24 }}
        service web-svc {VIP}:80/tcp {{
{backends}
        }}
        service dns-svc {VIP}:53/udp {{
            backend 127.0.2.1:5353
            backend 127.0.2.2:5353
        }}
        allow client -> web-svc
        allow client -> dns-svc
        {extra_rules}
    }}
    """


@pytest.fixture
def farm(cgroup_tree, spawn):
    root = cgroup_tree("client", "web")
    client = spawn(root / "client", name="client")
    web = spawn(root / "web", name="web")
    for address in BACKENDS:
        web.listen("tcp", address, 8080)
        web.listen("udp", address, 5353)
    outside = spawn(None, name="outside")  # the VIP's real holder, and a client outside the mesh
    outside.listen("tcp", VIP, 80)
    return root, client, web, outside


def test_weighted_split_passes_chi_square(farm):
    root, client, web, _ = farm
    connects = 3000
    with ebmesh.compile(policy((6, 3, 1))).attach(root, events="none") as attachment:
        result = client.connect_many(VIP, 80, connects, source=CLIENT)
        assert result["succeeded"] == connects, result
        accepted = [web.accepted("tcp", address, 8080) for address in BACKENDS]
        counted = attachment.backend_counters()["web-svc"]
        decided = attachment.counters()[1].decided  # rule 1: allow client -> web-svc
    assert accepted == [counted[f"{address}:8080"] for address in BACKENDS]
    # decided once per connect, at connect(): the backend's ingress sees the same two parties
    assert decided == connects
    assert sum(accepted) == connects
    expected = [connects * w / 10 for w in (6, 3, 1)]
    p_value = chi_square_p_value(accepted, expected)
    assert p_value > 1e-4, f"{accepted} vs {expected}: p = {p_value:.2e}"


def test_extreme_weights_are_honoured(farm):
    root, client, web, _ = farm
    with ebmesh.compile(policy((65535, 1, 0))).attach(root, events="none") as attachment:
        assert client.connect_many(VIP, 80, 500, source=CLIENT)["succeeded"] == 500
        counted = attachment.backend_counters()["web-svc"]
    assert counted[f"{BACKENDS[2]}:8080"] == 0  # weight 0: declared, never used
    assert counted[f"{BACKENDS[0]}:8080"] >= 495


def test_the_application_sees_the_vip_as_its_peer(farm):
    root, client, _, _ = farm
    with ebmesh.compile(policy()).attach(root) as attachment:
        result = client.connect(VIP, 80, source=CLIENT)
        assert result["ok"] and result["greeting"] == "hello\n", result
        assert result["peer"] == [VIP, 80]  # getpeername, translated back
        event = next(e for e in attachment.events(timeout=1.0) if e.direction == "egress")
        assert (
            event.dst_name == "web-svc" and str(event.dst_address) == VIP and event.dst_port == 80
        )
        assert str(event.backend_address) in BACKENDS and event.backend_port == 8080
        assert "=> backend" in str(event)


def test_udp_request_response_through_the_vip_keeps_one_backend(farm):
    root, client, _, _ = farm
    with ebmesh.compile(policy()).attach(root):
        result = client.ask_many(VIP, 53, 20, source=CLIENT)
        assert result["ok"], result
        answered_by = {answer for answer, _ in result["answers"]}
        peers = {tuple(peer) for _, peer in result["answers"]}
    assert len(answered_by) == 1, answered_by  # one backend for the socket's life
    assert answered_by.pop().startswith("iam:127.0.2.")
    assert peers == {(VIP, 53)}  # replies come from the VIP (recvmsg, translated back)


def test_a_service_with_no_backend_refuses_at_once(farm):
    root, client, _, _ = farm
    with ebmesh.compile(policy()).attach(root) as attachment:
        attachment.set_backends("web-svc", {})
        refused = client.connect(VIP, 80, source=CLIENT)
        assert (
            not refused["ok"]
            and refused["errno"] == errno.ECONNREFUSED
            and refused["seconds"] < 0.5
        )
        attachment.set_backends("web-svc", {f"{BACKENDS[0]}:8080": 0})  # declared, unused
        refused = client.connect(VIP, 80, source=CLIENT)
        assert refused["errno"] == errno.ECONNREFUSED
        event = next(e for e in attachment.events(timeout=1.0) if e.no_backend)
        assert event.verdict == "deny" and "ECONNREFUSED" in str(event)


def test_set_backends_under_load_fails_no_connection(farm):
    root, client, web, _ = farm
    outcome = {}
    with ebmesh.compile(policy()).attach(root, events="none") as attachment:

        def load():
            outcome.update(client.connect_many(VIP, 80, 4000, source=CLIENT))

        loader = threading.Thread(target=load)
        loader.start()
        changes = [
            {f"{BACKENDS[0]}:8080": 1},
            {f"{BACKENDS[1]}:8080": 5, f"{BACKENDS[2]}:8080": 5},
            {f"{BACKENDS[0]}:8080": 3, f"{BACKENDS[1]}:8080": 0, f"{BACKENDS[2]}:8080": 1},
            {address + ":8080": 65535 for address in BACKENDS},
        ]
        rounds = 0
        while loader.is_alive():
            attachment.set_backends("web-svc", changes[rounds % len(changes)])
            rounds += 1
            time.sleep(0.005)
        loader.join()
        assert attachment.backends("web-svc") == changes[(rounds - 1) % len(changes)]
    assert rounds >= 10, rounds
    assert outcome["succeeded"] == 4000, outcome  # zero failed connections


def test_set_backends_moves_traffic(farm):
    root, client, web, _ = farm
    with ebmesh.compile(policy()).attach(root, events="none") as attachment:
        attachment.set_backends("web-svc", {f"{BACKENDS[2]}:8080": 7})
        assert client.connect_many(VIP, 80, 50, source=CLIENT)["succeeded"] == 50
        assert web.accepted("tcp", BACKENDS[2], 8080) == 50
        with pytest.raises(ebmesh.EbmeshError, match="IPv6"):
            attachment.set_backends("web-svc", {"[fd00::1]:8080": 1})
        with pytest.raises(ebmesh.EbmeshError, match="weight"):
            attachment.set_backends("web-svc", {f"{BACKENDS[0]}:8080": 70000})
        with pytest.raises(ebmesh.EbmeshError, match="no service named"):
            attachment.set_backends("nope", {})


def test_the_service_name_decides_and_its_denials_win(farm):
    root, client, web, _ = farm
    # no rule lets client reach web directly: the service's allow carries to the backend's ingress
    with ebmesh.compile(policy(extra_rules="")).attach(root):
        assert client.connect(VIP, 80, source=CLIENT)["ok"]
        direct = client.connect(BACKENDS[0], 8080, source=CLIENT)
        assert not direct["ok"] and direct["errno"] == errno.EPERM
    with ebmesh.compile(policy(extra_rules="deny client -> web-svc")).attach(root):
        denied = client.connect(VIP, 80, source=CLIENT)
        assert not denied["ok"] and denied["errno"] == errno.EPERM and denied["seconds"] < 0.5


def test_processes_outside_the_mesh_are_untouched(farm):
    root, _, _, outside = farm
    with ebmesh.compile(policy()).attach(root):
        result = outside.connect(VIP, 80)  # reaches the VIP's real holder, not a backend
        assert result["ok"] and result["peer"] == [VIP, 80]
        assert outside.accepted("tcp", VIP, 80) == 1


def test_ipv6_vip(cgroup_tree, spawn):
    root = cgroup_tree("client", "web")
    with throwaway_netns(("fd00:1::1/128", "fd00:9::1/128", "fd00:9::2/128")) as ns:
        client = spawn(root / "client", netns=ns)
        web = spawn(root / "web", netns=ns)
        for address in ("fd00:9::1", "fd00:9::2"):
            web.listen("tcp", address, 7000)
        source = """
            mesh six {
                workload client { cgroup "client" }
                workload web    { cgroup "web" }
                service six [fd00:5::1]:80/tcp {
                    backend [fd00:9::1]:7000 weight 1
                    backend [fd00:9::2]:7000 weight 1
                }
                allow client -> six
            }
        """
        with ebmesh.compile(source).attach(root) as attachment:
            result = client.connect("fd00:5::1", 80)
            assert result["ok"] and result["peer"] == ["fd00:5::1", 80], result
            assert client.connect_many("fd00:5::1", 80, 200)["succeeded"] == 200
            counted = attachment.backend_counters()["six"]
            assert sum(counted.values()) == 201 and min(counted.values()) > 50, counted


def test_a_reconnected_socket_forgets_its_service(farm):
    """A UDP socket connected to the VIP, then straight to a backend: its peer
    is then the backend, and nothing of the service's translation remains."""
    root, client, web, _ = farm
    with ebmesh.compile(policy(extra_rules="allow client -> web")).attach(root):
        result = client.udp_peers([(VIP, 53), (BACKENDS[1], 5353)], source=CLIENT)
        assert result["ok"], result
        assert result["peers"] == [[VIP, 53], [BACKENDS[1], 5353]]


def test_100_replaces_fail_no_allowed_connection_and_allow_no_denied_one(farm, spawn):
    """Clients loop on a direct destination, a VIP (TCP), a UDP VIP and a denied
    port while the policy is replaced 100 times by an equivalent one: every
    allowed connect and exchange succeeds, every denied one is denied."""
    root, client, web, _ = farm
    # one agent per loop: an agent answers one command at a time
    vip_client, udp_client, denied_client = (
        spawn(root / "client", name=n) for n in ("vip", "udp", "denied")
    )
    web.listen("tcp", BACKENDS[0], 9999)
    text = policy(extra_rules="allow client -> web port 8080/tcp")
    images = [ebmesh.compile(text).image, ebmesh.compile(text + "\n").image]
    assert images[0].digest == images[1].digest  # equivalent, and loaded afresh each time
    stop = threading.Event()
    totals = {"direct": [0, 0], "vip": [0, 0], "udp": [0, 0], "denied": [0, 0]}

    def loop(name, call, count):
        while not stop.is_set():
            result = call()
            totals[name][0] += count
            totals[name][1] += result

    loops = [
        (
            "direct",
            lambda: client.connect_many(BACKENDS[0], 8080, 200, source=CLIENT)["succeeded"],
            200,
        ),
        ("vip", lambda: vip_client.connect_many(VIP, 80, 200, source=CLIENT)["succeeded"], 200),
        ("udp", lambda: len(udp_client.ask_many(VIP, 53, 50, source=CLIENT)["answers"]), 50),
        (
            "denied",
            lambda: denied_client.connect_many(BACKENDS[0], 9999, 200, source=CLIENT)["errnos"].get(
                str(errno.EPERM), 0
            ),
            200,
        ),
    ]
    with ebmesh.compile(text).attach(root, events="none") as attachment:
        threads = [threading.Thread(target=loop, args=spec) for spec in loops]
        for thread in threads:
            thread.start()
        try:
            for swap in range(100):
                attachment.replace(images[swap % 2])
        finally:
            stop.set()
            for thread in threads:
                thread.join()
    for name, (tried, as_expected) in totals.items():
        assert tried > 0 and as_expected == tried, (name, totals)


@pytest.mark.parametrize(
    "capacity, message",
    [
        (-1, r"from 5 \(the 5 backends the policy declares\) to 1,048,576, not -1"),
        (0, "from 5 .* not 0"),
        (4, "from 5 .* not 4"),
        (10**12, "to 1,048,576, not 1,000,000,000,000"),
        (MAX_BACKEND_CAPACITY + 1, "to 1,048,576, not 1,048,577"),
        ("x", "a whole number of backends, not 'x'"),
        (True, "a whole number of backends, not True"),
        (8.0, "a whole number of backends, not 8.0"),
    ],
)
def test_a_backend_capacity_out_of_bounds_is_refused_before_anything_loads(
    cgroup_tree, capacity, message
):
    root = cgroup_tree("client", "web")
    compiled = ebmesh.compile(policy())
    with pytest.raises(ValueError, match=f"^backend_capacity must be .*{message}$"):
        compiled.attach(root, backend_capacity=capacity)
    assert query_cgroup(root, AttachType.CGROUP_INET4_CONNECT) == []


def test_the_largest_backend_capacity_loads(farm):
    root, client, web, _ = farm
    compiled = ebmesh.compile(policy())
    with compiled.attach(root, events="none", backend_capacity=MAX_BACKEND_CAPACITY) as attachment:
        attachment.set_backends("web-svc", {"127.0.2.3:8080": 1})
        assert client.connect(VIP, 80, source=CLIENT)["ok"]
        assert web.accepted("tcp", "127.0.2.3", 8080) == 1
    with compiled.attach(root, events="none", backend_capacity=5):  # the least: those declared
        assert client.connect(VIP, 80, source=CLIENT)["ok"]
