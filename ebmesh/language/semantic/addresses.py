"""Addresses and CIDRs: no host bits set; an except inside its CIDR."""

from __future__ import annotations

from ebmesh.language.ast import AddressPeer, Cidr
from ebmesh.language.semantic.report import Report


def check_cidr(cidr: Cidr, report: Report) -> None:
    if cidr.host_bits_set:
        report.error(
            cidr.span,
            f"{cidr.text} has host bits set",
            hint=f"did you mean {cidr.network}?",
        )


def check_address_peer(peer: AddressPeer, report: Report) -> None:
    check_cidr(peer.cidr, report)
    network = peer.cidr.network
    for excepted in peer.excepts:
        check_cidr(excepted, report)
        inner = excepted.network
        if inner.version != network.version:
            report.error(
                excepted.span,
                f"except {excepted.text} is IPv{inner.version} but {peer.cidr.text} is IPv{network.version}",
                hint="an except is a part of the CIDR before it, of the same family",
            )
        elif inner == network:
            report.error(
                excepted.span,
                f"except {excepted.text} is all of {peer.cidr.text}: the item matches nothing",
                hint="remove the item, or except a smaller part of it",
            )
        elif not inner.subnet_of(network):  # type: ignore[arg-type]
            report.error(
                excepted.span,
                f"except {excepted.text} is not inside {peer.cidr.text}",
                hint=(
                    "every CIDR after 'except' belongs to its except list, up to the next item that is "
                    "not a CIDR; to list a CIDR as an item of its own, put it before the CIDR with 'except'"
                ),
            )
