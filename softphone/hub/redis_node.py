"""A hub node's own key in Redis (``<prefix>node:<id>``): claimed at start so that
two running nodes never share a node id (a configuration mistake that splits the
routing of calls), held by the node's process token while it runs."""

from __future__ import annotations

import asyncio
import re
from typing import Any

__all__ = ["NodeIdTaken", "claim_node", "first_line", "safe_url"]


class NodeIdTaken(Exception):
    """Another live node holds this node id in Redis (at start): a configuration
    mistake (two nodes with one ``--node-id``); the message says which."""


async def claim_node(redis: Any, key: str, instance: str, ttl: float, heartbeat: float,
                     taken: str) -> None:
    """Take ``key`` for ``instance`` (SET NX: of two nodes starting at once, one wins).

    Held by someone else: a live node refreshes it every heartbeat, so its time to
    live goes up; the key of a node that crashed only runs down, and expires within
    its ttl: we wait for that (at most ``ttl`` plus a ``heartbeat``), so a node
    restarting after a crash is not locked out. :class:`NodeIdTaken` (``taken``, the
    message) if the holder is alive.
    """
    loop = asyncio.get_running_loop()
    deadline: float | None = None
    last = -1
    while True:
        if await redis.set(key, instance, nx=True, px=int(ttl * 1000)):
            return
        left = int(await redis.pttl(key))  # -2: gone meanwhile; -1: no ttl
        if left == -2:
            continue
        now = loop.time()
        if deadline is None:
            deadline = now + max(left / 1000, ttl) + heartbeat
        elif left > last + 50 or left == -1 or now > deadline:
            raise NodeIdTaken(taken)
        last = left
        await asyncio.sleep(min(heartbeat / 4, 0.25))


def safe_url(url: str) -> str:
    """A Redis URL without its password (for messages and logs)."""
    return re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", url)


def first_line(exc: BaseException) -> str:
    """An error in one line (at most 200 characters)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
