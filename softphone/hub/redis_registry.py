"""A registry shared by several hub nodes through Redis (``softphone serve --redis URL``).

Design (the why is in ``docs/scale-out.md``):

- **Presence.** ``<prefix>id:<client id>`` holds ``<node>|<token>`` (the node that
  holds the id and a per-connection token) with a TTL of a few heartbeats; each
  node refreshes its ids every heartbeat, so a dead node's ids vanish within
  ``ttl`` seconds. ``<prefix>node:<node>`` says the node itself is alive.
- **Routing.** Each node subscribes to the pub/sub channel ``<prefix>to:<node>``.
  A message for a client on another node is one Lua script: look up the holder,
  ``PUBLISH`` the envelope to its node's channel. No holder, or no subscriber on
  that channel (a dead node), is ``offline``, as on one node.
- **Newest wins.** :meth:`RedisRegistry.register` swaps the holder atomically and
  sends the old node a ``replace`` notice naming the old token; that node tells
  its client ``error``/``replaced`` and closes it. Releasing an id is a
  compare-and-delete on the token, so a replaced connection never removes the
  newer holder.
- **Redis lost.** The node keeps its local clients and local delivery, answers
  ``offline`` for other nodes' clients, reports ``degraded`` (:meth:`status`,
  ``softphone_hub_degraded``), retries every heartbeat, and on recovery
  resubscribes and re-announces its ids (an id another node took meanwhile is
  handed over: the newer holder wins).
- **Vanished nodes.** For the remote peers of calls its clients are in, a node
  checks each heartbeat whether the peer's node is still alive; if it died and the
  peer is nowhere, the hub is told (``registry_peer_gone``) and, after its grace
  period, sends ``hangup``/``peer-disconnected`` as for a local disconnect.

The pure parts (key names, envelopes, which messages matter for calls, the Lua
scripts) are in :mod:`softphone.hub.redis_parts`, tested on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from typing import Any, Final

from softphone._tasks import spawn
from softphone.core.errors import MissingDependency
from softphone.core.protocol import ErrorCode, HubError
from softphone.hub.redis_parts import (
    CLAIM,
    DEFAULT_PREFIX,
    MAX_WATCHED,
    REFRESH,
    RELEASE,
    ROUTE,
    Bounce,
    Deliver,
    Envelope,
    Keys,
    Replace,
    Watch,
    bounce_for,
    call_event,
    decode_envelope,
    default_node_id,
    encode_envelope,
    holder_value,
    parse_holder,
    valid_node_id,
)
from softphone.hub.registry import Peer, Registry, RegistryEvents

__all__ = [  # (the pure parts too, as before they had a module of their own)
    "DEFAULT_HEARTBEAT",
    "DEFAULT_PREFIX",
    "DEFAULT_TTL",
    "MAX_WATCHED",
    "Bounce",
    "Deliver",
    "Envelope",
    "Keys",
    "RedisRegistry",
    "RegistryUnavailable",
    "Replace",
    "Watch",
    "bounce_for",
    "call_event",
    "decode_envelope",
    "default_node_id",
    "encode_envelope",
    "holder_value",
    "parse_holder",
    "valid_node_id",
]

log = logging.getLogger(__name__)

#: Seconds between heartbeats (presence refresh, liveness checks, reconnect tries).
DEFAULT_HEARTBEAT: Final = 1.0
#: Presence lifetime: a node that stops refreshing loses its ids after this long.
DEFAULT_TTL: Final = 3.0


class RegistryUnavailable(Exception):
    """Redis cannot be reached (at start): the message says where and why."""



# -- the registry -------------------------------------------------------------


class RedisRegistry(Registry):
    """Clients of this node in memory; who holds which id, and routing, through Redis."""

    def __init__(self, url: str, node_id: str | None = None, *,
                 prefix: str = DEFAULT_PREFIX, heartbeat: float = DEFAULT_HEARTBEAT,
                 ttl: float = DEFAULT_TTL) -> None:
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise MissingDependency(
                "--redis needs the redis package: pip install 'softphone[redis]'") from exc
        self.node_id = node_id or default_node_id()
        if not valid_node_id(self.node_id):
            raise ValueError("a node id is 1 to 64 characters of A-Z a-z 0-9 . _ -")
        if ttl <= heartbeat:
            raise ValueError("the presence ttl must be longer than the heartbeat")
        self.url = url
        self.keys = Keys(prefix)
        self.heartbeat = heartbeat
        self.ttl = ttl
        self._ttl_ms = str(int(ttl * 1000))
        # A few connections, waited for when busy (a burst of registrations must not
        # fail with "too many connections"); routing has a connection of its own.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=8, timeout=max(2.0, heartbeat * 2),
            socket_connect_timeout=2.0, socket_timeout=max(2.0, heartbeat * 2),
            retry_on_timeout=False, retry=Retry(NoBackoff(), 0), decode_responses=True,
            health_check_interval=0)
        self._pool = pool
        self._redis = aioredis.Redis(connection_pool=pool)
        self._routing: list[tuple[str, str, asyncio.Future[bool]]] = []
        self._router: asyncio.Task[None] | None = None
        #: Routing's own connection: commands packed by hand, many per write (the
        #: client's pipeline object costs ~200 us of CPU per round trip; this ~20 us
        #: per message in a batch).
        self._route_conn: Any = None
        self._route_sha = ""
        self._local: dict[str, tuple[Peer, str]] = {}
        self._watch = Watch()
        self._events: RegistryEvents | None = None
        self._pubsub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._degraded = False
        self._closed = False
        self._gauge: Any = None
        self._errors: Any = None
        self._scripts = {name: self._redis.register_script(body) for name, body in
                         (("claim", CLAIM), ("refresh", REFRESH),
                          ("release", RELEASE))}

    # -- life cycle -------------------------------------------------------------

    def bind(self, events: RegistryEvents, metrics: Any = None) -> None:
        self._events = events
        if metrics is not None:
            from prometheus_client import Counter, Gauge

            self._gauge = Gauge("softphone_hub_degraded",
                                "1 while the shared registry (Redis) is unreachable",
                                registry=metrics)
            self._errors = Counter("softphone_hub_redis_errors",
                                   "Redis operations that failed", registry=metrics)
            self._gauge.set(1 if self._degraded else 0)

    async def start(self) -> None:
        """Connect, subscribe and announce; :class:`RegistryUnavailable` if Redis is not there."""
        from redis.exceptions import RedisError

        try:
            await self._redis.ping()
            await self._setup()
        except (RedisError, OSError) as exc:
            await self._close_pubsub()
            with contextlib.suppress(Exception):
                await self._redis.aclose()
                await self._pool.disconnect()
            raise RegistryUnavailable(f"cannot reach Redis at {_safe_url(self.url)}: "
                                      f"{_why(exc)}") from None
        log.info("redis-registry node=%s url=%s ttl=%ss", self.node_id, _safe_url(self.url),
                 self.ttl)
        self._task = asyncio.create_task(self._run(), name=f"redis-registry-{self.node_id}")

    async def close(self) -> None:
        """Stop, release our ids, disconnect. Bounded: never hangs on a dead Redis."""
        self._closed = True
        for task in (self._task, self._router):
            # redis-py can swallow a cancellation inside a command: cancel until done.
            for _ in range(20):
                if task is None or task.done():
                    break
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
            if task is not None and not task.done():
                log.warning("redis-registry: %s did not stop in time", task.get_name())
        for _, _, done in self._routing:
            if not done.done():
                done.set_result(False)
        self._routing.clear()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._goodbye(), 3.0)
        self._local.clear()

    async def _goodbye(self) -> None:
        await self._drop_route_conn()
        if not self._degraded:
            with contextlib.suppress(Exception):
                for client_id, (_, token) in list(self._local.items()):
                    await self._scripts["release"](keys=[self.keys.client(client_id)],
                                                   args=[holder_value(self.node_id, token)])
                await self._redis.delete(self.keys.node(self.node_id))
        await self._close_pubsub()
        with contextlib.suppress(Exception):
            await self._redis.aclose()
        # A pool given to the client is not closed by it: every connection, now.
        await self._pool.disconnect()

    def status(self) -> str:
        return "degraded" if self._degraded else "ok"

    # -- the Registry questions ---------------------------------------------------

    async def register(self, peer: Peer) -> Peer | None:
        client_id = peer.client_id
        token = secrets.token_hex(6)
        old_local = self._local.get(client_id)
        self._local[client_id] = (peer, token)
        if not self._degraded:
            try:
                old = await self._scripts["claim"](
                    keys=[self.keys.client(client_id)],
                    args=[holder_value(self.node_id, token), self._ttl_ms])
            except Exception as exc:  # any Redis failure: degraded
                self._failed(exc)
            else:
                if old:
                    node, old_token = parse_holder(old)
                    if node != self.node_id:
                        await self._publish(node, Replace(client_id, old_token))
        if old_local is not None and old_local[0] is not peer:
            return old_local[0]
        return None

    async def unregister(self, peer: Peer) -> bool:
        held = self._local.get(peer.client_id)
        if held is None or held[0] is not peer:
            return False
        del self._local[peer.client_id]
        if not self._degraded:
            try:
                await self._scripts["release"](
                    keys=[self.keys.client(peer.client_id)],
                    args=[holder_value(self.node_id, held[1])])
            except Exception as exc:
                self._failed(exc)
        return True

    def deliver_nowait(self, to: str, text: str) -> bool | None:
        held = self._local.get(to)
        if held is not None:
            return held[0].deliver(text)
        if self._degraded:
            return False
        return None  # on another node, or nowhere: ask Redis

    async def deliver(self, to: str, text: str) -> bool:
        now = self.deliver_nowait(to, text)
        if now is not None:
            return now
        # Batched: every message waiting while a round trip is in flight goes in the
        # next write (one round trip, one connection, however many senders).
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._routing.append((to, encode_envelope(Deliver(to, self.node_id, text)), done))
        if self._router is None or self._router.done():
            self._router = asyncio.create_task(self._route(), name="redis-route")
        return await done

    async def _route(self) -> None:
        from redis.exceptions import ResponseError

        while self._routing:
            batch, self._routing = self._routing, []
            results: list[Any] = [None] * len(batch)
            try:
                conn = self._route_conn
                if conn is None:
                    # Kept before connecting, so that _drop_route_conn always closes it.
                    conn = self._route_conn = self._pool.make_connection()  # type: ignore[no-untyped-call]
                    await conn.connect()
                    await conn.send_command("SCRIPT", "LOAD", ROUTE)
                    self._route_sha = str(await conn.read_response())
                prefix = self.keys.channel("")
                await conn.send_packed_command(conn.pack_commands(
                    [("EVALSHA", self._route_sha, 1, self.keys.client(to), prefix, envelope)
                     for to, envelope, _ in batch]), check_health=False)
                results = [await conn.read_response() for _ in batch]
            except ResponseError as exc:  # not the connection: Redis refused a command
                log.warning("redis-route error=%r", _why(exc))
                await self._drop_route_conn()
            except Exception as exc:  # any Redis failure: degraded, and offline
                self._failed(exc)
                await self._drop_route_conn()
            finally:  # even when cancelled: nobody waits forever
                for (_, _, done), got in zip(batch, results, strict=True):
                    if not done.done():
                        done.set_result(isinstance(got, int) and got > 0)

    def local_count(self) -> int:
        return len(self._local)

    # -- inside ---------------------------------------------------------------

    def _failed(self, exc: BaseException) -> None:
        if self._errors is not None:
            self._errors.inc()
        if not self._degraded and not self._closed:
            self._degraded = True
            if self._gauge is not None:
                self._gauge.set(1)
            log.warning("redis-lost node=%s error=%r: serving local clients only, "
                        "retrying every %ss", self.node_id, _why(exc), self.heartbeat)

    async def _drop_route_conn(self) -> None:
        conn, self._route_conn = self._route_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect()

    async def _publish(self, node: str, envelope: Envelope) -> int:
        try:
            return int(await self._redis.publish(self.keys.channel(node),
                                                  encode_envelope(envelope)))
        except Exception as exc:
            self._failed(exc)
            return 0

    async def _setup(self) -> None:
        """Subscribe to our channel, then announce the node and every local id."""
        await self._close_pubsub()
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.keys.channel(self.node_id))
        self._pubsub = pubsub
        await self._beat()

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _run(self) -> None:
        """Read our channel; heartbeat; on a Redis failure, degrade and retry."""
        from redis.exceptions import RedisError

        reader: asyncio.Task[None] | None = None
        while not self._closed:
            try:
                if self._degraded:
                    await self._redis.ping()
                    await self._drop_route_conn()
                    await self._setup()
                    self._degraded = False
                    if self._gauge is not None:
                        self._gauge.set(0)
                    log.warning("redis-recovered node=%s: %d local ids re-announced",
                                self.node_id, len(self._local))
                reader = asyncio.create_task(self._read(self._pubsub))
                while not self._degraded and not self._closed:
                    done, _ = await asyncio.wait({reader}, timeout=self.heartbeat)
                    if done:
                        reader.result()  # raises what stopped it
                        raise ConnectionError("subscription ended")
                    await self._beat()
            except asyncio.CancelledError:
                if reader is not None:
                    reader.cancel()
                raise
            except (RedisError, OSError) as exc:
                self._failed(exc)
            if reader is not None:
                reader.cancel()
                await asyncio.wait({reader})  # (our own cancellation still propagates)
                reader = None
            await self._close_pubsub()
            await asyncio.sleep(self.heartbeat)

    async def _read(self, pubsub: Any) -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None or message.get("type") != "message":
                continue
            envelope = decode_envelope(message["data"])
            if envelope is None:
                log.debug("redis-registry: ignoring a foreign payload")
                continue
            try:
                self._on_envelope(envelope)
            except Exception:  # a bug here must not stop the node's routing
                log.exception("redis-registry: could not handle %s", type(envelope).__name__)

    def _on_envelope(self, envelope: Envelope) -> None:
        if isinstance(envelope, Replace):
            held = self._local.get(envelope.client_id)
            if held is not None and held[1] == envelope.token:
                del self._local[envelope.client_id]
                log.info("replaced-elsewhere id=%s", envelope.client_id)
                if self._events is not None:
                    self._events.registry_replaced(held[0])
            return
        if isinstance(envelope, Bounce):
            held = self._local.get(envelope.sender)
            if held is not None:
                held[0].deliver(HubError(ErrorCode.OFFLINE, f"{envelope.to} is not connected",
                                         envelope.ref, envelope.to).encode())
            return
        held = self._local.get(envelope.to)
        if held is None:
            # It left (or its presence was stale) while the message was on its way:
            # the sender gets `offline` after all, as on one node.
            log.debug("redis-registry: %s left before a message reached it", envelope.to)
            bounce = bounce_for(envelope)
            if bounce is not None:
                spawn(self._publish(envelope.from_node, bounce), name="redis-bounce")
            return
        held[0].deliver(envelope.text)
        event = call_event(envelope.text)
        if event is not None:
            self._watch.relayed(event[0], event[1], envelope.from_node)
            if self._events is not None:
                self._events.registry_relayed(event[0], event[1], envelope.to)

    async def _beat(self) -> None:
        """Say we are alive, keep our ids, and check the nodes of remote call peers."""
        await self._redis.set(self.keys.node(self.node_id), "1", px=int(self.ttl * 1000))
        items = list(self._local.items())
        for start in range(0, len(items), 1000):
            chunk = items[start:start + 1000]
            lost = await self._scripts["refresh"](
                keys=[self.keys.client(cid) for cid, _ in chunk],
                args=[self._ttl_ms, *(holder_value(self.node_id, tok) for _, (_, tok) in chunk)])
            sent = {cid: tok for cid, (_, tok) in chunk}
            for key in lost or ():
                client_id = key[len(self.keys.client("")):]
                held = self._local.get(client_id)
                if held is None or held[1] != sent.get(client_id):
                    continue  # a newer local connection took it meanwhile
                del self._local[client_id]
                log.info("id-lost id=%s: another node holds it now", client_id)
                if self._events is not None:
                    self._events.registry_replaced(held[0])
            for client_id, token in sent.items():
                held = self._local.get(client_id)
                if held is None or held[1] != token:
                    # It left while the refresh was on its way, which may have put
                    # it back: take it out again (only if still ours).
                    await self._scripts["release"](
                        keys=[self.keys.client(client_id)],
                        args=[holder_value(self.node_id, token)])
        if len(self._watch):
            await self._check_watch()

    async def _check_watch(self) -> None:
        ids = self._watch.ids()
        values = await self._redis.mget([self.keys.client(cid) for cid in ids])
        holders = {cid: (parse_holder(str(v))[0] if v else None)
                   for cid, v in zip(ids, values, strict=True)}
        nodes = sorted(self._watch.nodes() | {n for n in holders.values() if n})
        flags = await self._redis.mget([self.keys.node(n) for n in nodes])
        alive = {n: f is not None for n, f in zip(nodes, flags, strict=True)}
        alive[self.node_id] = True
        gone, back = self._watch.judge(holders, alive)
        for client_id in gone:
            log.info("remote-gone id=%s: its node stopped", client_id)
            if self._events is not None:
                self._events.registry_peer_gone(client_id)
        for client_id in back:
            if self._events is not None:
                self._events.registry_peer_back(client_id)


def _why(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _safe_url(url: str) -> str:
    """The URL without a password."""
    return re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", url)
