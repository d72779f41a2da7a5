"""The media adapter: one aiortc ``RTCPeerConnection`` per call.

:class:`MediaSession` does what the call machine's media actions ask
(make an offer, answer one, apply an answer, add a trickled candidate,
close) and reports back through two callbacks: the connection is up, or it
failed. It knows nothing of the hub or of call states. The call's audio
(:class:`~softphone.media.audiopath.CallAudio`: source, playout, devices,
sinks, settings) is plugged into the connection here and owned by the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiortc import RTCCertificate as RTCCertificate  # (a call's DTLS certificate)
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from aiortc.sdp import candidate_from_sdp

from softphone.core.iceurl import check_ice_url
from softphone.core.protocol import IceCandidate
from softphone.media import aiortc_seams, dtmf_rtp, rtpsend
from softphone.media.audiopath import CallAudio
from softphone.media.audiopath import MediaConfig as MediaConfig
from softphone.media.sending import SendStats

aiortc_seams.install()
dtmf_rtp.install()  # telephone events (DTMF) beside the audio codecs
rtpsend.check()  # now (it reads aiortc's source), not in the first call's setup

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
        urls = [u for u in urls if isinstance(u, str) and _usable(u)]
        if not urls:
            continue
        username = entry.get("username")
        credential = entry.get("credential")
        out.append(RTCIceServer(urls=urls,
                                username=username if isinstance(username, str) else None,
                                credential=credential if isinstance(credential, str) else None))
    return out


def _usable(url: str) -> bool:
    """A STUN/TURN URL aiortc can take (one it cannot fails the whole call): else
    left out, with a warning (a hub handing it out is misconfigured)."""
    try:
        check_ice_url(url)
    except ValueError as exc:
        log.warning("ignoring an ICE server: %s", exc)
        return False
    return True


@dataclass(frozen=True)
class MediaStats:
    """What a call's media did, from aiortc's getStats()."""

    packets_sent: int = 0
    packets_received: int = 0
    packets_lost: int = 0
    jitter_ms: float | None = None
    rtt_ms: float | None = None
    frames_received: int = 0
    #: Our playout (None with aiortc's pipeline): frames concealed / rebuilt from FEC,
    #: and the jitter buffer's delay and target at the time of the reading.
    concealed: int | None = None
    recovered: int | None = None
    buffer_ms: float | None = None
    target_ms: float | None = None
    #: Lost packets replaced by their copy in a later packet (RED).
    repaired: int | None = None
    #: RTP payload bytes sent (Opus, or RED with its copies).
    bytes_sent: int = 0
    #: What we send with now: the adaptation's level, bitrate, RED (our pipeline).
    sending: SendStats | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "packets_sent": self.packets_sent,
            "bytes_sent": self.bytes_sent,
            "packets_received": self.packets_received,
            "packets_lost": self.packets_lost,
            "jitter_ms": None if self.jitter_ms is None else round(self.jitter_ms, 2),
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 2),
            "frames_received": self.frames_received,
            "concealed": self.concealed,
            "recovered": self.recovered,
            "buffer_ms": None if self.buffer_ms is None else round(self.buffer_ms, 1),
            "target_ms": None if self.target_ms is None else round(self.target_ms, 1),
            "repaired": self.repaired,
            "sending": None if self.sending is None else self.sending.to_json(),
        }


@dataclass(frozen=True)
class IceCandidateInfo:
    """One end of the selected ICE candidate pair."""

    type: str  # host, srflx, prflx or relay
    protocol: str  # udp or tcp
    address: str
    port: int
    #: For a local relay candidate: how we reach the TURN server (udp or tcp).
    relay_protocol: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "protocol": self.protocol,
                               "address": self.address, "port": self.port}
        if self.relay_protocol is not None:
            out["relay_protocol"] = self.relay_protocol
        return out

    def __str__(self) -> str:
        via = f" (TURN over {self.relay_protocol})" if self.relay_protocol else ""
        return f"{self.type}/{self.protocol}{via}"


@dataclass(frozen=True)
class CandidatePair:
    """The ICE candidate pair a call's media uses."""

    local: IceCandidateInfo
    remote: IceCandidateInfo

    def to_json(self) -> dict[str, Any]:
        return {"local": self.local.to_json(), "remote": self.remote.to_json()}

    def __str__(self) -> str:
        return f"{self.local} <-> {self.remote}"


def candidate_pair_from_seam(raw: dict[str, Any]) -> CandidatePair:
    """aioice's nominated pair (:func:`aiortc_seams.selected_candidate_pair`) -> the report.

    aioice pairs from the base candidate, so a path that leaves through our
    NAT shows as a local ``host`` candidate. When we have a server-reflexive
    candidate with that base at another address (we are behind NAT) and the
    peer is reached at a reflexive or relayed address (beyond our NAT), the
    local end is reported as ``srflx``, as browsers do.
    """
    local, remote = raw["local"], raw["remote"]
    local_type = local["type"]
    if local_type == "host" and remote["type"] in ("srflx", "prflx", "relay"):
        for c in raw.get("local_candidates", []):
            if c["type"] == "srflx" and c["related_address"] == local["address"] and \
                    c["related_port"] == local["port"] and \
                    (c["address"], c["port"]) != (local["address"], local["port"]):
                local = c
                local_type = "srflx"
                break
    return CandidatePair(
        local=IceCandidateInfo(local_type, local["protocol"], local["address"], local["port"],
                               raw.get("relay_protocol") if local_type == "relay" else None),
        remote=IceCandidateInfo(remote["type"], remote["protocol"], remote["address"],
                                remote["port"]),
    )


def codec_of(sdp: str | None) -> str:
    """The audio codec an SDP leads with (``opus/48000``, ``opus/48000+red``), or ``?``."""
    if not sdp:
        return "?"
    m = re.search(r"^m=audio \S+ \S+ ([\d ]+)", sdp, re.M)
    if m is None:
        return "?"
    names = []
    for pt in m.group(1).split()[:2]:
        rtpmap = re.search(rf"^a=rtpmap:{pt} ([^/\s]+)/(\d+)", sdp, re.M)
        names.append(f"{rtpmap.group(1).lower()}/{rtpmap.group(2)}" if rtpmap else "?")
    if names[0] == "red/48000" and len(names) > 1:  # RED carries the codec after it
        return f"{names[1]}+red"
    return names[0]


async def _gather_all(gatherers: set[Any]) -> None:
    # return_exceptions: a gatherer cancelled by close() must not leave an
    # unretrieved exception behind (asyncio would print it).
    await asyncio.gather(*(g.gather() for g in gatherers), return_exceptions=True)


class MediaSession:
    """One peer connection carrying one audio track each way."""

    def __init__(self, ice_servers: Sequence[dict[str, Any]], audio: CallAudio, *,
                 relay_only: bool = False,
                 on_connected: Callable[[], None] | None = None,
                 on_failed: Callable[[str], None] | None = None,
                 certificate: RTCCertificate | None = None) -> None:
        self.audio = audio
        self.config = audio.config
        if self.config.pipeline == "softphone":
            aiortc_seams.install_voice_codec()  # once: our Opus fmtp and RED
        rtc_config = RTCConfiguration(
            iceServers=ice_servers_from_json(ice_servers),
            iceTransportPolicy=RTCIceTransportPolicy.RELAY if relay_only
            else RTCIceTransportPolicy.ALL,
        )
        self.pc = RTCPeerConnection(configuration=rtc_config)
        if certificate is not None:  # before addTrack makes the DTLS transport
            aiortc_seams.use_certificate(self.pc, certificate)
        #: Our DTLS certificate. A media restart's connections are given the call's first
        #: (``certificate``), so the verification code (:mod:`softphone.core.sas`) stays.
        self.certificate = aiortc_seams.certificate_of(self.pc)
        self._gathering: asyncio.Future[Any] | None = None
        self._on_connected = on_connected
        self._on_failed = on_failed
        self._candidate_tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.connected_at: float | None = None
        self.relay_only = relay_only
        #: The ICE pair in use, set when the connection is up (None before).
        self.candidate_pair: CandidatePair | None = None
        #: This connection's share of the call's audio: whether it sends the source and
        #: is played (a media restart adds a connection while the old one still plays).
        self.generation = audio.handover.open()
        sender = self.pc.addTrack(self.generation.track)
        aiortc_seams.encode_with(sender, audio.encoder_for)
        if audio.sending is not None:  # the peer's reports drive what we send
            aiortc_seams.watch_reports(sender, audio.sending.on_receiver_report,
                                       audio.sending.on_xr)
        #: The call's DTMF both ways (sent by our send loop, received by the tap).
        self.dtmf = dtmf_rtp.DtmfChannel()
        rtpsend.send_with(sender, self.dtmf, audio.send_gate)  # (stopped on hold)
        aiortc_seams.limit_gathering(self.pc, self.config.gather_timeout)
        aiortc_seams.speed_up_setup(self.pc, self.config.fast_setup)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "audio":
            return
        rtp_receiver = next((r for r in self.pc.getReceivers() if r.track is track), None)
        if rtp_receiver is not None and self.config.impairment is not None:
            aiortc_seams.impair_receiver(rtp_receiver, self.config.impairment)
        generation = self.generation
        if rtp_receiver is not None:
            generation.watch(rtp_receiver)
        if self.config.pipeline == "softphone" and rtp_receiver is not None:
            handler = generation.gate(self.audio.packet_handler())
            aiortc_seams.tap_receiver(rtp_receiver, handler)
            generation.early_report = aiortc_seams.report_with(rtp_receiver,
                                                               self.audio.xr_report)
            if self.audio.handover.playing is generation:
                self.audio.report_early(generation.early_report)
            dtmf_rtp.route_events(rtp_receiver, self.dtmf, fill=handler)
        else:
            played = generation.remote_track(track)
            if played is not None:  # the call's first connection: play the call's track
                self.audio.play_track(played)
            if rtp_receiver is not None:
                dtmf_rtp.route_events(rtp_receiver, self.dtmf)

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        log.info("peer connection %s", state)
        if state == "connected":
            self.connected_at = time.monotonic()
            self.candidate_pair = self.selected_candidate_pair()
            log.info("media via %s", self.candidate_pair)
            if self._on_connected:
                self._on_connected()
        elif state == "failed" and not self._closed and self._on_failed:
            errors = self.turn_errors()
            self._on_failed(f"ice-failed; {errors[0]}" if errors else "ice-failed")

    @property
    def codec(self) -> str | None:
        """The audio codec both ways: the first of the answer's (``opus/48000+red``)."""
        for desc in (self.pc.localDescription, self.pc.remoteDescription):
            if desc is not None and desc.type == "answer":
                return codec_of(desc.sdp)
        return None

    def descriptions(self) -> tuple[str | None, str | None]:
        """The local and remote SDP as set on the peer connection (None until set).

        Their DTLS fingerprints give the call's verification code
        (:mod:`softphone.core.sas`).
        """
        local, remote = self.pc.localDescription, self.pc.remoteDescription
        return (None if local is None else str(local.sdp),
                None if remote is None else str(remote.sdp))

    def _prefer_red(self, enabled: bool) -> None:
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "audio":
                aiortc_seams.prefer_red(transceiver, enabled)

    def selected_candidate_pair(self) -> CandidatePair | None:
        """The candidate pair ICE selected (None until it has selected one)."""
        try:
            raw = aiortc_seams.selected_candidate_pair(self.pc)
        except Exception as exc:  # a half-built or closed connection
            log.debug("no candidate pair: %s", exc)
            return None
        return None if raw is None else candidate_pair_from_seam(raw)

    def turn_errors(self) -> list[str]:
        """Why TURN servers refused to give us a relay (empty if none did)."""
        return aiortc_seams.turn_errors(self.pc)

    def _check_relay(self, sdp: str) -> None:
        """Relay only and no relay candidate: fail now rather than at the setup timeout."""
        if not self.relay_only or " typ relay" in sdp or self._on_failed is None:
            return
        errors = self.turn_errors()
        self._on_failed("no relay candidate: " + (errors[0] if errors else
                                                  "relay only, but no TURN server is set"))

    def pregather(self) -> None:
        """Start gathering ICE candidates now, before there is an offer or answer to make.

        The caller gathers while the phone rings and the callee as soon as it
        accepts, so a slow or dead STUN server costs the call its gathering
        time once, not once per side. (RTCIceGatherer.gather is public ORTC API.)
        """
        if self._gathering is None:
            gatherers = {t.sender.transport.transport.iceGatherer
                         for t in self.pc.getTransceivers()}
            self._gathering = asyncio.ensure_future(_gather_all(gatherers))

    async def _gathered(self) -> None:
        # aiortc's own gathering returns at once while ours is under way, without
        # its candidates: wait for ours before any setLocalDescription.
        if self._gathering is not None:
            await self._gathering

    async def create_offer(self) -> str:
        """Make our offer with every candidate in it (aiortc does not trickle)."""
        await self._gathered()
        # Lead with RED (Opus plus copies of earlier frames) when we send it.
        self._prefer_red(self.config.red)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self._check_relay(str(self.pc.localDescription.sdp))
        return str(self.pc.localDescription.sdp)

    async def accept_offer(self, sdp: str) -> str:
        """Apply the remote offer and return our answer."""
        with aiortc_seams.red_allowed(self.config.red):  # an answer follows the offer's order
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        if self.config.fast_setup.dtls_server_answers:
            aiortc_seams.answer_as_dtls_server(self.pc, sdp)
        await self._gathered()
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        self._check_relay(str(self.pc.localDescription.sdp))
        return str(self.pc.localDescription.sdp)

    async def apply_answer(self, sdp: str) -> None:
        with aiortc_seams.red_allowed(self.config.red):
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
        frames = self.audio.receiver.frames
        try:
            report = await self.pc.getStats()
        except Exception as exc:  # closed or half-built connection
            log.debug("getStats failed: %s", exc)
            return MediaStats(frames_received=frames)
        sent = received = lost = sent_bytes = 0
        jitter: float | None = None
        rtt: float | None = None
        for stat in report.values():
            kind = getattr(stat, "type", "")
            if kind == "outbound-rtp":
                sent += int(stat.packetsSent)
                sent_bytes += int(stat.bytesSent)
            elif kind == "inbound-rtp":
                received += int(stat.packetsReceived)
                lost += max(0, int(stat.packetsLost))
                jitter = float(stat.jitter) / 48.0  # RTP clock units (48 kHz) -> ms
            elif kind == "remote-inbound-rtp" and stat.roundTripTime is not None:
                rtt = float(stat.roundTripTime) * 1000.0
        sending = None if self.audio.sending is None else self.audio.sending.stats
        playout = self.audio.playout
        if playout is None:
            return MediaStats(sent, received, lost, jitter, rtt, frames, bytes_sent=sent_bytes,
                              sending=sending)
        buffer = playout.buffer.stats
        from softphone.media.playout import StretchPlayout

        if isinstance(playout, StretchPlayout):  # (its own figure: audio only, no keys)
            jitter = playout.jitter.value * 1000.0
        return MediaStats(sent, received, lost, jitter, rtt, frames,
                          buffer.concealed, buffer.recovered,
                          playout.delay * 1000, playout.target * 1000,
                          buffer.repaired, sent_bytes, sending)

    async def close(self) -> None:
        """Close the peer connection (the call's audio is closed by its owner)."""
        if self._closed:
            return
        self._closed = True
        self._on_connected = self._on_failed = None  # (they hold the call: no cycle)
        self.generation.close()  # (its stand-in track ends; the call's source goes on)
        self.dtmf.close()
        for task in list(self._candidate_tasks):
            task.cancel()
        if self._gathering is not None and not self._gathering.done():
            # Let gathering finish (a call that ends while it rings: busy): aioice
            # cancelled while binding its sockets leaks the ones already bound.
            await asyncio.wait({self._gathering}, timeout=self.config.gather_timeout + 0.5)
            self._gathering.cancel()
        with contextlib.suppress(Exception):
            await self.pc.close()
        # Its OpenSSL connection and SRTP sessions (~170 kB, in C) now, not when the
        # garbage collector frees the call's objects (in cycles): issue 15's soak.
        aiortc_seams.release_closed(self.pc)
        # And the cycles among its objects (and back to ours): the call's objects are
        # freed with the call, not some 60 calls later by the collector (issue 15).
        aiortc_seams.unlink_closed(self.pc)
