"""Services' backends in the kernel: their alias tables, and changing them live.

Each service has two slot tables (generations). A change writes the idle
one, then flips the service's entry in one map update: a connect in flight
reads either table whole. Backend ids are never reused while a free one has
not waited its turn, so a reader holding an old table never lands on a
stranger. (The alias tables themselves: ebmesh.datapath.services.)
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from ebmesh.datapath import abi
from ebmesh.datapath.limits import MAX_WEIGHT
from ebmesh.datapath.parties import IPAddress, Service, endpoint_text
from ebmesh.datapath.services import alias_table, service_key, service_slot
from ebmesh.errors import EbmeshError
from ebmesh.loader import possible_cpus

Endpoint = tuple[IPAddress, int]


class ServiceUpdateError(EbmeshError):
    """A change of backends that cannot be made (unknown service, wrong family, no room)."""


def parse_backend(text: str) -> Endpoint:
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


def service_index_size(services: tuple[Service, ...]) -> int:
    """Slots of the datapath's service index: a power of two, at least twice the services."""
    return max(1, 1 << (2 * len(services) - 1).bit_length()) if services else 1


@dataclass
class _ServiceState:
    service: Service
    index: int
    generation: int = 0
    slot_counts: list[int] = field(default_factory=lambda: [0, 0])  # per generation
    ids: dict[Endpoint, int] = field(default_factory=dict)  # backend -> backend id
    weights: dict[Endpoint, int] = field(default_factory=dict)


class Balancer:
    """Writes services, backends and slot tables into one loaded object's maps."""

    def __init__(self, maps, services: tuple[Service, ...], capacity: int, *, adopt: bool = False):
        """`adopt`: the maps are a running (pinned) copy's: carry on from what they hold,
        so that connects in flight keep a whole table and counters go on."""
        self._entries = maps["service_entries"]
        self._backends = maps["backends"]
        self._slots = maps["backend_slots"]
        self._counters = maps["backend_counters"]
        self.capacity = capacity
        held = self._held_backends() if adopt else {}
        self._free: deque[int] = deque(i for i in range(capacity) if i not in held.values())
        self._state: dict[str, _ServiceState] = {}
        for index, service in enumerate(services):
            state = self._state[service.name] = _ServiceState(service, index, generation=1)
            if adopt:
                state.generation = self._live_generation(index)
                state.ids = {
                    endpoint: backend_id
                    for (identity, endpoint), backend_id in held.items()
                    if identity == service.identity
                }
            self._install(state, [((b.address, b.port), b.weight) for b in service.backends])
        # The index is written last: until then no connect finds a service half set up.
        _write_service_index(maps["service_index"], maps["services"], services)

    @staticmethod
    def capacity_for(services: tuple[Service, ...]) -> int:
        """Room for every declared backend four times over, and 1,024 more for live changes."""
        return 4 * sum(len(s.backends) for s in services) + 1024

    def set_backends(self, service: str, backends: Mapping[str, int]) -> None:
        state = self._state.get(service)
        if state is None:
            known = ", ".join(self._state) or "none"
            raise ServiceUpdateError(f"no service named {service!r} (services: {known})")
        wanted: list[tuple[Endpoint, int]] = []
        seen: set[Endpoint] = set()
        for text, weight in backends.items():
            endpoint = parse_backend(text)
            if endpoint in seen:  # [::1]:80 and [0::1]:80 are one backend
                raise ServiceUpdateError(f"backend {text} is given twice")
            seen.add(endpoint)
            if endpoint[0].version != state.service.family:
                raise ServiceUpdateError(
                    f"backend {text} is IPv{endpoint[0].version}, service {service} is "
                    f"IPv{state.service.family}"
                )
            if not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
                raise ServiceUpdateError(
                    f"backend {text}: weight {weight!r} is outside 0-{MAX_WEIGHT}"
                )
            wanted.append((endpoint, weight))
        self._install(state, wanted)

    def _held_backends(self) -> dict[tuple[int, Endpoint], int]:
        """(service identity, endpoint) -> backend id, for every live backend in the map."""
        held = {}
        packer = abi.Backend.packer()
        for backend_id in range(self.capacity):
            value = self._backends.lookup(_index(backend_id))
            if value is None:
                continue
            *words, port, family, flags, service = packer.unpack(value)
            if not flags & abi.BACKEND_LIVE:
                continue
            address = abi.address_from_words(family, words)
            held[(service, (address, abi.network_order_port(port)))] = backend_id
        return held

    def _live_generation(self, index: int) -> int:
        value = self._entries.lookup(_index(index))
        return abi.ServiceEntry.from_buffer_copy(value).generation if value else 1

    def _install(self, state: _ServiceState, backends: list[tuple[Endpoint, int]]) -> None:
        service = state.service
        new_keys = {endpoint for endpoint, _ in backends}
        needed = len(new_keys - set(state.ids))
        if needed > len(self._free):
            raise ServiceUpdateError(
                f"service {service.name}: no room for {needed} more backends "
                f"(capacity {self.capacity}; attach with a larger backend_capacity)"
            )

        for endpoint, weight in backends:
            if endpoint not in state.ids:
                state.ids[endpoint] = backend_id = self._free.popleft()
                self._counters.update_percpu(_index(backend_id), [bytes(8)] * possible_cpus())

            state.weights[endpoint] = weight
            self._write_backend(state.ids[endpoint], endpoint, service, live=True)

        usable = [(state.ids[endpoint], w) for endpoint, w in backends if w > 0]
        generation = 1 - state.generation
        slot_key, slot_value = abi.SlotKey.packer(), abi.BackendSlot.packer()
        table = alias_table([w for _, w in usable]) if usable else []
        for slot, (primary, alias, threshold) in enumerate(table):
            self._slots.update(
                slot_key.pack(service.identity, generation, slot),
                slot_value.pack(usable[primary][0], usable[alias][0], threshold, 0),
            )
        self._entries.update(
            _index(state.index),
            abi.ServiceEntry.packer().pack(
                *abi.ServiceKey.packer().unpack(service_key(service)),
                service.identity,
                generation,
                len(table),
                state.index,
            ),
        )
        # Slots beyond the live count are unreachable: delete what the older table left.
        for slot in range(len(table), state.slot_counts[generation]):
            self._slots.delete(slot_key.pack(service.identity, generation, slot))
        state.generation = generation
        state.slot_counts[generation] = len(table)

        for endpoint in list(state.ids):  # gone from the service: retire after the flip
            if endpoint not in new_keys:
                backend_id = state.ids.pop(endpoint)
                state.weights.pop(endpoint, None)
                self._write_backend(backend_id, endpoint, service, live=False)
                self._free.append(backend_id)

    def _write_backend(self, backend_id: int, endpoint: Endpoint, service: Service, live: bool):
        address, port = endpoint
        self._backends.update(
            _index(backend_id),
            abi.Backend.packer().pack(
                *abi.address_words(address.packed),
                abi.network_order_port(port),
                service.family,
                abi.BACKEND_LIVE if live else 0,
                service.identity if live else 0,
            ),
        )

    def backends(self, service: str) -> dict[str, int]:
        """The service's backends and weights, as set."""
        return {endpoint_text(*e): w for e, w in self._state[service].weights.items()}

    def counters(self) -> dict[str, dict[str, int]]:
        """Per service, per current backend: connections (TCP) or sockets (UDP) sent to it."""
        result = {}
        for name, state in self._state.items():
            per_backend = {}
            for endpoint, backend_id in state.ids.items():
                values = self._counters.lookup_percpu(_index(backend_id)) or []
                per_backend[endpoint_text(*endpoint)] = sum(
                    int.from_bytes(v[:8], "little") for v in values
                )
            result[name] = per_backend
        return result


def _index(number: int) -> bytes:
    return number.to_bytes(4, "little")


def _write_service_index(index_map, overflow_map, services: tuple[Service, ...]) -> None:
    """Each service at its slot of the direct-mapped index; a service whose slot is
    taken goes to the overflow hash, and its slot says so (bpf_src/tables.h)."""
    mask = index_map.max_entries - 1
    slots: dict[int, tuple[bytes, int, int]] = {}  # slot -> (key, index, flags)
    slot_packer = abi.ServiceSlot.packer()
    key_fields = abi.ServiceKey.packer()
    for number, service in enumerate(services):
        key = service_key(service)
        slot = service_slot(key, mask)
        if slot not in slots:
            slots[slot] = (key, number, abi.SERVICE_SLOT_USED)
            continue
        overflow_map.update(key, _index(number))
        held_key, held_number, flags = slots[slot]
        slots[slot] = (held_key, held_number, flags | abi.SERVICE_SLOT_OVERFLOW)
    for slot, (key, number, flags) in slots.items():
        index_map.update(_index(slot), slot_packer.pack(*key_fields.unpack(key), number, flags))
