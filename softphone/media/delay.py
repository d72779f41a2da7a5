"""Where one end's share of the mouth-to-ear delay goes, part by part (sans I/O).

A call's delay one way is the talker's end sending (its microphone's device
buffer, the voice processing, the 20 ms frame that is sent once all of it
was said, the encoder's look-ahead), the network, and the listener's end
receiving (how long packets wait in the jitter buffer for their turn, the
speaker's device buffer). Each end knows its own parts: :class:`DelayParts`
holds them, the network's as half the round trip. The talker's
``send_ms``, the network and the listener's ``receive_ms`` add up to that
direction's mouth to ear (``benchmarks/mouth_to_ear.py`` sets them beside
the delay it measures). Our receiver tells the sender its ``receive_ms`` in
the RTCP XR it sends anyway (the VoIP metrics block's end system delay), so
the talker can add it all up: :attr:`DelayParts.mouth_to_ear_ms`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

#: A device's delay from PortAudio's timestamps is believed from a little under zero
#: (their own jitter) up to this (seconds); anything else is a host API's nonsense.
MAX_DEVICE_DELAY = 1.0


def sane_delay(seconds: float) -> float | None:
    """``seconds`` worked out from PortAudio's timestamps, if believable (else None)."""
    return max(0.0, seconds) if -0.005 <= seconds < MAX_DEVICE_DELAY else None


def as_ms(seconds: float | None) -> float | None:
    """Seconds as milliseconds to 0.1 (None stays None), for the figures shown."""
    return None if seconds is None else round(seconds * 1000, 1)


class Smoothed:
    """The mean of a figure over about its last ``n`` values (exponential): cheap enough
    for an audio thread, and a float read whole from another."""

    __slots__ = ("_k", "value")

    def __init__(self, n: int = 50) -> None:
        #: None until the first value.
        self.value: float | None = None
        self._k = 1.0 / n

    def add(self, x: float | None) -> None:
        """One more value (None: none this time)."""
        if x is None:
            return
        v = self.value
        self.value = x if v is None else v + (x - v) * self._k


def _sum(*parts: float | None) -> float | None:
    known = [p for p in parts if p is not None]
    return sum(known) if known else None


@dataclass(frozen=True)
class DelayParts:
    """One end's parts of the delay (ms; None: not here, e.g. no microphone or no
    speaker, the codec and the jitter buffer with aiortc's own pipeline, no round trip
    measured yet)."""

    #: From the microphone until the call takes the frame (PortAudio's timestamps, and
    #: the wait for the event loop; else PortAudio's input latency).
    mic_ms: float | None = None
    #: Echo cancellation and noise suppression (0 when off).
    processing_ms: float | None = None
    #: A frame goes out once all of it was said.
    frame_ms: float | None = None
    #: The encoder's look-ahead.
    codec_ms: float | None = None
    #: Half the round trip.
    network_ms: float | None = None
    #: How long the packets played lately waited for their turn (mean, about 1 s).
    jitter_buffer_ms: float | None = None
    #: From the pull to the speaker (PortAudio's timestamps; else its output latency).
    speaker_ms: float | None = None
    #: The peer's receiving part, as it reports it (RTCP XR; our phones send it).
    peer_receive_ms: float | None = None

    @property
    def send_ms(self) -> float | None:
        """From this end's microphone to the network."""
        return _sum(self.mic_ms, self.processing_ms, self.frame_ms, self.codec_ms)

    @property
    def receive_ms(self) -> float | None:
        """From the network to this end's speaker."""
        return _sum(self.jitter_buffer_ms, self.speaker_ms)

    @property
    def mouth_to_ear_ms(self) -> float | None:
        """Our voice to the peer's ear: our sending, the network and the peer's
        receiving (None until the peer has said its part and a round trip was
        measured; sending a file or a tone, from the file: no microphone part)."""
        send, network, peer = self.send_ms, self.network_ms, self.peer_receive_ms
        return None if send is None or network is None or peer is None \
            else send + network + peer

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["send_ms"], out["receive_ms"] = self.send_ms, self.receive_ms
        out["mouth_to_ear_ms"] = self.mouth_to_ear_ms
        return {k: None if v is None else round(v, 1) for k, v in out.items()}
