"""TIME_WAIT off for the parts that open connections by the tens of thousands.

Every connection of a connection-rate loop leaves a TIME_WAIT socket for 60 s,
and they share the kernel's one established-socket hash with every other
connection of the machine. Measured here, the same loop runs ~7% slower with
150,000 of them around (the sidecar pairs leave three per connection, one per
leg) than with its own 14,000, and once the table reaches tcp_max_tw_buckets
(131,072 here) the kernel stops keeping them at all. What a configuration
measured thus depended on which configurations ran in the minute before it.
With net.ipv4.tcp_max_tw_buckets at 0 no closing socket enters TIME_WAIT
(it is freed at once, as on a full table), so every configuration starts
from the same empty table. Nothing of the mesh touches TIME_WAIT: the setting
removes a cost every configuration pays alike, which leaves the mesh's own
share of a connection larger, not smaller.

The sysctl belongs to the network namespace: it is the machine's here, and it
is restored when the block ends (an exception, Ctrl-C or SIGTERM included;
only a SIGKILL of the benchmark leaves it at 0, and `sysctl
net.ipv4.tcp_max_tw_buckets=131072` undoes it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

MAX_TW_BUCKETS = Path("/proc/sys/net/ipv4/tcp_max_tw_buckets")


@contextlib.contextmanager
def time_wait_off() -> Iterator[int]:
    """tcp_max_tw_buckets = 0 for the block; yields the value it restores."""
    original = int(MAX_TW_BUCKETS.read_text())
    MAX_TW_BUCKETS.write_text("0")
    try:
        yield original
    finally:
        MAX_TW_BUCKETS.write_text(str(original))
