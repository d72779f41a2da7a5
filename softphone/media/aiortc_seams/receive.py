"""The receive path: audio packets taken from aiortc's ``RTCRtpReceiver``.

- :func:`tap_receiver`: aiortc puts audio packets in a fixed 4-packet jitter
  buffer and decodes them without concealment or FEC. The tap replaces the
  receiver's name-mangled ``__jitter_buffer`` with one that hands each
  packet to ours (:class:`softphone.media.voice.Playout`), saying whether it
  is RED (from the receiver's ``__codecs`` table), and gives aiortc's
  decoder nothing. RTCP statistics are kept by aiortc as before.
- :func:`impair_receiver` wraps the receiver's ``_handle_rtp_packet`` to drop
  or delay packets as they arrive (loss simulation, for tests and benchmarks).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from aiortc.rtcrtpreceiver import RTCRtpReceiver

from softphone._tasks import spawn_kept
from softphone.media.aiortc_seams.pinned import SeamMismatch, getsource
from softphone.media.netsim import Impairment

#: (ssrc, seq, timestamp, payload, is_red)
PacketHandler = Callable[[int, int, int, bytes, bool], None]


def check_internals() -> None:
    """Raise :class:`SeamMismatch` if aiortc's receiver no longer receives as expected."""
    source = getsource(RTCRtpReceiver)
    if "self.__jitter_buffer.add(packet)" not in source or \
            "async def _handle_rtp_packet(self, packet: RtpPacket, arrival_time_ms: int)" \
            not in source or \
            "self.__codecs: dict[int, RTCRtpCodecParameters] = {}" not in source:
        raise SeamMismatch("aiortc's RTCRtpReceiver receive path changed")


class _Tap:
    """Stands in for aiortc's audio JitterBuffer: passes packets on, returns no frame."""

    def __init__(self, on_packet: PacketHandler, codecs: dict[int, Any]) -> None:
        self.on_packet = on_packet
        self.codecs = codecs  # the receiver's own payload type -> codec table
        self._red: dict[int, bool] = {}  # payload type -> is it RED (looked up once)

    def add(self, packet: Any) -> tuple[bool, None]:
        payload = getattr(packet, "_data", None)
        if payload is None:
            payload = packet.payload
        pt = packet.payload_type
        is_red = self._red.get(pt)
        if is_red is None:
            codec = self.codecs.get(pt)
            is_red = self._red[pt] = codec is not None and \
                codec.mimeType.lower() == "audio/red"
        self.on_packet(packet.ssrc, packet.sequence_number, packet.timestamp, bytes(payload),
                       is_red)
        return False, None

    def remove(self, count: int) -> None:  # pragma: no cover - video only in aiortc
        pass


def tap_receiver(receiver: RTCRtpReceiver, on_packet: PacketHandler) -> None:
    """Send ``receiver``'s audio packets to ``on_packet`` instead of aiortc's decoder."""
    if not hasattr(receiver, "_RTCRtpReceiver__jitter_buffer") or \
            not isinstance(getattr(receiver, "_RTCRtpReceiver__codecs", None), dict):
        raise SeamMismatch("RTCRtpReceiver has no __jitter_buffer / __codecs")
    codecs = getattr(receiver, "_RTCRtpReceiver__codecs")  # noqa: B009 - name-mangled
    receiver._RTCRtpReceiver__jitter_buffer = _Tap(on_packet, codecs)


def impair_receiver(receiver: RTCRtpReceiver, impairment: Impairment) -> None:
    """Drop or delay RTP packets as they reach ``receiver`` (before any buffer).

    ``impairment`` is read for every packet: changing its fields during the
    call changes the loss from then on (a clean start, then loss, then clean).
    """
    original = receiver._handle_rtp_packet
    pending: set[asyncio.Task[None]] = set()  # delayed packets on their way

    async def handle(packet: Any, arrival_time_ms: int) -> None:
        delay = impairment.decide()
        if delay is None:
            return
        if delay <= 0:
            await original(packet, arrival_time_ms)
            return
        loop = asyncio.get_running_loop()

        def deliver() -> None:
            spawn_kept(pending, functools.partial(
                original, packet, arrival_time_ms + int(delay * 1000)))

        loop.call_later(delay, deliver)

    receiver._handle_rtp_packet = handle  # type: ignore[method-assign]
