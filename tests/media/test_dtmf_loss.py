"""Keys are no packet loss: telephone events share the audio's sequence (RFC 4733 §2.1).

The sender's numbering is our send loop's own (``rtpsend._Stream.packets_of``,
with a stand-in for the aiortc sender it reads its counters from); the receiver
is a real :class:`DtmfChannel` in front of a real :class:`StretchPlayout`, wired
as a call wires them (events to the channel, which fills the playout; audio to
the playout). A real call with a burst of keys is in tests/client/test_dtmf_api.py.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from softphone.media import rtcp_xr, rtpsend
from softphone.media.dtmf_rtp import OPUS_SILENCE, DtmfChannel
from softphone.media.encoded import EncodedFrame
from softphone.media.playout import StretchPlayout

AUDIO_PT = 111
EVENT_PT = 110  # telephone-event/48000


def send_loop(channel: DtmfChannel, seq: int) -> rtpsend._Stream:
    """Our send loop's stream for an aiortc sender stand-in (no socket: packets only)."""
    p = rtpsend._P
    sender = SimpleNamespace(_ssrc=4242, transport=None, **{
        p + "rtp_header_extensions_map": HeaderExtensionsMap(), p + "mid": None,
        p + "octet_count": 0, p + "packet_count": 0})
    channel.start_sending([SimpleNamespace(mimeType="audio/opus", clockRate=48000,
                                           payloadType=AUDIO_PT),
                           SimpleNamespace(mimeType="audio/telephone-event", clockRate=48000,
                                           payloadType=EVENT_PT)])
    stream = rtpsend._Stream(sender, SimpleNamespace(payloadType=AUDIO_PT),  # type: ignore[arg-type]
                             channel, rtpsend.SendGate())
    stream.seq = seq
    return stream


def sent_with_keys(keys: str, seq: int) -> list[RtpPacket]:
    """What the send loop sends over 3 s of audio frames with ``keys`` pressed at once."""
    channel = DtmfChannel()
    stream = send_loop(channel, seq)
    assert channel.sender is not None
    channel.sender.insert(keys, 100, 70)
    packets = []
    for k in range(150):
        for data in stream.packets_of(EncodedFrame([b"\xfc\x01\x02"], 960 * k)):
            packets.append(RtpPacket.parse(data))
    assert channel.sender.idle
    return packets


async def test_keys_take_the_next_numbers_and_count_as_no_loss() -> None:
    """The sender: audio and telephone events, one sequence; no number skipped or used
    twice, across the 16-bit wrap; the audio left out during a tone takes none. The
    receiver's loss count (and so its RTCP XR) sees every number: the event packets,
    the copies of each end (which go beside the audio again) among them, are no loss."""
    packets = sent_with_keys("123456789", 65500)
    seqs = [p.sequence_number for p in packets]
    assert seqs == [(65500 + k) & 0xFFFF for k in range(len(seqs))]
    events = [p for p in packets if p.payload_type == EVENT_PT]
    assert len(events) == 9 * 7  # 5 packets a 100 ms tone, its end twice more
    assert len(packets) - len(events) == 150 - 9 * 5  # the frames under a tone left out
    assert len({p.timestamp for p in events}) == 9
    now = [0.0]
    playout = StretchPlayout(clock=lambda: now[0])
    channel = DtmfChannel()
    heard: list[Any] = []
    channel.on_event = heard.append
    for packet in packets:
        now[0] += 0.01
        if packet.payload_type == EVENT_PT:
            channel.receive(packet.ssrc, packet.sequence_number, packet.timestamp,
                            packet.payload, bool(packet.marker), 48000, playout.push)
        else:
            playout.push(packet.ssrc, packet.sequence_number, packet.timestamp,
                         packet.payload, False)
    channel.close()
    assert "".join(e.digit for e in heard) == "123456789"
    losses = playout.losses
    assert (losses.lost, losses.runs) == (0, 0)
    assert losses.received == 150 - 9 * 5 + 9 * 7
    blocks = rtcp_xr.parse_xr(playout.xr_report(1))
    assert [b.lost for b in blocks if isinstance(b, rtcp_xr.LossSummary)] == [0]
    assert [b.loss_rate for b in blocks if isinstance(b, rtcp_xr.VoipMetrics)] == [0.0]
    # The packets with nothing to play stopped at the loss count (no RED, no error).
    assert playout.stats.decode_errors == 0 and not playout.buffer.copies_expected


def test_a_packet_with_nothing_to_play_is_counted_not_played() -> None:
    """What the channel gives the playout for an event packet that adds no frame."""
    playout = StretchPlayout(clock=lambda: 0.0)
    playout.push(5, 10, 0, OPUS_SILENCE, False)
    playout.push(5, 11, 0, b"", True)
    playout.push(5, 12, 960, OPUS_SILENCE, False)
    assert (playout.losses.lost, playout.losses.received) == (0, 3)
    assert playout.stats.decode_errors == 0 and not playout.buffer.copies_expected


def test_interarrival_jitter_is_rfc_3550s() -> None:
    """A clean 20 ms stream: 0; every other packet 5 ms late: about 5 ms; a new stream
    (another ssrc, its own timestamps) does not jump it."""
    from softphone.media.jb_estimates import InterarrivalJitter

    clean = InterarrivalJitter()
    for k in range(200):
        clean.packet(1, 1000 + 960 * k, 10.0 + 0.02 * k)
    assert clean.value < 1e-9
    jittery = InterarrivalJitter()
    for k in range(400):
        jittery.packet(1, 960 * k, 0.02 * k + (0.005 if k % 2 else 0.0))
    assert 0.0045 < jittery.value < 0.0055, jittery.value
    before = jittery.value
    jittery.packet(2, 123_456_789, 8.0)  # a media restart's new stream
    assert jittery.value == before
