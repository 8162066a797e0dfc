"""`ebmesh events` (the verdicts of a running attachment, like `hubble observe`) and
`ebmesh diff` (what applying a file would change there; also `apply --dry-run`).

A command group of its own module, added to the parser by `ebmesh.cli`.
Exit codes of `diff` and `apply --dry-run`, as diff(1): 0 no difference, 1
differences, 2 errors.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys
import time
from collections.abc import Callable

from ebmesh.cli_style import add_output_flag
from ebmesh.errors import EbmeshError

EXIT_SAME, EXIT_DIFFERENT, EXIT_TROUBLE = 0, 1, 2
DEFAULT_LAST = 20  # without --since or --follow, as `hubble observe` shows its last 20 flows


class EventsUsageError(EbmeshError):
    """An `events` or `diff` argument that does not make sense for the attachment."""


def add_commands(commands) -> None:
    events = commands.add_parser(
        "events",
        help="verdicts of a running attachment, one line per flow (like hubble observe)",
        description="Recent verdicts of an attachment (pinned, or held by `ebmesh apply`), "
        "filtered; --follow goes on with new ones. Several readers may follow at once.",
    )
    events.add_argument("--cgroup", help="the attachment's cgroup (default: the only one)")
    events.add_argument(
        "--from", dest="source", metavar="W|ADDR", help="source workload or address"
    )
    events.add_argument(
        "--to", dest="destination", metavar="W|ADDR[:PORT]", help="destination workload or address"
    )
    events.add_argument("--verdict", choices=("allow", "deny"))
    events.add_argument("--rule", metavar="N", help="the rule's id (`default`: no rule matched)")
    events.add_argument(
        "--since", type=duration, metavar="DURATION", help="only events of the last 30s, 5m, 1h..."
    )
    events.add_argument(
        "--last",
        type=_count,
        metavar="N",
        help=f"only the last N recent events (default {DEFAULT_LAST})",
    )
    events.add_argument("-f", "--follow", action="store_true", help="go on with new events")
    add_output_flag(events)
    events.set_defaults(run=cmd_events)

    diff = commands.add_parser(
        "diff",
        help="what applying a policy file would change on a cgroup (exit 0 same, 1 differs)",
        description="Compare FILE with the policy running on the cgroup: rules added and "
        "removed, and which recent flows would change verdict. Changes nothing.",
    )
    diff.add_argument("file", help="the policy file, or - to read it from stdin")
    diff.add_argument("--cgroup", required=True, help="the cgroup the policy runs on")
    diff.add_argument(
        "--since",
        type=duration,
        metavar="DURATION",
        help="flows of the last 30s, 5m... (default: all recent)",
    )
    add_output_flag(diff)
    diff.set_defaults(run=cmd_diff)


# ---- arguments -----------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """`30s`, `5m`, `1h30m`, `500ms` (a bare number is seconds) -> seconds."""
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"a duration like 30s, 5m or 1h30m, not {text!r}")
    return sum(float(n) * _UNIT[u] for n, u in parts)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"a number of events, not {text!r}")
    return int(text)


def choose_attachment(cgroup: str | None):
    """The record of the attachment on `cgroup`, or of the only one there is."""
    from ebmesh.runtime import cgroups, registry

    if cgroup is not None:
        path = cgroups.resolve(cgroup)
        record = registry.on_cgroup(path)
        if record is None:
            raise EventsUsageError(f"no ebmesh policy is attached to {path} (see `ebmesh status`)")
        return record
    found = registry.records()
    if len(found) == 1:
        return found[0]
    if not found:
        raise EventsUsageError("no ebmesh attachment on this machine (see `ebmesh status`)")
    listed = "\n".join(f"  {r.cgroup} ({r.mesh})" for r in found)
    raise EventsUsageError(f"{len(found)} attachments: choose one with --cgroup:\n{listed}")


def _address(text: str):
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def _party_test(text: str, names: tuple[str, ...], side: str, port_allowed: bool):
    """(name or address, port or None) for --from/--to, checked against the policy's names."""
    port = None
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+):(\d+)", text)
    if match and port_allowed:
        text, port = match[1], int(match[2])
    address = _address(text)
    if address is None and text not in names:
        known = ", ".join(names) or "none"
        raise EventsUsageError(f"--{side} {text}: no workload or service of that name ({known})")
    return (address if address is not None else text), port


def event_filter(args, policy) -> Callable:
    """A predicate over VerdictEvents for the --from/--to/--verdict/--rule asked."""
    tests = []
    names = tuple(policy.names.values()) if policy else ()
    if args.source:
        wanted, _ = _party_test(args.source, names, "from", port_allowed=False)
        if isinstance(wanted, str):
            tests.append(lambda e: e.src_name == wanted)
        else:
            tests.append(lambda e: e.src_address == wanted)
    if args.destination:
        wanted, port = _party_test(args.destination, names, "to", port_allowed=True)
        if isinstance(wanted, str):
            tests.append(lambda e: e.dst_name == wanted)
        else:
            tests.append(lambda e: e.dst_address == wanted or e.backend_address == wanted)
        if port is not None:
            tests.append(lambda e: e.dst_port == port or e.backend_port == port)
    if args.verdict:
        tests.append(lambda e: e.verdict == args.verdict)
    if args.rule is not None:
        rule_id = 0 if args.rule == "default" else _rule_id(args.rule, policy)
        tests.append(lambda e: e.rule_id == rule_id)
    return lambda event: all(test(event) for test in tests)


def _rule_id(text: str, policy) -> int:
    if not text.isdigit():
        raise EventsUsageError(f"--rule wants a rule id (a number) or `default`, not {text!r}")
    rule_id = int(text)
    if policy is not None and rule_id and rule_id not in policy.rules:
        raise EventsUsageError(
            f"--rule {rule_id}: the running policy has rules 1 to {len(policy.rules)}"
        )
    return rule_id


# ---- events ---------------------------------------------------------------------------------


def _require_root(action: str) -> None:
    from ebmesh.cli import _require_root as require

    require(action)


def cmd_events(args) -> int:
    _require_root("ebmesh events")
    from ebmesh.runtime import event_hub, registry
    from ebmesh.runtime.events import decode_event, event_json

    record = choose_attachment(args.cgroup)
    policy = registry.read_policy(record.cgroup_id)
    matches = event_filter(args, policy)
    since_ns = None if args.since is None else time.monotonic_ns() - int(args.since * 1e9)
    if args.follow:
        last = args.last if args.last is not None else (None if args.since is not None else 0)
    else:
        last = None  # all that is recent: --last counts the matching ones, below
    show_last = args.last if args.last is not None else (None if args.since else DEFAULT_LAST)
    as_json = args.output == "json"
    out = sys.stdout

    def emit(events) -> None:
        if as_json:
            out.write("".join(json.dumps(event_json(e)) + "\n" for e in events))
        else:
            out.write("".join(f"{e}\n" for e in events))
        out.flush()

    def lost(item) -> None:
        if as_json:
            out.write(
                json.dumps({"lost": item.count, "datapath": item.datapath, "reader": item.dropped})
                + "\n"
            )
            out.flush()
        else:
            where = "by the datapath (ring full)" if item.datapath else "by this reader, too slow"
            print(f"ebmesh: {item.count} events lost {where}", file=sys.stderr, flush=True)

    stream = event_hub.EventStream(record, since_ns=since_ns, last=last, follow=args.follow)
    held: list = []  # the history, until its end: --last counts matching events
    in_history = True
    try:
        for item in stream:
            if isinstance(item, bytes):
                naming = policy or _no_names()
                batch = [decode_event(r, naming) for r in event_hub.records_of(item)]
                batch = [e for e in batch if matches(e)]
                if in_history:
                    held += batch
                elif batch:
                    emit(batch)
            elif isinstance(item, event_hub.EndOfHistory):
                if in_history:
                    emit(held[-show_last:] if show_last is not None and held else held)
                    held, in_history = [], False
            elif isinstance(item, event_hub.Lost):
                lost(item)
            elif isinstance(item, event_hub.PolicyChanged):
                policy = registry.read_policy(record.cgroup_id)
                matches = event_filter(args, policy)
    except event_hub.EventsUnavailable as error:
        if not args.follow or stream.last_ns is None and in_history:
            raise
        print(f"ebmesh: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        stream.close()
    return 0


def _no_names():
    from ebmesh.runtime.policy_record import PolicyRecord

    return PolicyRecord(digest="", source_name="", default_allow=False, mode_audit=False)


# ---- diff and apply --dry-run ---------------------------------------------------------------


def recent_events(record, since: float | None):
    """The running attachment's recent verdicts (its hub's history), or why there are none."""
    from ebmesh.runtime import event_hub, registry
    from ebmesh.runtime.events import decode_event

    policy = registry.read_policy(record.cgroup_id)
    since_ns = None if since is None else time.monotonic_ns() - int(since * 1e9)
    stream = event_hub.EventStream(record, since_ns=since_ns)
    events = []
    try:
        for item in stream:
            if isinstance(item, bytes) and policy is not None:
                events += [decode_event(r, policy) for r in event_hub.records_of(item)]
    except event_hub.EventsUnavailable as error:
        return [], str(error)
    finally:
        stream.close()
    if policy is None:
        return [], "the running policy's names are not recorded"
    return events, None


def compare(file: str, cgroup: str, since: float | None, output: str) -> int:
    """`ebmesh diff FILE --cgroup C`; also `ebmesh apply FILE --cgroup C --dry-run`."""
    from ebmesh import policy_diff
    from ebmesh.cli import _compile
    from ebmesh.cli_input import read_policy
    from ebmesh.runtime import cgroups, registry

    path = cgroups.resolve(cgroup)
    if not path.is_dir():
        raise EventsUsageError(f"{path} is not a cgroup directory")
    from ebmesh.errors import PolicyError

    policy = read_policy(file)
    try:
        new = _compile(policy)
    except PolicyError as error:  # an error of the file is trouble here, as diff(1) says
        print(error.render(), file=sys.stderr)
        return EXIT_TROUBLE
    record = registry.on_cgroup(path)
    running = registry.read_policy(record.cgroup_id) if record else None
    result = policy_diff.PolicyDiff(
        running_mesh=record.mesh if record else None, new_mesh=new.image.mesh
    )
    policy_diff.diff_rules(running, new, result)
    if record is None:
        result.flows_unavailable = f"no policy runs on {path}"
    else:
        events, why = recent_events(record, since)
        result.flows_unavailable = why
        if events:
            with new:
                policy_diff.diff_flows(events, new, result)
    if output == "json":
        print(json.dumps(policy_diff.to_json(result), indent=2))
    else:
        print(policy_diff.describe(result, policy.name, str(path)))
    return EXIT_DIFFERENT if result.differs else EXIT_SAME


def cmd_diff(args) -> int:
    _require_root("ebmesh diff")
    return compare(args.file, args.cgroup, args.since, args.output)


def dry_run(args) -> int:
    """`ebmesh apply FILE --cgroup C --dry-run`: the diff, and nothing attached."""
    _require_root("ebmesh apply --dry-run")
    output = getattr(args, "output", None)
    return compare(args.file, args.cgroup, None, output if output == "json" else "text")
