"""A registry shared by several hub nodes through Redis (``softphone serve --redis URL``).

Design (the why is in ``docs/scale-out.md``):

- **Presence.** ``<prefix>id:<client id>`` holds ``<node>|<token>`` (the node that
  holds the id and a per-connection token) with a TTL of a few heartbeats; each
  node refreshes its ids every heartbeat, so a dead node's ids vanish within
  ``ttl`` seconds. ``<prefix>node:<node>`` says the node itself is alive.
- **Routing.** Each node subscribes to the pub/sub channel ``<prefix>to:<node>``.
  Messages for clients on other nodes go out once per event-loop turn, one
  ``PUBLISH`` per node whose holder the node's presence cache knows, else a Lua
  script (look up the holder, publish there, name the node: the cache learns
  it) (:mod:`softphone.hub.redis_route`). No holder, or no subscriber on that
  channel (a dead node), is ``offline``, as on one node. A node that gets a
  message for an id it does not hold (the cache was stale: it moved or left)
  sends it on to the holder, or back as ``offline``, and tells the sender's node
  to forget (:mod:`softphone.hub.redis_inbox`). The connections that carry
  messages are read with hiredis, without redis-py's client (:mod:`softphone.hub.redis_wire`).
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
import secrets
from collections.abc import Callable
from typing import Any, Final

from softphone.core.errors import MissingDependency
from softphone.hub.redis_inbox import Inbox
from softphone.hub.redis_node import (
    NodeIdTaken,
    RedisRefused,
    check_url,
    claim_node,
    first_line,
    refused_by_redis,
    safe_url,
)
from softphone.hub.redis_parts import (
    CLAIM,
    DEFAULT_PREFIX,
    KEEP_NODE,
    REFRESH,
    RELEASE,
    Envelope,
    Keys,
    PresenceCache,
    Replace,
    Watch,
    default_node_id,
    deliver_envelope,
    encode_envelope,
    holder_value,
    parse_holder,
    valid_node_id,
)
from softphone.hub.redis_route import Router
from softphone.hub.redis_wire import Link, ReplyError, open_link
from softphone.hub.registry import Peer, Registry, RegistryEvents

__all__ = ["DEFAULT_HEARTBEAT", "DEFAULT_TTL", "NodeIdTaken", "RedisRefused", "RedisRegistry",
           "RegistryUnavailable"]

log = logging.getLogger(__name__)

#: Seconds between heartbeats (presence refresh, liveness checks, reconnect tries).
DEFAULT_HEARTBEAT: Final = 1.0
#: Presence lifetime: a node that stops refreshing loses its ids after this long.
DEFAULT_TTL: Final = 3.0


class RegistryUnavailable(Exception):
    """Redis cannot be reached (at start): the message says where and why."""



# -- the registry -------------------------------------------------------------


class RedisRegistry(Registry, Inbox):
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
        check_url(url)  # (redis-py would take redis://host/abc as database 0)
        self.url = url
        self.keys = Keys(prefix)
        self.heartbeat = heartbeat
        self.ttl = ttl
        self._ttl_ms = str(int(ttl * 1000))
        #: Held in ``<prefix>node:<id>`` while we run: tells us from another node
        #: started with the same id.
        self._instance = secrets.token_hex(8)
        # A few connections, waited for when busy (a burst of registrations must not
        # fail with "too many connections"); routing has a connection of its own.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=8, timeout=max(2.0, heartbeat * 2),
            socket_connect_timeout=2.0, socket_timeout=max(2.0, heartbeat * 2),
            retry_on_timeout=False, retry=Retry(NoBackoff(), 0), decode_responses=True,
            health_check_interval=0, protocol=2)  # (RESP2: what redis_wire reads)
        self._pool = pool
        self._redis = aioredis.Redis(connection_pool=pool)
        self._local: dict[str, tuple[Peer, str]] = {}
        self._watch = Watch()
        #: Which node holds which remote id, as far as this node knows.
        self.cache = PresenceCache()
        #: Messages for other nodes' clients (redis_route).
        self.router = Router(self.node_id, self.keys, self.cache, self._open_link,
                             self._failed)
        self._events: RegistryEvents | None = None
        #: The subscription to this node's channel.
        self._sub: Link | None = None
        self._task: asyncio.Task[None] | None = None
        self._degraded = False
        #: Another running node holds our node id (its key in Redis): degraded too.
        self._id_taken = False
        #: The last Redis error the log said while degraded (a retry's new one is said).
        self._said_error: str | None = None
        self._closed = False
        self._gauge: Any = None
        self._errors: Any = None
        self._scripts = {name: self._redis.register_script(body) for name, body in
                         (("claim", CLAIM), ("refresh", REFRESH),
                          ("release", RELEASE), ("keep_node", KEEP_NODE))}

    # -- life cycle -------------------------------------------------------------

    def bind(self, events: RegistryEvents, metrics: Any = None) -> None:
        self._events = events
        if metrics is not None:
            from prometheus_client import Counter, Gauge

            self._gauge = Gauge("softphone_hub_degraded",
                                "1 while the shared registry (Redis) is unreachable, "
                                "or another running node has this node's id",
                                registry=metrics)
            self._errors = Counter("softphone_hub_redis_errors",
                                   "Redis operations that failed", registry=metrics)
            self._show_degraded()

    async def start(self) -> None:
        """Connect, subscribe and announce; :class:`RegistryUnavailable` if Redis is not
        there, :class:`RedisRefused` if it refuses the URL's password or database."""
        from redis.exceptions import RedisError

        try:
            await self._redis.ping()
            await claim_node(self._redis, self.keys.node(self.node_id), self._instance,
                             self.ttl, self.heartbeat, f"node id {self.node_id!r} is in use "
                             f"by another running hub on {safe_url(self.url)}: give each "
                             "node its own --node-id (or leave it out: hostname-pid)")
            await self._setup()
        except (RedisError, OSError, ReplyError, NodeIdTaken) as exc:
            await self._close_sub()
            with contextlib.suppress(Exception):
                await self._redis.aclose()
                await self._pool.disconnect()
            if isinstance(exc, NodeIdTaken):
                raise
            if refused_by_redis(exc):
                raise RedisRefused(f"Redis at {safe_url(self.url)} refuses this URL: "
                                   f"{first_line(exc)} (check the password, user and "
                                   "database number of --redis)") from None
            raise RegistryUnavailable(f"cannot reach Redis at {safe_url(self.url)}: "
                                      f"{first_line(exc)}") from None
        log.info("redis-registry node=%s url=%s ttl=%ss", self.node_id, safe_url(self.url),
                 self.ttl)
        self._task = asyncio.create_task(self._run(), name=f"redis-registry-{self.node_id}")

    async def close(self) -> None:
        """Stop, release our ids, disconnect. Bounded: never hangs on a dead Redis."""
        self._closed = True
        task = self._task
        # redis-py can swallow a cancellation inside a command: cancel until done.
        for _ in range(20):
            if task is None or task.done():
                break
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        if task is not None and not task.done():
            log.warning("redis-registry: %s did not stop in time", task.get_name())
        await self.router.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._goodbye(), 3.0)
        self._local.clear()

    async def _goodbye(self) -> None:
        if not self._degraded:
            with contextlib.suppress(Exception):
                for client_id, (_, token) in list(self._local.items()):
                    await self._scripts["release"](keys=[self.keys.client(client_id)],
                                                   args=[holder_value(self.node_id, token)])
                await self._scripts["release"](keys=[self.keys.node(self.node_id)],
                                               args=[self._instance])
        await self._close_sub()
        with contextlib.suppress(Exception):
            await self._redis.aclose()
        # A pool given to the client is not closed by it: every connection, now.
        await self._pool.disconnect()

    def status(self) -> str:
        return "degraded" if self._degraded or self._id_taken else "ok"

    def _show_degraded(self) -> None:
        """``softphone_hub_degraded``: 1 while Redis is lost or our node id is taken."""
        if self._gauge is not None:
            self._gauge.set(1 if self._degraded or self._id_taken else 0)

    # -- the Registry questions ---------------------------------------------------

    async def register(self, peer: Peer) -> Peer | None:
        client_id = peer.client_id
        token = secrets.token_hex(6)
        old_local = self._local.get(client_id)
        self._local[client_id] = (peer, token)
        self.cache.forget(client_id)  # (here now, whatever was cached)
        if not self._degraded:
            try:
                old = await self._scripts["claim"](
                    keys=[self.keys.client(client_id)],
                    args=[holder_value(self.node_id, token), self._ttl_ms])
            except Exception as exc:  # any Redis failure: degraded
                self._failed(exc)
            else:
                try:
                    if old:
                        node, old_token = parse_holder(old)
                        if node != self.node_id:
                            await self._publish(node, Replace(client_id, old_token))
                except BaseException:  # (the caller cuts this one: the one before stays)
                    if old_local is None:
                        self._local.pop(client_id, None)
                    else:
                        self._local[client_id] = old_local
                    raise
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

    def deliver_later(self, to: str, text: str, done: Callable[[bool], None],
                      sender: str = "") -> bool:
        if self._degraded:
            done(False)
            return True
        return self.router.send(
            to, deliver_envelope(to, self.node_id, sender, text), done)

    def when_ready(self, callback: Callable[[], None]) -> None:
        self.router.when_ready(callback)

    async def deliver(self, to: str, text: str) -> bool:
        now = self.deliver_nowait(to, text)
        if now is not None:
            return now
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        def finished(ok: bool) -> None:
            if not done.done():
                done.set_result(ok)

        self.deliver_later(to, text, finished)
        return await done

    def local_count(self) -> int:
        return len(self._local)

    # -- inside ---------------------------------------------------------------

    def _failed(self, exc: BaseException) -> None:
        if self._errors is not None:
            self._errors.inc()
        if not self._degraded and not self._closed:
            self._degraded = True
            self._show_degraded()
            self._said_error = first_line(exc)
            log.warning("redis-lost node=%s error=%r: serving local clients only, "
                        "retrying every %ss", self.node_id, self._said_error, self.heartbeat)
            self.cache.clear()
            self.router.reset()

    def _retry_failed(self, exc: BaseException) -> None:
        """A retry (while degraded) failed: each one at info; its error at warning when
        it is not the one said last (Redis's password changed, Redis stopped, ...)."""
        if self._errors is not None:
            self._errors.inc()
        error = first_line(exc)
        if error != self._said_error:
            self._said_error = error
            log.warning("redis-retry-failed node=%s error=%r: still serving local "
                        "clients only, retrying every %ss", self.node_id, error,
                        self.heartbeat)
        else:
            log.info("redis-retry-failed node=%s error=%r", self.node_id, error)

    async def _open_link(self, on_message: Callable[[bytes], None] | None = None) -> Link:
        return await open_link(self._pool, on_message)

    async def _publish(self, node: str, envelope: Envelope) -> int:
        try:
            return int(await self._redis.publish(self.keys.channel(node),
                                                  encode_envelope(envelope)))
        except Exception as exc:
            self._failed(exc)
            return 0

    async def _setup(self) -> None:
        """Subscribe to our channel, then announce the node and every local id."""
        await self._close_sub()
        link = await self._open_link(self._on_payload)
        try:
            await asyncio.wait_for(link.call("SUBSCRIBE", self.keys.channel(self.node_id)),
                                   max(2.0, self.heartbeat * 2))
        except BaseException:
            await link.aclose()
            raise
        self._sub = link
        await self._beat()

    async def _close_sub(self) -> None:
        link, self._sub = self._sub, None
        if link is not None:
            await link.aclose()

    async def _run(self) -> None:
        """Read our channel; heartbeat; on a Redis failure, degrade and retry."""
        from redis.exceptions import RedisError

        while not self._closed:
            retrying = self._degraded
            try:
                if retrying:
                    await self._redis.ping()
                    self.router.reset()
                    await self._setup()
                    self._degraded = False
                    self._said_error = None
                    self._show_degraded()
                    log.warning("redis-recovered node=%s: %d local ids re-announced",
                                self.node_id, len(self._local))
                sub = self._sub
                assert sub is not None
                while not self._degraded and not self._closed:
                    done, _ = await asyncio.wait({sub.lost}, timeout=self.heartbeat)
                    if done:
                        raise ConnectionError("subscription ended")
                    await self._beat()
            except (RedisError, OSError, ReplyError) as exc:
                if retrying and self._degraded:
                    self._retry_failed(exc)
                else:
                    self._failed(exc)
            await self._close_sub()
            await asyncio.sleep(self.heartbeat)

    async def _beat(self) -> None:
        """Say we are alive, keep our ids, and check the nodes of remote call peers."""
        kept = await self._scripts["keep_node"](keys=[self.keys.node(self.node_id)],
                                                args=[self._instance, self._ttl_ms])
        self._node_id_kept(bool(kept))
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

    def _node_id_kept(self, kept: bool) -> None:
        """A heartbeat kept our node's key (True), or found another running node
        holding it (False: Redis lost our key, or we were frozen past its ttl, and
        a node with our id started meanwhile): degraded while that lasts, so that
        a load balancer leaves this node (its messages may go to the other one)."""
        if kept == (not self._id_taken):
            if self._id_taken:
                log.debug("node-id-taken node=%s: still", self.node_id)
            return
        self._id_taken = not kept
        self._show_degraded()
        if self._id_taken:
            log.error("node-id-taken node=%s: another running hub has this node id; "
                      "messages for this node may go to it; degraded until it is ours "
                      "again", self.node_id)
        else:
            log.warning("node-id-regained node=%s: the node id is this hub's again",
                        self.node_id)

    async def _check_watch(self) -> None:
        ids = self._watch.ids()
        values = await self._redis.mget([self.keys.client(cid) for cid in ids])
        holders = {cid: (parse_holder(str(v))[0] if v else None)
                   for cid, v in zip(ids, values, strict=True)}
        nodes = sorted(self._watch.nodes() | {n for n in holders.values() if n})
        flags = await self._redis.mget([self.keys.node(n) for n in nodes])
        alive = {n: f is not None for n, f in zip(nodes, flags, strict=True)}
        alive[self.node_id] = True
        for node, up in alive.items():
            if not up:
                self.cache.forget_node(node)
        gone, back = self._watch.judge(holders, alive)
        for client_id in gone:
            log.info("remote-gone id=%s: its node stopped", client_id)
            if self._events is not None:
                self._events.registry_peer_gone(client_id)
        for client_id in back:
            if self._events is not None:
                self._events.registry_peer_back(client_id)

