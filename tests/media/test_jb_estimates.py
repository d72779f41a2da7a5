"""The jitter buffer's estimates as plain functions of what is passed in."""

from __future__ import annotations

import pytest

from softphone.media.jb_estimates import TransitWindow, frames_to_hold


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
