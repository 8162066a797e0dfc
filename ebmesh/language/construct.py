"""Building AST nodes from values the parser has already made right.

Pydantic validation costs a few microseconds per node, which a 100,000-rule
policy pays a million times. `constructor(cls)` returns a function that does
what `cls.model_construct(**values)` does when every field is given (the
builder always gives every field, in declaration order), without its per-field
bookkeeping. tests/unit/test_grammar.py re-validates built trees to keep this
honest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel

Model = TypeVar("Model", bound=BaseModel)

_new = object.__new__
_set = object.__setattr__


def constructor(cls: type[Model]) -> Callable[[dict[str, Any]], Model]:
    # Every node has every field set, so all instances can share one set;
    # pydantic copies it before changing it (model_copy).
    every_field = set(cls.model_fields)

    def construct(values: dict[str, Any]) -> Model:
        node = _new(cls)
        _set(node, "__dict__", values)
        _set(node, "__pydantic_fields_set__", every_field)
        _set(node, "__pydantic_extra__", None)
        _set(node, "__pydantic_private__", None)
        return node

    construct.__name__ = f"construct_{cls.__name__}"
    return construct
