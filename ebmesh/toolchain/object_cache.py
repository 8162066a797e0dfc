"""Compiled objects kept between runs: bounded in size, the least recently used out.

`<cache>/objects/<key>.o`, one file per cache key (clang.py). Every distinct
policy is a new entry of about a megabyte, so a fuzz run or a long day of
edits would fill the disk: after each write the directory is cut back to
`EBMESH_CACHE_MAX_BYTES` (default 64 MiB) by deleting the entries used least
recently, as ccache and sccache do. A hit sets the entry's mtime to now, so
mtime orders the entries by last use (atime would too, but relatime and
noatime mounts do not keep it).

Several processes may compile, hit and evict at once. Readers take no lock:
an entry only ever appears by rename (write_atomically) and goes by unlink,
so a reader that opened it reads it whole, and one that finds it gone
compiles it again. Evictions are serialised by an exclusive flock on
`objects/.lock`, so that two cutting back at once do not both delete up to
the cap, and the last to run sees every entry written before it.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from ebmesh.errors import EnvironmentProblem
from ebmesh.toolchain.cache import cache_subdir, write_atomically

MAX_BYTES_VARIABLE = "EBMESH_CACHE_MAX_BYTES"
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# A writer's temporary file older than this belongs to a writer that died.
STALE_TEMPORARY_SECONDS = 3600

_SUFFIX = ".o"
_ELF_MAGIC = b"\x7fELF"


def max_bytes() -> int:
    """The cap: `$EBMESH_CACHE_MAX_BYTES` (a whole number of bytes; 0 keeps nothing)."""
    text = os.environ.get(MAX_BYTES_VARIABLE, "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise EnvironmentProblem(
            f"{MAX_BYTES_VARIABLE}={text!r} is not a size in bytes: set it to a whole number "
            f"(e.g. {DEFAULT_MAX_BYTES} for 64 MiB, 0 to keep no objects) or unset it"
        )
    return value


class ObjectCache:
    def __init__(self, directory: Path | None = None, limit: int | None = None):
        self.directory = directory if directory is not None else cache_subdir("objects")
        self.limit = limit if limit is not None else max_bytes()

    def path(self, key: str) -> Path:
        return self.directory / f"{key}{_SUFFIX}"

    def get(self, key: str) -> bytes | None:
        """The object cached under `key`, marked as just used; None if there is none."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        # Entries are written whole, so this only trips on tampering or disk damage.
        if not data.startswith(_ELF_MAGIC):
            return None
        try:
            os.utime(path)
        except FileNotFoundError:
            pass  # evicted since it was read: the bytes are still good
        return data

    def put(self, key: str, data: bytes) -> Path:
        """Keep `data` under `key`, then cut the cache back to its cap."""
        path = self.path(key)
        if self.limit > 0:
            write_atomically(path, data)
        self.evict()
        return path

    def evict(self) -> None:
        """Delete the least recently used entries until the rest fit in the cap, and
        the temporary files of writers that died."""
        with open(self.directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries, total = [], 0
            stale_before = time.time() - STALE_TEMPORARY_SECONDS
            for entry in os.scandir(self.directory):
                try:
                    stat = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # a writer's temporary file, just renamed
                if entry.name.startswith("."):
                    if entry.name.endswith(".tmp") and stat.st_mtime < stale_before:
                        _unlink(entry.path)
                elif entry.name.endswith(_SUFFIX):
                    entries.append((stat.st_mtime_ns, entry.name, stat.st_size))
                    total += stat.st_size
            for _, name, size in sorted(entries):
                if total <= self.limit:
                    break
                _unlink(self.directory / name)
                total -= size


def _unlink(path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
