"""Progress of a compile or an attach, on a terminal: shown once the work has taken
a second (quick work stays silent), one phase after another, then a one-line summary.

The compiler and the attachment only call a plain `progress(phase)` callable;
the display (rich) lives here, in the CLI. Never on a stderr that is not a
terminal, never with -q.
"""

from __future__ import annotations

import sys
import threading
import time

# What the user reads for each phase name of ebmesh.compiler.PHASES and Attachment.
LABELS = {
    "parse_and_check": "parse and check",
    "ir": "lower to IR",
    "tables": "build tables",
    "clang": "clang",
    "encode": "encode maps",
    "load": "load (verifier)",
    "map fill": "map fill",
    "attach": "attach",
}
SHOW_AFTER = 1.0  # seconds


class PhaseProgress:
    """`phase(name)` as each phase starts; `finish()` when done (idempotent)."""

    def __init__(self, what: str, *, enabled: bool, colour: bool):
        self.what, self._enabled, self._colour = what, enabled, colour
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._phases: list[tuple[str, float]] = []  # (name, when it started)
        self._display = None
        self._task = None
        self._finished = False
        self._timer = None
        if enabled:
            self._timer = threading.Timer(SHOW_AFTER, self._show)
            self._timer.daemon = True
            self._timer.start()

    @classmethod
    def for_style(cls, what: str, style) -> PhaseProgress:
        return cls(what, enabled=style.terminal_err and not style.quiet, colour=style.colour_err)

    def phase(self, name: str) -> None:
        with self._lock:
            if self._finished:
                return  # a later reload of the attachment: no progress for it
            self._phases.append((name, time.monotonic()))
            if self._display is not None:
                self._display.update(self._task, description=self._description())

    def _description(self) -> str:
        name = self._phases[-1][0] if self._phases else "starting"
        return f"{self.what}: {LABELS.get(name, name)}"

    def _show(self) -> None:
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with self._lock:
            if self._finished:
                return
            console = Console(
                file=sys.stderr,
                color_system="standard" if self._colour else None,
                no_color=not self._colour,
                highlight=False,
            )
            self._display = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            )
            self._task = self._display.add_task(self._description(), total=None)
            self._display.start()

    def finish(self) -> str | None:
        """Stop; the one-line summary if progress was shown (else None: it was quick)."""
        with self._lock:
            if self._finished:
                return None
            self._finished = True
            if self._timer is not None:
                self._timer.cancel()
            if self._display is None:
                return None
            self._display.stop()
        ended = time.monotonic()
        spans = []
        for index, (name, began) in enumerate(self._phases):
            until = self._phases[index + 1][1] if index + 1 < len(self._phases) else ended
            spans.append(f"{LABELS.get(name, name)} {until - began:.2f}s")
        return f"{self.what} in {ended - self._started:.2f}s ({', '.join(spans)})"
