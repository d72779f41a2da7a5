"""Our playout (softphone.media.playout): time stretching, the fade over long gaps, XR.

Offline and deterministic: real Opus packets (libopus through ctypes) of a
440 Hz tone, pushed into a :class:`StretchPlayout` at arrival times of a
simulated path and pulled every 20 ms on a simulated clock, as a sound card
would. Audio is checked as audio: a click is broadband, so every 2048-sample
window of what is played must keep the energy outside the tone's band 30 dB
below the energy in it (the check itself fails on a naive 5 ms cut).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest

from softphone.core.adapt import PROBE_PACKETS
from softphone.media import jitterbuffer as jb
from softphone.media import rtcp_xr
from softphone.media.audio import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    Int16Array,
    ToneGenerator,
    dominant_frequency,
    rms_dbfs,
)
from softphone.media.opus import EncoderSettings, OpusEncoder
from softphone.media.playout import FADE_FROM, MIN_TARGET, MUTE_FROM, StretchPlayout

N = FRAME_SAMPLES
T = N / SAMPLE_RATE
WINDOW = 2048
CLICK_DB = -30.0
TONE_BAND = (300.0, 580.0)


def tone_packets(frames: int, bitrate: int = 88_000) -> list[bytes]:
    """Plain Opus of a 440 Hz tone at -10 dBFS (CELT-only at 88 kbit/s, as a clean call)."""
    encoder = OpusEncoder(EncoderSettings(adapt=False, bitrate=bitrate, fec=False,
                                          expected_loss=0))
    tone = ToneGenerator(440.0, amplitude=0.3)
    return [encoder.encode(tone.next(N)) for _ in range(frames)]


def play(packets: list[bytes], delay: Callable[[int], float | None], pulls: int | None = None,
         ) -> tuple[Int16Array, StretchPlayout]:
    """Packet i is sent at i*T and arrives delay(i) later (None: lost); pulls every T."""
    now = [0.0]
    playout = StretchPlayout(clock=lambda: now[0])
    events: list[tuple[float, int, int]] = []
    for i in range(len(packets)):
        d = delay(i)
        if d is not None:
            events.append((i * T + d, 0, i))
    for k in range(pulls if pulls is not None else len(packets)):
        events.append((k * T + 0.0051, 1, k))
    out: list[Int16Array] = []
    for when, kind, i in sorted(events):
        now[0] = when
        if kind == 0:
            playout.push(1, i, i * N, packets[i])
        else:
            frame = playout.pull()
            assert frame.size == N
            out.append(frame)
    return np.concatenate(out), playout


def out_of_band_db(stream: Int16Array, start: int) -> float:
    seg = stream[start:start + WINDOW].astype(np.float64)
    power = np.abs(np.fft.rfft(seg * np.blackman(WINDOW))) ** 2
    freqs = np.fft.rfftfreq(WINDOW, 1 / SAMPLE_RATE)
    inside = (freqs >= TONE_BAND[0]) & (freqs <= TONE_BAND[1])
    return float(10 * np.log10(power[~inside].sum() / max(power[inside].sum(), 1e-9)))


def worst_click(stream: Int16Array, start: int = SAMPLE_RATE // 2) -> float:
    """The highest out-of-band level over windows every 5 ms from ``start``."""
    hop = SAMPLE_RATE // 200
    return max(out_of_band_db(stream, i) for i in range(start, stream.size - WINDOW, hop))


def test_the_click_check_catches_a_naive_cut() -> None:
    tone = ToneGenerator(440.0, amplitude=0.3).next(SAMPLE_RATE)
    assert worst_click(tone, 0) < -60
    cut = np.concatenate((tone[:24_000], tone[24_240:]))  # 5 ms dropped
    assert worst_click(cut, 0) > CLICK_DB


def test_a_surplus_is_played_faster_not_skipped() -> None:
    """A queue on the path drains: 120 ms of packets arrive early and are buffered.

    The playout cuts the surplus a pitch period at a time (no pause in a tone:
    voiced frames, once the surplus found none), never a whole frame, and the
    tone stays pure throughout.
    """
    packets = tone_packets(900)
    heard, playout = play(packets, lambda i: 0.121 if i < 75 else 0.001)
    s = playout.stretch_stats
    assert s.accelerated >= 10 and s.removed >= 10 * 100 and s.expanded == 0
    assert playout.buffer.stats.skipped == 0 and playout.buffer.stats.concealed == 0
    assert playout.delay < 0.080  # was 120 ms more than needed when the queue drained
    assert worst_click(heard) < CLICK_DB
    assert dominant_frequency(heard[-SAMPLE_RATE:]) == pytest.approx(440, abs=2)


def test_jitter_growing_is_met_by_expanding_frames() -> None:
    """The path's jitter grows (0 to +-30 ms over 4 s): after the first packet that comes
    too late (concealed: libopus extends the last period), frames are played longer
    by a pitch period while the buffer holds less than the new spread asks for,
    before more packets come too late."""
    u = np.random.default_rng(7).uniform(-1, 1, 600)

    def delay(i: int) -> float:
        return 0.031 + float(u[i]) * min(0.03, max(0.0, (i - 50) * T * 0.015))

    heard, playout = play(tone_packets(600), delay)
    s = playout.stretch_stats
    assert s.expanded >= 2 and s.added >= 2 * 100 and s.accelerated == 0
    assert playout.buffer.stats.concealed == 1
    assert worst_click(heard, 3 * SAMPLE_RATE) < CLICK_DB  # after the one concealed frame
    assert dominant_frequency(heard[-SAMPLE_RATE:]) == pytest.approx(440, abs=2)


def frame_dbfs(stream: Int16Array, index: int) -> float:
    return rms_dbfs(stream[index * N:(index + 1) * N])


def test_a_long_gap_fades_out_mutes_and_comes_back_at_the_level_before() -> None:
    """12 packets lost in a CELT stream: libopus's own concealment turns to noise from
    the 5th frame; the playout fades it 6 dB a frame from the 4th and mutes from the
    6th, then holds the first frames back to the level before the gap, faded in."""
    packets = tone_packets(200)
    lost = range(100, 112)
    heard, playout = play(packets, lambda i: None if i in lost else 0.001)
    first = 100  # the pull that conceals the first lost frame
    assert playout.stretch_stats.faded >= len(lost) - FADE_FROM + 1
    before = frame_dbfs(heard, first - 1)
    levels = [frame_dbfs(heard, first + k) for k in range(len(lost))]
    for k in range(FADE_FROM - 1, MUTE_FROM - 1):  # the 4th and 5th: 6 dB down each
        assert levels[k] <= levels[k - 1] - 5.5, levels
    assert all(level == float("-inf") for level in levels[MUTE_FROM:]), levels
    back = [frame_dbfs(heard, first + len(lost) + k) for k in range(3)]
    assert max(back) <= before + 1.0, (before, back)
    resume = heard[(first + len(lost)) * N:(first + len(lost)) * N + 240]
    assert np.abs(resume[:24]).max() < np.abs(resume[-24:]).max()  # faded in
    assert playout.stretch_stats.capped >= 2


def test_losses_are_counted_in_runs_and_told_at_once_after_a_clean_stretch() -> None:
    packets = tone_packets(120)
    told: list[int] = []
    now = [0.0]
    playout = StretchPlayout(clock=lambda: now[0])
    playout.on_loss = lambda: told.append(playout.losses.received)
    lost = {60, 61, 62, 63, 64, 65, 90}
    for i, packet in enumerate(packets):
        now[0] = i * T
        if i not in lost:
            playout.push(7, i, i * N, packet)
    # The first second came clean (the sender's probe), then a burst of 6 (at once);
    # the single loss 0.5 s later waits for the next report.
    assert told == [PROBE_PACKETS, 61]  # (61 received when packet 66 shows the burst)
    assert playout.losses.lost == 7 and playout.losses.runs == 2
    assert playout.losses.mean_run(now[0]) == pytest.approx((36 + 1) / 7)
    blocks = rtcp_xr.parse_xr(playout.xr_report(rtcp_ssrc=1234))
    summary, metrics = blocks
    assert isinstance(summary, rtcp_xr.LossSummary) and isinstance(metrics, rtcp_xr.VoipMetrics)
    assert (summary.ssrc, summary.begin, summary.end, summary.lost) == (7, 0, 120, 7)
    assert metrics.burst_duration_ms == round(37 / 7 * 20) and metrics.gmin == 1
    # The next summary covers only what came since.
    now[0] += T
    playout.push(7, 120, 120 * N, packets[0])
    summary2 = rtcp_xr.parse_xr(playout.xr_report(rtcp_ssrc=1234))[0]
    assert isinstance(summary2, rtcp_xr.LossSummary)
    assert (summary2.begin, summary2.end, summary2.lost) == (120, 121, 0)


def test_a_red_stream_rebuilds_a_loss_in_its_first_words_without_a_glitch() -> None:
    """A call starts with RED copies (the sender probes the path). The playout starts
    with the next packet in hand, so a packet lost in the first 200 ms comes back
    exact from its copy: nothing concealed, no frame played late, a pure tone.
    A plain stream (no copies to expect) starts at once and conceals it."""
    from softphone.media import red

    packets = tone_packets(100)
    packer = red.RedPacker(111, depth=1)
    red_packets = [packer.wrap(i * N, p) for i, p in enumerate(packets)]

    def run(stream: list[bytes], is_red: bool) -> tuple[list[Int16Array], StretchPlayout]:
        now = [0.0]
        playout = StretchPlayout(clock=lambda: now[0])
        events = sorted([(i * T + 0.001, 0, i) for i in range(len(stream)) if i != 10]
                        + [(k * T + 0.0051, 1, k) for k in range(len(stream))])
        out: list[Int16Array] = []
        for when, kind, i in events:
            now[0] = when
            if kind == 0:
                playout.push(1, i, i * N, stream[i], is_red)
            else:
                out.append(playout.pull())
        return out, playout

    out, playout = run(red_packets, True)
    assert playout.buffer.stats.concealed == 0 and playout.buffer.stats.repaired == 1
    assert not out[0].any()  # the first packet waited a frame
    assert worst_click(np.concatenate(out), 2 * N) < CLICK_DB
    out, playout = run(packets, False)
    assert playout.buffer.stats.concealed >= 1 and out[0].any()


def probed_red_call(pcm_frames: list[Int16Array], ssrc_from: dict[int, int] | None = None,
                    phase: float = MIN_TARGET + 0.0051, late: dict[int, float] | None = None,
                    buffer: jb.JitterBuffer | None = None,
                    ) -> tuple[Int16Array, StretchPlayout, list[int]]:
    """Real Opus of ``pcm_frames`` as our sender sends a clean call: RED with a copy of
    the frame before for the first PROBE_PACKETS packets (the probe), then RED with
    none; arrivals 1 ms after sending (``late``: index -> seconds more), pulls
    ``phase`` after (by default the packets wait the buffer's floor and 4.1 ms).
    ``ssrc_from``: packet index -> SSRC from there on. Returns what was played, the
    playout, and the RTP timestamps it said it played (``on_played``)."""
    from softphone.media import red

    encoder = OpusEncoder(EncoderSettings(adapt=False, bitrate=88_000, fec=False,
                                          expected_loss=0))
    packer = red.RedPacker(111, depth=1)
    stream = []
    for i, pcm in enumerate(pcm_frames):
        packer.depth = 1 if i < PROBE_PACKETS else 0
        stream.append(packer.wrap(i * N, encoder.encode(pcm)))
    now = [0.0]
    playout = StretchPlayout(clock=lambda: now[0], buffer=buffer)
    played: list[int] = []
    playout.on_played = lambda ts, _: played.append(ts)
    late = late or {}
    events = sorted([(i * T + 0.001 + late.get(i, 0.0), 0, i) for i in range(len(stream))]
                    + [(k * T + phase, 1, k) for k in range(len(stream) - 2)])
    out: list[Int16Array] = []
    ssrc = 1
    for when, kind, i in events:
        now[0] = when
        if kind == 0:
            ssrc = (ssrc_from or {}).get(i, ssrc)
            playout.push(ssrc, i, i * N, stream[i], True)
        else:
            out.append(playout.pull())
    return np.concatenate(out), playout, played


def test_the_frame_held_at_the_start_goes_with_a_pause_not_from_a_tone() -> None:
    """After the probe the frame held for its copies is dropped whole, and only where
    the audio pauses: through a steady tone every frame is played in order (the player
    keeps each frame the buffer offers to drop, as it is not quiet) without a click;
    with 0.4 s of silence in the tone, exactly the two frames held go, both silent
    ones, in that pause."""
    tone = ToneGenerator(440.0, amplitude=0.3)
    frames = [tone.next(N) for _ in range(150)]
    out, playout, played = probed_red_call(frames)
    assert played == [i * N for i in range(len(played))]  # every frame, in order
    assert playout.buffer.stats.skipped == 0 and playout.buffer.stats.concealed == 0
    assert worst_click(out, 2 * N) < CLICK_DB
    silent = set(range(60, 80))
    frames = [np.zeros(N, np.int16) if i in silent else f for i, f in enumerate(frames)]
    out, playout, played = probed_red_call(frames)
    gone = sorted(set(range(played[-1] // N)) - {ts // N for ts in played})
    assert len(gone) == 2 and set(gone) <= silent, gone
    assert playout.buffer.stats.skipped == 2 and playout.buffer.stats.concealed == 0


def test_the_frames_held_at_the_start_go_only_down_to_the_floor() -> None:
    """Played 5.1 ms after they come, the packets would wait 5.1 ms once both frames
    held at the start are dropped; the floor keeps one of them (25.1 ms), so a packet
    that comes 7 ms late once (a sender's scheduling hiccup) is still played in time:
    nothing concealed, every frame played in order."""
    tone = ToneGenerator(440.0, amplitude=0.3)
    frames = [np.zeros(N, np.int16) if 60 <= i < 80 else tone.next(N) for i in range(150)]
    _, playout, played = probed_red_call(frames, phase=0.0051, late={120: 0.007})
    assert playout.buffer.stats.skipped == 1 and playout.buffer.stats.concealed == 0
    assert playout.buffer.target >= MIN_TARGET
    assert played == sorted(played) and 120 * N in played
    # Without the floor both go, and the late packet is concealed (then played late).
    floorless = jb.JitterBuffer(stretch=True)
    _, playout, _ = probed_red_call(frames, phase=0.0051, late={120: 0.007},
                                    buffer=floorless)
    assert playout.buffer.stats.skipped == 2 and playout.buffer.stats.concealed >= 1


def test_a_surplus_is_cut_in_a_real_pause_not_between_two_words() -> None:
    """A surplus (the packets wait a whole frame more than the target) is not cut in
    a single quiet frame between two voiced ones (still part of the utterance), only
    once ``pause_pulls`` quiet frames came in a row, or after ``voiced_after``."""
    for pattern, cut in (([True, False], False), ([True] * 3 + [False] * 3, True)):
        buffer = jb.JitterBuffer(stretch=True, voiced_after=100.0)
        asked = []
        for i in range(120):
            buffer.push(i * N, bytes([i % 256]), i * T + 0.001)
            if i >= 2:  # two frames more than the target in hand: a surplus
                d = buffer.pull(i * T + 0.046, pattern[i % len(pattern)])
                if isinstance(d, jb.Play) and d.accelerate:
                    asked.append(i)
                    buffer.stretched(-200)
        assert bool(asked) == cut, (pattern, asked)


BLOCK = 120  # a sound card's block through PulseAudio's ALSA plugin (2.5 ms)


def device_call(pcm_frames: list[Int16Array], start: float, chunks: bool = True,
                block: int = BLOCK,
                ) -> tuple[Int16Array, StretchPlayout, list[tuple[int, float]]]:
    """Plain Opus of ``pcm_frames``, each packet in 1 ms after it is sent, played by a
    sound card that opens ``start`` s into the call and plays ``block`` samples at a
    time (2.5 ms), pulling
    again whenever what it has runs out (as ``SpeakerDriver`` does): the stretches
    ``pull_chunk`` gives, or whole frames (``chunks=False``). Returns what was played,
    the playout, and (frame, how long its packet waited) for every frame played."""
    encoder = OpusEncoder(EncoderSettings(adapt=False, bitrate=88_000, fec=False,
                                          expected_loss=0))
    packets = [encoder.encode(pcm) for pcm in pcm_frames]
    now = [0.0]
    playout = StretchPlayout(clock=lambda: now[0])
    waits: list[tuple[int, float]] = []
    playout.on_played = lambda ts, at: waits.append((ts // N, at - (ts // N * T + 0.001)))
    blocks = int((len(packets) * T - start) * SAMPLE_RATE / block) - 8
    events = sorted([(i * T + 0.001, 0, i) for i in range(len(packets))]
                    + [(start + k * block / SAMPLE_RATE, 1, k) for k in range(blocks)])
    waiting = np.zeros(0, dtype=np.int16)
    out: list[Int16Array] = []
    for when, kind, i in events:
        now[0] = when
        if kind == 0:
            playout.push(1, i, i * N, packets[i])
            continue
        while waiting.size < block:
            waiting = np.concatenate((waiting, playout.pull_chunk(block / SAMPLE_RATE)
                                      if chunks else playout.pull()))
        out.append(waiting[:block])
        waiting = waiting[block:]
    return np.concatenate(out), playout, waits


def test_a_device_s_frame_phase_is_cut_in_the_first_pause() -> None:
    """The speaker opens so that every packet waits 17 ms for its turn, 12 over the
    5 ms floor: where the tone pauses the playout plays a silent frame shorter by all
    but the 2.5 ms margin, and from then on packets wait at most the floor, the margin
    and a device block; nothing concealed or skipped, every frame in order, the tone
    after the pause without a click. Pulled in whole frames it would stay at 17 ms."""
    tone = ToneGenerator(440.0, amplitude=0.3)
    frames = [np.zeros(N, np.int16) if 60 <= i < 80 else tone.next(N) for i in range(200)]
    out, playout, waits = device_call(frames, start=0.018)
    assert [i for i, _ in waits] == list(range(len(waits)))
    before = [w for i, w in waits if i < 60]
    after = [w for i, w in waits if i >= 80]
    assert min(before) > 0.0165
    assert max(after) <= MIN_TARGET + 0.0025 + BLOCK / SAMPLE_RATE + 1e-6, max(after)
    assert min(after) >= MIN_TARGET
    assert playout.stretch_stats.trimmed >= 1
    assert playout.stretch_stats.accelerated == playout.stretch_stats.expanded == 0
    # The mean wait the call reports follows these waits (pulled by a device: from
    # when each frame starts playing, after what was queued before it).
    assert playout.wait == pytest.approx(float(np.mean([w for _, w in waits[-20:]])),
                                         abs=0.001), playout.wait
    assert playout.buffer.stats.concealed == 0 and playout.buffer.stats.skipped == 0
    assert worst_click(out, 82 * N) < CLICK_DB
    assert dominant_frequency(out[-SAMPLE_RATE // 2:]) == pytest.approx(440, abs=2)
    _, whole, waits = device_call(frames, start=0.018, chunks=False)
    assert min(w for i, w in waits if i >= 80) > 0.0165
    assert whole.stretch_stats.trimmed == 0 and whole.buffer.stats.concealed == 0


def test_a_device_with_long_blocks_keeps_a_block_of_the_wait() -> None:
    """Blocks of 10 ms (480 samples, a host that chooses them): a cut moves the next
    pull by up to a block more than itself, so a block of the wait is left: the
    packets then wait the floor or more, never less (nothing concealed)."""
    tone = ToneGenerator(440.0, amplitude=0.3)
    frames = [np.zeros(N, np.int16) if 60 <= i < 80 else tone.next(N) for i in range(200)]
    for start in (0.018, 0.0195, 0.014):
        _, playout, waits = device_call(frames, start=start, block=480)
        after = [w for i, w in waits if i >= 80]
        assert min(after) >= MIN_TARGET - 1e-6, (start, min(after))
        assert max(after) <= MIN_TARGET + 2 * 0.010 + 1e-6, (start, max(after))
        assert playout.buffer.stats.concealed == 0 and playout.buffer.stats.skipped == 0


def test_a_new_stream_keeps_the_playout_s_buffer_settings() -> None:
    """A new SSRC (the peer's sender restarted) starts a new, empty jitter buffer with
    the same settings: still time stretching, still expecting copies."""
    tone = ToneGenerator(440.0, amplitude=0.3)
    _, playout, played = probed_red_call([tone.next(N) for _ in range(100)], {50: 2})
    assert playout.buffer.stretch and playout.buffer.copies_expected
    assert playout.buffer.stats.resets == 0 and played  # the counts carried on


async def test_a_receiver_hands_a_device_the_playout_s_stretches_as_they_are() -> None:
    """Adapter check with a stand-in device (it only calls ``pull``): a playout that
    gives stretches (``pull_chunk``) is pulled with it, any length reaches the device
    and the sinks whole, frames are counted as 20 ms of audio played, and on hold the
    device gets silence of the same length."""
    from softphone.media.tracks import AudioReceiver, CaptureSink

    class Stretches:
        def pull(self) -> Int16Array:
            raise AssertionError("a device pulls stretches")

        def pull_chunk(self, block: float) -> Int16Array:
            blocks.append(block)
            return np.full(500, 1000, dtype=np.int16)

    class Device:
        pull: Callable[[], Int16Array]
        block = 0.0025

        def drive(self, pull: Callable[[], Int16Array], lost: Callable[[str], None]) -> None:
            self.pull = pull

        def stop(self) -> None:
            pass

    blocks: list[float] = []
    device, sink = Device(), CaptureSink(1.0)
    receiver = AudioReceiver([sink], output=device)
    receiver.play(Stretches())
    got = [device.pull() for _ in range(4)]
    receiver.silenced = True
    held = device.pull()
    await asyncio.sleep(0)
    assert [g.size for g in got] == [500] * 4 and (got[0] == 1000).all()
    assert blocks == [0.0025] * 5  # the device's block goes with each pull
    assert held.size == 500 and not held.any()
    assert receiver.frames == 2500 // N
    assert sink.samples().size == 2500
