"""The policy file as the CLI sees it: read from a path, a FIFO or stdin (`-`),
and watched for edits under `ebmesh apply`."""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ebmesh.errors import EbmeshError

STDIN = "-"
STDIN_NAME = "<stdin>"  # what diagnostics call a policy read from stdin


class PolicyFileError(EbmeshError):
    """The policy file cannot be read: there is none, or no permission (a usage error)."""


@dataclass(frozen=True)
class PolicyInput:
    name: str  # the path as given, or <stdin>: what diagnostics call it
    data: bytes
    # A regular file, which can be watched and read again; None for stdin or a FIFO.
    path: Path | None
    # What was read (device and inode), so that no output is written over it.
    identity: os.stat_result | None


def read_policy(argument: str) -> PolicyInput:
    """The policy named on the command line: a file (a FIFO is read like one), or
    stdin for `-`. PolicyFileError says why it cannot be read."""
    if argument == STDIN:
        if sys.stdin is None:  # started with fd 0 closed
            raise PolicyFileError("no policy on stdin: it is closed")
        try:
            identity = os.fstat(sys.stdin.fileno())
            data = sys.stdin.buffer.read()
        except OSError as error:
            raise PolicyFileError(f"cannot read the policy from stdin: {error.strerror}") from None
        return PolicyInput(STDIN_NAME, data, None, identity)
    try:
        identity = os.stat(argument)
        if stat.S_ISDIR(identity.st_mode):
            raise PolicyFileError(f"no policy file at {argument}: it is a directory")
        with open(argument, "rb") as stream:
            data = stream.read()
    except FileNotFoundError:
        raise PolicyFileError(f"no policy file at {argument}") from None
    except OSError as error:
        raise PolicyFileError(f"cannot read the policy file {argument}: {error.strerror}") from None
    regular = stat.S_ISREG(identity.st_mode)
    return PolicyInput(argument, data, Path(argument) if regular else None, identity)


class FileChange(Enum):
    CHANGED = "changed"
    GONE = "gone"  # reported once, when it goes
    BACK = "back"  # it is there again: apply it


class FileWatch:
    """What became of a file since it was last looked at.

    Editors and config tools save by writing a new file and renaming it over
    the old, or by deleting the old first: for a moment there may be no file at
    all. So a missing file is a state to wait out, not an error, and a file is
    known by its inode as well as its size and mtime (a renamed-in file may
    carry an older mtime than the one it replaces).
    """

    def __init__(self, path: Path):
        self.path = path
        self._seen = self._signature()

    def _signature(self) -> tuple[int, int, int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:  # gone, or out of reach (a directory on its path replaced): not there
            return None
        return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns

    @property
    def present(self) -> bool:
        return self._signature() is not None

    def poll(self) -> FileChange | None:
        now = self._signature()
        if now == self._seen:
            return None
        was_there, self._seen = self._seen is not None, now
        if now is None:
            return FileChange.GONE
        return FileChange.CHANGED if was_there else FileChange.BACK
