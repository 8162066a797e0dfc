"""One loaded copy of a policy's object: maps sized and filled, programs verified."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from ebmesh.datapath import abi
from ebmesh.datapath.image import DatapathImage
from ebmesh.loader import BpfObject, MapAccess
from ebmesh.runtime.balancing import Balancer, service_index_size

# Sockets the `accelerate on` shortcut holds at once (two per connection);
# a connection that finds it full uses the stack.
SHORTCUT_CAPACITY = 65536

EVENT_LEVELS = {"none": abi.EVENTS_NONE, "denied": abi.EVENTS_DENIED, "all": abi.EVENTS_ALL}


@dataclass
class LoadedImage:
    bpf: BpfObject
    balancer: Balancer
    shortcut_on: bool = False  # the sk_msg program is attached to this copy's shortcut map

    def close(self) -> None:
        self.bpf.close()


def home_netns() -> int:
    """The inode number of this process's network namespace."""
    return os.stat("/proc/self/ns/net").st_ino


def load_image(
    image: DatapathImage,
    *,
    programs: tuple[str, ...],
    attach_cgroup_id: int = 0,
    events: str = "all",
    backend_capacity: int | None = None,
    cgroup_slots: int = 1,
    shared_maps: dict[str, MapAccess] | None = None,
    progress: Callable[[str], None] | None = None,
) -> LoadedImage:
    """Open, size, configure, verify and fill a copy of the policy's object.

    Only `programs` are loaded. `cgroup_slots` sizes the cgroup index (a power
    of two). `shared_maps` are maps of a running copy this one takes over as
    they are (their state, not their policy: see Attachment.replace). The
    policy maps are full before this returns, so a program attached
    afterwards never sees a half-written policy. `progress` is told "load" and
    then "map fill" as each starts.
    """
    if events not in EVENT_LEVELS:
        raise ValueError(f"events must be one of {sorted(EVENT_LEVELS)}, not {events!r}")
    shared_maps = shared_maps or {}
    progress = progress or (lambda phase: None)
    progress("load")
    if "cgroup_index" in shared_maps:  # a map taken over keeps its size, and its index its mask
        cgroup_slots = shared_maps["cgroup_index"].max_entries
    bpf = BpfObject.open(image.object_bytes, "ebmesh")
    try:
        for name, program in bpf.programs.items():
            program.set_autoload(name in programs)
        for name, contents in image.maps.items():
            bpf.maps[name].set_max_entries(contents.max_entries)
        bpf.maps["rule_counters"].set_max_entries(image.rule_count + 1)
        bpf.maps["cgroup_index"].set_max_entries(cgroup_slots)
        bpf.maps["cgroup_workloads"].set_max_entries(cgroup_slots)
        capacity = backend_capacity or Balancer.capacity_for(image.services)
        if "backends" in shared_maps:
            capacity = shared_maps["backends"].max_entries
        service_slots = service_index_size(image.services)
        bpf.maps["service_index"].set_max_entries(service_slots)
        bpf.maps["services"].set_max_entries(max(1, len(image.services)))
        bpf.maps["service_entries"].set_max_entries(max(1, len(image.services)))
        bpf.maps["backends"].set_max_entries(capacity)
        bpf.maps["backend_counters"].set_max_entries(capacity)
        bpf.maps["backend_slots"].set_max_entries(2 * capacity)
        bpf.maps["shortcuts"].set_max_entries(SHORTCUT_CAPACITY)
        for name, running in shared_maps.items():
            bpf.maps[name].set_max_entries(running.max_entries)
            bpf.maps[name].reuse_fd(running.fd)
        config = abi.RuntimeConfig(
            attach_cgroup_id=attach_cgroup_id,
            events=EVENT_LEVELS[events],
            home_netns=home_netns(),
            cgroup_index_mask=cgroup_slots - 1,
            service_index_mask=service_slots - 1,
            v4_length_count=len(image.v4_prefix_lengths),
            v6_length_count=len(image.v6_prefix_lengths),
        )
        config.v4_lengths[: len(image.v4_prefix_lengths)] = image.v4_prefix_lengths
        config.v6_lengths[: len(image.v6_prefix_lengths)] = image.v6_prefix_lengths
        bpf.maps[".rodata.config"].set_initial_value(bytes(config))
        bpf.load()
        progress("map fill")
        for name, contents in image.maps.items():
            if contents.count:
                bpf.maps[name].update_batch(contents.keys, contents.values, contents.count)
        balancer = Balancer(bpf.maps, image.services, capacity, adopt="backends" in shared_maps)
    except BaseException:
        bpf.close()
        raise
    return LoadedImage(bpf, balancer)
