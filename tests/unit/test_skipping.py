"""The skipper finds every place panic mode may resume, as reading every token would.

Reading every token with Lark's lexer is the reference: the skipper must
return each token of a wanted kind that is followed by one of its followers
(or by something unreadable, or by the end), and return only tokens that
the lexer reads where it says. The pieces are chosen to put candidates inside
strings, comments and longer tokens (`80/allow`, `a-mesh`, `::accelerate`),
which is where the skipper's shortcuts (skipping.py) could go wrong.
"""

from __future__ import annotations

from copy import copy

from hypothesis import given, settings
from hypothesis import strategies as st
from lark.exceptions import UnexpectedCharacters

from ebmesh.language.grammar import grammar
from ebmesh.language.skipping import QUOTING

END = "$END"
FOLLOWERS = [
    {"RBRACE": frozenset({END})},
    {"MESH": frozenset({"NAME"}), "RBRACE": frozenset({END, "RBRACE"})},
    {"ALLOW": frozenset({"NAME", "ANY", "CIDR", "LSQB"}), "DENY": frozenset({"NAME"})},
    {"ACCELERATE": frozenset({"NAME", "NUMBER", "ALLOW"}), "TRUST_DOMAIN": frozenset({"STRING"})},
]
PIECES = [
    "}", "{", "mesh", "m", "allow", "deny", "any", "accelerate", "trust_domain", "80", "80/",
    "a-", "a/", "::", "10.0.0.0/8", "fd00::1", '"', '"x } allow"', "#", "# } mesh m\n",
    "->", "-", ">", ",", "[", "]", "@", "é", " ", "  ", "\n", "\t",
    '"}"', '"allow a"', "# allow a\n", "80/allow", "a-mesh m", "::accelerate x",
]  # fmt: skip


def lexer_state(text: str):
    return grammar().lark.parse_interactive(text).lexer_thread.state


def read_everything(text: str) -> list[tuple[int, str, str | None]]:
    """Every token as Lark's lexer reads it: (start, kind, kind of what follows or None)."""
    lexer = grammar().lark.parser.lexer.root_lexer
    state = lexer_state(text)
    tokens = []
    while True:
        try:
            token = lexer.next_token(state)
        except EOFError:
            return tokens
        except UnexpectedCharacters as error:
            state.line_ctr.feed(text[error.pos_in_stream : error.pos_in_stream + 1])
            continue
        try:
            following = lexer.next_token(copy(state))
            kinds = {following.type}
            if following.type == "PORT_RANGE" and following.value.isdigit():
                kinds.add("NUMBER")  # what the contextual lexer may read it as
        except EOFError:
            kinds = {END}
        except UnexpectedCharacters:
            kinds = None  # unreadable: no evidence either way
        tokens.append((token.start_pos, token.type, kinds))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=60).map("".join), st.sampled_from(FOLLOWERS))
def test_the_skipper_returns_every_place_and_only_real_tokens(text, followers):
    everything = read_everything(text)
    real = {(start, kind) for start, kind, _ in everything}
    wanted = {
        start
        for start, kind, after in everything
        if kind in followers and (after is None or after & followers[kind])
    }
    skipper = grammar().skipper
    state = lexer_state(text)
    returned = []
    while (token := skipper.next_token_of(followers, text, state)) is not None:
        assert (token.start_pos, token.type) in real
        returned.append(token.start_pos)
    assert wanted <= set(returned)


def test_quoting_terminals_open_with_their_character():
    patterns = grammar().skipper.patterns
    for name, opener in QUOTING.items():
        assert patterns[name].startswith(opener), name
