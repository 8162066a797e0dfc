"""The semantic checks: each mistake is found, located, explained; sound policies pass."""

from __future__ import annotations

import ipaddress

import pytest

from ebmesh.errors import PolicyError
from ebmesh.language import check, load, parse
from ebmesh.language.ast import (
    Mesh,
    Name,
    NamedPeer,
    PolicyFile,
    Rule,
    Service,
    Workload,
)

HEADER = """mesh m {
    workload web { cgroup "web" address 10.0.1.0/24 }
    workload api { cgroup "api" address 10.0.2.10 }
    workload db { address 10.0.3.5 }
    workload db2 { address 10.0.3.6 }
    service api-svc 10.96.0.10:80/tcp { backend 10.0.2.10:8080 }
"""
HEADER_LINES = HEADER.count("\n")


def diagnostics(body: str, header: str = HEADER):
    """(line relative to the body, column, message, hint) of every diagnostic."""
    try:
        load(f"{header}{body}\n}}\n")
    except PolicyError as error:
        return [
            (d.location.line - header.count("\n"), d.location.column, d.message, d.hint)
            for d in error.diagnostics
        ]
    return []


def one(body: str, header: str = HEADER):
    found = diagnostics(body, header)
    assert len(found) == 1, found
    return found[0]


def test_sound_policies_pass():
    assert (
        diagnostics("allow web -> api-svc\nallow web -> api mtls\nallow api -> db port 5432/tcp")
        == []
    )
    assert diagnostics("deny any -> 10.0.0.0/8 except 10.0.3.0/24 port 1-1023/tcp audit") == []
    assert diagnostics("allow web -> [api-svc, db] port 80/tcp, 5432") == []


# ---- settings ------------------------------------------------------------------------------


def test_duplicate_setting_points_at_the_second():
    line, column, message, hint = one("mode audit\nmode enforce")
    assert (line, column) == (2, 1)
    assert message == f"'mode' is set twice (first on line {HEADER_LINES + 1})"


@pytest.mark.parametrize(
    "setting, hint",
    [
        ("default alow", "did you mean 'allow'? 'default' is 'deny' or 'allow'"),
        ("mode enforcing", "did you mean 'enforce'? 'mode' is 'enforce' or 'audit'"),
        ("accelerate yes", "'accelerate' is 'on' or 'off'"),
        ("accelerate 1", "'accelerate' is 'on' or 'off'"),
    ],
)
def test_bad_setting_values_list_the_valid_ones(setting, hint):
    line, column, message, found_hint = one(setting)
    key, value = setting.split()
    assert message == f"invalid value '{value}' for '{key}'"
    assert column == len(key) + 2 and found_hint == hint


@pytest.mark.parametrize("domain", ["Shop.example", "spiffe://shop.example", "", "a b"])
def test_bad_trust_domain(domain):
    line, column, message, hint = one(f'trust_domain "{domain}"')
    assert message == f'invalid trust domain "{domain}"'


def test_the_mesh_name_must_make_a_trust_domain_unless_one_is_set():
    found = diagnostics("", header="mesh Shop {\n")
    assert found == [
        (
            0,
            6,
            "the mesh name 'Shop' cannot be the trust domain, which defaults to it",
            'add `trust_domain "shop"` to the mesh',
        )
    ]
    assert diagnostics('trust_domain "shop"', header="mesh Shop {\n") == []


# ---- names ------------------------------------------------------------------------------------


def test_duplicate_names_across_workloads_and_services():
    line, column, message, hint = one("service web 10.96.0.11:80 { backend 10.0.1.1:80 }")
    assert (line, column) == (1, 9)
    assert message == "'web' is already declared as a workload (line 2)"
    line, column, message, hint = one('workload api-svc { cgroup "x" }')
    assert message == "'api-svc' is already declared as a service (line 6)"


def test_unknown_name_suggests_a_declared_one():
    assert one("allow wbe -> api") == (1, 7, "unknown name 'wbe'", "did you mean 'web'?")
    assert one("allow web -> nothing-like-it")[3] == "declare it: workload nothing-like-it { ... }"


def test_hand_built_tree_with_a_keyword_name():
    mesh = Mesh(
        name=Name(value="m"),
        workloads=[Workload(name=Name(value="any"), cgroups=[])],
    )
    with pytest.raises(PolicyError) as caught:
        check(PolicyFile(mesh=mesh))
    assert "<policy>: 'any' is a keyword and cannot be a name" in caught.value.render()
    assert all(d.location is None for d in caught.value.diagnostics)


# ---- workloads ------------------------------------------------------------------------------


def test_workload_with_neither_cgroup_nor_address():
    line, column, message, hint = one("workload ghost { }")
    assert (line, column, message) == (
        1,
        10,
        "workload 'ghost' has neither a cgroup nor an address",
    )


def test_second_cgroup_and_identity():
    text = 'workload w { cgroup "w" cgroup "w2" identity "spiffe://m/w" identity "spiffe://m/x" }'
    found = diagnostics(text)
    assert [(c, m) for _, c, m, _ in found] == [
        (text.index('"w2"') + 1, "workload 'w' has a second cgroup (first on line 7)"),
        (text.index('"spiffe://m/x"') + 1, "workload 'w' has a second identity (first on line 7)"),
    ]


@pytest.mark.parametrize(
    "path, message, hint",
    [
        ("", "empty cgroup path", None),
        ("/web2", 'cgroup path "/web2" is absolute', 'write "web2"'),
        ("a/../b", "cgroup path \"a/../b\" contains '..'", None),
        ("..", "cgroup path \"..\" contains '..'", None),
        ("a//b", "cgroup path \"a//b\" has an empty or '.' component", 'write "a/b"'),
        ("a/./b/", "cgroup path \"a/./b/\" has an empty or '.' component", 'write "a/b"'),
    ],
)
def test_bad_cgroup_paths(path, message, hint):
    line, column, found, found_hint = one(f'workload w {{ cgroup "{path}" }}')
    assert found == message and column == 21
    if hint:
        assert found_hint.endswith(hint)


def test_nested_cgroups_are_allowed():
    assert diagnostics('workload inner { cgroup "web/inner" }') == []


def test_two_workloads_with_one_cgroup():
    assert (
        one('workload w { cgroup "web" }')[2]
        == "cgroup \"web\" already belongs to workload 'web' (line 2)"
    )


def test_one_prefix_in_two_workloads():
    assert (
        one("workload w { address 10.0.1.0/24 }")[2]
        == "10.0.1.0/24 is already in workload 'web' (line 2)"
    )
    assert (
        one("workload w { address 10.0.2.10/32 }")[2]
        == "10.0.2.10/32 is already in workload 'api' (line 3)"
    )
    assert (
        diagnostics("workload w { address 10.0.1.0/25 }") == []
    )  # overlapping: the most specific wins


def test_host_bits():
    assert one("workload w { address 10.0.9.5/24 }")[2:] == (
        "10.0.9.5/24 has host bits set",
        "did you mean 10.0.9.0/24?",
    )
    assert one("deny web -> fd00::1/64")[2:] == (
        "fd00::1/64 has host bits set",
        "did you mean fd00::/64?",
    )


def test_identities_are_spiffe_ids_of_the_trust_domain():
    assert one('workload w { cgroup "w" identity "api" }')[2] == 'identity "api" is not a SPIFFE ID'
    assert (
        one('workload w { cgroup "w" identity "spiffe://m" }')[2]
        == 'invalid SPIFFE ID "spiffe://m"'
    )
    assert (
        one('workload w { cgroup "w" identity "spiffe://m/a/../b" }')[2]
        == 'invalid SPIFFE ID "spiffe://m/a/../b"'
    )
    assert one('workload w { cgroup "w" identity "spiffe://other/w" }')[2] == (
        "identity \"spiffe://other/w\" is in trust domain 'other', not the mesh's 'm'"
    )
    assert diagnostics('workload w { cgroup "w" identity "spiffe://m/ns/prod/sa/w" }') == []


def test_mtls_required_needs_a_cgroup():
    text = "workload w { address 10.9.0.1 mtls required }"
    line, column, message, hint = one(text)
    assert column == text.index("mtls") + 1
    assert message == "workload 'w' requires mtls but has no cgroup: no SVID can be issued to it"


# ---- services --------------------------------------------------------------------------------


def test_service_without_a_nonzero_weight():
    message = "service 's' has no backend with a nonzero weight"
    assert one("service s 10.96.0.20:80 { }")[2] == message
    assert one("service s 10.96.0.20:80 { backend 10.0.2.10:80 weight 0 }")[2] == message


def test_weight_out_of_range():
    assert (
        one("service s 10.96.0.20:80 { backend 10.0.2.10:80 weight 65536 }")[2]
        == "weight 65536 is outside 0-65535"
    )


def test_duplicate_backend():
    found = one("service s 10.96.0.20:80 { backend 10.0.2.10:80 backend 10.0.2.10:80 weight 2 }")
    assert (
        found[2]
        == f"backend 10.0.2.10:80 is listed twice in service 's' (first on line {HEADER_LINES + 1})"
    )
    assert found[1] == 48


def test_two_services_on_one_address():
    found = one("service s 10.96.0.10:80 { backend 10.0.2.10:80 }")
    assert found[2] == "10.96.0.10:80/tcp is already the address of service 'api-svc' (line 6)"
    assert diagnostics("service s 10.96.0.10:80/udp { backend 10.0.2.10:80 }") == []
    assert diagnostics("service s 10.96.0.10:81 { backend 10.0.2.10:80 }") == []


def test_families_do_not_mix():
    found = one("service s 10.96.0.20:80 { backend [fd00::1]:80 }")
    assert found[2] == "backend fd00::1 is IPv6 but the service address 10.96.0.20 is IPv4"
    found = one("service s [fd00::20]:80 { backend 10.0.2.10:80 }")
    assert found[2] == "backend 10.0.2.10 is IPv4 but the service address fd00::20 is IPv6"


def test_service_ports():
    assert one("service s 10.96.0.20:0 { backend 10.0.2.10:80 }")[2] == (
        "port 0 cannot be a service port: no connection can be made to it"
    )
    assert (
        one("service s 10.96.0.20:80 { backend 10.0.2.10:65536 }")[2]
        == "port 65536 is outside 0-65535"
    )
    assert one("service s 0.0.0.0:80 { backend 10.0.2.10:80 }")[2] == (
        "0.0.0.0 cannot be a service address: it is the unspecified address"
    )


# ---- rules -----------------------------------------------------------------------------------


def test_service_as_a_source():
    assert one("allow api-svc -> web")[:3] == (
        1,
        7,
        "'api-svc' is a service; a service can only be a destination",
    )


def test_port_clause_must_include_the_service_port():
    line, column, message, hint = one("allow web -> api-svc port 8080")
    assert (line, column) == (1, 14)
    assert message == (
        "the rule's ports do not include 80/tcp, the port of service 'api-svc': "
        "it can never match traffic to the service"
    )
    assert "write 'port 80/tcp' or drop the port clause" in hint
    assert one("allow web -> api-svc port 80/udp")[2].startswith("the rule's ports do not include")
    assert diagnostics("allow web -> api-svc port 1-100") == []
    assert diagnostics("allow web -> api-svc port 8080, 80/tcp") == []


def test_ports_out_of_range_and_backwards():
    assert one("allow web -> api port 65536")[2] == "port 65536 is outside 0-65535"
    found = one("allow web -> api port 1023-1/tcp")
    assert found[2:] == ("port range 1023-1 runs backwards", "did you mean 1-1023?")
    assert found[1] == 23
    assert diagnostics("allow web -> api port 0, 0-65535") == []


def test_mtls_on_deny_and_audit_on_allow():
    assert one("deny web -> api mtls")[1:3] == (17, "'mtls' only applies to allow rules")
    assert one("allow web -> api audit")[1:3] == (18, "'audit' only applies to deny rules")


def test_mtls_needs_named_workloads_with_cgroups():
    found = diagnostics("allow [any, web] -> [10.0.0.0/8, api-svc, db] mtls")
    assert [m for _, _, m, _ in found] == [
        "'mtls' needs a named workload on both sides: 'any' has no identity",
        "'mtls' needs a named workload on both sides: 10.0.0.0/8 has no identity",
        "'mtls' needs a named workload on both sides: 'api-svc' is a service",
        "'mtls' with workload 'db', which has no cgroup: no SVID can be issued to it",
    ]


def test_except_outside_its_cidr_or_family():
    found = diagnostics("deny web -> [10.0.0.0/8 except 10.1.0.0/16, 192.168.0.0/16]")
    assert [m for _, _, m, _ in found] == ["except 192.168.0.0/16 is not inside 10.0.0.0/8"]
    assert "put it before the CIDR with 'except'" in found[0][3]
    assert diagnostics("deny web -> [192.168.0.0/16, 10.0.0.0/8 except 10.1.0.0/16]") == []
    assert (
        one("deny web -> 10.0.0.0/8 except fd00::/8")[2]
        == "except fd00::/8 is IPv6 but 10.0.0.0/8 is IPv4"
    )
    assert one("deny web -> 10.0.0.0/8 except 10.0.0.0/8")[2] == (
        "except 10.0.0.0/8 is all of 10.0.0.0/8: the item matches nothing"
    )


def test_rule_that_no_local_socket_ever_sees():
    line, column, message, hint = one("allow db -> db2")
    assert (line, column) == (1, 1)
    assert message == (
        "this rule can never be enforced: 'db' and 'db2' have no cgroup, so none of its traffic "
        "passes a local socket"
    )
    assert hint == "give one of them a cgroup"
    assert one("allow db -> api-svc")[3] == "give 'db' a cgroup"
    assert (
        diagnostics(
            "allow db -> web\nallow db -> 10.0.0.0/8\nallow any -> db\nallow [db, web] -> db2"
        )
        == []
    )


def test_every_diagnostic_at_once_sorted_by_position():
    found = diagnostics("allow ghost -> api\nmode nope\nallow db -> db2\ndeny web -> api mtls")
    assert [line for line, *_ in found] == [1, 2, 3, 4]


def test_many_unknown_names_stay_fast():
    body = "\n".join(f"allow ghost{i} -> api" for i in range(3000))
    found = diagnostics(body)
    assert len(found) == 3000


# ---- trees built by hand -----------------------------------------------------------------------


def test_hand_built_tree_without_spans():
    mesh = Mesh(
        name=Name(value="m"),
        workloads=[Workload(name=Name(value="w"), cgroups=[])],
        services=[Service(name=Name(value="s"), vip=ipaddress.ip_address("10.0.0.1"), port=80)],
        rules=[
            Rule(
                action="allow",
                sources=[NamedPeer(name=Name(value="s"))],
                destinations=[NamedPeer(name=Name(value="nope"))],
            )
        ],
    )
    with pytest.raises(PolicyError) as caught:
        check(PolicyFile(mesh=mesh))
    text = caught.value.render()
    assert "workload 'w' has neither a cgroup nor an address" in text
    assert "unknown name 'nope'" in text
    assert "'s' is a service; a service can only be a destination" in text


def test_check_accepts_what_parse_built():
    check(parse("mesh m { }"))
