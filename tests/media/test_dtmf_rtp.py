"""DTMF on aiortc: telephone-event negotiation, the packets on the wire, the receive side.

Negotiation runs real ``RTCPeerConnection``\\ s' offers and answers; the
calls are real aiortc peers through a real hub, in one process. Two tests
feed hand-made packets to a :class:`DtmfChannel` (an adapter test with fake
packets, as said in their docstrings): Chromium's way of sending (three end
packets only, on the 8000 Hz payload type) and a digit whose end was lost.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from typing import Any

import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.rtp import RtpPacket

from softphone import CaptureSink, Phone, ToneSource
from softphone.core.dtmf import DtmfEvent, decode
from softphone.hub.server import Hub
from softphone.media import dtmf_rtp, rtc  # noqa: F401  (rtc installs the seams)
from softphone.media.dtmf_rtp import DtmfChannel, DtmfUnavailable
from softphone.media.opus import OpusDecoder
from softphone.media.rtpsend import RtpPacker
from softphone.media.tracks import SilenceSource

from ..conftest import hub_url


def m_line(sdp: str) -> list[str]:
    found = re.search(r"^m=audio \S+ \S+ ([\d ]+)", sdp, re.M)
    assert found is not None, sdp
    return found.group(1).split()


def rtpmap(sdp: str) -> dict[str, str]:
    return dict(re.findall(r"^a=rtpmap:(\d+) (\S+)", sdp, re.M))


async def offer_sdp() -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(SilenceSource())
    try:
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


def reorder(sdp: str, payload_types: list[str]) -> str:
    """``sdp`` whose audio m-line lists only ``payload_types``, in that order."""
    sdp = re.sub(r"^(m=audio \S+ \S+) [\d ]+", lambda m: f"{m.group(1)} "
                 + " ".join(payload_types), sdp, count=1, flags=re.M)
    lines = [line for line in sdp.split("\r\n")
             if not (m := re.match(r"a=(?:rtpmap|fmtp|rtcp-fb):(\d+) ", line))
             or m.group(1) in payload_types]
    return "\r\n".join(lines)


async def answer_to(sdp: str) -> tuple[str, list[Any]]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(SilenceSource())
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return str(pc.localDescription.sdp), list(pc.getTransceivers()[0]._codecs)
    finally:
        await pc.close()


# ------------------------------------------------------------- negotiation ---


async def test_offer_has_telephone_events_at_both_rates_after_the_audio_codecs() -> None:
    sdp = await offer_sdp()
    names = rtpmap(sdp)
    pts = m_line(sdp)
    assert names["110"] == "telephone-event/48000" and names["126"] == "telephone-event/8000"
    assert pts[-2:] == ["110", "126"] and names[pts[0]].startswith("opus/")
    assert "a=fmtp:110 0-15" in sdp and "a=fmtp:126 0-15" in sdp


async def test_events_listed_first_never_become_the_audio_codec() -> None:
    """An offer with telephone-event/8000 alone and first: accepted, but Opus is sent."""
    sdp = await offer_sdp()
    opus = next(pt for pt, name in rtpmap(sdp).items() if name.startswith("opus/"))
    answer, codecs = await answer_to(reorder(sdp, ["126", opus]))
    assert codecs[0].mimeType.lower() == "audio/opus"
    assert [(c.mimeType.lower(), c.clockRate) for c in codecs[1:]] == [
        ("audio/telephone-event", 8000)]
    assert m_line(answer) == [opus, "126"]


async def test_events_without_an_audio_codec_are_no_call() -> None:
    sdp = await offer_sdp()
    with pytest.raises(Exception, match="description"):
        await answer_to(reorder(sdp, ["110", "126"]))


def test_events_last_keeps_one_entry_per_payload_type() -> None:
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters as C

    opus = C(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
    te = C(mimeType="audio/telephone-event", clockRate=48000, payloadType=110)
    te8 = C(mimeType="audio/telephone-event", clockRate=8000, payloadType=126)
    assert dtmf_rtp.events_last([te, opus, te8, te]) == [opus, te, te8]
    assert dtmf_rtp.events_last([te, te8]) == []
    assert dtmf_rtp.telephone_event_codec([opus, te8, te]) is te  # the audio's rate first
    assert dtmf_rtp.telephone_event_codec([opus, te8]) is te8
    assert dtmf_rtp.telephone_event_codec([opus]) is None


# ---------------------------------------------------------------- packing ---


def test_our_packets_are_aiortcs_packets() -> None:
    """The send loop's RTP header packing gives the bytes aiortc's serializer would."""
    from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
    from aiortc.rtp import HeaderExtensionsMap

    extensions = HeaderExtensionsMap()
    extensions.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
        RTCRtpHeaderExtensionParameters(id=2,
                                        uri="urn:ietf:params:rtp-hdrext:ssrc-audio-level")]))
    packer = RtpPacker(0x12345678, extensions, "0")
    for pt, marker, seq, ts, payload, level in [(111, True, 65535, 0xFFFFFFFF, b"\x01\x02", 40),
                                                (126, False, 7, 960, b"\x05\x8a\x03\xc0", None)]:
        packet = RtpPacket(payload_type=pt, marker=int(marker), sequence_number=seq,
                           timestamp=ts, ssrc=0x12345678, payload=payload)
        packet.extensions.mid = "0"
        if level is not None:
            packet.extensions.audio_level = (False, level)
        assert packer.pack(pt, marker, seq, ts, payload, level) == packet.serialize(extensions)
    bare = RtpPacker(1, HeaderExtensionsMap(), None)
    assert bare.pack(0, False, 1, 2, b"x") == RtpPacket(payload_type=0, sequence_number=1,
                                                         timestamp=2, ssrc=1,
                                                         payload=b"x").serialize(
        HeaderExtensionsMap())


# ------------------------------------------------------- the receive side ---


def test_opus_silence_decodes_to_silence() -> None:
    pcm = OpusDecoder().decode(dtmf_rtp.OPUS_SILENCE).copy()
    assert pcm.size == 960 and not np.any(pcm)


async def test_chromium_style_events_adapter() -> None:
    """Adapter test with fake packets: Chromium 156 sent each digit as its three end
    packets only, on the 8000 Hz payload type (120 ms for a 100 ms request)."""
    channel = DtmfChannel()
    heard: list[DtmfEvent] = []
    channel.on_event = heard.append
    filled: list[tuple[int, bytes]] = []
    seqs: list[int] = []

    def fill(ssrc: int, seq: int, ts: int, payload: bytes, is_red: bool) -> None:
        seqs.append(seq)
        if payload:  # (an empty one: a packet counted, nothing to play)
            filled.append((ts, payload))

    end = bytes([5, 0x80 | 10]) + (960).to_bytes(2, "big")  # digit 5, E, 960/8000 s
    for seq in (100, 101, 102):
        channel.receive(7, seq, 48_000, end, seq == 100, 8000, fill)
    assert heard == [DtmfEvent("5", 120, "end")]
    # 120 ms of the audio (48 kHz) was left out by the sender: six silent frames.
    assert [ts for ts, _ in filled] == [48_000 + 960 * k for k in range(6)]
    assert {p for _, p in filled} == {dtmf_rtp.OPUS_SILENCE}
    assert set(seqs) == {100, 101, 102}  # every packet's number reaches the loss count
    channel.close()


async def test_a_digit_whose_end_was_lost_ends_by_timer_adapter() -> None:
    """Adapter test with fake packets: start and continuation, no end packet."""
    channel = DtmfChannel()
    heard: list[DtmfEvent] = []
    channel.on_event = heard.append
    for k, seq in enumerate((10, 11, 12)):
        payload = bytes([11, 10]) + ((k + 1) * 960).to_bytes(2, "big")  # '#', no E
        channel.receive(1, seq, 5000, payload, k == 0, 48000)
    await asyncio.sleep(0.1)
    assert heard == []
    await asyncio.sleep(0.25)  # 200 ms after the last packet
    assert heard == [DtmfEvent("#", 60, "timeout")]
    channel.close()


async def test_send_without_an_agreed_payload_type() -> None:
    channel = DtmfChannel()
    with pytest.raises(ValueError, match="bad DTMF character"):
        await channel.send("12x")
    channel.start_sending([])  # the answer had no telephone-event
    with pytest.raises(DtmfUnavailable, match="does not accept DTMF"):
        await channel.send("1")


# -------------------------------------------------------------- real calls ---


async def test_dtmf_both_ways_in_a_real_call(hub: Hub) -> None:
    """a presses 1 2 3 #, b presses 9: each digit once, on the RFC 4733 wire format,
    with the audio left out (and played as silence, not concealed) during each tone."""
    a, b = Phone("a", hub_url(hub)), Phone("b", hub_url(hub))
    await a.connect()
    await b.connect()
    capture = CaptureSink(10.0)
    try:
        call_a = await a.dial("b", ToneSource(440))
        call_b = await b.next_call()
        events_b: list[dict[str, Any]] = []
        call_b.on_event(events_b.append)
        await call_b.accept(ToneSource(660), [capture])
        await asyncio.wait_for(call_a.connected(), 20)
        await asyncio.wait_for(call_b.connected(), 20)
        assert call_b.media is not None
        wire: list[tuple[int, int, bool, bytes]] = []
        channel = call_b.media.dtmf
        receive = channel.receive

        def logged(ssrc: int, seq: int, ts: int, payload: bytes, marker: bool, rate: int,
                   fill: Any = None) -> None:
            wire.append((seq, ts, marker, payload))
            receive(ssrc, seq, ts, payload, marker, rate, fill)

        channel.receive = logged  # type: ignore[method-assign]
        await asyncio.sleep(1.0)
        before = await call_b.stats()
        await asyncio.wait_for(call_a.send_dtmf("123#", duration_ms=100, gap_ms=70), 10)
        digits = [await asyncio.wait_for(call_b.next_digit(), 2) for _ in range(4)]
        assert [(d.digit, d.duration_ms, d.ended_by) for d in digits] == [
            ("1", 100, "end"), ("2", 100, "end"), ("3", 100, "end"), ("#", 100, "end")]
        assert [e["digit"] for e in events_b if e["event"] == "dtmf"] == ["1", "2", "3", "#"]
        await call_b.send_dtmf("9")
        assert (await asyncio.wait_for(call_a.next_digit(), 2)).digit == "9"
        await asyncio.sleep(0.5)
        after = await call_b.stats()
    finally:
        await a.close()
        await b.close()
    # The wire: per digit, one timestamp, growing durations, the marker on the first,
    # the end packet three times (100 ms at 48 kHz = 4800 units in 5 packets).
    by_ts: dict[int, list[tuple[int, bool, Any]]] = {}
    for seq, ts, marker, payload in wire:
        by_ts.setdefault(ts, []).append((seq, marker, decode(payload)))
    assert len(by_ts) == 4
    # The spacing, in media time (RTP timestamps, 48 units a millisecond), not wall
    # time: each digit starts at least its 100 ms tone and the 70 ms gap after the
    # one before, so the receiver hears four digits, not one long one.
    starts = list(by_ts)  # in the order they came
    steps = [(b - a) & 0xFFFFFFFF for a, b in itertools.pairwise(starts)]
    assert all(steps) and all((100 + 70) * 48 <= step < 1 << 31 for step in steps), steps
    for packets in by_ts.values():
        assert [p[2].duration for p in packets] == [960, 1920, 2880, 3840, 4800, 4800, 4800]
        assert [p[2].end for p in packets] == [False] * 4 + [True] * 3
        assert [p[1] for p in packets] == [True] + [False] * 6
    # Events and audio share one sequence: nothing shows as lost. The 20 frames left
    # out were played as silence, not concealed (a frame or two late on a busy
    # machine may be).
    assert after.packets_lost == before.packets_lost == 0
    assert after.concealed is not None and before.concealed is not None
    assert after.concealed - before.concealed <= 2
    # What b heard: a's 440 Hz, with a silence where each tone was (5 frames each).
    heard = capture.samples()
    frames = heard[: heard.size // 960 * 960].reshape(-1, 960)
    silent = np.flatnonzero(np.abs(frames).max(axis=1) < 50)
    runs = np.split(silent, np.flatnonzero(np.diff(silent) != 1) + 1)
    # (The 5 silent frames straddle the 20 ms chunks counted here, shifted by the
    # decoder's delay, the first with the tone's decay: 3 or 4 whole chunks each on a
    # clean path, where a sends CELT only. Keys once made a report loss, which put
    # a on FEC and RED, whose frames happened to give 4 each.)
    tones = [r for r in runs if r[0] > 0 and 3 <= r.size <= 7]
    assert len(tones) == 4, [r.size for r in runs]
