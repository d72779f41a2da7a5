"""libopus through ctypes (softphone.media.libopus, softphone.media.opus): which library,
and that its settings change a running encoder."""

from __future__ import annotations

import numpy as np
import pytest

from softphone.core.adapt import Decision
from softphone.media import libopus
from softphone.media.audio import FRAME_SAMPLES, ToneGenerator, dominant_frequency
from softphone.media.opus import EncoderSettings, OpusDecoder, OpusEncoder, profile_of

from ..conftest import need


def noise(frames: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(FRAME_SAMPLES) * 4000).astype(np.int16) for _ in range(frames)]


def test_pyavs_own_libopus_is_found_in_its_distribution_and_loads() -> None:
    path = libopus.bundled_path()
    need(path is not None, "PyAV's bundled libopus", "pip install av (a wheel: it bundles one)")
    lib = libopus.load()
    assert lib.bundled and lib.path == str(path)
    assert lib.version.startswith("libopus ") and lib.version_tuple >= (1, 5)
    assert lib.modern and profile_of(lib).name == "libopus 1.6"


def test_the_system_libopus_is_the_fallback_with_its_own_profile() -> None:
    lib = libopus.load(prefer_bundled=False)
    assert not lib.bundled and lib.version.startswith("libopus ")
    if not lib.modern:  # Debian's 1.3.1
        assert profile_of(lib).name == "libopus 1.3.1"
    # Either library encodes and decodes a tone.
    enc = libopus.Encoder(lib)
    dec = libopus.Decoder(lib)
    tone = ToneGenerator(440.0)
    out = [dec.decode(enc.encode(tone.next(FRAME_SAMPLES)), libopus.MAX_FRAME).copy()
           for _ in range(25)]
    assert abs(dominant_frequency(np.concatenate(out[5:])) - 440) < 5


def test_a_decision_changes_the_running_encoder() -> None:
    """Bitrate and FEC are CTLs between two frames: no new encoder, the stream goes on."""
    encoder = OpusEncoder(EncoderSettings(adapt=False, bitrate=88_000, fec=False,
                                          expected_loss=0))
    frames = noise(150)
    high = [encoder.encode(f) for f in frames[:50]]
    encoder.apply(Decision(level=1, red_depth=1, fec=True, expected_loss=5, bitrate=24_000,
                           sent=0))
    low = [encoder.encode(f) for f in frames[50:100]]
    assert encoder.bitrate == 24_000 and encoder.inband_fec
    size_high = np.mean([len(p) for p in high[10:]])
    size_low = np.mean([len(p) for p in low[10:]])
    assert size_low < 0.5 * size_high, (size_high, size_low)
    assert all(p[0] >> 3 >= 16 for p in high[10:])  # CELT-only at 88 kbit/s
    assert all(p[0] >> 3 < 16 for p in low[10:])  # SILK or hybrid with FEC on
    # One decoder plays all of it, and FEC rebuilds a lost frame from the next packet.
    decoder = OpusDecoder()
    for packet in high + low[:-2]:
        assert decoder.decode(packet).size == FRAME_SAMPLES
    rebuilt = decoder.recover(low[-1])
    assert rebuilt.size == FRAME_SAMPLES and np.abs(rebuilt).max() > 500


def test_decoder_views_and_copies() -> None:
    encoder = OpusEncoder(EncoderSettings(adapt=False))
    packet = encoder.encode(ToneGenerator(440.0).next(FRAME_SAMPLES))
    decoder = OpusDecoder()
    first = decoder.decode(packet)
    view = decoder.decode(packet, copy=False)
    again = decoder.conceal(copy=False)
    assert view is not first and np.shares_memory(view, again)  # one buffer, reused
    assert not np.shares_memory(first, view)


def test_bad_settings_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="bitrate"):
        EncoderSettings(bitrate=1_000)
    with pytest.raises(ValueError, match="redundancy"):
        EncoderSettings(redundancy=4)
    with pytest.raises(libopus.OpusError, match="encoder_ctl"):
        OpusEncoder()._encoder.set(libopus.SET_COMPLEXITY, 42)
