"""STUN/TURN server URLs (RFC 7064, RFC 7065): one parser for every place that takes one.

``stun:host[:port]``, ``stuns:host[:port]``, ``turn:host[:port][?transport=udp|tcp]``
and ``turns:...``: a scheme, a host, an optional port 1-65535, and for TURN an
optional transport. :func:`parse_ice_url` takes one apart (the doctor checks
it); :func:`check_ice_url` also refuses what the media stack (aiortc) cannot
use, so that a URL a call would fail on is refused when it is given
(``--ice-server``, ``serve --turn``, the config file), not at every call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["ICE_SCHEMES", "IceUrl", "check_ice_url", "parse_ice_url"]

Transport = Literal["udp", "tcp"]

ICE_SCHEMES: Final = ("stun", "stuns", "turn", "turns")

#: RFC 3986 reg-name (and IPv4address): unreserved, percent-encoded and sub-delims.
_HOST: Final = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=%-]+")
_IPV6: Final = re.compile(r"[0-9A-Fa-f:.]+")
_FORM: Final = "stun:HOST[:PORT] or turn:HOST[:PORT][?transport=udp|tcp]"


@dataclass(frozen=True)
class IceUrl:
    """A ``stun:``/``stuns:``/``turn:``/``turns:`` URL taken apart."""

    url: str
    scheme: str
    host: str
    port: int
    #: The transport a call uses with it (``?transport=``; ``turns:`` is TLS over TCP).
    transport: Transport

    @property
    def is_turn(self) -> bool:
        return self.scheme in ("turn", "turns")

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host


def parse_ice_url(url: str) -> IceUrl:
    """``turn:host:3478?transport=tcp`` -> its parts (ValueError, one line, if it is not one)."""
    scheme, colon, rest = url.partition(":")
    if scheme not in ICE_SCHEMES or not colon:
        raise ValueError(f"{url!r} is not a stun: or turn: URL (use {_FORM})")
    rest, question, query = rest.partition("?")
    transport: str | None = None
    if question:
        if scheme in ("stun", "stuns"):
            raise ValueError(f"{url!r}: a {scheme}: URL takes no '?...' (use {_FORM})")
        name, _, transport = query.partition("=")
        if name != "transport" or transport not in ("udp", "tcp"):
            raise ValueError(f"{url!r}: the only parameter is ?transport=udp or "
                             "?transport=tcp")
    if rest.startswith("["):  # [IPv6]:port
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or not _IPV6.fullmatch(host) or (tail and not tail.startswith(":")):
            raise ValueError(f"{url!r}: bad IPv6 address (use [ADDRESS]:PORT)")
        port_text, has_port = tail[1:], bool(tail)
    else:
        host, sep, port_text = rest.partition(":")
        has_port = bool(sep)
    if not host:
        raise ValueError(f"{url!r}: no host (use {_FORM})")
    if not rest.startswith("[") and not _HOST.fullmatch(host):
        raise ValueError(f"{url!r}: {host!r} is not a host name or address")
    if has_port:
        if not (port_text.isascii() and port_text.isdigit()
                and 0 < int(port_text) < 65536):
            raise ValueError(f"{url!r}: the port must be a number from 1 to 65535, "
                             f"not {port_text!r}")
        port = int(port_text)
    else:
        port = 5349 if scheme in ("stuns", "turns") else 3478
    if transport is None:
        transport = "tcp" if scheme == "turns" else "udp"
    return IceUrl(url, scheme, host, port, "tcp" if transport == "tcp" else "udp")


def check_ice_url(url: str, *, turn_only: bool = False) -> IceUrl:
    """:func:`parse_ice_url`, and refuse what a call could not use (ValueError, one line).

    aiortc cannot take an IPv6 address in brackets; ``turn_only``: a
    ``turn:`` or ``turns:`` URL is needed (``serve --turn``).
    """
    ice = parse_ice_url(url)
    if ice.is_ipv6:
        raise ValueError(f"{url!r}: the media stack (aiortc) takes no IPv6 address in "
                         "a STUN/TURN URL; use a host name")
    if turn_only and not ice.is_turn:
        raise ValueError(f"{url!r} is not a turn: or turns: URL")
    return ice
