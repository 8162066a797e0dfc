"""Attachments this process keeps alive until `detach()`, `close()` or its end.

`ebmesh.compile(p).attach(cg)` as a bare statement is the library's headline
usage: the caller keeps no reference, so without this registry the attachment
would be garbage-collected, and detached, before the next line. A policy
stays where it was put until it is taken away (as `tc` filters and
`bpftool cgroup attach` do, for the life of their holder), so every live
attachment is held here and let go by `detach()` or `close()`.

At the end of the process the ones left are closed in the reverse of their
order of attaching: an owned attachment is detached, a pinned one stays (its
pins hold it). A process that dies without running its exit handlers (kill
-9, an OOM kill) closes its file descriptors, and the kernel detaches the
owned links all the same. A child made by `os.fork()` shares its parent's
links: it must not detach them at its exit, so only the process that
attached does (which is also why an Attachment has no `__del__`: a forked
child's finalisers would detach its parent's policy).
"""

from __future__ import annotations

import atexit
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ebmesh.runtime.attachment import Attachment

_held: dict[int, Attachment] = {}  # by id(): an Attachment need not be hashable
_owner = os.getpid()


def hold(attachment: Attachment) -> None:
    _held[id(attachment)] = attachment


def release(attachment: Attachment) -> None:
    _held.pop(id(attachment), None)


def held() -> list[Attachment]:
    """The attachments this process holds, oldest first."""
    return list(_held.values())


@atexit.register
def _close_at_exit() -> None:
    if os.getpid() != _owner:
        return  # a forked child: its copies of the fds close as it ends, detaching nothing
    for attachment in reversed(held()):
        attachment.close()
