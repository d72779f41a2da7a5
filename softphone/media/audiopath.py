"""One call's audio path: what it sends, how it plays what it hears, where that goes.

:class:`CallAudio` owns everything audio of one call: the source (the
microphone, a tone, a file), the playout (our jitter buffer and decoder, or
aiortc's own decoded frames), the output device that plays it and is its
clock (the speaker), the sinks (a recording, an analysis buffer), and the
call's settings (:class:`MediaConfig`: pipeline, bitrate and redundancy,
simulated loss, ICE gathering timeout). None of it is process-wide: two
calls in one process each send and play with their own.

:class:`~softphone.media.rtc.MediaSession` connects it to the peer
connection: the sender encodes with :meth:`CallAudio.encoder_for`, the
received packets go to :meth:`CallAudio.start_playout`. A device that stops
(microphone or speaker) is reported once through ``on_device_lost``; the
call goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiortc.mediastreams import MediaStreamTrack

from softphone.media import voice
from softphone.media.aiortc_seams import DEFAULT_GATHER_TIMEOUT
from softphone.media.netsim import Impairment
from softphone.media.opus import EncoderSettings
from softphone.media.tracks import (
    AudioOutput,
    AudioReceiver,
    AudioSource,
    LostCallback,
    SilenceSource,
    Sink,
)

log = logging.getLogger(__name__)

PIPELINES = ("softphone", "aiortc")


@dataclass(frozen=True)
class MediaConfig:
    """How one call's audio is coded and played out (every setting of a call)."""

    #: "softphone": our encoder (mono voice, FEC) and playout (adaptive jitter
    #: buffer, concealment, FEC recovery). "aiortc": aiortc's own, as shipped.
    pipeline: str = "softphone"
    encoder: EncoderSettings = field(default_factory=EncoderSettings)
    #: Simulated loss/jitter on received packets (tests, benchmarks, --simulate-loss).
    impairment: Impairment | None = None
    #: Seconds ICE gathering may wait for each STUN/TURN server.
    gather_timeout: float = DEFAULT_GATHER_TIMEOUT

    def __post_init__(self) -> None:
        if self.pipeline not in PIPELINES:
            raise ValueError(f"unknown audio pipeline {self.pipeline!r}")
        if self.gather_timeout <= 0:
            raise ValueError("the gathering timeout must be > 0 seconds")

    @property
    def red(self) -> bool:
        """Do we send and agree on RED (our pipeline, with redundancy on)?"""
        return self.pipeline == "softphone" and self.encoder.redundancy > 0


class CallAudio:
    """The source, playout, output device, sinks and settings of one call.

    ``source``: what the call sends (silence if None). ``sinks``: where every
    20 ms played goes (closed when the call ends). ``output``: the device
    that plays it and is its clock (a :class:`~softphone.media.devices.SpeakerDriver`),
    or None for a 20 ms clock. ``on_device_lost(message)``: the microphone
    or the speaker stopped.
    """

    def __init__(self, source: AudioSource | None = None, sinks: Sequence[Sink] = (), *,
                 output: AudioOutput | None = None, config: MediaConfig | None = None,
                 on_device_lost: LostCallback | None = None) -> None:
        for sink in sinks:
            if not isinstance(sink, Sink):
                raise TypeError(f"{sink!r} is not a sink: a sink has write(samples) and "
                                f"close() (a speaker is a call's output=, not a sink)")
        self.config = config or MediaConfig()
        self.source: AudioSource = source if source is not None else SilenceSource()
        self.receiver = AudioReceiver(sinks, output=output, on_output_lost=self._device_lost)
        #: Our playout (pipeline "softphone"), once the remote track is there.
        self.playout: voice.Playout | None = None
        #: What devices were lost, in order (one-line messages).
        self.lost: list[str] = []
        self.on_device_lost = on_device_lost
        self._closed = False
        self.source.add_lost_listener(self._device_lost)

    @property
    def sinks(self) -> list[Sink]:
        return self.receiver.sinks

    @property
    def output(self) -> AudioOutput | None:
        return self.receiver.output

    # -- the peer connection's side -------------------------------------------------

    def encoder_for(self, codec: Any) -> voice.VoiceEncoder | None:
        """The encoder this call sends ``codec`` with (None: aiortc's own pipeline)."""
        if self.config.pipeline != "softphone":
            return None
        return voice.encoder_for(codec.mimeType, codec.parameters, self.config.encoder)

    def start_playout(self) -> voice.Playout:
        """Our pipeline: start playing; received packets go to the returned playout's push."""
        self.playout = voice.Playout()
        self.receiver.play(self.playout)
        return self.playout

    def play_track(self, track: MediaStreamTrack) -> None:
        """aiortc's pipeline: play its decoded frames."""
        self.receiver.start(track)

    # -- figures --------------------------------------------------------------------

    @property
    def muted(self) -> bool:
        return self.source.muted

    @muted.setter
    def muted(self, muted: bool) -> None:
        self.source.muted = muted

    @property
    def mic_dbfs(self) -> float:
        """Level of the last frame sent (dBFS; -inf when muted or silent)."""
        return self.source.level_dbfs

    @property
    def speaker_dbfs(self) -> float:
        """Level of the last frame played (dBFS)."""
        return self.receiver.level_dbfs

    @property
    def playout_delay(self) -> float | None:
        """Seconds of audio waiting in our jitter buffer (None with aiortc's pipeline)."""
        return None if self.playout is None else self.playout.delay

    # -- life -----------------------------------------------------------------------

    def _device_lost(self, message: str) -> None:
        self.lost.append(message)
        if self.on_device_lost is not None:
            self.on_device_lost(message)

    async def close(self) -> None:
        """Stop playing and sending, close the output device and the sinks (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await self.receiver.stop()
        self.source.stop()
        for sink in self.receiver.sinks:
            try:
                sink.close()
            except Exception:
                log.exception("closing %r failed", sink)
