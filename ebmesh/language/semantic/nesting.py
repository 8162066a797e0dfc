"""Rule prefixes may nest only so deep around one address: the datapath walks them all.

Counted as the datapath will see them: per side of the rules, the distinct
prefixes left once each CIDR's `except`s are cut out (ebmesh.ir.prefixes),
and for each, how many of them contain it.
"""

from __future__ import annotations

from ebmesh.datapath.limits import MAX_PREFIX_NESTING
from ebmesh.ir.prefixes import Prefix, nesting_depths, prefix_of, subtract_prefixes
from ebmesh.language.ast import AddressPeer, Rule
from ebmesh.language.semantic.report import Report

Written = tuple[Prefix, tuple[Prefix, ...]]  # a CIDR and its excepts


class PrefixNesting:
    """Fed every address peer of every rule (by the rule checks' walk), then checked once."""

    def __init__(self):
        # Per side: each distinct CIDR-with-excepts and the first rule that wrote it,
        # and the (family, length) pairs of the pieces they leave.
        self._first_rule: dict[str, dict[Written, Rule]] = {"source": {}, "destination": {}}
        self._lengths: dict[str, set[tuple[int, int]]] = {"source": set(), "destination": set()}
        self._pieces: dict[Written, list[Prefix]] = {}

    def add(self, side: str, peer: AddressPeer, rule: Rule) -> None:
        written = _written(peer)
        first_rule = self._first_rule[side]
        if written in first_rule:
            return
        first_rule[written] = rule
        pieces = self._pieces.get(written)
        if pieces is None:
            pieces = self._pieces[written] = subtract_prefixes(written[0], list(written[1]))
        self._lengths[side].update((family, length) for family, length, _ in pieces)

    def check(self, report: Report) -> None:
        for side, first_rule in self._first_rule.items():
            # Prefixes that nest have distinct lengths: with few lengths there is nothing to count.
            per_family = [sum(1 for f, _ in self._lengths[side] if f == v) for v in (4, 6)]
            if max(per_family) <= MAX_PREFIX_NESTING:
                continue
            rule_of: dict[Prefix, Rule] = {}
            for written, rule in first_rule.items():  # in rule order: the first writer wins
                for prefix in self._pieces[written]:
                    rule_of.setdefault(prefix, rule)
            for prefix, depth in nesting_depths(rule_of):
                if depth > MAX_PREFIX_NESTING:
                    report.error(
                        rule_of[prefix].span,
                        f"cannot be enforced as written: {depth} {side} prefixes nest around "
                        f"one address (the datapath walks at most {MAX_PREFIX_NESTING})",
                        hint="merge or drop some of the nested CIDRs",
                    )
                    break


def _written(peer: AddressPeer) -> tuple[Prefix, tuple[Prefix, ...]]:
    return prefix_of(peer.cidr.network), tuple(prefix_of(e.network) for e in peer.excepts)
