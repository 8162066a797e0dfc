"""The `ebmesh` command: check, compile, apply and explain policies.

Exit codes: 0 ok, 1 the policy has errors, 2 usage or environment errors
(no clang, not root, no BTF, a kernel refusal, a policy file that cannot be
read), each with what to do; 141 (128 + SIGPIPE), quietly, when the reader of
its output went away.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
from pathlib import Path

from ebmesh.cli_input import STDIN, FileChange, FileWatch, read_policy
from ebmesh.cli_output import OutputError, same_file, write_output
from ebmesh.errors import EbmeshError, EnvironmentProblem, PolicyError

EXIT_OK, EXIT_POLICY, EXIT_USAGE = 0, 1, 2
EXIT_PIPE_CLOSED = 128 + signal.SIGPIPE  # what a shell reports for `cat` killed by SIGPIPE


class UsageError(EbmeshError):
    """The command line asks for something that does not make sense."""


def _require_root(action: str) -> None:
    if os.geteuid() != 0:
        raise EnvironmentProblem(
            f"{action} needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN); run it with sudo"
        )
    if not Path("/sys/kernel/btf/vmlinux").exists():
        raise EnvironmentProblem(
            "this kernel exposes no BTF at /sys/kernel/btf/vmlinux; ebmesh needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
        )


def plural(count: int, noun: str) -> str:
    """`1 service`, `2 services`, `0 services`."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _compile(policy):
    """The compiled policy of a `cli_input.PolicyInput`."""
    import ebmesh
    from ebmesh.language.loading import decode

    return ebmesh.compile(decode(policy.data, policy.name), filename=policy.name)


def cmd_check(args) -> int:
    from ebmesh import language
    from ebmesh.language.loading import decode

    policy = read_policy(args.file)
    mesh = language.load(decode(policy.data, policy.name), filename=policy.name).mesh
    print(
        f"{policy.name}: ok (mesh {mesh.name.value}: {plural(len(mesh.workloads), 'workload')}, "
        f"{plural(len(mesh.services), 'service')}, {plural(len(mesh.rules), 'rule')})"
    )
    return EXIT_OK


def _object_path(args) -> Path:
    if args.output:
        return Path(args.output)
    if args.file == STDIN:
        raise UsageError("the policy comes from stdin (-): name the object to write with -o")
    return Path(args.file).with_suffix(".o")


def _check_outputs(args, identity, output: Path) -> None:
    """Every output is checked before anything is compiled or written: none may
    be the input, nor two the same file, and --emit-c must name a directory."""
    from ebmesh.compiler import GENERATED_HEADER, MAIN_SOURCE

    if same_file(output, identity):
        given = (
            f"-o {args.output}" if args.output else f"the default output {output} (FILE with .o)"
        )
        raise UsageError(f"{given} is the policy file itself; write the object elsewhere with -o")
    if args.emit_c in (None, "-"):
        return
    directory = Path(args.emit_c)
    # The nearest part of DIR that exists must be a directory (the rest is made).
    existing = next(p for p in (directory, *directory.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UsageError(f"--emit-c {args.emit_c}: {existing} is not a directory")
    for name in (GENERATED_HEADER, MAIN_SOURCE):
        generated = directory / name
        if same_file(generated, identity):
            raise UsageError(
                f"--emit-c {args.emit_c} would write {generated} over the policy file; "
                "give another directory"
            )
        if os.path.realpath(generated) == os.path.realpath(output):
            raise UsageError(
                f"-o {args.output} and --emit-c {args.emit_c} would both write {generated}"
            )


def _emit_c(directory: Path, sources: dict[str, str]) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot make the directory {directory}: {error.strerror}") from None
    for name, text in sources.items():
        write_output(directory / name, text.encode())
    print(f"wrote {', '.join(sorted(sources))} to {directory}", file=sys.stderr)


def cmd_compile(args) -> int:
    output = _object_path(args)
    policy = read_policy(args.file)
    _check_outputs(args, policy.identity, output)
    compiled = _compile(policy)
    # Files first, stdout last: a reader of stdout that goes away (`| head`) loses no file.
    if args.emit_c not in (None, "-"):
        _emit_c(Path(args.emit_c), compiled.sources)
    write_output(output, compiled.object_bytes)
    print(
        f"{policy.name}: compiled to {output} ({len(compiled.object_bytes)} bytes, "
        f"{'cached' if compiled.build.cache_hit else 'built'}; "
        f"{sum(compiled.timings.values()):.2f}s)",
        file=sys.stderr,
    )
    if args.emit_c == "-":
        sys.stdout.write(compiled.generated_header)
    if args.inspect:
        print(compiled.inspect().describe())
    return EXIT_OK


def _print_counters(attachment) -> None:
    for count in attachment.counters().values():
        if count.decided or count.audited:
            where = f"rule {count.rule_id} ({count.rule})" if count.rule else "default"
            print(f"  {where}: decided {count.decided}, audited {count.audited}", file=sys.stderr)
    for service, backends in attachment.backend_counters().items():
        spread = ", ".join(f"{backend} {connections}" for backend, connections in backends.items())
        print(f"  {service}: {spread or 'no backends'}", file=sys.stderr)


def _say(message: str) -> None:
    print(f"ebmesh: {message}", file=sys.stderr, flush=True)


def cmd_apply(args) -> int:
    if args.dry_run:  # compare with what runs there, attach nothing (cli_events.py)
        from ebmesh import cli_events

        return cli_events.dry_run(args)
    _require_root("ebmesh apply")
    from ebmesh.live import bring_up_to_date
    from ebmesh.runtime import cgroups

    cgroup = cgroups.resolve(args.cgroup)
    cgroups.refuse_root(cgroup, args.force, how_to_force="pass --force")
    # Watched from before the first read, so that an edit made meanwhile is seen.
    watch = FileWatch(Path(args.file)) if args.file != STDIN else None
    policy = read_policy(args.file)
    if policy.path is None:
        watch = None  # stdin or a FIFO: read once, and never again
    name = policy.name
    compiled = _compile(policy)
    stop = {"requested": False, "reload": False}

    def request_stop(signum, frame):
        stop["requested"] = True

    def request_reload(signum, frame):
        stop["reload"] = True

    attachment = compiled.attach(cgroup, force=args.force, events=args.events)
    # observability (cli_events.py, docs/observability.md): `ebmesh events` readers, metrics
    try:
        attachment.serve_events()
        if args.metrics:
            host, port = attachment.serve_metrics(*args.metrics)
            _say(f"metrics at http://{host}:{port}/metrics")
    except BaseException:
        attachment.detach()
        raise
    # Only once attached: a refused attach must not leave these signals swallowed.
    previous = {
        sig: signal.signal(sig, handler)
        for sig, handler in ((signal.SIGTERM, request_stop), (signal.SIGHUP, request_reload))
    }
    try:
        how = "editing the file (or SIGHUP) applies it" if args.watch else "SIGHUP applies edits"
        _say(
            f"{name} attached to {attachment.cgroup}; Ctrl-C detaches"
            + (f", {how}" if watch else "")
        )
        while not stop["requested"]:
            for event in attachment.poll_events(0.2):
                print(event, flush=True)
            change = watch.poll() if watch and args.watch else None
            if change is FileChange.GONE:
                _say(
                    f"{name} is gone (deleted, or being replaced); the running policy "
                    "stays, and the file is applied when it comes back"
                )
                continue
            if change is FileChange.BACK:
                _say(f"{name} is back")
            if not (change or stop["reload"]):
                continue
            stop["reload"] = False
            if watch is None:
                _say(f"{name} cannot be read again; the running policy stays")
                continue
            if not watch.present:
                _say(f"{name} is missing; the running policy stays")
                continue
            try:
                edited = _compile(read_policy(args.file))
                what = bring_up_to_date(attachment, compiled, edited)
            except PolicyError as error:
                print(error.render(), file=sys.stderr)
                _say(f"{name} has errors; the running policy stays")
                continue
            except EbmeshError as error:  # e.g. a new workload's cgroup does not exist yet
                if not watch.present:
                    continue  # it went while being read: the next poll says so
                _say(f"{error}\nebmesh: {name} cannot be applied; the running policy stays")
                continue
            compiled = edited
            _say(f"{name} changed: {what}")
            _print_counters(attachment)
    except KeyboardInterrupt:
        pass
    finally:
        try:
            print(f"ebmesh: detaching from {attachment.cgroup}", file=sys.stderr)
            _print_counters(attachment)
        finally:  # detach whatever happened reading the counters
            attachment.detach()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return EXIT_OK


_DESTINATION = re.compile(
    r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:/\[\]]+)):(?P<port>\d+)(?:/(?P<proto>tcp|udp))?$"
)


def parse_destination(text: str) -> tuple[str, int | None, str]:
    """`ADDR:PORT/PROTO`, `[V6]:PORT/PROTO`, `NAME:PORT/PROTO`, or a service `NAME`."""
    match = _DESTINATION.match(text)
    if match:
        return match["v6"] or match["host"], int(match["port"]), match["proto"] or "tcp"
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", text):
        return text, None, "tcp"
    raise UsageError(
        f"--to wants ADDR:PORT/PROTO (e.g. 10.0.2.10:8080/tcp or [fd00::1]:80/udp) or a service name, not {text!r}"
    )


def cmd_explain(args) -> int:
    _require_root("ebmesh explain")
    compiled = _compile(read_policy(args.file))
    destination, port, protocol = parse_destination(args.to)
    if port is None:
        service = next((s for s in compiled.policy.services if s.name == destination), None)
        if service is None:
            raise UsageError(
                f"{destination!r} is not a service; give a port: --to {destination}:PORT/PROTO"
            )
        port, protocol = service.port, service.protocol.label
    source = None if args.source == "-" else args.source
    with compiled:
        evaluation = compiled.evaluate(
            source, destination, port, protocol, source_address=args.from_address
        )
    print(evaluation)
    return EXIT_OK


def cmd_status(args) -> int:
    _require_root("ebmesh status")
    from ebmesh.runtime.status import attachments

    found = attachments()
    if not found:
        print("no ebmesh attachment on this machine")
        return EXIT_OK
    print(f"{'CGROUP':<44} {'MESH':<16} {'HELD':<16} {'RULES':>7}  {'SINCE':<19} PROGRAMS")
    for status in found:
        held = "pinned" if status.pinned else f"pid {status.pid}"
        if status.pinned and status.agent_alive:
            held += f" +{status.pid}"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status.since))
        programs = ",".join(p.removeprefix("ebmesh_") for p in status.programs)
        print(
            f"{status.cgroup:<44} {status.mesh:<16} {held:<16} {status.rules:>7}  {since:<19} {programs}"
        )
    return EXIT_OK


def cmd_detach(args) -> int:
    _require_root("ebmesh detach")
    from ebmesh.runtime.status import detach_cgroup

    print(f"ebmesh: {detach_cgroup(args.cgroup)}")
    return EXIT_OK


def _metrics_address(text: str) -> tuple[str, int]:
    from ebmesh.runtime.metrics import parse_address

    try:
        return parse_address(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


POLICY_FILE_HELP = "the policy file, or - to read it from stdin"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ebmesh", description="A sidecar-free service mesh compiled to eBPF."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check", help="check a policy and report every error")
    check.add_argument("file", help=POLICY_FILE_HELP)
    check.set_defaults(run=cmd_check)

    compile_ = commands.add_parser("compile", help="compile a policy to a BPF object")
    compile_.add_argument("file", help=POLICY_FILE_HELP)
    compile_.add_argument(
        "-o", "--output", help="object file to write (default: FILE with .o; needed for -)"
    )
    compile_.add_argument(
        "--emit-c",
        nargs="?",
        const="-",
        metavar="DIR",
        help="print the generated header, or write all generated C into DIR",
    )
    compile_.add_argument(
        "--inspect", action="store_true", help="describe the object's programs and maps"
    )
    compile_.set_defaults(run=cmd_compile)

    apply = commands.add_parser(
        "apply", help="attach a policy to a cgroup and print verdicts until Ctrl-C"
    )
    apply.add_argument("file", help=POLICY_FILE_HELP + " (read once: not watched)")
    apply.add_argument(
        "--cgroup", required=True, help="cgroup v2 directory (absolute or relative to the mount)"
    )
    apply.add_argument("--events", choices=("all", "denied", "none"), default="all")
    apply.add_argument("--force", action="store_true", help="allow attaching to the root cgroup")
    apply.add_argument(
        "--no-watch",
        dest="watch",
        action="store_false",
        help="do not re-read the file when it changes (SIGHUP still does)",
    )
    apply.add_argument(
        "--metrics",
        metavar="ADDR:PORT",
        type=_metrics_address,
        help="serve Prometheus metrics at http://ADDR:PORT/metrics while attached",
    )
    apply.add_argument(
        "--dry-run",
        action="store_true",
        help="only show what applying would change (as `ebmesh diff`); exit 0 same, 1 differs",
    )
    apply.set_defaults(run=cmd_apply)

    explain = commands.add_parser(
        "explain", help="the kernel's verdict for one flow, and the rule behind it"
    )
    explain.add_argument("file", help=POLICY_FILE_HELP)
    explain.add_argument(
        "--from",
        dest="source",
        required=True,
        help="a workload name, an address, or - for a local process of no workload",
    )
    explain.add_argument("--from-address", help="the source's address, when --from is a workload")
    explain.add_argument(
        "--to", required=True, help="ADDR:PORT/PROTO, NAME:PORT/PROTO, or a service name"
    )
    explain.set_defaults(run=cmd_explain)

    status = commands.add_parser(
        "status", help="every ebmesh attachment on this machine, pinned or held by a process"
    )
    status.set_defaults(run=cmd_status)

    detach = commands.add_parser(
        "detach", help="remove the ebmesh policy on a cgroup (pinned, or held by any process)"
    )
    detach.add_argument("--cgroup", required=True, help="cgroup v2 directory")
    detach.set_defaults(run=cmd_detach)

    from ebmesh import cli_ca, cli_events  # command groups of their own modules

    cli_ca.add_commands(commands)
    cli_events.add_commands(commands)
    for command in commands.choices.values():  # a mistake is told with its command's usage
        command.set_defaults(usage=command)
    return parser


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None):
    """`parse_args`, except that what a command does not know is told with that
    command's usage (argparse leaves extra arguments to the top-level parser)."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        given = list(sys.argv[1:] if argv is None else argv)
        before_command = (
            unknown[0] in given
            and args.command in given
            and given.index(unknown[0]) < given.index(args.command)
        )
        (parser if before_command else args.usage).error(
            f"unrecognized arguments: {' '.join(unknown)}"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(build_parser(), argv)
    try:
        status = args.run(args)
        sys.stdout.flush()  # here, so that a closed pipe is met while it can be handled
        return status
    except BrokenPipeError:
        return _reader_went_away()
    except PolicyError as error:
        print(error.render(), file=sys.stderr)
        return EXIT_POLICY
    except EbmeshError as error:
        print(f"ebmesh: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        print(f"ebmesh: {error}", file=sys.stderr)
        return EXIT_USAGE


def _reader_went_away() -> int:
    """The reader of our output closed it (`ebmesh ... | head`): stop quietly,
    as tools killed by SIGPIPE do. Python ignores SIGPIPE and raises instead;
    pointing stdout and stderr at /dev/null keeps the interpreter's own flush
    at exit from complaining about the same pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        os.dup2(devnull, stream.fileno())
    os.close(devnull)
    return EXIT_PIPE_CLOSED


if __name__ == "__main__":
    sys.exit(main())
