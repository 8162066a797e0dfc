"""The policy file as the CLI sees it: watched for edits under `ebmesh apply`."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path


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
