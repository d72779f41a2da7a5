"""The Python API: a :class:`Phone` that places and answers calls.

This is the asyncio adapter around the sans-IO core. It feeds hub messages,
media callbacks and timer expiries into a :class:`~softphone.core.line.Line` and
carries out the actions that come back: frames to the hub (in order, from
one sender task), media operations (in order, on one worker per call),
events for the user.

Example::

    async with Phone("alice", server="http://127.0.0.1:8080") as phone:
        call = await phone.dial("bob", source=ToneSource(440))
        result = await call.ended()
        print(result.outcome)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiortc.mediastreams import MediaStreamTrack

from softphone._tasks import spawn
from softphone.client.signaling import DEFAULT_SERVER, HubClient, HubUnreachable
from softphone.core import callstate as cs
from softphone.core.line import HubProblem, IncomingCall, Line
from softphone.core.protocol import ErrorCode, HubError, Message, check_id
from softphone.media.opus import require_libopus
from softphone.media.rtc import CandidatePair, MediaConfig, MediaSession, MediaStats
from softphone.media.tracks import AudioReceiver, SilenceSource, Sink

log = logging.getLogger(__name__)

EventCallback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class CallResult:
    """How a call went. ``exit_code`` is the CLI's exit code for ``outcome``."""

    peer: str
    role: cs.Role
    outcome: cs.Outcome
    reason: str | None
    ended_by: str  # "local", "remote", "timeout" or "network"
    setup_seconds: float | None  # call-request (sent or received) -> media connected
    first_audio_seconds: float | None  # call-request -> first audible frame received
    talk_seconds: float  # media connected -> ended
    stats: MediaStats = field(default_factory=MediaStats)
    #: The ICE candidate pair the media used (None if it never connected).
    candidate_pair: CandidatePair | None = None

    @property
    def exit_code(self) -> int:
        return cs.EXIT_CODES[self.outcome]

    def to_json(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 3)
        return {"peer": self.peer, "role": str(self.role), "outcome": str(self.outcome),
                "reason": self.reason, "ended_by": self.ended_by, "exit_code": self.exit_code,
                "setup_seconds": r(self.setup_seconds),
                "first_audio_seconds": r(self.first_audio_seconds),
                "talk_seconds": r(self.talk_seconds), "stats": self.stats.to_json(),
                "candidate_pair": None if self.candidate_pair is None
                else self.candidate_pair.to_json()}


class Call:
    """One call, outgoing or incoming. Created by :meth:`Phone.dial` or received."""

    def __init__(self, phone: Phone, machine: cs.CallMachine) -> None:
        self.phone = phone
        self.machine = machine
        self.source: MediaStreamTrack | None = None
        self.receiver: AudioReceiver | None = None
        self.media: MediaSession | None = None
        self._media_queue: asyncio.Queue[Callable[[], Coroutine[Any, Any, None]] | None] = \
            asyncio.Queue()
        self._media_task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._ended: asyncio.Future[CallResult] = asyncio.get_running_loop().create_future()
        self._listeners: list[EventCallback] = []
        self._final_stats = MediaStats()

    # -- what a user does -----------------------------------------------------

    @property
    def peer(self) -> str:
        return self.machine.peer

    @property
    def role(self) -> cs.Role:
        return self.machine.role

    @property
    def state(self) -> cs.CallState:
        return self.machine.state

    @property
    def request_data(self) -> Any:
        return self.machine.request_data

    def on_event(self, callback: EventCallback) -> None:
        """Call ``callback(event_dict)`` for every state change and the end."""
        self._listeners.append(callback)

    async def accept(self, source: MediaStreamTrack | None = None,
                     sinks: Sequence[Sink] = ()) -> None:
        """Answer an incoming call, sending ``source`` (silence if None)."""
        self._prepare(source, sinks)
        self.phone._feed(self, cs.LocalAccept())

    async def reject(self, reason: str = "declined") -> None:
        self.phone._feed(self, cs.LocalReject(reason))

    async def hangup(self, reason: str = "hangup") -> None:
        """End the call (cancel it if it is not connected yet). Idempotent."""
        if not self.machine.is_ended:
            self.phone._feed(self, cs.LocalHangup(reason))

    def mute(self, muted: bool = True) -> None:
        if self.source is not None and hasattr(self.source, "muted"):
            self.source.muted = muted

    async def connected(self) -> None:
        """Wait until media is up (returns at once if it was). Raises if the call ended first."""
        waiter: asyncio.Future[Any] = asyncio.ensure_future(self._connected.wait())
        ended: asyncio.Future[Any] = self._ended
        done, _ = await asyncio.wait({waiter, ended}, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            result = self._ended.result()
            raise CallEnded(result)

    async def ended(self) -> CallResult:
        """Wait for the end of the call and return how it went."""
        return await asyncio.shield(self._ended)

    @property
    def result(self) -> CallResult | None:
        return self._ended.result() if self._ended.done() else None

    @property
    def candidate_pair(self) -> CandidatePair | None:
        """The ICE candidate pair the media uses, once connected."""
        return None if self.media is None else self.media.candidate_pair

    async def stats(self) -> MediaStats:
        if self.media is not None and not self.machine.is_ended:
            return await self.media.stats()
        return self._final_stats

    # -- internals ------------------------------------------------------------

    def _prepare(self, source: MediaStreamTrack | None, sinks: Sequence[Sink]) -> None:
        self.source = source if source is not None else SilenceSource()
        self.receiver = AudioReceiver(list(sinks))

    def _emit(self, event: dict[str, Any]) -> None:
        event.setdefault("peer", self.peer)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("call event listener failed")

    def _media_op(self, op: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if self._media_task is None:
            self._media_task = asyncio.create_task(self._media_worker(), name="media-worker")
        self._media_queue.put_nowait(op)

    async def _media_worker(self) -> None:
        while True:
            op = await self._media_queue.get()
            if op is None:
                return
            try:
                await op()
            except Exception as exc:
                log.warning("media operation failed: %s", exc, exc_info=log.isEnabledFor(10))
                self.phone._feed(self, cs.MediaFailed(f"media-error: {exc}"[:120]))

    async def _finish(self, ended: cs.Ended) -> None:
        """Stop media, collect the figures, resolve :meth:`ended`."""
        self._media_queue.put_nowait(None)
        if self._media_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._media_task), 2.0)
            self._media_task.cancel()
        reason = ended.reason
        if self.media is not None:
            errors = self.media.turn_errors()
            if ended.outcome is cs.Outcome.MEDIA_FAILED and errors and \
                    errors[0] not in (reason or ""):  # say why no relay could help
                reason = f"{reason}; {errors[0]}"
            self._final_stats = await self.media.stats()
            await self.media.close()
        elif self.source is not None:
            self.source.stop()
        m = self.machine
        first_audio = None
        if self.receiver is not None and self.receiver.first_audio_at is not None:
            first_audio = self.receiver.first_audio_at - m.started_at
        result = CallResult(
            peer=m.peer, role=m.role, outcome=ended.outcome, reason=reason, ended_by=ended.by,
            setup_seconds=None if m.connected_at is None else m.connected_at - m.started_at,
            first_audio_seconds=first_audio,
            talk_seconds=0.0 if m.connected_at is None else ended.at - m.connected_at,
            stats=self._final_stats,
            candidate_pair=self.candidate_pair,
        )
        for sink in self.receiver.sinks if self.receiver else []:
            close = getattr(sink, "close", None)
            if close is not None:
                close()
        self._emit({"event": "ended", **result.to_json()})
        if not self._ended.done():
            self._ended.set_result(result)


class CallEnded(Exception):
    """Raised by :meth:`Call.connected` when the call ended instead."""

    def __init__(self, result: CallResult) -> None:
        super().__init__(f"call ended: {result.outcome}")
        self.result = result


#: Hub errors that come with closing the connection for good (close code 1008).
_REFUSALS = frozenset({ErrorCode.UNAUTHORIZED, ErrorCode.REPLACED})


class Phone:
    """A client of the hub that can hold one call at a time."""

    def __init__(self, client_id: str, server: str = DEFAULT_SERVER, *,
                 ice_servers: Sequence[dict[str, Any]] | None = None,
                 timeouts: cs.CallTimeouts | None = None,
                 relay_only: bool = False,
                 token: str | None = None,
                 ssl_context: ssl.SSLContext | bool | None = None,
                 reconnect: bool = True,
                 media: MediaConfig | None = None) -> None:
        self.client_id = check_id(client_id, "client id")
        self.media_config = media or MediaConfig()
        if self.media_config.pipeline == "softphone":
            require_libopus()  # fail now, with the fix, not in the middle of a call
        self.hub = HubClient(server, client_id, token=token, ssl_context=ssl_context)
        self.line = Line(client_id, timeouts)
        self.relay_only = relay_only
        self.reconnect = reconnect
        self._ice_servers = None if ice_servers is None else list(ice_servers)
        self._incoming: asyncio.Queue[Call] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._calls: dict[int, Call] = {}
        self._closing = False
        self.hub_connected = asyncio.Event()
        self.hub_errors: list[HubError] = []
        #: Set when the hub refused us for good (bad token, replaced): no reconnecting.
        self.refused = asyncio.Event()
        self.refusal: HubError | None = None
        self.on_hub_error: Callable[[HubError], None] | None = None

    @property
    def loop_time(self) -> float:
        return asyncio.get_running_loop().time()

    # -- lifecycle ----------------------------------------------------------

    async def connect(self) -> None:
        """Connect to the hub and start the phone. Raises :class:`HubUnreachable`."""
        try:
            await self.hub.connect()
        except BaseException:
            await self.hub.close()  # no HTTP session left open behind the error
            raise
        self.hub_connected.set()
        self._tasks = [
            asyncio.create_task(self._reader(), name="phone-reader"),
            asyncio.create_task(self._sender(), name="phone-sender"),
            asyncio.create_task(self._timer(), name="phone-timer"),
        ]

    async def close(self) -> None:
        """Hang up any call, then disconnect."""
        call = self.current_call
        if call is not None and not call.machine.is_ended:
            await call.hangup("closing")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(call.ended(), 3.0)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._outbox.join(), 1.0)
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.hub.close()

    async def __aenter__(self) -> Phone:
        await self.connect()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    # -- calls --------------------------------------------------------------

    @property
    def current_call(self) -> Call | None:
        machine = self.line.call
        return None if machine is None else self._calls.get(id(machine))

    async def dial(self, peer: str, source: MediaStreamTrack | None = None,
                   sinks: Sequence[Sink] = (), data: Any = None,
                   on_event: EventCallback | None = None) -> Call:
        """Call ``peer``; returns at once with the :class:`Call` (it is ringing)."""
        check_id(peer, "callee id")
        actions = self.line.dial(peer, self.loop_time, data)
        assert self.line.call is not None
        call = Call(self, self.line.call)
        if on_event is not None:
            call.on_event(on_event)
        call._prepare(source, sinks)
        self._calls[id(self.line.call)] = call
        call._emit({"event": "state", "state": str(call.state), "t": 0.0})
        self._run(actions)
        call._media_op(lambda: self._prepare_gathering(call))  # gather while it rings
        return call

    async def _prepare_gathering(self, call: Call) -> None:
        await self._prepare_media(call)

    async def next_call(self) -> Call:
        """Wait for the next incoming call (ringing; accept or reject it)."""
        return await self._incoming.get()

    # -- the adapter ---------------------------------------------------------

    def _feed(self, call: Call, event: cs.Event) -> None:
        if self.line.call is not call.machine:
            return  # an event for a call that is no longer current
        self._run(self.line.handle_local(event, self.loop_time))

    def _run(self, actions: list[cs.Action]) -> None:
        """Carry out actions, in order. Never blocks: slow work is queued."""
        for action in actions:
            machine = self.line.call
            call = self._calls.get(id(machine)) if machine is not None else None
            if isinstance(action, cs.Send):
                self._outbox.put_nowait(action.message)
            elif isinstance(action, IncomingCall):
                new = Call(self, action.call)
                self._calls[id(action.call)] = new
                new._emit({"event": "incoming", "state": str(new.state), "t": 0.0})
                self._incoming.put_nowait(new)
            elif isinstance(action, HubProblem):
                self._hub_problem(action.error)
            elif call is None:
                log.debug("no call for %s", action)
            else:
                self._run_call_action(call, action)
        self._wake.set()

    def _run_call_action(self, call: Call, action: cs.Action) -> None:
        if isinstance(action, cs.StartMedia):
            call._media_op(lambda: self._start_media(call, action.offerer))
        elif isinstance(action, cs.ApplyOffer):
            call._media_op(lambda: self._apply_offer(call, action.sdp))
        elif isinstance(action, cs.ApplyAnswer):
            call._media_op(lambda: self._apply_answer(call, action.sdp))
        elif isinstance(action, cs.AddCandidate):
            call._media_op(lambda: self._add_candidate(call, action))
        elif isinstance(action, cs.StopMedia):
            pass  # done by Call._finish once the call has ended
        elif isinstance(action, cs.StateChanged):
            call._emit({"event": "state", "state": str(action.new),
                        "t": round(action.at - call.machine.started_at, 3)})
            if action.new is cs.CallState.CONNECTED:
                call._connected.set()
        elif isinstance(action, cs.Ended):
            self._calls.pop(id(call.machine), None)
            spawn(call._finish(action), name="call-finish")

    async def _prepare_media(self, call: Call) -> MediaSession:
        """Create the call's peer connection (once) and start gathering candidates."""
        if call.media is None:
            servers = self._ice_servers
            if servers is None:
                servers = await self.hub.ice_servers()
            assert call.source is not None and call.receiver is not None
            call.media = MediaSession(
                servers, call.source, call.receiver, relay_only=self.relay_only,
                on_connected=lambda: self._media_connected(call),
                on_failed=lambda reason: self._feed(call, cs.MediaFailed(reason)),
                config=self.media_config,
            )
            call.media.pregather()
        return call.media

    async def _start_media(self, call: Call, offerer: bool) -> None:
        await self._prepare_media(call)
        assert call.media is not None
        if offerer:
            sdp = await call.media.create_offer()
            self._feed(call, cs.LocalDescription(sdp))

    def _media_connected(self, call: Call) -> None:
        self._feed(call, cs.MediaConnected())
        pair = call.candidate_pair
        if pair is not None and call.machine.state is cs.CallState.CONNECTED:
            assert call.media is not None
            call._emit({"event": "media", "candidate_pair": pair.to_json(),
                        "codec": call.media.codec})

    async def _apply_offer(self, call: Call, sdp: str) -> None:
        assert call.media is not None
        answer = await call.media.accept_offer(sdp)
        self._feed(call, cs.LocalDescription(answer))

    async def _apply_answer(self, call: Call, sdp: str) -> None:
        assert call.media is not None
        await call.media.apply_answer(sdp)

    async def _add_candidate(self, call: Call, action: cs.AddCandidate) -> None:
        if call.media is not None:
            call.media.add_candidate(action.candidate)

    def _hub_problem(self, error: HubError) -> None:
        self.hub_errors.append(error)
        log.warning("hub error %s: %s", error.code, error.message)
        if self.on_hub_error is not None:
            self.on_hub_error(error)

    # -- tasks ----------------------------------------------------------------

    async def _reader(self) -> None:
        delay = 0.5
        while True:
            last_refusal: HubError | None = None
            async for item in self.hub.messages():
                delay = 0.5
                if isinstance(item, HubError) and item.code == ErrorCode.REPLACED:
                    self._hub_problem(item)
                if isinstance(item, HubError) and item.code in _REFUSALS:
                    last_refusal = item
                self._run(self.line.receive(item, self.loop_time))
            self.hub_connected.clear()
            if self._closing:
                return
            if last_refusal is not None and self.hub.close_code == 1008:
                self.refusal = last_refusal
                self.refused.set()
            log.warning("lost the hub connection (code %s)", self.hub.close_code)
            self._run(self.line.handle_local(cs.HubLost(), self.loop_time))
            if not self.reconnect or self.hub.close_code == 1008:
                return
            while not self._closing:
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 10.0)
                try:
                    await self.hub.connect()
                except HubUnreachable as exc:
                    log.info("reconnect failed: %s", exc)
                    continue
                self.hub_connected.set()
                log.info("reconnected to the hub")
                break

    async def _sender(self) -> None:
        while True:
            message = await self._outbox.get()
            try:
                await self.hub.send(message)
            except HubUnreachable as exc:
                log.warning("could not send %s to %s: %s", message.type, message.to, exc)
                self._run(self.line.handle_local(cs.HubLost(), self.loop_time))
            finally:
                self._outbox.task_done()

    async def _timer(self) -> None:
        while True:
            self._wake.clear()
            deadline = self.line.deadline()
            timeout = None if deadline is None else max(0.0, deadline - self.loop_time)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._run(self.line.handle_timer(self.loop_time))

