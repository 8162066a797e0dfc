"""Syntax errors: report each one, then recover and go on, so one run shows them all.

Runs Lark's own LALR parser with `on_error`. At each error it records a
diagnostic, then tries, in order, on a copy of the parser state:

1. a small repair: drop the unexpected token, replace a misspelled keyword
   (`alow` -> `allow`), or insert the one missing token (`->`, `{`, `}`, `]`,
   `,`, `:`), accepted only if the tokens after it then parse;
2. panic mode: skip to the next token that starts a statement or closes a
   block (`allow`, `deny`, `workload`, `service`, a setting, `mesh`, `}`) and
   pop the parser's stack until a state accepts it.

The work grows with the input's length, whatever it holds. After
MAX_SYNTAX_ERRORS errors the parse stops (parser.py then says so, at the
next one). A skip searches the text rather than lexing every token
(skipping.py), and only for a sync token that some open construct can take
followed by a token that may come after it there: after the mesh's last `}`,
only `mesh NAME`. So a megabyte of `}` or of `allow allow ...` is one search.
"""

from __future__ import annotations

from copy import copy
from typing import Any

from lark import Token
from lark.exceptions import UnexpectedCharacters, UnexpectedInput

try:
    from lark.parsers.lalr_parser_state import ParserState
except ImportError:  # lark < 1.2 kept it in lalr_parser
    from lark.parsers.lalr_parser import ParserState  # type: ignore[no-redef]

from ebmesh.errors import Diagnostic
from ebmesh.language.grammar import KEYWORDS, PUNCTUATION, Grammar
from ebmesh.language.literals import PROTOCOLS
from ebmesh.language.source import SourceText
from ebmesh.language.suggest import closest
from ebmesh.language.syntax_messages import (
    END,
    PEER_STARTS,
    STATEMENT_STARTS,
    expectation,
    found_words,
    keyword_suggestion,
    list_hint,
    open_block,
)

MAX_SYNTAX_ERRORS = 20  # as clang's -ferror-limit
SYNC_TOKENS = STATEMENT_STARTS | {"MESH", "RBRACE"}
INSERTABLE = ("ARROW", "LBRACE", "RBRACE", "RSQB", "COMMA", "COLON")


class SyntaxErrorReporter:
    def __init__(self, source: SourceText, grammar: Grammar):
        self.source = source
        self.lark = grammar.lark
        self.skipper = grammar.skipper
        self.root_lexer = self.lark.parser.lexer.root_lexer
        self.diagnostics: list[Diagnostic] = []
        # Where the parse stopped for too many errors: (line, column, length).
        self.stopped_at: tuple[int, int, int] | None = None
        self._errors = 0
        self._seen: set[tuple[int, int, str]] = set()
        self._reported: set[int] = set()

    def parse(self) -> Any:
        """The parse result, or None if the input was too broken to finish."""
        try:
            return self.lark.parse(self.source.text, on_error=self._on_error)
        except UnexpectedInput as error:
            if id(error) not in self._reported:
                self._report(error)
            return None

    # ---- reporting ----------------------------------------------------------

    def _on_error(self, error: UnexpectedInput) -> bool:
        # Errors found, not diagnostics: one that repeats an earlier diagnostic
        # is not shown again, but it cost a recovery all the same.
        self._errors += 1
        if self._errors > MAX_SYNTAX_ERRORS:
            self._reported.add(id(error))
            self.stopped_at = self._where(error)
            return False
        self._report(error)
        try:
            return self._recover(error)
        except UnexpectedInput:
            return False

    def _where(self, error: UnexpectedInput) -> tuple[int, int, int]:
        """Line, column and width of the error's spot."""
        if isinstance(error, UnexpectedCharacters):
            return error.line, error.column, 1
        token = error.token
        if token.type == END:
            return (*self._end_position(getattr(error, "interactive_parser", None)), 1)
        return token.line, token.column, len(token.value)

    def _report(self, error: UnexpectedInput) -> None:
        self._reported.add(id(error))
        parser = getattr(error, "interactive_parser", None)
        expected = frozenset(parser.accepts()) if parser is not None else frozenset()
        stack = parser.parser_state.value_stack if parser is not None else []
        top = stack[-1] if stack else None
        if isinstance(error, UnexpectedCharacters):
            message, hint = self._describe_character(error, expected, top)
        else:
            following = (
                self._following(parser.lexer_thread.state, error.token)
                if parser is not None
                else []
            )
            following_type = following[0][0].type if following and following[0] else None
            message, hint = _describe_token(error.token, expected, stack, following_type)
        line, column, length = self._where(error)
        diagnostic = self.source.at(line, column, message, length=length, hint=hint)
        key = (diagnostic.location.line, diagnostic.location.column, diagnostic.message)
        if key not in self._seen:
            self._seen.add(key)
            self.diagnostics.append(diagnostic)

    def _end_position(self, parser: Any) -> tuple[int, int]:
        last = parser.lexer_thread.state.last_token if parser is not None else None
        if last is None:
            return 1, 1
        return last.end_line, last.end_column

    def _describe_character(
        self, error: UnexpectedCharacters, expected: frozenset[str], top: Any
    ) -> tuple[str, str | None]:
        char = error.char
        if char == '"':
            return "unterminated string", "a string ends with '\"' on the line where it starts"
        wanted = expectation(expected, top) if expected else None
        if char == "-" and "ARROW" in expected:
            return f"expected {wanted}", "write '->' with no space between '-' and '>'"
        if char == "-" and "COMMA" in expected and not PEER_STARTS & expected:
            return (
                f"unexpected character {char!r}",
                "write a port range with no spaces, e.g. 1-1023",
            )
        hint = f"expected {wanted}" if wanted else None
        if char.isalpha() and not char.isascii():
            hint = "names use ASCII letters, digits, '_' and '-'"
        return f"unexpected character {char!r}", hint

    # ---- recovery -----------------------------------------------------------

    def _recover(self, error: UnexpectedInput) -> bool:
        parser = error.interactive_parser
        if parser is None:
            return False
        state: ParserState = parser.parser_state
        lexer_state = parser.lexer_thread.state
        if isinstance(error, UnexpectedCharacters):
            lexer_state.line_ctr.feed(
                self.source.text[error.pos_in_stream : error.pos_in_stream + 1]
            )
            token = None
            # A stray character: go on as if it were not there, if what follows fits.
            afters = self._following(lexer_state, lexer_state.last_token)
            if any(_parses(state, len(state.state_stack), after) for after in afters):
                return True
        else:
            token = error.token
            if self._repair(state, lexer_state, token):
                return True
            if token.type == END:
                return False
        return self._resynchronise(state, lexer_state, token)

    def _repair(self, state: ParserState, lexer_state: Any, token: Token) -> bool:
        if token.type == END:
            return self._close_open_blocks(state, lexer_state.last_token or token)
        afters = self._following(lexer_state, token)
        if any(_parses(state, len(state.state_stack), after) for after in afters):
            return True  # `token` is extra: it is already consumed, go on after it
        expected = _choices(state)
        if token.type == "NAME":
            keyword = closest(str(token.value), [KEYWORDS[t] for t in expected if t in KEYWORDS])
            if keyword is not None:
                replacement = _virtual(_keyword_terminal(keyword), token, keyword)
                if any(
                    _parses(state, len(state.state_stack), [replacement, *after])
                    for after in afters
                ):
                    return _feed(state, [replacement])
        for missing in INSERTABLE:
            if missing not in expected:
                continue
            inserted = _virtual(missing, token, PUNCTUATION[missing])
            for variant in _variants(token):
                if any(
                    _parses(state, len(state.state_stack), [inserted, variant, *after])
                    for after in afters
                ):
                    return _feed(state, [inserted, variant])
        return False

    def _close_open_blocks(self, state: ParserState, last: Token) -> bool:
        """At the end of the file, supply the missing '}'s if that completes the parse."""
        closers: list[Token] = []
        for _ in range(8):
            closers.append(_virtual("RBRACE", last, "}"))
            if _parses(state, len(state.state_stack), [*closers, _virtual(END, last)]):
                return _feed(state, closers)
        return False

    def _resynchronise(self, state: ParserState, lexer_state: Any, token: Token | None) -> bool:
        places = _ResumePlaces(state)
        if not places.followers:
            return False  # nothing open can take a statement, a '}' or a 'mesh' again
        while True:
            if token is None or token.type not in places.followers:
                token = self.skipper.next_token_of(places.followers, self.source.text, lexer_state)
                if token is None:
                    return False
            keep = places.depth_for(token, self._following(lexer_state, token) or [[]])
            if keep is not None:
                del state.state_stack[keep:]
                del state.value_stack[keep - 1 :]
                return _feed(state, [token])
            token = None  # nothing open accepts it: skip it too

    def _following(self, lexer_state: Any, at: Token | None) -> list[list[Token]]:
        """What may come next, without consuming it: each way to read the next token."""
        try:
            following = self.root_lexer.next_token(copy(lexer_state))
        except EOFError:
            return [[_virtual(END, at) if at is not None else Token(END, "")]]
        except UnexpectedCharacters:
            return []  # garbage next: no evidence either way
        return [[variant] for variant in _variants(following)]


def _describe_token(
    token: Token, expected: frozenset[str], stack: list, following: str | None
) -> tuple[str, str | None]:
    """Message and hint for `token`, unexpected where `expected` was; `following` is the next token's type."""
    top = stack[-1] if stack else None
    kind = token.type
    wanted = expectation(expected, top)
    if kind == END:
        if expected == {"MESH"}:
            return "empty policy: expected 'mesh NAME { ... }'", None
        block = open_block(stack) if expected & {"RBRACE", "RSQB"} else None
        if block is not None:
            closer, what = block
            return f"unexpected end of file: expected '{closer}' to close {what}", None
        return f"unexpected end of file: expected {wanted}", None
    if kind in KEYWORDS and "NAME" in expected and kind not in expected:
        message = f"'{token.value}' is a keyword and cannot be a name"
        if PEER_STARTS <= expected:
            return f"expected {wanted}", message
        return message, None
    if "ARROW" in expected:
        # `allow a b -> c` wants a list; `allow a b` lacks its arrow.
        several = kind == "COMMA" or following == "ARROW"
        return f"expected {wanted}", list_hint(top, token, "sources") if several else None
    if expected == {END} and kind == "MESH":
        return (
            "a file holds exactly one mesh",
            "put every workload, service and rule in the first mesh",
        )
    if STATEMENT_STARTS <= expected and "NUMBER" not in expected:
        return f"unexpected {found_words(token)}", _statement_hint(token, expected, top)
    if expected == {END}:
        return f"unexpected {found_words(token)} after the end of the mesh", None
    if expected == {"MESH"} and kind in STATEMENT_STARTS:
        return (
            f"expected {wanted}",
            "settings, declarations and rules go inside 'mesh NAME { ... }'",
        )
    hint = keyword_suggestion(token, expected)
    if hint is None and expected == {"STRING"} and kind in ("NAME", *KEYWORDS):
        hint = f'write it in quotes: "{token.value}"'
    if hint is None and kind == "STRING" and "NUMBER" in expected:
        hint = f"write it without quotes: {token.value[1:-1]}"
    return f"expected {wanted}", hint


def _statement_hint(token: Token, expected: frozenset[str], top: Any) -> str:
    """Why a token cannot start a statement, or end the rule before it."""
    kind = token.type
    hint = keyword_suggestion(token, expected)
    if hint is None and "PORT" in expected:
        hint = list_hint(top, token, "destinations")
    if hint is None and "COMMA" in expected and (kind == "SLASH" or str(token.value) in PROTOCOLS):
        hint = "write a port and its protocol as one word, e.g. 80/tcp"
    if (
        hint is None
        and kind in ("PORT", "MTLS")
        and getattr(top, "type", None) in ("MTLS", "AUDIT")
    ):
        hint = "a rule is ACTION SRC -> DST [port PORTS] [mtls] [audit], in that order"
    return hint or f"expected {expectation(expected, top)}"


def _variants(token: Token) -> list[Token]:
    """The ways the contextual lexer may read what the root lexer read as `token`.

    Only one overlap exists: a plain number is a PORT_RANGE to the root lexer
    but a NUMBER where a port, weight or setting value is expected.
    """
    if token.type == "PORT_RANGE" and token.value.isdigit():
        return [token, Token.new_borrow_pos("NUMBER", token.value, token)]
    return [token]


class _ResumePlaces:
    """Where panic mode may resume: which tokens, at which depth of the stack, before what.

    The stack does not change while tokens are skipped, so this is worked out
    once per skip. `followers` maps each kind of sync token that some depth
    has an action for to the kinds of token that may come after it there
    (read from the parse table: what could follow, not always what parses);
    the skipper looks only for those pairs. `depth_for` decides, with trial
    parses remembered by kind (trials read kinds only, never values).
    """

    def __init__(self, state: ParserState):
        self.state = state
        table = state.parse_conf.states
        stack = state.state_stack
        self.depths: dict[str, list[int]] = {}
        self.followers: dict[str, frozenset[str]] = {}
        for kind in sorted(SYNC_TOKENS):
            depths = [keep for keep in range(len(stack), 0, -1) if kind in table[stack[keep - 1]]]
            after: set[str] = set()
            for keep in depths:
                after |= _choices_after(state, keep, kind)
            if depths:
                self.depths[kind] = depths
                self.followers[kind] = frozenset(after)
        self._trials: dict[tuple, bool] = {}

    def depth_for(self, token: Token, afters: list[list[Token]]) -> int | None:
        """The deepest depth where `token`, then one of `afters`, parses; None if there is none."""
        for keep in self.depths[token.type]:
            for after in afters:
                key = (keep, token.type, *(t.type for t in after))
                if key not in self._trials:
                    self._trials[key] = _parses(self.state, keep, [token, *after])
                if self._trials[key]:
                    return keep
        return None


def _choices_after(state: ParserState, keep: int, kind: str) -> set[str]:
    """The terminals the parse table has an action for once `kind` is fed at depth `keep`."""
    conf = copy(state.parse_conf)
    conf.callbacks = {}
    trial = ParserState(conf, state.lexer, state.state_stack[:keep], state.value_stack[: keep - 1])
    try:
        trial.feed_token(Token(kind, ""))
    except UnexpectedInput:
        return set()
    return _choices(trial)


def _choices(state: ParserState) -> set[str]:
    return {name for name in state.parse_conf.states[state.position] if name.isupper()}


def _keyword_terminal(keyword: str) -> str:
    return next(name for name, text in KEYWORDS.items() if text == keyword)


def _virtual(kind: str, at: Token, text: str = "") -> Token:
    """A token the user did not write, placed where the error is."""
    return Token.new_borrow_pos(kind, text, at)


def _parses(state: ParserState, keep: int, tokens: list[Token]) -> bool:
    """Would `tokens` parse after the first `keep` states of the stack? (no callbacks run)"""
    conf = copy(state.parse_conf)
    conf.callbacks = {}
    trial = ParserState(conf, state.lexer, state.state_stack[:keep], state.value_stack[: keep - 1])
    try:
        for token in tokens:
            trial.feed_token(token, token.type == END)
    except UnexpectedInput:
        return False
    return True


def _feed(state: ParserState, tokens: list[Token]) -> bool:
    try:
        for token in tokens:
            state.feed_token(token)
    except UnexpectedInput:
        return False
    return True
