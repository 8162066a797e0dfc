"""Pausing Python's cyclic garbage collector for one call of a public entry point.

A 100,000-rule policy is millions of small objects. With the collector on,
CPython re-scans the growing heap each time enough objects have survived:
parse and check take 7.1 s instead of 4.9 s (medians, this 2-CPU VM), and
the IR and tables add more. The AST and the IR have no reference cycles, so
there is nothing for the collector to find: it is paused for the call.
Reference counting frees everything as usual.

Entered once per call, by the entry points only: `language.load` (what
`ebmesh check` runs) and `ebmesh.compile`, whose pause covers the whole
pipeline and which therefore loads through `parse_and_check`, not `load`.
Nothing below them pauses.

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
