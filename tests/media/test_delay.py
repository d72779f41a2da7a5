"""One end's parts of the mouth-to-ear delay (softphone.media.delay), and the parts
the media measures: Opus's look-ahead, through real libopus; the jitter buffer's
wait, through our playout on a simulated clock (the processing's delay is checked
against the real binding in test_apm.py, and the whole in a call in test_echo_call.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from softphone.media.audio import FRAME_SAMPLES, SAMPLE_RATE
from softphone.media.delay import DelayParts, Smoothed, sane_delay
from softphone.media.opus import EncoderSettings, OpusDecoder, OpusEncoder
from softphone.media.playout import StretchPlayout

N = FRAME_SAMPLES
T = N / SAMPLE_RATE


def test_parts_add_up_by_direction_and_unknown_parts_stay_unknown() -> None:
    parts = DelayParts(mic_ms=10.04, processing_ms=15.9, frame_ms=20.0, codec_ms=6.5,
                       network_ms=0.25, jitter_buffer_ms=5.2, speaker_ms=12.1)
    assert parts.send_ms is not None and abs(parts.send_ms - 52.44) < 1e-9
    assert parts.receive_ms is not None and abs(parts.receive_ms - 17.3) < 1e-9
    doc = parts.to_json()
    assert doc["mic_ms"] == 10.0 and doc["send_ms"] == 52.4 and doc["receive_ms"] == 17.3
    tone = DelayParts(frame_ms=20.0, codec_ms=6.5)  # a tone sent, nothing played
    assert tone.send_ms == 26.5 and tone.receive_ms is None
    assert tone.to_json()["mic_ms"] is None and tone.to_json()["receive_ms"] is None


def test_device_timestamps_are_believed_only_in_a_sane_range() -> None:
    """A host API's nonsense (a DAC time of 0, a clock from elsewhere) is not averaged
    in; PortAudio's own jitter just under zero counts as zero."""
    assert sane_delay(0.0123) == 0.0123 and sane_delay(-0.002) == 0.0
    assert sane_delay(-0.5) is None and sane_delay(5000.0) is None
    mean = Smoothed(n=4)
    for x in (0.010, None, sane_delay(-1234.5), 0.014):
        mean.add(x)
    assert mean.value is not None and abs(mean.value - 0.011) < 1e-12


def test_the_codec_delay_is_how_late_the_decoded_sound_comes() -> None:
    """Noise through real libopus (as a call sends it): the decoded stream matches
    the input best ``OpusEncoder.delay`` later, to the sample."""
    encoder = OpusEncoder(EncoderSettings(adapt=False, bitrate=64_000, fec=False,
                                          expected_loss=0))
    decoder = OpusDecoder()
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(SAMPLE_RATE) * 4000).astype(np.int16)
    y = np.concatenate([decoder.decode(encoder.encode(x[i:i + N]))
                        for i in range(0, x.size, N)]).astype(np.float64)
    seg = x[N * 10:N * 30].astype(np.float64)
    lag = max(range(N // 2),
              key=lambda d: float(np.dot(y[N * 10 + d:N * 30 + d], seg)))
    assert encoder.delay * SAMPLE_RATE == lag == 312  # 6.5 ms


def test_the_wait_is_the_mean_of_what_packets_waited_lately() -> None:
    """Packets pulled 15 ms after they arrive wait 15 ms; when they come 10 ms later,
    5 ms, and the mean follows within a few seconds."""
    now = [0.0]
    playout = StretchPlayout(clock=lambda: now[0])
    assert playout.wait is None
    encoder = OpusEncoder(EncoderSettings(adapt=False, fec=False, expected_loss=0))
    pcm = (np.sin(np.arange(N) * 2 * np.pi * 440 / SAMPLE_RATE) * 8000).astype(np.int16)
    packet = encoder.encode(pcm)
    for i in range(300):
        now[0] = i * T + (0.001 if i < 100 else 0.011)
        playout.push(1, i, i * N, packet)
        now[0] = i * T + 0.016
        playout.pull()
        if i == 99:
            assert playout.wait is not None and abs(playout.wait - 0.015) < 0.0005
        if i == 150:
            assert playout.wait is not None and 0.007 < playout.wait < 0.010
    assert playout.wait is not None and abs(playout.wait - 0.005) < 0.0005
    assert playout.buffer.stats.concealed == 0


def test_the_listener_tells_the_talker_its_part_and_the_talker_adds_it_all_up() -> None:
    """Our receiver's XR carries its receiving part (RTCP XR's end system delay, what
    the playout buffers when no better figure is given); our sender keeps what the
    peer says (nothing for a report of 0: unknown), and the talker's mouth to ear is
    its sending, the network and that."""
    from softphone.media import rtcp_xr
    from softphone.media.sending import SendControl

    now = [0.0]
    playout = StretchPlayout(clock=lambda: now[0])
    encoder = OpusEncoder(EncoderSettings(adapt=False, fec=False, expected_loss=0))
    packet = encoder.encode(np.zeros(N, np.int16))
    for i in range(10):
        now[0] = i * T
        playout.push(7, i, i * N, packet)
    playout.pull()  # (nine frames still buffered)
    report = playout.xr_report(99, receive_delay=0.0173)
    metrics = [b for b in rtcp_xr.parse_xr(report) if isinstance(b, rtcp_xr.VoipMetrics)]
    assert metrics[0].end_system_delay_ms == 17
    buffered = [b for b in rtcp_xr.parse_xr(playout.xr_report(99))
                if isinstance(b, rtcp_xr.VoipMetrics)]
    assert buffered[0].end_system_delay_ms == round(playout.delay * 1000) > 0
    control = SendControl()
    assert control.peer_receive_delay is None
    control.on_xr(report, ssrc=8)  # about another stream: not ours
    assert control.peer_receive_delay is None
    control.on_xr(report, ssrc=7)
    assert control.peer_receive_delay == 0.017
    unknown = rtcp_xr.pack_xr(99, rtcp_xr.VoipMetrics(7, 0.0, 0, 0, end_system_delay_ms=0))
    control.on_xr(unknown, ssrc=7)
    assert control.peer_receive_delay == 0.017
    parts = DelayParts(mic_ms=2.0, processing_ms=15.9, frame_ms=20.0, codec_ms=6.5,
                       network_ms=1.0, peer_receive_ms=17.0)
    assert parts.mouth_to_ear_ms is not None and abs(parts.mouth_to_ear_ms - 62.4) < 1e-9
    assert parts.to_json()["mouth_to_ear_ms"] == 62.4
    assert DelayParts(frame_ms=20.0, network_ms=1.0).mouth_to_ear_ms is None


async def test_a_call_s_audio_path_reports_its_receiving_part_and_sums_the_peer_s() -> None:
    """A call's audio path (its own 20 ms clock playing what arrives, no device):
    the XR it sends carries its receiving part (the packets' mean wait), and what
    the peer's XR says comes back as ``peer_receive_ms`` in its mouth to ear."""
    import asyncio

    from softphone.media import rtcp_xr
    from softphone.media.audiopath import CallAudio

    audio = CallAudio()
    try:
        push = audio.packet_handler()
        encoder = OpusEncoder(EncoderSettings(adapt=False, fec=False, expected_loss=0))
        packet = encoder.encode(np.zeros(N, np.int16))
        for i in range(40):
            push(7, i, i * N, packet, False)
            await asyncio.sleep(T)
        receive = audio.delay_parts().receive_ms
        assert receive is not None and 0.0 < receive < 200.0, receive
        await asyncio.sleep(0.2)  # played out: no more waits come in
        playout = audio.playout
        assert isinstance(playout, StretchPlayout)
        playout._wait.value = 0.0371  # (a mean no real wait here would give)
        assert audio.delay_parts().receive_ms == pytest.approx(37.1)
        report = audio.xr_report(99)
        sent = [b for b in rtcp_xr.parse_xr(report) if isinstance(b, rtcp_xr.VoipMetrics)]
        assert sent[0].end_system_delay_ms == 37, sent
        assert audio.sending is not None and audio.delay_parts().peer_receive_ms is None
        peer = rtcp_xr.pack_xr(5, rtcp_xr.VoipMetrics(7, 0.0, 0, 0, end_system_delay_ms=23))
        audio.sending.on_xr(peer, ssrc=7)
        parts = audio.delay_parts(rtt_ms=2.0)
        assert parts.peer_receive_ms == 23.0 and parts.send_ms is not None
        assert parts.mouth_to_ear_ms == parts.send_ms + 1.0 + 23.0
    finally:
        await audio.close()
