"""What the jitter buffer estimates (see :mod:`.jitterbuffer`): the network's jitter, what
it remembers of losses, and the frames to hold so that the recent losses could be
rebuilt; sans I/O (times passed in)."""

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


@dataclass
class LossMemory:
    """What a jitter buffer remembers of losses: loss events, the runs of packets
    missing, and how far back (frames) the RED copies that came reach."""

    #: Times of loss events (a burst is one), oldest first; see :meth:`recent`.
    events: deque[float] = field(default_factory=deque)
    _gaps: deque[tuple[float, int]] = field(default_factory=deque)  # (now, packets missing)
    _offsets: dict[int, float] = field(default_factory=dict)  # copy offset (frames) -> seen

    def loss(self, now: float, merge: float) -> None:
        """A loss at ``now``: part of the last event if within ``merge`` seconds of its
        start (a burst is one event, whether seen as a hole or as a repaired frame)."""
        if not self.events or now - self.events[-1] > merge:
            self.events.append(now)

    def gap(self, now: float, missing: int) -> None:
        """``missing`` packets were skipped by the newest one, which came at ``now``."""
        self._gaps.append((now, missing))

    def copy(self, offset: int, now: float) -> None:
        """A copy of the frame ``offset`` frames before the newest came at ``now``."""
        self._offsets[offset] = now

    def forget_copies(self) -> None:
        self._offsets.clear()

    def recent(self, now: float, window: float) -> deque[float]:
        """The loss events of the last ``window`` seconds (older ones are forgotten)."""
        events = self.events
        while events and now - events[0] > window:
            events.popleft()
        return events

    def copies_since(self, since: float) -> bool:
        """A copy came after ``since``."""
        return any(seen > since for seen in self._offsets.values())

    def offsets(self, now: float, window: float) -> list[int]:
        """How far back (frames) the copies of the last ``window`` seconds reach."""
        return [d for d, seen in self._offsets.items() if now - seen <= window]

    def frames_to_hold(self, now: float, window: float, keep: float, offset_window: float,
                       shortest: int, max_reserve: int) -> int:
        """:func:`frames_to_hold` for the runs of the last ``window`` seconds, ``shortest``
        long or longer, and the copies of the last ``offset_window``; runs are kept
        ``keep`` seconds."""
        gaps = self._gaps
        while gaps and now - gaps[0][0] > keep:
            gaps.popleft()
        runs = [g for t, g in gaps if now - t <= window and g >= shortest]
        return frames_to_hold(runs, self.offsets(now, offset_window), shortest, max_reserve)


@dataclass
class InterarrivalJitter:
    """RFC 3550's interarrival jitter (A.8) over the audio packets (and the frames a
    peer left out for a key, given their own timestamps): what the status line shows.
    aiortc's figure also takes the telephone events, whose timestamp stays at the key's
    start while they keep coming: 25-32 ms after a key on a clean path."""

    clock_rate: int = 48_000
    #: The estimate, seconds.
    value: float = 0.0
    _last: tuple[float, int, int] | None = None  # the previous packet's arrival, ts, ssrc

    def packet(self, ssrc: int, timestamp: int, arrival: float) -> None:
        last = self._last
        self._last = (arrival, timestamp, ssrc)
        if last is None or last[2] != ssrc:  # (a new stream: its own timestamps)
            return
        sent = ((timestamp - last[1] + 0x80000000) % 0x100000000 - 0x80000000) / self.clock_rate
        d = abs((arrival - last[0]) - sent)
        self.value += (d - self.value) / 16
