"""What the jitter buffer estimates (see :mod:`.jitterbuffer`): the network's jitter, and
the frames to hold so that the recent losses could be rebuilt; sans I/O."""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field


@dataclass
class TransitWindow:
    """Transit times (arrival time minus send time, on any common offset) of the
    packets that arrived in the last ``window`` seconds (given with each), kept sorted."""

    _recent: deque[tuple[float, float]] = field(default_factory=deque)  # (now, transit)
    _sorted: list[float] = field(default_factory=list)

    def add(self, transit: float, now: float, window: float) -> None:
        self._recent.append((now, transit))
        bisect.insort(self._sorted, transit)
        horizon = now - window
        recent = self._recent
        while recent and recent[0][0] < horizon:
            _, old = recent.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]

    def clear(self) -> None:
        self._recent.clear()
        self._sorted.clear()

    def __len__(self) -> int:
        return len(self._sorted)

    @property
    def fastest(self) -> float | None:
        """The shortest transit in the window (None: no packet in it)."""
        return self._sorted[0] if self._sorted else None

    def spread(self, quantile: float) -> float:
        """How much later than the fastest packet ``quantile`` of them came."""
        values = self._sorted
        if len(values) < 2:
            return 0.0
        return values[min(len(values) - 1, int(quantile * len(values)))] - values[0]


def frames_to_hold(runs: list[int], offsets: list[int], shortest: int, max_reserve: int) -> int:
    """Frames to keep in hand so that ``runs`` of lost packets (each ``shortest`` long
    or longer) can be rebuilt, given the ``offsets`` (frames back) the copies now
    coming reach (0: nothing such, when ``shortest`` > 1)."""
    if shortest > 1:  # only what copies now coming rebuild
        if not offsets or not runs:
            return 0
    elif not offsets:
        return max(1, max((g for g in runs if g <= max_reserve), default=1))
    # A run of r lost frames n..n+r-1: frame n comes back exact from a copy d >= r
    # frames back (d frames later), or from FEC in frame n+1's data, which the
    # primary (d = 0) or a copy d >= r-1 brings (1 + d frames later).
    reachable = [0, *offsets]
    needs = [1 if shortest == 1 else 0]
    for run in runs:
        exact = min((d for d in offsets if d >= run), default=None)
        fec = min((d for d in reachable if d >= run - 1), default=None)
        options = [w for w in (exact, None if fec is None else fec + 1) if w is not None]
        if options:
            needs.append(min(options))
    return max(needs)
