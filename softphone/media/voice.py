"""Our voice pipeline at both ends of aiortc's RTP: encoder and playout.

- :class:`VoiceEncoder` is what aiortc's ``RTCRtpSender`` calls to encode
  each 20 ms frame: :func:`encoder_for` makes one for the codec a call
  agreed, with that call's settings, and
  :func:`softphone.media.aiortc_seams.encode_with` gives it to the call's sender.
- :class:`Playout` receives each RTP audio packet (through
  :func:`softphone.media.aiortc_seams.tap_receiver`), keeps it in the adaptive
  :class:`~softphone.media.jitterbuffer.JitterBuffer`, and on every :meth:`Playout.pull`
  returns the next 20 ms of audio: decoded, recovered from FEC, or concealed.
  Whoever plays the audio pulls: the speaker's callback, or, without a
  speaker, a 20 ms clock (:class:`softphone.media.tracks.AudioReceiver`). One
  buffer, not two stacked.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from softphone.media import jitterbuffer as jb
from softphone.media import red
from softphone.media.audio import FRAME_SAMPLES, Int16Array
from softphone.media.opus import EncoderSettings, OpusDecoder, OpusEncoder
from softphone.media.pcm import MonoConverter, SampleFifo

log = logging.getLogger(__name__)

_SILENCE = np.zeros(FRAME_SAMPLES, dtype=np.int16)
_QUIET_PEAK = int(32768 * 10 ** (-45 / 20))


def is_quiet(pcm: Int16Array) -> bool:
    """A pause in speech: no sample above -45 dBFS (no array made: 50 times a second)."""
    return pcm.size == 0 or max(int(pcm.max()), -int(pcm.min())) < _QUIET_PEAK


class VoiceEncoder:
    """aiortc ``Encoder`` for Opus: mono voice, in-band FEC (:mod:`softphone.media.opus`)."""

    def __init__(self, settings: EncoderSettings | None = None) -> None:
        self.opus = OpusEncoder(settings)
        self._convert = MonoConverter()
        # At most four frames wait (frames that are not 20 ms, a resampler's delay).
        self._pending = SampleFifo(5 * FRAME_SAMPLES)
        self._frame: Int16Array = np.zeros(FRAME_SAMPLES, dtype=np.int16)  # reused
        self._timestamp = 0

    def encode(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        pending = self._pending
        pending.push(self._convert(frame))
        timestamp = self._timestamp
        # aiortc sends every payload of one call with one timestamp: one frame per call.
        if not pending.take_into(self._frame):
            return [], timestamp
        self._timestamp += FRAME_SAMPLES
        return [self.opus.encode(self._frame)], timestamp

    def pack(self, packet: Any) -> tuple[list[bytes], int]:
        raise NotImplementedError("VoiceEncoder only encodes raw frames")


class RedVoiceEncoder(VoiceEncoder):
    """:class:`VoiceEncoder` whose packets also carry the frames before (RED, RFC 2198).

    ``payload_type``: the Opus payload type named in the negotiated RED fmtp.
    """

    def __init__(self, settings: EncoderSettings | None, payload_type: int) -> None:
        super().__init__(settings)
        self.red = red.RedPacker(payload_type, self.opus.settings.redundancy, FRAME_SAMPLES)

    def encode(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        payloads, timestamp = super().encode(frame, force_keyframe)
        return [self.red.wrap(timestamp, p) for p in payloads], timestamp


def encoder_for(mime_type: str, fmtp: dict[str, Any],
                settings: EncoderSettings) -> VoiceEncoder | None:
    """Our encoder for a codec a call agreed on, with the call's ``settings``.

    ``mime_type`` and ``fmtp`` are the codec's (``audio/red`` with
    ``{"111/111": None}``). None for a codec that is not ours to encode.
    """
    mime = mime_type.lower()
    if mime == "audio/opus":
        return VoiceEncoder(settings)
    if mime == "audio/red":
        pt = red.primary_payload_type(fmtp)
        if pt is None:
            raise ValueError(f"RED without a block payload type: {fmtp}")
        return RedVoiceEncoder(settings, pt)
    return None


@dataclass
class PlayoutStats:
    """What :class:`Playout` did (the jitter buffer's own decisions: ``buffer.stats``)."""

    frames: int = 0
    decoded: int = 0
    silent: int = 0
    decode_errors: int = 0
    red_packets: int = 0  # packets that arrived as RED


class Playout:
    """Received packets in, 20 ms frames out. Thread-safe: push and pull may differ."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 buffer: jb.JitterBuffer | None = None) -> None:
        self.clock = clock
        self.buffer = buffer or jb.JitterBuffer()
        self.decoder = OpusDecoder()
        self.stats = PlayoutStats()
        self._lock = threading.Lock()
        self._ssrc: int | None = None
        self._quiet = True
        #: Called with (rtp_timestamp, pull_time) for every frame played from a packet.
        self.on_played: Callable[[int, float], None] | None = None

    def push(self, ssrc: int, seq: int, timestamp: int, payload: bytes,
             is_red: bool = False) -> None:
        """A packet as it arrived; ``is_red``: its payload is RED (RFC 2198). An
        empty one (a telephone event's packet: counted by the caller) plays nothing."""
        if not payload:
            return
        now = self.clock()
        blocks: list[red.Block] = []
        if is_red:
            try:
                blocks = red.parse(payload)
            except red.RedError as exc:
                log.debug("bad RED packet %d: %s", seq, exc)
                self.stats.decode_errors += 1
                return
        with self._lock:
            if self._ssrc is not None and ssrc != self._ssrc:
                log.info("new audio stream (ssrc %d): restarting the jitter buffer", ssrc)
                old = self.buffer
                self.buffer = old.renewed()
                self.decoder = OpusDecoder()
            self._ssrc = ssrc
            if not is_red:
                if payload:
                    self.buffer.push(timestamp, payload, now)
                return
            self.stats.red_packets += 1
            primary = blocks.pop()
            if primary.data:
                self.buffer.push(timestamp, primary.data, now)
            for block in blocks:  # copies of earlier frames: they fill holes, nothing else
                if block.data:
                    self.buffer.push_redundant((timestamp - block.offset) & 0xFFFFFFFF,
                                               block.data, now)

    def _decode_play(self, decision: jb.Play, copy: bool = True) -> tuple[Int16Array, int]:
        """A :class:`~.jitterbuffer.Play` decoded: the frames it skips (for the
        decoder's state, not played), then its own; the samples and the RTP timestamp
        played. A skip that only cut surplus in a pause (``optional_skip``) whose frame
        is not quiet after all is taken back: that frame is played, the cut kept for
        later."""
        for skipped in decision.skipped:
            pcm = self.decoder.decode(skipped, copy=copy)
            if decision.optional_skip and not is_quiet(pcm):
                self.buffer.keep_skipped()
                return pcm, (decision.timestamp - self.buffer.frame_samples) & 0xFFFFFFFF
        return self.decoder.decode(decision.payload, copy=copy), decision.timestamp

    def pull(self) -> Int16Array:
        """The next 20 ms to play (always exactly 960 samples)."""
        now = self.clock()
        with self._lock:
            decision = self.buffer.pull(now, self._quiet)
            stats = self.stats
            stats.frames += 1
            try:
                if isinstance(decision, jb.Play):
                    out, played = self._decode_play(decision)
                    if self.on_played is not None:
                        self.on_played(played, now)
                    stats.decoded += 1
                elif isinstance(decision, jb.Recover):
                    out = self.decoder.recover(decision.next_payload)
                elif isinstance(decision, jb.Conceal):
                    out = self.decoder.conceal()
                else:
                    stats.silent += 1
                    return _SILENCE.copy()
            except Exception as exc:  # a corrupt packet must not stop the audio
                stats.decode_errors += 1
                log.debug("decode failed: %s", exc)
                return _SILENCE.copy()
        # A pause in speech (below -45 dBFS peak) is where the buffer may skip a frame.
        self._quiet = is_quiet(out)
        if out.size != FRAME_SAMPLES:  # packets of another duration: fit to 20 ms
            fitted = np.zeros(FRAME_SAMPLES, dtype=np.int16)
            n = min(FRAME_SAMPLES, out.size)
            fitted[:n] = out[:n]
            out = fitted
        return out

    @property
    def delay(self) -> float:
        """Seconds of audio waiting in the buffer (the receive delay we add)."""
        return self.buffer.level

    @property
    def target(self) -> float:
        return self.buffer.target
