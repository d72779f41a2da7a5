"""One 20 ms timer for many calls (softphone.media.frameclock), on a real event loop."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from softphone.media.frameclock import FrameClock


class Member:
    def __init__(self, name: str, log: list[tuple[str, int]], *, fail_at: int = -1) -> None:
        self.name = name
        self.log = log
        self.ticks = 0
        self.fail_at = fail_at
        self.times: list[float] = []

    def tick(self, skipped: int = 0) -> None:
        self.ticks += 1
        self.times.append(time.monotonic())
        self.log.append((self.name, skipped))
        if self.ticks == self.fail_at:
            raise RuntimeError("boom")


async def test_every_member_ticks_every_20_ms_in_order_from_one_timer() -> None:
    order: list[tuple[str, int]] = []
    clock = FrameClock()
    members = [Member(str(k), order) for k in range(5)]
    for m in members:
        clock.add(m)
    await asyncio.sleep(0.5)
    counts = [m.ticks for m in members]
    assert max(counts) - min(counts) <= 1
    assert 20 <= counts[0] <= 27  # 25 frames in 0.5 s (a loaded machine may drift a little)
    # Each round ticks the members in the order they joined.
    assert [name for name, _ in order[:10]] == [str(k) for k in range(5)] * 2
    spacing = [b - a for a, b in zip(members[0].times, members[0].times[1:], strict=False)]
    assert sorted(spacing)[len(spacing) // 2] == pytest.approx(0.02, abs=0.004)
    for m in members:
        clock.remove(m)
    assert len(clock) == 0
    before = members[0].ticks
    await asyncio.sleep(0.1)
    assert members[0].ticks == before  # idle: no timer left


async def test_a_member_that_raises_is_dropped_and_the_others_go_on(caplog) -> None:
    order: list[tuple[str, int]] = []
    clock = FrameClock()
    bad, good = Member("bad", order, fail_at=3), Member("good", order)
    clock.add(bad)
    clock.add(good)
    with caplog.at_level(logging.ERROR, logger="softphone.media.frameclock"):
        await asyncio.sleep(0.2)
    assert bad.ticks == 3 and good.ticks >= 8
    assert bad not in clock.members and good in clock.members
    assert "failed on the frame clock" in caplog.text
    clock.remove(good)


async def test_members_may_leave_and_join_from_a_tick() -> None:
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
    await asyncio.sleep(0.21)
    assert leaver.ticks == 1
    # One timer, not two: 'late' ticks once per 20 ms.
    assert 8 <= late.ticks <= 12
    clock.remove(late)


async def test_a_stalled_loop_skips_ahead_instead_of_bursting() -> None:
    order: list[tuple[str, int]] = []
    clock = FrameClock()
    m = Member("m", order)
    clock.add(m)
    await asyncio.sleep(0.05)
    time.sleep(0.3)  # noqa: ASYNC251 - the loop stalls for 15 frames, on purpose
    ticks = m.ticks
    await asyncio.sleep(0.1)
    clock.remove(m)
    skipped = [s for _, s in order if s]
    assert skipped and 12 <= skipped[0] <= 16
    assert m.ticks - ticks <= 7  # no burst of 15 catch-up ticks


async def test_two_clocks_are_independent() -> None:
    """Two phones in one process each have their own clock."""
    order: list[tuple[str, int]] = []
    one, two = FrameClock(), FrameClock()
    a, b = Member("a", order), Member("b", order)
    one.add(a)
    two.add(b)
    await asyncio.sleep(0.1)
    one.remove(a)
    await asyncio.sleep(0.1)
    assert b.ticks > a.ticks + 3
    two.remove(b)
