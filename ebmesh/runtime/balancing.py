"""Services' backends in the kernel: alias tables, and changing them live.

A service's backends of nonzero weight become the slots of an alias table
(Walker; Vose's construction in exact integers): the datapath draws a slot
uniformly and keeps its primary with probability threshold / 2**32, else
takes its alias. Every backend is then chosen with probability
weight / sum(weights) to within 2**-32, in O(1) whatever their number.

Each service has two slot tables (generations). A change writes the idle
one, then flips the service's entry in one map update: a connect in flight
reads either table whole. Backend ids are never reused while a free one has
not waited its turn, so a reader holding an old table never lands on a
stranger.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from ebmesh.errors import EbmeshError
from ebmesh.loader import possible_cpus
from ebmesh.runtime import abi

MAX_WEIGHT = 65535
_U32 = 1 << 32


class ServiceUpdateError(EbmeshError):
    """A change of backends that cannot be made (unknown service, wrong family, no room)."""


@dataclass(frozen=True)
class ServiceSpec:
    """A service as the runtime needs it: numbers and packed addresses."""

    identity: int
    name: str
    family: int  # 4 | 6
    protocol: int  # 6 | 17
    port: int
    vip: bytes  # packed
    backends: tuple[tuple[bytes, int, int], ...]  # (packed address, port, weight)

    @property
    def key(self) -> bytes:
        return abi.ServiceKey.packer().pack(
            self.family,
            self.protocol,
            abi.network_order_port(self.port),
            *abi.address_words(self.vip),
        )


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


def parse_backend(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """`10.0.2.10:8080` or `[fd00::1]:8080`."""
    host, separator, port = text.rpartition(":")
    if not separator or not port.isdigit():
        raise ServiceUpdateError(f"backend {text!r} is not ADDRESS:PORT")
    try:
        address = ipaddress.ip_address(
            host[1:-1] if host.startswith("[") and host.endswith("]") else host
        )
    except ValueError:
        raise ServiceUpdateError(f"backend {text!r}: {host!r} is not an IP address") from None
    if not 0 <= int(port) <= 65535:
        raise ServiceUpdateError(f"backend {text!r}: port outside 0-65535")
    return address, int(port)


@dataclass
class _ServiceState:
    spec: ServiceSpec
    generation: int = 0
    slot_counts: list[int] = field(default_factory=lambda: [0, 0])  # per generation
    ids: dict[tuple[bytes, int], int] = field(default_factory=dict)  # (address, port) -> backend id
    weights: dict[tuple[bytes, int], int] = field(default_factory=dict)


class Balancer:
    """Writes services, backends and slot tables into one loaded object's maps."""

    def __init__(self, maps, services: tuple[ServiceSpec, ...], capacity: int):
        self._services_map = maps["services"]
        self._backends = maps["backends"]
        self._slots = maps["backend_slots"]
        self._counters = maps["backend_counters"]
        self.capacity = capacity
        self._free: deque[int] = deque(range(capacity))
        self._state: dict[str, _ServiceState] = {}
        for spec in services:
            state = self._state[spec.name] = _ServiceState(spec, generation=1)
            self._install(state, list(spec.backends))

    @staticmethod
    def capacity_for(services: tuple[ServiceSpec, ...]) -> int:
        """Room for every declared backend four times over, and 1,024 more for live changes."""
        return 4 * sum(len(s.backends) for s in services) + 1024

    def set_backends(self, service: str, backends: Mapping[str, int]) -> None:
        state = self._state.get(service)
        if state is None:
            known = ", ".join(self._state) or "none"
            raise ServiceUpdateError(f"no service named {service!r} (services: {known})")
        wanted, seen = [], set()
        for text, weight in backends.items():
            address, port = parse_backend(text)
            if (address, port) in seen:  # [::1]:80 and [0::1]:80 are one backend
                raise ServiceUpdateError(f"backend {text} is given twice")
            seen.add((address, port))
            if address.version != state.spec.family:
                raise ServiceUpdateError(
                    f"backend {text} is IPv{address.version}, service {service} is IPv{state.spec.family}"
                )
            if not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
                raise ServiceUpdateError(
                    f"backend {text}: weight {weight!r} is outside 0-{MAX_WEIGHT}"
                )
            wanted.append((address.packed, port, weight))
        self._install(state, wanted)

    def _install(self, state: _ServiceState, backends: list[tuple[bytes, int, int]]) -> None:
        spec = state.spec
        new_keys = {(address, port) for address, port, _ in backends}
        needed = len(new_keys - set(state.ids))
        if needed > len(self._free):
            raise ServiceUpdateError(
                f"service {spec.name}: no room for {needed} more backends "
                f"(capacity {self.capacity}; attach with a larger backend_capacity)"
            )

        backend_packer = abi.Backend.packer()
        for address, port, weight in backends:
            key = (address, port)
            if key not in state.ids:
                state.ids[key] = backend_id = self._free.popleft()
                self._counters.update_percpu(_index(backend_id), [bytes(8)] * possible_cpus())
            state.weights[key] = weight
            self._backends.update(
                _index(state.ids[key]),
                backend_packer.pack(
                    *abi.address_words(address),
                    abi.network_order_port(port),
                    spec.family,
                    abi.BACKEND_LIVE,
                    spec.identity,
                ),
            )

        usable = [(state.ids[(a, p)], w) for a, p, w in backends if w > 0]
        generation = 1 - state.generation
        slot_key, slot_value = abi.SlotKey.packer(), abi.BackendSlot.packer()
        table = alias_table([w for _, w in usable]) if usable else []
        for slot, (primary, alias, threshold) in enumerate(table):
            self._slots.update(
                slot_key.pack(spec.identity, generation, slot),
                slot_value.pack(usable[primary][0], usable[alias][0], threshold, 0),
            )
        self._services_map.update(
            spec.key, abi.ServiceInfo.packer().pack(spec.identity, 0, generation, len(table))
        )
        for slot in range(
            len(table), state.slot_counts[generation]
        ):  # beyond the live count: unreachable
            self._slots.delete(slot_key.pack(spec.identity, generation, slot))
        state.generation = generation
        state.slot_counts[generation] = len(table)

        for key in list(state.ids):  # gone from the service: retire after the flip
            if key not in new_keys:
                backend_id = state.ids.pop(key)
                state.weights.pop(key, None)
                address, port = key
                self._backends.update(
                    _index(backend_id),
                    backend_packer.pack(
                        *abi.address_words(address), abi.network_order_port(port), spec.family, 0, 0
                    ),
                )
                self._free.append(backend_id)

    def backends(self, service: str) -> dict[str, int]:
        """The service's backends and weights, as set."""
        return {backend_text(a, p): w for (a, p), w in self._state[service].weights.items()}

    def counters(self) -> dict[str, dict[str, int]]:
        """Per service, per current backend: connections (TCP) or sockets (UDP) sent to it."""
        result = {}
        for name, state in self._state.items():
            per_backend = {}
            for (address, port), backend_id in state.ids.items():
                values = self._counters.lookup_percpu(_index(backend_id)) or []
                per_backend[backend_text(address, port)] = sum(
                    int.from_bytes(v[:8], "little") for v in values
                )
            result[name] = per_backend
        return result


def _index(number: int) -> bytes:
    return number.to_bytes(4, "little")


def backend_text(address: bytes, port: int) -> str:
    """`10.0.2.10:8080` or `[fd00::1]:8080` for a packed address."""
    host = ipaddress.ip_address(address)
    return f"[{host}]:{port}" if host.version == 6 else f"{host}:{port}"
