"""The datapath's binary interface: ctypes mirrors of bpf_src/ebmesh_types.h.

One class per C struct, field for field. tests/bytecode checks each against
the BTF of the built object, so a change on one side that is not made on the
other fails the suite. Packing many entries goes through `struct.Struct`
formats derived from these classes, which is much faster than ctypes.
"""

from __future__ import annotations

import ctypes
import ipaddress
import struct
from functools import cache

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64
Address = u32 * 4  # network byte order, IPv4 in word 0

NO_IDENTITY = 0
OUTSIDE_ATTACHMENT = 0xFFFFFFFF
TOO_DEEP = 0xFFFFFFFE
NO_RULE = 0xFFFFFFFF

FAMILY_IPV4 = 4
FAMILY_IPV6 = 6

VERDICT_DENY = 0
VERDICT_ALLOW = 1

DIRECTION_EGRESS = 0
DIRECTION_INGRESS = 1

DECISION_BY_DEFAULT = 1 << 0
DECISION_WOULD_DENY = 1 << 1
DECISION_NEEDS_MTLS = 1 << 2
DECISION_AUDIT_MATCH = 1 << 3
DECISION_NO_BACKEND = 1 << 4
DECISION_TOO_DEEP = 1 << 5
DECISION_UNAUTHENTICATED = 1 << 6

BACKEND_LIVE = 1 << 0

FLOW_SRC_ADDRESS_KNOWN = 1 << 0
FLOW_SRC_BY_ADDRESS = 1 << 1
FLOW_DST_BY_ADDRESS = 1 << 2
FLOW_DST_IS_SERVICE = 1 << 3
FLOW_SRC_BY_CGROUP = 1 << 4
FLOW_DST_BY_CGROUP = 1 << 5

SIDE_ANY = 0x40000000
SIDE_IDENTITY = 0x80000000
SIDE_CLASS = 0xC0000000
SIDE_VALUE_MASK = 0x3FFFFFFF

SIDE_KIND_IDENTITY = 0
SIDE_KIND_ANY = 1
SIDE_KIND_CLASS = 2

IDENTITY_MTLS_REQUIRED = 1 << 0

PROTO_INDEX_TCP = 0
PROTO_INDEX_UDP = 1

EVENTS_NONE = 0
EVENTS_DENIED = 1
EVENTS_ALL = 2


class Struct(ctypes.Structure):
    """A C struct with no implicit padding, packable in bulk."""

    @classmethod
    def packer(cls) -> struct.Struct:
        return struct_format(cls)


class AddressKey(Struct):
    _fields_ = [("family", u8), ("length", u8), ("reserved", u16), ("addr", Address)]


class AddressClass(Struct):
    _fields_ = [("class_id", u32), ("workload", u32), ("src_start", u32), ("dst_start", u32)]


class ClassLinks(Struct):
    _fields_ = [("src_parent", u32), ("dst_parent", u32)]


class RulePairKey(Struct):
    _fields_ = [("src", u32), ("dst", u32)]


class PortTable(Struct):
    _fields_ = [("first", u32 * 2), ("count", u32 * 2)]


class RuleSet(Struct):
    _fields_ = [("deny", u32), ("allow", u32), ("mtls", u32), ("audit", u32)]


class PortInterval(Struct):
    _fields_ = [("low", u16), ("high", u16), ("reserved", u32), ("rules", RuleSet)]


class IdentityInfo(Struct):
    _fields_ = [("flags", u32)]


class ServiceKey(Struct):
    _fields_ = [("family", u8), ("protocol", u8), ("port", u16), ("addr", Address)]


SERVICE_SLOT_USED = 1 << 0
SERVICE_SLOT_OVERFLOW = 1 << 1


class ServiceSlot(Struct):
    _fields_ = [("key", ServiceKey), ("index", u32), ("flags", u32)]


class ServiceEntry(Struct):
    _fields_ = [
        ("key", ServiceKey),
        ("identity", u32),
        ("generation", u32),
        ("slot_count", u32),
        ("index", u32),
    ]


class SlotKey(Struct):
    _fields_ = [("service", u32), ("generation", u32), ("slot", u32)]


class BackendSlot(Struct):
    _fields_ = [("primary", u32), ("alias", u32), ("threshold", u32), ("reserved", u32)]


class Backend(Struct):
    _fields_ = [("addr", Address), ("port", u16), ("family", u8), ("flags", u8), ("service", u32)]


class Translation(Struct):
    _fields_ = [
        ("vip", Address),
        ("backend_addr", Address),
        ("vip_port", u16),
        ("backend_port", u16),
        ("service", u32),
        ("family", u8),
        ("reserved", u8 * 3),
    ]


class UdpTranslationKey(Struct):
    _fields_ = [
        ("cookie", u64),
        ("backend_addr", Address),
        ("backend_port", u16),
        ("family", u8),
        ("reserved", u8),
        ("reserved2", u32),
    ]


class AffinityKey(Struct):
    _fields_ = [("cookie", u64), ("service", u32), ("reserved", u32)]


class Affinity(Struct):
    _fields_ = [("backend", u32), ("reserved", u32)]


class FlowKey(Struct):
    _fields_ = [
        ("saddr", Address),
        ("daddr", Address),
        ("sport", u16),
        ("dport", u16),
        ("family", u8),
        ("protocol", u8),
        ("reserved", u16),
    ]


class FlowRecord(Struct):
    _fields_ = [
        ("src_identity", u32),
        ("service", u32),
        ("seen_ns", u64),
        ("vip", Address),
        ("vip_port", u16),
        ("flags", u16),
        ("reserved", u32),
    ]


class ReplyKey(Struct):
    _fields_ = [
        ("cookie", u64),
        ("remote_addr", Address),
        ("remote_port", u16),
        ("family", u8),
        ("reserved", u8),
        ("reserved2", u32),
    ]


class ReplyValue(Struct):
    _fields_ = [("seen_ns", u64)]


class CgroupSlot(Struct):
    _fields_ = [("cgroup_id", u64), ("identity", u32), ("reserved", u32)]


class ListenerKey(Struct):
    _fields_ = [("netns", u32), ("family", u8), ("protocol", u8), ("port", u16), ("addr", Address)]


class ListenerSlot(Struct):
    _fields_ = [
        ("key", ListenerKey),
        ("cookie", u64),
        ("seen_ns", u64),
        ("identity", u32),
        ("check", u32),
    ]


UDP_PEERS = 8


class UdpPeer(Struct):
    _fields_ = [
        ("addr", Address),
        ("port", u16),
        ("family", u8),
        ("reserved", u8),
        ("reserved2", u32),
        ("seen_ns", u64),
    ]


class SocketState(Struct):
    _fields_ = [("peers", UdpPeer * UDP_PEERS)]


class AuthKey(Struct):
    _fields_ = [
        ("src", u32),
        ("dst", u32),
        ("host", Address),
        ("family", u8),
        ("reserved", u8 * 3),
    ]


class AuthValue(Struct):
    _fields_ = [("expires_ns", u64)]


class AuthState(Struct):
    _fields_ = [("epoch", u32), ("reserved", u32)]


NOTICE_AUTH_NEEDED = 1
NOTICE_FOREIGN_NETNS = 2


class Notice(Struct):
    _fields_ = [
        ("kind", u32),
        ("src", u32),
        ("dst", u32),
        ("netns", u32),
        ("host", Address),
        ("family", u8),
        ("reserved", u8 * 3),
        ("reserved2", u32),
    ]


SIGNAL_FOREIGN_NETNS_SEEN = 1 << 0


class DatapathSignals(Struct):
    _fields_ = [("flags", u32), ("reserved", u32)]


class Flow(Struct):
    _fields_ = [
        ("src_addr", Address),
        ("dst_addr", Address),
        ("src_identity", u32),
        ("dst_identity", u32),
        ("src_port", u16),
        ("dst_port", u16),
        ("family", u8),
        ("protocol", u8),
        ("direction", u8),
        ("reserved", u8),
        ("flags", u32),
        ("reserved2", u32),
    ]


class Decision(Struct):
    _fields_ = [
        ("verdict", u32),
        ("rule", u32),
        ("audit_rule", u32),
        ("flags", u32),
        ("auth_expires_ns", u64),
    ]


class VerdictKey(Struct):
    _fields_ = [
        ("src_identity", u32),
        ("dst_identity", u32),
        ("src_addr", Address),
        ("dst_addr", Address),
        ("dst_port", u16),
        ("protocol", u8),
        ("family", u8),
        ("flags", u32),
    ]


class VerdictEntry(Struct):
    _fields_ = [
        ("key", VerdictKey),
        ("decision", Decision),
        ("src_identity", u32),
        ("dst_identity", u32),
        ("auth_epoch", u32),
        ("check", u32),
        ("expires_ns", u64),
    ]


class VerdictEvent(Struct):
    _fields_ = [
        ("timestamp_ns", u64),
        ("cgroup_id", u64),
        ("flow", Flow),
        ("decision", Decision),
        ("backend_addr", Address),
        ("backend_port", u16),
        ("reserved", u16),
        ("backend", u32),
    ]


class RuleCounter(Struct):
    _fields_ = [("decided", u64), ("audited", u64)]


class EvaluateRequest(Struct):
    _fields_ = [("flow", Flow), ("decision", Decision)]


MAX_PREFIX_LENGTHS_V4 = 33
MAX_PREFIX_LENGTHS_V6 = 129


class RuntimeConfig(Struct):
    _fields_ = [
        ("attach_cgroup_id", u64),
        ("events", u32),
        ("home_netns", u32),
        ("cgroup_index_mask", u32),
        ("service_index_mask", u32),
        ("v4_length_count", u8),
        ("v6_length_count", u8),
        ("reserved", u8 * 2),
        ("v4_lengths", u8 * 36),
        ("v6_lengths", u8 * 132),
        ("reserved2", u32),
    ]


# C struct name -> mirror, for the BTF cross-check.
C_STRUCTS: dict[str, type[Struct]] = {
    "address_key": AddressKey,
    "address_class": AddressClass,
    "class_links": ClassLinks,
    "rule_pair_key": RulePairKey,
    "port_table": PortTable,
    "rule_set": RuleSet,
    "port_interval": PortInterval,
    "identity_info": IdentityInfo,
    "service_key": ServiceKey,
    "service_slot": ServiceSlot,
    "service_entry": ServiceEntry,
    "slot_key": SlotKey,
    "backend_slot": BackendSlot,
    "backend": Backend,
    "translation": Translation,
    "udp_translation_key": UdpTranslationKey,
    "affinity_key": AffinityKey,
    "affinity": Affinity,
    "flow_key": FlowKey,
    "flow_record": FlowRecord,
    "reply_key": ReplyKey,
    "reply_value": ReplyValue,
    "cgroup_slot": CgroupSlot,
    "listener_key": ListenerKey,
    "listener_slot": ListenerSlot,
    "udp_peer": UdpPeer,
    "socket_state": SocketState,
    "auth_key": AuthKey,
    "auth_value": AuthValue,
    "auth_state": AuthState,
    "notice": Notice,
    "datapath_signals": DatapathSignals,
    "flow": Flow,
    "decision": Decision,
    "verdict_key": VerdictKey,
    "verdict_entry": VerdictEntry,
    "verdict_event": VerdictEvent,
    "rule_counter": RuleCounter,
    "evaluate_request": EvaluateRequest,
    "runtime_config": RuntimeConfig,
}

_FORMAT_OF = {
    ctypes.c_uint8: "B",
    ctypes.c_uint16: "H",
    ctypes.c_uint32: "I",
    ctypes.c_uint64: "Q",
}


def _flat_format(ctype) -> str:
    if ctype in _FORMAT_OF:
        return _FORMAT_OF[ctype]
    if issubclass(ctype, ctypes.Array):
        return _flat_format(ctype._type_) * ctype._length_
    if issubclass(ctype, ctypes.Structure):
        return "".join(_flat_format(t) for _, t in ctype._fields_)
    raise TypeError(f"no struct format for {ctype!r}")


@cache
def struct_format(ctype) -> struct.Struct:
    """A little-endian, unpadded `struct.Struct` with the layout of `ctype`."""
    packer = struct.Struct("<" + _flat_format(ctype))
    if packer.size != ctypes.sizeof(ctype):
        raise TypeError(f"{ctype.__name__} has implicit padding; make it explicit")
    return packer


def network_order_port(port: int) -> int:
    """A port as the u16 the CPU reads when memory holds it in network order."""
    return int.from_bytes(port.to_bytes(2, "big"), "little")


def address_words(packed: bytes) -> tuple[int, int, int, int]:
    """The four u32 words (as the little-endian CPU reads them) of a 4- or 16-byte address."""
    padded = packed.ljust(16, b"\0")
    return struct.unpack("<4I", padded)


def address_from_words(family: int, words) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address held in four u32 words (as `address_words` makes them)."""
    raw = b"".join(int(w).to_bytes(4, "little") for w in words)
    if family == FAMILY_IPV4:
        return ipaddress.IPv4Address(raw[:4])
    return ipaddress.IPv6Address(raw)
