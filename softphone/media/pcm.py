"""PCM plumbing for the 50-frames-a-second path, each written once.

- :class:`MonoConverter`: any audio frame (PyAV) to mono int16 at one rate,
  streaming; FFmpeg's swresample only when the frame is not already s16 at
  that rate. The encoder, aiortc's decoded frames, audio files and the
  sound devices all convert through it.
- :class:`Resampler`: mono int16 arrays from one rate to another (devices
  that do not take 48 kHz), built on :class:`MonoConverter`.
- :class:`SampleFifo`: samples in, fixed-size blocks out (a 20 ms frame
  from device blocks, a device block from 20 ms frames), in a ring
  allocated once.
"""

from __future__ import annotations

import fractions
from typing import Any, Final

import av
import numpy as np

from softphone.media.audio import SAMPLE_RATE, Int16Array, to_mono_int16

_EMPTY: Final[Int16Array] = np.zeros(0, dtype=np.int16)


class MonoConverter:
    """Audio frames of any format, rate and layout -> mono int16 at ``rate``, streaming."""

    __slots__ = ("_resampler", "rate")

    def __init__(self, rate: int = SAMPLE_RATE) -> None:
        self.rate = rate
        self._resampler: Any = None

    def __call__(self, frame: av.AudioFrame) -> Int16Array:
        if frame.sample_rate == self.rate and frame.format.name == "s16":
            return to_mono_int16(frame.to_ndarray(), len(frame.layout.channels))
        return self._resample(frame)

    def flush(self) -> Int16Array:
        """What the resampler still holds at the end of a stream (often nothing)."""
        return _EMPTY if self._resampler is None else self._resample(None)

    def _resample(self, frame: av.AudioFrame | None) -> Int16Array:
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=self.rate)
        parts = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        if not parts:
            return _EMPTY
        out: Int16Array = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return out


class Resampler:
    """Mono int16 from one rate to another, streaming (PyAV/FFmpeg's swresample)."""

    __slots__ = ("_convert", "_pts", "_time_base", "rate_in")

    def __init__(self, rate_in: int, rate_out: int) -> None:
        self.rate_in = rate_in
        self._convert = MonoConverter(rate_out)
        self._time_base = fractions.Fraction(1, rate_in)
        self._pts = 0

    def __call__(self, samples: Int16Array) -> Int16Array:
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate_in
        frame.pts = self._pts
        frame.time_base = self._time_base
        self._pts += samples.size
        return self._convert(frame)


class SampleFifo:
    """int16 samples in, blocks of any size out, oldest first, in a ring allocated once.

    When a push does not fit, the oldest samples make room (:meth:`push` says
    how many). Not thread-safe: a caller shared by two threads holds a lock.
    """

    __slots__ = ("_buf", "_read", "size")

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("a SampleFifo needs room for at least one sample")
        self._buf: Int16Array = np.zeros(capacity, dtype=np.int16)
        self._read = 0
        #: Samples waiting.
        self.size = 0

    @property
    def capacity(self) -> int:
        return int(self._buf.size)

    def push(self, samples: Int16Array) -> int:
        """Append ``samples``; returns how many of the oldest were dropped to make room."""
        buf = self._buf
        cap = buf.size
        n = samples.size
        if n >= cap:  # only the newest capacity's worth can stay
            dropped = self.size + n - cap
            samples = samples[n - cap:]
            n = cap
            self._read = self.size = 0
        else:
            dropped = self.drop(self.size + n - cap) if self.size + n > cap else 0
        write = (self._read + self.size) % cap
        first = min(n, cap - write)
        buf[write:write + first] = samples[:first]
        buf[:n - first] = samples[first:]
        self.size += n
        return dropped

    def take(self, count: int) -> Int16Array | None:
        """The oldest ``count`` samples (a new array), or None while fewer are waiting."""
        if self.size < count:
            return None
        out: Int16Array = np.empty(count, dtype=np.int16)
        self._move_to(out)
        return out

    def take_into(self, out: Any) -> bool:
        """Fill ``out`` (a writable int16 view, e.g. a device buffer) if enough is waiting."""
        if self.size < len(out):
            return False
        self._move_to(out)
        return True

    def take_padded(self, count: int) -> Int16Array:
        """The oldest ``count`` samples, what there is followed by zeros if fewer wait."""
        out: Int16Array = np.zeros(count, dtype=np.int16)
        self._move_to(out[:min(count, self.size)])
        return out

    def drop(self, count: int) -> int:
        """Forget the oldest ``count`` samples (at most all); returns how many went."""
        count = max(0, min(count, self.size))
        self._read = (self._read + count) % self._buf.size
        self.size -= count
        return count

    def clear(self) -> None:
        self._read = self.size = 0

    def _move_to(self, out: Any) -> None:
        buf = self._buf
        n = len(out)
        read = self._read
        first = min(n, buf.size - read)
        out[:first] = buf[read:read + first]
        out[first:] = buf[:n - first]
        self._read = (read + n) % buf.size
        self.size -= n
