"""Where built artefacts live between runs, and how files get there safely.

Several ebmesh processes may build at once (tests, a daemon, the CLI), so a
file in the cache is only ever created by renaming a finished temporary file
over it: a reader sees the old content, the new content, or nothing, never half
a file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from functools import lru_cache
from pathlib import Path

from ebmesh.errors import EnvironmentProblem


def cache_dir() -> Path:
    """`$EBMESH_CACHE_DIR`, else `$XDG_CACHE_HOME/ebmesh`, else `~/.cache/ebmesh`.

    The directory is not created here; `cache_subdir` does that on first use.
    """
    explicit = os.environ.get("EBMESH_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says a relative path in these variables is invalid and must be ignored.
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "ebmesh"
    return Path.home() / ".cache" / "ebmesh"


def cache_subdir(*parts: str) -> Path:
    """`<cache>/<parts...>`, created if missing."""
    path = cache_dir().joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EnvironmentProblem(
            f"cannot create the ebmesh cache directory {path}: {err.strerror}. "
            "Set EBMESH_CACHE_DIR to a writable directory."
        ) from err
    return path


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` so that no reader ever sees a partial file.

    Two processes racing on the same path both succeed; the last rename wins,
    and since cache entries are content-addressed both wrote the same bytes.
    `mode` is the new file's permissions (mkstemp's own 0600 is for secrets;
    cached files are not).
    """
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's content, remembered while the file is unchanged.

    vmlinux BTF and vmlinux.h are megabytes and are hashed for every build; the
    (size, mtime, inode) triple is a cheap guard against re-reading them.
    """
    stat = path.stat()
    return _sha256_of(str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)


@lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int, inode: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
