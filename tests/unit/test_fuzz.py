"""Whatever the input, the front-end answers with a tree or a PolicyError: never a traceback."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebmesh.errors import PolicyError
from ebmesh.language import load, parse
from ebmesh.language.ast import PolicyFile

SHOP = (Path(__file__).resolve().parents[2] / "examples" / "shop.mesh").read_text()

TOKENS = [
    "mesh",
    "m",
    "{",
    "}",
    "workload",
    "service",
    "backend",
    "weight",
    "cgroup",
    "address",
    "identity",
    "mtls",
    "required",
    "allow",
    "deny",
    "any",
    "except",
    "port",
    "audit",
    "trust_domain",
    "default",
    "mode",
    "accelerate",
    "enforce",
    "on",
    "off",
    "tcp",
    "udp",
    "->",
    "-",
    ">",
    "[",
    "]",
    ",",
    ":",
    "/",
    "10.0.0.0/8",
    "10.0.0.1",
    "10.0.0.300",
    "1.2.3",
    "fd00::/8",
    "::1",
    "::ffff:1.2.3.4",
    "fd00",
    "[fd00::1]",
    "10.96.0.10:80/tcp",
    "80",
    "1-1023",
    "53/udp",
    "99999999999999999999",
    "0",
    '"a"',
    '"spiffe://m/a"',
    '"/x"',
    '"a\\q"',
    "a",
    "b",
    "api-svc",
    "frontend->api",
    "#c\n",
    "\n",
    " ",
    "\t",
    "\r\n",
    "@",
    '"',
    "\\",
    "é",
    "\x00",
    "\u2028",
]

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def answers_without_crashing(text: str) -> None:
    try:
        policy = load(text)
    except PolicyError as error:
        assert error.diagnostics
        error.render()
        return
    assert_well_typed(policy)


def assert_well_typed(tree: PolicyFile) -> None:
    """Every node the builder made (unvalidated, see ast.py) has the declared types."""
    assert PolicyFile.model_validate(tree.model_dump()) == tree


token_soup = st.lists(st.sampled_from(TOKENS), max_size=80).map(" ".join)
inside_a_mesh = token_soup.map(lambda body: f"mesh m {{\n{body}\n}}\n")


@st.composite
def mutated_example(draw):
    text = SHOP
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["delete", "insert", "replace"]))
        if action == "delete":
            text = text[:position] + text[position + draw(st.integers(1, 12)) :]
        elif action == "insert":
            text = text[:position] + draw(st.sampled_from(TOKENS)) + text[position:]
        else:
            text = text[:position] + draw(st.characters()) + text[position + 1 :]
    return text


@SETTINGS
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes):
    answers_without_crashing(data.decode("latin-1"))


@SETTINGS
@given(st.text(max_size=300))
def test_random_text(text: str):
    answers_without_crashing(text)


@SETTINGS
@given(token_soup)
def test_token_soup(text: str):
    answers_without_crashing(text)


@SETTINGS
@given(inside_a_mesh)
def test_token_soup_inside_a_mesh(text: str):
    answers_without_crashing(text)


@SETTINGS
@given(mutated_example())
def test_mutated_example(text: str):
    answers_without_crashing(text)


# ---- syntactically valid policies, in every layout -------------------------------------

blank = st.sampled_from([" ", "  ", "\n", "\t", " # a comment\n", "\r\n    "])
maybe_blank = st.one_of(st.just(""), blank)
names = st.sampled_from(["a", "web", "api-svc", "fd00", "x_1", "on", "tcp", "anyone", "b-"])
cidrs = st.sampled_from(
    ["10.0.0.0/8", "10.1.0.0/16", "10.0.0.1", "fd00::/8", "::1", "::ffff:1.2.3.4", "0.0.0.0/0"]
)


@st.composite
def peer(draw, in_list: bool):
    kind = draw(st.sampled_from(["name", "any", "cidr", "except"]))
    if kind == "name":
        return draw(names)
    if kind == "any":
        return "any"
    if kind == "cidr":
        return draw(cidrs)
    count = 1 if in_list else draw(st.integers(1, 3))
    excepts = [draw(cidrs) for _ in range(count)]
    return f"{draw(cidrs)}{draw(blank)}except{draw(blank)}{(',' + draw(blank)).join(excepts)}"


@st.composite
def side(draw):
    if draw(st.booleans()):
        return draw(peer(in_list=False))
    items = [draw(peer(in_list=True)) for _ in range(draw(st.integers(1, 4)))]
    return f"[{draw(maybe_blank)}{(',' + draw(blank)).join(items)}{draw(maybe_blank)}]"


@st.composite
def rule(draw):
    text = f"{draw(st.sampled_from(['allow', 'deny']))}{draw(blank)}{draw(side())}"
    text += f"{draw(blank)}->{draw(blank)}{draw(side())}"
    if draw(st.booleans()):
        ports = [
            draw(st.sampled_from(["80", "1-1023", "53/udp", "443/tcp", "0-65535/udp", "9-1"]))
            for _ in range(draw(st.integers(1, 3)))
        ]
        text += f"{draw(blank)}port{draw(blank)}{(',' + draw(blank)).join(ports)}"
    for keyword in ("mtls", "audit"):
        if draw(st.booleans()):
            text += f"{draw(blank)}{keyword}"
    return text


@st.composite
def declaration(draw):
    kind = draw(st.sampled_from(["workload", "service", "setting"]))
    if kind == "setting":
        return draw(
            st.sampled_from(['trust_domain "m"', "default allow", "mode audit", "accelerate on"])
        )
    if kind == "service":
        vip = draw(st.sampled_from(["10.96.0.1:80", "10.96.0.1:53/udp", "[fd00::1]:80/tcp"]))
        backends = draw(
            st.lists(st.sampled_from(["10.0.0.2:80", "[fd00::2]:80 weight 2"]), max_size=3)
        )
        body = draw(blank).join(f"backend {b}" for b in backends)
        return f"service {draw(names)} {vip} {{{draw(blank)}{body}{draw(blank)}}}"
    statements = draw(
        st.lists(
            st.sampled_from(
                [
                    'cgroup "c"',
                    "address 10.0.0.1, fd00::/64",
                    'identity "spiffe://m/w"',
                    "mtls required",
                ]
            ),
            max_size=4,
        )
    )
    return f"workload {draw(names)}{draw(blank)}{{{draw(blank)}{draw(blank).join(statements)}{draw(blank)}}}"


@st.composite
def valid_syntax(draw):
    statements = draw(st.lists(st.one_of(rule(), declaration()), max_size=8))
    separator = draw(blank)
    return f"mesh m{draw(blank)}{{{draw(blank)}{separator.join(statements)}{draw(blank)}}}{draw(maybe_blank)}"


@SETTINGS
@given(valid_syntax())
def test_valid_syntax_parses_to_a_well_typed_tree(text: str):
    tree = parse(text)
    assert_well_typed(tree)
    try:
        load(tree)
    except PolicyError as error:
        error.render()


def test_pathological_inputs():
    for text in [
        "",
        "mesh",
        "mesh m {" * 5000,
        "}" * 5000,
        "mesh m {" + " " * 100_000 + "@}",
        "mesh m { allow a -> [" + "a, " * 20_000 + "a] }",
        "mesh m { " + "# comment\n" * 10_000 + "}",
        "mesh m { workload w { address " + "1" * 5000 + ".0.0.1 } }",
        "mesh m { allow a -> b port " + "9" * 5000 + " }",
        "mesh m { allow a -> b port 1" + "-1" * 3 + " }",
        "\x00" * 1000,
    ]:
        answers_without_crashing(text)


def test_errors_are_capped_on_garbage():
    garbage = "mesh m {\n" + "allow ? -> ?\n" * 500 + "}\n"
    try:
        parse(garbage)
    except PolicyError as error:
        assert 1 <= len(error.diagnostics) <= 21
