"""Pausing Python's cyclic garbage collector while a large tree is built or walked.

A 100,000-rule policy is a few million small objects. With the collector on,
CPython re-scans the growing heap each time enough objects have survived,
which costs more than the parse itself (6.5 s against 2.5 s). The AST has no
reference cycles, so there is nothing for the collector to find: it is paused
for the duration. Reference counting frees everything as usual.

On resuming, the objects made meanwhile would all sit in the youngest
generation, and the next young collections would scan every one of them, twice,
before they age. `gc.freeze()` then `gc.unfreeze()` moves every tracked object
straight to the oldest generation instead, without scanning any; it is skipped
if someone else has frozen objects (unfreezing would undo their freeze).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            if gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()
