"""DTMF as RTP telephone events (RFC 4733), sans I/O.

Three parts, none of which touches a socket, a clock or an audio sample:

* the payload codec: :func:`encode` / :func:`decode` of the 4-byte event
  payload, :func:`digit_to_event` / :func:`event_to_digit`;
* :class:`DtmfSender`, the packetiser: fed one :meth:`~DtmfSender.tick` per
  outgoing audio frame (with that frame's RTP timestamp), it says which
  telephone-event packets to send in that frame's place and whether the
  audio frame must be suppressed;
* :class:`DtmfReceiver`, the detector: fed the telephone-event packets that
  arrive (with the arrival time), it emits one :class:`DtmfEvent` per digit
  when the digit ends; :meth:`~DtmfReceiver.deadline` and
  :meth:`~DtmfReceiver.handle_timer` end a digit whose end packets were lost.

Timestamps and sequence numbers are the RTP ones, modulo 2**32 and 2**16.
Durations in the payload are in units of the telephone-event payload type's
clock rate (48000 or 8000 Hz); the receiver reports milliseconds.

``docs/dtmf.md`` says how these are wired into the media layer (SDP, the
sender's packet loop, the receive tap).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Final, Literal

#: The DTMF digits in event-code order: ``"0"`` is event 0, ``"*"`` 10, ``"D"`` 15.
DIGITS: Final = "0123456789*#ABCD"
#: In a tone string, a two-second pause (as in ``RTCDTMFSender.insertDTMF``).
PAUSE: Final = ","
PAUSE_MS: Final = 2000
#: ``insertDTMF``'s limits: tone duration 40..6000 ms, gap at least 30 ms.
MIN_DURATION_MS: Final = 40
MAX_DURATION_MS: Final = 6000
MIN_GAP_MS: Final = 30
#: Largest duration one packet can carry (RFC 4733 §2.5.1.3: longer events are segmented).
MAX_SEGMENT: Final = 0xFFFF
#: How often the final packet of an event (and of a segment) is sent (RFC 4733 §2.5.1.4).
END_COPIES: Final = 3


class DtmfPayloadError(ValueError):
    """A telephone-event payload that cannot be decoded (count it and drop the packet)."""


# ------------------------------------------------------------ payload codec ---


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One RFC 4733 event payload::

        |     event     |E|R| volume    |          duration             |
    """

    event: int  # 0..255; 0-15 are the DTMF digits
    end: bool  # the E bit: this is (a copy of) the event's final packet
    volume: int  # 0..63, the power level in -dBm0
    duration: int  # 0..0xFFFF, in units of the payload type's clock rate

    def __post_init__(self) -> None:
        if not 0 <= self.event <= 255:
            raise ValueError(f"event code {self.event} out of range 0..255")
        if not 0 <= self.volume <= 63:
            raise ValueError(f"volume {self.volume} out of range 0..63")
        if not 0 <= self.duration <= MAX_SEGMENT:
            raise ValueError(f"duration {self.duration} out of range 0..{MAX_SEGMENT}")

    @property
    def digit(self) -> str | None:
        """The DTMF digit, or None for the other events (flash, tones...)."""
        return DIGITS[self.event] if self.event < len(DIGITS) else None


def encode(event: TelephoneEvent) -> bytes:
    """The 4-byte payload of ``event`` (the reserved R bit is 0)."""
    return bytes((event.event, (0x80 if event.end else 0) | event.volume)) + \
        event.duration.to_bytes(2, "big")


def decode(payload: bytes) -> TelephoneEvent:
    """Decode a telephone-event payload; :class:`DtmfPayloadError` if it is not one.

    Only the first event is read: extra bytes (as some senders append) are
    ignored, as Chromium does; the R bit is ignored, as RFC 4733 says.
    """
    if len(payload) < 4:
        raise DtmfPayloadError(f"telephone-event payload of {len(payload)} bytes (needs 4)")
    return TelephoneEvent(event=payload[0], end=bool(payload[1] & 0x80),
                          volume=payload[1] & 0x3F,
                          duration=int.from_bytes(payload[2:4], "big"))


def digit_to_event(digit: str) -> int:
    """The event code of a DTMF digit (``a``-``d`` as ``A``-``D``); ValueError otherwise."""
    code = DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if code < 0:
        raise ValueError(f"{digit!r} is not a DTMF digit (use 0-9, *, # or A-D)")
    return code


def event_to_digit(code: int) -> str:
    """The DTMF digit of an event code 0..15; ValueError for the other events."""
    if not 0 <= code < len(DIGITS):
        raise ValueError(f"event {code} is not a DTMF digit")
    return DIGITS[code]


def check_tones(tones: str) -> str:
    """``tones`` upper-cased, or a one-line ValueError naming the first bad character."""
    for char in tones:
        if char != PAUSE and char.upper() not in DIGITS:
            raise ValueError(f"bad DTMF character {char!r} in {tones!r}: "
                             f"use 0-9, *, #, A-D and ',' for a 2 s pause")
    return tones.upper()


def _check_clock_rate(clock_rate: int, frame_ms: int) -> None:
    if not isinstance(clock_rate, int) or clock_rate <= 0 or clock_rate * frame_ms % 1000:
        raise ValueError(f"clock rate {clock_rate!r} Hz does not give whole units "
                         f"per {frame_ms} ms frame")


# ------------------------------------------------------------------- sender ---


@dataclass(frozen=True, slots=True)
class DtmfPacket:
    """One telephone-event packet to send, on the audio stream's SSRC.

    The adapter gives it the telephone-event payload type and the next
    sequence number of the stream.
    """

    timestamp: int  # RTP timestamp: the start of the event (or of its segment)
    marker: bool  # set on the first packet of an event only
    event: TelephoneEvent

    @property
    def payload(self) -> bytes:
        return encode(self.event)


@dataclass(frozen=True, slots=True)
class SenderTick:
    """What to send in place of (or beside) one audio frame."""

    packets: tuple[DtmfPacket, ...] = ()
    #: Do not send this audio frame: a tone is playing.
    suppress_audio: bool = False
    #: The character (digit or ``,``) whose playout begins at this frame, as
    #: ``RTCDTMFSender``'s ``tonechange`` event would say.
    tone: str | None = None


_IDLE: Final = SenderTick()


@dataclass(slots=True)
class _Tone:
    code: int
    total: int  # requested duration, clock-rate units
    timestamp: int  # RTP timestamp of the current segment
    offset: int = 0  # units reported by earlier segments
    elapsed: int = 0  # units played so far
    first: bool = True  # the next packet is the event's first


class DtmfSender:
    """RFC 4733 packetiser for the digits of :meth:`insert`, one audio frame at a time.

    ``clock_rate`` is the telephone-event payload type's: durations are in
    its units. The timestamps are the audio stream's (RFC 4733 §2.1: same
    SSRC and timestamp clock); where the two clocks differ (events at 8000 Hz
    beside Opus at 48000, as WebRTC does), only the durations are in 8000 Hz
    units, and no event is long enough to need a second segment (0xFFFF
    units = 8.2 s > the 6 s cap). Each tone covers
    ``ceil(duration / frame_ms)`` frames: one packet per frame with the
    duration so far (the first with the marker bit), the last one with the
    E bit and the exact duration, sent again at each of the next two frames.
    Events longer than 0xFFFF units are cut into segments (§2.5.1.3).
    """

    def __init__(self, clock_rate: int = 48000, *, frame_ms: int = 20,
                 volume: int = 10) -> None:
        if not isinstance(frame_ms, int) or not 0 < frame_ms <= 1000:
            raise ValueError(f"frame_ms {frame_ms!r} out of range 1..1000")
        _check_clock_rate(clock_rate, frame_ms)
        if not 0 <= volume <= 63:
            raise ValueError(f"volume {volume} out of range 0..63")
        self.clock_rate = clock_rate
        self.frame_ms = frame_ms
        self.volume = volume
        self._frame_units = clock_rate * frame_ms // 1000
        self._buffer = ""
        self._duration_ms = 100
        self._gap_ms = 70
        self._tone: _Tone | None = None
        self._resend: list[tuple[DtmfPacket, int]] = []  # final packets still to repeat
        self._frame = 0  # frames ticked so far
        self._next_at = 0  # the frame at which the next character may start

    def insert(self, tones: str, duration_ms: float = 100, gap_ms: float = 70) -> None:
        """Replace the tones still to play, as ``RTCDTMFSender.insertDTMF`` does.

        A tone already playing finishes. ``duration_ms`` is clamped to
        40..6000, ``gap_ms`` raised to at least 30; ``""`` cancels the rest.
        A bad character raises a one-line ValueError and changes nothing.
        """
        tones = check_tones(tones)
        if not (math.isfinite(duration_ms) and math.isfinite(gap_ms)):
            raise ValueError(f"DTMF duration ({duration_ms!r}) and gap ({gap_ms!r}) "
                             f"must be finite numbers of milliseconds")
        self._duration_ms = round(min(max(duration_ms, MIN_DURATION_MS), MAX_DURATION_MS))
        self._gap_ms = round(max(gap_ms, MIN_GAP_MS))
        self._buffer = tones

    @property
    def tone_buffer(self) -> str:
        """The characters not yet started (``RTCDTMFSender.toneBuffer``)."""
        return self._buffer

    @property
    def idle(self) -> bool:
        """Nothing playing, queued or still to repeat."""
        return not self._buffer and self._tone is None and not self._resend

    @property
    def keys_out(self) -> bool:
        """Every tone inserted went out to its end (its final packet sent at least
        once; copies of it may still be due): a peer hears every key."""
        return not self._buffer and self._tone is None

    def tick(self, timestamp: int) -> SenderTick:
        """The packets for the audio frame with RTP ``timestamp``; call once per frame."""
        if self.idle:
            self._frame += 1
            return _IDLE
        packets = [packet for packet, _ in self._resend]
        self._resend = [(packet, n - 1) for packet, n in self._resend if n > 1]
        started: str | None = None
        while self._tone is None and self._buffer and self._frame >= self._next_at:
            started, self._buffer = self._buffer[0], self._buffer[1:]
            if started == PAUSE:
                self._next_at = self._frame + PAUSE_MS // self.frame_ms
            else:
                total = self._duration_ms * self.clock_rate // 1000
                self._tone = _Tone(DIGITS.index(started), total, timestamp & 0xFFFFFFFF)
        tone = self._tone
        if tone is not None:
            packets += self._play(tone)
        self._frame += 1
        return SenderTick(tuple(packets), tone is not None, started)

    def _play(self, tone: _Tone) -> list[DtmfPacket]:
        """One frame of ``tone``: its packets (a segment's last, then this one)."""
        packets = []
        tone.elapsed = min(tone.elapsed + self._frame_units, tone.total)
        if tone.elapsed - tone.offset > MAX_SEGMENT:  # §2.5.1.3: close this segment
            last = DtmfPacket(tone.timestamp, tone.first,
                              TelephoneEvent(tone.code, False, self.volume, MAX_SEGMENT))
            packets.append(last)
            self._resend.append((last, END_COPIES - 1))
            tone.offset += MAX_SEGMENT
            tone.timestamp = (tone.timestamp + MAX_SEGMENT) & 0xFFFFFFFF
            tone.first = False
        end = tone.elapsed >= tone.total
        packet = DtmfPacket(tone.timestamp, tone.first,
                            TelephoneEvent(tone.code, end, self.volume,
                                           tone.elapsed - tone.offset))
        packets.append(packet)
        tone.first = False
        if end:
            self._resend.append((packet, END_COPIES - 1))
            self._tone = None
            gap_frames = -(-self._gap_ms // self.frame_ms)
            self._next_at = self._frame + 1 + gap_frames
        return packets


# ----------------------------------------------------------------- receiver ---


@dataclass(frozen=True, slots=True)
class DtmfEvent:
    """A digit the peer pressed, reported once, when it ended."""

    digit: str
    duration_ms: int
    #: How the end was seen: its end packet, no packet for a while
    #: (:meth:`DtmfReceiver.handle_timer`), or the next event beginning.
    ended_by: Literal["end", "timeout", "next"] = "end"


@dataclass(slots=True)
class ReceiverStats:
    """Counters of one :class:`DtmfReceiver`."""

    packets: int = 0  # telephone-event packets fed in
    malformed: int = 0  # payloads that did not decode (DtmfPayloadError raised)
    duplicates: int = 0  # packets of an event already reported (end copies, retransmits)
    late: int = 0  # packets of an older event arriving after a newer one began
    ignored: int = 0  # events that are not DTMF digits, or contradict their event
    events: int = 0  # digits reported


@dataclass(slots=True)
class _Current:
    code: int
    timestamp: int  # of the current segment
    clock_rate: int
    duration: int  # longest duration seen in the current segment
    offset: int = 0  # units in earlier segments
    last_arrival: float = 0.0
    segments: tuple[int, ...] = ()  # timestamps of earlier segments


class DtmfReceiver:
    """Turns received telephone-event packets into one :class:`DtmfEvent` per digit.

    Liberal, as Chromium's receiver is: a digit seen only as its end packets
    counts; so does one whose start packet was lost; one whose end packets
    were all lost ends ``end_timeout`` seconds after its last packet (with
    the longest duration seen), or when the next event begins. Copies of an
    ended event's packets are dropped. ``clock_rate`` is the default clock
    rate of the telephone-event payload type; :meth:`receive` takes the rate
    of the payload type each packet came on (Chromium offers 48000 Hz but
    was seen sending on its 8000 Hz payload type).
    """

    #: How many ended events' timestamps are remembered to drop their copies.
    REMEMBERED: Final = 16

    def __init__(self, clock_rate: int = 48000, *, end_timeout: float = 0.2,
                 seq_horizon: float = 5.0) -> None:
        _check_clock_rate(clock_rate, 1000)
        if not end_timeout > 0:
            raise ValueError(f"end_timeout must be positive, not {end_timeout!r}")
        self.clock_rate = clock_rate
        self.end_timeout = end_timeout
        #: After this long without a packet, sequence numbers start afresh
        #: (a long silence may have wrapped them past half their range).
        self.seq_horizon = seq_horizon
        self.stats = ReceiverStats()
        self._current: _Current | None = None
        self._ended: deque[int] = deque(maxlen=self.REMEMBERED)
        self._seq: int | None = None  # highest sequence number seen
        self._last_arrival = -math.inf

    def receive(self, timestamp: int, seq: int, payload: bytes, now: float, *,
                marker: bool = False, clock_rate: int | None = None) -> list[DtmfEvent]:
        """Feed one telephone-event packet that arrived at ``now``; the digits it ended.

        Raises :class:`DtmfPayloadError` (and counts it) if the payload is malformed.
        """
        self.stats.packets += 1
        try:
            event = decode(payload)
        except DtmfPayloadError:
            self.stats.malformed += 1
            raise
        timestamp &= 0xFFFFFFFF
        newer = self._advance_seq(seq & 0xFFFF, now)
        if event.digit is None:
            self.stats.ignored += 1
            return []
        current = self._current
        if current is not None and timestamp == current.timestamp:
            if event.event != current.code:
                self.stats.ignored += 1
                return []
            current.duration = max(current.duration, event.duration)
            current.last_arrival = now
            return self._finish("end") if event.end else []
        if timestamp in self._ended or (current is not None and timestamp in current.segments):
            self.stats.duplicates += 1
            return []
        if not newer:
            self.stats.late += 1
            return []
        done: list[DtmfEvent] = []
        if current is not None:
            segments = self._segments_between(current, timestamp, event, marker)
            if segments:
                current.offset += segments * MAX_SEGMENT
                current.segments += (current.timestamp,)
                current.timestamp = timestamp
                current.duration = event.duration
                current.last_arrival = now
                return self._finish("end") if event.end else []
            done = self._finish("next")
        self._current = _Current(event.event, timestamp,
                                 clock_rate or self.clock_rate, event.duration, last_arrival=now)
        if event.end:
            done += self._finish("end")
        return done

    def deadline(self) -> float | None:
        """When :meth:`handle_timer` must next be called, or None."""
        current = self._current
        return None if current is None else current.last_arrival + self.end_timeout

    def handle_timer(self, now: float) -> list[DtmfEvent]:
        """End a digit whose end packets never came."""
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return []
        return self._finish("timeout")

    def _advance_seq(self, seq: int, now: float) -> bool:
        """Note ``seq``; is it newer than every sequence number seen (modulo 2**16)?"""
        last_seq, last_arrival = self._seq, self._last_arrival
        self._last_arrival = max(last_arrival, now)
        if last_seq is None or now - last_arrival > self.seq_horizon or \
                0 < (seq - last_seq) & 0xFFFF < 0x8000:
            self._seq = seq
            return True
        return False

    @staticmethod
    def _segments_between(current: _Current, timestamp: int, event: TelephoneEvent,
                          marker: bool) -> int:
        """How many whole segments lie between ``current`` and a packet at ``timestamp``.

        Non-zero only when the packet continues ``current`` as a long event
        (§2.5.2.3): same digit, no marker, and a timestamp a whole number of
        segments later, give or take a tenth of a second (a sender may start
        the new segment on its next frame, as WebRTC does).
        """
        if event.event != current.code or marker:
            return 0
        step = (timestamp - current.timestamp) & 0xFFFFFFFF
        segments = round(step / MAX_SEGMENT)
        slack = current.clock_rate // 10
        if segments < 1 or abs(step - segments * MAX_SEGMENT) > slack:
            return 0
        return segments

    def _finish(self, ended_by: Literal["end", "timeout", "next"]) -> list[DtmfEvent]:
        current = self._current
        assert current is not None
        self._current = None
        self._ended.extend(current.segments)
        self._ended.append(current.timestamp)
        self.stats.events += 1
        units = current.offset + current.duration
        return [DtmfEvent(DIGITS[current.code], round(units * 1000 / current.clock_rate),
                          ended_by)]
