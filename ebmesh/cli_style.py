"""How the CLI speaks: the output format (`-o text|json`), colour, and how much it
says on stderr (`-q`, `-v`).

Colour only on a terminal, never with `NO_COLOR` set to anything non-empty
(no-color.org) or `--no-color`; what is not a terminal gets the plain text,
byte for byte, so scripts and pipes see the same output whatever the flags.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass

OUTPUT_FORMATS = ("text", "json")

# What colours mean, the same in every command (rich style names).
ALLOW_STYLE, DENY_STYLE, HEADER_STYLE, NOTE_STYLE = "bold green", "bold red", "bold", "cyan"


def output_format(text: str) -> str:
    if text not in OUTPUT_FORMATS:
        raise argparse.ArgumentTypeError(
            f"-o/--output is the output format, text or json, not {text!r}"
        )
    return text


def object_or_format(text: str) -> str:
    """`compile`'s -o: the format, as everywhere; an object file name is told where it goes."""
    if text not in OUTPUT_FORMATS:
        raise argparse.ArgumentTypeError(
            f"-o/--output is the output format (text or json), not the object file: "
            f"write the object with --object {text}"
        )
    return text


def add_output_flag(parser: argparse.ArgumentParser, *, kind=output_format) -> None:
    parser.add_argument(
        "-o",
        "--output",
        type=kind,
        choices=OUTPUT_FORMATS,
        default="text",
        metavar="{text,json}",
        help="output format (default text; json is documented in docs/cli.md and stable)",
    )


def add_global_flags(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """-q, -v and --no-color, on the top parser and again on each command, so that they
    may come before or after the command (`ebmesh -q apply ...`, `ebmesh apply -q ...`).
    A command's copies leave unset what was not given: the top parser's value stays."""
    default = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default(False),
        help="print only data and errors (no progress or informational lines on stderr)",
    )
    loudness.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default(False),
        help="say more: the time each phase took, what each step did",
    )
    parser.add_argument(
        "--no-color",
        action="store_true",
        default=default(False),
        help="no colour even on a terminal (NO_COLOR=1 does the same)",
    )


def colour_wanted(stream, *, refused: bool) -> bool:
    """Colour on `stream`: a terminal, not `--no-color`, no NO_COLOR, a TERM that has colours."""
    if refused or os.environ.get("NO_COLOR", "") != "":
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    return _is_terminal(stream)


def _is_terminal(stream) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (ValueError, OSError):  # closed
        return False


@dataclass
class Style:
    quiet: bool = False
    verbose: bool = False
    colour_out: bool = False
    colour_err: bool = False
    terminal_err: bool = False  # progress is for a terminal, coloured or not
    format: str = "text"

    @classmethod
    def from_args(cls, args) -> Style:
        refused = getattr(args, "no_color", False)
        return cls(
            quiet=getattr(args, "quiet", False),
            verbose=getattr(args, "verbose", False),
            colour_out=colour_wanted(sys.stdout, refused=refused),
            colour_err=colour_wanted(sys.stderr, refused=refused),
            terminal_err=_is_terminal(sys.stderr),
            format=getattr(args, "output", "text") or "text",
        )

    @property
    def json(self) -> bool:
        return self.format == "json"

    # ---- stderr ------------------------------------------------------------------

    def info(self, message: str, *, prefix: bool = True) -> None:
        """An informational line (`ebmesh: ...`): dropped by -q."""
        if not self.quiet:
            print(f"ebmesh: {message}" if prefix else message, file=sys.stderr, flush=True)

    def detail(self, message: str) -> None:
        """Only with -v."""
        if self.verbose:
            print(f"  {message}", file=sys.stderr, flush=True)

    def error(self, message: str) -> None:
        """Always said, whatever -q."""
        print(f"ebmesh: {message}", file=sys.stderr, flush=True)

    # ---- stdout ------------------------------------------------------------------

    def paint(self, text: str, style: str, *, stream: str = "out") -> str:
        """`text` in `style` when that stream takes colour; else `text` as it is."""
        if not (self.colour_out if stream == "out" else self.colour_err):
            return text
        from rich.color import ColorSystem
        from rich.style import Style as RichStyle

        return RichStyle.parse(style).render(text, color_system=ColorSystem.STANDARD)

    def verdict(self, text: str, verdict: str) -> str:
        """A line whose verdict word (ALLOW, DENY) is coloured."""
        word = verdict.upper()
        style = ALLOW_STYLE if verdict.lower() == "allow" else DENY_STYLE
        return text.replace(word, self.paint(word, style), 1) if word in text else text

    def console(self, stream=None):
        """A rich Console on stdout (or `stream`) for tables and progress, on a terminal."""
        from rich.console import Console

        stream = stream or sys.stdout
        colour = self.colour_out if stream is sys.stdout else self.colour_err
        return Console(
            file=stream,
            color_system="standard" if colour else None,
            no_color=not colour,
            highlight=False,
            soft_wrap=True,
            emoji=False,
        )


def print_json(data) -> None:
    """One JSON document on stdout (indented: `jq` and people read it alike)."""
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
