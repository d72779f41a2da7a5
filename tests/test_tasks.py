"""softphone._tasks.spawn_kept: a task whose coroutine is made at its first step."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from softphone._tasks import spawn_kept


async def test_the_coroutine_is_made_at_the_first_step_and_its_result_kept() -> None:
    made: list[str] = []
    tasks: set[asyncio.Task[Any]] = set()

    async def job(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    def make() -> Any:
        made.append("made")
        return job(21)

    task = spawn_kept(tasks, make)
    assert made == [] and task in tasks  # not made until the loop runs the task
    assert await task == 42
    assert made == ["made"]
    assert not tasks  # dropped from its owner's set when done


async def test_cancelled_before_its_first_step_it_is_never_made() -> None:
    made: list[str] = []
    tasks: set[asyncio.Task[Any]] = set()

    async def job() -> None:
        made.append("ran")

    task = spawn_kept(tasks, lambda: (made.append("made"), job())[1])
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled() and made == [] and not tasks


async def test_cancelled_while_it_waits_the_coroutine_gets_the_cancellation() -> None:
    steps: list[str] = []
    tasks: set[asyncio.Task[Any]] = set()

    async def job() -> None:
        try:
            steps.append("waiting")
            await asyncio.Event().wait()
        finally:
            steps.append("cleaned up")

    task = spawn_kept(tasks, job)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert steps == ["waiting", "cleaned up"] and not tasks


async def test_its_exception_is_the_task_s() -> None:
    tasks: set[asyncio.Task[Any]] = set()

    async def job() -> None:
        await asyncio.sleep(0)
        raise ConnectionError("gone")

    task = spawn_kept(tasks, job)
    with pytest.raises(ConnectionError, match="gone"):
        await task
    assert not tasks
