"""Skipping ahead after a syntax error, to the next place the parse may resume.

Panic-mode recovery (syntax_errors.py) skips to the next token that an open
construct can take (a statement keyword, `}`, `mesh`) and that is followed by
a token that may come after it there. Lexing every token on the way, as
Lark's lexer does, at about 3 µs a token and 10 µs or more for each
character it cannot read (through an exception), made a megabyte of `}` or
of random bytes take seconds to minutes, with one trial parse per `}`. Here
the text is searched instead, at the speed of the regex engine:

1. a candidate is where a wanted kind's pattern matches, followed (after
   ignored text) by the pattern of a kind that may come after it, by
   something no token starts with, or by the end. Every such pair of tokens
   matches, so the text before the first candidate holds none.
2. a candidate may still lie inside a string, a comment or a longer token.
   Strings and comments end on their line, and a line start is always where
   a token starts (no other token spans a line break): so from there, or
   from where the lexer stands if that is later, the strings and comments
   before the candidate are skipped by their patterns. Past them, a
   character that can only end a token (none of CONTINUING) is followed by a
   token start. The lexer reads from the last such place up to the
   candidate, and tells.

The token returned, and the lexer's position after it, are those the lexer
would have reached reading every token on the way (tests/unit/test_skipping.py
checks the claim of 2. against Lark's lexer); the caller still decides with
a trial parse.
"""

from __future__ import annotations

import re
import string
from typing import Any

from lark import Lark, Token
from lark.exceptions import UnexpectedCharacters

# The characters that may sit inside a token other than a string, a comment or
# blanks, after its first one: those of names and keywords, addresses, port
# ranges and numbers, and the '-' of '->'. Before any other character, a token
# ends (grammar/ebmesh.lark).
CONTINUING = string.ascii_letters + string.digits + "_-:./"
# The terminals that may hold any character, by the character they open with:
# their text is skipped whole.
QUOTING = {"STRING": '"', "COMMENT": "#"}


class Skipper:
    """One per grammar: its terminals' patterns, and search patterns compiled on first use."""

    def __init__(self, lark: Lark):
        self.lexer = lark.parser.lexer.root_lexer
        self.patterns = {t.name: t.pattern.to_regexp() for t in lark.terminals}
        self.any_token = "|".join(f"(?:{p})" for p in self.patterns.values())
        # Where any token, or ignored text, can start: between two such places
        # the lexer only meets characters it cannot read.
        self.readable = re.compile(self.any_token)
        self.ignored = "|".join(f"(?:{self.patterns[name]})" for name in lark.ignore_tokens)
        self.quoted = re.compile("|".join(f"(?:{self.patterns[name]})" for name in QUOTING))
        self.quote_opener = re.compile("|".join(re.escape(c) for c in QUOTING.values()))
        self._finders: dict[frozenset, Any] = {}

    def next_token_of(
        self, followers: dict[str, frozenset[str]], text: str, lexer_state: Any
    ) -> Token | None:
        """The next token of a kind in `followers` that one of its followers may follow.

        The lexer is moved past it. None at the end of the text.
        """
        finder = self._finder(followers)
        while True:
            position = lexer_state.line_ctr.char_pos
            candidate = finder(text, position)
            if candidate is None:
                _advance(lexer_state, text, len(text))
                return None
            line_start = text.rfind("\n", position, candidate.start()) + 1
            start, quoted_end = self._reading_start(
                text, max(position, line_start), candidate.start()
            )
            if start is None:  # in a string or a comment
                _advance(lexer_state, text, quoted_end)
                continue
            _advance(lexer_state, text, start)
            while lexer_state.line_ctr.char_pos <= candidate.start():
                token = self._next_token(text, lexer_state)
                if token is None:
                    return None
                # One before the candidate is followed by nothing that fits it (the
                # search would have stopped there). One after it, when the candidate
                # lay inside a longer token, is looked at like any other.
                if token.type in followers and token.start_pos >= candidate.start():
                    return token

    def _reading_start(self, text: str, start: int, candidate: int) -> tuple[int | None, int]:
        """Where to start lexing so as to read the tokens that a lexer at `start` reads up to `candidate`.

        `start` is where a token starts. Returns (None, end) if the candidate
        lies inside a string or comment that ends at `end`.
        """
        position = start
        while True:
            opener = self.quote_opener.search(text, position, candidate)
            if opener is None:
                break
            quoted = self.quoted.match(text, opener.start())
            if quoted is None:  # a lone '"': a character the lexer skips
                position = opener.start() + 1
                continue
            if quoted.end() > candidate:
                return None, quoted.end()
            position = quoted.end()
        before = text[position:candidate]
        return position + len(before.rstrip(CONTINUING)), candidate

    def _next_token(self, text: str, lexer_state: Any) -> Token | None:
        """What the lexer reads next, skipping what it cannot read, one character at a time."""
        while True:
            readable = self.readable.search(text, lexer_state.line_ctr.char_pos)
            if readable is None:
                _advance(lexer_state, text, len(text))
                return None
            _advance(lexer_state, text, readable.start())
            try:
                return self.lexer.next_token(lexer_state)
            except EOFError:
                return None
            except UnexpectedCharacters as error:  # after ignored text, an unreadable character
                _advance(lexer_state, text, error.pos_in_stream + 1)

    def _finder(self, followers: dict[str, frozenset[str]]) -> Any:
        key = frozenset(followers.items())
        if key not in self._finders:
            choices = []
            for index, (kind, after) in enumerate(sorted(followers.items())):
                nexts = [
                    f"(?:{self.patterns[name]})" for name in sorted(after) if name in self.patterns
                ]
                # The ignored text is taken whole (a lookahead, then a backreference),
                # as the lexer takes it: a plain `(?:WS|COMMENT)*` would backtrack
                # through every way of splitting a long run of blanks.
                skip = f"(?=(?P<ignored{index}>(?:{self.ignored})*))(?P=ignored{index})"
                following = "|".join([*nexts, f"(?!{self.any_token})"])
                choices.append(f"(?:{self.patterns[kind]})(?={skip}(?:{following}))")
            self._finders[key] = re.compile("|".join(choices)).search
        return self._finders[key]


def _advance(lexer_state: Any, text: str, position: int) -> None:
    """Move the lexer to `position`, counting the lines on the way."""
    current = lexer_state.line_ctr.char_pos
    if position > current:
        lexer_state.line_ctr.feed(text[current:position])
