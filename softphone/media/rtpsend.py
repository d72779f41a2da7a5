"""Our RTP send loop for an audio sender, in place of aiortc's ``RTCRtpSender._run_rtp``.

aiortc's loop stamps every packet with the one payload type it started with
(so no telephone event can go between the audio packets), hands every
frame's encoding to a thread (``run_in_executor``: a thread hop and a
wake-up per frame), measures each frame's audio level sample by sample in
Python, builds a packet object per packet and sends it through four
coroutines. :func:`send_with` gives one sender this loop instead:

- DTMF: once per audio frame it asks the call's
  :class:`~softphone.media.dtmf_rtp.DtmfChannel` which telephone-event
  packets to send (their own payload type, marker and timestamp; the audio
  stream's SSRC, sequence and timestamp clock) and whether to leave the
  audio frame out;
- frames are encoded on the event loop (libopus takes a fraction of a
  millisecond per 20 ms frame; the hop to a thread cost more), or come
  encoded from an :class:`~softphone.media.encoded.EncodedSource`: a prompt
  encoded once for every caller, a packet echo. Those hand each frame over
  as it is due (:meth:`~softphone.media.encoded.EncodedSource.attach`), and
  it is sent there and then, without waking this loop's task;
- the audio level extension comes from the source's own meter; the RTP
  header is packed here, its extensions made once per level;
- a packet is encrypted (SRTP, libsrtp) and handed to the socket at once
  when the ICE pair is a plain UDP one (:class:`FastPath`); through aiortc's
  coroutines otherwise (TURN);
- on hold (:class:`SendGate`) no audio packet goes out: frames are still
  taken from the source and encoded (the RTP timestamps go on, so the
  receiver sees a gap, not a delay), then dropped. RTCP and ICE consent
  checks carry on.

aiortc's own counters are kept as its loop keeps them (RTCP sender reports,
``getStats()``), and its start/exit events are set, so ``stop()`` and
statistics work as before. :func:`check` fails loudly if aiortc's or
aioice's internals changed. Like the other seams, this is against the
pinned versions.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import struct
import time
from collections.abc import Callable
from typing import Any, Final

import aioice.ice
from aiortc.codecs import get_encoder
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import RTCDtlsTransport, State
from aiortc.rtcrtpsender import RTCRtpSender, random_sequence_number
from aiortc.rtp import HeaderExtensions
from aiortc.utils import random32
from av.frame import Frame

from softphone.media.aiortc_seams.pinned import getsource
from softphone.media.dtmf_rtp import DtmfChannel
from softphone.media.encoded import EncodedFrame, EncodedSource, UnsupportedCodec, level_dbov
from softphone.media.tracks import AudioSource

log = logging.getLogger(__name__)

_P: Final = "_RTCRtpSender__"
_HEADER: Final = struct.Struct("!BBHII")
_EXTENSION: Final = struct.Struct("!HH")
#: Seconds from the NTP epoch (1900) to the Unix epoch (1970).
_NTP_OFFSET: Final = 2_208_988_800
#: aiortc's sender internals this loop reads and keeps up to date.
_FIELDS: Final = ("rtp_started", "rtp_exited", "rtp_header_extensions_map", "mid", "encoder",
                  "ntp_timestamp", "rtp_timestamp", "octet_count", "packet_count", "track")


class SeamMismatch(RuntimeError):
    """aiortc's RTCRtpSender (or what it sends through) changed in a way this loop does not know."""


@functools.cache
def check() -> None:
    """Raise :class:`SeamMismatch` unless aiortc and aioice are as this loop expects.

    (Once a process: the answer does not change while it runs.)
    """
    send = getsource(RTCRtpSender.send)
    run = getsource(RTCRtpSender._run_rtp)
    whole = getsource(RTCRtpSender)
    if "self._run_rtp(parameters.codecs[0])" not in send:
        raise SeamMismatch("aiortc's RTCRtpSender.send no longer starts _run_rtp(codec)")
    for name in _FIELDS:
        if f"self.__{name} = " not in whole:
            raise SeamMismatch(f"aiortc's RTCRtpSender has no __{name} any more")
    for needle in ("self.__rtp_started.set()", "self.__rtp_exited.set()",
                   "self.__octet_count += len(payload)", "self.__packet_count += 1",
                   "packet.extensions.mid = self.__mid",
                   "packet.serialize(self.__rtp_header_extensions_map)",
                   "await self.transport._send_rtp(packet_bytes)"):
        if needle not in run:
            raise SeamMismatch(f"aiortc's RTCRtpSender._run_rtp changed ({needle!r})")
    dtls = getsource(RTCDtlsTransport._send_rtp)
    for needle in ("self._state != State.CONNECTED", "self._tx_srtp.protect(data)",
                   "await self.transport._send(data)", "self.__tx_bytes += len(data)",
                   "self.__tx_packets += 1"):
        if needle not in dtls:
            raise SeamMismatch(f"aiortc's RTCDtlsTransport._send_rtp changed ({needle!r})")
    sendto = getsource(aioice.ice.Connection.sendto)
    data = getsource(aioice.ice.StunProtocol.send_data)
    if "self._nominated.get(component)" not in sendto or \
            "active_pair.protocol.send_data(data, active_pair.remote_addr)" not in sendto or \
            "self.transport.sendto(data, addr)" not in data:
        raise SeamMismatch("aioice's Connection.sendto / StunProtocol.send_data changed")


def ntp_now() -> int:
    """The wall clock as a 64-bit NTP timestamp (what ``aiortc.clock.current_ntp_time`` gives)."""
    now = time.time() + _NTP_OFFSET
    seconds = int(now)
    return (seconds << 32) | int((now - seconds) * 4294967296.0)


class RtpPacker:
    """Packs RTP packets of one stream (version 2, no CSRC, no padding).

    The header extensions (mid, audio level) are built with the sender's own
    extension map, once per audio level, and reused.
    """

    def __init__(self, ssrc: int, extensions_map: Any, mid: str | None) -> None:
        self.ssrc = ssrc
        self._map = extensions_map
        self._mid = mid
        self._extensions: dict[int | None, bytes] = {}

    def _extension(self, level: int | None) -> bytes:
        block = self._extensions.get(level)
        if block is None:
            values = HeaderExtensions()
            values.mid = self._mid
            if level is not None:
                values.audio_level = (False, level)
            profile, value = self._map.set(values)
            block = _EXTENSION.pack(profile, len(value) >> 2) + value if value else b""
            self._extensions[level] = block
        return block

    def pack(self, payload_type: int, marker: bool, seq: int, timestamp: int, payload: bytes,
             level: int | None = None) -> bytes:
        extension = self._extension(level)
        head = _HEADER.pack(0x90 if extension else 0x80, (0x80 if marker else 0) | payload_type,
                            seq, timestamp, self.ssrc)
        return b"".join((head, extension, payload))


class FastPath:
    """SRTP-protect a packet and hand it to the socket now, as aiortc would in four coroutines.

    Only for a nominated pair on a plain UDP socket (aioice's ``StunProtocol``):
    :meth:`send` returns False otherwise (a TURN relay, not connected yet) and
    the caller sends the packet through aiortc (``RTCDtlsTransport._send_rtp``).
    """

    def __init__(self, dtls: RTCDtlsTransport) -> None:
        self.dtls = dtls

    def send(self, data: bytes) -> bool:
        dtls = self.dtls
        if dtls._state is not State.CONNECTED:
            return False
        connection = getattr(dtls.transport, "_connection", None)
        pair = connection._nominated.get(1) if connection is not None else None
        protocol = getattr(pair, "protocol", None)
        if pair is None or type(protocol) is not aioice.ice.StunProtocol or \
                protocol.transport is None:
            return False
        packet = dtls._tx_srtp.protect(data)
        protocol.transport.sendto(packet, pair.remote_addr)
        dtls._RTCDtlsTransport__tx_bytes += len(packet)  # type: ignore[attr-defined]
        dtls._RTCDtlsTransport__tx_packets += 1  # type: ignore[attr-defined]
        return True


class SendGate:
    """Whether a call's audio packets go out (one flag, read once per frame).

    ``held``: the call is on hold and the peer agreed (``docs/protocol.md``,
    "Hold and resume"): nothing is sent. It belongs to the call's audio, not
    to a connection, so a connection made during the hold starts held.
    """

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held = False


def send_with(sender: RTCRtpSender, dtmf: DtmfChannel | None = None,
              gate: SendGate | None = None) -> None:
    """Make ``sender`` (an audio sender, not started) send with our loop (module docstring).

    ``dtmf``: the call's DTMF channel (its sender half starts with the agreed codecs);
    ``gate``: the call's hold switch (none: always sending).
    """
    check()
    original_send = sender.send
    codecs: list[Any] = []

    async def send(parameters: Any) -> None:
        if not codecs:
            codecs.extend(parameters.codecs)
        await original_send(parameters)

    async def run_rtp(codec: Any) -> None:
        await _run_rtp(sender, codec, codecs, dtmf, gate or SendGate())

    sender.send = send  # type: ignore[method-assign]
    sender._run_rtp = run_rtp  # type: ignore[method-assign]


class _Stream:
    """One sender's outgoing RTP: sequence, timestamp origin, packing, counters."""

    def __init__(self, sender: RTCRtpSender, codec: Any, dtmf: DtmfChannel | None,
                 gate: SendGate) -> None:
        self.sender = sender
        self.dtmf = dtmf
        self.gate = gate
        self.packer = RtpPacker(sender._ssrc, getattr(sender, _P + "rtp_header_extensions_map"),
                                getattr(sender, _P + "mid"))
        self.fast = FastPath(sender.transport)
        self.seq = random_sequence_number()
        self.origin = random32()
        self.audio_pt = int(codec.payloadType)
        self.event_pt = dtmf.payload_type if dtmf is not None else None
        self.octets: int = getattr(sender, _P + "octet_count")
        self.packets: int = getattr(sender, _P + "packet_count")
        #: Packets made by :meth:`send_now` that only aiortc's path can send, in order.
        self.later: list[bytes] = []

    def packets_of(self, frame: EncodedFrame) -> list[bytes]:
        """The RTP packets for ``frame`` (telephone events first), counted as sent."""
        timestamp = (self.origin + frame.timestamp) & 0xFFFFFFFF
        out: list[bytes] = []
        octets = 0
        pack = self.packer.pack
        tick = self.dtmf.tick(timestamp) if self.dtmf is not None else None
        if tick is not None and tick.packets and self.event_pt is not None:
            for event in tick.packets:
                payload = event.payload
                out.append(pack(self.event_pt, event.marker, self.seq, event.timestamp, payload))
                self.seq = (self.seq + 1) & 0xFFFF
                octets += len(payload)
        if tick is None or not tick.suppress_audio:
            last = len(frame.payloads) - 1
            for i, payload in enumerate(frame.payloads):
                # (aiortc marks the last packet of every frame: kept as it was)
                out.append(pack(self.audio_pt, i == last, self.seq, timestamp, payload,
                                frame.level))
                self.seq = (self.seq + 1) & 0xFFFF
                octets += len(payload)
        if out:
            self.octets += octets
            self.packets += len(out)
            sender = self.sender
            setattr(sender, _P + "ntp_timestamp", ntp_now())
            setattr(sender, _P + "rtp_timestamp", timestamp)
            setattr(sender, _P + "octet_count", self.octets)
            setattr(sender, _P + "packet_count", self.packets)
        return out

    def send_now(self, frame: EncodedFrame) -> bool:
        """Send ``frame`` from here, at once. False: its packets (or some) wait in
        :attr:`later` for the loop, which sends them through aiortc."""
        if self.gate.held or not self.sender._enabled or not frame.payloads:
            return True  # dropped (on hold; as aiortc drops frames while disabled)
        packets = self.packets_of(frame)
        if self.later:  # keep the order
            self.later.extend(packets)
            return False
        send = self.fast.send
        for i, data in enumerate(packets):
            if not send(data):
                self.later.extend(packets[i:])
                return False
        return True

    async def send(self, frame: EncodedFrame) -> None:
        """Send ``frame``, through aiortc's coroutines where the fast path cannot."""
        if self.gate.held or not frame.payloads:
            return  # (on hold: encoded, so the timestamps go on, and dropped)
        transport = self.sender.transport
        fast = self.fast.send
        for data in self.packets_of(frame):
            if not fast(data):
                await transport._send_rtp(data)


async def _run_rtp(sender: RTCRtpSender, codec: Any, codecs: list[Any],
                   dtmf: DtmfChannel | None, gate: SendGate) -> None:
    getattr(sender, _P + "rtp_started").set()
    track = sender.track
    try:
        if dtmf is not None:
            dtmf.start_sending(codecs or [codec])
        stream = _Stream(sender, codec, dtmf, gate)
        if isinstance(track, EncodedSource):
            track.bind(codec.mimeType, codec.parameters)
            track.attach(stream.send_now)
            while True:
                # The source sends each frame itself as it is due (stream.send_now);
                # only what that could not send comes here, to go through aiortc.
                await track.next_encoded()
                while stream.later:
                    data = stream.later.pop(0)
                    await sender.transport._send_rtp(data)
        next_frame = _encoder(sender, codec, track)
        while True:
            frame = await next_frame()
            if frame is not None:
                await stream.send(frame)
    except (asyncio.CancelledError, ConnectionError, MediaStreamError):
        pass
    except UnsupportedCodec as exc:  # a peer that agreed on G.711 with a prompt source
        log.warning("sending nothing: %s", exc)
    except Exception:
        # The exit event must be set whatever happens, or stop() would hang.
        log.warning("RTP send loop failed", exc_info=True)
    finally:
        if isinstance(track, EncodedSource):
            track.attach(None)
        if track is not None:
            track.stop()
        setattr(sender, _P + "track", None)
        setattr(sender, _P + "encoder", None)
        if dtmf is not None:
            dtmf.close()
        getattr(sender, _P + "rtp_exited").set()


def _encoder(sender: RTCRtpSender, codec: Any, track: Any) -> Callable[[], Any]:
    """The coroutine function that encodes the track's next frame (None: nothing to send)."""
    metered = isinstance(track, AudioSource)

    async def encode() -> EncodedFrame | None:
        if track is None:
            await asyncio.sleep(0.02)
            return None
        data = await track.recv()
        if not sender._enabled:
            return None  # still read, so frames do not pile up
        encoder = getattr(sender, _P + "encoder")
        if encoder is None:
            encoder = get_encoder(codec)
            setattr(sender, _P + "encoder", encoder)
        if isinstance(data, Frame):
            payloads, timestamp = encoder.encode(data, False)
        else:
            payloads, timestamp = encoder.pack(data)
        level = level_dbov(track.level_dbfs) if metered else None
        return EncodedFrame(payloads, timestamp, level)

    return encode
