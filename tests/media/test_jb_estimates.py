"""The jitter buffer's estimates as plain functions of what is passed in."""

from __future__ import annotations

import pytest

from softphone.media.jb_estimates import LossMemory, TransitWindow, frames_to_hold


def test_the_transit_window_forgets_what_left_it_and_measures_the_spread() -> None:
    w = TransitWindow()
    assert w.fastest is None and w.spread(0.95) == 0.0 and len(w) == 0
    for i in range(100):  # 20 ms of jitter in the first second, none after
        w.add(0.050 + (0.020 if i % 10 == 0 else 0.0), now=i * 0.01, window=3.0)
    assert w.fastest == pytest.approx(0.050)
    assert w.spread(0.95) == pytest.approx(0.020)
    for i in range(100, 500):
        w.add(0.050, now=i * 0.01, window=3.0)
    assert 300 <= len(w) <= 301  # the last 3 s
    assert w.spread(0.95) == 0.0
    w.clear()
    assert w.fastest is None


@pytest.mark.parametrize(("runs", "offsets", "shortest", "frames"), [
    ([], [], 1, 1),  # a loss, no copies: the next packet's FEC
    ([1, 2], [], 1, 2),  # a pair: the packet after both
    ([5], [], 1, 1),  # beyond repair whatever is held: not counted
    ([1], [1], 1, 1),  # the copy in the next packet
    ([2], [1], 1, 2),  # a pair: the copy one back, its FEC the first
    ([6], [6], 1, 6),  # copies 6 back rebuild a burst of 6
    ([6], [6], 3, 6),
    ([6], [], 3, 0),  # bursts with no copies coming: nothing to wait for
    ([], [6], 3, 0),
])
def test_frames_to_hold_for_the_runs_the_copies_can_rebuild(
        runs: list[int], offsets: list[int], shortest: int, frames: int) -> None:
    assert frames_to_hold(runs, offsets, shortest, max_reserve=2) == frames


def test_loss_memory_merges_a_burst_and_forgets_old_events() -> None:
    m = LossMemory()
    for now in (1.00, 1.02, 1.03):  # one burst, seen frame by frame
        m.loss(now, merge=0.04)
    m.loss(1.05, merge=0.04)  # more than `merge` after the event began: another
    m.loss(2.0, merge=0.04)
    assert list(m.events) == [1.00, 1.05, 2.0]
    assert list(m.recent(6.02, window=5.0)) == [1.05, 2.0]  # the first is forgotten
    assert list(m.events) == [1.05, 2.0]


def test_loss_memory_holds_for_recent_runs_and_copies_only() -> None:
    m = LossMemory()
    m.gap(1.0, 6)  # a burst of 6
    m.copy(6, 1.5)  # copies 6 frames back come
    assert m.offsets(2.0, window=5.0) == [6]
    assert m.copies_since(1.4) and not m.copies_since(1.5)
    # Runs of 3 or more within 20 s, rebuilt by the copies 6 back: wait for 6.
    assert m.frames_to_hold(2.0, 20.0, 20.0, 5.0, shortest=3, max_reserve=2) == 6
    # The copies not seen for longer than their window: nothing rebuilds the runs.
    assert m.frames_to_hold(7.0, 20.0, 20.0, 5.0, shortest=3, max_reserve=2) == 0
    # Runs older than what is kept are gone for good, even with copies coming.
    m.copy(6, 25.0)
    assert m.frames_to_hold(25.5, 20.0, 20.0, 5.0, shortest=3, max_reserve=2) == 0
