"""The echo canceller's and noise suppressor's own delay on the microphone path.

Bursts of noise go through pywebrtc-audio's ``EchoCanceller`` (no far end) and
``NoiseSuppressor`` in 10 ms frames, as :mod:`softphone.media.apm` feeds them,
and through the binding's combined ``AudioProcessor`` (one band split for
both, not used: see the module's docstring), and, if it is installed, through
LiveKit's ``rtc.AudioProcessingModule`` (the other binding of WebRTC's APM,
echo cancellation and noise suppression on; ``pip install livekit``, about 30
MB); the delay is the lag at which the output best matches the input. It is
the processing's share of mouth to ear (``benchmarks/mouth_to_ear.py``), at
each rate the binding takes. Deterministic; needs ``pip install pywebrtc-audio``.

Usage::

    python benchmarks/apm_delay.py
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import numpy as np

RATES = (16_000, 32_000, 48_000)


def bursts(rate: int, seconds: float = 3.0) -> np.ndarray:
    """10 ms noise bursts every half second, silence between."""
    rng = np.random.default_rng(1)
    x = np.zeros(int(rate * seconds), np.int16)
    n = rate // 100
    for k in range(1, int(seconds * 2)):
        start = int(k * 0.5 * rate)
        x[start:start + n] = (rng.standard_normal(n) * 8000).astype(np.int16)
    return x


def delay_ms(process: Callable[[np.ndarray], np.ndarray], rate: int,
             most: float = 0.04) -> float:
    """The lag (ms, up to ``most`` s) at which ``process``'s output matches its input."""
    x = bursts(rate)
    step = rate // 100
    y = np.concatenate([process(x[i:i + step]) for i in range(0, x.size, step)])
    xf, yf = x.astype(np.float64), y.astype(np.float64)
    n = x.size
    lags = range(int(most * rate))
    best = max(lags, key=lambda lag: float(np.dot(xf[:n - lag], yf[lag:n])))
    return best * 1000.0 / rate


def livekit_processor(rate: int) -> Callable[[np.ndarray], np.ndarray] | None:
    """LiveKit's full APM with echo cancellation and noise suppression (its
    high-pass filter comes with them), fed 10 ms frames; None if not installed."""
    try:
        from livekit import rtc
    except ImportError:
        return None
    apm = rtc.AudioProcessingModule(echo_cancellation=True, noise_suppression=True)
    step = rate // 100
    far = bytes(2 * step)

    def process(near: np.ndarray) -> np.ndarray:
        apm.process_reverse_stream(rtc.AudioFrame(bytearray(far), rate, 1, step))
        apm.set_stream_delay_ms(0)
        frame = rtc.AudioFrame(bytearray(near.astype(np.int16).tobytes()), rate, 1, step)
        apm.process_stream(frame)  # (in place)
        return np.frombuffer(frame.data, np.int16).copy()

    return process


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    try:
        import pywebrtc_audio as wa
    except ImportError:
        sys.exit("pywebrtc-audio is missing: pip install pywebrtc-audio")
    silence = {rate: np.zeros(rate // 100, np.int16) for rate in RATES}
    print(f"{'rate':>6} {'echo canceller':>15} {'noise suppressor':>17} {'both':>6}"
          f" {'AudioProcessor':>15} {'LiveKit APM':>12}")
    for rate in RATES:
        aec = wa.EchoCanceller(sample_rate=rate)
        ns = wa.NoiseSuppressor(sample_rate=rate, level=1)
        aec2 = wa.EchoCanceller(sample_rate=rate)
        ns2 = wa.NoiseSuppressor(sample_rate=rate, level=1)
        far = silence[rate]
        d_aec = delay_ms(lambda near, a=aec, f=far: a.process(near, f), rate)
        d_ns = delay_ms(ns.process, rate)
        d_both = delay_ms(lambda near, a=aec2, n=ns2, f=far: n.process(a.process(near, f)),
                          rate)
        combined = wa.AudioProcessor(sample_rate=rate, echo_cancellation=True,
                                     noise_suppression=True, auto_gain_control=True)
        d_combined = delay_ms(lambda near, c=combined, f=far: c.process(near, f), rate)
        livekit = livekit_processor(rate)
        d_livekit = "not installed" if livekit is None else \
            f"{delay_ms(livekit, rate):.1f} ms"
        print(f"{rate:>6} {d_aec:>12.1f} ms {d_ns:>14.1f} ms {d_both:>3.1f} ms"
              f" {d_combined:>12.1f} ms {d_livekit:>12}")


if __name__ == "__main__":
    main()
