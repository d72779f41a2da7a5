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
call goes on. On hold (:meth:`CallAudio.set_flow`) it sends no audio packets,
or silence to a peer that does not know hold, and plays silence; it belongs
to the call, so a connection made during a hold starts held.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiortc.mediastreams import MediaStreamTrack

from softphone.core.hold import FlowMode
from softphone.core.restart_events import RestartSettings
from softphone.media import voice
from softphone.media.aiortc_seams import DEFAULT_GATHER_TIMEOUT, FastSetup, PacketHandler
from softphone.media.apm import VoiceProcessor, VoiceSettings, VoiceStats
from softphone.media.audio import FRAME_SAMPLES, SAMPLE_RATE
from softphone.media.delay import DelayParts
from softphone.media.devices import MicSource, SpeakerDriver, attach_voice_processor, device_stats
from softphone.media.encoded import PacketEcho
from softphone.media.frameclock import FrameClock
from softphone.media.handover import Handover
from softphone.media.netsim import Impairment
from softphone.media.opus import EncoderSettings
from softphone.media.playout import StretchPlayout
from softphone.media.rtpsend import SendGate
from softphone.media.sending import AdaptiveEncoder, SendControl
from softphone.media.sinks import HeldNoting, Sink
from softphone.media.tracks import (
    AudioOutput,
    AudioReceiver,
    AudioSource,
    LostCallback,
    SilenceSource,
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
    #: How ICE and DTLS set up (faster than aiortc's, aioice's and OpenSSL's own).
    fast_setup: FastSetup = field(default_factory=FastSetup)
    #: Echo cancellation, noise suppression, gain control on a real microphone
    #: (each on by default; softphone.media.apm). Tones and files are sent as they are.
    voice_processing: VoiceSettings = field(default_factory=VoiceSettings)
    #: Media restart (``docs/protocol.md``): when to restart, how often, when to give up.
    restart: RestartSettings = field(default_factory=RestartSettings)
    #: Announce ``restart`` (``--no-restart``: not; lost media is then only watched,
    #: and the call given up after ``restart.give_up``).
    restart_enabled: bool = True

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
    or None for a 20 ms clock (``frame_clock``: one shared with other calls, as a
    phone's are; else the call's own). ``on_device_lost(message)``: the microphone
    or the speaker stopped.
    """

    def __init__(self, source: AudioSource | None = None, sinks: Sequence[Sink] = (), *,
                 output: AudioOutput | None = None, config: MediaConfig | None = None,
                 on_device_lost: LostCallback | None = None,
                 frame_clock: FrameClock | None = None) -> None:
        for sink in sinks:
            if not isinstance(sink, Sink):
                raise TypeError(f"{sink!r} is not a sink: a sink has write(samples) and "
                                f"close() (a speaker is a call's output=, not a sink)")
        self.config = config or MediaConfig()
        self.source: AudioSource = source if source is not None else SilenceSource()
        #: Which of the call's peer connections sends the source and is played (a
        #: media restart makes a new one while the old one still plays).
        self.handover = Handover(self.source)
        self.handover.on_report = self.report_early
        self._packet_handler: PacketHandler | None = None
        self.receiver = AudioReceiver(sinks, output=output, on_output_lost=self._device_lost,
                                      frame_clock=frame_clock)
        #: Our playout (pipeline "softphone"), once the remote track is there.
        self.playout: voice.Playout | None = None
        #: What we send with, following the peer's reports (pipeline "softphone").
        self.sending: SendControl | None = SendControl(self.config.encoder) \
            if self.config.pipeline == "softphone" else None
        #: Hold: whether the send loop sends audio packets (read once per frame).
        self.send_gate = SendGate()
        #: What the media does now (:meth:`set_flow`).
        self.flow = FlowMode.FLOWING
        #: What devices were lost, in order (one-line messages).
        self.lost: list[str] = []
        self.on_device_lost = on_device_lost
        self._closed = False
        self.source.add_lost_listener(self._device_lost)
        #: The microphone's voice processor (None unless the source is a microphone).
        self.voice: VoiceProcessor | None = attach_voice_processor(
            self.source, output, self.config.voice_processing)

    @property
    def sinks(self) -> list[Sink]:
        return self.receiver.sinks

    @property
    def output(self) -> AudioOutput | None:
        return self.receiver.output

    # -- the peer connection's side -------------------------------------------------

    def encoder_for(self, codec: Any) -> AdaptiveEncoder | None:
        """The encoder this call sends ``codec`` with (None: aiortc's own pipeline)."""
        if self.sending is None:
            return None
        return self.sending.encoder_for(codec.mimeType, codec.parameters)

    def start_playout(self) -> voice.Playout:
        """Our pipeline: start playing; received packets go to the returned playout's push."""
        self.playout = StretchPlayout()
        self.receiver.play(self.playout)
        return self.playout

    def packet_handler(self) -> PacketHandler:
        """Our pipeline: where each received audio packet goes.

        To the playout (started here), and to a :class:`PacketEcho` source
        (sent straight back). An echo with nothing to play or keep what we
        hear (no output, no sinks) gets the packets alone: nothing decoded.
        One for the call: every peer connection of it (a media restart) gets the same.
        """
        if self._packet_handler is None:
            self._packet_handler = self._make_packet_handler()
        return self._packet_handler

    def _make_packet_handler(self) -> PacketHandler:
        echo = self.source if isinstance(self.source, PacketEcho) else None
        if echo is not None and self.output is None and not self.sinks:
            return echo.push
        push = self.start_playout().push
        if echo is None:
            return push
        forward = echo.push

        def both(ssrc: int, seq: int, timestamp: int, payload: bytes, is_red: bool) -> None:
            push(ssrc, seq, timestamp, payload, is_red)
            forward(ssrc, seq, timestamp, payload, is_red)

        return both

    def xr_report(self, rtcp_ssrc: int) -> bytes:
        """RTCP XR on the packets we lost, sent with our receiver reports."""
        playout = self.playout
        if not isinstance(playout, StretchPlayout):
            return b""
        try:  # (the peer's sender learns our part; a figure must not cost the loss report)
            receive = self.delay_parts().receive_ms
        except Exception as exc:
            log.debug("no receiving delay for the XR: %s", exc)
            receive = None
        return playout.xr_report(rtcp_ssrc, None if receive is None else receive / 1000)

    def report_early(self, send_now: Callable[[], None]) -> None:
        """How to send :meth:`xr_report` at once (a loss after a clean stretch)."""
        if isinstance(self.playout, StretchPlayout):
            self.playout.on_loss = send_now

    def play_track(self, track: MediaStreamTrack) -> None:
        """aiortc's pipeline: play its decoded frames."""
        self.receiver.start(track)

    def set_flow(self, mode: FlowMode) -> None:
        """Hold and resume (:mod:`softphone.core.hold`).

        ``FLOWING``: send the source, play what arrives. ``HELD`` (the peer
        agreed): no audio packet goes out, silence is played (none arrives).
        ``MUTED`` (a peer that does not know hold): silence goes out, silence
        is played. Sinks that note holds (a recording) are told when audio
        stops or comes back.
        """
        before, self.flow = self.flow, mode
        self.send_gate.held = mode is FlowMode.HELD
        self.source.silenced = mode is FlowMode.MUTED
        self.receiver.silenced = mode is not FlowMode.FLOWING
        flowing = mode is FlowMode.FLOWING
        if flowing != (before is FlowMode.FLOWING):
            for sink in self.sinks:
                if isinstance(sink, HeldNoting):
                    sink.note_held(not flowing)

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

    def voice_stats(self) -> VoiceStats | None:
        """The voice processor's state (None: the source is not a microphone)."""
        return None if self.voice is None else self.voice.stats()

    def device_stats(self) -> dict[str, Any]:
        """Rates, latencies, underruns and overflows of the sound devices (if any)."""
        return device_stats(self.source, self.output)

    def delay_parts(self, rtt_ms: float | None = None) -> DelayParts:
        """This end's parts of the mouth-to-ear delay (:mod:`softphone.media.delay`);
        ``rtt_ms``: the round trip, if measured."""
        source, output, playout = self.source, self.output, self.playout
        mic = (source.measured_delay + (source.queued.value or 0.0)
               if isinstance(source, MicSource) else None)
        codec = None if self.sending is None else self.sending.codec_delay
        wait = playout.wait if isinstance(playout, StretchPlayout) else None
        return DelayParts(
            mic_ms=None if mic is None else mic * 1000,
            processing_ms=None if mic is None else (self.voice.delay if self.voice else 0.0) * 1000,
            frame_ms=FRAME_SAMPLES * 1000 / SAMPLE_RATE,
            codec_ms=None if codec is None else codec * 1000,
            network_ms=None if rtt_ms is None else rtt_ms / 2,
            jitter_buffer_ms=None if wait is None else wait * 1000,
            speaker_ms=output.measured_delay * 1000 if isinstance(output, SpeakerDriver)
            else None,
            peer_receive_ms=None if self.sending is None or self.sending.peer_receive_delay is None
            else self.sending.peer_receive_delay * 1000)

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
        # A source may outlive the call (a phone's microphone): it lets go of us, and
        # whom we told goes too (no cycle keeps the ended call for the collector).
        self.source.remove_lost_listener(self._device_lost)
        self.on_device_lost = None
        self.receiver.on_output_lost = None
        self.handover.finish()
        for sink in self.receiver.sinks:
            try:
                sink.close()
            except Exception:
                log.exception("closing %r failed", sink)
