"""What one call sends: the voice encoder that follows the loss the peer reports.

:class:`SendControl` is one call's adapter around the sans-I/O
:class:`softphone.core.adapt.Adaptation`: the aiortc seams hand it the
peer's RTCP receiver reports about our stream
(:func:`softphone.media.aiortc_seams.watch_reports`), its XR burst figures
and any REMB estimate, with the time taken from the call's clock; it keeps
the current :class:`~softphone.core.adapt.Decision`. The call's
:class:`AdaptiveEncoder` (the aiortc encoder our send loop calls) applies
the decision at the next frame: Opus bitrate, in-band FEC and expected loss
as libopus CTLs, and the RED depth and spacing of the copies.

A clean path sends one stream and no copy (RED with no redundant block: one
byte a packet); ``EncoderSettings(adapt=False)`` keeps the settings given.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final

import numpy as np

from softphone.core.adapt import (
    OPUS_MAX_BITRATE,
    Adaptation,
    AdaptConfig,
    BandwidthCap,
    BurstReport,
    Decision,
    Event,
    LossFeedback,
    ReceiverReport,
)
from softphone.media import libopus, red, rtcp_xr
from softphone.media.audio import FRAME_MS, FRAME_SAMPLES, Int16Array
from softphone.media.opus import EncoderSettings, OpusEncoder, profile_of
from softphone.media.pcm import MonoConverter, SampleFifo

log = logging.getLogger(__name__)

#: Frames of history a RED packer keeps: the farthest a copy may reach back
#: (the header's 14-bit timestamp offset: 17 frames of 20 ms).
RED_HISTORY: Final = red.MAX_OFFSET // FRAME_SAMPLES


@dataclass(frozen=True, slots=True)
class SendStats:
    """What a call sends with now (for the status line and ``--json``)."""

    level: int  # the adaptation's level (0: clean)
    bitrate: int  # Opus target, bit/s
    red_depth: int  # copies of earlier frames in each packet
    distance: int  # frames between a packet's frame and its newest copy
    fec: bool
    loss: float  # the peer's recent loss (fraction), as the adaptation pools it
    burst: float  # the peer's mean run of lost packets (0: none reported)
    rtt_ms: float | None
    adapting: bool  # False: fixed settings (adapt off)

    def to_json(self) -> dict[str, Any]:
        return {"level": self.level, "bitrate": self.bitrate, "red_depth": self.red_depth,
                "distance": self.distance, "fec": self.fec, "loss": round(self.loss, 4),
                "burst": round(self.burst, 2),
                "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 1),
                "adapting": self.adapting}


class SendControl:
    """One call's send-side adaptation: reports in (from the seams), decisions out.

    ``clock``: seconds, monotonic (the events' time). Until :meth:`start`
    (the codec is agreed) it holds the settings' fixed decision.
    """

    def __init__(self, settings: EncoderSettings | None = None, *,
                 lib: libopus.Libopus | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or EncoderSettings()
        self.lib = lib or libopus.load()
        self.clock = clock
        self.adaptation: Adaptation | None = None
        self.decision: Decision = self.settings.fixed()
        self.max_red_depth = self.settings.redundancy
        #: The encoder's look-ahead (seconds), once an encoder was made.
        self.codec_delay: float | None = None
        #: What the peer says it adds on the way to its ear (seconds; its RTCP XR).
        self.peer_receive_delay: float | None = None

    def start(self, red_agreed: bool) -> Decision:
        """The codec is agreed: RED (copies possible) or plain Opus. The first decision."""
        s = self.settings
        self.max_red_depth = s.redundancy if red_agreed else 0
        if s.adapt:
            config = replace(s.adaptation or AdaptConfig(), profile=profile_of(self.lib),
                             max_bitrate=s.bitrate or OPUS_MAX_BITRATE,
                             max_red_depth=self.max_red_depth)
            self.adaptation = Adaptation(config, now=self.clock())
            self.decision = self.adaptation.decision
        else:
            fixed = s.fixed()
            depth = self.max_red_depth
            self.decision = Decision(fixed.level, depth, fixed.fec, fixed.expected_loss,
                                     fixed.bitrate, fixed.bitrate * (1 + depth))
        log.info("sending with %s (%s)", self.decision, self.lib.version)
        return self.decision

    # -- from the seams (on the event loop) ------------------------------------------

    def handle(self, event: Event) -> None:
        if self.adaptation is None:
            return
        decision = self.adaptation.handle(event)
        if decision is not None:
            log.info("adaptation: level %d, %d bit/s, RED %d (every %d), FEC %s",
                     decision.level, decision.bitrate, decision.red_depth,
                     decision.distance, "on" if decision.fec else "off")
            self.decision = decision

    def on_receiver_report(self, block: Any, arrival_ntp: int) -> None:
        """An RTCP report block about our stream (aiortc's ``RtcpReceiverInfo``)."""
        self.handle(ReceiverReport.from_rtcp(
            now=self.clock(), fraction_lost=block.fraction_lost,
            packets_lost=block.packets_lost, highest_sequence=block.highest_sequence,
            jitter=block.jitter, lsr=block.lsr, dlsr=block.dlsr, arrival_ntp=arrival_ntp))

    def on_burst(self, mean_run: float) -> None:
        """The peer's mean run of consecutive lost packets."""
        self.handle(BurstReport(self.clock(), mean_run))

    def on_xr(self, data: bytes, ssrc: int) -> None:
        """An RTCP packet with XR from the peer, about our stream ``ssrc``: the packets
        it lost since its previous XR, and how long their runs are."""
        for block in rtcp_xr.parse_xr(data):
            if block.ssrc != ssrc:
                continue
            if isinstance(block, rtcp_xr.LossSummary):
                if block.expected:
                    self.handle(LossFeedback(self.clock(), min(block.lost, block.expected),
                                             block.expected))
            else:
                if block.end_system_delay_ms:  # what the peer adds on the way to its ear
                    self.peer_receive_delay = block.end_system_delay_ms / 1000
                if block.gmin == 1:
                    self.on_burst(block.burst_duration_ms / FRAME_MS)

    def on_bandwidth(self, bitrate: float | None) -> None:
        """What the path takes (a REMB), or None."""
        self.handle(BandwidthCap(self.clock(), bitrate))

    # -- figures ------------------------------------------------------------------

    @property
    def stats(self) -> SendStats:
        d = self.decision
        a = self.adaptation
        return SendStats(level=d.level, bitrate=d.bitrate, red_depth=d.red_depth,
                         distance=d.distance, fec=d.fec,
                         loss=a.loss if a is not None else 0.0,
                         burst=a.burst if a is not None else 0.0,
                         rtt_ms=None if a is None or a.rtt is None else a.rtt * 1000,
                         adapting=a is not None)

    def encoder_for(self, mime_type: str, fmtp: dict[str, Any]) -> AdaptiveEncoder | None:
        """The encoder for a codec the call agreed (``audio/opus`` or ``audio/red``), or None."""
        mime = mime_type.lower()
        if mime == "audio/opus":
            self.start(red_agreed=False)
            return AdaptiveEncoder(self, None)
        if mime == "audio/red":
            pt = red.primary_payload_type(fmtp)
            if pt is None:
                raise ValueError(f"RED without a block payload type: {fmtp}")
            self.start(red_agreed=True)
            return AdaptiveEncoder(self, pt)
        return None


class AdaptiveEncoder:
    """aiortc ``Encoder`` for our voice: mono Opus, wrapped in RED when agreed.

    Every frame it takes the control's current decision (a new one is
    applied before the frame is encoded). ``red_payload_type``: the Opus
    payload type named in the agreed RED fmtp, or None for plain Opus.
    """

    def __init__(self, control: SendControl, red_payload_type: int | None) -> None:
        self.control = control
        self.opus = OpusEncoder(control.settings, control.lib)
        control.codec_delay = self.opus.delay
        self.red = None if red_payload_type is None else \
            red.RedPacker(red_payload_type, 0, FRAME_SAMPLES, history=RED_HISTORY)
        self._applied: Decision | None = None
        self._convert = MonoConverter()
        # At most four frames wait (frames that are not 20 ms, a resampler's delay).
        self._pending = SampleFifo(5 * FRAME_SAMPLES)
        self._frame: Int16Array = np.zeros(FRAME_SAMPLES, dtype=np.int16)  # reused
        self._timestamp = 0
        self._apply(control.decision)

    def _apply(self, decision: Decision) -> None:
        self.opus.apply(decision)
        if self.red is not None:
            self.red.depth = decision.red_depth
            self.red.spacing = decision.distance
        self._applied = decision

    def encode(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        decision = self.control.decision
        if decision is not self._applied:
            self._apply(decision)
        pending = self._pending
        pending.push(self._convert(frame))
        timestamp = self._timestamp
        # aiortc sends every payload of one call with one timestamp: one frame per call.
        if not pending.take_into(self._frame):
            return [], timestamp
        self._timestamp += FRAME_SAMPLES
        packet = self.opus.encode(self._frame)
        if self.red is not None:
            packet = self.red.wrap(timestamp, packet)
        return [packet], timestamp

    def pack(self, packet: Any) -> tuple[list[bytes], int]:
        raise NotImplementedError("AdaptiveEncoder only encodes raw frames")

    @property
    def target_bitrate(self) -> int:
        return self.opus.bitrate

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        """aiortc sets this from a REMB: a cap on what we send."""
        self.control.on_bandwidth(float(bitrate))
