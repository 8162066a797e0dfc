"""The `ebmesh` command: check, compile, apply and explain policies.

Exit codes: 0 ok, 1 the policy has errors (and `explain`'s verdict is deny,
as `kubectl auth can-i` says no), 2 usage or environment errors (no clang,
not root, no BTF, a kernel refusal, a policy file that cannot be read), each
with what to do; 141 (128 + SIGPIPE), quietly, when the reader of its output
went away. How it prints (-o, colour, -q/-v) is ebmesh/cli_style.py's.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
from pathlib import Path

from ebmesh import cli_json
from ebmesh.cli_completion import directory, policy_file
from ebmesh.cli_input import STDIN, FileChange, FileWatch, read_policy
from ebmesh.cli_output import OutputError, same_file, write_output
from ebmesh.cli_progress import PhaseProgress
from ebmesh.cli_style import (
    ALLOW_STYLE,
    HEADER_STYLE,
    Style,
    add_global_flags,
    add_output_flag,
    object_or_format,
    print_json,
)
from ebmesh.errors import EbmeshError, EnvironmentProblem, PolicyError

EXIT_OK, EXIT_POLICY, EXIT_USAGE = 0, 1, 2
EXIT_DENIED = 1  # `explain`'s verdict is deny (kubectl auth can-i's "no")
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


def _compile(policy, progress=None):
    """The compiled policy of a `cli_input.PolicyInput`."""
    import ebmesh
    from ebmesh.language.loading import decode

    return ebmesh.compile(decode(policy.data, policy.name), filename=policy.name, progress=progress)


def _tell_timings(style: Style, compiled) -> None:
    """-v: what each phase of the compile took."""
    for phase, seconds in compiled.timings.items():
        style.detail(f"{phase}: {seconds * 1000:.1f} ms")


def cmd_check(args) -> int:
    from ebmesh import language
    from ebmesh.language.loading import decode

    style = Style.from_args(args)
    policy = read_policy(args.file)
    try:
        mesh = language.load(decode(policy.data, policy.name), filename=policy.name).mesh
    except PolicyError as error:
        if style.json:
            print_json(cli_json.check_failed(policy.name, error))
        raise
    if style.json:
        print_json(cli_json.check(policy.name, mesh))
        return EXIT_OK
    print(
        f"{policy.name}: {style.paint('ok', ALLOW_STYLE)} (mesh {mesh.name.value}: "
        f"{plural(len(mesh.workloads), 'workload')}, "
        f"{plural(len(mesh.services), 'service')}, {plural(len(mesh.rules), 'rule')})"
    )
    return EXIT_OK


def _object_path(args) -> Path:
    if args.object:
        return Path(args.object)
    if args.file == STDIN:
        raise UsageError(
            "the policy comes from stdin (-): name the object to write with --object FILE"
        )
    return Path(args.file).with_suffix(".o")


def _check_outputs(args, identity, output: Path) -> None:
    """Every output is checked before anything is compiled or written: none may
    be the input, nor two the same file, and --emit-c must name a directory."""
    from ebmesh.compiler import GENERATED_HEADER, MAIN_SOURCE

    if same_file(output, identity):
        given = (
            f"--object {args.object}"
            if args.object
            else f"the default output {output} (FILE with .o)"
        )
        raise UsageError(
            f"{given} is the policy file itself; write the object elsewhere with --object"
        )
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
                f"--object {args.object} and --emit-c {args.emit_c} would both write {generated}"
            )


def _emit_c(style: Style, directory: Path, sources: dict[str, str]) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot make the directory {directory}: {error.strerror}") from None
    for name, text in sources.items():
        write_output(directory / name, text.encode())
    style.info(f"wrote {', '.join(sorted(sources))} to {directory}", prefix=False)


def cmd_compile(args) -> int:
    style = Style.from_args(args)
    if style.json and args.emit_c == "-":
        raise UsageError(
            "--emit-c without DIR prints C on stdout, where -o json prints JSON: "
            "give --emit-c a directory"
        )
    output = _object_path(args)
    policy = read_policy(args.file)
    _check_outputs(args, policy.identity, output)
    progress = PhaseProgress.for_style(f"compiling {Path(policy.name).name}", style)
    try:
        compiled = _compile(policy, progress.phase)
    finally:
        summary = progress.finish()
    # Files first, stdout last: a reader of stdout that goes away (`| head`) loses no file.
    if args.emit_c not in (None, "-"):
        _emit_c(style, Path(args.emit_c), compiled.sources)
    write_output(output, compiled.object_bytes)
    if summary:
        style.info(summary)
    style.info(
        f"{policy.name}: compiled to {output} ({len(compiled.object_bytes)} bytes, "
        f"{'cached' if compiled.build.cache_hit else 'built'}; "
        f"{sum(compiled.timings.values()):.2f}s)",
        prefix=False,
    )
    _tell_timings(style, compiled)
    inspected = compiled.inspect() if args.inspect else None
    if style.json:
        print_json(cli_json.compiled(policy.name, output, compiled, inspected))
        return EXIT_OK
    if args.emit_c == "-":
        sys.stdout.write(compiled.generated_header)
    if inspected is not None:
        print(inspected.describe())
    return EXIT_OK


def _print_counters(style: Style, attachment) -> None:
    for count in attachment.counters().values():
        if count.decided or count.audited:
            where = f"rule {count.rule_id} ({count.rule})" if count.rule else "default"
            style.info(f"  {where}: decided {count.decided}, audited {count.audited}", prefix=False)
    for service, backends in attachment.backend_counters().items():
        spread = ", ".join(f"{backend} {connections}" for backend, connections in backends.items())
        style.info(f"  {service}: {spread or 'no backends'}", prefix=False)


class AttachCgroupRemoved(EbmeshError):
    """The cgroup `apply` attached to was removed: nothing is left to enforce."""


def _tell_notices(style: Style, attachment) -> None:
    """The attachment's notices (mTLS pairs authenticated or refused, cgroups mapped,
    workloads elsewhere, ...) as `ebmesh: KIND: message` lines."""
    for notice in attachment.poll_notices():
        if notice.kind == "attach-cgroup-removed":
            raise AttachCgroupRemoved(
                f"{notice.message}: nothing is left to enforce, so apply ends "
                "(make the cgroup again and run apply again)"
            )
        style.info(f"{notice.kind}: {notice.message}")


def _attach_options(args) -> dict:
    options = {"force": args.force, "events": args.events, "pin": args.pin}
    if args.identity_dir is not None:
        options["identity_dir"] = Path(args.identity_dir)
    if args.authenticator_port is not None:
        options["authenticator_port"] = args.authenticator_port
    return options


def cmd_apply(args) -> int:
    if args.dry_run:  # compare with what runs there, attach nothing (cli_events.py)
        from ebmesh import cli_events

        return cli_events.dry_run(args)
    _require_root("ebmesh apply")
    from ebmesh.live import bring_up_to_date
    from ebmesh.runtime import cgroups

    style = Style.from_args(args)
    cgroup = cgroups.resolve(args.cgroup)
    cgroups.refuse_root(cgroup, args.force, how_to_force="pass --force")
    # Watched from before the first read, so that an edit made meanwhile is seen.
    watch = FileWatch(Path(args.file)) if args.file != STDIN else None
    policy = read_policy(args.file)
    if policy.path is None:
        watch = None  # stdin or a FIFO: read once, and never again
    name = policy.name
    stop = {"requested": False, "reload": False}

    def request_stop(signum, frame):
        stop["requested"] = True

    def request_reload(signum, frame):
        stop["reload"] = True

    progress = PhaseProgress.for_style(f"applying {Path(name).name}", style)
    try:
        compiled = _compile(policy, progress.phase)
        attachment = compiled.attach(cgroup, progress=progress.phase, **_attach_options(args))
    finally:
        summary = progress.finish()
    # observability (cli_events.py, docs/observability.md): `ebmesh events` readers, metrics
    try:
        attachment.serve_events()
        if args.metrics:
            host, port = attachment.serve_metrics(*args.metrics)
            style.info(f"metrics at http://{host}:{port}/metrics")
    except BaseException:
        attachment.detach()
        raise
    # Only once attached: a refused attach must not leave these signals swallowed.
    previous = {
        sig: signal.signal(sig, handler)
        for sig, handler in ((signal.SIGTERM, request_stop), (signal.SIGHUP, request_reload))
    }
    status = EXIT_OK
    try:
        if summary:
            style.info(summary)
        _tell_timings(style, compiled)
        how = "editing the file (or SIGHUP) applies it" if args.watch else "SIGHUP applies edits"
        ending = "Ctrl-C leaves it pinned" if args.pin else "Ctrl-C detaches"
        style.info(
            f"{name} attached to {attachment.cgroup}"
            + (" (pinned)" if args.pin else "")
            + f"; {ending}"
            + (f", {how}" if watch else "")
        )
        while not stop["requested"]:
            _tell_notices(style, attachment)
            for event in attachment.poll_events(0.2):
                print(style.verdict(str(event), event_verdict(event)), flush=True)
            change = watch.poll() if watch and args.watch else None
            if change is FileChange.GONE:
                style.info(
                    f"{name} is gone (deleted, or being replaced); the running policy "
                    "stays, and the file is applied when it comes back"
                )
                continue
            if change is FileChange.BACK:
                style.info(f"{name} is back")
            if not (change or stop["reload"]):
                continue
            stop["reload"] = False
            if watch is None:
                style.info(f"{name} cannot be read again; the running policy stays")
                continue
            if not watch.present:
                style.info(f"{name} is missing; the running policy stays")
                continue
            try:
                edited = _compile(read_policy(args.file))
                what = bring_up_to_date(attachment, compiled, edited)
            except PolicyError as error:
                print(error.render(), file=sys.stderr)
                style.error(f"{name} has errors; the running policy stays")
                continue
            except EbmeshError as error:  # e.g. a new workload's cgroup does not exist yet
                if not watch.present:
                    continue  # it went while being read: the next poll says so
                style.error(f"{error}\nebmesh: {name} cannot be applied; the running policy stays")
                continue
            compiled = edited
            style.info(f"{name} changed: {what}")
            _tell_timings(style, compiled)
            _print_counters(style, attachment)
    except KeyboardInterrupt:
        pass
    except AttachCgroupRemoved as gone:
        style.error(str(gone))
        status = EXIT_USAGE
    finally:
        stays = args.pin and status == EXIT_OK
        try:
            if not stays:
                style.info(f"detaching from {attachment.cgroup}")
            _print_counters(style, attachment)
        finally:  # detach (or let go of a pinned one) whatever happened reading the counters
            if stays:
                attachment.close()
                style.info(
                    f"{compiled.policy.name} stays pinned on {attachment.cgroup}; remove it "
                    f"with ebmesh detach --cgroup {attachment.cgroup}"
                )
            else:
                attachment.detach()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return status


def event_verdict(event) -> str:
    return event.verdict


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
    style = Style.from_args(args)
    with compiled:
        evaluation = compiled.evaluate(
            source, destination, port, protocol, source_address=args.from_address
        )
    if style.json:
        print_json(cli_json.explained(evaluation, destination, port, protocol))
    else:
        print(style.verdict(str(evaluation), evaluation.verdict))
    # As `kubectl auth can-i`: a script asks `if ebmesh explain ...; then`. A policy
    # error is 1 too, but prints nothing on stdout: stdout tells the two apart.
    return EXIT_OK if evaluation.allowed else EXIT_DENIED


def _status_rows(found) -> list[tuple[str, ...]]:
    rows = []
    for status in found:
        held = "pinned" if status.pinned else f"pid {status.pid}"
        if status.pinned and status.agent_alive:
            held += f" +{status.pid}"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status.since))
        programs = ",".join(p.removeprefix("ebmesh_") for p in status.programs)
        rows.append((status.cgroup, status.mesh, held, str(status.rules), since, programs))
    return rows


STATUS_COLUMNS = ("CGROUP", "MESH", "HELD", "RULES", "SINCE", "PROGRAMS")


def cmd_status(args) -> int:
    _require_root("ebmesh status")
    from ebmesh.runtime.status import attachments

    style = Style.from_args(args)
    found = attachments()
    if style.json:
        print_json(cli_json.status(found))
        return EXIT_OK
    if not found:
        print("no ebmesh attachment on this machine")
        return EXIT_OK
    rows = _status_rows(found)
    if style.colour_out:  # a terminal: rich's table (a pipe gets the plain columns below)
        from rich import box
        from rich.table import Table

        table = Table(box=box.SIMPLE_HEAD, header_style=HEADER_STYLE, pad_edge=False)
        for column in STATUS_COLUMNS:
            table.add_column(column, justify="right" if column == "RULES" else "left")
        for row in rows:
            table.add_row(*row)
        style.console().print(table)
        return EXIT_OK
    print(f"{'CGROUP':<44} {'MESH':<16} {'HELD':<16} {'RULES':>7}  {'SINCE':<19} PROGRAMS")
    for cgroup, mesh, held, rules, since, programs in rows:
        print(f"{cgroup:<44} {mesh:<16} {held:<16} {rules:>7}  {since:<19} {programs}")
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


def _policy_file(parser: argparse.ArgumentParser, help_text: str = POLICY_FILE_HELP) -> None:
    policy_file(parser.add_argument("file", help=help_text))


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"a port from 0 (any free one) to 65535, not {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    from ebmesh.cli_version import package_version

    parser = argparse.ArgumentParser(
        prog="ebmesh", description="A sidecar-free service mesh compiled to eBPF."
    )
    parser.add_argument("--version", action="version", version=f"ebmesh {package_version()}")
    add_global_flags(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser("check", help="check a policy and report every error")
    _policy_file(check)
    add_output_flag(check)
    check.set_defaults(run=cmd_check)

    compile_ = commands.add_parser("compile", help="compile a policy to a BPF object")
    _policy_file(compile_)
    compile_.add_argument(
        "--object",
        metavar="FILE",
        help="object file to write (default: the policy FILE with .o; needed for -)",
    )
    add_output_flag(compile_, kind=object_or_format)
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
    _policy_file(apply, POLICY_FILE_HELP + " (read once: not watched)")
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
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="pin links and maps under /sys/fs/bpf/ebmesh/MESH, so that the policy stays "
        "when apply ends (remove it with ebmesh detach); default --no-pin: Ctrl-C detaches",
    )
    identity_dir = apply.add_argument(
        "--identity-dir",
        metavar="DIR",
        help="with mtls: the identity directory (default /var/lib/ebmesh/MESH, its issuer "
        "made on first use)",
    )
    directory(identity_dir)
    apply.add_argument(
        "--authenticator-port",
        type=_port,
        metavar="N",
        help="with mtls: the TCP port the authenticator listens on (default 4250; 0: any free one)",
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
        "explain",
        help="the kernel's verdict for one flow, and the rule behind it (exit 0 allow, 1 deny)",
    )
    _policy_file(explain)
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
    add_output_flag(explain)
    explain.set_defaults(run=cmd_explain)

    status = commands.add_parser(
        "status", help="every ebmesh attachment on this machine, pinned or held by a process"
    )
    add_output_flag(status)
    status.set_defaults(run=cmd_status)

    detach = commands.add_parser(
        "detach", help="remove the ebmesh policy on a cgroup (pinned, or held by any process)"
    )
    detach.add_argument("--cgroup", required=True, help="cgroup v2 directory")
    detach.set_defaults(run=cmd_detach)

    # Command groups of their own modules.
    from ebmesh import cli_ca, cli_completion, cli_events, cli_version

    cli_ca.add_commands(commands)
    cli_events.add_commands(commands)
    cli_version.add_commands(commands)
    cli_completion.add_commands(commands)
    _finish(parser)
    return parser


def _finish(parser: argparse.ArgumentParser) -> None:
    """Every command, however deep and whichever module added it: the global flags
    again, and its usage for its mistakes."""
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        for command in action.choices.values():
            if not any(o.dest == "quiet" for o in command._actions):
                add_global_flags(command, top=False)
            command.set_defaults(usage=command)
            _finish(command)


def _commands_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _suggest_command(parser: argparse.ArgumentParser, given: list[str]) -> None:
    """`ebmesh chek` -> `did you mean 'check'?` (exit 2 with the usage), like git and
    kubectl. Only options without values come before a command, so the first word
    that is not an option is the command, at each level (`ebmesh ca shwo`)."""
    for word in given:
        if word == "--":
            return
        if word.startswith("-"):
            continue
        commands = _commands_of(parser)
        if not commands:
            return
        if word in commands:
            parser = commands[word]
            continue
        from ebmesh.language.suggest import did_you_mean  # only for a mistake: it is not light

        suggestion = did_you_mean(word, commands)
        if suggestion:
            parser.error(f"unknown command {word!r}: {suggestion}")
        return


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None):
    """`parse_args`, except that what a command does not know is told with that
    command's usage (argparse leaves extra arguments to the top-level parser)."""
    given = list(sys.argv[1:] if argv is None else argv)
    _suggest_command(parser, given)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
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
