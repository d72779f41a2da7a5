"""Plain audio arithmetic on numpy arrays: tones, levels, frequency.

Everything here is pure (arrays in, numbers or arrays out) and cheap enough
for the 50-frames-a-second path; no I/O, no event loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

# (Re-exported: the format is part of this module's interface.)
from softphone.media.audioformat import FRAME_MS as FRAME_MS
from softphone.media.audioformat import FRAME_SAMPLES as FRAME_SAMPLES
from softphone.media.audioformat import SAMPLE_RATE as SAMPLE_RATE

Int16Array = npt.NDArray[np.int16]
FloatArray = npt.NDArray[np.float64]


class ToneGenerator:
    """A continuous sine wave, handed out frame by frame without phase jumps."""

    __slots__ = ("_phase", "_step", "amplitude", "frequency", "rate")

    def __init__(self, frequency: float, amplitude: float = 0.3,
                 rate: int = SAMPLE_RATE) -> None:
        if not 20.0 <= frequency <= rate / 2:
            raise ValueError(f"tone frequency {frequency} Hz is outside 20..{rate // 2} Hz")
        self.frequency = frequency
        self.amplitude = amplitude
        self.rate = rate
        self._phase = 0.0
        self._step = 2.0 * np.pi * frequency / rate

    def next(self, samples: int = FRAME_SAMPLES) -> Int16Array:
        phases = self._phase + self._step * np.arange(samples)
        self._phase = float((self._phase + self._step * samples) % (2.0 * np.pi))
        out: Int16Array = (np.sin(phases) * (self.amplitude * 32767.0)).astype(np.int16)
        return out


def to_mono_int16(samples: npt.NDArray[Any], channels: int) -> Int16Array:
    """Interleaved int16 with ``channels`` channels -> mono int16."""
    flat = samples.reshape(-1)
    if channels == 1:
        mono: Int16Array = flat.astype(np.int16, copy=False)
    else:
        mono = flat.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return mono


def rms_dbfs(samples: npt.NDArray[np.int16]) -> float:
    """Level in dB relative to full scale (-inf for silence)."""
    if samples.size == 0:
        return float("-inf")
    x = samples.astype(np.float64)
    rms = float(np.sqrt(np.mean(x * x)))
    if rms <= 0.0:
        return float("-inf")
    return 20.0 * float(np.log10(rms / 32768.0))


def dominant_frequency(samples: npt.NDArray[np.int16], rate: int = SAMPLE_RATE) -> float:
    """The strongest frequency in ``samples`` (Hz), interpolated between FFT bins.

    Returns 0.0 for silence or for fewer than 256 samples.
    """
    if samples.size < 256:
        return 0.0
    x = samples.astype(np.float64)
    x -= x.mean()
    if not np.any(x):
        return 0.0
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    spectrum[0] = 0.0
    peak = int(np.argmax(spectrum))
    if 0 < peak < spectrum.size - 1:
        # Parabolic interpolation of the log magnitude around the peak.
        a, b, c = np.log(spectrum[peak - 1: peak + 2] + 1e-12)
        denom = a - 2 * b + c
        offset = 0.5 * (a - c) / denom if denom != 0 else 0.0
    else:
        offset = 0.0
    return float((peak + offset) * rate / x.size)


def tone_purity(samples: npt.NDArray[np.int16], frequency: float,
                rate: int = SAMPLE_RATE, width: float = 30.0) -> float:
    """Share of the signal's energy within ``width`` Hz of ``frequency`` (0..1)."""
    if samples.size < 256:
        return 0.0
    x = samples.astype(np.float64)
    x -= x.mean()
    power = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
    total = float(power[1:].sum())
    if total <= 0.0:
        return 0.0
    freqs = np.fft.rfftfreq(x.size, 1.0 / rate)
    band = (freqs >= frequency - width) & (freqs <= frequency + width)
    return float(power[band].sum() / total)


def silent_gaps(samples: npt.NDArray[np.int16], rate: int = SAMPLE_RATE,
                window_ms: float = 5.0, threshold_dbfs: float = -40.0) -> list[float]:
    """Lengths (seconds) of the runs of near-silence inside ``samples``.

    Used to check that a tone is continuous: leading and trailing silence
    are not counted.
    """
    window = max(1, int(rate * window_ms / 1000))
    n = samples.size // window
    if n == 0:
        return []
    x = samples[: n * window].astype(np.float64).reshape(n, window)
    level = np.sqrt(np.mean(x * x, axis=1))
    loud = level > 32768.0 * 10 ** (threshold_dbfs / 20)
    idx = np.flatnonzero(loud)
    if idx.size == 0:
        return []
    loud = loud[idx[0]: idx[-1] + 1]
    gaps: list[float] = []
    run = 0
    for is_loud in loud:
        if is_loud:
            if run:
                gaps.append(run * window / rate)
            run = 0
        else:
            run += 1
    return gaps
