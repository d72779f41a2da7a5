"""A hostile hub: it speaks docs/protocol.md, and bridges every call through itself.

The hub carries the SDP, so a hub that wants to listen can answer each side from
its OWN aiortc peer connection instead of passing the offer on: the caller's
offer is answered by the hub's peer connection facing the caller (as if from the
callee), and the hub sends the callee an offer from a second peer connection
(as if from the caller). Audio received on one is sent on the other. Both phones
connect, DTLS checks pass (each checks the certificate the hub announced), and
each hears the other: a man in the middle. Only the verification code
(:mod:`softphone.core.sas`) can tell, since each phone's fingerprint pair differs.

:class:`HostileHub` is an aiohttp app (not softphone's hub: its routing is
written here, so the hub under refactoring cannot change what it does). It
keeps the SDP each phone sent and the SDP it handed each phone, so a test can
compute the code each side would show (:meth:`HostileHub.fingerprints_seen`,
:meth:`HostileHub.expected_sas`) and, once the phones print their code, compare.
With ``bridge=False`` it is an honest relay that records the same things: the
control case, where both sides' codes must match.

This is a test adapter (real sockets, real aiortc peer connections); the only
thing it fakes is being a trustworthy hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from aiohttp import WSMsgType, web
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp

from softphone.core.sas import Fingerprint, Sas, derive_sas, sdp_fingerprint
from softphone.media.audio import Int16Array
from softphone.media.tracks import PacedSource

from .helpers import serve_app

log = logging.getLogger(__name__)

RATE = 48_000
FRAME = 960  # 20 ms
#: At most this much audio waits in a bridge track (older samples are dropped).
MAX_BUFFER_SAMPLES = RATE // 2


class BridgeTrack(PacedSource):
    """Audio the hub sends one phone: what it receives from the other, 20 ms at a time.

    Silence until the other side's track is there (and whenever it runs dry).
    """

    def __init__(self) -> None:
        super().__init__()  # PacedSource: paced by the clock, 20 ms frames
        self._buffer = bytearray()  # s16 mono 48 kHz
        self._feeder: asyncio.Task[None] | None = None
        #: Frames received from the other side and relayed.
        self.relayed_frames = 0

    def feed_from(self, source: MediaStreamTrack) -> None:
        if self._feeder is None:
            self._feeder = asyncio.create_task(self._feed(source), name="hostile-bridge-feed")

    async def _feed(self, source: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await source.recv()
                if not isinstance(frame, av.AudioFrame):
                    continue
                for out in resampler.resample(frame):
                    self._buffer += out.to_ndarray().tobytes()
                self.relayed_frames += 1
                excess = len(self._buffer) - 2 * MAX_BUFFER_SAMPLES
                if excess > 0:
                    del self._buffer[:excess]

    def next_samples(self, count: int) -> Int16Array:
        """The next ``count`` samples relayed from the other side (silence if short)."""
        want = 2 * count
        chunk = bytes(self._buffer[:want])
        del self._buffer[:want]
        return np.frombuffer(chunk + bytes(want - len(chunk)), dtype=np.int16)

    def stop(self) -> None:
        super().stop()
        if self._feeder is not None:
            self._feeder.cancel()


@dataclass
class Leg:
    """What one real phone exchanged about its media, as the hub saw it."""

    phone: str
    #: The SDP the phone sent (its offer or answer): its own fingerprint.
    sent_sdp: str | None = None
    #: The SDP the hub handed the phone (as if from its peer): the fingerprint it checks.
    received_sdp: str | None = None

    def fingerprints(self) -> tuple[Fingerprint, Fingerprint]:
        """(the phone's own, the one it was given) sha-256 fingerprints."""
        if self.sent_sdp is None or self.received_sdp is None:
            raise LookupError(f"{self.phone}: the SDP exchange did not happen "
                              f"(sent {self.sent_sdp is not None}, "
                              f"received {self.received_sdp is not None})")
        return sdp_fingerprint(self.sent_sdp), sdp_fingerprint(self.received_sdp)


@dataclass
class Bridge:
    """One call the hub sits in the middle of (``bridge=True``)."""

    caller: str
    callee: str
    to_caller: BridgeTrack = field(default_factory=BridgeTrack)
    to_callee: BridgeTrack = field(default_factory=BridgeTrack)
    pcs: dict[str, RTCPeerConnection] = field(default_factory=dict)  # by the phone faced
    #: Candidates that came before the remote description of the pc they are for.
    early: dict[str, list[Any]] = field(default_factory=dict)
    closed: bool = False

    async def close(self) -> None:
        self.closed = True
        self.to_caller.stop()
        self.to_callee.stop()
        for pc in self.pcs.values():
            await pc.close()


class HostileHub:
    """The hub of docs/protocol.md, except that it bridges calls (see the module doc)."""

    def __init__(self, *, bridge: bool = True) -> None:
        self.bridge = bridge
        self.clients: dict[str, web.WebSocketResponse] = {}
        #: What each phone sent and was handed, by phone id.
        self.legs: dict[str, Leg] = {}
        #: Every call bridged, in order.
        self.bridges: list[Bridge] = []
        #: Exceptions from message handlers (a test should assert there are none).
        self.errors: list[BaseException] = []
        self.app = web.Application()
        self.app.add_routes([web.get("/ws", self._ws), web.get("/ice-servers", self._ice),
                             web.get("/healthz", self._healthz)])
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._runner, self.port = await serve_app(self.app, host, port)
        return self.port

    async def stop(self) -> None:
        for bridge in self.bridges:
            await bridge.close()
        for ws in list(self.clients.values()):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- what a test asks ----------------------------------------------------

    def fingerprints_seen(self, phone: str) -> tuple[Fingerprint, Fingerprint]:
        """(``phone``'s own fingerprint, the one it was handed as its peer's)."""
        if phone not in self.legs:
            raise LookupError(f"{phone} exchanged no SDP through this hub")
        return self.legs[phone].fingerprints()

    def expected_sas(self, phone: str) -> Sas:
        """The verification code ``phone`` derives from the fingerprints it used."""
        return derive_sas(*self.fingerprints_seen(phone))

    def relayed_frames(self) -> dict[str, int]:
        """Audio frames the hub received from each phone and sent on to the other."""
        out: dict[str, int] = {}
        for b in self.bridges:
            out[b.caller] = out.get(b.caller, 0) + b.to_callee.relayed_frames
            out[b.callee] = out.get(b.callee, 0) + b.to_caller.relayed_frames
        return out

    # -- HTTP ----------------------------------------------------------------

    async def _ice(self, request: web.Request) -> web.Response:
        return web.json_response({"iceServers": []})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "clients": len(self.clients)})

    # -- signaling -----------------------------------------------------------

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        me = request.query.get("id", "")
        old = self.clients.get(me)
        self.clients[me] = ws
        if old is not None:
            await old.close(code=1008, message=b"replaced")
        try:
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    continue
                try:
                    message = json.loads(frame.data)
                except ValueError:
                    continue
                if isinstance(message, dict) and isinstance(message.get("to"), str):
                    try:  # one at a time, in order (an offer takes a moment)
                        await self._handle(me, message)
                    except Exception as exc:
                        log.warning("hostile hub: %s from %s failed: %r",
                                    message.get("type"), me, exc)
                        self.errors.append(exc)
        finally:
            if self.clients.get(me) is ws:
                del self.clients[me]
        return ws

    async def _send(self, to: str, type_: str, sender: str, data: Any = None) -> bool:
        ws = self.clients.get(to)
        if ws is None or ws.closed:
            return False
        out: dict[str, Any] = {"type": type_, "to": to, "from": sender}
        if data is not None:
            out["data"] = data
        await ws.send_str(json.dumps(out))
        return True

    def _leg(self, phone: str) -> Leg:
        return self.legs.setdefault(phone, Leg(phone))

    def _bridge_of(self, phone: str) -> Bridge | None:
        for b in reversed(self.bridges):
            if phone in (b.caller, b.callee):
                return b
        return None

    async def _handle(self, me: str, message: dict[str, Any]) -> None:
        type_, to, data = message.get("type"), message["to"], message.get("data")
        sdp = data.get("sdp") if isinstance(data, dict) else None
        if type_ in ("offer", "answer") and isinstance(sdp, str):
            self._leg(me).sent_sdp = sdp
            if self.bridge:
                await (self._intercept_offer(me, to, sdp) if type_ == "offer"
                       else self._intercept_answer(me, sdp))
                return
            self._leg(to).received_sdp = sdp
        elif type_ == "candidate" and self.bridge:
            await self._intercept_candidate(me, data)
            return
        delivered = await self._send(to, str(type_), me, data)
        if not delivered and type_ != "hangup":
            ws = self.clients.get(me)
            if ws is not None and not ws.closed:
                await ws.send_str(json.dumps({"type": "error", "data": {
                    "code": "offline", "message": f"{to} is not connected", "ref": type_,
                    "to": to}}))
        if type_ in ("hangup", "call-reject"):
            bridge = self._bridge_of(me)
            if bridge is not None and not bridge.closed:
                await bridge.close()

    def _new_pc(self, bridge: Bridge, facing: str, sending: BridgeTrack,
                on_track: Callable[[MediaStreamTrack], None]) -> RTCPeerConnection:
        pc = RTCPeerConnection()  # no ICE servers: host candidates, as the phones here
        bridge.pcs[facing] = pc
        pc.addTrack(sending)

        @pc.on("track")
        def track(received: MediaStreamTrack) -> None:
            if received.kind == "audio":
                on_track(received)

        return pc

    async def _intercept_offer(self, caller: str, callee: str, offer_sdp: str) -> None:
        """Answer ``caller`` ourselves, and offer ``callee`` from a second peer connection."""
        bridge = Bridge(caller, callee)
        self.bridges.append(bridge)
        pc_caller = self._new_pc(bridge, caller, bridge.to_caller, bridge.to_callee.feed_from)
        pc_callee = self._new_pc(bridge, callee, bridge.to_callee, bridge.to_caller.feed_from)
        await pc_caller.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        await self._add_early(bridge, caller)
        await pc_caller.setLocalDescription(await pc_caller.createAnswer())
        answer = pc_caller.localDescription.sdp
        self._leg(caller).received_sdp = answer
        await self._send(caller, "answer", callee, {"type": "answer", "sdp": answer})
        await pc_callee.setLocalDescription(await pc_callee.createOffer())
        offer = pc_callee.localDescription.sdp
        self._leg(callee).received_sdp = offer
        if not await self._send(callee, "offer", caller, {"type": "offer", "sdp": offer}):
            log.info("hostile hub: %s left before our offer", callee)

    async def _intercept_answer(self, callee: str, answer_sdp: str) -> None:
        bridge = self._bridge_of(callee)
        if bridge is None or callee not in bridge.pcs:
            log.info("hostile hub: answer from %s outside a bridged call, dropped", callee)
            return
        await bridge.pcs[callee].setRemoteDescription(
            RTCSessionDescription(sdp=answer_sdp, type="answer"))
        await self._add_early(bridge, callee)

    async def _intercept_candidate(self, phone: str, data: Any) -> None:
        bridge = self._bridge_of(phone)
        text = str(data.get("candidate") or "") if isinstance(data, dict) else ""
        if bridge is None or not text:
            return  # end of candidates, or nothing to add it to
        if text.startswith("candidate:"):
            text = text[len("candidate:"):]
        candidate = candidate_from_sdp(text)
        candidate.sdpMid = data.get("sdpMid")
        candidate.sdpMLineIndex = data.get("sdpMLineIndex")
        pc = bridge.pcs.get(phone)
        if pc is None or pc.remoteDescription is None:
            bridge.early.setdefault(phone, []).append(candidate)
            return
        await pc.addIceCandidate(candidate)

    async def _add_early(self, bridge: Bridge, phone: str) -> None:
        for candidate in bridge.early.pop(phone, []):
            await bridge.pcs[phone].addIceCandidate(candidate)
