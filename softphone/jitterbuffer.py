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
    surplus_pulls: int = 25
    #: A timestamp this far (seconds) from the expected one restarts the buffer.
    max_jump: float = 2.0
    #: After a loss, keep one frame in reserve (for FEC) for this many seconds.
    loss_memory: float = 1.5

    stats: JitterStats = field(default_factory=JitterStats)
    _packets: dict[int, bytes] = field(default_factory=dict)
    _keys: list[int] = field(default_factory=list)  # sorted unwrapped timestamps
    _ref: int | None = None  # last unwrapped timestamp, for unwrapping
    _next: int | None = None  # unwrapped timestamp to play next
    _transit: deque[tuple[float, float]] = field(default_factory=deque)  # (now, transit)
    _sorted_transit: list[float] = field(default_factory=list)
    _underruns: int = 0
    _surplus: int = 0
    _quiet: bool = True
    _last_loss: float | None = None
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
        ts = self._keys.pop(0)
        del self._packets[ts]

    def _restart(self) -> None:
        self._packets.clear()
        self._keys.clear()
        self._next = None
        self._ref = None
        self._transit.clear()
        self._sorted_transit.clear()
        self._underruns = 0
        self._surplus = 0
        self.stats.resets += 1

    # -- figures -------------------------------------------------------------

    @property
    def target(self) -> float:
        """Seconds of audio to keep in reserve against jitter."""
        values = self._sorted_transit
        floor = self.min_target
        if self._last_loss is not None and self._now - self._last_loss < self.loss_memory:
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
            self._surplus = 0
            self._underruns += 1
            if self._underruns > self.max_conceal:
                return Silence()
            self.stats.concealed += 1
            return Conceal(nxt & 0xFFFFFFFF)
        # Later packets are here: the frames from nxt up to `later` are lost.
        self._last_loss = now
        missing = (later - nxt) // frame
        covered = min(missing, self._underruns)  # already concealed while we waited
        self._underruns = 0
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
        assert self._next is not None
        self._underruns = 0
        spare = self.level - frame / self.clock_rate  # what stays after this frame
        target = self.target
        skipped: list[bytes] = []
        excess_frames = int((spare - target) * self.clock_rate // frame)
        if excess_frames >= 1:
            self._surplus += 1
        else:
            self._surplus = 0
        if excess_frames >= 5 or (excess_frames >= 1 and self._quiet
                                  and self._surplus >= self.surplus_pulls):
            # Cut the delay: skip frames down to the target (all at once if far off).
            cut = excess_frames if excess_frames >= 5 else 1
            for _ in range(cut):
                if self._next in self._packets:
                    skipped.append(self._take(self._next))
                self._next += frame
                self.stats.skipped += 1
            self._surplus = 0
            while self._next not in self._packets:  # land on a packet we have
                self._next += frame
                self.stats.skipped += 1
        ts = self._next
        payload = self._take(ts)
        self._next = ts + frame
        self.stats.played += 1
        return Play(payload, ts & 0xFFFFFFFF, tuple(skipped[-1:]))
