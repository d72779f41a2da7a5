"""Redundant audio (RED, RFC 2198): the payload format, and how it is negotiated."""

from __future__ import annotations

import re
from collections.abc import Iterator

import aiortc.codecs
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from softphone.media import aiortc_seams, red
from softphone.media.rtc import codec_of
from softphone.media.tracks import SilenceSource

# -- the payload format (sans-IO) ----------------------------------------------------


def test_pack_and_parse_round_trip() -> None:
    payload = red.pack(111, b"primary", [(1920, b"older"), (960, b"old")])
    # Two 4-byte headers, the 1-byte primary header, then the data oldest first.
    assert payload[:4] == (0x80000000 | 111 << 24 | 1920 << 10 | 5).to_bytes(4, "big")
    assert payload[8] == 111
    assert payload[9:] == b"olderoldprimary"
    assert red.parse(payload) == [red.Block(111, 1920, b"older"), red.Block(111, 960, b"old"),
                                  red.Block(111, 0, b"primary")]


def test_primary_only() -> None:
    assert red.pack(96, b"x", []) == bytes([96]) + b"x"
    assert red.parse(bytes([96]) + b"x") == [red.Block(96, 0, b"x")]
    assert red.parse(bytes([96])) == [red.Block(96, 0, b"")]


def test_blocks_that_do_not_fit_the_header_are_left_out() -> None:
    big = bytes(red.MAX_LENGTH + 1)
    payload = red.pack(96, b"p", [(red.MAX_OFFSET + 1, b"far"), (960, big), (0, b"zero"),
                                  (960, b"ok")])
    assert red.parse(payload) == [red.Block(96, 960, b"ok"), red.Block(96, 0, b"p")]


@pytest.mark.parametrize("payload", [
    b"",  # no header at all
    bytes([0x80 | 96, 0, 0]),  # a block header cut short
    (0x80000000 | 96 << 24 | 960 << 10 | 50).to_bytes(4, "big") + bytes([96]) + b"short",
])
def test_malformed_payloads_raise(payload: bytes) -> None:
    with pytest.raises(red.RedError):
        red.parse(payload)


def test_packer_repeats_the_frames_before() -> None:
    packer = red.RedPacker(96, depth=2)
    first = red.parse(packer.wrap(1000, b"a"))
    second = red.parse(packer.wrap(1960, b"b"))
    third = red.parse(packer.wrap(2920, b"c"))
    fourth = red.parse(packer.wrap(3880, b"d"))
    assert first == [red.Block(96, 0, b"a")]
    assert second == [red.Block(96, 960, b"a"), red.Block(96, 0, b"b")]
    assert third == [red.Block(96, 1920, b"a"), red.Block(96, 960, b"b"), red.Block(96, 0, b"c")]
    assert [b.data for b in fourth] == [b"b", b"c", b"d"]  # only two kept
    # Timestamps wrap at 2**32.
    wrap = red.RedPacker(96, depth=1)
    wrap.wrap(0xFFFFFE00, b"x")
    assert red.parse(wrap.wrap(0x000001C0, b"y"))[0] == red.Block(96, 960, b"x")
    assert red.parse(red.RedPacker(96, depth=0).wrap(5, b"z")) == [red.Block(96, 0, b"z")]


def test_packer_depth_and_spacing_change_between_frames() -> None:
    """Against bursts the copies reach further back; the depth follows the adaptation."""
    packer = red.RedPacker(96, depth=0, history=12)
    ts = [1000 + 960 * i for i in range(14)]
    for i in range(6):
        assert red.parse(packer.wrap(ts[i], bytes([i]))) == [red.Block(96, 0, bytes([i]))]
    packer.depth, packer.spacing = 1, 6
    blocks = red.parse(packer.wrap(ts[6], b"\x06"))
    assert blocks == [red.Block(96, 6 * 960, b"\x00"), red.Block(96, 0, b"\x06")]
    packer.depth = 2
    for i in range(7, 12):
        packer.wrap(ts[i], bytes([i]))
    blocks = red.parse(packer.wrap(ts[12], b"\x0c"))
    assert [(b.offset, b.data) for b in blocks] == [(12 * 960, b"\x00"), (6 * 960, b"\x06"),
                                                    (0, b"\x0c")]
    packer.depth, packer.spacing = 1, 1
    assert [b.data for b in red.parse(packer.wrap(ts[13], b"\x0d"))] == [b"\x0c", b"\x0d"]


def test_packer_leaves_out_a_copy_across_a_gap() -> None:
    """A frame not sent (the encoder skipped one) is not mistaken for the one before."""
    packer = red.RedPacker(96, depth=1)
    packer.wrap(1000, b"a")
    assert red.parse(packer.wrap(1000 + 2 * 960, b"c")) == [red.Block(96, 0, b"c")]


def test_primary_payload_type_of_an_fmtp() -> None:
    assert red.primary_payload_type({"111/111": None}) == 111
    assert red.primary_payload_type({"96/96/96": None}) == 96
    assert red.primary_payload_type({}) is None
    assert red.primary_payload_type({"x": None}) is None


# -- negotiation through aiortc (real RTCPeerConnections, SDP only) ----------------------


def audio_formats(sdp: str) -> list[str]:
    m = re.search(r"^m=audio \S+ \S+ ([\d ]+)", sdp, re.M)
    assert m is not None
    return m.group(1).split()


def fmtp(sdp: str, pt: str) -> str | None:
    m = re.search(rf"^a=fmtp:{pt} (.*)$", sdp, re.M)
    return m.group(1).strip() if m else None


def rtpmap(sdp: str, pt: str) -> str | None:
    m = re.search(rf"^a=rtpmap:{pt} (\S+)", sdp, re.M)
    return m.group(1) if m else None


async def offer(prefer_red: bool | None) -> str:
    pc = RTCPeerConnection()
    try:
        pc.addTrack(SilenceSource())
        if prefer_red is not None:
            aiortc_seams.prefer_red(pc.getTransceivers()[0], prefer_red)
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


async def answer(offer_sdp: str, allow_red: bool = True) -> str:
    pc = RTCPeerConnection()
    try:
        pc.addTrack(SilenceSource())
        with aiortc_seams.red_allowed(allow_red):
            await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


@pytest.fixture
def voice_codec() -> Iterator[None]:
    aiortc_seams.install_voice_codec()
    yield


async def test_our_offer_leads_with_red_and_opus_has_fec(voice_codec: None) -> None:
    sdp = await offer(prefer_red=True)
    formats = audio_formats(sdp)
    assert formats[:2] == ["63", "96"]
    assert rtpmap(sdp, "63") == "red/48000/2" and fmtp(sdp, "63") == "96/96"
    opus_fmtp = fmtp(sdp, "96") or ""
    assert "useinbandfec=1" in opus_fmtp and "minptime=10" in opus_fmtp
    assert codec_of(sdp) == "opus/48000+red"
    # Without the preference (redundancy 0, or aiortc's own pipeline) Opus comes first.
    plain = await offer(prefer_red=None)
    assert audio_formats(plain)[0] == "96"
    assert codec_of(plain) == "opus/48000"
    assert "63" not in audio_formats(await offer(prefer_red=False))


async def test_answer_to_a_browser_offer_names_its_opus_payload_type(voice_codec: None) -> None:
    """Chrome offers Opus as 111 and red 63 with fmtp 111/111, Opus first."""
    def as_chrome(sdp: str) -> str:
        sdp = re.sub(r"^(m=audio \S+ \S+ .*)\b96\b", r"\g<1>111", sdp, flags=re.M)
        return sdp.replace(":96 ", ":111 ").replace("96/96", "111/111")

    chrome = as_chrome(await offer(prefer_red=None))  # Opus first, red further on
    assert audio_formats(chrome)[0] == "111" and "63" in audio_formats(chrome)
    sdp = await answer(chrome)
    # The answer follows the offer's order (the browser sends Opus) and its RED
    # fmtp names 111, not our own 96.
    assert audio_formats(sdp)[0] == "111"
    assert fmtp(sdp, "63") == "111/111"
    # Offered RED first, as our own peers do, the answer leads with it too.
    red_first = as_chrome(await offer(prefer_red=True))
    assert audio_formats(await answer(red_first))[:2] == ["63", "111"]
    # With redundancy off, or for a peer connection not of our pipeline (aiortc's
    # own cannot decode RED), the answer refuses it.
    assert "63" not in audio_formats(await answer(red_first, allow_red=False))


async def test_a_peer_without_red_answers_opus(voice_codec: None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    ours = await offer(prefer_red=True)
    stock = [c for c in aiortc.codecs.CODECS["audio"] if c.mimeType.lower() != "audio/red"]
    monkeypatch.setitem(aiortc.codecs.CODECS, "audio", stock)
    sdp = await answer(ours)
    assert audio_formats(sdp)[0] == "96" and "63" not in audio_formats(sdp)
