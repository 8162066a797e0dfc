"""Did-you-mean suggestions for misspelled names, keywords and values."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate `word` most likely misspells, or None if none is close."""
    options = list(dict.fromkeys(candidates))
    for option in options:
        if option.lower() == word.lower():
            return option
    matches = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if not matches:
        matches = difflib.get_close_matches(word.lower(), options, n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """`did you mean 'x'?`, or None."""
    match = closest(word, candidates)
    return f"did you mean '{match}'?" if match is not None else None


def quoted_list(words: Iterable[str], conjunction: str = "or") -> str:
    """'a', 'b' or 'c'."""
    items = [f"'{w}'" for w in words]
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {conjunction} {items[-1]}"
