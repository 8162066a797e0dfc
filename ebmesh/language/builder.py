"""Turns each reduction of the LALR parse into AST nodes, as it happens.

One method per grammar rule or alias (grammar/ebmesh.lark); methods named like
a terminal (NAME, CIDR, ...) convert that token when it is shifted. The
grammar is used with keep_all_tokens=True and without placeholders, so each
method receives exactly the symbols of the expansion that matched, tokens
included. Only the tokens' `type`, `value` and position attributes are used.

Malformed literals do not stop the parse: they are recorded in `problems`
with a placeholder in the tree, so that one run reports all of them.
"""

from __future__ import annotations

import ipaddress
from typing import Any, NamedTuple

from ebmesh.language.ast import (
    AddressPeer,
    AnyPeer,
    Backend,
    Cidr,
    Mesh,
    Name,
    NamedPeer,
    PortRange,
    Rule,
    Service,
    Setting,
    Span,
    StringLiteral,
    Workload,
)
from ebmesh.language.literals import (
    LiteralError,
    parse_cidr,
    parse_number,
    parse_port_range,
    parse_protocol,
    parse_string,
)

# Stands in for a malformed address so the parse can go on; never reaches a
# caller, because a recorded problem makes parse() raise.
_PLACEHOLDER_NETWORK = ipaddress.IPv4Network("0.0.0.0/32")


class Problem(NamedTuple):
    """A malformed literal: where (1-based line/column, width) and what."""

    line: int
    column: int
    length: int
    message: str
    hint: str | None


class PeerGroup(NamedTuple):
    """One side of a rule as parsed, and where it ends (for the rule's span)."""

    peers: list
    end_line: int
    end_column: int


class _MeshBody:
    __slots__ = ("settings", "workloads", "services", "rules", "by_type")

    def __init__(self):
        self.settings: list[Setting] = []
        self.workloads: list[Workload] = []
        self.services: list[Service] = []
        self.rules: list[Rule] = []
        self.by_type = {
            Setting: self.settings,
            Workload: self.workloads,
            Service: self.services,
            Rule: self.rules,
        }


def token_span(token: Any) -> Span:
    return Span(token.line, token.column, token.end_line, token.end_column)


def _between(first: Any, last: Any) -> Span:
    """From the start of `first` to the end of `last` (tokens or spans)."""
    return Span(first.line, first.column, last.end_line, last.end_column)


class AstBuilder:
    """The Lark transformer. Not thread-safe: the parser serialises its use."""

    def __init__(self):
        self.problems: list[Problem] = []

    def reset(self) -> None:
        self.problems = []

    def _problem(self, where: Any, error: LiteralError) -> None:
        """Record `error` found in the token or node `where` (anything with a line and column)."""
        length = error.length if error.length is not None else len(where.value) - error.offset
        self.problems.append(
            Problem(
                where.line, where.column + error.offset, max(1, length), error.message, error.hint
            )
        )

    # ---- terminals --------------------------------------------------------

    def NAME(self, token: Any) -> Name:
        return Name(span=token_span(token), value=token.value)

    def STRING(self, token: Any) -> StringLiteral:
        try:
            value = parse_string(token.value)
        except LiteralError as error:
            self._problem(token, error)
            value = ""
        return StringLiteral(span=token_span(token), value=value)

    def CIDR(self, token: Any) -> Cidr:
        text = token.value
        try:
            network, host_bits_set = parse_cidr(text)
        except LiteralError as error:
            self._problem(token, error)
            network, host_bits_set = _PLACEHOLDER_NETWORK, False
        return Cidr(span=token_span(token), text=text, network=network, host_bits_set=host_bits_set)

    def PORT_RANGE(self, token: Any) -> PortRange:
        try:
            low, high, protocol = parse_port_range(token.value)
        except LiteralError as error:
            self._problem(token, error)
            low, high, protocol = 0, 0, None
        return PortRange(span=token_span(token), low=low, high=high, protocol=protocol)

    def _number(self, token: Any) -> int:
        try:
            return parse_number(token.value)
        except LiteralError as error:
            self._problem(token, error)
            return 0

    # ---- the mesh ---------------------------------------------------------

    def start(self, children: list) -> Mesh:
        return children[0]

    def mesh(self, children: list) -> Mesh:
        keyword, name, _open, body, close = children
        return Mesh(
            span=_between(keyword, close),
            name=name,
            settings=body.settings,
            workloads=body.workloads,
            services=body.services,
            rules=body.rules,
        )

    def mesh_body(self, children: list) -> _MeshBody:
        if not children:
            return _MeshBody()
        body, statement = children
        body.by_type[type(statement)].append(statement)
        return body

    def setting(self, children: list) -> Setting:
        key, value = children
        if isinstance(value, StringLiteral):
            text, span = value.value, value.span
        else:
            text, span = value
        return Setting(span=_between(key, span), key=key.value, value=text, value_span=span)

    def word(self, children: list) -> tuple[str, Span]:
        (item,) = children
        if isinstance(item, Name):
            return item.value, item.span
        return item.value, token_span(item)

    # ---- workloads --------------------------------------------------------

    def workload(self, children: list) -> Workload:
        keyword, name, _open, items, close = children
        cgroups, addresses, identities = [], [], []
        mtls_span = None
        for kind, key, value in items:
            if kind == "CGROUP":
                cgroups.append(value)
            elif kind == "ADDRESS":
                addresses.extend(value)
            elif kind == "IDENTITY":
                identities.append(value)
            elif mtls_span is None:
                mtls_span = _between(key, value)
        return Workload(
            span=_between(keyword, close),
            name=name,
            cgroups=cgroups,
            addresses=addresses,
            identities=identities,
            mtls_required=mtls_span is not None,
            mtls_span=mtls_span,
        )

    def workload_body(self, children: list) -> list:
        if not children:
            return []
        items, item = children
        items.append(item)
        return items

    def workload_item(self, children: list) -> tuple[str, Any, Any]:
        key, value = children
        return key.type, key, value

    def cidr_list(self, children: list) -> list[Cidr]:
        if len(children) == 1:
            return [children[0]]
        cidrs, _comma, cidr = children
        cidrs.append(cidr)
        return cidrs

    # ---- services ---------------------------------------------------------

    def service(self, children: list) -> Service:
        (
            keyword,
            name,
            (address, address_span, port, port_span, protocol),
            _open,
            backends,
            close,
        ) = children
        return Service(
            span=_between(keyword, close),
            name=name,
            vip=address,
            vip_span=address_span,
            port=port,
            port_span=port_span,
            protocol=protocol,
            backends=backends,
        )

    def endpoint(self, children: list) -> tuple:
        host, _colon, port = children[:3]
        protocol = "tcp"
        if len(children) == 5:
            protocol_name = children[4]
            try:
                protocol = parse_protocol(protocol_name.value)
            except LiteralError as error:
                self._problem(protocol_name.span, error)
        address, address_span = host
        return address, address_span, self._number(port), token_span(port), protocol

    def service_body(self, children: list) -> list[Backend]:
        if not children:
            return []
        backends, backend = children
        backends.append(backend)
        return backends

    def backend(self, children: list) -> Backend:
        keyword, (address, address_span), _colon, port = children[:4]
        last = port
        weight, weight_span = 1, None
        if len(children) == 6:
            last = children[5]
            weight, weight_span = self._number(last), token_span(last)
        return Backend(
            span=_between(keyword, last),
            address=address,
            address_span=address_span,
            port=self._number(port),
            port_span=token_span(port),
            weight=weight,
            weight_span=weight_span,
        )

    def host(self, children: list) -> tuple[Any, Span]:
        """VIP or backend address: `10.0.0.1` or `[fd00::1]`, never a CIDR."""
        bracketed = len(children) == 3
        cidr: Cidr = children[1] if bracketed else children[0]
        network = cidr.network
        text = cidr.text
        if "/" in text:
            self._problem(
                cidr.span,
                LiteralError(
                    f"'{text}' is a CIDR; a service or backend address is a single address",
                    hint=f"write {text.split('/')[0]}",
                    length=len(text),
                ),
            )
        elif network.version == 6 and not bracketed:
            self._problem(
                cidr.span,
                LiteralError(
                    "an IPv6 address followed by a port is written in brackets",
                    hint=f"write [{text}]:PORT",
                    length=len(text),
                ),
            )
        elif network.version == 4 and bracketed:
            self._problem(
                cidr.span,
                LiteralError(
                    "brackets are for IPv6 addresses",
                    hint=f"write {text}:PORT",
                    length=len(text),
                ),
            )
        return network.network_address, cidr.span

    # ---- rules ------------------------------------------------------------

    def rule(self, children: list) -> Rule:
        action = children[0]
        sources: PeerGroup = children[1]
        destinations: PeerGroup = children[3]
        end_line, end_column = destinations.end_line, destinations.end_column
        ports = None
        mtls_span = audit_span = None
        for extra in children[4:]:
            if type(extra) is list:
                ports = extra
                last = extra[-1].span
                end_line, end_column = last.end_line, last.end_column
            else:
                extra_span = token_span(extra)
                if extra.type == "MTLS":
                    mtls_span = extra_span
                else:
                    audit_span = extra_span
                end_line, end_column = extra.end_line, extra.end_column
        return Rule(
            span=Span(action.line, action.column, end_line, end_column),
            action=action.value,
            action_span=token_span(action),
            sources=sources.peers,
            destinations=destinations.peers,
            ports=ports,
            mtls=mtls_span is not None,
            mtls_span=mtls_span,
            audit=audit_span is not None,
            audit_span=audit_span,
        )

    def named_peer(self, children: list) -> PeerGroup:
        name = children[0]
        span = name.span
        return PeerGroup(
            [NamedPeer(span=span, name=name)],
            span.end_line,
            span.end_column,
        )

    def any_peer(self, children: list) -> PeerGroup:
        token = children[0]
        return PeerGroup(
            [AnyPeer(span=token_span(token))],
            token.end_line,
            token.end_column,
        )

    def address_peer(self, children: list) -> PeerGroup:
        cidr = children[0]
        excepts = children[2] if len(children) == 3 else []
        peer = _address_peer_node(cidr, excepts)
        return PeerGroup([peer], peer.span.end_line, peer.span.end_column)

    def peer_list(self, children: list) -> PeerGroup:
        _open, items, close = children
        peers: list = []
        # (cidr, excepts) of the address item whose except list is still open.
        open_except: tuple[Cidr, list[Cidr]] | None = None
        for item in items:
            if type(item) is tuple:
                cidr, excepted = item
                if excepted is not None:
                    open_except = (cidr, [excepted])
                    peers.append(open_except)
                elif open_except is not None:
                    open_except[1].append(cidr)
                else:
                    peers.append(_address_peer_node(cidr, []))
            else:
                open_except = None
                peers.append(item)
        peers = [_address_peer_node(*p) if type(p) is tuple else p for p in peers]
        return PeerGroup(peers, close.end_line, close.end_column)

    def list_items(self, children: list) -> list:
        if len(children) == 1:
            return [children[0]]
        items, _comma, item = children
        items.append(item)
        return items

    def list_item(self, children: list) -> Any:
        first = children[0]
        if isinstance(first, Name):
            return NamedPeer(span=first.span, name=first)
        if isinstance(first, Cidr):
            return (first, children[2] if len(children) == 3 else None)
        return AnyPeer(span=token_span(first))

    def port_clause(self, children: list) -> list[PortRange]:
        if len(children) == 2:
            return [children[1]]
        ranges, _comma, port_range = children
        ranges.append(port_range)
        return ranges


def _address_peer_node(cidr: Cidr, excepts: list[Cidr]) -> AddressPeer:
    last = excepts[-1].span if excepts else cidr.span
    return AddressPeer(span=_between(cidr.span, last), cidr=cidr, excepts=excepts)
