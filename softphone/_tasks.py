"""Fire-and-forget tasks that are not garbage-collected while they run."""

from __future__ import annotations

import asyncio
import collections.abc
import logging
from collections.abc import Callable, Coroutine, Generator
from typing import Any

log = logging.getLogger(__name__)

_running: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
    """Run ``coro`` in the background; its exception, if any, is logged."""
    task = asyncio.create_task(coro, name=name)
    _running.add(task)
    task.add_done_callback(_done)
    return task


def _done(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s failed", task.get_name(), exc_info=task.exception())


class _Deferred(collections.abc.Coroutine[Any, Any, Any]):
    """A coroutine made by ``make()`` only when its task first runs.

    A task started from a timer or a transport callback as the loop stops never
    runs. Made up front, its coroutine would then die never awaited, and the
    garbage collector's warning lands in whatever runs next (it failed an
    unrelated test in CI). Made here, nothing is left: no coroutine, and no
    finalizer holding one (and through it the task) until the program exits.
    """

    __slots__ = ("_coro", "_make")

    def __init__(self, make: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        self._make: Callable[[], Coroutine[Any, Any, Any]] | None = make
        self._coro: Coroutine[Any, Any, Any] | None = None

    def _started(self) -> Coroutine[Any, Any, Any]:
        if self._coro is None:
            assert self._make is not None
            self._coro, self._make = self._make(), None
        return self._coro

    def send(self, value: Any) -> Any:
        return self._started().send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        if self._coro is None:  # (cancelled before its first step: it never starts)
            self._make = None
            raise typ if val is None else val
        return self._coro.throw(typ, val, tb)

    def close(self) -> None:
        self._make = None
        if self._coro is not None:
            self._coro.close()

    def __await__(self) -> Generator[Any, None, Any]:
        return self._started().__await__()


def spawn_kept(tasks: set[asyncio.Task[Any]],
               make: Callable[[], Coroutine[Any, Any, Any]]) -> asyncio.Task[Any]:
    """Run ``make()`` as a task kept in ``tasks`` (its owner's set) until it is done.

    For tasks started from a timer or a transport callback (a datagram to send
    or deliver): the coroutine is made at the task's first step, so a task
    started as the loop stops, which never runs, leaves no never-awaited
    coroutine behind, and is dropped without a "Task was destroyed but it is
    pending" line (what it would have sent is no loss at the loop's end).
    """
    task = asyncio.get_running_loop().create_task(_Deferred(make))
    task._log_destroy_pending = False  # type: ignore[attr-defined]  # (as run_until_complete)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task
