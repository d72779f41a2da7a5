"""The signaling hub: an aiohttp adapter around :mod:`softphone.protocol`.

Routes: ``GET /ws?id=[&token=]`` (WebSocket), ``GET /ice-servers``,
``GET /healthz``, ``GET /metrics``, and the browser phone (``/``,
``/callerA.html``, ``/callerB.html``: :mod:`softphone.webpages`). Every frame
a client sends is validated by :func:`route_frame` (pure); a valid one is delivered through the
:class:`~softphone.registry.Registry` with ``from`` set to the sender, a bad
one is answered with ``error`` and the connection is kept.

The decisions are pure and tested on their own: tokens and TURN credentials
in :mod:`softphone.auth`; rates, connection counts, origins and who is in a
call with whom in :mod:`softphone.limits`. This module applies them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import WSCloseCode, WSMsgType, web

from ._tasks import spawn
from .auth import (
    DEFAULT_TURN_TTL,
    AuthError,
    check_secret,
    turn_credentials,
    verify_token,
)
from .limits import CallPairs, ConnectionLimiter, OriginPolicy, TokenBucket
from .metrics import CONTENT_TYPE_LATEST, HubMetrics
from .protocol import (
    ErrorCode,
    HubError,
    Message,
    ProtocolError,
    is_valid_id,
    parse_client_message,
)
from .registry import MemoryRegistry, Peer, Registry
from .webpages import add_web_routes

log = logging.getLogger(__name__)

#: The original hub's ``/ice-servers``: one public Google STUN entry.
DEFAULT_ICE_SERVERS: Final[tuple[dict[str, Any], ...]] = (
    {"urls": "stun:stun.l.google.com:19302"},
)

#: Close code for a refused id or token (policy violation).
CLOSE_BAD_ID: Final = WSCloseCode.POLICY_VIOLATION
#: Close code when the hub is full (RFC 6455 "try again later").
CLOSE_FULL: Final = WSCloseCode.TRY_AGAIN_LATER


def route_frame(sender: str, text: str | bytes) -> Message | HubError:
    """Decide what to do with one frame from ``sender``: forward it, or answer an error."""
    try:
        message = parse_client_message(text)
    except ProtocolError as exc:
        return HubError(exc.code, str(exc), exc.ref)
    return message.with_sender(sender)


@dataclass
class HubConfig:
    ice_servers: Sequence[dict[str, Any]] = DEFAULT_ICE_SERVERS
    #: Frames above this many bytes are answered with ``too-large``.
    max_message_bytes: int = 64 * 1024
    #: Bytes unread by a client that does not read; past it, it is dropped.
    send_queue_bytes: int = 1024 * 1024
    heartbeat: float = 15.0
    extra_routes: list[Callable[[web.Application], None]] = field(default_factory=list)
    #: Tokens: a connection needs a token signed with this secret (None: open hub).
    secret: str | None = None
    #: Browser origins allowed besides the hub's own (``*``: any).
    allow_origins: Sequence[str] = ()
    #: Messages per second per connection (0: unlimited), and the burst allowed.
    rate: float = 100.0
    burst: float = 200.0
    #: Connections in total / from one address (0: unlimited).
    max_connections: int = 20_000
    max_per_address: int = 100
    #: How long a client in a call may be gone before its peer gets ``hangup``.
    peer_grace: float = 4.0
    #: TURN URLs handed out by ``/ice-servers`` with REST credentials from this secret.
    turn_urls: Sequence[str] = ()
    turn_secret: str | None = None
    turn_ttl: float = DEFAULT_TURN_TTL


class ClientConnection:
    """One client's WebSocket; what it has not read yet is bounded in bytes.

    Frames go straight to the transport (one ``write`` of a whole RFC 6455 text
    frame, as aiohttp's own writer does, so they never interleave with its pings
    and close frames): no queue and no writer task per connection. The
    transport's unsent buffer is the send queue; once it holds more than
    ``limit_bytes`` the client is not reading and is dropped.
    """

    __slots__ = ("_limit_bytes", "_transport", "bucket", "client_id", "dropped",
                 "limited_at", "remote", "ws")

    def __init__(self, client_id: str, ws: web.WebSocketResponse,
                 transport: asyncio.Transport | None, limit_bytes: int = 1024 * 1024,
                 bucket: TokenBucket | None = None, remote: str = "") -> None:
        self.client_id = client_id
        self.ws = ws
        self.bucket = bucket
        self.remote = remote
        self.dropped = False
        #: When this client was last told ``rate-limited``.
        self.limited_at = float("-inf")
        self._transport = transport
        self._limit_bytes = limit_bytes

    @property
    def queued(self) -> int:
        """Bytes written for this client that it has not taken yet."""
        transport = self._transport
        return 0 if transport is None else transport.get_write_buffer_size()

    def deliver(self, text: str) -> bool:
        transport = self._transport
        if self.dropped or transport is None or transport.is_closing() or self.ws.closed:
            return False
        transport.write(_text_frame(text))
        if self._limit_bytes and transport.get_write_buffer_size() > self._limit_bytes:
            self._drop()
            return False
        return True

    def _drop(self) -> None:
        log.warning("slow-reader id=%s remote=%s: more than %d bytes unread, dropping it",
                    self.client_id, self.remote, self._limit_bytes)
        self.dropped = True
        if self._transport is not None:
            # It does not read, so it would not read a close frame either; and a closing
            # transport would keep its unsent buffer until the peer reads: abort.
            self._transport.abort()

    async def close(self, code: int = WSCloseCode.OK, reason: bytes = b"") -> None:
        """Close (what was delivered is already in the transport, ahead of the close)."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.close(code=code, message=reason)

    def stop(self) -> None:
        self.dropped = True


_SHORT: Final = struct.Struct("!BB")
_MEDIUM: Final = struct.Struct("!BBH")
_LONG: Final = struct.Struct("!BBQ")


def _text_frame(text: str) -> bytes:
    """An unmasked, final WebSocket text frame (RFC 6455 5.2), as a server sends."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        return _SHORT.pack(0x81, n) + payload
    if n < 65536:
        return _MEDIUM.pack(0x81, 126, n) + payload
    return _LONG.pack(0x81, 127, n) + payload


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Hub:
    """The hub's aiohttp application, with a way to run it in-process."""

    def __init__(self, config: HubConfig | None = None,
                 registry: Registry | None = None) -> None:
        self.config = config or HubConfig()
        self.registry = registry or MemoryRegistry()
        if self.config.secret is not None:
            check_secret(self.config.secret)
        self.metrics = HubMetrics()
        self.origins = OriginPolicy.from_list(self.config.allow_origins)
        self.limiter = ConnectionLimiter(self.config.max_connections,
                                         self.config.max_per_address)
        self.pairs = CallPairs(self.config.peer_grace)
        self.registry.bind(self, self.metrics.registry)  # a shared registry reports here
        self.app = web.Application(middlewares=[_cors])
        self.app.add_routes([
            web.get("/ws", self._ws),
            web.get("/ice-servers", self._ice_servers),
            web.get("/healthz", self._healthz),
            web.get("/metrics", self._metrics),
        ])
        add_web_routes(self.app)  # the browser phone: /, /callerA.html, /callerB.html
        for add in self.config.extra_routes:
            add(self.app)
        self._runner: web.AppRunner | None = None
        self._connections: set[ClientConnection] = set()
        self._pair_timer: asyncio.TimerHandle | None = None
        self.port: int | None = None

    # -- running ------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0,
                    sock: socket.socket | None = None,
                    ssl_context: ssl.SSLContext | None = None) -> int:
        """Listen (``port=0``: any free port) and return the port (https with ``ssl_context``)."""
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site: web.BaseSite
        if sock is not None:
            site = web.SockSite(self._runner, sock, ssl_context=ssl_context)
        else:
            site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context)
        await site.start()
        server = site._server  # aiohttp keeps the asyncio (or uvloop) Server here
        sockets: Sequence[socket.socket] = getattr(server, "sockets", ())
        assert sockets, "the site is not listening"
        self.port = int(sockets[0].getsockname()[1])
        bound = str(sockets[0].getsockname()[0])
        if not self.config.secret and not _is_loopback(bound):
            log.warning("hub is open: no --secret, so anyone who reaches %s:%s can take "
                        "any id", bound, self.port)
        log.info("listening host=%s port=%s auth=%s origins=%s", bound, self.port,
                 "token" if self.config.secret else "open",
                 ",".join(sorted(self.origins.allowed)) or "own")
        return self.port

    async def stop(self) -> None:
        if self._pair_timer is not None:
            self._pair_timer.cancel()
        for conn in list(self._connections):
            await conn.close(WSCloseCode.GOING_AWAY, b"hub shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.registry.close()

    # -- HTTP ---------------------------------------------------------------

    async def _ice_servers(self, request: web.Request) -> web.Response:
        servers = list(self.config.ice_servers)
        if self.config.turn_secret and self.config.turn_urls:
            client_id = request.query.get("id", "")
            if self.config.secret:
                token = request.query.get("token") or _bearer(request)
                try:
                    verify_token(self.config.secret, token, client_id, time.time())
                except AuthError as exc:
                    self.metrics.error(ErrorCode.UNAUTHORIZED)
                    return web.json_response(
                        {"error": ErrorCode.UNAUTHORIZED.value, "message": str(exc)},
                        status=401)
            elif not is_valid_id(client_id):
                client_id = "anonymous"
            creds = turn_credentials(self.config.turn_secret, client_id, time.time(),
                                     self.config.turn_ttl)
            servers += [{"urls": url, "username": creds.username,
                         "credential": creds.credential} for url in self.config.turn_urls]
        return web.json_response({"iceServers": servers})

    async def _healthz(self, request: web.Request) -> web.Response:
        # "degraded" (still HTTP 200): a shared registry is unreachable; this node
        # serves its own clients and recovers by itself (docs/scale-out.md).
        return web.json_response({"status": self.registry.status(),
                                  "clients": self.registry.local_count()})

    async def _metrics(self, request: web.Request) -> web.Response:
        self.metrics.calls.set(len(self.pairs))
        resp = web.Response(body=self.metrics.exposition())
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    # -- WebSocket ----------------------------------------------------------

    async def _refuse(self, request: web.Request, error: HubError, code: int,
                      reason: str) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        self.metrics.error(error.code)
        await ws.send_str(error.encode())
        await ws.close(code=code, message=reason.encode()[:120])
        return ws

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if not self.origins.allows(origin, f"{request.scheme}://{request.host}"):
            self.metrics.refused.labels("origin").inc()
            log.info("refused reason=origin origin=%r remote=%s", origin[:100] if origin else
                     origin, request.remote)
            return web.Response(status=403, text="origin not allowed\n")
        remote = request.remote or ""
        refusal = self.limiter.open(remote)
        if refusal is not None:
            self.metrics.refused.labels("limit").inc()
            log.info("refused reason=limit remote=%s why=%r", remote, refusal.value)
            return await self._refuse(
                request, HubError(ErrorCode.TOO_MANY_CONNECTIONS, refusal.value),
                CLOSE_FULL, refusal.value)
        try:
            return await self._ws_counted(request, remote)
        finally:
            self.limiter.close(remote)

    async def _ws_counted(self, request: web.Request, remote: str) -> web.StreamResponse:
        client_id = request.query.get("id", "")
        if not is_valid_id(client_id):
            reason = "missing id" if not client_id else "invalid id"
            self.metrics.refused.labels("bad-id").inc()
            return await self._refuse(request, HubError(
                ErrorCode.BAD_MESSAGE,
                f"{reason}: use ?id= with 1 to 64 characters of A-Z a-z 0-9 . _ -"),
                CLOSE_BAD_ID, reason)
        if self.config.secret:
            try:
                verify_token(self.config.secret, request.query.get("token"), client_id,
                             time.time())
            except AuthError as exc:
                self.metrics.refused.labels("unauthorized").inc()
                log.info("refused reason=unauthorized id=%s remote=%s why=%r", client_id,
                         remote, str(exc))
                return await self._refuse(
                    request, HubError(ErrorCode.UNAUTHORIZED, f"unauthorized: {exc}"),
                    CLOSE_BAD_ID, f"unauthorized: {exc}")

        ws = web.WebSocketResponse(heartbeat=self.config.heartbeat, compress=False,
                                   max_msg_size=self.config.max_message_bytes * 4)
        await ws.prepare(request)
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(self.config.rate, self.config.burst, loop.time()) \
            if self.config.rate > 0 else None
        conn = ClientConnection(client_id, ws, request.transport,
                                self.config.send_queue_bytes, bucket, remote)
        self._connections.add(conn)
        self.metrics.connections.inc()
        self.metrics.connections_total.inc()
        replaced = await self.registry.register(conn)
        self.pairs.connected(client_id)
        if replaced is not None:
            self.registry_replaced(replaced)
        log.info("connect id=%s remote=%s replaced=%s", client_id, remote,
                 replaced is not None)
        try:
            async for frame in ws:
                if frame.type == WSMsgType.TEXT:
                    bucket = conn.bucket
                    if bucket is not None and not bucket.allow(now := loop.time()):
                        # Dropped. Not reading for a while is the backpressure: a flood
                        # fills aiohttp's buffer, then TCP's, instead of the hub's CPU.
                        self._rate_limited(conn, now)
                        await asyncio.sleep(bucket.delay(now))
                        continue
                    await self._on_text(conn, frame.data)
                elif frame.type == WSMsgType.BINARY:
                    self._answer(conn, HubError(ErrorCode.BAD_MESSAGE,
                                                "binary frames are not accepted"))
                elif frame.type == WSMsgType.ERROR:
                    log.info("ws-error id=%s error=%s", client_id, ws.exception())
        finally:
            self._connections.discard(conn)
            self.metrics.connections.dec()
            still_held = await self.registry.unregister(conn)
            conn.stop()
            if still_held:
                self._left(client_id, loop.time())
            log.info("disconnect id=%s code=%s", client_id, ws.close_code)
        return ws

    def _answer(self, conn: ClientConnection, error: HubError) -> None:
        self.metrics.error(error.code)
        conn.deliver(error.encode())

    def _rate_limited(self, conn: ClientConnection, now: float) -> None:
        self.metrics.rate_limited.inc()
        if now - conn.limited_at >= 1.0:  # one notice a second, not one per message
            conn.limited_at = now
            self._answer(conn, HubError(
                ErrorCode.RATE_LIMITED,
                f"more than {self.config.rate:g} messages a second: messages dropped"))

    async def _on_text(self, conn: ClientConnection, text: str) -> None:
        limit = self.config.max_message_bytes
        size = len(text)
        if size > limit or (size * 4 > limit and len(text.encode()) > limit):
            self._answer(conn, HubError(ErrorCode.TOO_LARGE,
                                        f"messages are limited to {limit} bytes"))
            return
        routed = route_frame(conn.client_id, text)
        if isinstance(routed, HubError):
            log.debug("bad-message id=%s why=%r", conn.client_id, routed.message)
            self._answer(conn, routed)
            return
        ok = await self.registry.deliver(routed.to, routed.encode())
        self._delivered(conn, routed, ok)

    def _delivered(self, conn: ClientConnection, message: Message, ok: bool) -> None:
        if not ok:
            self._answer(conn, HubError(ErrorCode.OFFLINE, f"{message.to} is not connected",
                                        message.type, message.to))
            return
        self.metrics.message(message.type)
        if message.type in _CALL_TYPES and message.sender is not None:
            if self.pairs.relayed(message.type, message.sender, message.to):
                if message.type == "call-accept":
                    self.metrics.calls_total.inc()
                    log.info("call-start a=%s b=%s", message.sender, message.to)
                else:
                    log.info("call-end by=%s peer=%s how=%s", message.sender, message.to,
                             message.type)
                self.metrics.calls.set(len(self.pairs))

    # -- other nodes: what a shared registry (RedisRegistry) reports -------------

    def registry_replaced(self, peer: Peer) -> None:
        """``peer`` lost its id to a newer connection (here or on another node)."""
        if isinstance(peer, ClientConnection):
            peer.deliver(HubError(ErrorCode.REPLACED,
                                  "a newer connection took this id").encode())
            self.metrics.error(ErrorCode.REPLACED)
            spawn(peer.close(WSCloseCode.POLICY_VIOLATION, b"replaced"))

    def registry_relayed(self, type_: str, sender: str, to: str) -> None:
        """A call message from another node's client reached ours: track the call."""
        if type_ in _CALL_TYPES and self.pairs.relayed(type_, sender, to):
            self.metrics.calls.set(len(self.pairs))

    def registry_peer_gone(self, client_id: str) -> None:
        """A remote client's node died: as if it disconnected from here."""
        self._left(client_id, asyncio.get_running_loop().time())

    def registry_peer_back(self, client_id: str) -> None:
        self.pairs.connected(client_id)

    # -- peers that leave -----------------------------------------------------

    def _left(self, client_id: str, now: float) -> None:
        if self.pairs.disconnected(client_id, now) is not None:
            log.info("in-call-disconnect id=%s peer=%s grace=%s", client_id,
                     self.pairs.peer_of(client_id), self.config.peer_grace)
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
            hangup = Message("hangup", gone.peer, {"reason": "peer-disconnected"},
                             gone.gone, True)
            spawn(self.registry.deliver(gone.peer, hangup.encode()), name="hub-peer-gone")
        self.metrics.calls.set(len(self.pairs))
        self._schedule_pairs()


_CALL_TYPES: Final = frozenset({"call-request", "call-accept", "call-reject", "hangup"})


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CORS as the original hub: any origin may use the HTTP routes."""
    if request.method == "OPTIONS":
        response: web.StreamResponse = web.Response(status=204)
    else:
        response = await handler(request)
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    response.headers["Access-Control-Allow-Headers"] = "*"
    return response


async def serve_forever(hub: Hub, host: str, port: int,
                        ready: Callable[[int], None] | None = None,
                        ssl_context: ssl.SSLContext | None = None) -> None:
    """Run ``hub`` until cancelled."""
    bound = await hub.start(host, port, ssl_context=ssl_context)
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
