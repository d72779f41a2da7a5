"""DTMF on aiortc: telephone events (RFC 4733) negotiated, sent and received.

The protocol is :mod:`softphone.core.dtmf` (sans I/O); this module is its
aiortc side, and one of the few places (with :mod:`.aiortc_seams` and
:mod:`.rtpsend`) that relies on aiortc internals (checked by :func:`check`):

1. **SDP.** aiortc 1.16 has no ``telephone-event`` codec, so an offer with
   it is answered without. :func:`install` adds ``telephone-event/48000``
   (payload type 110) and ``telephone-event/8000`` (126) with fmtp ``0-15``
   to its audio codecs, last, and wraps its codec negotiation
   (``find_common_codecs``, ``filter_preferred_codecs``) so that telephone
   events always come after every real audio codec (an offer listing them
   first must not make them the codec we send audio with), are dropped when
   no audio codec is agreed, and are kept at both clock rates (aiortc's
   preference filter matches on name and fmtp only, and would keep one).
2. **Sending.** :class:`DtmfChannel` holds one call's
   :class:`~softphone.core.dtmf.DtmfSender`, built when the audio sender
   starts with the clock rate of the agreed telephone-event payload type
   (48000 if agreed, else 8000); our send loop (:mod:`.rtpsend`) asks it
   once per audio frame which event packets to send and whether to
   suppress the audio. :meth:`DtmfChannel.send` inserts digits and waits
   until they are out.
3. **Receiving.** :func:`route_events` puts a filter in front of the
   receiver's jitter buffer (ours or aiortc's): a packet on a
   telephone-event payload type goes to the channel's
   :class:`~softphone.core.dtmf.DtmfReceiver` (with that payload type's own
   clock rate: Chromium offers 48000 and was seen sending on 8000), never to
   the Opus playout; one :class:`~softphone.core.dtmf.DtmfEvent` per digit
   goes to ``DtmfChannel.on_event``. The audio frames the peer suppressed
   during the tone are given to the playout as silence (``fill``), so they
   are not concealed; telephone events and audio share one sequence, so the
   playout's loss count (our RTCP XR) is given every event packet's number,
   with a silent frame or, for a packet that covers no new frame (the copies
   of an event's end), with nothing to play. aiortc's RTCP statistics see
   every packet anyway: keys show as no loss in either report.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Callable
from typing import Any, Final

import aiortc.codecs
import aiortc.rtcpeerconnection
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import RTCRtpReceiver

from softphone.core.dtmf import (
    DtmfEvent,
    DtmfPayloadError,
    DtmfReceiver,
    DtmfSender,
    SenderTick,
    check_tones,
)
from softphone.media.aiortc_seams import PacketHandler
from softphone.media.aiortc_seams.pinned import getsource

log = logging.getLogger(__name__)

MIME: Final = "audio/telephone-event"
#: Clock rate -> the payload type we offer it with (Chromium's numbers).
PAYLOAD_TYPES: Final = {48000: 110, 8000: 126}
#: fmtp: the events we send and understand (the 16 DTMF digits).
EVENTS_FMTP: Final = "0-15"
#: One 20 ms Opus frame of silence (CELT, fullband): what the playout gets in
#: place of each audio frame the peer suppressed during a tone.
OPUS_SILENCE: Final = b"\xf8\xff\xfe"
_AUDIO_FRAME: Final = 960  # RTP units of one 20 ms frame of the audio (48 kHz)
_MARK: Final = "_softphone_telephone_event"


class SeamMismatch(RuntimeError):
    """aiortc changed in a way this module does not know."""


class DtmfUnavailable(RuntimeError):
    """The peer did not agree to telephone events (or the audio is not flowing yet)."""


def is_telephone_event(codec: Any) -> bool:
    return str(getattr(codec, "mimeType", "")).lower() == MIME


def check() -> None:
    """Raise :class:`SeamMismatch` unless aiortc negotiates and receives as this module expects."""
    peer = getsource(aiortc.rtcpeerconnection.RTCPeerConnection)
    for name in ("find_common_codecs", "filter_preferred_codecs"):
        function = getattr(aiortc.rtcpeerconnection, name, None)
        if function is None or name + "(" not in peer:
            raise SeamMismatch(f"aiortc no longer negotiates codecs with {name}")
    receiver = getsource(RTCRtpReceiver)
    if "self.__jitter_buffer.add(packet)" not in receiver or \
            "self.__codecs: dict[int, RTCRtpCodecParameters] = {}" not in receiver:
        raise SeamMismatch("aiortc's RTCRtpReceiver receive path changed")


def install() -> None:
    """Offer and accept telephone events (idempotent; see the module docstring, 1.)."""
    check()
    audio = aiortc.codecs.CODECS["audio"]
    for rate, pt in PAYLOAD_TYPES.items():
        if not any(is_telephone_event(c) and c.clockRate == rate for c in audio):
            audio.append(RTCRtpCodecParameters(mimeType=MIME, clockRate=rate, payloadType=pt,
                                               parameters={EVENTS_FMTP: None}))
    module: Any = aiortc.rtcpeerconnection
    if not getattr(module.find_common_codecs, _MARK, False):
        module.find_common_codecs = _wrap_common(module.find_common_codecs)
    if not getattr(module.filter_preferred_codecs, _MARK, False):
        module.filter_preferred_codecs = _wrap_preferred(module.filter_preferred_codecs)


def events_last(codecs: list[Any], events: list[Any] | None = None) -> list[Any]:
    """``codecs`` with the telephone events (or ``events``) after every other codec.

    No telephone events when no real audio codec is among them; one entry per payload type.
    """
    media = [c for c in codecs if not is_telephone_event(c)]
    if events is None:
        events = [c for c in codecs if is_telephone_event(c)]
    audio = [c for c in media if c.mimeType.lower() not in ("audio/red", "audio/rtx")]
    if not audio:
        return media
    seen: set[int] = set()
    unique = []
    for codec in events:
        if codec.payloadType not in seen:
            seen.add(codec.payloadType)
            unique.append(codec)
    return media + unique


def _wrap_common(original: Callable[..., list[Any]]) -> Callable[..., list[Any]]:
    @functools.wraps(original)
    def find_common_codecs(local_codecs: list[Any], remote_codecs: list[Any]) -> list[Any]:
        return events_last(original(local_codecs, remote_codecs))

    setattr(find_common_codecs, _MARK, True)
    return find_common_codecs


def _wrap_preferred(original: Callable[..., list[Any]]) -> Callable[..., list[Any]]:
    @functools.wraps(original)
    def filter_preferred_codecs(codecs: list[Any], preferred: list[Any]) -> list[Any]:
        kept = original(codecs, preferred)
        wanted = not preferred or any(is_telephone_event(p) for p in preferred)
        events = [c for c in codecs if is_telephone_event(c)] if wanted else []
        return events_last(kept, events)

    setattr(filter_preferred_codecs, _MARK, True)
    return filter_preferred_codecs


def telephone_event_codec(codecs: list[Any]) -> Any | None:
    """The telephone-event codec to send with: the one at the audio's clock rate, else any."""
    events = [c for c in codecs if is_telephone_event(c)]
    if not events:
        return None
    main = codecs[0].clockRate if codecs else None
    return next((c for c in events if c.clockRate == main), events[0])


class DtmfChannel:
    """One call's DTMF, both ways, on the event loop.

    Sending: :meth:`start_sending` (by the send loop, with the agreed codecs)
    makes the packetiser; :meth:`tick` is asked once per outgoing audio
    frame; :meth:`send` inserts digits and waits until they are out.
    Receiving: :meth:`receive` takes each telephone-event packet;
    ``on_event(event)`` is told each digit once, when it ends.
    """

    def __init__(self, *, frame_ms: int = 20) -> None:
        self.frame_ms = frame_ms
        self.on_event: Callable[[DtmfEvent], None] | None = None
        #: Told the character (digit or ``,``) each time one starts playing.
        self.on_tone: Callable[[str], None] | None = None
        self.sender: DtmfSender | None = None
        #: The telephone-event payload type we send on (None: not agreed).
        self.payload_type: int | None = None
        self.receiver = DtmfReceiver()
        self._idle: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._fill: tuple[int, int] = (-1, 0)  # (event timestamp, audio frames filled)
        self._closed = False

    # -- sending -------------------------------------------------------------------

    def start_sending(self, codecs: list[Any]) -> None:
        """The audio sender starts with ``codecs`` (the agreed ones, its own first)."""
        codec = telephone_event_codec(codecs)
        if codec is None:
            log.info("the peer did not agree to telephone events: no DTMF to send")
            return
        self.payload_type = int(codec.payloadType)
        self.sender = DtmfSender(int(codec.clockRate), frame_ms=self.frame_ms)
        log.debug("DTMF on payload type %d at %d Hz", self.payload_type, codec.clockRate)

    @property
    def can_send(self) -> bool:
        return self.sender is not None and not self._closed

    def tick(self, timestamp: int) -> SenderTick | None:
        """What to send for the audio frame with RTP ``timestamp`` (None: no DTMF)."""
        sender = self.sender
        if sender is None:
            return None
        tick = sender.tick(timestamp)
        if tick.tone is not None and self.on_tone is not None:
            self.on_tone(tick.tone)
        if self._idle is not None and sender.idle:
            self._idle.set()
        return tick

    async def send(self, tones: str, duration_ms: float = 100, gap_ms: float = 70) -> None:
        """Send ``tones`` (as ``insertDTMF``: ``,`` is a 2 s pause) and wait until they are out.

        A bad character is a one-line ValueError; :class:`DtmfUnavailable`
        if the peer did not agree to telephone events. Digits still queued
        by an earlier :meth:`send` are replaced (a digit playing finishes).
        """
        check_tones(tones)
        sender = self.sender
        if sender is None or self._closed:
            raise DtmfUnavailable("the peer does not accept DTMF (no telephone-event in "
                                  "its answer)" if not self._closed else "the call is over")
        sender.insert(tones, duration_ms, gap_ms)
        if self._idle is None:
            self._idle = asyncio.Event()
        if not sender.idle:
            self._idle.clear()
        await self._idle.wait()

    # -- receiving ------------------------------------------------------------------

    def receive(self, ssrc: int, seq: int, timestamp: int, payload: bytes, marker: bool,
                clock_rate: int, fill: PacketHandler | None = None) -> None:
        """One telephone-event packet as it arrived; ``fill``: the audio's packet handler
        (it is given this packet's sequence number in any case: :meth:`_fill_suppressed`)."""
        loop = asyncio.get_running_loop()
        try:
            done = self.receiver.receive(timestamp, seq, payload, loop.time(), marker=marker,
                                         clock_rate=clock_rate)
        except DtmfPayloadError as exc:
            log.debug("bad telephone-event packet %d: %s", seq, exc)
            done = None
        if fill is not None:
            if done is None:  # (counted all the same: see _fill_suppressed)
                fill(ssrc, seq, timestamp, b"", False)
            else:
                self._fill_suppressed(ssrc, seq, timestamp, payload, clock_rate, fill)
        if done is not None:
            self._report(done)
            self._arm(loop)

    def _fill_suppressed(self, ssrc: int, seq: int, timestamp: int, payload: bytes,
                         clock_rate: int, fill: PacketHandler) -> None:
        """Silence for the audio frames this event covers so far (the sender left them out),
        under this packet's sequence number.

        Telephone events and audio share one sequence (RFC 4733 §2.1), so the
        audio's loss count must see every event packet's number, or each would
        count as a lost audio packet. A packet that adds no frame (the copies of
        an event's final packet, which go beside the audio again; a non-DTMF or
        malformed event) is given as an empty payload: counted, nothing to play.
        """
        frames = 0
        if len(payload) >= 4 and payload[0] <= 15:
            units = int.from_bytes(payload[2:4], "big")
            frames = min(300, math.ceil(units * 48000 / clock_rate / _AUDIO_FRAME))
        event_ts, filled = self._fill
        if event_ts != timestamp:
            filled = 0
        if frames <= filled:
            fill(ssrc, seq, timestamp, b"", False)
            return
        for k in range(filled, frames):
            fill(ssrc, seq, (timestamp + k * _AUDIO_FRAME) & 0xFFFFFFFF, OPUS_SILENCE, False)
        self._fill = (timestamp, frames)

    def _report(self, events: list[DtmfEvent]) -> None:
        for event in events:
            log.info("DTMF %s (%d ms, %s)", event.digit, event.duration_ms, event.ended_by)
            if self.on_event is not None:
                try:
                    self.on_event(event)
                except Exception:
                    log.exception("DTMF listener failed")

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.receiver.deadline()
        if deadline is not None and not self._closed:
            self._timer = loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self._report(self.receiver.handle_timer(asyncio.get_running_loop().time()))
        self._arm(asyncio.get_running_loop())

    def close(self) -> None:
        """The call is over: stop the timer; a :meth:`send` still waiting returns."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._idle is not None:
            self._idle.set()


class _EventFilter:
    """Stands in front of a receiver's jitter buffer: telephone events go to the channel."""

    def __init__(self, inner: Any, codecs: dict[int, Any], channel: DtmfChannel,
                 fill: PacketHandler | None) -> None:
        self.inner = inner
        self.codecs = codecs  # the receiver's own payload type -> codec table
        self.channel = channel
        self.fill = fill
        self._rates: dict[int, int] = {}  # payload type -> clock rate if telephone-event, else 0

    def add(self, packet: Any) -> tuple[bool, Any]:
        pt = packet.payload_type
        rate = self._rates.get(pt)
        if rate is None:
            codec = self.codecs.get(pt)
            rate = self._rates[pt] = \
                int(codec.clockRate) if codec is not None and is_telephone_event(codec) else 0
        if not rate:
            result: tuple[bool, Any] = self.inner.add(packet)
            return result
        self.channel.receive(packet.ssrc, packet.sequence_number, packet.timestamp,
                             bytes(packet.payload), bool(packet.marker), rate, self.fill)
        return False, None

    def remove(self, count: int) -> None:  # pragma: no cover - video only in aiortc
        self.inner.remove(count)


def route_events(receiver: RTCRtpReceiver, channel: DtmfChannel,
                 fill: PacketHandler | None = None) -> None:
    """Send ``receiver``'s telephone-event packets to ``channel`` (after any audio tap is set).

    ``fill``: the audio packet handler (our playout) that gets a silent frame
    for each audio frame the peer suppressed during a tone.
    """
    codecs = getattr(receiver, "_RTCRtpReceiver__codecs", None)
    inner = getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)
    if not isinstance(codecs, dict) or inner is None:
        raise SeamMismatch("RTCRtpReceiver has no __jitter_buffer / __codecs")
    receiver._RTCRtpReceiver__jitter_buffer = _EventFilter(  # type: ignore[attr-defined]
        inner, codecs, channel, fill)
