"""Messages for clients of other nodes: batched per event-loop turn, one ``PUBLISH``
per destination node (part of :mod:`softphone.hub.redis_registry`).

Every message the hub hands over in one event-loop turn goes out in one write
on the routing connection (a :class:`~softphone.hub.redis_wire.Link`) at the end
of the turn:

- recipients whose node the :class:`~softphone.hub.redis_parts.PresenceCache`
  knows: one ``PUBLISH`` per node, carrying all of that node's messages;
- the others: the ``ROUTE`` script each (look the holder up, publish there),
  whose reply names the node: the cache learns it.

Each message's outcome comes back with its reply, in order: ``PUBLISH`` with no
subscriber means the node is gone (its cache entries are dropped and its
messages go again through the script, which answers ``offline`` while its
presence lasts); the script says when nobody holds the id. A node that gets a
message for an id it no longer holds sends it on once (:meth:`Router.forward`),
or back as ``offline``, and tells the sender's node to forget (see
``docs/scale-out.md``).

Nothing waits per message: no task, no future. When more than
:data:`HIGH_WATER` messages wait for Redis, :meth:`Router.send` says so and the
hub stops reading the senders until :meth:`Router.when_ready` calls back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from softphone._tasks import spawn
from softphone.hub.redis_parts import ROUTE, Keys, PresenceCache, encode_envelopes
from softphone.hub.redis_wire import Link, LinkLost, Reply, ReplyError, command

log = logging.getLogger(__name__)

#: Messages waiting for Redis (queued or sent, no reply yet) past which senders wait
#: (they are read again below half of it).
HIGH_WATER: Final = 10_000

Done = Callable[[bool], None]


def _nothing(ok: bool) -> None:
    pass


class _Item:
    """One message (or notice) for another node, until Redis has answered for it."""

    __slots__ = ("done", "envelope", "forward", "node", "to")

    def __init__(self, to: str, envelope: str, done: Done, node: str | None = None,
                 forward: bool = False) -> None:
        #: The recipient's id (a notice: the node's name).
        self.to = to
        #: The encoded envelope (redis_parts).
        self.envelope = envelope
        self.done = done
        #: A notice for this node (no lookup, no cache).
        self.node = node
        #: Sent on by a node that does not hold ``to``: the script, never back here.
        self.forward = forward


class Router:
    """The routing connection and what waits on it; see the module's doc."""

    def __init__(self, node_id: str, keys: Keys, cache: PresenceCache,
                 connect: Callable[[], Awaitable[Link]],
                 failed: Callable[[BaseException], None],
                 high_water: int = HIGH_WATER) -> None:
        self.node_id = node_id
        #: Messages waiting past which :meth:`send` says to wait (read again below half).
        self.high_water = high_water
        self.keys = keys
        self.cache = cache
        self._connect_link = connect
        self._failed = failed
        self._queue: list[_Item] = []
        self._scheduled = False
        self._link: Link | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._sha = b""
        self._prefix = keys.channel("").encode()
        self._key_prefix = keys.client("").encode()
        #: Messages queued or sent whose reply has not come yet.
        self.pending = 0
        self._waiters: list[Callable[[], None]] = []
        self._closed = False

    # -- what the registry asks --------------------------------------------------

    def send(self, to: str, envelope: str, done: Done) -> bool:
        """Route ``envelope`` (a Deliver) to ``to``'s node; ``done(ok)`` when Redis has
        answered. False: too much waits already (see :meth:`when_ready`)."""
        self._add(_Item(to, envelope, done))
        return self.pending < self.high_water

    def forward(self, to: str, envelope: str, done: Done) -> None:
        """Send on a message this node got for ``to``, which it does not hold: to
        whichever other node holds it now (``done(False)``: nobody, or only here)."""
        self._add(_Item(to, envelope, done, forward=True))

    def notify(self, node: str, envelope: str) -> None:
        """A notice for ``node`` (bounce, forget), with this turn's messages for it."""
        self._add(_Item(node, envelope, _nothing, node=node))

    def when_ready(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once fewer than half :attr:`high_water` messages wait."""
        if self.pending < self.high_water // 2:
            asyncio.get_running_loop().call_soon(callback)
        else:
            self._waiters.append(callback)

    def reset(self) -> None:
        """Redis is lost: what waits fails (``offline``), the connection goes."""
        queue, self._queue = self._queue, []
        for item in queue:
            self._finish(item, False)
        link, self._link = self._link, None
        if link is not None:
            spawn(link.aclose(), name="redis-route-close")

    async def close(self) -> None:
        self._closed = True
        task = self._connecting
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self.reset()
        self._wake()

    # -- inside ----------------------------------------------------------------

    def _add(self, item: _Item) -> None:
        if self._closed:
            item.done(False)
            return
        self._queue.append(item)
        self.pending += 1
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _finish(self, item: _Item, ok: bool) -> None:
        self.pending -= 1
        try:
            item.done(ok)
        except Exception:  # a bug in a callback must not lose the others
            log.exception("redis-route: a delivery callback failed")
        if self._waiters and self.pending < self.high_water // 2:
            self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for callback in waiters:
            callback()

    def _flush(self) -> None:
        """The end of a turn: everything queued goes, in one write."""
        self._scheduled = False
        link = self._link
        if link is None or not link.is_open():
            self._link = None
            if self._queue and (self._connecting is None or self._connecting.done()):
                self._connecting = asyncio.get_running_loop().create_task(
                    self._connect(), name="redis-route-connect")
            return
        batch, self._queue = self._queue, []
        if not batch:
            return
        cache = self.cache
        groups: dict[str, list[_Item]] = {}
        order: list[_Item | str] = []
        for item in batch:
            node = item.node
            if node is None and not item.forward:
                node = cache.get(item.to)
            if node is None:
                order.append(item)
                continue
            group = groups.get(node)
            if group is None:
                groups[node] = group = []
                order.append(node)
            group.append(item)
        parts: list[bytes] = []
        handlers: list[Callable[[Reply], None]] = []
        prefix, key_prefix, sha = self._prefix, self._key_prefix, self._sha
        for entry in order:
            if isinstance(entry, str):
                node = entry
                items = groups[node]
                payload = items[0].envelope if len(items) == 1 else \
                    encode_envelopes([i.envelope for i in items])
                parts.append(command(b"PUBLISH", prefix + node.encode(), payload.encode()))
                handlers.append(_Published(self, node, items))
            else:
                item = entry
                parts.append(command(b"EVALSHA", sha, 1, key_prefix + item.to.encode(), prefix,
                                     item.envelope.encode(),
                                     self.node_id if item.forward else b""))
                handlers.append(_Routed(self, item))
        link.send(b"".join(parts), handlers)

    async def _connect(self) -> None:
        link: Link | None = None
        try:
            link = await self._connect_link()
            self._sha = await link.call("SCRIPT", "LOAD", ROUTE)
        except asyncio.CancelledError:
            if link is not None:
                await link.aclose()
            raise
        except Exception as exc:
            if link is not None:
                await link.aclose()
            queue, self._queue = self._queue, []
            for item in queue:
                self._finish(item, False)
            self._failed(exc)
            return
        if self._closed:
            await link.aclose()
            return
        self._link = link
        self._flush()

    def _lost(self, why: Reply) -> None:
        """The reply for a batch was not a reply: the link is gone or refused."""
        if isinstance(why, LinkLost):
            if self._link is not None and not self._link.is_open():
                self._link = None
                if not self._closed:
                    self._failed(why)
        elif isinstance(why, ReplyError):
            log.warning("redis-route error=%r", str(why)[:200])
            if "NOSCRIPT" in str(why):  # (a SCRIPT FLUSH): a new link loads it again
                link, self._link = self._link, None
                if link is not None:
                    spawn(link.aclose(), name="redis-route-close")


class _Published:
    """The reply to one node's ``PUBLISH``: how many subscribers got it."""

    __slots__ = ("items", "node", "router")

    def __init__(self, router: Router, node: str, items: list[_Item]) -> None:
        self.router = router
        self.node = node
        self.items = items

    def __call__(self, reply: Reply) -> None:
        router = self.router
        if reply.__class__ is int and reply > 0:
            for item in self.items:
                router._finish(item, True)
            return
        if reply.__class__ is int:  # nobody subscribed: the node is gone
            dropped = router.cache.forget_node(self.node)
            log.info("redis-route: node %s is gone (%d cached ids dropped)", self.node,
                     dropped)
            for item in self.items:
                if item.node is not None:  # a notice for it: nobody to tell
                    router._finish(item, False)
                else:  # through the script now: a newer node, or offline
                    router.pending -= 1
                    router._add(item)
            return
        router._lost(reply)
        for item in self.items:
            router._finish(item, False)


class _Routed:
    """The reply to one ``ROUTE`` script: ``[result, node]``."""

    __slots__ = ("item", "router")

    def __init__(self, router: Router, item: _Item) -> None:
        self.router = router
        self.item = item

    def __call__(self, reply: Reply) -> None:
        router, item = self.router, self.item
        if reply.__class__ is not list or len(reply) != 2:
            router._lost(reply)
            router._finish(item, False)
            return
        result, node = reply
        cache = router.cache
        if result > 0:
            if not item.forward:
                cache.learn(item.to, node.decode())
            router._finish(item, True)
            return
        if result == 0 and node:
            cache.forget_node(node.decode())
        else:
            cache.forget(item.to)
        router._finish(item, False)
