"""Time stretching of decoded voice, as WebRTC's NetEQ does it: accelerate and expand.

When the jitter buffer holds more than it needs, :func:`accelerate` plays a
frame shorter by one pitch period; when it runs low, :func:`expand` (NetEQ's
*preemptive* expand) plays it longer by one. Either is inaudible on voiced
speech, unlike skipping or repeating a whole 20 ms frame, because the cut or
the repeat is one period of a periodic signal, spliced with a raised-cosine
crossfade between two stretches that match (WSOLA, pitch-synchronous
overlap-add).

Both take the frame about to be played (int16, 48 kHz mono, normally 20 ms)
and the ``history`` already played just before it (at least 20 ms for the
longest pitch), and return a :class:`Stretch`: the samples to play instead,
and how many were removed or added. Only the new samples change: the splice
starts at the frame's first sample (where the crossfade still follows the
history exactly) and ends inside the frame, whose end is left as it was, so
what is played next follows on.

- The pitch period is the lag, 2.5 to 20 ms, of the highest normalized
  autocorrelation of the frame against what precedes it, on the signal
  decimated to 8 kHz (the shortest lag within 5 % of the best, against
  octave errors), refined to the sample at 48 kHz on the two stretches the
  splice joins.
- Periodic (normalized correlation of those stretches >= ``threshold``):
  one period removed or added.
- Quiet (peak below ``quiet_dbfs``, a pause): as much as the frame allows
  (all but a 2.5 ms crossfade removed; a whole frame of history added).
- Otherwise (noise, onsets, consonants): refused: the input comes back
  unchanged with ``change == 0``.

Pure numpy, no loop over samples: about 100 us a frame here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from softphone.media.audio import SAMPLE_RATE, Int16Array

#: Pitch lags searched: 2.5 ms (400 Hz) to 20 ms (50 Hz).
MIN_LAG: Final = SAMPLE_RATE * 25 // 10_000  # 120
MAX_LAG: Final = SAMPLE_RATE * 20 // 1_000  # 960
#: The pitch search runs at 8 kHz.
DECIMATION: Final = 6
#: Shortest crossfade (2.5 ms).
MIN_OVERLAP: Final = MIN_LAG
#: Normalized correlation above which a frame is periodic enough to stretch.
THRESHOLD: Final = 0.9
#: Peak level under which a frame is a pause, stretched whatever its shape.
QUIET_DBFS: Final = -45.0
#: The decimated lag within this fraction of the best correlation that is shortest wins.
_OCTAVE_TOLERANCE: Final = 0.95

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Stretch:
    """What to play instead of a frame."""

    samples: Int16Array
    #: Samples added (> 0) or removed (< 0); 0: refused, ``samples`` is the input.
    change: int
    #: The pitch period spliced (samples), 0 when refused.
    lag: int
    #: "periodic", "quiet", or why it was refused.
    reason: str


def accelerate(frame: Int16Array, history: Int16Array, *, threshold: float = THRESHOLD,
               quiet_dbfs: float = QUIET_DBFS) -> Stretch:
    """``frame`` shorter by one pitch period (all but 2.5 ms of it when quiet), or refused.

    ``history``: what was played just before ``frame`` (its end is what matters).
    """
    x, h = _check(frame, history)
    n = x.size
    if _quiet(frame, quiet_dbfs):
        lag = n - MIN_OVERLAP
        if lag < MIN_OVERLAP:
            return _refused(frame, "frame too short")
        return _splice_accelerate(x, lag, MIN_OVERLAP, "quiet")
    found = _pitch(np.concatenate((h, x)), n)
    if found is None:
        return _refused(frame, "too little history")
    lag, _ = found
    # One period out: the two stretches joined must fit in the frame with a 2.5 ms crossfade.
    lags = _around(lag, MIN_LAG, n - MIN_OVERLAP)
    if lags.size == 0:
        return _refused(frame, "pitch period too long for the frame")
    overlap = int(min(lags[0], n - lags[-1]))
    r = _correlations(x, x[:overlap], int(lags[0]), int(lags[-1]))  # x[0:W] ~ x[lag:lag+W]
    i = int(np.argmax(r))
    corr = float(r[i])
    if corr < threshold:
        return _refused(frame, f"not periodic (correlation {corr:.2f})")
    best = int(lags[i])
    return _splice_accelerate(x, best, min(best, n - best), "periodic")


def shorten(frame: Int16Array, history: Int16Array, samples: int, *,
            quiet_dbfs: float = QUIET_DBFS) -> Stretch:
    """A quiet ``frame`` (a pause) ``samples`` shorter, at most all but 2.5 ms of it,
    spliced with a 2.5 ms crossfade; refused if it is not quiet.

    For a cut smaller than :func:`accelerate`'s in a pause: the delay a player
    that pulls in device blocks takes back to the sample (the frame phase).
    """
    x, _ = _check(frame, history)
    if not _quiet(frame, quiet_dbfs):
        return _refused(frame, "not quiet")
    lag = min(samples, x.size - MIN_OVERLAP)
    if lag <= 0:
        return _refused(frame, "nothing to cut")
    return _splice_accelerate(x, lag, MIN_OVERLAP, "quiet")


def expand(frame: Int16Array, history: Int16Array, *, threshold: float = THRESHOLD,
           quiet_dbfs: float = QUIET_DBFS) -> Stretch:
    """``frame`` longer by one pitch period taken from the history (a whole frame when
    quiet), or refused. NetEQ's *preemptive* expand: it stretches audio that is there."""
    x, h = _check(frame, history)
    n = x.size
    if _quiet(frame, quiet_dbfs):
        lag = min(h.size, n)
        if lag < MIN_OVERLAP:
            return _refused(frame, "too little history")
        return _splice_expand(h, x, lag, MIN_OVERLAP, "quiet")
    found = _pitch(np.concatenate((h, x)), n)
    if found is None:
        return _refused(frame, "too little history")
    lag, _ = found
    lags = _around(lag, MIN_LAG, min(MAX_LAG, h.size))
    if lags.size == 0:
        return _refused(frame, "too little history")
    overlap = int(min(lags[0], n))
    # The frame's start against the same stretch one period earlier (from the history).
    c = np.concatenate((h, x))
    r = _correlations(c, x[:overlap], h.size - int(lags[-1]), h.size - int(lags[0]))[::-1]
    i = int(np.argmax(r))  # r[i]: lag lags[i]
    corr = float(r[i])
    if corr < threshold:
        return _refused(frame, f"not periodic (correlation {corr:.2f})")
    best = int(lags[i])
    return _splice_expand(h, x, best, min(best, n), "periodic")


# -- the parts ----------------------------------------------------------------


def _check(frame: Int16Array, history: Int16Array) -> tuple[FloatArray, FloatArray]:
    for name, a in (("frame", frame), ("history", history)):
        if not isinstance(a, np.ndarray) or a.dtype != np.int16 or a.ndim != 1:
            raise TypeError(f"{name} must be a 1-D int16 array (48 kHz mono samples)")
    if frame.size < 2 * MIN_LAG:
        raise ValueError(f"a frame of {frame.size} samples is too short to stretch "
                         f"(at least {2 * MIN_LAG})")
    return frame.astype(np.float32), history[-MAX_LAG:].astype(np.float32)


def _quiet(frame: Int16Array, quiet_dbfs: float) -> bool:
    peak = max(int(frame.max()), -int(frame.min()))
    return peak < 32768.0 * 10 ** (quiet_dbfs / 20)


def _correlations(signal: FloatArray, ref: FloatArray, first: int, last: int) -> FloatArray:
    """Normalized correlation of ``ref`` with the stretches of ``signal`` starting at
    ``first..last`` (as long as ``ref``)."""
    m = ref.size
    part = signal[first:last + m]
    num = np.correlate(part, ref, mode="valid")
    power = np.concatenate(((0.0,), np.cumsum(part.astype(np.float64) ** 2)))
    energy = (power[m:] - power[:-m]) * float(ref @ ref)
    r: FloatArray = (num / np.sqrt(np.maximum(energy, 1e-9))).astype(np.float32)
    return r


def _refused(frame: Int16Array, reason: str) -> Stretch:
    return Stretch(frame, 0, 0, reason)


def _pitch(c: FloatArray, n: int) -> tuple[int, float] | None:
    """The pitch lag (48 kHz samples) of the last ``n`` samples of ``c``, and its correlation.

    Normalized autocorrelation at 8 kHz: the last ``n`` samples against each
    stretch of the same length ``lag`` earlier. None without enough history.
    """
    usable = c.size - c.size % DECIMATION
    d = c[c.size - usable:].reshape(-1, DECIMATION).mean(axis=1)  # boxcar low-pass + decimation
    m = n // DECIMATION
    lo = MIN_LAG // DECIMATION
    hi = min(MAX_LAG // DECIMATION, d.size - m)
    if hi < lo:
        return None
    end = d.size - m  # where the frame starts
    r = _correlations(d, d[end:], end - hi, end - lo)[::-1]  # r[i]: lag lo + i
    best = float(r.max())
    if best <= 0:  # nothing alike: the splice's own check refuses it
        i = int(np.argmax(r))
        return (lo + i) * DECIMATION, best
    peaks = np.ones(r.size, dtype=bool)
    peaks[1:] &= r[1:] >= r[:-1]
    peaks[:-1] &= r[:-1] >= r[1:]
    good = np.flatnonzero(peaks & (r >= _OCTAVE_TOLERANCE * best))
    i = int(good[0]) if good.size else int(np.argmax(r))
    return (lo + i) * DECIMATION, float(r[i])


def _around(lag: int, lo: int, hi: int) -> npt.NDArray[np.intp]:
    """The 48 kHz lags within one decimation step of ``lag``, clipped to ``lo..hi``."""
    return np.arange(max(lo, lag - DECIMATION), min(hi, lag + DECIMATION) + 1)


def _fade(overlap: int) -> FloatArray:
    """Raised cosine from 0 to 1 over ``overlap`` samples."""
    w: FloatArray = 0.5 - 0.5 * np.cos(np.arange(0.5, overlap, dtype=np.float32)
                                       * np.float32(np.pi / overlap))
    return w


def _to_int16(x: FloatArray) -> Int16Array:
    out: Int16Array = np.clip(np.rint(x), -32768, 32767).astype(np.int16)
    return out


def _splice_accelerate(x: FloatArray, lag: int, overlap: int, reason: str) -> Stretch:
    """x[0:W] fading into x[lag:lag+W], then x[lag+W:]: ``lag`` samples fewer."""
    w = _fade(overlap)
    head = x[:overlap] + (x[lag:lag + overlap] - x[:overlap]) * w
    out = _to_int16(np.concatenate((head, x[lag + overlap:])))
    return Stretch(out, -lag, lag, reason)


def _splice_expand(h: FloatArray, x: FloatArray, lag: int, overlap: int,
                   reason: str) -> Stretch:
    """x[0:W] fading into the stretch one period back, then that period again, then x."""
    c = np.concatenate((h[h.size - lag:], x))  # c[lag:] is x
    w = _fade(overlap)
    head = x[:overlap] + (c[:overlap] - x[:overlap]) * w
    out = _to_int16(np.concatenate((head, c[overlap:])))
    return Stretch(out, lag, lag, reason)
