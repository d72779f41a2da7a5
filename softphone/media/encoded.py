"""Sources that hand the send loop encoded packets: no encoder runs per call.

A bot that serves many callers does the same work for each of them: it
plays them the same prompt, or sends each its own voice back. Here that
work is done once, or not at all:

- :class:`SharedPrompt` encodes a prompt (or a looped tone) to Opus once;
  every :class:`PromptSource` playing it sends those same payloads, paced
  by the clock (only the RTP header, and the RED wrapping when RED is
  agreed, is per call).
- :class:`PacketEcho` sends each received audio packet straight back (the
  echo test): no decoding, no encoding, no jitter buffer; each caller hears
  itself, with its own packets.

Both are :class:`EncodedSource`\\ s: aiortc ``MediaStreamTrack``\\ s (so a
call takes them as its source like any other) whose packets our send loop
(:mod:`softphone.media.rtpsend`) takes from :meth:`EncodedSource.next_encoded`
instead of encoding frames. They are made for our own voice codec: Opus, or
RED around Opus.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError

from softphone.media import red
from softphone.media.audio import FRAME_SAMPLES, SAMPLE_RATE, Int16Array
from softphone.media.frameclock import FrameClock
from softphone.media.opus import EncoderSettings, OpusEncoder
from softphone.media.tracks import AudioSource

log = logging.getLogger(__name__)

_FRAME_SECONDS: Final = FRAME_SAMPLES / SAMPLE_RATE


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One frame's packets for the send loop (every payload gets the same timestamp)."""

    payloads: list[bytes]
    #: RTP timestamp relative to the stream's start (the loop adds its random origin).
    timestamp: int
    #: RFC 6464 audio level (0 = loudest .. 127 = silence), or None for no level.
    level: int | None = None


class UnsupportedCodec(ValueError):
    """An encoded source asked to send with a codec it cannot make packets for."""


def level_dbov(dbfs: float) -> int:
    """A level in dBFS as RFC 6464's -dBov (0..127)."""
    if not dbfs > -127.0:
        return 127
    return max(0, min(127, round(-dbfs)))


class EncodedSource(AudioSource):
    """Base of the sources whose packets are encoded already (see the module docstring).

    The send loop calls :meth:`bind` once with the codec the call agreed,
    then :meth:`attach` with the function that sends a frame at once. A
    source delivers (:meth:`deliver`) each frame as it is due: sent there and then,
    or, when only aiortc's own path can send it (a TURN relay), queued for
    the loop's :meth:`next_encoded`. ``recv()`` (decoded frames) is not
    offered: these sources are for our send loop only.
    """

    #: Earlier frames repeated in each packet when RED is agreed.
    redundancy = 1

    def __init__(self, max_pending: int = 25) -> None:
        super().__init__()
        self._red: red.RedPacker | None = None
        self._direct: Callable[[EncodedFrame], bool] | None = None
        self._pending: deque[EncodedFrame] = deque(maxlen=max_pending)
        self._waiter: asyncio.Future[None] | None = None

    def bind(self, mime_type: str, parameters: dict[str, Any]) -> None:
        """Send with this codec: ``audio/opus``, or ``audio/red`` (fmtp ``111/111``)."""
        mime = mime_type.lower()
        if mime == "audio/red":
            pt = red.primary_payload_type(parameters)
            if pt is None:
                raise UnsupportedCodec(f"RED without a block payload type: {parameters}")
            self._red = red.RedPacker(pt, max(1, self.redundancy), FRAME_SAMPLES)
        elif mime != "audio/opus":
            raise UnsupportedCodec(f"{type(self).__name__} sends Opus, not {mime_type}")

    def attach(self, direct: Callable[[EncodedFrame], bool] | None) -> None:
        """``direct(frame)`` sends a frame at once (False: it could not); None: detach."""
        self._direct = direct
        self._pending.clear()

    @property
    def sends_red(self) -> bool:
        return self._red is not None

    def wrap(self, timestamp: int, opus: bytes) -> bytes:
        """``opus`` as the agreed codec wants it (RED around it, or as is)."""
        return opus if self._red is None else self._red.wrap(timestamp, opus)

    def deliver(self, frame: EncodedFrame) -> None:
        """A frame is due: send it now, or queue it for :meth:`next_encoded`."""
        direct = self._direct
        if direct is not None and direct(frame):
            return
        self._pending.append(frame)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next_encoded(self) -> EncodedFrame:
        """The next frame that could not be sent at once (raises when the source stops)."""
        while not self._pending:
            if self.readyState != "live":
                raise MediaStreamError
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._pending.popleft()

    def stop(self) -> None:
        super().stop()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def recv(self) -> av.AudioFrame:
        raise NotImplementedError(f"{type(self).__name__} hands out encoded packets only "
                                  "(softphone's send loop takes them)")


# ------------------------------------------------------------------ prompts ---


class SharedPrompt:
    """A prompt encoded once, for any number of calls (:class:`PromptSource`).

    ``samples``: 48 kHz mono int16 (padded to whole 20 ms frames);
    ``settings``: how to encode it (the calls' bitrate, FEC). The Opus
    payloads are made on first use and kept; so is a silent frame, sent
    after the prompt ends. One timer (a
    :class:`~softphone.media.frameclock.FrameClock`) sends the next frame of
    every call playing it, every 20 ms.
    """

    def __init__(self, samples: Int16Array, settings: EncoderSettings | None = None) -> None:
        if samples.size == 0:
            raise ValueError("an empty prompt")
        frames = -(-samples.size // FRAME_SAMPLES)
        padded = np.zeros(frames * FRAME_SAMPLES, dtype=np.int16)
        padded[: samples.size] = samples
        self.frames: Int16Array = padded.reshape(frames, FRAME_SAMPLES)
        self.settings = settings or EncoderSettings()
        self.ticker = FrameClock()
        self._payloads: list[bytes] | None = None
        self._silence = b""
        levels = np.sqrt(np.mean(self.frames.astype(np.float64) ** 2, axis=1)) / 32768.0
        with np.errstate(divide="ignore"):
            dbfs = 20 * np.log10(levels)
        self.levels: list[int] = [level_dbov(float(x)) for x in dbfs]
        self.levels_dbfs: list[float] = [float(x) for x in dbfs]

    @classmethod
    def from_file(cls, path: str | Path, settings: EncoderSettings | None = None
                  ) -> SharedPrompt:
        """Decode any audio file FFmpeg reads (:func:`softphone.media.tracks.load_audio_file`)."""
        from softphone.media.tracks import load_audio_file

        return cls(load_audio_file(path), settings)

    @classmethod
    def tone(cls, frequency: float, seconds: float = 1.0, amplitude: float = 0.3,
             settings: EncoderSettings | None = None) -> SharedPrompt:
        """A tone to loop: ``seconds`` (whole frames) of it, cut to a whole number of cycles."""
        frames = max(1, round(seconds / _FRAME_SECONDS))
        n = frames * FRAME_SAMPLES
        cycles = max(1, round(frequency * n / SAMPLE_RATE))
        t = np.arange(n) / n
        samples = (amplitude * 32767 * np.sin(2 * np.pi * cycles * t)).astype(np.int16)
        return cls(samples, settings)

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @property
    def seconds(self) -> float:
        return len(self) * _FRAME_SECONDS

    @property
    def payloads(self) -> list[bytes]:
        """The prompt's Opus payloads, one per 20 ms (encoded on first use)."""
        if self._payloads is None:
            started = time.perf_counter()
            encoder = OpusEncoder(self.settings)
            self._payloads = [encoder.encode(frame) for frame in self.frames]
            quiet = np.zeros(FRAME_SAMPLES, dtype=np.int16)
            for _ in range(3):  # let the encoder settle into silence
                self._silence = encoder.encode(quiet)
            log.debug("prompt of %.1f s encoded in %.1f ms", self.seconds,
                      (time.perf_counter() - started) * 1000)
        return self._payloads

    @property
    def silence(self) -> bytes:
        """A silent frame, sent once the prompt is over."""
        self.payloads  # noqa: B018 - encodes on first use
        return self._silence


class PromptSource(EncodedSource):
    """Plays a :class:`SharedPrompt` once (then silence) or looped, every 20 ms.

    Like :class:`~softphone.media.tracks.FileSource`: nothing is queued
    before the call starts sending, ``finished`` is set when the prompt has
    played out; :attr:`position` is the next frame of the prompt.
    :meth:`play` switches to another prompt (a menu's choice).
    """

    def __init__(self, prompt: SharedPrompt, *, loop: bool = False) -> None:
        super().__init__()
        self.prompt = prompt
        self.redundancy = prompt.settings.redundancy
        self.loop = loop
        self.position = 0
        self.finished = asyncio.Event()
        self._sent = 0
        self._ticker: FrameClock | None = None

    def play(self, prompt: SharedPrompt, *, loop: bool = False) -> None:
        """Play ``prompt`` from its start now, in place of what was playing (a menu's choice)."""
        attached = self._ticker is not None
        self._leave()
        self.prompt = prompt
        self.loop = loop
        self.position = 0
        self.finished.clear()
        if attached:
            self._join()

    def attach(self, direct: Callable[[EncodedFrame], bool] | None) -> None:
        super().attach(direct)
        self._leave()
        if direct is not None and self.readyState == "live":
            self._join()

    def _join(self) -> None:
        self._ticker = self.prompt.ticker
        self._ticker.add(self)

    def _leave(self) -> None:
        if self._ticker is not None:
            self._ticker.remove(self)
            self._ticker = None

    def stop(self) -> None:
        self._leave()
        super().stop()

    def tick(self, skipped: int = 0) -> None:
        """The next 20 ms is due (the ticker calls this); ``skipped`` frames were not
        sent in time (a stall): the RTP clock moves on by them, so the peer sees a
        gap, not every later frame late."""
        prompt = self.prompt
        payloads = prompt.payloads
        n = self.position
        if n >= len(payloads) and self.loop:
            n = self.position = 0
        self._sent += skipped
        timestamp = self._sent * FRAME_SAMPLES
        self._sent += 1
        if n < len(payloads):
            self.position = n + 1
            payload, level = payloads[n], prompt.levels[n]
            self.level_dbfs = -float("inf") if self.muted or self.silenced \
                else prompt.levels_dbfs[n]
            if self.position == len(payloads) and not self.loop:
                self.finished.set()
        else:
            payload, level = prompt.silence, 127
            self.level_dbfs = -float("inf")
            self.finished.set()
        if self.muted or self.silenced:
            payload, level = prompt.silence, 127
        self.deliver(EncodedFrame([self.wrap(timestamp, payload)], timestamp, level))


# --------------------------------------------------------------------- echo ---


class PacketEcho(EncodedSource):
    """The echo test without decoding: each received audio packet is sent straight back.

    Give it to a call as its source; the call's receive path hands it every
    packet (:meth:`push`, the signature of
    :meth:`softphone.media.voice.Playout.push`), and it is sent back there
    and then. Our timestamps follow the caller's (a lost packet stays a
    hole, a late one stays late); Opus and RED are converted when the two
    directions differ.
    """

    def __init__(self, max_packets: int = 25) -> None:
        super().__init__(max_packets)
        self._ssrc: int | None = None
        self._base = 0  # caller's timestamp that maps to ours + offset
        self._offset = 0
        self._last = -FRAME_SAMPLES  # our last relative timestamp
        #: Packets sent back (or queued to be).
        self.echoed = 0

    def push(self, ssrc: int, seq: int, timestamp: int, payload: bytes,
             is_red: bool = False) -> None:
        """A packet as it arrived (RED if ``is_red``): sent back (an empty one, a
        telephone event's packet, has nothing to send)."""
        if self._direct is None or not payload:
            return  # not sending yet: nothing to echo into
        if ssrc != self._ssrc:  # a new stream: go on from where we were
            self._ssrc = ssrc
            self._base = timestamp
            self._offset = self._last + FRAME_SAMPLES
        ours = (timestamp - self._base + self._offset) & 0xFFFFFFFF
        self._last = ours
        if is_red and not self.sends_red:
            try:
                payload = red.parse(payload)[-1].data
            except red.RedError:
                return
        elif not is_red and self.sends_red:
            payload = self.wrap(ours, payload)
        if payload:
            self.echoed += 1
            self.deliver(EncodedFrame([payload], ours, None))

    def write(self, samples: Int16Array) -> None:
        """Nothing: decoded audio is not echoed (this echo sends packets)."""

    def close(self) -> None:
        """Nothing to close."""
