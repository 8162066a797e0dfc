"""`ebmesh ca init DIR` and `ebmesh ca show DIR`: the mTLS identity directory.

A command group of its own module, added to the parser by `ebmesh.cli`.
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

from ebmesh import cli_json
from ebmesh.cli_completion import directory
from ebmesh.cli_style import Style, add_output_flag, print_json
from ebmesh.mtls import IdentityDirectoryError, IdentityStore
from ebmesh.mtls.certificates import KEY_TYPES


def add_commands(commands) -> None:
    """Add the `ca` group to the CLI's subcommands."""
    ca = commands.add_parser("ca", help="the mTLS identity directory: issuer, bundle, SVIDs")
    group = ca.add_subparsers(dest="ca_command", required=True)

    init = group.add_parser(
        "init", help="create an issuer (ca.pem, ca.key) in DIR and add it to DIR/bundle.pem"
    )
    directory(init.add_argument("directory", metavar="DIR"))
    init.add_argument(
        "--trust-domain",
        help="SPIFFE trust domain (default: DIR's name, which is the mesh's name in "
        "the default directory /var/lib/ebmesh/MESH)",
    )
    init.add_argument("--key-type", choices=KEY_TYPES, default="ecdsa-p256")
    init.add_argument("--days", type=_positive, default=365, help="the CA's lifetime (default 365)")
    add_output_flag(init)
    init.set_defaults(run=cmd_init)

    show = group.add_parser("show", help="list DIR's CAs, issuer and SVIDs with their expiries")
    directory(show.add_argument("directory", metavar="DIR"))
    add_output_flag(show)
    show.set_defaults(run=cmd_show)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"a number of days above 0, not {text!r}")
    return int(text)


def cmd_init(args) -> int:
    directory = Path(args.directory)
    trust_domain = args.trust_domain or directory.resolve().name
    if args.trust_domain is None and not _valid_trust_domain(trust_domain):
        raise IdentityDirectoryError(
            f"the directory's name {trust_domain!r} cannot be the trust domain; "
            "give one with --trust-domain (lowercase letters, digits, '.', '-', '_')"
        )
    store = IdentityStore.create(
        directory, trust_domain, key_type=args.key_type, ca_lifetime=args.days * 86400.0
    )
    issuer = store.issuer()
    if Style.from_args(args).json:
        print_json(
            cli_json.ca_created(
                directory,
                trust_domain,
                args.key_type,
                store.inventory().issuer,
                len(store.bundle()),
            )
        )
        return 0
    print(
        f"{directory}: issuer for spiffe://{trust_domain} ({args.key_type}), "
        f"expires {_when(issuer.not_after)}; bundle.pem holds {len(store.bundle())} CA(s)"
    )
    return 0


def _valid_trust_domain(text: str) -> bool:
    from ebmesh.mtls import spiffe

    return spiffe.is_trust_domain(text)


def cmd_show(args) -> int:
    inventory = IdentityStore(args.directory).inventory()
    if Style.from_args(args).json:
        print_json(cli_json.ca_inventory(inventory))
        return 0
    now = time.time()
    print(f"{inventory.directory}")
    rows = [("trusted", c) for c in inventory.bundle]
    rows += [("issuer", inventory.issuer)] if inventory.issuer else []
    rows += [("SVID", c) for c in inventory.svids]
    for kind, info in rows:
        print(
            f"  {kind:<8} {info.path:<20} {info.name}\n"
            f"  {'':<8} {info.key_type}, expires {_when(info.not_after)} "
            f"({_remaining(info.not_after - now)}): {info.status}; sha256 {info.fingerprint[:16]}..."
        )
    if inventory.issuer is None:
        print("  no issuer: SVIDs must be delivered into svid/ (e.g. by SPIRE)")
    if not inventory.svids:
        print("  no SVIDs yet")
    if inventory.revoked:
        print(f"  revoked.txt: {inventory.revoked} certificate(s)")
    for problem in inventory.problems:
        print(f"  problem: {problem}")
    return 0


def _when(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _remaining(seconds: float) -> str:
    span = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if span >= size:
            amount = f"{span / size:.0f}{unit}"
            break
    else:
        amount = f"{span:.0f}s"
    return f"in {amount}" if seconds > 0 else f"{amount} ago"
