"""The compiled grammar: one Lark LALR parser per process, built on first use."""

from __future__ import annotations

import threading
from functools import cache

from lark import Lark

from ebmesh.language.builder import AstBuilder
from ebmesh.language.skipping import Skipper
from ebmesh.resources import grammar_path

# Every keyword, by terminal name. A keyword is never a name.
KEYWORDS: dict[str, str] = {
    "MESH": "mesh",
    "WORKLOAD": "workload",
    "SERVICE": "service",
    "BACKEND": "backend",
    "WEIGHT": "weight",
    "CGROUP": "cgroup",
    "ADDRESS": "address",
    "IDENTITY": "identity",
    "MTLS": "mtls",
    "REQUIRED": "required",
    "ALLOW": "allow",
    "DENY": "deny",
    "ANY": "any",
    "EXCEPT": "except",
    "PORT": "port",
    "AUDIT": "audit",
    "TRUST_DOMAIN": "trust_domain",
    "DEFAULT": "default",
    "MODE": "mode",
    "ACCELERATE": "accelerate",
}

PUNCTUATION: dict[str, str] = {
    "ARROW": "->",
    "SLASH": "/",
    "LBRACE": "{",
    "RBRACE": "}",
    "LSQB": "[",
    "RSQB": "]",
    "COMMA": ",",
    "COLON": ":",
}


class Grammar:
    """The Lark parser, the builder it calls at each reduction, and the skipper of error recovery.

    The builder collects per-parse problems, so one parse at a time may use
    it: hold `lock` from reset to result.
    """

    def __init__(self):
        self.builder = AstBuilder()
        self.lock = threading.Lock()
        self.lark = Lark(
            grammar_path().read_text(),
            parser="lalr",
            lexer="contextual",
            keep_all_tokens=True,
            maybe_placeholders=False,
            transformer=self.builder,
        )
        self.skipper = Skipper(self.lark)


@cache
def grammar() -> Grammar:
    return Grammar()
