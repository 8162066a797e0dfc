"""Words for syntax errors: what the parser expected, what it found, and hints.

Everything here reads the parser's state (the terminals it would accept and
the values on its stack) and returns text; nothing changes the parse.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ebmesh.language.ast import Cidr, Name, NamedPeer, StringLiteral
from ebmesh.language.builder import PeerGroup
from ebmesh.language.grammar import KEYWORDS, PUNCTUATION
from ebmesh.language.suggest import closest

STATEMENT_STARTS = frozenset(
    {"TRUST_DOMAIN", "DEFAULT", "MODE", "ACCELERATE", "WORKLOAD", "SERVICE", "ALLOW", "DENY"}
)
PEER_STARTS = frozenset({"NAME", "ANY", "CIDR", "LSQB"})
LIST_ITEM_STARTS = frozenset({"NAME", "ANY", "CIDR"})
WORKLOAD_STATEMENTS = frozenset({"CGROUP", "ADDRESS", "IDENTITY", "MTLS"})
END = "$END"

_TERMINAL_WORDS = {
    "NAME": "a name",
    "CIDR": "an address",
    "NUMBER": "a number",
    "PORT_RANGE": "a port",
    "STRING": "a quoted string",
    END: "the end of the file",
    "MTLS": "'mtls'",
}


def terminal_words(name: str) -> str:
    """How to name a terminal in a message: 'allow', a name, '{' ..."""
    if name in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[name]
    if name in KEYWORDS:
        return f"'{KEYWORDS[name]}'"
    if name in PUNCTUATION:
        return f"'{PUNCTUATION[name]}'"
    return name.lower()


def found_words(token: Any) -> str:
    """How to name the token the parser did not expect."""
    kind, text = token.type, str(token.value)
    if kind == END:
        return "end of file"
    if kind == "NAME":
        return f"name '{text}'"
    if kind == "CIDR":
        return f"address '{text}'"
    if kind == "STRING":
        return f"string {text}"
    return f"'{text}'"


def previous_words(value: Any) -> str | None:
    """The last thing parsed, as the user wrote it, if it reads well in 'after X'."""
    if isinstance(value, (Name, StringLiteral)):
        return f"'{value.value}'"
    if isinstance(value, Cidr):
        return f"'{value.text}'"
    if hasattr(value, "type") and hasattr(value, "value"):
        return f"'{value.value}'"
    return None


def _after(previous: str | None) -> str:
    return f" after {previous}" if previous else ""


def expectation(expected: frozenset[str], top: Any) -> str:
    """What the parser wanted at this point, in words ("'->' after the source")."""
    previous = previous_words(top)
    kind = getattr(top, "type", None)
    if "ARROW" in expected:
        return "'->' after the source"
    if PEER_STARTS <= expected:
        if kind in ("ALLOW", "DENY"):
            return f"a source after '{top.value}': a name, 'any', an address or a [list]"
        return "a destination after '->': a name, 'any', an address or a [list]"
    if LIST_ITEM_STARTS <= expected:
        return "a name, 'any' or an address in the list"
    if "RSQB" in expected:
        return "',' or ']' in the list"
    if expected == {"STRING"}:
        return f"a quoted string{_after(previous)}"
    if expected == {"CIDR"}:
        return f"an address or CIDR{_after(previous)}"
    if expected == {"CIDR", "LSQB"}:
        return f"an address{_after(previous)}, e.g. 10.96.0.10:80 or [fd00::1]:80"
    if "COLON" in expected:
        return "':' and a port after the address"
    if expected == {"NUMBER"}:
        return f"a number{_after(previous)}"
    if "PORT_RANGE" in expected:
        return f"a port or port range{_after(previous)}, e.g. 443, 1-1023/tcp"
    if expected == {"REQUIRED"}:
        return "'required' after 'mtls'"
    if expected == {"LBRACE"}:
        return f"'{{'{_after(previous)}"
    if expected == {"SLASH", "LBRACE"}:
        return "'/tcp', '/udp' or '{' after the service port"
    if expected == {"NAME"}:
        return f"a name{_after(previous)}"
    if {"NAME", "NUMBER"} <= expected:
        return f"a value{_after(previous)}"
    if expected == {"MESH"}:
        return "'mesh NAME { ... }'"
    if expected == {END}:
        return "nothing after the mesh's closing '}'"
    if STATEMENT_STARTS <= expected:
        return _statement_expectation(expected)
    if WORKLOAD_STATEMENTS <= expected:
        return "'cgroup', 'address', 'identity', 'mtls required' or '}' in the workload"
    if "BACKEND" in expected:
        extra = "'weight', " if "WEIGHT" in expected else ""
        return f"{extra}'backend' or '}}' in the service"
    return _listing(terminal_words(name) for name in sorted(expected))


def _statement_expectation(expected: frozenset[str]) -> str:
    words = [
        terminal_words(t) for t in ("COMMA", "EXCEPT", "PORT", "MTLS", "AUDIT") if t in expected
    ]
    if words:
        words.append("a new statement")
    else:
        words = ["a setting", "'workload'", "'service'", "'allow'", "'deny'"]
    if "RBRACE" in expected:
        words.append("'}'")
    return _listing(words)


def _listing(words: Iterable[str]) -> str:
    items = list(words)
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} or {items[-1]}"


def keyword_suggestion(token: Any, expected: frozenset[str]) -> str | None:
    """`did you mean 'allow'?` for a name that misspells a keyword expected here."""
    if token.type != "NAME":
        return None
    keywords = [KEYWORDS[name] for name in sorted(expected) if name in KEYWORDS]
    match = closest(str(token.value), keywords)
    return f"did you mean '{match}'?" if match is not None else None


def list_hint(top: Any, token: Any, side: str) -> str | None:
    """For `allow a, b -> c` or `allow a -> b c`: how to write several peers."""
    first_text = _peer_text(top)
    if first_text is None or token.type not in ("NAME", "CIDR", "COMMA"):
        return None
    second = "..." if token.type == "COMMA" else str(token.value)
    return f"to give several {side}, write a list: [{first_text}, {second}]"


def _peer_text(value: Any) -> str | None:
    """A lone peer as written, whether the parser has reduced it yet or not."""
    if isinstance(value, PeerGroup):
        if len(value.peers) != 1:
            return None
        value = value.peers[0]
        if isinstance(value, NamedPeer):
            value = value.name
        elif getattr(value, "kind", None) == "address" and not value.excepts:
            value = value.cidr
    if isinstance(value, Name):
        return value.value
    if isinstance(value, Cidr):
        return value.text
    return None


def open_block(value_stack: list) -> tuple[str, str] | None:
    """The innermost construct still open, and what closes it: ('}', "workload 'api' (line 12)").

    A block whose '}' is on the stack is closed, even if the parser has not
    reduced it yet (it waits for the next token to do so).
    """
    closers = 0
    for index in range(len(value_stack) - 1, -1, -1):
        kind = getattr(value_stack[index], "type", None)
        if kind in ("RBRACE", "RSQB"):
            closers += 1
        elif kind in ("LBRACE", "LSQB") and closers:
            closers -= 1
        elif kind == "LSQB":
            return "]", f"the list opened on line {value_stack[index].line}"
        elif kind == "LBRACE":
            owner = _block_owner(value_stack[:index])
            return ("}", owner) if owner else None
    return None


def _block_owner(before: list) -> str | None:
    for index in range(len(before) - 1, -1, -1):
        keyword = before[index]
        if getattr(keyword, "type", None) in ("MESH", "WORKLOAD", "SERVICE"):
            name = before[index + 1] if index + 1 < len(before) else None
            if isinstance(name, Name):
                return f"{keyword.value} '{name.value}' (line {keyword.line})"
            return None
    return None
