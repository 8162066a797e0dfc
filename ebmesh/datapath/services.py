"""Services in the datapath's terms: their map key, and the alias tables that weigh backends.

A service's backends of nonzero weight become the slots of an alias table
(Walker; Vose's construction in exact integers): the datapath draws a slot
uniformly and keeps its primary with probability threshold / 2**32, else
takes its alias. Every backend is then chosen with probability
weight / sum(weights) to within 2**-32, in O(1) whatever their number.
"""

from __future__ import annotations

import struct

from ebmesh.datapath import abi
from ebmesh.datapath.parties import Service

_U32 = 1 << 32
_SERVICE_KEY_SEED = 0x5E41CE5  # as bpf_src/tables.h seeds service_key_hash()


def service_key(service: Service) -> bytes:
    """The packed `struct service_key` of the service's VIP, port and protocol."""
    return abi.ServiceKey.packer().pack(
        service.family,
        int(service.protocol),
        abi.network_order_port(service.port),
        *abi.address_words(service.vip.packed),
    )


def mix32(hash_: int, word: int) -> int:
    """bpf_src/tables.h's mix32(), on Python ints."""
    hash_ = ((hash_ ^ word) * 0x9E3779B1) & 0xFFFFFFFF
    return hash_ ^ (hash_ >> 16)


def service_slot(key: bytes, mask: int) -> int:
    """Where the datapath's service_at() probes for a packed `struct service_key`."""
    hash_ = _SERVICE_KEY_SEED
    for (word,) in struct.iter_unpack("<I", key):
        hash_ = mix32(hash_, word)
    return hash_ & mask


def alias_table(weights: list[int]) -> list[tuple[int, int, int]]:
    """(primary, alias, threshold) per slot for positive integer `weights`.

    Slot i keeps backend i with probability threshold / 2**32, else takes
    backend alias. Built in exact integers: a slot's capacity is sum(weights),
    backend i brings weights[i] * n of it.
    """
    count, total = len(weights), sum(weights)
    share = [weight * count for weight in weights]
    kept = [total] * count
    alias = list(range(count))
    small = [i for i, s in enumerate(share) if s < total]
    large = [i for i, s in enumerate(share) if s >= total]
    while small and large:
        under, over = small.pop(), large.pop()
        kept[under], alias[under] = share[under], over
        share[over] -= total - share[under]
        (small if share[over] < total else large).append(over)
    slots = []
    for i in range(count):
        if kept[i] >= total:
            slots.append((i, i, _U32 - 1))
        else:
            slots.append((i, alias[i], kept[i] * _U32 // total))
    return slots
