"""An adaptive audio jitter buffer, sans I/O.

Packets go in with :meth:`JitterBuffer.push` (RTP timestamp, payload and the
arrival time ``now``); every 20 ms the player asks :meth:`JitterBuffer.pull`
(with its own ``now``) what to play next, and gets a small decision:

- :class:`Play` a packet (possibly after skipping some to cut the delay),
- :class:`Recover` a lost frame from the in-band FEC of the next packet,
- :class:`Conceal` a missing frame (the decoder's loss concealment),
- :class:`Silence` (nothing received yet, or a long outage).

How it keeps the delay low, in the manner of WebRTC's NetEQ:

- The *target* is a high quantile of the recent transit-time spread
  (arrival time minus send time, relative to the fastest recent packet):
  zero on a clean network, growing with jitter, shrinking back once the
  jitter has left the window. While packets are being lost it is at least
  one frame, so the next packet is there in time to rebuild a lost one
  from its in-band FEC.
- It starts playing with the first packet. A packet that is not there when
  its turn comes is concealed *without* moving on (it may just be late):
  the delay grows by one frame, which is how the buffer grows on jitter.
- When later packets show the missing one is lost, frames already covered
  by concealment are skipped, so a loss burst leaves no backlog behind.
- When at least one whole frame more than the target has been buffered for
  a while, one frame is skipped, at a moment the player says is quiet (a
  pause in speech, where a missing 20 ms is not heard); far too much is cut
  at once, quiet or not.

It never waits on a hole: every pull returns a decision at once.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Final

_WRAP: Final = 1 << 32
_HALF: Final = 1 << 31


@dataclass(frozen=True, slots=True)
class Play:
    payload: bytes
    timestamp: int
    #: Packets skipped just before this one to cut the delay (decode them to
    #: keep the decoder's state, but do not play them).
    skipped: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Recover:
    """Play the frame at ``timestamp`` rebuilt from ``next_payload``'s FEC data."""

    next_payload: bytes
    timestamp: int


@dataclass(frozen=True, slots=True)
class Conceal:
    timestamp: int


@dataclass(frozen=True, slots=True)
class Silence:
    pass


Decision = Play | Recover | Conceal | Silence


@dataclass
class JitterStats:
    received: int = 0
    late: int = 0  # arrived after their turn had passed
    duplicates: int = 0
    played: int = 0
    recovered: int = 0  # rebuilt from FEC
    concealed: int = 0
    skipped: int = 0  # dropped to reduce the delay
    resets: int = 0


@dataclass
class JitterBuffer:
    clock_rate: int = 48_000
    frame_samples: int = 960
    #: Seconds of arrival history the jitter estimate looks at.
    window: float = 3.0
    quantile: float = 0.95
    min_target: float = 0.0
    max_target: float = 0.4
    #: Consecutive concealed frames before falling silent.
    max_conceal: int = 25
    #: Pulls with a whole surplus frame before one frame is skipped.
    surplus_pulls: int = 15
    #: A timestamp this far (seconds) from the expected one restarts the buffer.
    max_jump: float = 2.0
    #: After a loss, keep one frame in reserve (for FEC) for this many seconds;
    #: while losses recur (two or more within ``loss_window``), for as long as they do.
    loss_memory: float = 1.0
    loss_window: float = 5.0

    stats: JitterStats = field(default_factory=JitterStats)
    _packets: dict[int, bytes] = field(default_factory=dict)
    _keys: list[int] = field(default_factory=list)  # sorted unwrapped timestamps
    _ref: int | None = None  # last unwrapped timestamp, for unwrapping
    _next: int | None = None  # unwrapped timestamp to play next
    _transit: deque[tuple[float, float]] = field(default_factory=deque)  # (now, transit)
    _sorted_transit: list[float] = field(default_factory=list)
    _arrivals: dict[int, float] = field(default_factory=dict)
    _underruns: int = 0
    _min_wait: float = math.inf
    _waits: int = 0
    _quiet: bool = True
    _losses: deque[float] = field(default_factory=deque)  # times of loss events
    _now: float = 0.0

    # -- input ---------------------------------------------------------------

    def _unwrap(self, timestamp: int) -> int:
        if self._ref is None:
            self._ref = timestamp
            return timestamp
        diff = (timestamp - self._ref) % _WRAP
        if diff >= _HALF:
            diff -= _WRAP
        self._ref += diff
        return self._ref

    def push(self, timestamp: int, payload: bytes, now: float) -> bool:
        """Add a packet that arrived at ``now``. False if it came too late or twice."""
        ts = self._unwrap(timestamp & 0xFFFFFFFF)
        frame = self.frame_samples
        if self._next is not None and abs(ts - self._next) > self.max_jump * self.clock_rate:
            self._restart()
            self._ref = ts
        self.stats.received += 1
        if self._next is not None and ts < self._next:
            self.stats.late += 1
            self._note_transit(ts, now)
            return False
        if ts in self._packets:
            self.stats.duplicates += 1
            return False
        self._packets[ts] = payload
        self._arrivals[ts] = now
        bisect.insort(self._keys, ts)
        self._note_transit(ts, now)
        if len(self._keys) > 4 * self.max_target * self.clock_rate / frame + 50:
            self._drop_oldest()
        return True

    def _note_transit(self, ts: int, now: float) -> None:
        transit = now - ts / self.clock_rate
        self._transit.append((now, transit))
        bisect.insort(self._sorted_transit, transit)
        horizon = now - self.window
        while self._transit and self._transit[0][0] < horizon:
            _, old = self._transit.popleft()
            del self._sorted_transit[bisect.bisect_left(self._sorted_transit, old)]

    def _drop_oldest(self) -> None:
        self._take(self._keys[0])

    def _restart(self) -> None:
        self._packets.clear()
        self._arrivals.clear()
        self._keys.clear()
        self._next = None
        self._ref = None
        self._transit.clear()
        self._sorted_transit.clear()
        self._underruns = 0
        self._min_wait = math.inf
        self._waits = 0
        self.stats.resets += 1

    # -- figures -------------------------------------------------------------

    @property
    def target(self) -> float:
        """Seconds of audio to keep in reserve against jitter."""
        values = self._sorted_transit
        floor = self.min_target
        losses = self._losses
        while losses and self._now - losses[0] > self.loss_window:
            losses.popleft()
        if losses and (len(losses) >= 2 or self._now - losses[-1] < self.loss_memory):
            floor = max(floor, self.frame_samples / self.clock_rate)
        if len(values) < 2:
            return floor
        spread = values[min(len(values) - 1, int(self.quantile * len(values)))] - values[0]
        return min(self.max_target, max(floor, spread))

    @property
    def level(self) -> float:
        """Seconds of audio buffered from the next frame to play up to the newest packet."""
        if not self._keys or self._next is None:
            return 0.0
        return max(0, self._keys[-1] + self.frame_samples - self._next) / self.clock_rate

    # -- output --------------------------------------------------------------

    def _take(self, ts: int) -> bytes:
        self._keys.remove(ts)
        self._arrivals.pop(ts, None)
        return self._packets.pop(ts)

    def pull(self, now: float, quiet: bool = True) -> Decision:
        """What to play for the next frame. Call every ``frame_samples`` of playout.

        ``quiet``: the audio being played is a pause, so a frame may be skipped
        unheard to cut the delay.
        """
        self._quiet = quiet
        self._now = now
        frame = self.frame_samples
        if self._next is None:
            if not self._keys:
                return Silence()
            self._next = self._keys[0]
        nxt = self._next
        if nxt in self._packets:
            return self._play(now)
        later = self._keys[bisect.bisect_right(self._keys, nxt)] \
            if self._keys and self._keys[-1] > nxt else None
        if later is None:
            # Nothing after the hole: the packet may be late. Conceal, keep our place.
            self._min_wait, self._waits = math.inf, 0  # an underrun: no surplus
            self._underruns += 1
            if self._underruns > self.max_conceal:
                return Silence()
            self.stats.concealed += 1
            return Conceal(nxt & 0xFFFFFFFF)
        # Later packets are here: the frames from nxt up to `later` are lost.
        self._losses.append(now)  # one event, however many frames it lost
        missing = (later - nxt) // frame
        covered = min(missing, self._underruns)  # already concealed while we waited
        self._underruns = 0
        if covered:
            # Skipping what was concealed takes back the delay the wait added;
            # keep enough of it for the target (after a loss: one frame, so the
            # next loss can be rebuilt from FEC instead of concealed).
            seconds = frame / self.clock_rate
            spare = (self._keys[-1] + frame - nxt) / self.clock_rate - seconds
            covered = min(covered, max(0, math.floor((spare - self.target) / seconds + 1e-9)))
        nxt += covered * frame
        missing -= covered
        if missing:
            # Filling the rest of the gap frame by frame keeps the audio whole,
            # unless it would play `later` far behind the target: then skip.
            seconds = frame / self.clock_rate
            sent = later / self.clock_rate
            base = self._sorted_transit[0] if self._sorted_transit else now - sent
            target = self.target
            if now + missing * seconds - sent - base > target + 2 * seconds:
                keep = min(missing, max(0, math.ceil((target + base + sent - now) / seconds)))
                self.stats.skipped += missing - keep
                nxt += (missing - keep) * frame
                missing = keep
        self._next = nxt
        if not missing:
            return self._play(now)
        self._next = nxt + frame
        if missing == 1:
            self.stats.recovered += 1
            return Recover(self._packets[later], nxt & 0xFFFFFFFF)
        self.stats.concealed += 1
        return Conceal(nxt & 0xFFFFFFFF)

    def _play(self, now: float) -> Play:
        frame = self.frame_samples
        seconds = frame / self.clock_rate
        assert self._next is not None
        self._underruns = 0
        target = self.target
        skipped: list[bytes] = []
        # How long the packets played lately waited here: if even the shortest
        # wait exceeded the target by a whole frame, that frame is surplus delay.
        arrived = self._arrivals.get(self._next)
        if arrived is not None:
            self._min_wait = min(self._min_wait, now - arrived)
        self._waits += 1
        surplus = 0
        if self._waits >= self.surplus_pulls:
            surplus = math.floor((self._min_wait - target) / seconds + 1e-6)
        backlog = math.floor((self.level - seconds - target) / seconds + 1e-6)
        ahead = self._next + frame in self._packets  # something to play after a skip
        if backlog >= 5 or (surplus >= 1 and self._quiet and ahead):
            # Cut the delay: one frame in a pause, or down to the target at once
            # when far too much is buffered.
            cut = backlog if backlog >= 5 else 1
            for _ in range(cut):
                if self._next in self._packets:
                    skipped.append(self._take(self._next))
                self._next += frame
                self.stats.skipped += 1
            while self._next not in self._packets and self._next <= self._keys[-1]:
                self._next += frame
                self.stats.skipped += 1
        if backlog >= 5 or surplus >= 1 or self._waits >= self.surplus_pulls:
            if surplus < 1 or skipped:  # start a new window (keep it open for a pause)
                self._min_wait = math.inf
                self._waits = 0
        ts = self._next
        payload = self._take(ts)
        self._next = ts + frame
        self.stats.played += 1
        return Play(payload, ts & 0xFFFFFFFF, tuple(skipped[-1:]))
