"""A lean driver for Lark's own LALR tables, for policies without syntax errors.

Lark's runtime spends ~10 µs per token (Token objects, a generator per
lexer state, line counting, the callback wrappers): 9 s for a 100,000-rule
policy. This driver runs the same parse, from the same tables, with the same
builder callbacks and the same contextual lexing (per parser state, only the
terminals that state accepts, in Lark's priority order), but with one regex
match per token, whitespace and comments included, and small tokens.

It only knows the happy path: at the first thing it cannot lex or parse it
gives up (`FastPathUnavailable`) and parser.py runs Lark itself, whose error
reporting and recovery (on_error, the interactive parser) then take over.
tests/unit/test_grammar.py checks that both produce the same trees.
"""

from __future__ import annotations

import re
from typing import Any

from lark import Lark
from lark.parsers.lalr_analysis import Shift


class FastPathUnavailable(Exception):
    """The input needs Lark's full parser (a syntax error, most likely)."""


class Tok:
    """The parts of a Lark `Token` the builder reads."""

    __slots__ = ("type", "value", "line", "column", "end_line", "end_column")

    def __init__(self, type_: str, value: str, line: int, column: int, end_column: int):
        self.type = type_
        self.value = value
        self.line = line
        self.column = column
        self.end_line = line  # no terminal but ignored whitespace spans lines
        self.end_column = end_column

    def __repr__(self) -> str:
        return f"Tok({self.type}, {self.value!r}, {self.line}:{self.column})"


_END = "$END"
_END_GROUP = "end_of_input"


class TableParser:
    def __init__(self, lark: Lark, unused_tokens: frozenset[str] = frozenset()):
        """`unused_tokens`: terminals whose tokens the callbacks never read (None is passed)."""
        lalr = lark.parser.parser.parser  # ParsingFrontend -> LALR_Parser -> _Parser
        table = lalr.parse_table
        callbacks = lalr.callbacks
        self.start_state = table.start_states["start"]
        self.end_state = table.end_states["start"]
        self.unused_tokens = unused_tokens
        self.terminal_callbacks = {
            name: f for name, f in callbacks.items() if isinstance(name, str)
        }
        # Per state: symbol -> the next state (int) for a shift or goto, or
        # (size, callback, goto symbol) for a reduction, so that the loop below
        # never hashes Lark's Rule objects. Symbols become plain str: Lark
        # names rules with Token objects, whose Python-level __eq__ is slow.
        reductions = {}
        self.actions: dict[int, dict[str, Any]] = {}
        for state, actions in table.states.items():
            row = {}
            for symbol, (action, argument) in actions.items():
                if action is Shift:
                    row[str(symbol)] = argument
                else:
                    if argument not in reductions:
                        reductions[argument] = (
                            len(argument.expansion),
                            callbacks[argument],
                            str(argument.origin.name),
                        )
                    row[str(symbol)] = reductions[argument]
            self.actions[state] = row
        self.scanners = self._scanners(lark, table.states)

    def _scanners(self, lark: Lark, states: dict) -> dict[Any, Any]:
        """Per parser state, one regex: skip ignored text, then match an accepted terminal."""
        terminals = {t.name: t for t in lark.terminals}
        ignored = "|".join(
            f"(?:{terminals[name].pattern.to_regexp()})" for name in lark.ignore_tokens
        )
        by_accepted: dict[tuple[frozenset, bool], Any] = {}
        scanners = {}
        for state, actions in states.items():
            # Keyed by the end of input too: two states may accept no terminal,
            # one of them the end of input, the other nothing at all.
            accepted = (frozenset(name for name in actions if name in terminals), _END in actions)
            if accepted not in by_accepted:
                # Lark's own order (lark.lexer.BasicLexer): priority, then longest possible match.
                ordered = sorted(
                    (terminals[name] for name in accepted[0]),
                    key=lambda t: (
                        -t.priority,
                        -t.pattern.max_width,
                        -len(t.pattern.value),
                        t.name,
                    ),
                )
                choices = [f"(?P<{t.name}>{t.pattern.to_regexp()})" for t in ordered]
                if accepted[1]:
                    choices.append(f"(?P<{_END_GROUP}>\\Z)")
                # The ignored text is matched atomically (a lookahead, then a
                # backreference): with a plain `(?:WS|COMMENT)*`, a failing
                # token after many blanks would backtrack through every way of
                # splitting them, exponentially.
                pattern = f"(?=((?:{ignored})*))\\1(?:{'|'.join(choices)})" if choices else "(?!)"
                by_accepted[accepted] = re.compile(pattern).match
            scanners[state] = by_accepted[accepted]
        return scanners

    def parse(self, text: str) -> Any:
        actions = self.actions
        scanners = self.scanners
        terminal_callbacks = self.terminal_callbacks
        unused_tokens = self.unused_tokens
        state_stack = [self.start_state]
        value_stack: list = []
        count_newlines = text.count
        last_newline = text.rfind

        position = 0
        line = 1
        line_start = 0
        while True:
            match = scanners[state_stack[-1]](text, position)
            if match is None:
                raise FastPathUnavailable
            kind = match.lastgroup
            start = match.end(1)
            if start != position and count_newlines("\n", position, start):
                line += count_newlines("\n", position, start)
                line_start = last_newline("\n", position, start) + 1
            position = match.end()
            if kind is None or kind == _END_GROUP:
                # Only \Z matches empty, and for an empty group sre may leave lastgroup unset.
                if position != len(text):
                    raise FastPathUnavailable
                return self._finish(state_stack, value_stack)
            if kind in unused_tokens:
                value = None
            else:
                value = Tok(
                    kind,
                    text[start:position],
                    line,
                    start - line_start + 1,
                    position - line_start + 1,
                )
                callback = terminal_callbacks.get(kind)
                if callback is not None:
                    value = callback(value)

            while True:
                entry = actions[state_stack[-1]].get(kind)
                if entry is None:
                    raise FastPathUnavailable
                if entry.__class__ is int:
                    state_stack.append(entry)
                    value_stack.append(value)
                    break
                size, callback, origin = entry
                if size:
                    children = value_stack[-size:]
                    del state_stack[-size:]
                    del value_stack[-size:]
                else:
                    children = []
                reduced = callback(children)
                state_stack.append(actions[state_stack[-1]][origin])
                value_stack.append(reduced)

    def _finish(self, state_stack: list, value_stack: list) -> Any:
        """Feed $END: reduce until the start rule is complete.

        The reduce step is written out here as in the main loop rather than
        shared: this is the hottest loop of a 100,000-rule parse, where a Python
        call per reduction would add over a million calls."""
        actions = self.actions
        while True:
            entry = actions[state_stack[-1]].get(_END)
            if entry is None or entry.__class__ is int:
                raise FastPathUnavailable
            size, callback, origin = entry
            if size:
                children = value_stack[-size:]
                del state_stack[-size:]
                del value_stack[-size:]
            else:
                children = []
            reduced = callback(children)
            state_stack.append(actions[state_stack[-1]][origin])
            value_stack.append(reduced)
            if state_stack[-1] == self.end_state:
                return reduced
