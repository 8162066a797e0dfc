"""No input makes `check` take more than 2 s per MB: error recovery does bounded work.

Before, a valid mesh followed by a megabyte of `}` took 71 s: each `}` was
lexed and tried as a place to resume. Each case here prints its time; the
bound asserted is the goal, 2 s per MB (the recovery cases take a tenth of
it, the large valid policy about half). Time is this process's CPU time, so
that other work on the machine does not count against it.
"""

from __future__ import annotations

import random
import time

import pytest
from test_fuzz import TOKENS
from test_performance import generated_policy

from ebmesh.errors import PolicyError
from ebmesh.language import load
from ebmesh.language.syntax_errors import MAX_SYNTAX_ERRORS

MB = 1_000_000
GOAL_SECONDS_PER_MB = 2.0
VALID = 'mesh m {\n    workload a { cgroup "a" }\n    allow a -> a\n}\n'


def token_soup(size: int, seed: int) -> str:
    rnd = random.Random(seed)
    out: list[str] = []
    length = 0
    while length < size:
        out.append(rnd.choice(TOKENS))
        length += len(out[-1]) + 1
    return " ".join(out)


def random_bytes(size: int, seed: int) -> str:
    return random.Random(seed).randbytes(size).decode("latin-1")


def with_error_at_the_end() -> str:
    text = generated_policy()
    return text[: text.rindex("}")] + "    allow w1 ->\n}\n"


CASES = {
    "a valid mesh, then 1 MB of '}'": lambda: VALID + "}" * MB,
    "1 MB of token soup": lambda: token_soup(MB, seed=1),
    "1 MB of token soup in a mesh": lambda: f"mesh m {{\n{token_soup(MB, seed=2)}\n}}\n",
    "1 MB of random bytes": lambda: random_bytes(MB, seed=3),
    "1 MB of random bytes in a mesh": lambda: f"mesh m {{\n{random_bytes(MB, seed=4)}\n}}\n",
    "1 MB of 'allow' in a mesh": lambda: "mesh m {\n" + "allow " * (MB // 6) + "}\n",
    "4 MB valid policy, one error at the end": with_error_at_the_end,
}


@pytest.mark.parametrize("make", CASES.values(), ids=CASES.keys())
def test_check_stays_under_2_seconds_per_megabyte(make, capsys):
    text = make()
    megabytes = len(text) / MB
    started = time.process_time()
    with pytest.raises(PolicyError) as raised:
        load(text)
    seconds = time.process_time() - started
    with capsys.disabled():
        print(f"\n  {megabytes:.1f} MB: {seconds:.2f} s ({seconds / megabytes:.2f} s per MB)")
    assert 1 <= len(raised.value.diagnostics) <= MAX_SYNTAX_ERRORS + 1
    assert seconds < GOAL_SECONDS_PER_MB * megabytes


def test_the_last_diagnostic_says_the_parse_stopped():
    with pytest.raises(PolicyError) as raised:
        load("mesh m {\n" + "allow a b\n" * 100 + "}\n")
    diagnostics = raised.value.diagnostics
    assert len(diagnostics) == MAX_SYNTAX_ERRORS + 1
    assert [d.message for d in diagnostics[:-1]] == ["expected '->' after the source"] * 20
    assert diagnostics[-1].message == "too many errors; stopping"
    assert diagnostics[-1].location.line == MAX_SYNTAX_ERRORS + 2  # the next error's line


def test_malformed_literals_count_towards_the_limit():
    with pytest.raises(PolicyError) as raised:
        load("mesh m {\n" + "allow a -> 10.0.0.300\n" * 100 + "}\n")
    diagnostics = raised.value.diagnostics
    assert len(diagnostics) == MAX_SYNTAX_ERRORS + 1
    assert diagnostics[-1].message == "too many errors; stopping"


def test_many_semantic_errors_on_one_long_line_stay_under_the_goal(capsys):
    """Each diagnostic shows a window of its line: 100,000 of them on one 1 MB line."""
    text = "mesh m { allow any -> 10.0.0.0/8 except " + "10.0.0.0/8, " * (MB // 12) + "10.0.0.0/8 }"
    megabytes = len(text) / MB
    started = time.process_time()
    with pytest.raises(PolicyError) as raised:
        load(text)
    rendered = str(raised.value)
    seconds = time.process_time() - started
    with capsys.disabled():
        print(f"\n  {megabytes:.1f} MB, {len(raised.value.diagnostics):,} errors: {seconds:.2f} s")
    assert len(raised.value.diagnostics) > 80_000 and len(rendered) < 400 * 100
    assert rendered.endswith(
        f"more (PolicyError.diagnostics has them all)\n{len(raised.value.diagnostics)} errors"
    )
    assert seconds < GOAL_SECONDS_PER_MB * megabytes
