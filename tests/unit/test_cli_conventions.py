"""The CLI's conventions as a kubectl or cilium user expects them: `--version` and
`version`, `-o json` parsed with json.loads, shell completion driven through a
real bash, colour only on a real pseudo-terminal (and never with NO_COLOR or
--no-color), -q and -v, "did you mean", progress on a terminal only.

Commands run as separate processes (tests/unit/test_cli.py's run_ebmesh); the
terminal ones run under a pseudo-terminal made with os.forkpty.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.unit.test_cli import REPO, SHOP, line_of, run_ebmesh

ANSI = re.compile(r"\x1b\[[0-9;]*m")
ANY_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def in_a_terminal(
    *arguments, env: dict | None = None, timeout: float = 180, interrupt_after: str | None = None
) -> tuple[int, str]:
    """`ebmesh ARGS...` with stdin, stdout and stderr on a fresh pseudo-terminal:
    (exit status, everything it wrote there, CRLF as the terminal made it).
    `interrupt_after`: SIGINT it once its output holds this text (for `apply`)."""
    environment = {**os.environ, "TERM": "xterm-256color", **(env or {})}
    environment.pop("NO_COLOR", None) if "NO_COLOR" not in (env or {}) else None
    environment.pop("FORCE_COLOR", None)
    command = [sys.executable, "-m", "ebmesh", *map(str, arguments)]
    pid, master = os.forkpty()
    if pid == 0:  # the child: its controlling terminal is the pty's slave
        try:
            os.chdir(REPO)
            os.execve(command[0], command, environment)
        finally:
            os._exit(127)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its side
                break
            if not chunk:
                break
            output += chunk
            if interrupt_after and interrupt_after.encode() in output:
                os.kill(pid, signal.SIGINT)
                interrupt_after = None
        else:
            os.kill(pid, 9)
            pytest.fail(f"ebmesh {arguments} did not end within {timeout}s: {output!r}")
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(master)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


# ---- version -----------------------------------------------------------------


def test_dash_dash_version_is_the_package_version():
    import ebmesh

    result = run_ebmesh("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"ebmesh {ebmesh.__version__}\n"


def test_version_tells_kernel_clang_and_libbpf():
    from ebmesh.loader.libbpf import libbpf_version

    result = run_ebmesh("version", "-o", "json")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["kind"] == "version"
    assert found["kernel"] == os.uname().release
    clang = subprocess.run(["clang", "--version"], capture_output=True, text=True).stdout
    major_minor = re.search(r"clang version (\d+\.\d+)", clang).group(1)
    assert found["clang"]["version"] == major_minor
    assert found["clang"]["path"] == shutil.which("clang")
    major, minor = libbpf_version()
    assert found["libbpf"] == {"version": f"{major}.{minor}", "library": "libbpf.so.1"}
    assert major >= 1  # ebmesh binds the 1.x API

    text = run_ebmesh("version")
    assert text.returncode == 0
    assert text.stdout.splitlines() == [
        f"ebmesh  {found['ebmesh']}",
        f"kernel  {found['kernel']}",
        f"clang   {major_minor} ({found['clang']['path']})",
        f"libbpf  {major}.{minor} (libbpf.so.1)",
    ]


def test_version_says_what_is_missing_instead_of_failing():
    result = run_ebmesh(
        "version", "-o", "json", env={**os.environ, "EBMESH_CLANG": "/nonexistent/clang"}
    )
    assert result.returncode == 0, result.stderr
    clang = json.loads(result.stdout)["clang"]
    assert clang["version"] is None and "EBMESH_CLANG" in clang["problem"]
    text = run_ebmesh("version", env={**os.environ, "EBMESH_CLANG": "/nonexistent/clang"})
    assert "clang   missing: EBMESH_CLANG='/nonexistent/clang' is not an executable" in text.stdout


# ---- -o: the format, everywhere ------------------------------------------------


def test_compile_dash_o_a_file_says_where_the_object_goes(tmp_path):
    result = run_ebmesh("compile", SHOP, "-o", tmp_path / "p.o")
    assert result.returncode == 2, result
    assert result.stderr.startswith("usage: ebmesh compile")
    assert "-o/--output is the output format (text or json), not the object file" in result.stderr
    assert f"write the object with --object {tmp_path / 'p.o'}" in result.stderr
    assert not (tmp_path / "p.o").exists()


@pytest.mark.parametrize("command", ["check", "explain", "status", "version"])
def test_dash_o_takes_only_text_or_json(command):
    extra = {"explain": ["--from", "a", "--to", "b"], "check": [SHOP]}.get(command, [])
    result = run_ebmesh(command, *extra, "-o", "yaml")
    assert result.returncode == 2
    assert "-o/--output is the output format, text or json, not 'yaml'" in result.stderr


def test_check_json():
    result = run_ebmesh("check", SHOP, "-o", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "kind": "check",
        "file": str(SHOP),
        "ok": True,
        "mesh": "shop",
        "workloads": ["frontend", "api", "db"],
        "services": ["api-svc"],
        "rules": 7,
        "errors": [],
    }


def test_check_json_of_a_broken_policy_lists_every_error(tmp_path):
    from tests.unit.test_cli import BROKEN

    policy = tmp_path / "broken.mesh"
    policy.write_text(BROKEN)
    result = run_ebmesh("check", policy, "-o", "json")
    assert result.returncode == 1
    found = json.loads(result.stdout)
    assert found["kind"] == "check" and found["ok"] is False
    first = found["errors"][0]
    assert first["file"] == str(policy) and (first["line"], first["column"]) == (3, 11)
    assert first["message"].startswith("unknown name 'frontnd'")
    assert any(e["line"] == 4 and "99999" in e["message"] for e in found["errors"])
    assert f"{policy}:3:11: unknown name 'frontnd'" in result.stderr  # still told on stderr


def test_compile_json_with_inspect(tmp_path):
    output = tmp_path / "shop.o"
    result = run_ebmesh("compile", SHOP, "--object", output, "--inspect", "-o", "json")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["kind"] == "compile" and found["file"] == str(SHOP)
    assert found["object"] == str(output) and found["size"] == output.stat().st_size
    assert set(found["timings"]) == {"parse_and_check", "ir", "tables", "clang", "encode"}
    assert all(isinstance(s, float) and s >= 0 for s in found["timings"].values())
    programs = {p["name"]: p for p in found["inspect"]["programs"]}
    connect4 = programs["ebmesh_connect4"]
    assert connect4["section"] == "cgroup/connect4"
    assert connect4["attach_type"] == "cgroup_inet4_connect"
    assert connect4["instructions"] > 0 and "cgroup_index" in connect4["maps"]
    maps = {m["name"]: m for m in found["inspect"]["maps"]}
    assert maps["verdict_events"]["type"] == "ringbuf"
    assert found["inspect"]["license"] == "Dual BSD/GPL"


def test_compile_json_refuses_c_on_stdout(tmp_path):
    result = run_ebmesh("compile", SHOP, "--object", tmp_path / "x.o", "--emit-c", "-o", "json")
    assert result.returncode == 2
    assert "give --emit-c a directory" in result.stderr
    assert not (tmp_path / "x.o").exists()


def test_ca_show_and_init_json(tmp_path):
    directory = tmp_path / "shop"
    created = run_ebmesh("ca", "init", directory, "-o", "json")
    assert created.returncode == 0, created.stderr
    init = json.loads(created.stdout)
    assert init["kind"] == "ca_init" and init["trust_domain"] == "shop"
    assert init["spiffe_id"] == "spiffe://shop" and init["bundle_cas"] == 1
    assert init["issuer"]["role"] == "issuer" and init["issuer"]["status"] == "valid"
    shown = run_ebmesh("ca", "show", directory, "-o", "json")
    assert shown.returncode == 0, shown.stderr
    inventory = json.loads(shown.stdout)
    assert inventory["kind"] == "ca" and inventory["directory"] == str(directory)
    roles = [c["role"] for c in inventory["certificates"]]
    assert roles == ["trusted", "issuer"] and inventory["has_issuer"] is True
    assert inventory["certificates"][1]["fingerprint"] == init["issuer"]["fingerprint"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", init["issuer"]["not_after"])


# ---- did you mean ----------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments, suggestion",
    [
        (["chek", "x.mesh"], "unknown command 'chek': did you mean 'check'?"),
        (["-q", "aply", "x.mesh"], "unknown command 'aply': did you mean 'apply'?"),
        (["staus"], "unknown command 'staus': did you mean 'status'?"),
        (["ca", "shwo", "DIR"], "unknown command 'shwo': did you mean 'show'?"),
    ],
)
def test_a_mistyped_command_gets_a_suggestion(arguments, suggestion):
    result = run_ebmesh(*arguments)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: ebmesh")
    assert result.stderr.rstrip().endswith(suggestion), result.stderr


def test_a_word_like_no_command_gets_no_suggestion():
    result = run_ebmesh("frobnicate")
    assert result.returncode == 2
    assert "did you mean" not in result.stderr and "invalid choice: 'frobnicate'" in result.stderr


# ---- completion ----------------------------------------------------------------

DRIVE = r"""
source <({ebmesh} completion bash) || exit 3
complete -p ebmesh || exit 4
function=$(complete -p ebmesh | sed -E 's/.* -F ([^ ]+) .*/\1/')
drive() {{
    COMP_WORDS=("$@"); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))
    COMP_LINE="$*"; COMP_POINT=${{#COMP_LINE}}; COMPREPLY=()
    "$function" ebmesh "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
    echo "$*=>${{COMPREPLY[*]}}"
}}
drive ebmesh ch
drive ebmesh c
drive ebmesh check -o ''
drive ebmesh ca s
drive ebmesh apply p.mesh --ev
drive ebmesh completion ''
"""


def test_bash_completion_offers_commands_flags_and_choices():
    ebmesh = f"{sys.executable} -m ebmesh"
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", DRIVE.format(ebmesh=ebmesh)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(r"complete .*-F _shtab_ebmesh ebmesh", lines[0]), lines[0]
    offered = dict(line.split("=>") for line in lines[1:])
    assert offered["ebmesh ch"].split() == ["check"]
    assert set(offered["ebmesh c"].split()) == {"check", "compile", "ca", "completion"}
    assert offered["ebmesh check -o "].split() == ["text", "json"]
    assert offered["ebmesh ca s"].split() == ["show"]
    assert offered["ebmesh apply p.mesh --ev"].split() == ["--events"]
    assert offered["ebmesh completion "].split() == ["bash", "zsh"]


def test_zsh_completion_is_a_compdef_of_every_command():
    """zsh is not installed here: the script's shape is checked instead."""
    result = run_ebmesh("completion", "zsh")
    assert result.returncode == 0, result.stderr
    script = result.stdout
    assert script.startswith("#compdef ebmesh\n")
    for command in ("check", "compile", "apply", "explain", "status", "detach", "ca", "version"):
        assert re.search(rf"^\s+{command}:'", script, re.M), command
    assert "_shtab_ebmesh_check_options" in script and "(text json)" in script
    if shutil.which("zsh"):  # where there is one, it must at least parse
        parsed = subprocess.run(["zsh", "-n"], input=script, capture_output=True, text=True)
        assert parsed.returncode == 0, parsed.stderr


def test_completion_wants_a_known_shell():
    result = run_ebmesh("completion", "fish")
    assert result.returncode == 2 and "invalid choice: 'fish'" in result.stderr


# ---- colour: only on a terminal ------------------------------------------------


def test_colour_on_a_terminal_only():
    status, output = in_a_terminal("check", SHOP)
    assert status == 0, output
    assert ANSI.search(output), output
    assert (
        ANSI.sub("", output).strip() == f"{SHOP}: ok (mesh shop: 3 workloads, 1 service, 7 rules)"
    )
    piped = run_ebmesh("check", SHOP)
    assert piped.stdout == f"{SHOP}: ok (mesh shop: 3 workloads, 1 service, 7 rules)\n"
    assert "\x1b" not in piped.stdout + piped.stderr


@pytest.mark.parametrize(
    "how", [{"env": {"NO_COLOR": "1"}}, {"env": {"NO_COLOR": "yes"}}, {"flag": "--no-color"}]
)
def test_no_color_and_dash_dash_no_color_turn_it_off(how):
    arguments = ["check", SHOP, *([how["flag"]] if "flag" in how else [])]
    status, output = in_a_terminal(*arguments, env=how.get("env"))
    assert status == 0, output
    assert "\x1b" not in output, output
    assert f"{SHOP}: ok (mesh shop" in output


def test_an_empty_no_color_leaves_colour_on():
    """no-color.org: set *and not empty*."""
    status, output = in_a_terminal("check", SHOP, env={"NO_COLOR": ""})
    assert status == 0 and ANSI.search(output), output


# ---- -q and -v -------------------------------------------------------------------


def test_quiet_drops_informational_lines_and_keeps_errors(tmp_path):
    output = tmp_path / "shop.o"
    loud = run_ebmesh("compile", SHOP, "--object", output, "--emit-c", tmp_path / "c")
    assert "compiled to" in loud.stderr and "wrote " in loud.stderr
    for spelling in (["-q", "compile"], ["compile", "--quiet"]):
        quiet = run_ebmesh(*spelling, SHOP, "--object", output, "--emit-c", tmp_path / "c")
        assert quiet.returncode == 0, quiet.stderr
        assert quiet.stderr == "" and quiet.stdout == ""
        assert output.read_bytes()[:4] == b"\x7fELF"
    from tests.unit.test_cli import BROKEN

    broken = tmp_path / "broken.mesh"
    broken.write_text(BROKEN)
    failed = run_ebmesh("-q", "compile", broken, "--object", tmp_path / "b.o")
    assert failed.returncode == 1 and "unknown name 'frontnd'" in failed.stderr
    missing = run_ebmesh("-q", "check", tmp_path / "none.mesh")
    assert missing.returncode == 2 and "no policy file at" in missing.stderr


def test_verbose_tells_each_phase_its_time(tmp_path):
    result = run_ebmesh("compile", SHOP, "--object", tmp_path / "shop.o", "-v")
    assert result.returncode == 0, result.stderr
    timings = dict(re.findall(r"^  (\w+): (\d+\.\d) ms$", result.stderr, re.M))
    assert list(timings) == ["parse_and_check", "ir", "tables", "clang", "encode"]
    quiet = run_ebmesh("compile", SHOP, "--object", tmp_path / "shop.o")
    assert " ms" not in quiet.stderr


def test_quiet_and_verbose_together_is_a_usage_error():
    result = run_ebmesh("-q", "-v", "check", SHOP)
    assert result.returncode == 2 and "not allowed with argument" in result.stderr


# ---- progress -----------------------------------------------------------------------


def many_rules(count: int) -> str:
    rules = "\n".join(
        f"    allow a -> 10.{i // 250 % 250}.{i % 250}.0/24 port {1000 + i % 5000}/tcp"
        for i in range(count)
    )
    return f'mesh big {{\n    workload a {{ cgroup "a" }}\n{rules}\n}}\n'


@pytest.fixture
def slow_policy(tmp_path):
    """A policy big enough, and an empty object cache, that a compile takes over a second."""
    policy = tmp_path / "big.mesh"
    policy.write_text(many_rules(6000))
    cache = tmp_path / "cache"
    cache.mkdir()
    return policy, {"EBMESH_CACHE_DIR": str(cache)}


def test_a_long_compile_shows_progress_on_a_terminal(slow_policy, tmp_path):
    policy, env = slow_policy
    started = time.monotonic()
    status, output = in_a_terminal("compile", policy, "--object", tmp_path / "big.o", env=env)
    took = time.monotonic() - started
    assert status == 0, output
    assert took > 1.0, "the compile was quick: this test would show nothing"
    plain = ANY_ESCAPE.sub("", output)
    live = re.findall(r"compiling big\.mesh: ([a-zA-Z ]+?) +\d:\d\d:\d\d", plain)
    assert live and set(live) <= {"parse and check", "lower to IR", "build tables", "clang"} | {
        "encode maps"
    }, output  # the live line: the phase, and the time so far
    summary = re.search(r"ebmesh: compiling big\.mesh in (\d+\.\d\d)s \((.*)\)", plain)
    assert summary, output
    phases = [part.rsplit(" ", 1)[0] for part in summary.group(2).split(", ")]
    assert phases == ["parse and check", "lower to IR", "build tables", "clang", "encode maps"]
    assert float(summary.group(1)) > 1.0
    assert "compiled to" in plain


def test_progress_never_reaches_a_pipe(slow_policy, tmp_path):
    policy, env = slow_policy
    result = run_ebmesh(
        "compile", policy, "--object", tmp_path / "big.o", env={**os.environ, **env}
    )
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stderr and "compiling" not in result.stderr
    assert result.stderr.startswith(f"{policy}: compiled to ") and "built" in result.stderr


def test_quiet_shows_no_progress_even_on_a_terminal(slow_policy, tmp_path):
    policy, env = slow_policy
    status, output = in_a_terminal("-q", "compile", policy, "--object", tmp_path / "big.o", env=env)
    assert status == 0, output
    assert output == "", output


def test_a_quick_compile_shows_no_progress(tmp_path):
    status, output = in_a_terminal("compile", SHOP, "--object", tmp_path / "shop.o")  # cached
    assert status == 0, output
    assert "compiling" not in output and output.startswith(f"{SHOP}: compiled to ")


# ---- kernel: explain's exit status, JSON and colour -----------------------------------


@pytest.mark.kernel
def test_explain_exits_0_on_allow_1_on_deny_and_1_on_policy_errors(root, tmp_path):
    allowed = run_ebmesh("explain", SHOP, "--from", "frontend", "--to", "api-svc")
    assert allowed.returncode == 0 and allowed.stdout.startswith("ALLOW "), allowed
    denied = run_ebmesh("explain", SHOP, "--from", "api", "--to", "10.0.4.1:22/tcp")
    assert denied.returncode == 1 and denied.stdout.startswith("DENY "), denied
    assert denied.stderr == ""
    from tests.unit.test_cli import BROKEN

    broken = tmp_path / "broken.mesh"
    broken.write_text(BROKEN)
    error = run_ebmesh("explain", broken, "--from", "frontend", "--to", "api-svc")
    assert error.returncode == 1 and error.stdout == ""  # stdout tells it from a deny
    assert "unknown name 'frontnd'" in error.stderr
    usage = run_ebmesh("explain", SHOP, "--from", "nobody-here", "--to", "api-svc")
    assert usage.returncode == 2 and usage.stdout == "", usage


@pytest.mark.kernel
def test_explain_json(root):
    result = run_ebmesh("explain", SHOP, "--from", "api", "--to", "10.0.4.1:22/tcp", "-o", "json")
    assert result.returncode == 1, result.stderr
    found = json.loads(result.stdout)
    assert found["kind"] == "explain" and found["verdict"] == "deny"
    assert found["source"] == "api"
    assert found["to"] == {"address": "10.0.4.1", "port": 22, "protocol": "tcp"}
    line = line_of(SHOP, "deny  api -> 10.0.0.0/8 except")
    assert found["rule"]["id"] == 6 and found["rule"]["line"] == line
    assert found["rule"]["file"] == str(SHOP) and "10.0.0.0/8" in found["rule"]["text"]
    assert found["by_default"] is False and found["needs_mtls"] is False

    result = run_ebmesh("explain", SHOP, "--from", "frontend", "--to", "api-svc", "-o", "json")
    assert result.returncode == 0
    found = json.loads(result.stdout)
    assert found["verdict"] == "allow" and found["rule"]["id"] == 1
    assert found["to"] == {"address": "api-svc", "port": 80, "protocol": "tcp"}

    result = run_ebmesh("explain", SHOP, "--from", "api", "--to", "10.0.4.1:5432/tcp", "-o", "json")
    found = json.loads(result.stdout)
    assert found["rule"] is None and found["by_default"] is True and found["default"] == "deny"


@pytest.mark.kernel
def test_explain_colours_the_verdict_on_a_terminal(root):
    status, output = in_a_terminal("explain", SHOP, "--from", "api", "--to", "10.0.4.1:22/tcp")
    assert status == 1, output
    assert re.search(r"\x1b\[[0-9;]*31m(\x1b\[[0-9;]*m)*DENY", output) or re.search(
        r"\x1b\[[0-9;]*1;31mDENY", output
    ), repr(output)
    status, output = in_a_terminal(
        "explain", SHOP, "--from", "api", "--to", "10.0.4.1:22/tcp", env={"NO_COLOR": "1"}
    )
    assert status == 1 and "\x1b" not in output and output.startswith("DENY ")


@pytest.mark.kernel
def test_a_long_apply_shows_compile_and_attach_progress_on_a_terminal(cgroup_tree, slow_policy):
    policy, env = slow_policy
    root = cgroup_tree("a")
    status, output = in_a_terminal(
        "apply",
        policy,
        "--cgroup",
        root,
        "--events",
        "none",
        env=env,
        interrupt_after="attached to",
    )
    assert status == 0, output
    plain = ANY_ESCAPE.sub("", output)
    summary = re.search(r"ebmesh: applying big\.mesh in (\d+\.\d\d)s \((.*)\)", plain)
    assert summary, output
    phases = [part.rsplit(" ", 1)[0] for part in summary.group(2).split(", ")]
    assert phases == [
        "parse and check",
        "lower to IR",
        "build tables",
        "clang",
        "encode maps",
        "load (verifier)",
        "map fill",
        "attach",
    ]
    assert plain.index("applying big.mesh in") < plain.index("attached to")
    assert f"detaching from {root}" in plain
