"""The hub's settings (:class:`HubConfig`), as ``softphone serve`` and embedders give them."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from aiohttp import web

from softphone.hub.auth import DEFAULT_TURN_TTL
from softphone.hub.dispatch import HEAD_TIMEOUT

#: The original hub's ``/ice-servers``: one public Google STUN entry. Handed out
#: only by a hub configured with no ICE servers at all (:func:`static_ice_servers`).
DEFAULT_ICE_SERVERS: Final[tuple[dict[str, Any], ...]] = (
    {"urls": "stun:stun.l.google.com:19302"},
)


def static_ice_servers(ice_servers: Sequence[dict[str, Any]] | None,
                       turn_urls: Sequence[str]) -> list[dict[str, Any]]:
    """The entries ``/ice-servers`` hands out before the ``turn_urls`` (which come
    with REST credentials): ``ice_servers`` as configured (``[]``: none). Not
    configured (None): :data:`DEFAULT_ICE_SERVERS`, the original's Google STUN, but
    only when no TURN URL is configured either. An operator who gives only
    ``--turn`` gets exactly that: no third party's STUN server the clients would
    resolve and query (nor a STUN entry derived from the TURN URL; a TURN server
    answers STUN too, so ``--ice-server stun:HOST:3478`` hands it out as one)."""
    if ice_servers is not None:
        return list(ice_servers)
    return [] if turn_urls else list(DEFAULT_ICE_SERVERS)


class Clock(Protocol):
    """The time the rate limit reads and waits on. An asyncio event loop is one
    (the hub's default); a test passes one it advances itself."""

    def time(self) -> float:
        """Seconds, monotonic."""
        ...

    def call_later(self, delay: float, callback: Callable[[], object]) -> object:
        """Call ``callback`` (in the event loop) once ``delay`` seconds have passed."""
        ...


@dataclass
class HubConfig:
    #: STUN/TURN entries handed out as they are. None (not configured): the
    #: original's Google STUN entry, unless :attr:`turn_urls` are given
    #: (:func:`static_ice_servers`); ``[]``: none.
    ice_servers: Sequence[dict[str, Any]] | None = None
    #: Frames above this many bytes are answered with ``too-large``.
    max_message_bytes: int = 64 * 1024
    #: Bytes unread by a client that does not read; past it, it is dropped.
    send_queue_bytes: int = 1024 * 1024
    #: Ping interval, seconds (a client silent for 1.5 times it is dropped; 0: never).
    heartbeat: float = 15.0
    extra_routes: list[Callable[[web.Application], None]] = field(default_factory=list)
    #: Tokens: a connection needs a token signed with this secret (None: open hub).
    secret: str | None = None
    #: Browser origins allowed besides the hub's own (``*``: any).
    allow_origins: Sequence[str] = ()
    #: Messages per second per connection (0: unlimited), and the burst allowed.
    rate: float = 100.0
    burst: float = 200.0
    #: The rate limit's clock: when tokens come back, when a held sender is read
    #: again, one ``rate-limited`` notice a second (None: the running event loop).
    clock: Clock | None = None
    #: Connections in total / from one address (0: unlimited).
    max_connections: int = 20_000
    max_per_address: int = 100
    #: Reverse proxies (addresses, networks) whose ``X-Forwarded-For`` names the
    #: client a connection is counted and logged by (:mod:`softphone.hub.forwarded`).
    trusted_proxies: Sequence[str] = ()
    #: How long a client in a call whose connection was *closed* (FIN/RST, a
    #: WebSocket close: a killed process) may be gone before its peer gets ``hangup``.
    peer_grace: float = 4.0
    #: The same for a connection the heartbeat dropped (its network went away and
    #: nothing was closed): long enough for the phones' media restart to outlast an
    #: outage (docs/protocol.md, "How long a call may be away").
    peer_away_grace: float = 45.0
    #: TURN URLs handed out by ``/ice-servers`` with REST credentials from this secret.
    turn_urls: Sequence[str] = ()
    turn_secret: str | None = None
    turn_ttl: float = DEFAULT_TURN_TTL
    #: Seconds a new connection has to send its request head.
    head_timeout: float = HEAD_TIMEOUT


def host_ports(addresses: Iterable[str], port: int) -> str:
    """``a:port, [b]:port`` for the addresses a hub listens on (each once)."""
    return ", ".join(f"[{a}]:{port}" if ":" in a else f"{a}:{port}"
                     for a in dict.fromkeys(addresses))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
