"""Pinning an attachment's links and maps in bpffs, so that its policy outlives every process.

Under /sys/fs/bpf/ebmesh/<mesh>/: `links/<program>` keeps each hook attached
with no process holding it (as Cilium's datapath survives its agent), and
`maps/<map>` keeps the state, counters and event ring a later process takes
over. bpffs is mounted here if it is not yet: only pinning needs it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ebmesh.errors import AttachError
from ebmesh.loader import BpfLink, MapHandle, ensure_bpffs


def links_dir(root: Path) -> Path:
    return root / "links"


def maps_dir(root: Path) -> Path:
    return root / "maps"


def prepare(root: Path) -> None:
    """`root` is <bpffs>/ebmesh/<mesh>."""
    ensure_bpffs(root.parent.parent)
    for directory in (links_dir(root), maps_dir(root)):
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AttachError(f"cannot make the pin directory {directory}: {exc.strerror}") from exc


def pin_link(root: Path, name: str, link: BpfLink) -> None:
    _unpin(links_dir(root) / name)
    link.pin(links_dir(root) / name)


def pin_map(root: Path, name: str, bpf_map) -> None:
    _unpin(maps_dir(root) / name)
    bpf_map.pin(maps_dir(root) / name)


def pinned_links(root: Path) -> dict[str, BpfLink]:
    return {path.name: BpfLink.open_pinned(path) for path in _entries(links_dir(root))}


def pinned_maps(root: Path) -> dict[str, MapHandle]:
    return {path.name: MapHandle.from_pinned(path) for path in _entries(maps_dir(root))}


def unpin_link(root: Path, name: str) -> None:
    _unpin(links_dir(root) / name)


def remove(root: Path) -> None:
    """Every pin of the attachment, and its directories (ebmesh's own, once empty)."""
    for directory in (links_dir(root), maps_dir(root)):
        for path in _entries(directory):
            _unpin(path)
        _rmdir(directory)
    _rmdir(root)
    _rmdir(root.parent)


def _entries(directory: Path) -> list[Path]:
    try:
        return sorted(directory.iterdir())
    except FileNotFoundError:
        return []


def _unpin(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.ENOTEMPTY:
            raise
