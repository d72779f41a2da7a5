"""The PCM plumbing every audio path shares: the sample FIFO and the conversion to mono."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest

from softphone.media.audio import SAMPLE_RATE, ToneGenerator, dominant_frequency, tone_purity
from softphone.media.pcm import MonoConverter, SampleFifo


def ramp(start: int, count: int) -> np.ndarray:
    return np.arange(start, start + count, dtype=np.int16)


def test_fifo_hands_out_blocks_of_any_size_in_order_across_the_wrap() -> None:
    fifo = SampleFifo(10)
    assert fifo.push(ramp(0, 7)) == 0
    assert fifo.take(8) is None  # not enough yet: nothing is taken
    assert fifo.size == 7
    assert fifo.take(5).tolist() == [0, 1, 2, 3, 4]
    assert fifo.push(ramp(7, 6)) == 0  # wraps around the end of the ring
    assert fifo.take(8).tolist() == list(range(5, 13))
    assert fifo.size == 0


def test_fifo_drops_the_oldest_when_full_and_says_how_many() -> None:
    fifo = SampleFifo(8)
    fifo.push(ramp(0, 6))
    assert fifo.push(ramp(6, 4)) == 2
    assert fifo.take(8).tolist() == list(range(2, 10))
    assert fifo.push(ramp(0, 20)) == 12  # more than it holds: the newest 8 stay
    assert fifo.take(8).tolist() == list(range(12, 20))


def test_fifo_padded_take_into_and_drop() -> None:
    fifo = SampleFifo(16)
    fifo.push(ramp(1, 3))
    assert fifo.take_padded(5).tolist() == [1, 2, 3, 0, 0]
    assert fifo.size == 0
    fifo.push(ramp(1, 6))
    assert fifo.drop(2) == 2 and fifo.drop(100) == 4 and fifo.size == 0
    fifo.push(ramp(1, 6))
    device = np.zeros((4, 1), dtype=np.int16)  # like a PortAudio output buffer
    assert fifo.take_into(device[:, 0])
    assert device[:, 0].tolist() == [1, 2, 3, 4]
    assert not fifo.take_into(device[:, 0])  # two left: untouched
    assert device[:, 0].tolist() == [1, 2, 3, 4] and fifo.size == 2
    with pytest.raises(ValueError):
        SampleFifo(0)


def frame_of(samples: np.ndarray, rate: int, layout: str, fmt: str) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(samples, format=fmt, layout=layout)
    frame.sample_rate = rate
    frame.pts = 0
    frame.time_base = fractions.Fraction(1, rate)
    return frame


def test_stereo_s16_at_48k_is_mixed_down_without_resampling() -> None:
    left = np.full(960, 1000, dtype=np.int16)
    right = np.full(960, 3000, dtype=np.int16)
    interleaved = np.stack([left, right], axis=1).reshape(1, -1)
    out = MonoConverter()(frame_of(interleaved, SAMPLE_RATE, "stereo", "s16"))
    assert out.dtype == np.int16 and out.size == 960
    assert set(out.tolist()) == {2000}


def test_other_rates_and_formats_are_resampled_to_mono_48k() -> None:
    """A 44.1 kHz float stereo stream, 20 ms at a time: the tone and the duration stay."""
    convert = MonoConverter()
    tone = ToneGenerator(1000, rate=44_100)
    chunks = []
    for _ in range(100):  # 2 s
        mono = tone.next(882).astype(np.float32) / 32768
        planar = np.stack([mono, mono])  # fltp: one plane per channel
        chunks.append(convert(frame_of(planar, 44_100, "stereo", "fltp")))
    chunks.append(convert.flush())
    out = np.concatenate(chunks)
    assert out.dtype == np.int16
    assert abs(out.size - 2 * SAMPLE_RATE) < 200
    assert abs(dominant_frequency(out[4800:]) - 1000) < 2
    assert tone_purity(out[4800:], 1000) > 0.95
