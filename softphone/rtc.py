"""The media adapter: one aiortc ``RTCPeerConnection`` per call.

:class:`MediaSession` does what the call machine's media actions ask
(make an offer, answer one, apply an answer, add a trickled candidate,
close) and reports back through two callbacks: the connection is up, or it
failed. It knows nothing of the hub or of call states.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from aiortc.sdp import candidate_from_sdp

from . import aiortc_seams
from .protocol import IceCandidate
from .tracks import AudioReceiver

aiortc_seams.install()

log = logging.getLogger(__name__)


def ice_servers_from_json(servers: Sequence[dict[str, Any]]) -> list[RTCIceServer]:
    """RTCConfiguration-style dicts (as ``/ice-servers`` returns) -> aiortc objects."""
    out: list[RTCIceServer] = []
    for entry in servers:
        urls = entry.get("urls") or entry.get("url")
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list):
            continue
        urls = [u for u in urls if isinstance(u, str) and u.split(":", 1)[0] in
                ("stun", "stuns", "turn", "turns")]
        if not urls:
            continue
        username = entry.get("username")
        credential = entry.get("credential")
        out.append(RTCIceServer(urls=urls,
                                username=username if isinstance(username, str) else None,
                                credential=credential if isinstance(credential, str) else None))
    return out


@dataclass(frozen=True)
class MediaStats:
    """What a call's media did, from aiortc's getStats()."""

    packets_sent: int = 0
    packets_received: int = 0
    packets_lost: int = 0
    jitter_ms: float | None = None
    rtt_ms: float | None = None
    frames_received: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "packets_sent": self.packets_sent,
            "packets_received": self.packets_received,
            "packets_lost": self.packets_lost,
            "jitter_ms": None if self.jitter_ms is None else round(self.jitter_ms, 2),
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 2),
            "frames_received": self.frames_received,
        }


class MediaSession:
    """One peer connection carrying one audio track each way."""

    def __init__(self, ice_servers: Sequence[dict[str, Any]], source: MediaStreamTrack,
                 receiver: AudioReceiver, *, relay_only: bool = False,
                 on_connected: Callable[[], None] | None = None,
                 on_failed: Callable[[str], None] | None = None) -> None:
        config = RTCConfiguration(
            iceServers=ice_servers_from_json(ice_servers),
            iceTransportPolicy=RTCIceTransportPolicy.RELAY if relay_only
            else RTCIceTransportPolicy.ALL,
        )
        self.pc = RTCPeerConnection(configuration=config)
        self.source = source
        self.receiver = receiver
        self._on_connected = on_connected
        self._on_failed = on_failed
        self._candidate_tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.connected_at: float | None = None
        self.pc.addTrack(source)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self.receiver.start(track)

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        log.info("peer connection %s", state)
        if state == "connected":
            self.connected_at = time.monotonic()
            if self._on_connected:
                self._on_connected()
        elif state == "failed" and not self._closed and self._on_failed:
            self._on_failed("ice-failed")

    async def create_offer(self) -> str:
        """Make our offer with every candidate in it (aiortc does not trickle)."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept_offer(self, sdp: str) -> str:
        """Apply the remote offer and return our answer."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return str(self.pc.localDescription.sdp)

    async def apply_answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    def add_candidate(self, candidate: IceCandidate) -> None:
        """Add a trickled remote candidate, in the background.

        Never awaited by the caller: an mDNS (``.local``) candidate takes aioice
        up to a second to try to resolve, and signaling must not wait for it.
        """
        task = asyncio.create_task(self._add_candidate(candidate))
        self._candidate_tasks.add(task)
        task.add_done_callback(self._candidate_tasks.discard)

    async def _add_candidate(self, candidate: IceCandidate) -> None:
        if self._closed:
            return
        try:
            if candidate.is_end_of_candidates:
                await self.pc.addIceCandidate(None)
                return
            text = candidate.candidate.strip()
            if text.startswith("candidate:"):
                text = text[len("candidate:"):]
            parsed = candidate_from_sdp(text)
            parsed.sdpMid = candidate.sdp_mid
            parsed.sdpMLineIndex = candidate.sdp_mline_index
            if parsed.sdpMid is None and parsed.sdpMLineIndex is None:
                parsed.sdpMLineIndex = 0
            await self.pc.addIceCandidate(parsed)
        except Exception as exc:  # a bad candidate from the peer must not end the call
            log.info("ignoring remote candidate %r: %s", candidate.candidate[:80], exc)

    async def stats(self) -> MediaStats:
        try:
            report = await self.pc.getStats()
        except Exception as exc:  # closed or half-built connection
            log.debug("getStats failed: %s", exc)
            return MediaStats(frames_received=self.receiver.frames)
        sent = received = lost = 0
        jitter: float | None = None
        rtt: float | None = None
        for stat in report.values():
            kind = getattr(stat, "type", "")
            if kind == "outbound-rtp":
                sent += int(stat.packetsSent)
            elif kind == "inbound-rtp":
                received += int(stat.packetsReceived)
                lost += max(0, int(stat.packetsLost))
                jitter = float(stat.jitter) / 48.0  # RTP clock units (48 kHz) -> ms
            elif kind == "remote-inbound-rtp" and stat.roundTripTime is not None:
                rtt = float(stat.roundTripTime) * 1000.0
        return MediaStats(sent, received, lost, jitter, rtt, self.receiver.frames)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in list(self._candidate_tasks):
            task.cancel()
        await self.receiver.stop()
        with contextlib.suppress(Exception):
            await self.pc.close()
        self.source.stop()
