"""The signaling hub: a network adapter around :mod:`softphone.core.protocol`.

Routes: ``GET /ws?id=[&token=]`` (WebSocket), ``GET /ice-servers``,
``GET /healthz``, ``GET /metrics``, and the browser phone (``/``,
``/callerA.html``, ``/callerB.html``: :mod:`softphone.hub.webpages`).

One listening socket (TLS included) for all of them. Each connection's request
head is read by :class:`~softphone.hub.dispatch.Dispatch`: a WebSocket upgrade
to ``/ws`` stays on the hub's own lean :class:`asyncio.Protocol`
(:mod:`softphone.hub.connection`), anything else goes to the aiohttp
application (:mod:`softphone.hub.routes`), one request per connection. Lean
because every connection costs memory for as long as a phone is online, and
every message CPU: no task, queue, reader or timer per connection; one
hub-wide heartbeat, a slice of the connections at a time
(:mod:`softphone.hub.heartbeat`); frames are handled as they arrive.

Every frame a client sends is validated by
:func:`~softphone.core.protocol.relay_text` (pure; :func:`route_frame` is the same
decision as values); a valid one is delivered through the
:class:`~softphone.hub.registry.Registry` with ``from`` set to the sender, a bad
one is answered with ``error`` and the connection is kept
(:mod:`softphone.hub.relay`).

The decisions are pure and tested on their own: who may connect in
:mod:`softphone.hub.admission`; tokens and TURN credentials in
:mod:`softphone.hub.auth`; rates, connection counts, origins and who is in a call
with whom in :mod:`softphone.hub.limits`. This module applies them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Final

from aiohttp import web
from websockets.frames import CloseCode
from websockets.http11 import Request as WSRequest
from websockets.http11 import Response as WSResponse
from websockets.protocol import State as WSState
from websockets.server import ServerProtocol

from softphone._tasks import spawn
from softphone.core.protocol import (
    CALL_TYPES,
    ICE_SERVERS_TYPE,
    ErrorCode,
    HubError,
    Message,
    MessageType,
)
from softphone.hub.admission import (
    CLOSE_BAD_ID,
    CLOSE_FULL,
    AdmissionRules,
    FullAlarm,
    Upgrade,
    Verdict,
    admit,
)
from softphone.hub.auth import check_secret
from softphone.hub.config import DEFAULT_ICE_SERVERS, Clock, HubConfig, host_ports, is_loopback
from softphone.hub.connection import CLOSE_TIMEOUT, ClientConnection, Refused, Unanswered
from softphone.hub.dispatch import (
    HEAD_TIMEOUT,
    PENDING_HEAD,
    WS_LOG,
    Dispatch,
    HeadGate,
    handshake,
    refuse,
)
from softphone.hub.fdlimit import raise_for_connections
from softphone.hub.forwarded import TrustedProxies
from softphone.hub.frames import text_frame
from softphone.hub.heartbeat import Heartbeat
from softphone.hub.limits import CallPairs, ConnectionLimiter, OriginPolicy, TokenBucket
from softphone.hub.metrics import HubMetrics
from softphone.hub.pending import HeadCaps
from softphone.hub.registry import MemoryRegistry, Peer, Registry
from softphone.hub.relay import MessageRelay, route_frame
from softphone.hub.routes import (
    HttpLog,
    OriginRefusals,
    Routes,
    hands_out_credentials,
    ice_servers_for,
    make_app,
)

__all__ = [
    "CLOSE_BAD_ID",
    "CLOSE_FULL",
    "CLOSE_TIMEOUT",
    "DEFAULT_ICE_SERVERS",
    "HEAD_TIMEOUT",
    "STOP_GRACE",
    "ClientConnection",
    "Hub",
    "HubConfig",
    "route_frame",
    "serve_forever",
]

log = logging.getLogger(__name__)

#: Seconds :meth:`Hub.stop` waits for clients to answer its close frames.
STOP_GRACE: Final = 1.0


def machine_names() -> list[str]:
    """This machine's host name: a page served under it is the hub's own (a LAN user
    opening ``http://myhost:8080/``). DNS rebinding needs a name whose DNS the
    attacker controls; this is not (:class:`OriginPolicy`). Not its FQDN: that is a
    DNS lookup, which can stall a hub's start on a machine without a resolver (a
    full name goes in ``--allow-origin``)."""
    host = socket.gethostname()
    return [host] if host else []


class Hub(MessageRelay):
    """The hub's aiohttp application, with a way to run it in-process."""

    def __init__(self, config: HubConfig | None = None,
                 registry: Registry | None = None) -> None:
        self.config = config or HubConfig()
        self.registry = registry or MemoryRegistry()
        if self.config.secret is not None:
            check_secret(self.config.secret)
        self.metrics = HubMetrics()
        self.origins = OriginPolicy.from_list(self.config.allow_origins, machine_names())
        #: Logs the origins refused (WebSocket, CORS, pages): what to add, rate-limited.
        self.origin_refusals = OriginRefusals(self.origins, log)
        self.proxies = TrustedProxies.from_list(self.config.trusted_proxies)
        self.limiter = ConnectionLimiter(self.config.max_connections,
                                         self.config.max_per_address)
        #: Connections without their request head yet (softphone.hub.pending).
        self.heads = HeadGate(HeadCaps.for_limits(self.config.max_connections,
                                                  self.config.max_per_address),
                              self.config.head_timeout, self.proxies,
                              self.metrics.refused.labels(PENDING_HEAD).inc)
        self.pairs = CallPairs(self.config.peer_grace)
        self.registry.bind(self, self.metrics.registry)  # a shared registry reports here
        self._rules = AdmissionRules(self.origins, self.config.secret)
        #: Warns once that the hub is full, again after it had room (admission.py).
        self._full = FullAlarm()
        self.app = make_app(Routes(self.config, self.registry, self.metrics, self.pairs),
                            self.config.extra_routes, self.origins, self.origin_refusals)
        self._runner: web.AppRunner | None = None
        #: The aiohttp server of the HTTP routes (Dispatch hands it the connections).
        self.http: web.Server | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tls = False
        self._heartbeat: Heartbeat[ClientConnection] | None = None
        #: The rate limit's clock (HubConfig.clock, or the loop's once started).
        self._clock: Clock | None = self.config.clock
        #: Frames above this are refused by websockets (close 1009); up to it, too large
        #: messages are answered with ``too-large`` and the connection is kept.
        self.max_frame = self.config.max_message_bytes * 4
        #: While a connection's frames read at once are handled: the clients given
        #: frames to write when they are done (ClientConnection.deliver).
        self.batch: list[ClientConnection] | None = None
        self._connections: set[ClientConnection] = set()
        self._pair_timer: asyncio.TimerHandle | None = None
        self.port: int | None = None

    # -- running ------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0,
                    sock: socket.socket | None = None,
                    ssl_context: ssl.SSLContext | None = None) -> int:
        """Listen (``port=0``: any free port) and return the port (https with ``ssl_context``).

        One listening socket: WebSocket upgrades to ``/ws`` are served by the hub's
        own lean protocol, every other request by the aiohttp application.
        """
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None,
                                     logger=HttpLog())
        await self._runner.setup()
        http = self._runner.server
        assert http is not None
        self.http = http
        loop = asyncio.get_running_loop()
        self._clock = self.config.clock or loop
        heads = self.heads

        def dispatch() -> asyncio.Protocol:
            return Dispatch(self, heads)

        # (a TLS handshake comes before the head: it gets as long, not asyncio's 60 s)
        tls_timeout = heads.timeout if ssl_context is not None else None
        if sock is not None:
            self._server = await loop.create_server(dispatch, sock=sock, ssl=ssl_context,
                                                    ssl_handshake_timeout=tls_timeout)
        else:
            self._server = await loop.create_server(dispatch, host, port, ssl=ssl_context,
                                                    ssl_handshake_timeout=tls_timeout)
        self._tls = ssl_context is not None
        sockets: Sequence[socket.socket] = self._server.sockets
        self.port = int(sockets[0].getsockname()[1])
        bound = str(sockets[0].getsockname()[0])
        if self.config.heartbeat > 0:
            self._heartbeat = Heartbeat(self.config.heartbeat, self._timed_out)
            self._heartbeat.start()
        if not self.config.secret and not is_loopback(bound):
            log.warning("hub is open: no --secret, so anyone who reaches %s can take "
                        "any id%s", host_ports((str(s.getsockname()[0]) for s in sockets),
                                               self.port),
                        " and get its TURN credentials"
                        if hands_out_credentials(self.config) else "")
        log.info("listening host=%s port=%s auth=%s origins=%s proxies=%s", bound, self.port,
                 "token" if self.config.secret else "open",
                 ",".join(sorted(self.origins.allowed)) or "own",
                 ",".join(str(n) for n in self.proxies.networks) or "none")
        return self.port

    def sockets(self) -> list[socket.socket]:
        """The listening sockets (none before :meth:`start`)."""
        found: Sequence[socket.socket] = getattr(self._server, "sockets", None) or ()
        return list(found)

    async def stop(self) -> None:
        if self._pair_timer is not None:
            self._pair_timer.cancel()
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self._server is not None:
            self._server.close()
        closing = list(self._connections)
        for conn in closing:
            conn.close(CloseCode.GOING_AWAY, b"hub shutting down")
        if closing:  # a moment for the closing handshakes, then the rest is cut
            await asyncio.wait([asyncio.ensure_future(c.wait_closed()) for c in closing],
                               timeout=STOP_GRACE)
            for conn in closing:
                conn.cut()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        await self.registry.close()

    def _timed_out(self, conn: ClientConnection) -> None:
        """``conn`` sent nothing (not even a pong) for 1.5 heartbeats: it is gone.

        Its network went away without closing anything: its peer is told only after
        ``peer_away_grace`` (a phone restarting media may be back by then)."""
        log.info("heartbeat-timeout id=%s remote=%s", conn.client_id, conn.remote)
        conn.away = True
        conn.abort()

    # -- WebSocket ----------------------------------------------------------

    def open_ws(self, transport: asyncio.Transport, head: bytes) -> None:
        """A request for ``/ws`` (``head``: what the client sent so far): answer it."""
        ws = ServerProtocol(max_size=self.max_frame, logger=WS_LOG)
        split = head.find(b"\r\n\r\n") + 4
        head, early = (head[:split], head[split:]) if split >= 4 else (head, b"")
        ws.receive_data(head)
        events = ws.events_received()
        request = events[0] if events and isinstance(events[0], WSRequest) else None
        if request is None:  # not HTTP; websockets answered it (or closes)
            Refused(ws, transport, None).flush()
            return
        headers = request.headers
        response = ws.accept(request)
        if response.status_code != 101:  # not a valid WebSocket upgrade
            handshake(ws, transport, response, None)
            return
        # accept() refuses repeated Origin, Sec-WebSocket-Key ... (400) but not Host,
        # whose headers.get() would raise: refused the same way.
        if len(headers.get_all("Host")) > 1:
            handshake(ws, transport, ws.reject(400, "Failed to open a WebSocket connection: "
                                               "invalid Host header: multiple values.\n"), None)
            return
        peer = transport.get_extra_info("peername")
        remote = self.proxies.client(str(peer[0]) if peer else "",
                                     headers.get_all("X-Forwarded-For"))
        origin = headers.get("Origin")
        decision = admit(Upgrade(request.path, origin, headers.get("Host", ""), remote,
                                 self._tls), self._rules, self.limiter, time.time())
        verdict = decision.verdict
        if verdict is not Verdict.ACCEPT:
            self.metrics.refused.labels(verdict.value).inc()
        if verdict is Verdict.ORIGIN:
            self.origin_refusals.refused(origin or "", headers.get("Host", ""), self._tls,
                                         remote)
            handshake(ws, transport, ws.reject(403, "origin not allowed\n"), None)
            return
        if self._full.seen(decision):
            log.warning("full max-connections=%d: refusing new connections until one "
                        "closes (said again once it has room and fills up)",
                        self.limiter.max_total)
        if verdict is Verdict.LIMIT:
            log.info("refused reason=limit remote=%s why=%r", remote, decision.why)
        elif verdict is Verdict.UNAUTHORIZED:
            log.info("refused reason=unauthorized id=%s remote=%s why=%r",
                     decision.client_id, remote, decision.why)
        if decision.counted:
            self.limiter.open(remote)  # (admit() checked there is room)
        if decision.error is not None:
            self.metrics.error(decision.error.code)
            counted = functools.partial(self.limiter.close, remote) if decision.counted \
                else None
            refuse(ws, transport, response, counted, decision.error, decision.close_code,
                   decision.close_reason, early)
            return
        self._accept(ws, transport, response, decision.client_id, remote, early,
                     decision.wants_ice)

    def _accept(self, ws: ServerProtocol, transport: asyncio.Transport, response: WSResponse,
                client_id: str, remote: str, early: bytes, wants_ice: bool = False) -> None:
        clock = self._clock
        assert clock is not None  # (started)
        bucket = TokenBucket(self.config.rate, self.config.burst, clock.time()) \
            if self.config.rate > 0 else None
        ws.send_response(response)
        out = ws.data_to_send()
        if wants_ice:  # first, with the response: a call needs no /ice-servers request
            servers = ice_servers_for(self.config, client_id, time.time())
            out.append(text_frame(Message(ICE_SERVERS_TYPE, client_id, {"iceServers": servers},
                                          has_data=True).encode()))
        # A new protocol object for the open connection: the handshake's parser would
        # keep the request (headers and all, 2 KB) as long as the connection lives.
        ws = ServerProtocol(state=WSState.OPEN, max_size=self.max_frame, logger=WS_LOG)
        # (answered once its id is registered: see Unanswered)
        conn = ClientConnection(self, client_id, ws, Unanswered(transport, b"".join(out)),
                                self.config.send_queue_bytes, bucket, remote)
        transport.set_protocol(conn)
        conn.hold()  # until it is registered
        if early:  # frames sent right behind the request
            conn.data_received(early)
        self._connections.add(conn)
        if self._heartbeat is not None:
            self._heartbeat.wheel.add(conn)
        self.metrics.connections.inc()
        self.metrics.connections_total.inc()
        spawn(self._register(conn), name="hub-register")

    async def _register(self, conn: ClientConnection) -> None:
        client_id = conn.client_id
        try:
            replaced = await self.registry.register(conn)
        except Exception as exc:  # (a registry fault: not answered, so cut, not left waiting)
            log.error("register id=%s failed (%s): connection cut", client_id,
                      str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            log.debug("register id=%s failed", client_id, exc_info=True)
            with contextlib.suppress(Exception):
                await self.registry.unregister(conn)
            conn.abort()
            return
        conn.registered = True
        self.pairs.connected(client_id)
        if replaced is not None:
            self.registry_replaced(replaced)
        log.info("connect id=%s remote=%s replaced=%s", client_id, conn.remote,
                 replaced is not None)
        if conn.dropped:  # gone while it was being registered
            await self._unregister(conn)
        else:
            conn.answer_handshake()
            conn.resume()

    def connection_closed(self, conn: ClientConnection) -> None:
        """``conn``'s TCP connection is closed."""
        self.limiter.close(conn.remote)
        self._connections.discard(conn)
        if self._heartbeat is not None:
            self._heartbeat.wheel.discard(conn)
        self.metrics.connections.dec()
        if conn.registered:
            spawn(self._unregister(conn), name="hub-unregister")

    async def _unregister(self, conn: ClientConnection) -> None:
        client_id = conn.client_id
        still_held = await self.registry.unregister(conn)
        if still_held:
            self._left(client_id, asyncio.get_running_loop().time(), away=conn.away)
        log.info("disconnect id=%s code=%s", client_id, conn.close_code)

    # -- other nodes: what a shared registry (RedisRegistry) reports -------------

    def registry_replaced(self, peer: Peer) -> None:
        """``peer`` lost its id to a newer connection (here or on another node)."""
        if isinstance(peer, ClientConnection):
            peer.deliver(HubError(ErrorCode.REPLACED,
                                  "a newer connection took this id").encode())
            self.metrics.error(ErrorCode.REPLACED)
            peer.close(CloseCode.POLICY_VIOLATION, b"replaced")

    def registry_relayed(self, type_: str, sender: str, to: str) -> None:
        """A call message from another node's client reached ours: track the call."""
        if type_ in CALL_TYPES and self.pairs.relayed(type_, sender, to):
            self.metrics.calls.set(len(self.pairs))

    def registry_peer_gone(self, client_id: str) -> None:
        """A remote client's node died: as if it disconnected from here."""
        self._left(client_id, asyncio.get_running_loop().time())

    def registry_peer_back(self, client_id: str) -> None:
        self.pairs.connected(client_id)

    def registry_batch(self, deliver: Callable[[], None]) -> None:
        if self.batch is not None:  # (already collecting)
            deliver()
            return
        batch: list[ClientConnection] = []
        self.batch = batch
        try:
            deliver()
        finally:
            self.batch = None
            for conn in batch:
                conn.write_out()

    # -- peers that leave -----------------------------------------------------

    def _left(self, client_id: str, now: float, away: bool = False) -> None:
        """``client_id`` left: its connection was closed, or (``away``) the heartbeat
        dropped it. A node that vanished counts as closed: its clients saw their
        connections end and reconnect elsewhere at once."""
        grace = self.config.peer_away_grace if away else self.config.peer_grace
        if self.pairs.disconnected(client_id, now, grace) is not None:
            log.info("in-call-disconnect id=%s peer=%s grace=%s how=%s", client_id,
                     ",".join(sorted(self.pairs.peers_of(client_id))), grace,
                     "away" if away else "closed")
            self._schedule_pairs()

    def _schedule_pairs(self) -> None:
        if self._pair_timer is not None:
            self._pair_timer.cancel()
            self._pair_timer = None
        deadline = self.pairs.next_deadline()
        if deadline is not None:
            self._pair_timer = asyncio.get_running_loop().call_at(deadline, self._pairs_due)

    def _pairs_due(self) -> None:
        self._pair_timer = None
        for gone in self.pairs.due(asyncio.get_running_loop().time()):
            log.info("peer-disconnected gone=%s peer=%s", gone.gone, gone.peer)
            hangup = Message(MessageType.HANGUP.value, gone.peer, {"reason": "peer-disconnected"},
                             gone.gone, True)
            spawn(self.registry.deliver(gone.peer, hangup.encode()), name="hub-peer-gone")
        self.metrics.calls.set(len(self.pairs))
        self._schedule_pairs()


async def serve_forever(hub: Hub, host: str, port: int,
                        ready: Callable[[int], None] | None = None,
                        ssl_context: ssl.SSLContext | None = None) -> None:
    """Run ``hub`` until cancelled (the process's open-file limit raised first: its
    connections and the request heads it lets wait, softphone.hub.pending)."""
    raise_for_connections(hub.config.max_connections, pending=hub.heads.pending.caps.total)
    try:
        bound = await hub.start(host, port, ssl_context=ssl_context)
    except BaseException:  # (a port in use: the registry, Redis's node key, let go now)
        await hub.stop()
        raise
    # What is loaded now lives as long as the process: keep it out of the cyclic
    # collector, whose full passes over it would pause every client's messages.
    gc.collect()
    gc.freeze()
    if ready is not None:
        ready(bound)
    try:
        await asyncio.Event().wait()
    finally:
        await hub.stop()
