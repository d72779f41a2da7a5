"""Time stretching (softphone.media.stretch): one pitch period out or in, and no click.

A click is broadband: the check is the energy outside the signal's band in
a 2048-sample Blackman window centred on the splice, against the energy in
it. Each test also makes the cut a naive player would (drop 5 ms, or skip a
whole 20 ms frame, with no crossfade) and shows that it fails the same check.
"""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt
import pytest

from softphone.media.audio import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    Int16Array,
    dominant_frequency,
    rms_dbfs,
)
from softphone.media.stretch import (
    MAX_LAG,
    MIN_LAG,
    MIN_OVERLAP,
    Stretch,
    accelerate,
    expand,
    shorten,
)

N = FRAME_SAMPLES
WINDOW = 2048
CLICK_DB = -30.0  # energy outside the band, relative to inside: above this is a click
TONE_BAND = (300.0, 580.0)  # around 440 Hz (the Blackman main lobe is +-70 Hz)
VOICE_BAND = (100.0, 2300.0)  # 12 harmonics of 150 Hz +-3 %


def tone(freq: float = 440.0, seconds: float = 0.5, dbfs: float = -10.0) -> Int16Array:
    t = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
    out: Int16Array = (32767 * 10 ** (dbfs / 20) * np.sin(2 * np.pi * freq * t)).astype(np.int16)
    return out


def f0_at(t: npt.NDArray[np.float64] | float) -> npt.NDArray[np.float64]:
    """The speech-like signal's pitch: 150 Hz with a 3 %, 5 Hz vibrato."""
    return np.asarray(150.0 * (1 + 0.03 * np.sin(2 * np.pi * 5.0 * np.asarray(t))))


def voice(seconds: float = 0.5) -> Int16Array:
    """Twelve harmonics falling off as 1/k on a vibrato pitch: voiced speech, roughly."""
    t = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
    phase = 2 * np.pi * np.cumsum(f0_at(t)) / SAMPLE_RATE
    x = sum(np.sin(k * phase) / k for k in range(1, 13))
    out: Int16Array = (0.3 * 32767 * x / np.abs(x).max()).astype(np.int16)
    return out


def out_of_band_db(stream: Int16Array, centre: int, band: tuple[float, float]) -> float:
    seg = stream[centre - WINDOW // 2:centre + WINDOW // 2].astype(np.float64)
    assert seg.size == WINDOW
    power = np.abs(np.fft.rfft(seg * np.blackman(WINDOW))) ** 2
    freqs = np.fft.rfftfreq(WINDOW, 1 / SAMPLE_RATE)
    inside = (freqs >= band[0]) & (freqs <= band[1])
    return float(10 * np.log10(power[~inside].sum() / power[inside].sum()))


def play(signal: Int16Array, at: int, stretch: Stretch) -> tuple[Int16Array, int]:
    """What is heard: the history, the stretched frame, then the frames after it."""
    stream = np.concatenate((signal[:at], stretch.samples, signal[at + N:]))
    return stream, at + min(stretch.lag, N) // 2  # the middle of the crossfade


def naive_cut(signal: Int16Array, at: int, samples: int) -> Int16Array:
    return np.concatenate((signal[:at], signal[at + samples:]))


def test_accelerate_a_tone_removes_one_period_without_a_click() -> None:
    signal = tone()
    at = SAMPLE_RATE // 4
    frame, history = signal[at:at + N], signal[:at]
    assert out_of_band_db(signal, at, TONE_BAND) < -60  # the measure itself is clean
    result = accelerate(frame, history)
    assert result.reason == "periodic"
    period = SAMPLE_RATE / 440.0
    # One period of the search (2.5-20 ms): the shortest whole number of cycles in it.
    assert MIN_LAG <= result.lag <= MAX_LAG and result.lag < MIN_LAG + period
    assert abs(result.lag / period - round(result.lag / period)) * period <= 1.0
    assert result.change == -result.lag
    assert result.samples.size == N - result.lag
    assert np.array_equal(result.samples[-100:], frame[-100:])  # the next frame follows on
    stream, splice = play(signal, at, result)
    assert out_of_band_db(stream, splice, TONE_BAND) < CLICK_DB
    assert dominant_frequency(stream[splice - 1024:splice + 1024]) == pytest.approx(440, abs=2)
    for cut in (240, N):  # 5 ms dropped; the jitter buffer's whole-frame skip
        assert out_of_band_db(naive_cut(signal, at, cut), at, TONE_BAND) > CLICK_DB


def test_expand_a_tone_adds_one_period_without_a_click() -> None:
    signal = tone()
    at = SAMPLE_RATE // 4
    frame, history = signal[at:at + N], signal[:at]
    result = expand(frame, history)
    assert result.reason == "periodic"
    period = SAMPLE_RATE / 440.0
    assert MIN_LAG <= result.lag < MIN_LAG + period
    assert abs(result.lag / period - round(result.lag / period)) * period <= 1.0
    assert result.change == result.lag and result.samples.size == N + result.lag
    assert np.array_equal(result.samples[result.lag:], frame)  # the frame, after one period
    stream, splice = play(signal, at, result)
    assert out_of_band_db(stream, splice, TONE_BAND) < CLICK_DB
    assert abs(rms_dbfs(result.samples) - rms_dbfs(frame)) < 0.3
    # Naive: replay the last 5 ms before the frame as they were.
    naive = np.concatenate((signal[:at], signal[at - 240:]))
    assert out_of_band_db(naive, at, TONE_BAND) > CLICK_DB


@pytest.mark.parametrize("at_ms", [100, 137, 160, 203, 250, 281, 330, 377])
def test_speech_like_voice_loses_and_gains_one_period_without_a_click(at_ms: int) -> None:
    """Harmonics on a vibrato pitch, at several points of the vibrato."""
    signal = voice()
    at = SAMPLE_RATE * at_ms // 1000
    frame, history = signal[at:at + N], signal[:at]
    period = SAMPLE_RATE / float(f0_at(at / SAMPLE_RATE))
    for stretch, sign in ((accelerate, -1), (expand, 1)):
        result = stretch(frame, history)
        assert result.reason == "periodic", (stretch.__name__, result.reason)
        assert abs(result.lag - period) <= 0.05 * period, (stretch.__name__, result.lag, period)
        assert result.change == sign * result.lag
        assert result.samples.size == N + result.change
        stream, splice = play(signal, at, result)
        assert out_of_band_db(stream, splice, VOICE_BAND) < CLICK_DB, stretch.__name__
    # 5 and 10 ms dropped (a whole frame can happen to be three periods of 150 Hz).
    for cut in (240, 480):
        assert out_of_band_db(naive_cut(signal, at, cut), at, VOICE_BAND) > CLICK_DB


def test_accelerating_every_frame_of_a_voice_keeps_its_pitch_and_has_no_click() -> None:
    """As a playout catching up would: the history is what was played (stretched) before."""
    signal = voice(1.0)
    played = [signal[:N]]
    removed = 0
    splices = []
    length = N
    for start in range(N, signal.size - N + 1, N):
        result = accelerate(signal[start:start + N], np.concatenate(played[-2:]))
        splices.append(length + min(result.lag, N) // 2)
        played.append(result.samples)
        length += result.samples.size
        removed -= result.change
    out = np.concatenate(played)
    assert out.size == signal.size - removed
    assert removed >= 30 * 0.9 * SAMPLE_RATE / 155  # a period out of (nearly) every frame
    for splice in splices:
        if WINDOW // 2 <= splice <= out.size - WINDOW // 2:
            assert out_of_band_db(out, splice, VOICE_BAND) < CLICK_DB
    # Shorter, not higher: the pitch is the source's (150 Hz +-3 %).
    assert 140 < dominant_frequency(out) < 160


def test_quiet_input_is_stretched_by_nearly_a_frame() -> None:
    signal = tone(dbfs=-60.0)
    at = SAMPLE_RATE // 4
    frame, history = signal[at:at + N], signal[:at]
    shorter = accelerate(frame, history)
    assert shorter.reason == "quiet"
    assert shorter.change == -(N - MIN_OVERLAP) and shorter.samples.size == MIN_OVERLAP
    longer = expand(frame, history)
    assert longer.reason == "quiet"
    assert longer.change == N and longer.samples.size == 2 * N
    silence = np.zeros(N, dtype=np.int16)
    assert accelerate(silence, silence).samples.size == MIN_OVERLAP
    assert not accelerate(silence, silence).samples.any()


def test_a_pause_is_shortened_by_exactly_what_is_asked_and_speech_is_not() -> None:
    signal = tone(dbfs=-60.0)
    at = SAMPLE_RATE // 4
    frame, history = signal[at:at + N], signal[:at]
    for asked in (97, 480, 840):
        out = shorten(frame, history, asked)
        assert out.reason == "quiet" and out.change == -asked and out.samples.size == N - asked
        assert np.array_equal(out.samples[MIN_OVERLAP:], frame[asked + MIN_OVERLAP:])
    assert shorten(frame, history, 5000).samples.size == MIN_OVERLAP  # all but the fade
    assert shorten(frame, history, 0).change == 0
    loud = tone()
    refused = shorten(loud[at:at + N], loud[:at], 480)
    assert refused.change == 0 and refused.samples.size == N and refused.reason == "not quiet"


def test_noise_is_refused_and_comes_back_unchanged() -> None:
    rng = np.random.default_rng(14)
    noise = (rng.standard_normal(3 * N) * 3000).astype(np.int16)
    frame, history = noise[2 * N:], noise[:2 * N]
    for stretch in (accelerate, expand):
        result = stretch(frame, history)
        assert result.change == 0 and result.lag == 0
        assert result.samples is frame
        assert result.reason.startswith("not periodic")


def test_too_little_history_is_refused() -> None:
    signal = tone()
    frame = signal[N:2 * N]
    assert accelerate(frame, signal[N - 50:N]).reason == "too little history"
    assert expand(frame, signal[:0]).change == 0


def test_bad_input_is_a_clear_error() -> None:
    frame = tone()[:N]
    with pytest.raises(TypeError, match="int16"):
        accelerate(frame.astype(np.float32), frame)
    with pytest.raises(TypeError, match="int16"):
        expand(frame, frame.reshape(2, -1))
    with pytest.raises(ValueError, match="too short"):
        accelerate(frame[:100], frame)


def test_cpu_per_frame() -> None:
    """Well under a frame's 20 ms: measured as process time over many frames."""
    signal = voice(1.0)
    frames = [(signal[s:s + N], signal[s - N:s]) for s in range(N, signal.size - N + 1, N)]
    rounds = 10
    started = time.process_time()
    for _ in range(rounds):
        for frame, history in frames:
            accelerate(frame, history)
            expand(frame, history)
    per_call = (time.process_time() - started) / (2 * rounds * len(frames))
    print(f"stretch: {per_call * 1e6:.0f} us per frame (accelerate or expand)")
    assert per_call < 0.002
