"""Our playout with time stretching and a concealment that holds over long gaps.

:class:`StretchPlayout` is :class:`softphone.media.voice.Playout` (packets
in, 20 ms out, RED copies to the jitter buffer) with what WebRTC's NetEQ
does between the buffer and the speaker:

- **A sample queue** between the decoder and the player: a decoded frame
  may be shorter or longer than 20 ms, and each pull takes 20 ms from the
  queue, decoding as much as that needs.
- **Accelerate** instead of skipping whole frames: when the jitter buffer
  has a surplus (its ``stretch`` mode marks the frame), one pitch period is
  cut out of the frame (all but 2.5 ms of it in a pause), spliced with a
  crossfade where the signal repeats (:func:`softphone.media.stretch.accelerate`);
  a frame that is not periodic enough is played as it is, and the next
  is tried.
- **Expand** before concealment: when less than the target is buffered,
  the frame is lengthened by a period taken from what was just played, so
  a late packet has time to come instead of being concealed.
- **Concealment over long gaps**: libopus fades hybrid and SILK streams
  over about 100 ms, but from the 5th lost frame of a CELT-only stream
  (ours on a clean path) it switches to noise and the 6th is a noise burst
  louder than the speech (``benchmarks/README.md``). From the 4th
  concealed frame in a row each is kept at least 6 dB below the one
  before, and from the 6th the output is muted; after a gap of 4 frames or
  more the first two decoded frames are held to the level before the gap,
  the first faded in over 5 ms. Gains move linearly over 2.5 ms: no step,
  no click.
- It counts the lost packets and their runs (:class:`softphone.media.rtcp_xr.LossRuns`)
  for the RTCP XR packet that tells the sender (:meth:`StretchPlayout.xr_report`),
  at once (:attr:`StretchPlayout.on_loss`) when a loss follows a clean stretch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from softphone.core.adapt import PROBE_PACKETS
from softphone.media import jitterbuffer as jb
from softphone.media import rtcp_xr, stretch
from softphone.media.audio import FRAME_SAMPLES, SAMPLE_RATE, Int16Array
from softphone.media.delay import Smoothed
from softphone.media.jb_estimates import InterarrivalJitter
from softphone.media.pcm import SampleFifo
from softphone.media.voice import Playout, is_quiet

log = logging.getLogger(__name__)

#: The jitter buffer's smallest target (seconds). A real-time sender's frames come a
#: few ms late now and then even on loopback (scheduling: 1 or 2 a call of 4-9 ms,
#: beyond the 95th percentile the target follows); played with less in hand, such a
#: frame is concealed and the delay it added cut again, in speech (about one clean
#: call in 8 scored 3.8-4.3 instead of 4.48). The floor is a compromise: 8 ms kept
#: every one of 24 clean calls at 4.48 but put the clean one-way delay at 25 and
#: 31.5 ms in two runs (target 30: the frame phase adds 0-20 ms over the target, as
#: the buffer cuts whole frames only); 5 ms halves the delay it adds and still
#: covers most of those late frames.
MIN_TARGET: Final = 0.005
#: Seconds without a loss reported after which a loss is reported at once.
EARLY_AFTER: Final = 1.0
#: Concealed frames in a row after which each is at least 6 dB below the one before.
FADE_FROM: Final = 4
#: ... and from which the output is muted.
MUTE_FROM: Final = 6
#: Per concealed frame from FADE_FROM on (amplitude): -7 dB, so that with the gain's
#: 2.5 ms ramp each frame is at least 6 dB below the one before.
FADE_STEP: Final = 0.45
#: Decoded frames after a long gap held to the level before it, and the fade-in.
CAP_FRAMES: Final = 2
#: The level a frame after a gap may always reach (RMS, -30 dBFS): a gap that
#: began in a pause does not hold the speech after it to the pause's level.
LEVEL_FLOOR: Final = 32768 * 10 ** (-30 / 20)
FADE_IN: Final = SAMPLE_RATE * 5 // 1000  # 5 ms
_HISTORY: Final = 2 * FRAME_SAMPLES
#: A gain change is a linear ramp over this many samples (2.5 ms), then held.
RAMP: Final = SAMPLE_RATE * 25 // 10_000
#: The mean wait (:attr:`StretchPlayout.wait`) is over about this many frames (a second).
WAIT_MEAN: Final = 50


@dataclass
class StretchStats:
    """What the stretching and the concealment fade did."""

    accelerated: int = 0  # frames played shorter
    expanded: int = 0  # frames played longer
    removed: int = 0  # samples taken out
    added: int = 0  # samples put in
    refused: int = 0  # frames asked for, not periodic or quiet enough
    faded: int = 0  # concealed frames turned down (or muted)
    capped: int = 0  # frames after a long gap held to the level before it
    trimmed: int = 0  # pauses played shorter by less than a frame (the frame phase)


class StretchPlayout(Playout):
    """:class:`~softphone.media.voice.Playout` with stretching and the fade (module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 buffer: jb.JitterBuffer | None = None) -> None:
        super().__init__(clock, buffer or jb.JitterBuffer(stretch=True,
                                                          min_target=MIN_TARGET))
        self.stretch_stats = StretchStats()
        self.losses = rtcp_xr.LossRuns()
        #: RFC 3550's jitter over what is played (the status line's ``jit``).
        self.jitter = InterarrivalJitter()
        self._out = SampleFifo(8 * FRAME_SAMPLES)
        self._tail: Int16Array = np.zeros(_HISTORY, dtype=np.int16)  # what was queued last
        self._work = np.zeros(FRAME_SAMPLES * 6, dtype=np.float32)
        self._run = 0  # concealed frames in a row
        self._gain = 1.0  # gain at the end of the last frame queued
        self._level = 0.0  # RMS of the audio before the current gap (at least the floor)
        self._before = 0.0  # RMS of the frame before, as played (during a gap)
        self._cap = 0  # decoded frames still to hold to _level
        #: Called (on the event loop) to send an XR at once: a loss after a clean stretch.
        self.on_loss: Callable[[], None] | None = None
        self._loss_told = -math.inf  # when the sender last heard of a loss
        self._wait = Smoothed(WAIT_MEAN)  # how long packets wait here

    # -- packets in -----------------------------------------------------------------

    def push(self, ssrc: int, seq: int, timestamp: int, payload: bytes,
             is_red: bool = False, *args: Any, **kwargs: Any) -> None:
        now = self.clock()
        lost = self.losses.packet(ssrc, seq, now)
        if self.on_loss is not None and (
                (lost and now - self._loss_told >= EARLY_AFTER)
                or self.losses.received == PROBE_PACKETS):
            # Tell the sender now, not at the next receiver report (up to 1.5 s
            # away): the first loss after a clean stretch, or that the call's
            # first half second came clean (it probes with redundancy until then).
            if lost:
                self._loss_told = now
            self.on_loss()
        if not payload:  # a packet of the stream with nothing to play (a telephone event)
            return
        self.jitter.packet(ssrc, timestamp, now)
        if is_red:
            self.buffer.copies_expected = True
        super().push(ssrc, seq, timestamp, payload, is_red, *args, **kwargs)

    def xr_report(self, rtcp_ssrc: int, receive_delay: float | None = None) -> bytes:
        """An RTCP XR packet: the losses since the previous one, and their runs
        (b"" before any packet); ``receive_delay``: what this end adds to the peer's
        voice on its way to the ear (seconds; else what is buffered here)."""
        now = self.clock()
        with self._lock:
            metrics = self.losses.metrics(now)
            summary = self.losses.summary()
            if metrics is None:
                return b""
            if summary is not None and summary.lost:
                self._loss_told = now
            metrics = rtcp_xr.VoipMetrics(
                metrics.ssrc, metrics.loss_rate, metrics.burst_duration_ms,
                metrics.gap_duration_ms, end_system_delay_ms=round(
                    1000 * (self.delay if receive_delay is None else receive_delay)),
                jb_nominal_ms=round(1000 * self.buffer.target),
                jb_maximum_ms=round(1000 * self.buffer.max_target))
        blocks = (metrics,) if summary is None else (summary, metrics)
        return rtcp_xr.pack_xr(rtcp_ssrc, *blocks)

    # -- 20 ms out --------------------------------------------------------------------

    def pull(self) -> Int16Array:
        """The next 20 ms to play (always exactly 960 samples), for a 20 ms clock;
        a device pulls :meth:`pull_chunk` instead."""
        now = self.clock()
        with self._lock:
            self.buffer.trim = False  # (a frame played shorter would leave a hole here)
            out = self._out
            while out.size < FRAME_SAMPLES:
                self._produce(now)
            frame = out.take(FRAME_SAMPLES)
        assert frame is not None
        return frame

    def pull_chunk(self, block: float = 0.0) -> Int16Array:
        """The next stretch to play, whatever its length (a frame, usually): for a
        device that plays blocks of its own size and pulls again when it runs out.

        A frame may then be played any shorter, so the jitter buffer cuts what
        every packet waits over its target to the sample, in a pause
        (``JitterBuffer.trim``): the frame phase (where the sender's frames
        fall between the device's pulls, 0-20 ms) no longer adds to the delay.
        ``block``: the device's longest block (seconds), left uncut with the wait
        (a cut moves the device's next pull by up to a block more than itself).
        """
        now = self.clock()
        with self._lock:
            buffer = self.buffer
            buffer.trim = True
            buffer.trim_margin = block
            out = self._out
            if out.size == 0:
                self._produce(now)
            chunk = out.take(out.size)
        assert chunk is not None
        return chunk

    @property
    def wait(self) -> float | None:
        """How long the packets played lately waited for their turn (seconds, a mean
        over about a second; None before the first)."""
        return self._wait.value

    @property
    def delay(self) -> float:
        """Seconds of audio waiting: in the jitter buffer and decoded, not yet played."""
        return self.buffer.level + self._out.size / SAMPLE_RATE

    def _produce(self, now: float) -> None:
        """Decode what the jitter buffer says comes next into the queue."""
        # The buffer judges waits by when the frame will start playing: after
        # what is queued already.
        decision = self.buffer.pull(now + self._out.size / SAMPLE_RATE, self._quiet)
        stats = self.stats
        stats.frames += 1
        try:
            if isinstance(decision, jb.Play):
                self._wait.add(decision.waited)
                pcm, played = self._decode_play(decision, copy=False)
                if self.on_played is not None:
                    self.on_played(played, now)
                stats.decoded += 1
                pcm = self._resumed(pcm)
                if decision.expand or (decision.accelerate and (
                        decision.voiced or is_quiet(pcm))):
                    pcm = self._stretch(pcm, decision.accelerate)
                elif decision.trim and pcm.size > decision.trim:
                    pcm = self._stretch(pcm, True, decision.trim)  # (a pause only)
            elif isinstance(decision, jb.Recover):
                pcm = self._resumed(self.decoder.recover(decision.next_payload, copy=False))
            elif isinstance(decision, jb.Conceal):
                pcm = self._concealed(self.decoder.conceal(copy=False))
            else:
                stats.silent += 1
                if self._run:  # a long outage after concealment (not the call's start)
                    self._run = max(self._run + 1, MUTE_FROM)
                    self._gain = 0.0
                pcm = self._silence()
        except Exception as exc:  # a corrupt packet must not stop the audio
            stats.decode_errors += 1
            log.debug("decode failed: %s", exc)
            pcm = self._silence()
        if pcm.size == 0:
            pcm = self._silence()
        self._quiet = is_quiet(pcm)
        self._queue(pcm)

    def _silence(self) -> Int16Array:
        out: Int16Array = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        return out

    def _queue(self, pcm: Int16Array) -> None:
        self._out.push(pcm)
        tail = self._tail
        n = min(pcm.size, tail.size)
        tail[:tail.size - n] = tail[n:]
        tail[tail.size - n:] = pcm[pcm.size - n:]

    # -- stretching -------------------------------------------------------------------

    def _stretch(self, pcm: Int16Array, faster: bool, trim: int = 0) -> Int16Array:
        """``pcm`` accelerated or expanded, or (``trim``) a pause that many samples
        shorter (:func:`stretch.shorten`: speech comes back as it is, not counted)."""
        if pcm.size < 2 * stretch.MIN_LAG:
            return pcm
        if trim:
            done = stretch.shorten(pcm, self._tail, trim)
        else:
            done = (stretch.accelerate if faster else stretch.expand)(pcm, self._tail)
        s = self.stretch_stats
        self.buffer.stretched(done.change)
        if done.change < 0:
            if trim:
                s.trimmed += 1
            else:
                s.accelerated += 1
            s.removed -= done.change
        elif done.change > 0:
            s.expanded += 1
            s.added += done.change
        elif not trim:
            s.refused += 1
        return done.samples

    # -- the fade over long gaps --------------------------------------------------------

    def _rms(self, pcm: npt.NDArray[np.int16]) -> float:
        work = self._work[:pcm.size]
        work[...] = pcm
        return math.sqrt(float(work @ work) / max(1, pcm.size))

    def _concealed(self, pcm: Int16Array) -> Int16Array:
        if self._run == 0:  # a gap starts: the level of the 40 ms before it
            self._level = max(LEVEL_FLOOR, self._rms(self._tail))
            self._before = self._rms(self._tail[-FRAME_SAMPLES:])
        self._run += 1
        if self._run < FADE_FROM:
            out = pcm if self._gain == 1.0 else self._ramp(pcm, self._gain, 1.0)
            self._gain = 1.0
            self._before = self._rms(out)
            return out
        self.stretch_stats.faded += 1
        rms = self._rms(pcm)
        if self._run >= MUTE_FROM or rms <= 0:
            target = 0.0
        else:  # at least 6 dB below the frame before, as it was played
            target = min(1.0, FADE_STEP * self._before / rms)
        out = self._ramp(pcm, self._gain, target)
        self._gain = target
        self._before = rms * target
        return out

    def _resumed(self, pcm: Int16Array) -> Int16Array:
        """Audio again (decoded or from FEC): after a long gap, held to the level before."""
        run, self._run = self._run, 0
        first = run >= FADE_FROM
        if first:
            self._cap = CAP_FRAMES
        if self._cap:
            self._cap -= 1
            self.stretch_stats.capped += 1
            rms = self._rms(pcm)
            target = min(1.0, self._level / rms) if rms > 0 else 1.0
            if first:  # fade in over 5 ms from where the concealment left off
                gains = np.full(pcm.size, target, dtype=np.float32)
                n = min(FADE_IN, pcm.size)
                gains[:n] = np.linspace(self._gain, target, n, endpoint=False,
                                        dtype=np.float32)
                out = _to_int16(pcm * gains)
            else:
                out = self._ramp(pcm, self._gain, target)
            self._gain = target
            return out
        if self._gain != 1.0:  # back to full level across this frame
            out = self._ramp(pcm, self._gain, 1.0)
            self._gain = 1.0
            return out
        return pcm

    def _ramp(self, pcm: Int16Array, start: float, end: float) -> Int16Array:
        return _to_int16(pcm * _ramp(pcm.size, start, end))


def _ramp(n: int, start: float, end: float) -> npt.NDArray[np.float32]:
    """Gains from ``start`` to ``end`` over the first 2.5 ms of ``n`` samples, then ``end``."""
    gains = np.full(n, end, dtype=np.float32)
    k = min(RAMP, n)
    gains[:k] = np.linspace(start, end, k, endpoint=False, dtype=np.float32)
    return gains


def _to_int16(x: npt.NDArray[np.float32]) -> Int16Array:
    out: Int16Array = np.clip(np.rint(x), -32768, 32767).astype(np.int16)
    return out

