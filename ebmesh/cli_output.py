"""Files the CLI writes: never over its own input, never half-written.

A compile that dies, or is killed, part way through writing must not leave a
truncated object where a good one was, nor a reader see one: each output is
written to a temporary file in its own directory and renamed over the path
(`write_atomically`, the object cache's own). That would replace a device or
a FIFO with a regular file, so those (`-o /dev/null`, a pipe) are written
into as they are; a symlink is followed, and its target replaced.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ebmesh.errors import EbmeshError
from ebmesh.toolchain.cache import write_atomically


class OutputError(EbmeshError):
    """An output cannot be written where it was asked for (a usage or environment error)."""


def same_file(path: Path, identity: os.stat_result | None) -> bool:
    """Whether `path` names the file `identity` describes (hard links and symlinks included)."""
    if identity is None:
        return False
    try:
        there = os.stat(path)
    except OSError:
        return False
    return (there.st_dev, there.st_ino) == (identity.st_dev, identity.st_ino)


def write_output(path: Path, data: bytes) -> None:
    """Write `data` to `path` whole or not at all (OutputError says why not)."""
    target = Path(os.path.realpath(path))
    if not target.parent.is_dir():
        raise OutputError(f"cannot write {path}: there is no directory {target.parent}")
    try:
        existing = os.stat(target)
    except FileNotFoundError:
        existing = None
    try:
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            raise OutputError(f"cannot write {path}: it is a directory")
        if existing is not None and not stat.S_ISREG(existing.st_mode):
            with open(target, "wb") as stream:
                stream.write(data)
            return
        mode = stat.S_IMODE(existing.st_mode) if existing else 0o666 & ~_umask()
        write_atomically(target, data, mode=mode)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror}") from None


def _umask() -> int:
    """The process's umask: what a new file's mode would lose. Reading it means
    setting it, so this is only for single-threaded callers like the CLI."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
