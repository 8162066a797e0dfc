"""The maps' contents: every table row packed into the bytes its map takes (bpf_src/ebmesh_types.h)."""

from __future__ import annotations

from ebmesh.datapath import abi
from ebmesh.datapath.image import MapContents
from ebmesh.datapath.tables import DatapathTables


def encode_tables(tables: DatapathTables) -> dict[str, MapContents]:
    """Packs every table into the bytes its map takes."""
    out: dict[str, MapContents] = {}

    key, value = abi.AddressKey.packer(), abi.AddressClass.packer()
    keys, values = bytearray(), bytearray()
    for family, length, packed, class_id, workload, src_start, dst_start in tables.address_classes:
        keys += key.pack(family, length, 0, *abi.address_words(packed))
        values += value.pack(class_id, workload, src_start, dst_start)
    out["address_prefixes"] = _contents(keys, values, len(tables.address_classes))

    out["class_links"] = _array_contents(abi.ClassLinks.packer(), tables.class_links)

    key, value = abi.RulePairKey.packer(), abi.PortTable.packer()
    keys, values = bytearray(), bytearray()
    for src, dst, tcp_first, udp_first, tcp_count, udp_count in tables.rule_pairs:
        keys += key.pack(src, dst)
        values += value.pack(tcp_first, udp_first, tcp_count, udp_count)
    out["rule_pairs"] = _contents(keys, values, len(tables.rule_pairs))

    interval = abi.PortInterval.packer()
    rows = [
        (low, high, 0, deny, allow, mtls, audit)
        for low, high, deny, allow, mtls, audit in tables.port_intervals
    ]
    out["port_intervals"] = _array_contents(interval, rows)

    out["identities"] = _array_contents(
        abi.IdentityInfo.packer(), [(f,) for f in tables.identity_flags]
    )

    return out


def _contents(keys: bytearray, values: bytearray, count: int) -> MapContents:
    return MapContents(bytes(keys), bytes(values), count, max(1, count))


def _array_contents(packer, rows) -> MapContents:
    index = abi.struct_format(abi.u32)
    keys = b"".join(index.pack(i) for i in range(len(rows)))
    values = b"".join(packer.pack(*row) for row in rows)
    return MapContents(keys, values, len(rows), max(1, len(rows)))
