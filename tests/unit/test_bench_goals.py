"""bench/goals.py: the size spread of issue 8 is a median of per-round ratios."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import goals  # noqa: E402

KINDS = ("tcp_direct", "tcp_vip", "udp_one")


def _cost(low_rounds, high_rounds) -> dict:
    def config(rounds):
        figure = {
            "ns_per_operation_rounds": rounds,
            "ns_per_operation": sorted(rounds)[len(rounds) // 2],
            "over_bare_ns_per_operation": 0,
            "programs": {},
        }
        return {"kinds": {kind: dict(figure) for kind in KINDS}}

    return {
        "settings": {"sizes": [10, 100_000]},
        "configs": {"10/denied": config(low_rounds), "100000/denied": config(high_rounds)},
    }


def _spread(cost: dict) -> dict:
    checks = goals.evaluate({"cost": cost})
    (check,) = [c for c in checks if c["target"].startswith("every figure")]
    return check


def test_the_ratio_pairs_figures_of_one_round():
    # A busy spell began in round 2 after the small policy was measured: the medians
    # alone (1,000 / 500) would say the big policy costs twice as much.
    check = _spread(_cost([500, 500, 1000], [550, 1000, 1000]))
    assert check["value"] == 1.1 and check["met"], check


def test_a_difference_in_every_round_is_not_met():
    check = _spread(_cost([600, 610, 620], [720, 730, 760]))
    assert 1.19 < check["value"] < 1.21 and not check["met"], check
