"""Keys (DTMF) through the Python API, with real parts: two phones in one process
through our hub on real sockets, real aiortc peer connections.

A bot waits for keys with a timeout, many times a call (nothing left behind, no key
lost); keys on a clean path are no packet loss to the peer's adaptation; what
``send_dtmf`` cannot send as asked is refused before anything goes out.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest

from softphone import Call, ToneSource
from softphone.hub.server import Hub

from ..conftest import phone_pair

pytestmark = pytest.mark.e2e


@pytest.fixture
async def calls(hub: Hub) -> AsyncIterator[tuple[Call, Call]]:
    """A connected call: a's side and b's."""
    async with phone_pair(hub) as (a, b):
        call_a = await a.dial("b", ToneSource(440))
        call_b = await asyncio.wait_for(b.next_call(), 10)
        await call_b.accept(ToneSource(660))
        await asyncio.wait_for(call_a.connected(), 20)
        await asyncio.wait_for(call_b.connected(), 20)
        yield call_a, call_b


async def settled_tasks() -> int:
    for _ in range(3):  # (a cancelled task finishes at the loop's next turns)
        await asyncio.sleep(0)
    return len(asyncio.all_tasks())


async def test_waits_that_time_out_leave_no_task_and_lose_no_key(
        calls: tuple[Call, Call]) -> None:
    call_a, call_b = calls
    before = await settled_tasks()
    for _ in range(100):  # a bot's own timeout: the wait is cancelled
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(call_b.next_digit(), 0.001)
    for _ in range(100):  # ... or next_digit's
        with pytest.raises(TimeoutError):
            await call_b.next_digit(timeout=0.001)
    assert await settled_tasks() - before < 10  # (was ~200 more: one per timeout)
    await asyncio.wait_for(call_a.send_dtmf("5"), 10)
    assert (await call_b.next_digit(timeout=5)).digit == "5"
    sending = asyncio.create_task(call_a.send_dtmf("7"))
    with pytest.raises(TimeoutError):
        await call_b.next_digit(timeout=0)  # (none here yet: at once)
    assert (await call_b.next_digit(timeout=5)).digit == "7"
    await sending
    with pytest.raises(ValueError, match="timeout"):
        await call_b.next_digit(timeout=-1)


async def test_keys_on_a_clean_path_are_no_loss(calls: tuple[Call, Call]) -> None:
    call_a, call_b = calls
    await asyncio.sleep(1.5)  # (past the sender's probe with copies)
    await asyncio.wait_for(call_a.send_dtmf("123456789", duration_ms=100, gap_ms=70), 10)
    digits = [(await call_b.next_digit(timeout=2)).digit for _ in range(9)]
    assert "".join(digits) == "123456789"
    # The jitter b shows right after the keys (its status line's jit) is the audio's:
    # aiortc's own figure takes the keys' packets, whose timestamp stays at the key's
    # start while they come (25-32 ms on a clean path).
    heard = await call_b.stats()
    assert heard.jitter_ms is not None and heard.jitter_ms < 10.0, heard.jitter_ms
    await asyncio.sleep(2.0)  # (b's reports: at least one, each within 1.5 s)
    stats = await call_a.stats()
    assert stats.sending is not None
    assert (stats.sending.level, stats.sending.loss, stats.sending.red_depth) == (0, 0.0, 0)
    media: Any = call_b.media
    assert media.audio.playout.losses.lost == 0  # what b's XR tells a


async def test_send_dtmf_refuses_what_it_would_clamp(calls: tuple[Call, Call]) -> None:
    call_a, call_b = calls
    for tones, duration, gap, what in [("", 100, 70, "no DTMF key"),
                                       ("1", 10, 70, "duration 10"),
                                       ("1", 39.9, 70, "duration"),
                                       ("1", 6001, 70, "duration 6001"),
                                       ("1", math.nan, 70, "duration nan"),
                                       ("1", 100, 0, "gap 0"),
                                       ("1", 100, 29, "gap 29"),
                                       ("1", 100, math.inf, "gap inf"),
                                       ("1x", 100, 70, "bad DTMF character")]:
        with pytest.raises(ValueError, match=what) as refused:
            await asyncio.wait_for(call_a.send_dtmf(tones, duration, gap), 1)
        assert "\n" not in str(refused.value)
    await asyncio.wait_for(call_a.send_dtmf("1", 40, 30), 10)  # the edges are in range
    assert (await call_b.next_digit(timeout=2)).digit == "1"
    with pytest.raises(TimeoutError):  # nothing else went out
        await call_b.next_digit(timeout=0.5)
