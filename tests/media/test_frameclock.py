"""One 20 ms timer for many calls (softphone.media.frameclock), on a real event loop.

The loop's clock is the test's (:class:`LoopTime`): it moves only when a test
moves it, so the ticks are counted against the time the loop was told had
passed, never against the wall clock (which a loaded machine stretches). A
stall is the clock jumping while the loop runs nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from softphone.media.frameclock import FRAME_SECONDS, FrameClock


class LoopTime:
    """The running loop's ``time()``, moved by the test alone."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    async def run(self, seconds: float, step: float = 0.005) -> None:
        """Let ``seconds`` pass on the loop's clock, a little at a time; what falls
        due runs (a few turns of the loop each step: nothing waits on the wall)."""
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now = min(end, self.now + step)
            for _ in range(3):
                await asyncio.sleep(0)

    def stall(self, seconds: float) -> None:
        """``seconds`` go by while the loop runs nothing."""
        self.now += seconds


@pytest.fixture
async def loop_time(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[LoopTime]:
    loop = asyncio.get_running_loop()  # the test's: async fixtures run on it
    clock = LoopTime(loop.time())
    monkeypatch.setattr(loop, "time", clock)
    yield clock


class Member:
    def __init__(self, name: str, log: list[tuple[str, int]], *, fail_at: int = -1) -> None:
        self.name = name
        self.log = log
        self.ticks = 0
        self.fail_at = fail_at
        self.times: list[float] = []  # the loop's clock at each tick
        self.frames = 0  # frames accounted for: ticked or skipped

    def tick(self, skipped: int = 0) -> None:
        self.ticks += 1
        self.frames += 1 + skipped
        self.times.append(asyncio.get_running_loop().time())
        self.log.append((self.name, skipped))
        if self.ticks == self.fail_at:
            raise RuntimeError("boom")


async def test_every_member_ticks_every_20_ms_in_order_from_one_timer(
        loop_time: LoopTime) -> None:
    order: list[tuple[str, int]] = []
    clock = FrameClock()
    members = [Member(str(k), order) for k in range(5)]
    for m in members:
        clock.add(m)
    await loop_time.run(0.5)
    counts = [m.ticks for m in members]
    assert max(counts) - min(counts) <= 1
    assert counts[0] in (25, 26)  # 25 frames in 0.5 s (and the first, at once)
    assert members[0].frames == counts[0]  # none skipped
    # Each round ticks the members in the order they joined.
    assert [name for name, _ in order[:10]] == [str(k) for k in range(5)] * 2
    spacing = [b - a for a, b in zip(members[0].times, members[0].times[1:], strict=False)]
    assert all(step == pytest.approx(FRAME_SECONDS, abs=0.006) for step in spacing), spacing
    for m in members:
        clock.remove(m)
    assert len(clock) == 0
    before = members[0].ticks
    await loop_time.run(0.1)
    assert members[0].ticks == before  # idle: no timer left


async def test_a_member_that_raises_is_dropped_and_the_others_go_on(
        caplog: pytest.LogCaptureFixture, loop_time: LoopTime) -> None:
    order: list[tuple[str, int]] = []
    clock = FrameClock()
    bad, good = Member("bad", order, fail_at=3), Member("good", order)
    clock.add(bad)
    clock.add(good)
    with caplog.at_level(logging.ERROR, logger="softphone.media.frameclock"):
        await loop_time.run(0.2)
    assert bad.ticks == 3 and good.ticks >= 10
    assert bad not in clock.members and good in clock.members
    assert "failed on the frame clock" in caplog.text
    clock.remove(good)


async def test_members_may_leave_and_join_from_a_tick(loop_time: LoopTime) -> None:
    order: list[tuple[str, int]] = []
    clock = FrameClock()
    late = Member("late", order)

    class Leaver(Member):
        def tick(self, skipped: int = 0) -> None:
            super().tick(skipped)
            clock.remove(self)  # the last member leaves...
            clock.add(late)  # ...and another joins in the same tick

    leaver = Leaver("leaver", order)
    clock.add(leaver)
    await loop_time.run(0.21)
    assert leaver.ticks == 1
    # One timer, not two: 'late' ticks once per 20 ms.
    assert late.ticks in (10, 11)
    clock.remove(late)


async def test_a_stalled_loop_skips_ahead_instead_of_bursting(loop_time: LoopTime) -> None:
    order: list[tuple[str, int]] = []
    clock = FrameClock()
    m = Member("m", order)
    clock.add(m)
    await loop_time.run(0.05)
    loop_time.stall(0.3)  # the loop stalls for 15 frames
    ticks = m.ticks
    await loop_time.run(0.1)
    clock.remove(m)
    skipped = [s for _, s in order if s]
    assert len(skipped) == 1 and 13 <= skipped[0] <= 15, skipped
    assert m.ticks - ticks <= 6  # no burst of 15 catch-up ticks: 0.1 s of them
    # Every frame accounted for, ticked or skipped: 0.45 s of them (and the first).
    assert 22 <= m.frames <= 24, m.frames


async def test_two_clocks_are_independent(loop_time: LoopTime) -> None:
    """Two phones in one process each have their own clock."""
    order: list[tuple[str, int]] = []
    one, two = FrameClock(), FrameClock()
    a, b = Member("a", order), Member("b", order)
    one.add(a)
    two.add(b)
    await loop_time.run(0.1)
    one.remove(a)
    await loop_time.run(0.1)
    assert b.ticks == a.ticks + 5
    two.remove(b)
