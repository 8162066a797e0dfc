"""The grammar and the parser: every form of the contract, the lexing edge cases, the tree."""

from __future__ import annotations

import ipaddress
import logging
import re
from pathlib import Path

import pytest

from ebmesh.errors import PolicyError
from ebmesh.language import check, load, parse
from ebmesh.language.ast import AddressPeer, AnyPeer, NamedPeer, PolicyFile
from ebmesh.language.grammar import KEYWORDS, grammar

REPO = Path(__file__).resolve().parents[2]
SHOP = REPO / "examples" / "shop.mesh"
CONTRACT = Path("/work/shared/spec/language.md")


def mesh_of(body: str):
    return parse(f"mesh m {{\n{body}\n}}\n").mesh


def rule_of(text: str):
    (rule,) = mesh_of(f'workload a {{ cgroup "a" }}\n{text}').rules
    return rule


def peer_texts(peers) -> list[str]:
    out = []
    for peer in peers:
        if isinstance(peer, AnyPeer):
            out.append("any")
        elif isinstance(peer, NamedPeer):
            out.append(peer.name.value)
        else:
            excepts = ",".join(e.text for e in peer.excepts)
            out.append(f"{peer.cidr.text}" + (f" except {excepts}" if excepts else ""))
    return out


# ---- the contract's example -------------------------------------------------


def test_shop_example_is_the_contract_example_verbatim():
    if not CONTRACT.exists():
        pytest.skip("the contract is not on this machine")
    block = CONTRACT.read_text().split("```")[1]
    assert block.lstrip("\n") == SHOP.read_text()


def test_shop_example_parses_and_checks_with_its_meaning():
    policy = load(SHOP)
    mesh = policy.mesh
    assert policy.filename == str(SHOP)
    assert mesh.name.value == "shop"
    assert {s.key: s.value for s in mesh.settings} == {
        "trust_domain": "shop.example",
        "default": "deny",
        "mode": "enforce",
        "accelerate": "on",
    }
    frontend, api, db = mesh.workloads
    assert [c.value for c in frontend.cgroups] == ["frontend"]
    assert [a.network for a in frontend.addresses] == [
        ipaddress.ip_network("10.0.1.0/24"),
        ipaddress.ip_network("fd00:1::/64"),
    ]
    assert [a.text for a in api.addresses] == ["10.0.2.10", "10.0.2.11"]
    assert api.addresses[0].network == ipaddress.ip_network("10.0.2.10/32")
    assert [i.value for i in api.identities] == ["spiffe://shop.example/ns/prod/sa/api"]
    assert api.mtls_required and not frontend.mtls_required
    assert db.cgroups == [] and [a.text for a in db.addresses] == ["10.0.3.5"]

    (service,) = mesh.services
    assert (service.name.value, str(service.vip), service.port, service.protocol) == (
        "api-svc",
        "10.96.0.10",
        80,
        "tcp",
    )
    assert [(str(b.address), b.port, b.weight) for b in service.backends] == [
        ("10.0.2.10", 8080, 3),
        ("10.0.2.11", 8080, 1),
    ]

    rules = mesh.rules
    assert [r.action for r in rules] == ["allow", "allow", "allow", "allow", "deny", "deny", "deny"]
    assert peer_texts(rules[0].destinations) == ["api-svc"] and rules[0].ports is None
    assert rules[1].mtls and [(p.low, p.high, p.protocol) for p in rules[1].ports] == [
        (8080, 8080, "tcp")
    ]
    assert [(p.low, p.high, p.protocol) for p in rules[3].ports] == [
        (53, 53, "udp"),
        (53, 53, "tcp"),
    ]
    assert peer_texts(rules[5].destinations) == ["10.0.0.0/8 except 10.0.3.0/24"]
    assert [(p.low, p.high, p.protocol) for p in rules[5].ports] == [(1, 1023, "tcp")]
    assert rules[6].audit and not rules[6].mtls
    assert rules[6].span.line == 32 and rules[6].action_span.column == 5


def test_every_example_of_the_contract_parses():
    if not CONTRACT.exists():
        pytest.skip("the contract is not on this machine")
    text = CONTRACT.read_text()
    # The service written inline in the Declarations section.
    inline = re.search(r"`(service six .*?)`\)", text, re.S).group(1)
    inline = " ".join(inline.split())
    load(f'mesh m {{ workload w {{ cgroup "w" }} {inline} allow w -> six }}')
    load('mesh m { workload frontend { cgroup "f" } allow [frontend, 10.1.0.0/16] -> any }')


# ---- settings ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text, key, value",
    [
        ('trust_domain "shop.example"', "trust_domain", "shop.example"),
        ("default deny", "default", "deny"),
        ("default allow", "default", "allow"),
        ("mode enforce", "mode", "enforce"),
        ("mode audit", "mode", "audit"),
        ("accelerate on", "accelerate", "on"),
        ("accelerate off", "accelerate", "off"),
    ],
)
def test_settings(text, key, value):
    (setting,) = mesh_of(text).settings
    assert (setting.key, setting.value) == (key, value)
    assert setting.value_span.line == 2


@pytest.mark.parametrize("value", ["enfroce", "yes", "1", "port", "workload", "allowed"])
def test_a_setting_value_is_any_word_so_that_the_checker_reports_it(value):
    (setting,) = mesh_of(f"mode {value}").settings
    assert setting.value == value


# ---- workloads ----------------------------------------------------------------


def test_workload_on_one_line():
    (workload,) = mesh_of("workload db { address 10.0.3.5 }").workloads
    assert workload.name.value == "db" and workload.addresses[0].text == "10.0.3.5"


def test_workload_statements_in_any_order_and_address_repeated():
    (workload,) = mesh_of(
        'workload w { mtls required address 10.0.0.1 identity "spiffe://m/w" cgroup "w" address fd00::1 }'
    ).workloads
    assert [c.value for c in workload.cgroups] == ["w"]
    assert [a.text for a in workload.addresses] == ["10.0.0.1", "fd00::1"]
    assert workload.mtls_required and workload.mtls_span.column == 14


def test_string_escapes():
    (workload,) = mesh_of(r'workload w { cgroup "a\"b\\c" }').workloads
    assert workload.cgroups[0].value == 'a"b\\c'


# ---- services -------------------------------------------------------------------


def test_service_defaults_tcp_and_weight_one():
    (service,) = mesh_of("service s 10.0.0.1:53 { backend 10.0.0.2:5353 }").services
    assert service.protocol == "tcp" and service.backends[0].weight == 1
    assert service.backends[0].weight_span is None


def test_service_udp_and_weights():
    (service,) = mesh_of(
        "service dns 10.0.0.1:53/udp { backend 10.0.0.2:53 weight 0 backend 10.0.0.3:53 weight 65535 }"
    ).services
    assert service.protocol == "udp" and [b.weight for b in service.backends] == [0, 65535]


def test_ipv6_service_in_brackets():
    (service,) = mesh_of("service six [fd00:5::1]:80/tcp { backend [fd00:9::1]:7000 }").services
    assert service.vip == ipaddress.ip_address("fd00:5::1") and service.port == 80
    assert service.backends[0].address == ipaddress.ip_address("fd00:9::1")
    assert service.backends[0].port == 7000
    assert service.vip_span.column == 14  # the address, inside the brackets


def test_vip_and_port_spans():
    (service,) = mesh_of("service dns 10.96.0.10:80/tcp { backend 10.0.0.2:53 }").services
    assert (service.vip_span.column, service.vip_span.end_column) == (13, 23)
    assert (service.port_span.column, service.port_span.end_column) == (24, 26)


# ---- rules ------------------------------------------------------------------------


def test_rule_forms():
    rule = rule_of("allow a -> a")
    assert rule.action == "allow" and rule.ports is None and not rule.mtls and not rule.audit
    rule = rule_of("deny any -> any port 1-1023/tcp, 53, 5353/udp audit")
    assert [(p.low, p.high, p.protocol) for p in rule.ports] == [
        (1, 1023, "tcp"),
        (53, 53, None),
        (5353, 5353, "udp"),
    ]
    assert rule.audit and rule.audit_span.column == 47
    rule = rule_of("allow a -> a port 8080/tcp mtls")
    assert rule.mtls and rule.mtls_span.column == 28
    assert (rule.span.column, rule.span.end_column) == (1, 32)


def test_sources_and_destinations_of_every_kind():
    rule = rule_of(
        "allow [a, any, 10.1.0.0/16, fd00::/8 except fd00:1::/32] -> 10.0.0.0/8 except 10.0.3.0/24, 10.0.4.0/24"
    )
    assert peer_texts(rule.sources) == ["a", "any", "10.1.0.0/16", "fd00::/8 except fd00:1::/32"]
    assert peer_texts(rule.destinations) == ["10.0.0.0/8 except 10.0.3.0/24,10.0.4.0/24"]


def test_except_in_a_list_takes_every_following_cidr_up_to_the_next_non_cidr():
    rule = rule_of(
        "deny a -> [10.0.0.0/8 except 10.1.0.0/16, 10.2.0.0/16, a, 192.168.0.0/16, "
        "172.16.0.0/12 except 172.16.1.0/24, any, 10.9.0.0/16]"
    )
    assert peer_texts(rule.destinations) == [
        "10.0.0.0/8 except 10.1.0.0/16,10.2.0.0/16",
        "a",
        "192.168.0.0/16",
        "172.16.0.0/12 except 172.16.1.0/24",
        "any",
        "10.9.0.0/16",
    ]
    peer = rule.destinations[0]
    assert isinstance(peer, AddressPeer)
    assert (peer.span.column, peer.span.end_column) == (12, 54)


def test_names_lex_around_arrows_and_hyphens():
    rule = rule_of("allow frontend->api-svc")
    assert peer_texts(rule.sources) == ["frontend"] and peer_texts(rule.destinations) == ["api-svc"]
    rule = rule_of("allow a-b->c-d")
    assert peer_texts(rule.sources) == ["a-b"] and peer_texts(rule.destinations) == ["c-d"]
    rule = rule_of("allow x- -> y--z")
    assert peer_texts(rule.sources) == ["x-"] and peer_texts(rule.destinations) == ["y--z"]


@pytest.mark.parametrize(
    "name",
    [
        "allowed",
        "anyone",
        "any-svc",
        "porter",
        "mesh2",
        "deny_x",
        "tcp",
        "udp",
        "on",
        "enforce",
        "_x",
        "Mode",
    ],
)
def test_names_that_start_like_keywords_or_are_not_keywords(name):
    rule = rule_of(f"allow {name} -> {name}")
    assert peer_texts(rule.sources) == [name]


@pytest.mark.parametrize(
    "text, kind, expected",
    [
        ("fd00", "name", "fd00"),
        ("fd00:1::/64", "address", "fd00:1::/64"),
        ("::1", "address", "::1"),
        ("::", "address", "::"),
        ("::ffff:1.2.3.4", "address", "::ffff:1.2.3.4"),
        ("::ffff:1.2.3.0/120", "address", "::ffff:1.2.3.0/120"),
        ("fe80::1:2:3:4", "address", "fe80::1:2:3:4"),
        ("1:2:3:4:5:6:7:8", "address", "1:2:3:4:5:6:7:8"),
        ("deadbeef", "name", "deadbeef"),
        ("cafe-face", "name", "cafe-face"),
        ("10.0.0.1", "address", "10.0.0.1"),
        ("0.0.0.0/0", "address", "0.0.0.0/0"),
    ],
)
def test_addresses_and_names_do_not_get_confused(text, kind, expected):
    rule = rule_of(f"deny a -> {text}")
    (peer,) = rule.destinations
    assert peer.kind == kind and peer_texts([peer]) == [expected]


def test_ipv4_vip_with_port_and_protocol_is_three_parts():
    (service,) = mesh_of("service s 10.96.0.10:80/tcp{backend 10.0.0.2:80}").services
    assert (str(service.vip), service.port, service.protocol) == ("10.96.0.10", 80, "tcp")


def test_comments_and_insignificant_newlines():
    mesh = parse(
        "# a comment\nmesh   # after the keyword\nm\n{\nallow # in a rule\n any\n ->\n any # the end\n}\n# after\n"
    ).mesh
    assert peer_texts(mesh.rules[0].sources) == ["any"]
    assert mesh.rules[0].span.line == 5


def test_windows_line_endings_and_tabs():
    mesh = parse('mesh m {\r\n\tworkload a {\tcgroup "a" }\r\n\tallow a -> a\r\n}\r\n').mesh
    assert mesh.rules[0].span.line == 3 and mesh.rules[0].span.column == 2


BROKEN_ON_LINE_3 = 'mesh m {\n  workload a { cgroup "a" }\n  allow a -> ghost\n}\n'


def with_line_endings(text: str, ending: str) -> str:
    """`text` with its '\\n's made `ending`, or for "mixed" each line its own way."""
    if ending != "mixed":
        return text.replace("\n", ending)
    lines = text.split("\n")
    endings = ("\r\n", "\r", "\n")
    return "".join(line + endings[n % 3] for n, line in enumerate(lines[:-1])) + lines[-1]


@pytest.mark.parametrize("ending", ["\r\n", "\r", "mixed"], ids=["CRLF", "CR", "mixed"])
def test_every_line_ending_makes_the_same_policy_and_the_same_positions(ending):
    """A lone '\\r' ends a line as '\\n' and '\\r\\n' do: the tree, its spans, and the
    FILE:LINE:COL of a mistake are those of the same policy written with '\\n'."""
    text = SHOP.read_text()
    assert load(with_line_endings(text, ending)).mesh == load(text).mesh
    with pytest.raises(PolicyError) as with_lf:
        load(BROKEN_ON_LINE_3)
    with pytest.raises(PolicyError) as rewritten:
        load(with_line_endings(BROKEN_ON_LINE_3, ending))
    assert rewritten.value.render() == with_lf.value.render()
    assert with_lf.value.render().startswith("<policy>:3:14: unknown name 'ghost'")


def test_a_byte_order_mark_is_dropped_from_text_as_from_a_file(tmp_path):
    """Decided: accepted in both. An editor's byte-order mark is no part of the
    policy, whether the text comes from a file or as a str."""
    text = SHOP.read_text()
    assert load("\ufeff" + text).mesh == load(text).mesh
    with_mark = tmp_path / "shop.mesh"
    with_mark.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert load(with_mark).mesh == load(text).mesh
    with pytest.raises(PolicyError) as caught:
        load("\ufeff" + BROKEN_ON_LINE_3)
    assert caught.value.render().startswith("<policy>:3:14: unknown name 'ghost'")
    with pytest.raises(PolicyError, match=r"<policy>:1:1: "):
        load("\ufeff\ufeffmesh m { }")  # only the first is a byte-order mark; a second is text


def test_text_is_named_as_the_caller_says():
    with pytest.raises(PolicyError) as caught:
        load(BROKEN_ON_LINE_3, filename="<stdin>")
    assert caught.value.render().startswith("<stdin>:3:14: ")


def test_host_bits_are_kept_for_the_checker():
    (workload,) = mesh_of("workload w { address 10.0.1.5/24 }").workloads
    (cidr,) = workload.addresses
    assert cidr.host_bits_set and cidr.network == ipaddress.ip_network("10.0.1.0/24")
    assert cidr.text == "10.0.1.5/24"


def test_statements_interleave_and_names_may_be_used_before_declared():
    mesh = mesh_of('allow a -> b\nworkload a { cgroup "a" }\nmode audit\nworkload b { cgroup "b" }')
    assert len(mesh.rules) == 1 and len(mesh.workloads) == 2 and len(mesh.settings) == 1
    check(PolicyFile(filename="x", text="", mesh=mesh))


# ---- the tree ------------------------------------------------------------------------

SAMPLES = [
    SHOP.read_text(),
    "mesh m { }",
    "mesh m { service six [fd00:5::1]:80/tcp { backend [fd00:9::1]:7000 } allow any -> six }",
    "mesh m { deny a -> [10.0.0.0/8 except 10.1.0.0/16, 10.2.0.0/16, a, ::1] port 1-2/udp, 3 audit }",
    'mesh m { trust_domain "x" default allow mode audit accelerate off workload w { cgroup "w" mtls required } }',
    "mesh m { allow frontend->api-svc port 0-65535 mtls }",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_built_trees_validate_against_the_declared_types(text):
    """The builder makes dataclass nodes unvalidated (ast.py): pydantic checks every one here."""
    tree = parse(text)
    assert PolicyFile.model_validate(tree.model_dump()) == tree


def test_the_grammar_has_no_lalr_conflicts(caplog):
    from lark import Lark
    from lark import logger as lark_logger

    from ebmesh.resources import grammar_path

    level = lark_logger.level
    lark_logger.setLevel(logging.DEBUG)
    try:
        with caplog.at_level(logging.DEBUG, logger="lark"):
            Lark(grammar_path().read_text(), parser="lalr", keep_all_tokens=True, debug=True)
    finally:
        lark_logger.setLevel(level)
    assert not [r for r in caplog.records if "conflict" in r.getMessage().lower()]


def test_the_builder_handles_every_rule_of_the_grammar():
    compiled = grammar()
    for rule in compiled.lark.rules:
        name = rule.alias or rule.origin.name
        assert callable(getattr(compiled.builder, str(name), None)), f"no builder method for {name}"


def test_keyword_table_matches_the_grammar():
    compiled = grammar()
    terminals = {t.name: t.pattern.value for t in compiled.lark.terminals}
    for name, text in KEYWORDS.items():
        assert terminals[name].startswith(f"{text}(?!"), name
    excluded = re.match(r"\(\?!\(\?:([a-z_|]+)\)", terminals["NAME"]).group(1).split("|")
    assert sorted(excluded) == sorted(KEYWORDS.values())
    keyword_like = {n for n, p in terminals.items() if re.match(r"[a-z_]+\(\?!", p)}
    assert keyword_like == set(KEYWORDS)


# ---- load ---------------------------------------------------------------------------


def test_load_takes_text_a_path_or_a_tree(tmp_path):
    text = SHOP.read_text()
    from_text = load(text)
    assert from_text.filename == "<policy>"
    path = tmp_path / "shop.mesh"
    path.write_text(text)
    from_path = load(path)
    assert from_path.filename == str(path) and from_path.mesh == from_text.mesh
    assert load(from_path) is from_path


def test_load_rechecks_a_parsed_tree():
    tree = parse("mesh m { allow ghost -> any }")
    with pytest.raises(PolicyError, match="unknown name 'ghost'"):
        load(tree)


def test_load_reports_unreadable_and_non_utf8_files(tmp_path):
    with pytest.raises(PolicyError, match="cannot read the policy"):
        load(tmp_path / "missing.mesh")
    bad = tmp_path / "bad.mesh"
    bad.write_bytes(b"mesh m {\n # \xff\n}")
    with pytest.raises(PolicyError, match=r"bad.mesh:2: the policy is not valid UTF-8"):
        load(bad)


def test_load_drops_a_byte_order_mark(tmp_path):
    path = tmp_path / "bom.mesh"
    path.write_bytes(b"\xef\xbb\xbfmesh m { }\n")
    assert load(path).mesh.name.value == "m"


def test_load_rejects_other_types():
    with pytest.raises(TypeError):
        load(b"mesh m { }")  # type: ignore[arg-type]
