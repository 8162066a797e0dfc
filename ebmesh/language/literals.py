"""Reading the literals the lexer accepts loosely: addresses, port ranges, strings, numbers.

The grammar's terminals are deliberately wider than the valid values
(`10.0.0.300`, `80/tpc`, `"a\\q"`), so that a mistake is reported here with a
precise message instead of as an unexpected character.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from ebmesh.language.ast import IPNetwork, Protocol
from ebmesh.language.suggest import did_you_mean

PROTOCOLS: tuple[Protocol, ...] = ("tcp", "udp")

# Digits beyond this are not a number anyone meant; int() would also refuse
# strings of more than 4300 digits.
MAX_DIGITS = 100


class LiteralError(ValueError):
    """A malformed literal. `offset`/`length` locate the bad part inside the token."""

    def __init__(
        self, message: str, hint: str | None = None, offset: int = 0, length: int | None = None
    ):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.offset = offset
        self.length = length


def parse_number(text: str) -> int:
    if len(text) > MAX_DIGITS:
        raise LiteralError(f"number with {len(text)} digits is too long")
    return int(text)


def parse_cidr(text: str) -> tuple[IPNetwork, bool]:
    """The network `text` names, and whether it has host bits set (10.0.1.5/24)."""
    outcome = _parse_cidr_cached(text)
    if isinstance(outcome, LiteralError):
        # A fresh exception each time: the cached one must not collect tracebacks.
        raise LiteralError(outcome.message, outcome.hint, outcome.offset, outcome.length)
    return outcome


@lru_cache(maxsize=65536)
def _parse_cidr_cached(text: str) -> tuple[IPNetwork, bool] | LiteralError:
    try:
        if ":" in text:
            return _parse_ipv6(text)
        return _parse_ipv4(text)
    except LiteralError as error:
        return error


def _split_prefix(text: str, family: str, max_length: int) -> tuple[str, int | None]:
    address, slash, prefix = text.partition("/")
    if not slash:
        return address, None
    if len(prefix) > 3 or int(prefix) > max_length:
        raise LiteralError(
            f"prefix length /{prefix} is too long for {family} (at most {max_length})",
            offset=len(address),
            length=len(prefix) + 1,
        )
    return address, int(prefix)


def _parse_ipv4(text: str) -> tuple[IPNetwork, bool]:
    address, prefix = _split_prefix(text, "IPv4", 32)
    parts = address.split(".")
    if len(parts) != 4:
        raise LiteralError(
            f"invalid IPv4 address '{address}'",
            hint="an IPv4 address is four numbers from 0 to 255 separated by '.', e.g. 10.0.1.0",
            length=len(address),
        )
    value = 0
    offset = 0
    for part in parts:
        if len(part) > 1 and part.startswith("0"):
            raise LiteralError(
                f"invalid IPv4 address '{address}': '{part}' has a leading zero",
                hint=f"write {part.lstrip('0') or '0'}; leading zeros are read as octal by some tools",
                offset=offset,
                length=len(part),
            )
        if len(part) > 3 or int(part) > 255:
            raise LiteralError(
                f"invalid IPv4 address '{address}': {part} is greater than 255",
                offset=offset,
                length=len(part),
            )
        value = value << 8 | int(part)
        offset += len(part) + 1
    length = 32 if prefix is None else prefix
    network = ipaddress.IPv4Network((value, length), strict=False)
    return network, int(network.network_address) != value


def _parse_ipv6(text: str) -> tuple[IPNetwork, bool]:
    address, prefix = _split_prefix(text, "IPv6", 128)
    try:
        parsed = ipaddress.IPv6Address(address)
    except ValueError as error:
        reason = str(error).split(" in '")[0]
        reason = reason[:1].lower() + reason[1:]
        raise LiteralError(
            f"invalid IPv6 address '{address}'", hint=reason, length=len(address)
        ) from None
    value = int(parsed)
    length = 128 if prefix is None else prefix
    network = ipaddress.IPv6Network((value, length), strict=False)
    return network, int(network.network_address) != value


def parse_protocol(text: str) -> Protocol:
    if text in PROTOCOLS:
        return text  # type: ignore[return-value]
    raise LiteralError(
        f"unknown protocol '{text}'",
        hint=did_you_mean(text, PROTOCOLS) or "the protocol is 'tcp' or 'udp'",
        length=len(text),
    )


def parse_port_range(text: str) -> tuple[int, int, Protocol | None]:
    """`N`, `N-M`, `N/tcp`, `N-M/udp` (already matched by the PORT_RANGE terminal)."""
    ports, slash, protocol_text = text.partition("/")
    protocol = None
    if slash:
        try:
            protocol = parse_protocol(protocol_text)
        except LiteralError as error:
            raise LiteralError(
                error.message, error.hint, len(ports) + 1, len(protocol_text)
            ) from None
    low_text, dash, high_text = ports.partition("-")
    try:
        low = parse_number(low_text)
        high = parse_number(high_text) if dash else low
    except LiteralError as error:
        raise LiteralError(error.message, error.hint, 0, len(ports)) from None
    return low, high, protocol


def parse_string(quoted: str) -> str:
    """The value of a string literal: quotes removed, `\\"` and `\\\\` resolved."""
    body = quoted[1:-1]
    if "\\" not in body:
        return body
    out = []
    index = 0
    while index < len(body):
        char = body[index]
        if char == "\\":
            escaped = body[index + 1]
            if escaped not in '"\\':
                raise LiteralError(
                    f"unknown escape '\\{escaped}' in a string",
                    hint='only \\" and \\\\ can be escaped',
                    offset=index + 1,
                    length=2,
                )
            out.append(escaped)
            index += 2
        else:
            out.append(char)
            index += 1
    return "".join(out)
