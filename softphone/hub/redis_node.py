"""A hub node's own key in Redis (``<prefix>node:<id>``): claimed at start so that
two running nodes never share a node id (a configuration mistake that splits the
routing of calls), held by the node's process token while it runs."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any
from urllib.parse import unquote, urlsplit

# (the registry's lines, under its name)
log = logging.getLogger("softphone.hub.redis_registry")

__all__ = ["NodeIdTaken", "RedisRefused", "check_url", "claim_node", "first_line",
           "refused_by_redis", "safe_url"]


class NodeIdTaken(Exception):
    """Another live node holds this node id in Redis (at start): a configuration
    mistake (two nodes with one ``--node-id``); the message says which."""


class RedisRefused(Exception):
    """Redis answers but refuses what the URL asks (at start): a wrong or missing
    password or user, a database number it does not have. A configuration mistake,
    not an outage: retrying will not fix it. The message says which."""


def check_url(url: str) -> None:
    """``ValueError`` unless the path of a ``redis://``/``rediss://`` URL is empty or a
    database number (``/0``): redis-py would ignore ``/abc`` and use database 0."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("redis", "rediss"):
        return  # (unix:// is a socket path; a wrong scheme is redis-py's to refuse)
    db = unquote(parts.path).strip("/")
    if db and not (db.isascii() and db.isdigit()):
        raise ValueError(f"the path of a Redis URL is a database number (redis://HOST:6379/0),"
                         f" not {parts.path!r}")


def refused_by_redis(exc: BaseException) -> bool:
    """Is ``exc`` Redis refusing the URL's password, user or database number (a
    configuration mistake), rather than Redis being unreachable?"""
    from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

    if isinstance(exc, (AuthenticationError, NoPermissionError)):
        return True
    text = str(exc)
    return isinstance(exc, ResponseError) and ("DB index" in text or "invalid DB" in text)


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
            log.info("node id held: waiting up to %.1f s to see whether its holder "
                     "lives (a node restarting after a crash waits for its old key)",
                     deadline - now)
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
