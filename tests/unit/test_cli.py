"""The `ebmesh` command, run as a user runs it: a separate process, through
`python -m ebmesh` and through the console script pip installed in the venv.

Exit codes (ebmesh/cli.py): 0 ok, 1 the policy has errors, 2 usage or
environment. The tests marked `kernel` load and attach for real, only ever to
throwaway `ebmesh-test-*` cgroups (the `cgroup_tree` fixture), except one that
checks `apply` refuses the root cgroup, with a policy that allows everything
should that refusal ever break.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import re
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from ebmesh.cli import UsageError, parse_destination
from ebmesh.loader import AttachType, query_cgroup
from ebmesh.loader.inspect import inspect_object
from ebmesh.toolchain.vmlinux import find_bpftool

REPO = Path(__file__).resolve().parents[2]
SHOP = REPO / "examples" / "shop.mesh"
VENV_BIN = Path(sys.executable).parent
CONSOLE_SCRIPT = VENV_BIN / "ebmesh"

LAUNCHERS = {
    "python -m ebmesh": [sys.executable, "-m", "ebmesh"],
    "console script": [str(CONSOLE_SCRIPT)],
}
# What every policy attaches (the recorder at cgroup_skb/egress only when the mesh
# spans network namespaces, getpeername/recvmsg only for services).
ATTACH_TYPES = (
    AttachType.CGROUP_INET_INGRESS,
    AttachType.CGROUP_INET4_CONNECT,
    AttachType.CGROUP_INET6_CONNECT,
    AttachType.CGROUP_UDP4_SENDMSG,
    AttachType.CGROUP_UDP6_SENDMSG,
)
# Every hook an attachment may use (ebmesh.datapath.programs.HOOK_PROGRAMS).
EVERY_HOOK = (
    *ATTACH_TYPES,
    AttachType.CGROUP_INET_EGRESS,
    AttachType.CGROUP_UDP4_RECVMSG,
    AttachType.CGROUP_UDP6_RECVMSG,
    AttachType.CGROUP_INET4_GETPEERNAME,
    AttachType.CGROUP_INET6_GETPEERNAME,
)
PROGRAMS = (
    "ebmesh_connect4",
    "ebmesh_connect6",
    "ebmesh_sendmsg4",
    "ebmesh_sendmsg6",
    "ebmesh_getpeername4",
    "ebmesh_getpeername6",
    "ebmesh_recvmsg4",
    "ebmesh_recvmsg6",
    "ebmesh_ingress",
    "ebmesh_recorder",
    "ebmesh_sockops",
    "ebmesh_shortcut",
    "ebmesh_evaluate",
)
MAPS = (
    "address_prefixes",
    "class_links",
    "rule_pairs",
    "port_intervals",
    "cgroup_index",
    "cgroup_workloads",
    "listeners",
    "verdicts",
    "identities",
    "service_index",
    "services",
    "service_entries",
    "backend_slots",
    "backends",
    "backend_counters",
    "socket_states",
    "udp_translations",
    "udp_affinity",
    "flows",
    "udp_replies",
    "authenticated_pairs",
    "auth_state",
    "notices",
    "signals",
    "rule_counters",
    "verdict_events",
    "lost_events",
    "shortcuts",
    "shortcut_counters",
)


def run_ebmesh(*arguments, launcher="python -m ebmesh", timeout=120, **options):
    """`ebmesh ARGS...` in a process of its own; the CompletedProcess."""
    if launcher == "console script" and not CONSOLE_SCRIPT.exists():
        pytest.fail(f"no console script at {CONSOLE_SCRIPT}: run `pip install -e .` (make setup)")
    if "input" not in options:
        options["stdin"] = subprocess.DEVNULL
    return subprocess.run(
        [*LAUNCHERS[launcher], *map(str, arguments)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        **options,
    )


@pytest.fixture(params=sorted(LAUNCHERS))
def ebmesh_cmd(request):
    """Runs `ebmesh ARGS...` one way, then the other (the test runs once per launcher)."""
    return lambda *arguments, **options: run_ebmesh(*arguments, launcher=request.param, **options)


def line_of(path: Path, fragment: str) -> int:
    """The 1-based line of the file holding `fragment` (found by text, not by the compiler)."""
    (number,) = [n for n, text in enumerate(path.read_text().split("\n"), 1) if fragment in text]
    return number


BROKEN = """\
mesh t {
    workload frontend { cgroup "f" }
    allow frontnd -> any port 80
    allow frontend -> any port 99999
}
"""


# ---- check -------------------------------------------------------------------


def test_check_ok(ebmesh_cmd):
    result = ebmesh_cmd("check", "examples/shop.mesh")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "examples/shop.mesh: ok (mesh shop: 3 workloads, 1 service, 7 rules)\n"
    assert result.stderr == ""


@pytest.mark.parametrize(
    "body, counted",
    [
        ("", "0 workloads, 0 services, 0 rules"),
        ('workload a { cgroup "a" }\n allow a -> any', "1 workload, 0 services, 1 rule"),
        (
            'workload a { cgroup "a" }\n workload b { cgroup "b" }\n'
            " service s 10.96.0.1:80/tcp { backend 10.0.0.1:80 }\n"
            " service t 10.96.0.2:80/tcp { backend 10.0.0.1:80 }\n allow a -> s\n allow b -> t",
            "2 workloads, 2 services, 2 rules",
        ),
    ],
)
def test_check_counts_in_words_that_agree(tmp_path, body, counted):
    policy = tmp_path / "p.mesh"
    policy.write_text(f"mesh m {{\n {body}\n}}\n")
    result = run_ebmesh("check", policy)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{policy}: ok (mesh m: {counted})\n"


def test_check_broken_reports_every_error_where_it_is(ebmesh_cmd, tmp_path):
    policy = tmp_path / "broken.mesh"
    policy.write_text(BROKEN)
    result = ebmesh_cmd("check", policy)
    assert result.returncode == 1, result
    assert result.stdout == ""
    # FILE:LINE:COLUMN of each mistake, counted by hand from BROKEN above.
    assert f"{policy}:3:11: unknown name 'frontnd'" in result.stderr
    assert "did you mean 'frontend'?" in result.stderr
    assert re.search(rf"^{re.escape(str(policy))}:4:\d+: .*99999", result.stderr, re.M)
    lines = result.stderr.split("\n")
    # The source line (indented by 4), then a caret under the spot: column 11, 7 characters.
    shown = lines.index("    " + BROKEN.split("\n")[2])
    assert lines[shown + 1] == "    " + " " * 10 + "^~~~~~~"
    assert "Traceback" not in result.stderr


def test_check_and_compile_agree_on_what_cannot_be_enforced(tmp_path):
    """A policy past the datapath's limits is refused by `check`, with its place, as by
    `compile`: the limit is a check of the language, not a surprise of a later phase."""
    policy = REPO / "tests" / "golden" / "errors" / "prefix_nesting.mesh"
    checked = run_ebmesh("check", policy)
    compiled = run_ebmesh("compile", policy, "--object", tmp_path / "deep.o")
    assert checked.returncode == compiled.returncode == 1, (checked, compiled)
    assert checked.stderr == compiled.stderr
    assert f"{policy}:21:5: cannot be enforced as written: 17 destination" in checked.stderr
    assert not (tmp_path / "deep.o").exists()


def test_check_missing_file(ebmesh_cmd, tmp_path):
    missing = tmp_path / "nowhere.mesh"
    result = ebmesh_cmd("check", missing)
    assert result.returncode == 2
    assert result.stderr == f"ebmesh: no policy file at {missing}\n"


def test_check_a_directory_is_not_a_policy(ebmesh_cmd, tmp_path):
    result = ebmesh_cmd("check", tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"ebmesh: no policy file at {tmp_path}: it is a directory\n"


def test_a_policy_that_is_not_utf8_is_a_policy_error(tmp_path):
    policy = tmp_path / "latin1.mesh"
    policy.write_bytes(b"mesh m {\n  # caf\xe9\n}\n")
    result = run_ebmesh("check", policy)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{policy}:2: the policy is not valid UTF-8")


AS_NOBODY = """
import os, sys
from ebmesh import cli, cli_input, language
from ebmesh.language import loading
cli.build_parser().parse_args(sys.argv[1:])  # argparse's lazy imports, while root can read them
os.setgroups([]); os.setegid(65534); os.seteuid(65534)  # nobody from here on
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_policy_file_that_cannot_be_read_is_a_usage_error(root, tmp_path):
    """Like a missing one (exit 2), naming the file and why; as `nobody`, since
    root reads any file."""
    with tempfile.TemporaryDirectory(prefix="ebmesh-test-") as shared:
        os.chmod(shared, 0o755)
        secret = Path(shared) / "secret.mesh"
        secret.write_text(SHOP.read_text())
        secret.chmod(0o600)
        for command in (["check", secret], ["compile", secret, "--object", Path(shared) / "x.o"]):
            result = subprocess.run(
                [sys.executable, "-c", AS_NOBODY, *map(str, command)],
                capture_output=True,
                text=True,
                cwd=REPO,
                timeout=60,
            )
            assert result.returncode == 2, result
            assert result.stderr == (
                f"ebmesh: cannot read the policy file {secret}: Permission denied\n"
            )
            assert not (Path(shared) / "x.o").exists()


def test_the_policy_from_stdin(ebmesh_cmd, tmp_path):
    """`-` reads the policy from stdin, named <stdin> in what is printed."""
    result = ebmesh_cmd("check", "-", input=SHOP.read_text())
    assert result.returncode == 0, result.stderr
    assert result.stdout == "<stdin>: ok (mesh shop: 3 workloads, 1 service, 7 rules)\n"
    result = ebmesh_cmd("check", "-", input=BROKEN)
    assert result.returncode == 1
    assert "<stdin>:3:11: unknown name 'frontnd'" in result.stderr

    result = ebmesh_cmd("compile", "-", input=SHOP.read_text())
    assert result.returncode == 2
    assert result.stderr == (
        "ebmesh: the policy comes from stdin (-): name the object to write with --object FILE\n"
    )
    output = tmp_path / "shop.o"
    result = ebmesh_cmd("compile", "-", "--object", output, input=SHOP.read_text())
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(f"<stdin>: compiled to {output} (")
    assert output.read_bytes()[:4] == b"\x7fELF"


def test_a_fifo_is_read_as_a_file(tmp_path):
    fifo = tmp_path / "policy.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text(SHOP.read_text()), daemon=True)
    writer.start()
    result = run_ebmesh("check", fifo)
    writer.join(timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{fifo}: ok (mesh shop: 3 workloads, 1 service, 7 rules)\n"


def test_a_cr_only_file_reads_as_the_same_policy_with_the_same_positions(tmp_path):
    policy = tmp_path / "mac.mesh"
    policy.write_bytes(SHOP.read_bytes().replace(b"\n", b"\r"))
    result = run_ebmesh("check", policy)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{policy}: ok (mesh shop: 3 workloads, 1 service, 7 rules)\n"
    policy.write_bytes(BROKEN.encode().replace(b"\n", b"\r"))
    result = run_ebmesh("check", policy)
    assert result.returncode == 1
    assert f"{policy}:3:11: unknown name 'frontnd'" in result.stderr
    assert f"{policy}:4:" in result.stderr
    assert "\n    " + BROKEN.split("\n")[2] + "\n" in result.stderr  # the line, shown whole


# ---- compile -----------------------------------------------------------------


def test_compile_writes_the_object_and_the_c(ebmesh_cmd, tmp_path):
    output, generated = tmp_path / "out" / "shop.o", tmp_path / "generated"
    output.parent.mkdir()
    result = ebmesh_cmd("compile", SHOP, "--object", output, "--emit-c", generated)
    assert result.returncode == 0, result.stderr
    assert f"compiled to {output}" in result.stderr

    data = output.read_bytes()
    assert data[:4] == b"\x7fELF"
    with output.open("rb") as stream:
        assert ELFFile(stream)["e_machine"] == "EM_BPF"
    assert sorted(p.name for p in inspect_object(data).programs) == sorted(PROGRAMS)

    assert sorted(p.name for p in generated.iterdir()) == ["ebmesh.bpf.c", "policy.h"]
    assert (generated / "ebmesh.bpf.c").read_text() == (
        REPO / "bpf_src" / "ebmesh.bpf.c"
    ).read_text()
    header = (generated / "policy.h").read_text()
    assert "#define POLICY_DEFAULT_VERDICT VERDICT_DENY" in header
    assert "#define POLICY_RULE_COUNT 7" in header
    assert f":{line_of(SHOP, 'deny  frontend -> 10.0.2.0/24')} " in header


def test_compile_default_output_and_header_on_stdout(ebmesh_cmd, tmp_path):
    policy = tmp_path / "tiny.mesh"
    policy.write_text("mesh tiny {\n    default allow\n    deny any -> 10.0.0.0/8 port 25\n}\n")
    result = ebmesh_cmd("compile", policy, "--emit-c")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "tiny.o").read_bytes()[:4] == b"\x7fELF"  # FILE with .o
    assert "#define POLICY_DEFAULT_VERDICT VERDICT_ALLOW" in result.stdout
    assert "rule 1" in result.stdout


def test_compile_inspect_lists_programs_and_maps(ebmesh_cmd, tmp_path):
    result = ebmesh_cmd("compile", SHOP, "--object", tmp_path / "shop.o", "--inspect")
    assert result.returncode == 0, result.stderr
    listing = result.stdout
    assert "programs:" in listing and "maps:" in listing
    section = listing.split("programs:")[1].split("maps:")[0]
    for name in PROGRAMS:
        assert re.search(rf"^\s+{name}\s", section, re.M), name
    maps = listing.split("maps:")[1]
    for name in MAPS:
        assert re.search(rf"^\s+{name}\s", maps, re.M), name
    assert re.search(r"^\s+verdict_events\s+ringbuf\s", maps, re.M)
    assert re.search(r"^\s+flows\s+lru_hash\s", maps, re.M)
    assert "decide" in listing


def test_compile_a_broken_policy_writes_nothing(ebmesh_cmd, tmp_path):
    policy = tmp_path / "broken.mesh"
    policy.write_text(BROKEN)
    result = ebmesh_cmd("compile", policy, "--object", tmp_path / "x.o", "--emit-c", tmp_path / "c")
    assert result.returncode == 1
    assert f"{policy}:3:11:" in result.stderr
    assert not (tmp_path / "x.o").exists() and not (tmp_path / "c").exists()


def test_compile_refuses_to_write_over_its_input(ebmesh_cmd, tmp_path):
    """`compile pol.o` (FILE.o is FILE), `-o` naming the input by any path (itself,
    a symlink, a hard link), and `--emit-c DIR` holding the input are usage
    errors, refused before anything is written."""
    text = SHOP.read_text()
    named_o = tmp_path / "pol.o"
    named_o.write_text(text)
    policy = tmp_path / "pol.mesh"
    policy.write_text(text)
    (tmp_path / "link.mesh").symlink_to(policy)
    os.link(policy, tmp_path / "hard.mesh")
    generated = tmp_path / "gen"
    generated.mkdir()
    os.link(policy, generated / "policy.h")
    cases = {
        "FILE.o is FILE": (named_o,),
        "--object FILE": (policy, "--object", policy),
        "--object a symlink to FILE": (policy, "--object", tmp_path / "link.mesh"),
        "--object a hard link of FILE": (policy, "--object", tmp_path / "hard.mesh"),
        "FILE through a symlink": (tmp_path / "link.mesh", "--object", policy),
        "--emit-c DIR holding FILE": (
            generated / "policy.h",
            "--object",
            tmp_path / "x.o",
            "--emit-c",
            generated,
        ),
        "--object into --emit-c's files": (
            policy,
            "--object",
            tmp_path / "c" / "policy.h",
            "--emit-c",
            tmp_path / "c",
        ),
    }
    for case, arguments in cases.items():
        result = ebmesh_cmd("compile", *arguments)
        assert result.returncode == 2, (case, result)
        assert result.stderr.startswith("ebmesh: ") and "Traceback" not in result.stderr, case
        assert "policy file itself" in result.stderr or "would" in result.stderr, (
            case,
            result.stderr,
        )
        assert named_o.read_text() == policy.read_text() == text, case
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "gen",
        "hard.mesh",
        "link.mesh",
        "pol.mesh",
        "pol.o",
    ]
    assert [p.name for p in generated.iterdir()] == ["policy.h"]


def test_compile_replaces_its_outputs_atomically(tmp_path):
    """An output is renamed into place whole: a reader of the old file keeps the
    old bytes, the path holds the new ones, no temporary file stays behind, and
    the file keeps its mode (a new one gets the umask's)."""
    output, generated = tmp_path / "shop.o", tmp_path / "c"
    generated.mkdir()
    output.write_bytes(b"the previous object")
    output.chmod(0o640)
    (generated / "policy.h").write_text("/* the previous header */")
    with output.open("rb") as old_reader:
        result = run_ebmesh("compile", SHOP, "--object", output, "--emit-c", generated)
        assert result.returncode == 0, result.stderr
        assert old_reader.read() == b"the previous object"
    assert output.read_bytes()[:4] == b"\x7fELF"
    assert output.stat().st_mode & 0o777 == 0o640
    assert "POLICY_RULE_COUNT" in (generated / "policy.h").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "shop.o"]
    assert sorted(p.name for p in generated.iterdir()) == ["ebmesh.bpf.c", "policy.h"]

    fresh = tmp_path / "fresh.o"
    result = run_ebmesh("compile", SHOP, "--object", fresh, preexec_fn=lambda: os.umask(0o027))
    assert result.returncode == 0, result.stderr
    assert fresh.stat().st_mode & 0o777 == 0o640


def test_compile_writes_into_a_fifo_and_through_a_symlink(tmp_path):
    """What is not a regular file is written into, not replaced: a FIFO stays a
    FIFO (so would /dev/null); a symlink stays, and what it names is replaced."""
    fifo = tmp_path / "object.fifo"
    os.mkfifo(fifo)
    received = {}
    reader = threading.Thread(target=lambda: received.update(data=fifo.read_bytes()), daemon=True)
    reader.start()
    result = run_ebmesh("compile", SHOP, "--object", fifo)
    reader.join(timeout=30)
    assert result.returncode == 0, result.stderr
    assert received["data"][:4] == b"\x7fELF"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)

    (tmp_path / "objects").mkdir()
    target = tmp_path / "objects" / "shop.o"
    target.write_bytes(b"old")
    link = tmp_path / "shop.o"
    link.symlink_to(target)
    result = run_ebmesh("compile", SHOP, "--object", link)
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and target.read_bytes() == received["data"]


@pytest.mark.parametrize("directory", ["/etc/passwd", "/etc/passwd/generated"])
def test_emit_c_into_a_file_is_not_a_directory(tmp_path, directory):
    output = tmp_path / "shop.o"
    result = run_ebmesh("compile", SHOP, "--object", output, "--emit-c", directory)
    assert result.returncode == 2
    assert result.stderr == f"ebmesh: --emit-c {directory}: /etc/passwd is not a directory\n"
    assert not output.exists()


def test_compile_cannot_write_there(tmp_path):
    for output, message in (
        (tmp_path / "missing" / "shop.o", f"there is no directory {tmp_path / 'missing'}"),
        (tmp_path, "it is a directory"),
    ):
        result = run_ebmesh("compile", SHOP, "--object", output)
        assert result.returncode == 2, result
        assert result.stderr == f"ebmesh: cannot write {output}: {message}\n"


# ---- usage -------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments, usage",
    [
        ([], "ebmesh [-h]"),
        (["frobnicate"], "ebmesh [-h]"),
        (["--bogus", "check", "examples/shop.mesh"], "ebmesh [-h]"),
        (["check"], "ebmesh check"),
        (["check", "examples/shop.mesh", "extra"], "ebmesh check"),
        (["compile"], "ebmesh compile"),
        (["compile", "examples/shop.mesh", "--bogus"], "ebmesh compile"),
        (["apply", "examples/shop.mesh"], "ebmesh apply"),  # no --cgroup
        (["apply", "examples/shop.mesh", "--cgroup", "x", "--events", "loud"], "ebmesh apply"),
        (["apply", "examples/shop.mesh", "--cgroup", "x", "--pinned"], "ebmesh apply"),
        (["explain", "examples/shop.mesh", "--to", "10.0.0.1:80"], "ebmesh explain"),  # no --from
        (["explain", "examples/shop.mesh", "--from", "a", "--to", "b", "-x"], "ebmesh explain"),
    ],
    ids=lambda a: " ".join(a) if isinstance(a, list) else "",
)
def test_usage_errors_exit_2_with_the_usage_of_the_command(ebmesh_cmd, arguments, usage):
    result = ebmesh_cmd(*arguments)
    assert result.returncode == 2, result
    assert result.stderr.startswith(f"usage: {usage}"), result.stderr
    assert "Traceback" not in result.stderr


def run_into_a_closed_pipe(*arguments) -> subprocess.CompletedProcess:
    """`ebmesh ARGS...` writing into a pipe whose reader has already gone."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        return subprocess.run(
            [*LAUNCHERS["python -m ebmesh"], *map(str, arguments)],
            stdout=writer,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
            timeout=120,
        )
    finally:
        os.close(writer)


@pytest.mark.parametrize(
    "arguments",
    [["check", SHOP], ["compile", SHOP, "--emit-c"], ["compile", SHOP, "--inspect"]],
    ids=["check", "compile --emit-c", "compile --inspect"],
)
def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path, arguments):
    """As `cat` killed by SIGPIPE: exit 141 and not a word about it; what goes to
    files is written before anything goes to stdout."""
    output = tmp_path / "shop.o"
    extra = ["--object", output] if arguments[0] == "compile" else []
    result = run_into_a_closed_pipe(*arguments, *extra)
    assert result.returncode == 128 + signal.SIGPIPE, result
    for noise in ("Broken pipe", "BrokenPipeError", "Traceback", "Exception ignored"):
        assert noise not in result.stderr, result.stderr
    if extra:
        assert output.read_bytes()[:4] == b"\x7fELF"


def test_piping_into_head(tmp_path):
    script = (
        f"set -o pipefail; {sys.executable} -m ebmesh compile {SHOP} --object {tmp_path / 'shop.o'}"
        " --inspect | head -1"
    )
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.stdout.startswith("eBPF object: ")
    assert result.returncode in (0, 128 + signal.SIGPIPE)  # 0 if head read it all in time
    assert "Broken pipe" not in result.stderr and "Traceback" not in result.stderr


def test_help_exits_0(ebmesh_cmd):
    result = ebmesh_cmd("--help")
    assert result.returncode == 0
    for command in ("check", "compile", "apply", "explain"):
        assert command in result.stdout


@pytest.mark.parametrize(
    "text, expected",
    [
        ("10.0.2.10:8080/tcp", ("10.0.2.10", 8080, "tcp")),
        ("10.0.2.10:53/udp", ("10.0.2.10", 53, "udp")),
        ("10.0.2.10:8080", ("10.0.2.10", 8080, "tcp")),
        ("[fd00::1]:80/udp", ("fd00::1", 80, "udp")),
        ("api:8080/tcp", ("api", 8080, "tcp")),
        ("api-svc", ("api-svc", None, "tcp")),
    ],
)
def test_parse_destination(text, expected):
    assert parse_destination(text) == expected


@pytest.mark.parametrize(
    "text", ["10.0.2.10:", "fd00::1:80", "[fd00::1]", "a b", "10.0.0.1:80/icmp", ":80", ""]
)
def test_parse_destination_rejects(text):
    with pytest.raises(UsageError):
        parse_destination(text)


# ---- kernel: explain ----------------------------------------------------------------


@pytest.mark.kernel
@pytest.mark.parametrize(
    "source, destination, expected",
    [
        # The contract's meaning: rule 2 allows frontend -> api:8080/tcp only with mTLS,
        # and no pair is authenticated yet.
        ("frontend", "10.0.2.10:8080/tcp", ("DENY", 2, "allow frontend -> api port 8080/tcp mtls")),
        ("frontend", "api-svc", ("ALLOW", 1, "allow frontend -> api-svc")),
        ("-", "10.53.0.1:53/udp", ("ALLOW", 4, "allow any -> 10.53.0.0/16")),
        ("api", "10.0.4.1:22/tcp", ("DENY", 6, "deny  api -> 10.0.0.0/8 except")),
    ],
    ids=["mtls", "service", "dns", "except"],
)
def test_explain_names_the_deciding_rule_and_its_line(root, source, destination, expected):
    verdict, rule_id, fragment = expected
    result = run_ebmesh("explain", "examples/shop.mesh", "--from", source, "--to", destination)
    assert result.returncode == (0 if verdict == "ALLOW" else 1), result.stderr  # as can-i
    first = result.stdout.split("\n")[0]
    assert first.startswith(f"{verdict} ")
    assert f"decided by rule {rule_id} at examples/shop.mesh:{line_of(SHOP, fragment)}:" in first
    if rule_id == 2:
        assert "mTLS is required and the pair is not authenticated" in result.stdout


@pytest.mark.kernel
def test_explain_the_default(root):
    result = run_ebmesh(
        "explain", "examples/shop.mesh", "--from", "api", "--to", "10.0.4.1:5432/tcp"
    )
    assert result.returncode == 1, result.stderr  # deny
    assert result.stdout.startswith("DENY api -> 10.0.4.1:5432/tcp, decided by the default (deny)")


@pytest.mark.kernel
def test_explain_names_a_source_of_no_workload_by_its_address(root):
    result = run_ebmesh("explain", SHOP, "--from", "10.9.9.9", "--to", "10.0.2.10:8080/tcp")
    assert result.returncode == 1, result.stderr  # deny
    assert result.stdout.startswith("DENY 10.9.9.9 -> api:8080/tcp, decided by the default")
    result = run_ebmesh("explain", SHOP, "--from", "-", "--to", "10.53.0.1:53/udp")
    assert result.stdout.startswith("ALLOW - -> 10.53.0.1:53/udp, decided by rule 4")


@pytest.mark.kernel
def test_explain_reads_the_policy_from_stdin(root):
    result = run_ebmesh(
        "explain", "-", "--from", "frontend", "--to", "api-svc", input=SHOP.read_text()
    )
    assert result.returncode == 0, result.stderr
    line = line_of(SHOP, "allow frontend -> api-svc")
    assert result.stdout.startswith(
        f"ALLOW frontend -> api-svc:80/tcp, decided by rule 1 at <stdin>:{line}:"
    )


@pytest.mark.kernel
def test_explain_into_a_closed_pipe_is_quiet(root):
    result = run_into_a_closed_pipe("explain", SHOP, "--from", "api", "--to", "api-svc")
    assert result.returncode == 128 + signal.SIGPIPE, result
    assert result.stderr == ""


@pytest.mark.kernel
def test_explain_bad_destination_is_a_usage_error(root):
    result = run_ebmesh("explain", "examples/shop.mesh", "--from", "frontend", "--to", "nowhere:x")
    assert result.returncode == 2
    assert "--to wants ADDR:PORT/PROTO" in result.stderr


# ---- kernel: apply -----------------------------------------------------------------

CLIENT, SERVER = "127.0.1.1", "127.0.2.1"
LOOPBACK_POLICY = f"""\
mesh loop {{
    workload client {{ cgroup "client" address {CLIENT} }}
    workload server {{ cgroup "server" address {SERVER} }}
    allow client -> server port 8080/tcp
}}
"""


class Lines:
    """Lines of a child's stream, collected by a thread so that reads can time out."""

    def __init__(self, stream):
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream):
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, predicate, timeout: float, *, after: int = 0) -> str:
        """The first line from the `after`-th on that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        for line in self.seen[after:]:
            if predicate(line):
                return line
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no such line within {timeout}s; saw {self.seen}") from None
            if line is None:
                raise AssertionError(f"stream ended; saw {self.seen}")
            self.seen.append(line)
            if predicate(line):
                return line

    def rest(self, timeout: float = 5.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return self.seen
            if line is None:
                return self.seen
            self.seen.append(line)


def attached_programs(cgroup) -> dict:
    """{hook: program ids} for every hook an attachment may use."""
    return {attach_type.name: query_cgroup(cgroup, attach_type) for attach_type in EVERY_HOOK}


def cgroup_links(cgroup) -> list[tuple[str, int]]:
    """(attach type, link id) of every BPF link on `cgroup`, as `bpftool link show` lists them."""
    listing = subprocess.run(
        [str(find_bpftool()), "-j", "link", "show"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    inode = os.stat(cgroup).st_ino  # a cgroup's id
    return sorted(
        (link["attach_type"], link["id"])
        for link in json.loads(listing.stdout)
        if link.get("cgroup_id") == inode
    )


def start_apply(policy: Path, cgroup: Path, *options: str) -> subprocess.Popen:
    """`ebmesh apply POLICY --cgroup CGROUP OPTIONS...`, its output in pipes."""
    return subprocess.Popen(
        [*LAUNCHERS["python -m ebmesh"], "apply", str(policy), "--cgroup", str(cgroup), *options],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


class MostProgramsSeen:
    """A thread that keeps querying the cgroup's hooks, remembering the most
    programs it ever saw on one: more than one is two policies stacked."""

    def __init__(self, cgroup: Path):
        self.most, self._cgroup, self._stop = 0, cgroup, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self):
        while not self._stop.is_set():
            counts = [len(ids) for ids in attached_programs(self._cgroup).values()]
            self.most = max(self.most, *counts)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.most


@pytest.mark.kernel
@pytest.mark.parametrize(
    "stop_signal, launcher",
    [(signal.SIGINT, "console script"), (signal.SIGTERM, "python -m ebmesh")],
    ids=["SIGINT", "SIGTERM"],
)
def test_apply_prints_verdicts_and_detaches_on_a_signal(
    cgroup_tree, spawn, tmp_path, stop_signal, launcher
):
    root = cgroup_tree("client", "server")
    assert root.name.startswith("ebmesh-test-")
    server, client = spawn(root / "server", name="server"), spawn(root / "client", name="client")
    server.listen("tcp", SERVER, 8080)
    server.listen("tcp", SERVER, 9090)
    policy = tmp_path / "loop.mesh"
    policy.write_text(LOOPBACK_POLICY)
    allow_line = line_of(policy, "allow client -> server")

    process = subprocess.Popen(
        [*LAUNCHERS[launcher], "apply", str(policy), "--cgroup", str(root)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        out, err = Lines(process.stdout), Lines(process.stderr)
        started = err.wait_for(lambda line: "attached to" in line, timeout=60)
        assert str(root) in started and "Ctrl-C detaches" in started
        attached = attached_programs(root)
        assert all(attached[hook.name] for hook in ATTACH_TYPES), "apply said attached, it is not"

        assert client.connect(SERVER, 8080, source=CLIENT)["ok"]
        denied = client.connect(SERVER, 9090, source=CLIENT)
        assert not denied["ok"] and denied["errno"] == errno.EPERM

        allowed = out.wait_for(
            lambda line: "egress" in line and f"{SERVER}:8080" in line, timeout=10
        )
        assert re.search(
            rf"tcp client {CLIENT}:\d+ -> server {SERVER}:8080 +ALLOW by rule 1 \(\S+:{allow_line}\)",
            allowed,
        ), allowed
        refused = out.wait_for(lambda line: f"{SERVER}:9090" in line, timeout=10)
        assert "DENY by the default" in refused
        out.wait_for(lambda line: "ingress" in line and f"{SERVER}:8080" in line, timeout=10)

        process.send_signal(stop_signal)
        assert process.wait(timeout=20) == 0, err.rest()
        errors = err.rest()
        assert any(f"detaching from {root}" in line for line in errors), errors
        assert any(re.search(r"rule 1 \(.*\): decided 2, audited 0", line) for line in errors), (
            errors
        )
        assert any("default: decided 1" in line for line in errors), errors
        assert not any("Traceback" in line for line in errors), errors
    finally:
        if process.poll() is None:
            process.kill()  # its links die with its file descriptors
            process.wait()
    assert attached_programs(root) == {name: [] for name in attached_programs(root)}
    assert client.connect(SERVER, 9090, source=CLIENT)["ok"]  # the policy is gone


SERVICE_POLICY = f"""\
mesh loop {{
    workload client {{ cgroup "client" address {CLIENT} }}
    workload server {{ cgroup "server" address 127.0.2.0/24 }}
    service web 127.0.96.10:80/tcp {{
        backend 127.0.2.1:8080 weight 1
        backend 127.0.2.2:8080 weight 0
    }}
    allow client -> web
}}
"""


@pytest.mark.kernel
def test_apply_takes_edits_of_the_file(cgroup_tree, spawn, tmp_path):
    """Backends changed in the file move traffic in place; a changed rule swaps the policy."""
    root = cgroup_tree("client", "server")
    server, client = spawn(root / "server", name="server"), spawn(root / "client", name="client")
    for address in ("127.0.2.1", "127.0.2.2"):
        server.listen("tcp", address, 8080)
    policy = tmp_path / "live.mesh"
    policy.write_text(SERVICE_POLICY)
    process = subprocess.Popen(
        [
            *LAUNCHERS["python -m ebmesh"],
            "apply",
            str(policy),
            "--cgroup",
            str(root),
            "--events",
            "none",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        err = Lines(process.stderr)
        Lines(process.stdout)
        err.wait_for(lambda line: "attached to" in line, timeout=60)
        assert client.connect_many("127.0.96.10", 80, 20, source=CLIENT)["succeeded"] == 20
        assert server.accepted("tcp", "127.0.2.1", 8080) == 20

        time.sleep(0.01)  # a new mtime
        policy.write_text(
            SERVICE_POLICY.replace("weight 1", "weight 0").replace(
                "weight 0\n    }", "weight 5\n    }"
            )
        )
        err.wait_for(lambda line: "backends of web changed in place" in line, timeout=30)
        err.wait_for(lambda line: "127.0.2.1:8080 20, 127.0.2.2:8080 0" in line, timeout=10)
        assert client.connect_many("127.0.96.10", 80, 20, source=CLIENT)["succeeded"] == 20
        assert server.accepted("tcp", "127.0.2.2", 8080) == 20

        policy.write_text(SERVICE_POLICY.replace("allow client -> web", "deny client -> web"))
        err.wait_for(lambda line: "policy replaced" in line, timeout=30)
        refused = client.connect("127.0.96.10", 80, source=CLIENT)
        assert not refused["ok"] and refused["errno"] == errno.EPERM

        # valid, and it would allow again, but ghost's cgroup does not exist: it cannot be applied
        missing = SERVICE_POLICY.replace(
            "allow client -> web", 'workload ghost { cgroup "ghost" }\n    allow client -> web'
        )
        policy.write_text(missing)
        err.wait_for(lambda line: "cannot be applied; the running policy stays" in line, timeout=30)
        assert client.connect("127.0.96.10", 80, source=CLIENT)["errno"] == errno.EPERM

        policy.write_text("mesh loop { this is not a policy }\n")
        err.wait_for(lambda line: "has errors; the running policy stays" in line, timeout=30)
        assert client.connect("127.0.96.10", 80, source=CLIENT)["errno"] == errno.EPERM

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0, err.rest()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert attached_programs(root) == {name: [] for name in attached_programs(root)}


HARMLESS = "mesh harmless {\n    default allow\n    workload nobody { address 192.0.2.1 }\n}\n"


@pytest.mark.kernel
def test_apply_refuses_the_root_cgroup(root, cgroup, ebmesh_cmd, tmp_path):
    """`ebmesh apply` never attaches to the root cgroup without --force: the
    library refuses (ebmesh/runtime/cgroups.refuse_root) before it loads
    anything. The policy allows everything, so even a broken refusal could
    not cut this machine off; the check is that nothing was attached at all."""
    from ebmesh.runtime.cgroups import cgroup2_mount

    mount = cgroup2_mount()
    policy = tmp_path / "harmless.mesh"
    policy.write_text(HARMLESS)
    before = attached_programs(mount)
    # Every spelling of the root: absolute, relative, empty, and `..` out of a child.
    for spelling in (str(mount), ".", "", f"{cgroup}/.."):
        result = ebmesh_cmd("apply", policy, "--cgroup", spelling, timeout=60)
        assert result.returncode == 2, (spelling, result)
        assert "refusing to attach to the root cgroup" in result.stderr, (spelling, result.stderr)
        assert "pass --force if you really mean it" in result.stderr
        assert "force=True" not in result.stderr
        assert "attached to" not in result.stderr
        assert attached_programs(mount) == before


@pytest.mark.kernel
def test_apply_outside_the_hierarchy_and_missing_workloads(root, cgroup, tmp_path):
    policy = tmp_path / "loop.mesh"
    policy.write_text(LOOPBACK_POLICY)
    result = run_ebmesh("apply", policy, "--cgroup", "/tmp", timeout=60)
    assert result.returncode == 2 and "not inside the cgroup v2 hierarchy" in result.stderr
    result = run_ebmesh(
        "apply", policy, "--cgroup", cgroup, timeout=60
    )  # no client/ or server/ below it
    assert result.returncode == 2 and "workload cgroups missing" in result.stderr
    assert attached_programs(cgroup) == {name: [] for name in attached_programs(cgroup)}


@pytest.mark.kernel
def test_in_process_refusal_leaves_sigterm_alone(root, tmp_path):
    """A refused `apply` run through cli.main() must not leave SIGTERM swallowed."""
    from ebmesh import cli
    from ebmesh.runtime.cgroups import cgroup2_mount

    policy = tmp_path / "harmless.mesh"
    policy.write_text(HARMLESS)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["apply", str(policy), "--cgroup", str(cgroup2_mount())]) == 2
    assert signal.getsignal(signal.SIGTERM) is before


NOT_ROOT = """
import os, sys
from ebmesh import cli
cli.build_parser().parse_args(sys.argv[1:]).run.__name__  # argparse's lazy imports, while root can read them
os.setgroups([]); os.setegid(65534); os.seteuid(65534)  # nobody from here on
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.kernel
def test_apply_without_root_says_so(root, cgroup):
    """As `nobody` (the Python runtime lives under /root, so the child drops its
    effective ids only once it has started), `apply` and `explain` say what
    they need and exit 2."""
    for arguments in (
        ("apply", SHOP, "--cgroup", cgroup),
        ("explain", SHOP, "--from", "api", "--to", "api-svc"),
    ):
        result = subprocess.run(
            [sys.executable, "-c", NOT_ROOT, *map(str, arguments)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
        assert result.returncode == 2, result
        assert "needs root" in result.stderr and "sudo" in result.stderr
    assert attached_programs(cgroup) == {name: [] for name in attached_programs(cgroup)}


@pytest.mark.kernel
def test_apply_reloads_an_edited_policy_in_place_never_stacked(cgroup_tree, spawn, tmp_path):
    """Each edit that changes the rules swaps every hook's program on the links
    `apply` made at the start (BPF_LINK_UPDATE): the links stay, the programs
    change, and no hook ever carries two programs, not even for a moment."""
    root = cgroup_tree("client", "server")
    server, client = spawn(root / "server", name="server"), spawn(root / "client", name="client")
    server.listen("tcp", "127.0.2.1", 8080)
    policy = tmp_path / "live.mesh"
    policy.write_text(SERVICE_POLICY)
    process, watcher = start_apply(policy, root, "--events", "none"), None
    try:
        err = Lines(process.stderr)
        Lines(process.stdout)
        err.wait_for(lambda line: "attached to" in line, timeout=60)
        links = cgroup_links(root)
        kinds = [kind for kind, _ in links]
        assert len(set(kinds)) == len(kinds) and "cgroup_inet4_connect" in kinds, links
        programs = {hook: ids for hook, ids in attached_programs(root).items() if ids}
        assert len(programs) == len(links), (programs, links)
        watcher = MostProgramsSeen(root)
        for edit in range(6):
            seen = len(err.seen)
            policy.write_text(
                SERVICE_POLICY.replace(
                    "allow client -> web",
                    f"allow client -> web\n    deny client -> 127.0.9.9 port {1000 + edit}",
                )
            )
            err.wait_for(lambda line: "policy replaced" in line, timeout=30, after=seen)
            now = {hook: ids for hook, ids in attached_programs(root).items() if ids}
            assert now.keys() == programs.keys(), (programs, now)
            assert all(len(ids) == 1 for ids in now.values()), now
            assert all(now[hook] != programs[hook] for hook in now), (programs, now)
            assert cgroup_links(root) == links, "the same links, carrying the new programs"
            assert client.connect("127.0.96.10", 80, source=CLIENT)["ok"]
            programs = now
        assert watcher.stop() == 1
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0, err.rest()
    finally:
        if watcher is not None:
            watcher.stop()
        if process.poll() is None:
            process.kill()
            process.wait()
    assert attached_programs(root) == {name: [] for name in attached_programs(root)}


def replace_by_rename(path: Path, text: str) -> None:
    """Save as editors do: write a new file beside it, then rename it over the path."""
    fresh = path.with_name(f".{path.name}.new")
    fresh.write_text(text)
    os.replace(fresh, path)


@pytest.mark.kernel
def test_apply_waits_out_a_vanished_file_and_applies_it_when_it_is_back(
    cgroup_tree, spawn, tmp_path
):
    root = cgroup_tree("client", "server")
    server, client = spawn(root / "server", name="server"), spawn(root / "client", name="client")
    server.listen("tcp", SERVER, 8080)
    server.listen("tcp", SERVER, 9090)
    policy = tmp_path / "loop.mesh"
    policy.write_text(LOOPBACK_POLICY)
    process = start_apply(policy, root, "--events", "none")
    try:
        err = Lines(process.stderr)
        Lines(process.stdout)
        err.wait_for(lambda line: "attached to" in line, timeout=60)

        policy.unlink()
        err.wait_for(lambda line: f"{policy} is gone" in line, timeout=10)
        time.sleep(1.0)  # several rounds of watching with no file
        assert process.poll() is None, err.rest()
        assert client.connect(SERVER, 8080, source=CLIENT)["ok"]
        assert client.connect(SERVER, 9090, source=CLIENT)["errno"] == errno.EPERM

        seen = len(err.seen)
        process.send_signal(signal.SIGHUP)
        err.wait_for(lambda line: f"{policy} is missing" in line, timeout=10, after=seen)
        assert process.poll() is None

        seen = len(err.seen)
        replace_by_rename(policy, LOOPBACK_POLICY.replace("port 8080/tcp", "port 8080, 9090/tcp"))
        err.wait_for(lambda line: f"{policy} is back" in line, timeout=10, after=seen)
        err.wait_for(lambda line: "policy replaced" in line, timeout=30, after=seen)
        assert client.connect(SERVER, 9090, source=CLIENT)["ok"]

        # Deleted and renamed in within one round of watching: a new file, applied.
        seen = len(err.seen)
        policy.unlink()
        replace_by_rename(policy, LOOPBACK_POLICY)
        err.wait_for(lambda line: "policy replaced" in line, timeout=30, after=seen)
        assert client.connect(SERVER, 9090, source=CLIENT)["errno"] == errno.EPERM

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0, err.rest()
        assert not any("Traceback" in line for line in err.rest())
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert attached_programs(root) == {name: [] for name in attached_programs(root)}


@pytest.mark.kernel
def test_apply_a_policy_from_stdin_reads_it_once(cgroup_tree, spawn):
    root = cgroup_tree("client", "server")
    server, client = spawn(root / "server", name="server"), spawn(root / "client", name="client")
    server.listen("tcp", SERVER, 9090)
    process = subprocess.Popen(
        [*LAUNCHERS["python -m ebmesh"], "apply", "-", "--cgroup", str(root), "--events", "none"],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        process.stdin.write(LOOPBACK_POLICY)
        process.stdin.close()
        err = Lines(process.stderr)
        Lines(process.stdout)
        started = err.wait_for(lambda line: "attached to" in line, timeout=60)
        assert started.startswith("ebmesh: <stdin> attached to") and "SIGHUP" not in started
        assert client.connect(SERVER, 9090, source=CLIENT)["errno"] == errno.EPERM
        process.send_signal(signal.SIGHUP)
        err.wait_for(lambda line: "<stdin> cannot be read again" in line, timeout=10)
        assert client.connect(SERVER, 9090, source=CLIENT)["errno"] == errno.EPERM
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0, err.rest()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert attached_programs(root) == {name: [] for name in attached_programs(root)}
