"""softphone.core.dtmf, sans I/O: RFC 4733 payloads, the packetiser and the detector."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from softphone.core.dtmf import (
    MAX_SEGMENT,
    DtmfEvent,
    DtmfPacket,
    DtmfPayloadError,
    DtmfReceiver,
    DtmfSender,
    SenderTick,
    TelephoneEvent,
    decode,
    digit_to_event,
    encode,
    event_to_digit,
)

FRAME = 0.02  # s, one audio frame


@dataclass(frozen=True)
class Sent:
    """One packet as it went out: frame index, sequence number and the packet."""

    frame: int
    seq: int
    packet: DtmfPacket


def run(sender: DtmfSender, frames: int, ts0: int = 1000,
        seq0: int = 0) -> tuple[list[SenderTick], list[Sent]]:
    """Tick ``sender`` for ``frames`` frames; the ticks and the packets, numbered.

    The audio frames' timestamps start at ``ts0`` and step by 20 ms of the
    sender's clock rate.
    """
    step = sender.clock_rate // 50
    ticks, sent = [], []
    seq = seq0
    for i in range(frames):
        tick = sender.tick((ts0 + i * step) & 0xFFFFFFFF)
        ticks.append(tick)
        for packet in tick.packets:
            sent.append(Sent(i, seq & 0xFFFF, packet))
            seq += 1
    return ticks, sent


def feed(receiver: DtmfReceiver, sent: list[Sent], clock_rate: int | None = None,
         t0: float = 0.0) -> list[DtmfEvent]:
    """Deliver ``sent`` at the frames' times, running the receiver's timer between."""
    events: list[DtmfEvent] = []
    for s in sent:
        now = t0 + s.frame * FRAME
        deadline = receiver.deadline()
        if deadline is not None and deadline <= now:
            events += receiver.handle_timer(deadline)
        p = s.packet
        events += receiver.receive(p.timestamp, s.seq, p.payload, now, marker=p.marker,
                                   clock_rate=clock_rate)
    return events


def finish(receiver: DtmfReceiver, now: float = 1e6) -> list[DtmfEvent]:
    return receiver.handle_timer(now)


def digits(sender: DtmfSender, tones: str, frames: int = 400, **kw: float) -> list[Sent]:
    sender.insert(tones, **kw)
    _, sent = run(sender, frames)
    assert sender.idle
    return sent


# ------------------------------------------------------------ payload codec ---


def test_payload_bytes() -> None:
    event = TelephoneEvent(event=5, end=True, volume=10, duration=800)
    assert encode(event) == bytes([0x05, 0x8A, 0x03, 0x20])
    assert decode(encode(event)) == event
    assert decode(bytes([11, 0x3F, 0xFF, 0xFF])) == TelephoneEvent(11, False, 63, 0xFFFF)


def test_decode_ignores_reserved_bit_and_trailing_bytes() -> None:
    assert decode(bytes([1, 0x40 | 0x80 | 7, 0, 160, 9, 9])) == TelephoneEvent(1, True, 7, 160)


@pytest.mark.parametrize("payload", [b"", b"\x01", b"\x01\x02\x03"])
def test_short_payload_is_a_clear_error(payload: bytes) -> None:
    with pytest.raises(DtmfPayloadError, match=f"payload of {len(payload)} bytes"):
        decode(payload)
    assert issubclass(DtmfPayloadError, ValueError)


def test_digits_and_event_codes() -> None:
    for code, digit in enumerate("0123456789*#ABCD"):
        assert digit_to_event(digit) == code
        assert event_to_digit(code) == digit
        assert TelephoneEvent(code, False, 10, 0).digit == digit
    assert [digit_to_event(d) for d in "abcd"] == [12, 13, 14, 15]
    assert TelephoneEvent(16, False, 10, 0).digit is None  # flash
    for bad in ("E", "x", "", "12", ","):
        with pytest.raises(ValueError, match="not a DTMF digit"):
            digit_to_event(bad)
    with pytest.raises(ValueError, match="event 16 is not a DTMF digit"):
        event_to_digit(16)


@pytest.mark.parametrize("kw", [{"event": 256}, {"volume": 64}, {"duration": 0x10000},
                                {"duration": -1}])
def test_event_fields_checked(kw: dict[str, int]) -> None:
    fields = {"event": 1, "end": False, "volume": 10, "duration": 0} | kw
    with pytest.raises(ValueError, match="out of range"):
        TelephoneEvent(**fields)  # type: ignore[arg-type]


# ------------------------------------------------------------------- sender ---


def test_one_digit_48k() -> None:
    sender = DtmfSender(48000)
    sender.insert("5")
    assert sender.tone_buffer == "5" and not sender.idle
    ticks, sent = run(sender, 10, ts0=123456)
    assert sender.idle and sender.tone_buffer == ""
    assert [t.suppress_audio for t in ticks] == [True] * 5 + [False] * 5
    assert [t.tone for t in ticks] == ["5"] + [None] * 9
    # One timestamp (the first frame's), growing duration, marker on the first,
    # the end packet three times (at its frame and the next two) with the final duration.
    assert [(s.frame, s.packet) for s in sent] == [
        (0, DtmfPacket(123456, True, TelephoneEvent(5, False, 10, 960))),
        (1, DtmfPacket(123456, False, TelephoneEvent(5, False, 10, 1920))),
        (2, DtmfPacket(123456, False, TelephoneEvent(5, False, 10, 2880))),
        (3, DtmfPacket(123456, False, TelephoneEvent(5, False, 10, 3840))),
        (4, DtmfPacket(123456, False, TelephoneEvent(5, True, 10, 4800))),
        (5, DtmfPacket(123456, False, TelephoneEvent(5, True, 10, 4800))),
        (6, DtmfPacket(123456, False, TelephoneEvent(5, True, 10, 4800))),
    ]
    assert sent[0].packet.payload == bytes([5, 10, 0x03, 0xC0])


def test_8k_units_and_odd_duration() -> None:
    sender = DtmfSender(8000, volume=20)
    sender.insert("#", duration_ms=50)  # 3 frames, 400 units
    ticks, sent = run(sender, 8)
    assert [t.suppress_audio for t in ticks] == [True] * 3 + [False] * 5
    assert [(s.frame, s.packet.event.duration, s.packet.event.end) for s in sent] == [
        (0, 160, False), (1, 320, False), (2, 400, True), (3, 400, True), (4, 400, True)]
    assert {s.packet.event.event for s in sent} == {11}
    assert {s.packet.event.volume for s in sent} == {20}


def test_gap_between_digits() -> None:
    sender = DtmfSender()
    sender.insert("12", duration_ms=100, gap_ms=70)
    ticks, sent = run(sender, 20, ts0=0)
    # "1" on frames 0-4; 70 ms gap = 4 silent frames (5-8); "2" from frame 9.
    assert [t.tone for t in ticks[:10]] == ["1"] + [None] * 8 + ["2"]
    assert [t.suppress_audio for t in ticks] == [True] * 5 + [False] * 4 + [True] * 5 + \
        [False] * 6
    starts = [s for s in sent if s.packet.marker]
    assert [(s.frame, s.packet.timestamp, s.packet.event.event) for s in starts] == [
        (0, 0, 1), (9, 9 * 960, 2)]
    assert len(sent) == 2 * 7


def test_minimum_gap_does_not_overlap_end_copies() -> None:
    sender = DtmfSender()
    sender.insert("12", duration_ms=40, gap_ms=0)  # gap raised to 30 ms: 2 frames
    ticks, sent = run(sender, 10)
    assert [t.tone for t in ticks[:5]] == ["1", None, None, None, "2"]
    # The first digit's end copies go out on frames 2 and 3, before "2" starts.
    assert [(s.frame, s.packet.event.event, s.packet.event.end) for s in sent] == [
        (0, 1, False), (1, 1, True), (2, 1, True), (3, 1, True),
        (4, 2, False), (5, 2, True), (6, 2, True), (7, 2, True)]


@pytest.mark.parametrize(("requested", "frames", "units"),
                         [(10, 2, 1920), (40, 2, 1920), (6000, 300, 288000),
                          (60000, 300, 288000), (99.6, 5, 4800)])
def test_duration_clamped(requested: float, frames: int, units: int) -> None:
    sender = DtmfSender()
    sender.insert("7", duration_ms=requested)
    ticks, sent = run(sender, 320)
    assert sum(t.suppress_audio for t in ticks) == frames
    ends = [s.packet.event for s in sent if s.packet.event.end]
    assert len(ends) == 3
    assert sum(MAX_SEGMENT for s in sent if s.packet.event.duration == MAX_SEGMENT) // 3 \
        + ends[0].duration == units


def test_pause() -> None:
    sender = DtmfSender()
    sender.insert("1,2")
    ticks, sent = run(sender, 130)
    tones = {i: t.tone for i, t in enumerate(ticks) if t.tone}
    # "1" ends on frame 4, the gap runs to frame 8, the pause starts on frame 9
    # and lasts 2 s (100 frames): "2" on frame 109.
    assert tones == {0: "1", 9: ",", 109: "2"}
    assert not any(t.suppress_audio for t in ticks[5:109])
    assert [s.packet.timestamp for s in sent if s.packet.marker] == [1000, 1000 + 109 * 960]


def test_pause_first_and_last() -> None:
    sender = DtmfSender()
    sender.insert(",9,")
    ticks, _ = run(sender, 220)
    assert {i: t.tone for i, t in enumerate(ticks) if t.tone} == {0: ",", 100: "9", 109: ","}
    assert sender.idle


def test_insert_replaces_the_buffer_and_the_playing_tone_finishes() -> None:
    sender = DtmfSender()
    sender.insert("123")
    ticks, _ = run(sender, 2)
    assert sender.tone_buffer == "23"
    sender.insert("9a", duration_ms=40)
    assert sender.tone_buffer == "9A"
    more, sent = run(sender, 30)
    assert [t.tone for t in ticks + more if t.tone] == ["1", "9", "A"]
    # "1" kept its 100 ms; the new ones have 40 ms.
    assert [s.packet.event.duration for s in sent if s.packet.event.end] == \
        [4800] * 3 + [1920] * 3 + [1920] * 3
    sender.insert("55")
    run(sender, 1)
    sender.insert("")
    assert sender.tone_buffer == ""
    run(sender, 10)
    assert sender.idle


@pytest.mark.parametrize("tones", ["12x", "1 2", "E", "5!", "٣"])
def test_bad_characters_rejected(tones: str) -> None:
    sender = DtmfSender()
    sender.insert("1")
    with pytest.raises(ValueError, match=r"^bad DTMF character .* use 0-9, \*, #, A-D and ','"):
        sender.insert(tones)
    assert sender.tone_buffer == "1"  # unchanged


@pytest.mark.parametrize("kw", [{"duration_ms": float("nan")}, {"gap_ms": float("inf")}])
def test_bad_numbers_rejected(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be finite numbers of milliseconds"):
        DtmfSender().insert("1", **kw)


@pytest.mark.parametrize("kw", [{"clock_rate": 0}, {"clock_rate": 11025},
                                {"frame_ms": 0}, {"volume": 64}])
def test_bad_sender_settings(kw: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        DtmfSender(**kw)


def test_long_event_segments_48k() -> None:
    sender = DtmfSender(48000)
    sender.insert("0", duration_ms=6000)  # 288000 units: 4 full segments and 25860
    ticks, sent = run(sender, 310, ts0=10)
    assert sum(t.suppress_audio for t in ticks) == 300
    assert all(s.packet.event.duration <= MAX_SEGMENT for s in sent)
    assert [s.packet.marker for s in sent].count(True) == 1 and sent[0].packet.marker
    stamps = sorted({s.packet.timestamp for s in sent})
    assert stamps == [10 + k * MAX_SEGMENT for k in range(5)]
    for k, stamp in enumerate(stamps):
        segment = [s for s in sent if s.packet.timestamp == stamp]
        durations = [s.packet.event.duration for s in segment]
        assert durations == sorted(durations)  # grows within a segment
        last = durations[-1]
        # The final packet of every segment, three times; the E bit only on the last.
        assert durations[-3:] == [last] * 3 and durations[-4] < last
        assert [s.packet.event.end for s in segment[-3:]] == [k == 4] * 3
        assert not any(s.packet.event.end for s in segment[:-3])
        assert last == (MAX_SEGMENT if k < 4 else 288000 - 4 * MAX_SEGMENT)
    # The new segment starts on the frame where the old one overflowed.
    first_of_second = next(s for s in sent if s.packet.timestamp == stamps[1])
    assert first_of_second.frame == 68 and first_of_second.packet.event.duration == \
        69 * 960 - MAX_SEGMENT


def test_timestamp_wraps() -> None:
    sender = DtmfSender(48000)
    sender.insert("1", duration_ms=3000)
    ts0 = 2**32 - 30000
    _, sent = run(sender, 160, ts0=ts0)
    assert sorted({s.packet.timestamp for s in sent}) == sorted(
        [ts0, (ts0 + MAX_SEGMENT) % 2**32, (ts0 + 2 * MAX_SEGMENT) % 2**32])
    receiver = DtmfReceiver(48000)
    assert feed(receiver, sent) == [DtmfEvent("1", 3000)]


# ----------------------------------------------------------------- receiver ---


def test_receive_start_continuation_end_x3() -> None:
    sent = digits(DtmfSender(), "5")
    receiver = DtmfReceiver(48000)
    events = []
    for s in sent:
        new = receiver.receive(s.packet.timestamp, s.seq, s.packet.payload, s.frame * FRAME,
                               marker=s.packet.marker)
        events.append(new)
    assert events == [[], [], [], [], [DtmfEvent("5", 100, "end")], [], []]
    assert receiver.stats.duplicates == 2 and receiver.stats.events == 1
    assert receiver.deadline() is None and finish(receiver) == []


def test_receive_digit_string() -> None:
    sent = digits(DtmfSender(), "1*9#ABCD0", frames=200, duration_ms=60)
    receiver = DtmfReceiver()
    assert feed(receiver, sent) == [DtmfEvent(d, 60) for d in "1*9#ABCD0"]


def test_only_end_packets_chromium() -> None:
    # As Chromium was seen sending: the 8000 Hz payload type (beside an offer
    # of 48000), each digit as only its three end packets, 120 ms for 100.
    receiver = DtmfReceiver(48000)
    payload = encode(TelephoneEvent(5, True, 10, 960))
    events = [receiver.receive(90000, seq, payload, seq * 0.001, clock_rate=8000)
              for seq in (7, 8, 9)]
    assert events == [[DtmfEvent("5", 120)], [], []]
    payload = encode(TelephoneEvent(11, True, 10, 960))
    events = [receiver.receive(90000 + 4800 * 3, seq, payload, 1 + seq * 0.001,
                               clock_rate=8000) for seq in (10, 11, 12)]
    assert events == [[DtmfEvent("#", 120)], [], []]
    assert receiver.stats.duplicates == 4


def test_lost_start() -> None:
    sent = digits(DtmfSender(), "3")
    assert sent[0].packet.marker
    assert feed(DtmfReceiver(), sent[1:]) == [DtmfEvent("3", 100)]


def test_lost_end_ends_by_timeout() -> None:
    sent = digits(DtmfSender(), "8")
    kept = [s for s in sent if not s.packet.event.end]
    receiver = DtmfReceiver(end_timeout=0.2)
    assert feed(receiver, kept) == []
    last = kept[-1].frame * FRAME
    assert receiver.deadline() == pytest.approx(last + 0.2)
    assert receiver.handle_timer(last + 0.19) == []
    assert receiver.handle_timer(last + 0.2) == [DtmfEvent("8", 80, "timeout")]
    assert receiver.deadline() is None
    # The end copies, arriving after all, are not a second digit.
    late = [s for s in sent if s.packet.event.end]
    assert feed(receiver, late, t0=1.0) == [] and receiver.stats.duplicates == 3


def test_lost_end_then_next_event() -> None:
    sent = digits(DtmfSender(), "12")
    kept = [s for s in sent if not (s.packet.event.event == 1 and s.packet.event.end)]
    receiver = DtmfReceiver(end_timeout=1.0)  # the next digit comes first
    assert feed(receiver, kept) == [DtmfEvent("1", 80, "next"), DtmfEvent("2", 100)]


def test_same_digit_twice_without_its_markers() -> None:
    sent = digits(DtmfSender(), "55")
    kept = [s for s in sent if not s.packet.marker and not s.packet.event.end]
    receiver = DtmfReceiver(end_timeout=1.0)
    assert feed(receiver, kept) + finish(receiver) == [DtmfEvent("5", 80, "next"),
                                                        DtmfEvent("5", 80, "timeout")]


def test_duplicates_and_retransmits_dropped() -> None:
    sent = digits(DtmfSender(), "47")
    receiver = DtmfReceiver()
    twice = [x for s in sent for x in (s, s)]
    assert feed(receiver, twice) == [DtmfEvent("4", 100), DtmfEvent("7", 100)]
    # A whole retransmission of the stream later: nothing new.
    assert feed(receiver, sent, t0=0.5) == []
    assert receiver.stats.events == 2


def test_reordered_continuation_after_end() -> None:
    sent = digits(DtmfSender(), "6")
    receiver = DtmfReceiver()
    order = [sent[0], sent[4], sent[2], sent[1], sent[3], sent[5], sent[6]]
    assert feed(receiver, order) == [DtmfEvent("6", 100)]


def test_late_packet_of_an_older_event() -> None:
    sent = digits(DtmfSender(), "12")
    receiver = DtmfReceiver()
    ones = [s for s in sent if s.packet.event.event == 1]
    twos = [s for s in sent if s.packet.event.event == 2]
    # Only the first packet of "1" is delayed past the start of "2".
    events = feed(receiver, twos[:2]) + feed(receiver, ones[:1])
    assert events == [] and receiver.stats.late == 1
    assert feed(receiver, twos[2:]) == [DtmfEvent("2", 100)]


def test_sequence_numbers_wrap() -> None:
    sender = DtmfSender()
    sender.insert("159")
    _, sent = run(sender, 40, seq0=65530)
    assert sent[0].seq == 65530 and sent[-1].seq < 100
    receiver = DtmfReceiver()
    assert feed(receiver, sent) == [DtmfEvent(d, 100) for d in "159"]
    assert receiver.stats.late == 0


def test_sequence_numbers_forgotten_after_silence() -> None:
    # After minutes of audio between digits, the next digit's sequence number
    # can look older (modulo 2**16) than the last one seen: still a digit.
    receiver = DtmfReceiver(seq_horizon=5.0)
    end1 = encode(TelephoneEvent(1, True, 10, 4800))
    end2 = encode(TelephoneEvent(2, True, 10, 4800))
    assert receiver.receive(1000, 40000, end1, 0.0) == [DtmfEvent("1", 100)]
    assert receiver.receive(5000, 30000, end2, 1.0) == []  # within the horizon: late
    assert receiver.receive(9000, 30000, end2, 700.0) == [DtmfEvent("2", 100)]


@pytest.mark.parametrize(("clock_rate", "ms"), [(8000, 600), (48000, 100)])
def test_duration_from_the_payload_types_clock(clock_rate: int, ms: int) -> None:
    receiver = DtmfReceiver(clock_rate)
    payload = encode(TelephoneEvent(9, True, 10, 4800))
    assert receiver.receive(0, 0, payload, 0.0) == [DtmfEvent("9", ms)]


def test_8k_sender_to_8k_receiver() -> None:
    sent = digits(DtmfSender(8000), "0", duration_ms=250)
    assert {s.packet.event.duration for s in sent if s.packet.event.end} == {2000}
    assert feed(DtmfReceiver(48000), sent, clock_rate=8000) == [DtmfEvent("0", 250)]


def test_long_event_received_as_one_digit() -> None:
    sent = digits(DtmfSender(), "#", frames=320, duration_ms=6000)
    assert feed(DtmfReceiver(), sent) == [DtmfEvent("#", 6000)]


def test_long_event_with_a_whole_segment_lost() -> None:
    sent = digits(DtmfSender(), "A", frames=320, duration_ms=5000)
    second = sorted({s.packet.timestamp for s in sent})[1]
    kept = [s for s in sent if s.packet.timestamp != second]
    receiver = DtmfReceiver(end_timeout=2.0)
    assert feed(receiver, kept) == [DtmfEvent("A", 5000)]


def test_long_event_webrtc_style_segment() -> None:
    # WebRTC starts the new segment at the frame where the old one
    # overflowed: its timestamp a little past the old one + 0xFFFF.
    receiver = DtmfReceiver(48000)
    star = 10
    assert receiver.receive(2**32 - 100, 1, encode(TelephoneEvent(star, False, 10, 65000)),
                            0.0, marker=True) == []
    assert receiver.receive(2**32 - 100, 2, encode(TelephoneEvent(star, False, 10, MAX_SEGMENT)),
                            0.02) == []
    new_ts = (2**32 - 100 + MAX_SEGMENT + 705) % 2**32
    assert receiver.receive(new_ts, 3, encode(TelephoneEvent(star, True, 10, 1000)),
                            0.04) == [DtmfEvent("*", round((MAX_SEGMENT + 1000) / 48))]
    # A late copy of the first segment's last packet is a duplicate.
    assert receiver.receive(2**32 - 100, 4, encode(TelephoneEvent(star, False, 10, MAX_SEGMENT)),
                            0.06) == []
    assert receiver.stats.duplicates == 1 and receiver.stats.events == 1


def test_non_dtmf_events_and_contradictions_ignored() -> None:
    receiver = DtmfReceiver()
    flash = encode(TelephoneEvent(16, True, 10, 4800))
    assert receiver.receive(0, 0, flash, 0.0) == [] and receiver.deadline() is None
    assert receiver.receive(100, 1, encode(TelephoneEvent(3, False, 10, 960)), 0.0,
                            marker=True) == []
    # Another event code on the same timestamp: ignored, not a second digit.
    assert receiver.receive(100, 2, encode(TelephoneEvent(4, True, 10, 1920)), 0.02) == []
    assert receiver.receive(100, 3, encode(TelephoneEvent(3, True, 10, 1920)), 0.04) == [
        DtmfEvent("3", 40)]
    assert receiver.stats.ignored == 2


def test_malformed_payload_raises_and_is_counted() -> None:
    receiver = DtmfReceiver()
    assert receiver.receive(100, 1, encode(TelephoneEvent(3, False, 10, 960)), 0.0) == []
    with pytest.raises(DtmfPayloadError):
        receiver.receive(100, 2, b"\x03\x8a", 0.02)
    assert receiver.stats.malformed == 1
    assert receiver.receive(100, 3, encode(TelephoneEvent(3, True, 10, 4800)), 0.04) == [
        DtmfEvent("3", 100)]


@pytest.mark.parametrize("kw", [{"clock_rate": 0}, {"end_timeout": 0.0}])
def test_bad_receiver_settings(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        DtmfReceiver(**kw)  # type: ignore[arg-type]


# ------------------------------------------------- sender -> lossy -> receiver ---


@st.composite
def lossy_runs(draw: st.DrawFn) -> tuple[int, str, int, list[Sent], list[Sent], set[int]]:
    """A sender's packets for random digits, and a random subset of them.

    At least one packet of each event survives, and never more than five
    packets in a row are lost (100 ms: less than the receiver's end timeout).
    """
    clock_rate = draw(st.sampled_from([8000, 48000]))
    tones = draw(st.text("0123456789*#ABCD,", min_size=1, max_size=6))
    duration = draw(st.integers(10, 6500) | st.integers(40, 300))
    gap = draw(st.integers(0, 200))
    sender = DtmfSender(clock_rate)
    sender.insert(tones, duration_ms=duration, gap_ms=gap)
    ts0 = draw(st.integers(0, 2**32 - 1))
    seq0 = draw(st.integers(0, 2**16 - 1))
    frames = 0
    sent: list[Sent] = []
    while not sender.idle:
        _, more = run(sender, 50, ts0=ts0 + frames * clock_rate // 50, seq0=seq0 + len(sent))
        sent += [Sent(s.frame + frames, s.seq, s.packet) for s in more]
        frames += 50
    rnd = draw(st.randoms(use_true_random=False))
    loss = draw(st.sampled_from([0.0, 0.1, 0.3, 0.6, 0.9]))
    lost = [rnd.random() < loss for _ in sent]
    run_length = 0
    for i, is_lost in enumerate(lost):
        run_length = run_length + 1 if is_lost else 0
        if run_length > 5:
            lost[i], run_length = False, 0
    # Events are told apart by their first segment's timestamp (their marker packet).
    owner, event_of = -1, []
    for s in sent:
        owner += s.packet.marker
        event_of.append(owner)
    for event in range(owner + 1):
        mine = [i for i, e in enumerate(event_of) if e == event]
        if all(lost[i] for i in mine):
            lost[draw(st.sampled_from(mine))] = False
    kept = [s for s, is_lost in zip(sent, lost, strict=True) if not is_lost]
    ended = {event_of[i] for i, s in enumerate(sent)
             if s.packet.event.end and not lost[i]}
    return clock_rate, tones, duration, sent, kept, ended


@settings(max_examples=150, deadline=None)
@given(lossy_runs())
def test_sender_to_lossy_receiver(case: tuple[int, str, int, list[Sent], list[Sent],
                                              set[int]]) -> None:
    clock_rate, tones, duration, _, kept, ended = case
    receiver = DtmfReceiver(48000)  # the clock rate comes with each packet
    events = feed(receiver, kept, clock_rate=clock_rate) + finish(receiver)
    assert "".join(e.digit for e in events) == tones.replace(",", "")
    requested = min(max(duration, 40), 6000)
    for n, event in enumerate(events):
        if n in ended:
            assert event.duration_ms == requested
        else:
            assert 0 < event.duration_ms < requested and event.ended_by != "end"
