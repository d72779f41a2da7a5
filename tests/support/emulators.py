"""Faithful stand-ins for the ORIGINAL calling system, for interop tests.

The system softphone replaces was a GoFiber hub plus two browser pages
(``callerA.html`` / ``callerB.html``). We cannot run them here, so:

* :class:`OriginalHub` is an aiohttp app that behaves like the Go hub,
  quirks included: it forwards ``{type, to, data}`` to ``to`` with ``from``
  set, silently drops messages for unknown ids and frames it cannot decode,
  never originates a message of its own (no ``error``), and a replaced
  connection's close deletes the id (the original bug).
* :class:`OriginalPage` is an aiortc client that behaves like the pages,
  quirks included: a fixed peer (``a`` <-> ``b``); the callee accepts first
  and grabs the microphone only afterwards (an offer that arrives before the
  microphone is answered receive-only); candidates are trickled; remote
  candidates that arrive before the remote description are dropped.

Neither uses softphone's signaling or call code: they only borrow its audio
tracks (:class:`~softphone.media.tracks.ToneSource`, :class:`~softphone.media.tracks.
AudioReceiver`, :class:`~softphone.media.tracks.CaptureSink`) to send and check tones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import numpy as np
from aiohttp import WSMsgType, web
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

import softphone.media.rtc  # noqa: F401 - installs softphone.media.aiortc_seams (caps dead-STUN gathering)
from softphone.media.audio import FRAME_SAMPLES, SAMPLE_RATE
from softphone.media.tracks import AudioReceiver, CaptureSink, ToneSource

from .helpers import serve_app

log = logging.getLogger(__name__)

#: What the original hub's ``GET /ice-servers`` returned.
ORIGINAL_ICE_SERVERS: list[dict[str, Any]] = [{"urls": "stun:stun.l.google.com:19302"}]

#: Seconds of audio in each frame aiortc's decoder hands out (20 ms).
FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE


# ------------------------------------------------------------------ hub ---


def _go_string(obj: dict[str, Any], key: str) -> str | None:
    """A Go ``string`` struct field: missing/null -> "", a non-string -> unmarshal error."""
    value = obj.get(key)
    if value is None:
        return ""
    return value if isinstance(value, str) else None


def _go_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def go_forward(raw: str | bytes, sender: str, *, null_data: bool = True) -> tuple[str, str] | None:
    """What the Go hub does with one frame: ``(to, text to deliver)``, or None (ignored).

    The hub unmarshals into ``struct{Type, To, From string; Data interface{}}``
    (field order type, to, from, data; ``data`` is ``null`` when absent unless
    ``null_data`` is False), sets ``From`` and marshals it again. Go's encoder
    sorts the keys of nested objects and escapes ``<``, ``>``, ``&``, U+2028 and
    U+2029; so do we. Anything ``json.Unmarshal`` would refuse is dropped.
    """
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if obj is None:
        obj = {}  # json.Unmarshal of null into a struct is a no-op
    if not isinstance(obj, dict):
        return None
    type_, to = _go_string(obj, "type"), _go_string(obj, "to")
    if type_ is None or to is None or _go_string(obj, "from") is None:
        return None
    out: dict[str, Any] = {"type": type_, "to": to, "from": sender}
    if "data" in obj or null_data:
        out["data"] = obj.get("data")
    text = "{" + ",".join(f"{json.dumps(k)}:{_go_json(v)}" for k, v in out.items()) + "}"
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return to, text


class OriginalHub:
    """The original GoFiber hub, as an aiohttp app."""

    def __init__(self, ice_servers: list[dict[str, Any]] | None = None, *,
                 null_data: bool = True) -> None:
        self.ice_servers = ORIGINAL_ICE_SERVERS if ice_servers is None else ice_servers
        self.null_data = null_data
        #: The id -> connection map, exactly as the Go hub kept it.
        self.clients: dict[str, web.WebSocketResponse] = {}
        #: Every (sender, raw frame) received, for tests.
        self.frames: list[tuple[str, str]] = []
        self.app = web.Application(middlewares=[_any_origin])
        self.app.add_routes([web.get("/ws", self._ws), web.get("/ice-servers", self._ice)])
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._changed = asyncio.Condition()
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._runner, self.port = await serve_app(self.app, host, port)
        return self.port

    async def stop(self) -> None:
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_until(self, predicate: Callable[[dict[str, web.WebSocketResponse]], bool]
                         ) -> None:
        """Wait until ``predicate(self.clients)`` holds (wrap in a timeout)."""
        async with self._changed:
            await self._changed.wait_for(lambda: predicate(self.clients))

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _ice(self, request: web.Request) -> web.Response:
        return web.json_response({"iceServers": self.ice_servers})

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()  # GoFiber's websocket: no server pings
        await ws.prepare(request)
        client_id = request.query.get("id", "")
        self.clients[client_id] = ws  # a second connection with this id simply takes over
        self._sockets.add(ws)
        await self._notify()
        try:
            async for frame in ws:
                if frame.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                raw = frame.data if isinstance(frame.data, str) else \
                    frame.data.decode("utf-8", "replace")
                self.frames.append((client_id, raw))
                routed = go_forward(raw, client_id, null_data=self.null_data)
                if routed is None:
                    continue  # invalid JSON: ignored, nothing is sent back
                to, text = routed
                target = self.clients.get(to)
                if target is None:
                    continue  # unknown target: silently dropped
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await target.send_str(text)
        finally:
            self._sockets.discard(ws)
            # The original bug: deletes the id even if a newer connection holds it.
            self.clients.pop(client_id, None)
            await self._notify()
        return ws


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _any_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


# ----------------------------------------------------------------- page ---


def split_candidates(sdp: str) -> tuple[str, list[dict[str, Any]]]:
    """Take the candidates out of an aiortc SDP, as a browser would trickle them.

    Returns the SDP without ``a=candidate:`` / ``a=end-of-candidates`` lines
    and one RTCIceCandidateInit per removed candidate.
    """
    kept: list[str] = []
    candidates: list[dict[str, Any]] = []
    index = -1
    mid: str | None = None
    pending: list[str] = []

    def flush() -> None:
        for line in pending:
            candidates.append({"candidate": line[len("a="):], "sdpMid": mid,
                               "sdpMLineIndex": index})
        pending.clear()

    for line in sdp.splitlines():
        if line.startswith("m="):
            flush()
            index += 1
            mid = None
        if line.startswith("a=mid:"):
            mid = line[len("a=mid:"):]
        if line.startswith("a=candidate:"):
            pending.append(line)
            continue
        if line.startswith("a=end-of-candidates"):
            continue
        kept.append(line)
    flush()
    return "\r\n".join(kept) + "\r\n", candidates


class _Progress:
    """A sink that counts received samples and wakes whoever waits for enough."""

    def __init__(self) -> None:
        self.samples = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def write(self, samples: np.ndarray) -> None:
        self.samples += samples.size
        for want, future in list(self._waiters):
            if self.samples >= want and not future.done():
                future.set_result(None)

    async def wait_for(self, samples: int) -> None:
        if self.samples >= samples:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (samples, future)
        self._waiters.append(entry)
        try:
            await future
        finally:
            self._waiters.remove(entry)


def _rtc_ice_servers(servers: list[Any]) -> list[RTCIceServer]:
    out = []
    for entry in servers:
        if isinstance(entry, dict) and entry.get("urls"):
            out.append(RTCIceServer(urls=entry["urls"], username=entry.get("username"),
                                    credential=entry.get("credential")))
    return out


class OriginalPage:
    """``callerA.html`` (``my_id="a"``) or ``callerB.html`` (``"b"``), driven by aiortc.

    As caller: :meth:`call`. As callee it auto-accepts (``auto_accept``), then
    grabs the microphone ``mic_delay`` seconds later.
    """

    def __init__(self, server: str, my_id: str, peer_id: str | None = None, *,
                 tone: float = 440.0, auto_accept: bool = True, mic_delay: float = 0.15,
                 capture_seconds: float = 20.0) -> None:
        self.server = server.rstrip("/")
        self.my_id = my_id
        self.peer_id = peer_id if peer_id is not None else {"a": "b", "b": "a"}[my_id]
        self.tone = tone
        self.auto_accept = auto_accept
        self.mic_delay = mic_delay
        self.capture = CaptureSink(capture_seconds)
        self.progress = _Progress()
        self.receiver = AudioReceiver([self.capture, self.progress])
        self.pc: RTCPeerConnection | None = None
        self.mic: ToneSource | None = None
        # What happened, for tests.
        self.received: list[dict[str, Any]] = []  # messages from the peer
        self.ignored: list[Any] = []  # messages not from the peer (or not JSON)
        self.sent: list[dict[str, Any]] = []
        self.dropped_candidates = 0
        self.added_candidates = 0
        self.answered_receive_only: bool | None = None  # set when it answers an offer
        self.errors: list[BaseException] = []
        self.connected = asyncio.Event()
        self.hung_up = asyncio.Event()  # a hangup arrived from the peer
        self.rejected = asyncio.Event()
        self.mic_ready = asyncio.Event()
        self.answered = asyncio.Event()  # it sent an answer (and its candidates)
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reader: asyncio.Task[None] | None = None

    # -- what a user does -----------------------------------------------------

    async def connect(self) -> None:
        self._session = aiohttp.ClientSession()
        ws_url = self.server.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        self._ws = await self._session.ws_connect(f"{ws_url}/ws?id={self.my_id}")
        self._reader = asyncio.create_task(self._read(), name=f"page-{self.my_id}-reader")

    async def call(self) -> None:
        """Click "Call": the caller page has its microphone, then sends call-request."""
        self._grab_mic()
        await self._send("call-request")

    async def hangup(self) -> None:
        """Click "Hang up": send hangup (no data) and close the peer connection."""
        await self._send("hangup")
        await self._close_pc()

    async def close(self) -> None:
        """Close the page (tab)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._close_pc()
        if self.mic is not None:
            self.mic.stop()
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._session is not None:
            await self._session.close()

    def received_samples(self) -> np.ndarray:
        return self.capture.samples()

    @property
    def received_seconds(self) -> float:
        return self.receiver.frames * FRAME_SECONDS

    async def wait_received(self, seconds: float) -> None:
        """Wait until ``seconds`` of audio came in (wrap in a timeout)."""
        await self.progress.wait_for(int(seconds * SAMPLE_RATE))

    # -- the page's script ---------------------------------------------------

    async def _send(self, type_: str, data: Any = None) -> None:
        message: dict[str, Any] = {"type": type_, "to": self.peer_id}
        if data is not None:
            message["data"] = data
        self.sent.append(message)
        assert self._ws is not None
        await self._ws.send_str(json.dumps(message))

    def _grab_mic(self) -> None:
        if self.mic is None:
            self.mic = ToneSource(self.tone)
        self.mic_ready.set()

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            assert exc is not None
            log.warning("page %s: %s failed: %r", self.my_id, task.get_name(), exc)
            self.errors.append(exc)

    async def _read(self) -> None:
        assert self._ws is not None
        async for frame in self._ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                continue
            try:
                message = json.loads(frame.data)
            except ValueError:
                self.ignored.append(frame.data)
                continue
            if not isinstance(message, dict) or message.get("from") != self.peer_id:
                self.ignored.append(message)  # hub errors have no "from": ignored too
                continue
            self.received.append(message)
            # Each ws.onmessage runs as its own async handler: a handler that
            # awaits (fetch, setRemoteDescription) does not hold up the next one.
            self._spawn(self._on_message(message), f"page-{self.my_id}-{message.get('type')}")

    async def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        data = message.get("data")
        if kind == "call-request" and self.auto_accept:
            await self._send("call-accept")  # no data: the original accepted bare
            self._spawn(self._get_user_media(), f"page-{self.my_id}-mic")
        elif kind == "call-accept":
            await self._make_offer()
        elif kind == "call-reject":
            self.rejected.set()
        elif kind == "offer" and isinstance(data, dict):
            await self._answer(data)
        elif kind == "answer" and isinstance(data, dict) and self.pc is not None:
            await self.pc.setRemoteDescription(
                RTCSessionDescription(sdp=data["sdp"], type="answer"))
        elif kind == "candidate" and isinstance(data, dict):
            await self._add_candidate(data)
        elif kind == "hangup":
            await self._close_pc()
            self.hung_up.set()

    async def _get_user_media(self) -> None:
        await asyncio.sleep(self.mic_delay)  # the permission prompt / device start
        self._grab_mic()

    async def _ice_servers(self) -> list[RTCIceServer]:
        assert self._session is not None
        async with self._session.get(f"{self.server}/ice-servers") as resp:
            body = await resp.json()
        return _rtc_ice_servers(body.get("iceServers", []))

    def _new_pc(self, servers: list[RTCIceServer]) -> RTCPeerConnection:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        self.pc = pc

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "audio":
                self.receiver.start(track)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            log.info("page %s: connection %s", self.my_id, pc.connectionState)
            if pc.connectionState == "connected":
                self.connected.set()

        return pc

    async def _send_description(self, pc: RTCPeerConnection) -> None:
        """Send our description, then trickle its candidates one by one."""
        description = pc.localDescription
        sdp, candidates = split_candidates(description.sdp)
        await self._send(description.type, {"type": description.type, "sdp": sdp})
        for candidate in candidates:
            await self._send("candidate", candidate)

    async def _make_offer(self) -> None:
        servers = await self._ice_servers()
        pc = self._new_pc(servers)
        self._grab_mic()
        assert self.mic is not None
        pc.addTrack(self.mic)
        await pc.setLocalDescription(await pc.createOffer())
        await self._send_description(pc)

    async def _answer(self, offer: dict[str, Any]) -> None:
        servers = await self._ice_servers()
        pc = self._new_pc(servers)
        if self.mic is not None:
            pc.addTrack(self.mic)
            self.answered_receive_only = False
        else:
            self.answered_receive_only = True  # the original bug: one-way audio
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await self._send_description(pc)
        self.answered.set()

    async def _add_candidate(self, data: dict[str, Any]) -> None:
        pc = self.pc
        if pc is None or pc.remoteDescription is None:
            self.dropped_candidates += 1  # the original quirk: dropped, not held
            return
        text = str(data.get("candidate") or "")
        if not text:
            return
        if text.startswith("candidate:"):
            text = text[len("candidate:"):]
        candidate = candidate_from_sdp(text)
        candidate.sdpMid = data.get("sdpMid")
        candidate.sdpMLineIndex = data.get("sdpMLineIndex")
        await pc.addIceCandidate(candidate)
        self.added_candidates += 1

    async def _close_pc(self) -> None:
        pc, self.pc = self.pc, None
        if pc is not None:
            await pc.close()
        await self.receiver.stop()

