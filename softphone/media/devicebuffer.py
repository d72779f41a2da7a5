"""How large a sound device's buffer should be: grown on underruns, shrunk back in calm.

Sans I/O: :class:`DeviceBuffer` is told the device's underrun count and the
time (:meth:`DeviceBuffer.update`) and says when to reopen the device with
another buffer. The speaker (:class:`~softphone.media.speaker.SpeakerDriver`)
asks it every few hundred milliseconds.

Each step of buffer costs its size in mouth to ear, so the buffer starts at
the smallest step and grows a step when the device underruns
``underruns_to_grow`` times within ``window`` seconds (a gap the listener
hears each time). Once it has grown, ``calm`` seconds without an underrun
take it back a step: a moment of load on a laptop (a browser opening, a
build) does not cost the rest of the call its delay. A device that underruns
again soon after shrinking (within ``calm``) was at its real limit: the calm
it needs before the next try doubles, up to ``max_calm``, so it does not
see-saw; a shrink that holds for that long brings it back to ``calm``. Each
change reopens the device: a short gap in what is played, so a step back
waits for a pause (:class:`PauseWatch`: told the peak of each stretch the
device plays).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Final

#: The speaker's device buffer steps (seconds), first to last: 10 ms instead of 20 ms
#: saved about 15 ms of mouth to ear through the ALSA pulse plugin.
SPEAKER_LATENCIES: Final = (0.01, 0.02, 0.04)


@dataclass(frozen=True)
class BufferSteps:
    """The settings of a :class:`DeviceBuffer`."""

    #: The buffers to choose from (seconds, smallest first); one step: it never changes.
    steps: tuple[float, ...] = SPEAKER_LATENCIES
    #: This many underruns within ``window`` seconds: a step larger.
    underruns_to_grow: int = 2
    window: float = 10.0
    #: Seconds without an underrun after a change before a step smaller is tried.
    calm: float = 30.0
    #: The longest that calm grows to (doubling each time a smaller step underran soon).
    max_calm: float = 480.0
    #: A pause, for a step back: this many stretches in a row with their peak under
    #: ``quiet_peak`` (-40 dBFS of int16)...
    quiet_peak: int = 328
    quiet_stretches: int = 3
    #: ... or, once the wait for one has lasted this long (seconds), within 3 dB of
    #: the quietest stretch lately: a far end whose pauses carry noise has no pause
    #: under -40 dBFS, and it would keep the larger buffer for the rest of the call.
    pause_patience: float = 10.0

    def __post_init__(self) -> None:
        steps = self.steps
        if not steps or steps[0] <= 0 or any(b <= a for a, b in pairwise(steps)):
            raise ValueError(f"buffer steps must be positive and rising, not {steps!r}")
        if self.underruns_to_grow < 1:
            raise ValueError(f"underruns_to_grow must be at least 1, not {self.underruns_to_grow}")
        if self.window <= 0:
            raise ValueError(f"window must be positive, not {self.window}")
        if not 0 < self.calm <= self.max_calm:
            raise ValueError(f"calm must be positive and at most max_calm ({self.max_calm}), "
                             f"not {self.calm}")
        if not 0 < self.quiet_peak <= 32768 or self.quiet_stretches < 1:
            raise ValueError(f"quiet_peak must be 1..32768 and quiet_stretches at least 1, "
                             f"not {self.quiet_peak}, {self.quiet_stretches}")
        if self.pause_patience < 0:
            raise ValueError(f"pause_patience must not be negative, not {self.pause_patience}")


@dataclass
class DeviceBuffer:
    """The buffer a device should have now (module docstring); time is passed in."""

    settings: BufferSteps = field(default_factory=BufferSteps)
    #: The step in use (an index into ``settings.steps``).
    step: int = field(default=0, init=False)
    #: How often it grew, and shrank back.
    grown: int = field(default=0, init=False)
    shrunk: int = field(default=0, init=False)
    #: The calm needed now before a step smaller (seconds).
    calm: float = field(default=0.0, init=False)
    _counted: int = field(default=0, init=False)
    _recent: deque[float] = field(default_factory=deque, init=False)
    #: When it last changed (or was first asked), when it last shrank (while that
    #: shrink has not yet held for ``calm``), and the last underrun.
    _changed_at: float | None = field(default=None, init=False)
    _shrunk_at: float | None = field(default=None, init=False)
    _last_underrun: float = field(default=float("-inf"), init=False)

    def __post_init__(self) -> None:
        self.calm = self.settings.calm

    @property
    def latency(self) -> float:
        """The buffer to ask the device for (seconds)."""
        return self.settings.steps[self.step]

    @property
    def may_shrink(self) -> bool:
        """Whether it could take a step back (then the device says if it is quiet)."""
        return self.step > 0

    def update(self, underruns: int, now: float, quiet: bool = True) -> float | None:
        """``underruns``: the device's count so far; ``now``: seconds, any origin;
        ``quiet``: what it plays is a pause (a step back waits for one: the reopen
        is a gap, and a gap in a pause is not heard). Returns the buffer to reopen
        the device with, or None: keep it."""
        s = self.settings
        if self._changed_at is None:
            self._changed_at = now
        new = underruns - self._counted
        self._counted = underruns
        if new > 0:
            self._recent.extend([now] * new)
            self._last_underrun = now
        recent = self._recent
        while recent and now - recent[0] > s.window:
            recent.popleft()
        if len(recent) >= s.underruns_to_grow and self.step + 1 < len(s.steps):
            if self._shrunk_at is not None and now - self._shrunk_at < self.calm:
                self.calm = min(2 * self.calm, s.max_calm)  # (back at its limit)
            self.step += 1
            self.grown += 1
            self._shrunk_at = None
            return self._changed(now)
        if self._shrunk_at is not None and now - self._shrunk_at >= self.calm:
            self.calm = s.calm  # (the last shrink held: the device was fine at that size)
            self._shrunk_at = None
        if self.step > 0 and quiet \
                and now - max(self._changed_at, self._last_underrun) >= self.calm:
            self.step -= 1
            self.shrunk += 1
            self._shrunk_at = now
            return self._changed(now)
        return None

    def _changed(self, now: float) -> float:
        self._recent.clear()
        self._changed_at = now
        return self.latency


#: How fast the quietest peak a :class:`PauseWatch` remembers rises again, per stretch
#: (1 dB a second at 50 stretches a second): it follows a noise floor that rises.
_FLOOR_RISE: Final = 10 ** (1 / 20 / 50)
#: Within this of the quietest peak (3 dB): as quiet as the far end gets.
_NEAR_FLOOR: Final = 10 ** (3 / 20)


@dataclass
class PauseWatch:
    """Whether what a speaker plays now is a pause, for a :class:`DeviceBuffer`'s step
    back (whose reopen is a short gap: in a pause it is not heard).

    Told each stretch's peak as it is played (:meth:`feed`, on the audio thread:
    a few comparisons) from :meth:`start` on. A pause is ``quiet_stretches`` in a
    row under ``quiet_peak``; once it has watched for ``pause_patience`` seconds,
    stretches within 3 dB of the quietest lately count too (the quietest remembered
    rises 1 dB a second, so it follows a noise that grows). A steady tone or a word
    does not pass for a pause before then; a far end whose pauses carry noise, or
    who plays on without any, gets its step back at its quietest. (The speaker
    watches from each change on, and the default calm is longer than the
    patience: by the time a step back is due, the quietest is known.)
    """

    settings: BufferSteps = field(default_factory=BufferSteps)
    #: Stretches in a row that were quiet.
    run: int = field(default=0, init=False)
    _since: float | None = field(default=None, init=False)
    _floor: float = field(default=float("inf"), init=False)
    #: Bumped by start() and stop() (the event loop's thread) so that a feed() under
    #: way meanwhile (the audio thread's) does not write back what came before.
    _generation: int = field(default=0, init=False)

    def start(self, now: float) -> None:
        """The wait begins (again: nothing fed before counts)."""
        self._generation += 1
        self._since = now
        self.run = 0
        self._floor = float("inf")

    def stop(self) -> None:
        """No step back is possible: stop watching (:meth:`feed` does nothing)."""
        self._generation += 1
        self._since = None
        self.run = 0

    @property
    def watching(self) -> bool:
        return self._since is not None

    @property
    def quiet(self) -> bool:
        return self.run >= self.settings.quiet_stretches

    def feed(self, peak: int, now: float) -> None:
        """One stretch played, its peak (absolute, int16 units) at ``now`` (seconds)."""
        generation, since = self._generation, self._since
        if since is None:
            return
        s = self.settings
        # (never under quiet_peak: one silent stretch must not make a later noise loud)
        floor = min(self._floor * _FLOOR_RISE, max(peak, s.quiet_peak))
        quiet = peak < s.quiet_peak or (now - since >= s.pause_patience
                                        and peak <= floor * _NEAR_FLOOR)
        run = self.run + 1 if quiet else 0
        if generation == self._generation:  # (else started or stopped meanwhile)
            self._floor, self.run = floor, run
