"""A new connection's first bytes: the request head, then the WebSocket handshake.

:class:`Dispatch` reads each new connection's request head and hands the
connection on: a WebSocket upgrade to ``/ws`` to the hub (which applies
:func:`softphone.hub.admission.admit`), anything else to the aiohttp
application. :func:`handshake` and :func:`refuse` answer an upgrade that is not
accepted.

A connection without its complete head is counted by :class:`HeadGate`
(:mod:`softphone.hub.pending` decides): past the caps it is closed at once (or
the oldest one is, to make room), and each is closed :data:`HEAD_TIMEOUT`
seconds after it was accepted, however much of its head trickled in meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final, Protocol, cast

from aiohttp import web
from websockets.http11 import Response as WSResponse
from websockets.server import ServerProtocol

from softphone.core.protocol import HubError
from softphone.hub.connection import Refused
from softphone.hub.forwarded import TrustedProxies
from softphone.hub.frames import text_frame
from softphone.hub.pending import HeadCaps, HeadRefusal, PendingHeads

#: Seconds a new connection has (from accept, whatever trickles in) to send its
#: request head. A real client sends it at once: this is for a slow network's
#: retransmissions, and bounds how long a slowloris connection holds a descriptor.
HEAD_TIMEOUT: Final = 10.0
#: A request head larger than this is not a WebSocket upgrade (aiohttp answers it).
MAX_HEAD_BYTES: Final = 16 * 1024

#: websockets logs every connection's opening and closing at info level: the hub says
#: it once, with the client's id (``connect``/``disconnect``).
WS_LOG: Final = logging.getLogger("softphone.hub.websocket")
WS_LOG.setLevel(logging.WARNING)

log = logging.getLogger(__name__)

#: The ``softphone_hub_connections_refused_total`` reason of a connection closed
#: without its request head (:class:`HeadGate`).
PENDING_HEAD: Final = "pending-head"


class Upgrades(Protocol):
    """Where :class:`Dispatch` hands a connection (the hub)."""

    #: The aiohttp server of the HTTP routes (None until the hub has started).
    http: web.Server | None

    def open_ws(self, transport: asyncio.Transport, head: bytes) -> None:
        """A request for ``/ws`` (``head``: what the client sent so far): answer it."""
        ...


class HeadGate:
    """The hub's connections without their request head: counted by a
    :class:`~softphone.hub.pending.PendingHeads`, whose decisions it applies (closes,
    counts ``refused{reason="pending-head"}``, logs the first of each episode)."""

    __slots__ = ("_proxies", "_refused", "pending", "timeout")

    def __init__(self, caps: HeadCaps, timeout: float = HEAD_TIMEOUT,
                 proxies: TrustedProxies | None = None,
                 refused: Callable[[], None] | None = None) -> None:
        self.pending: PendingHeads[Dispatch] = PendingHeads(caps)
        self.timeout = timeout
        self._proxies = proxies or TrustedProxies()
        self._refused = refused

    def opened(self, conn: Dispatch, transport: asyncio.BaseTransport) -> bool:
        """A new connection: False if it is refused (and closed)."""
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if peer else ""
        decision = self.pending.open(conn, address, self._proxies.trusts_peer(address))
        caps = self.pending.caps
        if decision.alarm is HeadRefusal.PER_ADDRESS:
            log.warning("refused reason=%s remote=%s why=%r: %d pending, its new connections "
                        "are closed at once (said again once it is down to %d)", PENDING_HEAD,
                        address, decision.alarm.value, caps.per_address, caps.per_address // 2)
        elif decision.alarm is HeadRefusal.TOTAL:
            log.warning("full pending-heads=%d: closing the oldest connection without a "
                        "request head for each new one (said again once down to %d)",
                        caps.total, caps.total // 2)
        if decision.evicted is not None:
            self._count_refused()
            decision.evicted.drop()
        if decision.refused is not None:
            self._count_refused()
            transport.close()
            return False
        return True

    def _count_refused(self) -> None:
        if self._refused is not None:
            self._refused()


class Dispatch(asyncio.Protocol):
    """Each new connection's first protocol: reads the request head, then hands the
    connection to the hub's WebSocket path (``/ws``) or to aiohttp (everything else).
    """

    __slots__ = ("_gate", "_head", "_hub", "_timer", "_transport")

    def __init__(self, hub: Upgrades, gate: HeadGate) -> None:
        self._hub = hub
        self._gate = gate
        self._head = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not subclasses of asyncio's, but behave as them)
        self._transport = cast(asyncio.Transport, transport)
        if self._gate.opened(self, transport):
            self._timer = asyncio.get_running_loop().call_later(self._gate.timeout, self.drop)

    def drop(self) -> None:
        """Close the connection: its head is late, or a newer one needs the room."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._gate.pending.close(self)
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._gate.pending.close(self)

    def data_received(self, data: bytes) -> None:
        head = self._head + data if self._head else data
        transport = self._transport
        assert transport is not None
        if b"\r\n\r\n" not in head and len(head) <= MAX_HEAD_BYTES:
            self._head = head
            return
        self._head = b""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._gate.pending.close(self)  # (a head: the hub's other limits apply now)
        if head.startswith((b"GET /ws?", b"GET /ws ")):
            self._hub.open_ws(transport, head)
            return
        http = self._hub.http
        assert http is not None
        protocol = http()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(head)

    def eof_received(self) -> bool | None:
        return None  # an incomplete request: close


def handshake(ws: ServerProtocol, transport: asyncio.Transport, response: WSResponse,
              on_lost: Callable[[], None] | None) -> Refused:
    """Send ``response`` to the upgrade; the connection then waits to be closed."""
    refused = Refused(ws, transport, on_lost)
    transport.set_protocol(refused)
    ws.send_response(response)
    refused.flush()
    return refused


def refuse(ws: ServerProtocol, transport: asyncio.Transport, response: WSResponse,
           on_lost: Callable[[], None] | None, error: HubError, code: int,
           reason: str, early: bytes = b"") -> None:
    """Accept the upgrade, say why in an ``error`` message, then close with ``code``.

    (``early``: what the client sent right behind its request.)"""
    refused = handshake(ws, transport, response, on_lost)
    transport.write(text_frame(error.encode()))
    refused.close(code, reason.encode()[:120])
    if early:
        refused.data_received(early)
