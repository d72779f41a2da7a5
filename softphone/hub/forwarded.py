"""The client's address behind reverse proxies the operator trusts (``X-Forwarded-For``).

Behind a proxy (nginx, Caddy, haproxy terminating TLS) every connection comes
from the proxy's address, so the per-address connection limit would count all
clients as one. With ``trusted_proxies`` set, a connection *from* one of them
is counted (and logged) by the address the proxies say they got it from: each
proxy appends the address it was connected from to ``X-Forwarded-For``, so the
list is read from the right, skipping trusted proxies, and the first address
that is not one is the client. What a client writes in the header itself sits
to the left of that and is never reached. A connection from anywhere else is
its peer address, whatever it sends. Sans-I/O: strings in, a string out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> Address | None:
    """An address as proxies write it (``1.2.3.4``, ``1.2.3.4:5678``, ``::1``,
    ``[::1]:80``), IPv4-mapped IPv6 as IPv4; None if it is none."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """The proxies whose ``X-Forwarded-For`` is believed (none: nobody's)."""

    networks: tuple[Network, ...] = ()

    @classmethod
    def from_list(cls, items: Iterable[str]) -> TrustedProxies:
        """From addresses and networks (``10.0.0.5``, ``10.0.0.0/8``, ``::1``);
        ValueError (one line) for anything else."""
        networks: list[Network] = []
        for item in items:
            try:
                networks.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                raise ValueError(f"{item!r} is not an address or a network "
                                 f"(10.0.0.5, 10.0.0.0/8, ::1)") from None
        return cls(tuple(networks))

    def trusts(self, address: Address) -> bool:
        return any(address.version == n.version and address in n for n in self.networks)

    def trusts_peer(self, peer: str) -> bool:
        """Whether ``peer`` (a connection's address, as its socket gives it) is one."""
        if not self.networks:
            return False
        address = _address(peer)
        return address is not None and self.trusts(address)

    def client(self, peer: str, forwarded: Sequence[str] = ()) -> str:
        """The address to count and log a connection from ``peer`` by, given its
        ``X-Forwarded-For`` headers (each a comma-separated list, in order)."""
        if not self.networks:
            return peer
        address = _address(peer)
        if address is None or not self.trusts(address):
            return peer
        hops = [hop for header in forwarded for hop in header.split(",")]
        for hop in reversed(hops):
            got = _address(hop)
            if got is None:  # (a proxy that wrote something else: count the proxy)
                return str(address)
            address = got
            if not self.trusts(address):
                return str(address)
        return str(address)  # (every hop a trusted proxy: the first of them)
