"""The jitter buffer's figures (see :mod:`.jitterbuffer`): the target delay it keeps (the
jitter's spread and the reserve for losses), whether a hole's copy is still worth
waiting for, and how much is buffered; sans I/O (times passed in)."""

from __future__ import annotations

from softphone.media.jb_estimates import LossMemory, TransitWindow
from softphone.media.jb_settings import JitterSettings
from softphone.media.jb_store import PacketStore


class JitterTarget(JitterSettings):
    """What :class:`.JitterBuffer` decides by, from its settings and the state below
    (its fields: declared here, kept there)."""

    _store: PacketStore
    _next: int | None
    _transit: TransitWindow
    _underruns: int
    _short_since: float | None
    _losses: LossMemory
    _now: float
    _newest: int | None
    _newest_at: float
    _start_held: int
    _start_at: float

    @property
    def target(self) -> float:
        """Seconds of audio to keep in reserve against jitter."""
        return self._targets()[0]

    def _targets(self) -> tuple[float, float]:
        """The target, and the part of it grown by stretching: the jitter's spread and
        at most ``max_reserve`` frames of reserve for losses (the rest, for bursts that
        copies further back rebuild, is grown in a pause or at the next burst)."""
        floor = self.min_target
        losses = self._losses.recent(self._now, self.loss_window)
        reserve = 0.0
        if losses and (len(losses) >= 2 or self._now - losses[-1] < self.loss_memory):
            # The next packet (its FEC, or its RED copy) must arrive before the
            # lost frame's turn: one frame later than the jitter alone asks.
            # Two lost in a row need the packet after both: as many frames as the
            # longest recent run of missing packets, up to max_reserve (a longer
            # burst is beyond repair whatever is kept, so it does not count).
            # With copies coming, at least `pair_reserve`: the next loss may be a pair.
            frames = self._reserve()
            if self._recent_offsets():
                frames = max(frames, min(self.pair_reserve, self.max_reserve))
            reserve = frames * self.frame_samples / self.clock_rate
        elif self._start_held and self._start_copies():
            # Copies before any loss (the sender probes the path at the call's start):
            # the frames in hand, so that a first loss is rebuilt in time.
            reserve = self._start_held * self.frame_samples / self.clock_rate
        # Bursts that copies further back rebuild (RED spread against bursts) are
        # remembered longer: they come every few seconds, and a reserve dropped
        # between two of them is a burst lost and a time warp each way.
        bursts = self._reserve(self.burst_memory, 3) * self.frame_samples / self.clock_rate
        spread = self._spread()
        stretched = min(reserve, self.max_reserve * self.frame_samples / self.clock_rate)
        return (min(self.max_target, max(floor, spread + max(reserve, bursts))),
                min(self.max_target, max(floor, spread + stretched)))

    def _copy_coming(self, nxt: int) -> bool:
        """A copy of the frame at ``nxt`` (a hole) is still due, within what the target keeps."""
        newest = self._newest
        if newest is None or self._underruns >= self.max_conceal:
            return False
        if self.stretch and self._underruns and (
                self._short_since is None or self._now - self._short_since < self.voiced_after):
            # (stretch) A gap is being concealed already (the burst, waited out in
            # place): waiting for copies now only makes it longer. The reserve is grown
            # in the next pause instead, or by such a wait once it has been short for
            # `voiced_after` with no pause (offline, 16 seeds: bursty 3.79 -> 3.83).
            return False
        frame = self.frame_samples
        rate = self.clock_rate
        if (newest + frame - nxt) / rate >= self.target:
            return False
        # The copy d frames back rides in packet nxt + d: not coming if that packet is
        # overdue (lost too: a burst right after another), counted from the newest
        # packet's arrival with the jitter's spread and half a frame to spare.
        late = self._spread() + frame / rate / 2
        return any(d > 1 and nxt + d * frame > newest
                   and self._now <= self._newest_at + (nxt + d * frame - newest) / rate + late
                   for d in self._recent_offsets())

    def _start_copies(self) -> bool:
        """The copies the frames in hand are for are still coming: some came in the last
        100 ms (they come with every packet while sent), within ``start_hold``."""
        horizon = 5 * self.frame_samples / self.clock_rate
        return self._now - self._start_at < self.start_hold and \
            self._losses.copies_since(self._now - horizon)

    def _spread(self) -> float:
        """The jitter's spread: how much later than the fastest recent packet most come."""
        return self._transit.spread(self.quantile)

    def _recent_offsets(self) -> list[int]:
        """How far back (frames) the copies that came lately reach."""
        return self._losses.offsets(self._now, self.loss_window)

    def _reserve(self, window: float | None = None, shortest: int = 1) -> int:
        """Frames to keep so that the runs of lost packets of the last ``window`` s
        (``loss_window``), ``shortest`` long or longer, can be rebuilt (0: none such)."""
        return self._losses.frames_to_hold(
            self._now, self.loss_window if window is None else window,
            max(self.loss_window, self.burst_memory), self.loss_window, shortest,
            self.max_reserve)

    @property
    def level(self) -> float:
        """Seconds of audio buffered from the next frame to play up to the newest packet."""
        if self._next is None:
            return 0.0
        return self._store.reach(self._next, self.frame_samples) / self.clock_rate
