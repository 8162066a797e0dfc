"""`ebmesh completion bash|zsh`: a completion script made by shtab from the CLI's own
argparse parser, so that it always knows every command, flag and choice.

    source <(ebmesh completion bash)                      # this shell
    ebmesh completion bash > /etc/bash_completion.d/ebmesh
    ebmesh completion zsh > "${fpath[1]}/_ebmesh"
"""

from __future__ import annotations

import sys

SHELLS = ("bash", "zsh")


def policy_file(action) -> None:
    """Complete this argument with file names."""
    import shtab

    action.complete = shtab.FILE


def directory(action) -> None:
    import shtab

    action.complete = shtab.DIRECTORY


def add_commands(commands) -> None:
    completion = commands.add_parser(
        "completion",
        help="print a shell completion script: source <(ebmesh completion bash)",
        description="Print the completion script for SHELL. bash: `source <(ebmesh completion "
        "bash)`, or save it in /etc/bash_completion.d/ebmesh; zsh: save it as _ebmesh in a "
        'directory of $fpath (`ebmesh completion zsh > "${fpath[1]}/_ebmesh"`).',
    )
    completion.add_argument("shell", choices=SHELLS)
    completion.set_defaults(run=cmd_completion)


def cmd_completion(args) -> int:
    import shtab

    from ebmesh.cli import build_parser

    sys.stdout.write(shtab.complete(build_parser(), shell=args.shell))
    return 0
