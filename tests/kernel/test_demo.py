"""`make demo` runs from start to end, as a user runs it, and says what it should."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ebmesh.runtime.cgroups import cgroup2_mount

pytestmark = pytest.mark.kernel

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.py"


def test_the_demo_shows_verdicts_balancing_and_mtls_and_leaves_nothing():
    run = subprocess.run([sys.executable, str(DEMO)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()

    def line(start: str) -> str:
        found = [text for text in lines if text.strip().startswith(start)]
        assert found, (start, run.stdout)
        return found[0]

    assert "connected" in line("frontend -> api       8080/tcp")
    assert "EPERM" in line("frontend -> db        5432/tcp")
    assert "400 of 400 connected (0 failed)" in run.stdout
    assert "getpeername() = 127.0.96.10:80" in run.stdout
    assert "authenticated at attach (TLS 1.3, SVIDs): api -> db" in run.stdout
    assert "connected" not in line("outsider from api's address")
    mtls = run.stdout[run.stdout.index("== mTLS") :]
    assert "EPERM" in mtls and "[mtls: the pair is not authenticated]" in mtls
    assert mtls.rstrip().count("connected in") >= 2  # before revoke, and after renew
    assert "== cleaned up" in run.stdout
    assert list(cgroup2_mount().glob("ebmesh-demo-*")) == []  # its cgroups are gone
