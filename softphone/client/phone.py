"""The Python API: a :class:`Phone` that places and answers calls.

This is the asyncio adapter around the sans-IO core. It feeds hub messages,
media callbacks and timer expiries into a :class:`~softphone.core.line.Line` and
carries out the actions that come back: frames to the hub (in order, from
one sender task), media operations (in order, on one worker per call),
events for the user. A phone holds one call at a time (a second caller is
told ``busy``), or up to ``max_calls`` at once, each with its own media and
settings (a bot serving many callers).

The hub connection and the media session are given to it as two small
interfaces (:class:`HubConnection`, :class:`MediaFactory`): a
:class:`~softphone.client.signaling.HubClient` and
:class:`~softphone.media.rtc.MediaSession` by default, fakes in the
adapter tests.

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
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any, Final, Protocol

from softphone._tasks import spawn
from softphone.client.call import Call as Call
from softphone.client.call import CallEnded as CallEnded
from softphone.client.call import CallResult as CallResult
from softphone.client.call import EventCallback as EventCallback
from softphone.client.call import MediaLink
from softphone.client.hubcheck import HubCheck
from softphone.client.restart_link import RestartLink
from softphone.client.signaling import DEFAULT_SERVER, HubAddress, HubClient, HubUnreachable
from softphone.core import callstate as cs
from softphone.core.line import HubProblem, IncomingCall, Line, Routed
from softphone.core.midcall import HoldMessage, announced
from softphone.core.protocol import ErrorCode, HubError, Message, check_id
from softphone.media.audiopath import CallAudio, MediaConfig
from softphone.media.frameclock import FrameClock
from softphone.media.opus import require_libopus
from softphone.media.pathcheck import LocalAddresses
from softphone.media.rtc import MediaSession, RTCCertificate
from softphone.media.tracks import AudioOutput, AudioSource, Sink

log = logging.getLogger(__name__)


class HubConnection(Protocol):
    """What a phone needs of its hub (:class:`~softphone.client.signaling.HubClient`)."""

    address: HubAddress

    @property
    def close_code(self) -> int | None: ...

    async def connect(self) -> None: ...

    async def ice_servers(self) -> list[dict[str, Any]]: ...

    async def send(self, message: Message) -> None: ...

    def messages(self) -> AsyncIterator[Message | HubError]: ...

    async def close(self) -> None: ...


class MediaFactory(Protocol):
    """Makes a call's peer connection (:class:`~softphone.media.rtc.MediaSession`).

    ``certificate``: the DTLS certificate to use (a media restart's connection is given
    the call's first, so the verification code stays); None: its own.
    """

    def __call__(self, ice_servers: Sequence[dict[str, Any]], audio: CallAudio, *,
                 relay_only: bool, on_connected: Callable[[], None],
                 on_failed: Callable[[str], None],
                 certificate: RTCCertificate | None = None) -> MediaLink: ...


#: Hub errors that come with closing the connection for good (close code 1008).
_REFUSALS = frozenset({ErrorCode.UNAUTHORIZED, ErrorCode.REPLACED})
#: Seconds the ICE servers fetched as the phone connected serve a call it dials.
ICE_SERVERS_FRESH: Final = 60.0
#: Seconds :meth:`Phone.close` waits for its calls to finish (media closed), and then
#: for what is queued for the hub to go out (the defaults of each phone's
#: ``close_wait`` and ``flush_wait``).
CLOSE_CALLS_WAIT: Final = 3.0
CLOSE_FLUSH_WAIT: Final = 1.0
IceServers = list[dict[str, Any]]


def _forget(fetch: asyncio.Future[IceServers]) -> None:
    """An ICE server fetch no call will use: stopped, its error (if any) taken."""
    fetch.cancel()
    fetch.add_done_callback(lambda f: f.cancelled() or f.exception())


class Phone:
    """A client of the hub that holds one call at a time, or up to ``max_calls`` at once.

    ``media``: the settings of its calls (each call may have its own, see
    :meth:`dial` and :meth:`Call.accept`). ``max_calls``: calls in progress
    at once (incoming or outgoing); a caller beyond them is told ``busy``.
    ``hub`` and ``media_factory`` replace the hub connection and the peer
    connections (tests use fakes).
    """

    def __init__(self, client_id: str, server: str = DEFAULT_SERVER, *,
                 ice_servers: Sequence[dict[str, Any]] | None = None,
                 timeouts: cs.CallTimeouts | None = None,
                 relay_only: bool = False,
                 token: str | None = None,
                 ssl_context: ssl.SSLContext | bool | None = None,
                 reconnect: bool = True,
                 media: MediaConfig | None = None,
                 max_calls: int = 1,
                 hub: HubConnection | None = None,
                 media_factory: MediaFactory | None = None) -> None:
        self.client_id = check_id(client_id, "client id")
        self.media_config = media or MediaConfig()
        #: Seconds :meth:`close` waits for its calls to finish, then for the outbox.
        self.close_wait: float = CLOSE_CALLS_WAIT
        self.flush_wait: float = CLOSE_FLUSH_WAIT
        if self.media_config.pipeline == "softphone":
            require_libopus()  # fail now, with the fix, not in the middle of a call
        self.hub: HubConnection = hub if hub is not None else \
            HubClient(server, client_id, token=token, ssl_context=ssl_context)
        self._media_factory: MediaFactory = media_factory or MediaSession
        self.line = Line(client_id, timeouts, max_calls=max_calls,
                         features=announced(restart=self.media_config.restart_enabled))
        self.relay_only = relay_only
        self.reconnect = reconnect
        self._ice_servers = None if ice_servers is None else list(ice_servers)
        #: The hub's ICE servers, fetched for an incoming call while it rings (by id of
        #: its machine): its answer need not wait for them.
        self._ice_fetches: dict[int, asyncio.Future[IceServers]] = {}
        #: ... and fetched as the phone connected, for a call dialed soon after (when).
        self._ice_ahead: tuple[float, asyncio.Future[IceServers]] | None = None
        self._incoming: asyncio.Queue[Call] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        #: The task that sends the outbox to the hub (one of ``_tasks``), once connected.
        self._sending: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        #: Calls not yet finished (media closed, result out), by id() of their machine.
        self._calls: dict[int, Call] = {}
        #: The latest call (ended or not).
        self._latest: Call | None = None
        self._closing = False
        self.hub_connected = asyncio.Event()
        self.hub_errors: list[HubError] = []
        #: Set when the hub refused us for good (bad token, replaced): no reconnecting.
        self.refused = asyncio.Event()
        self.refusal: HubError | None = None
        self.on_hub_error: Callable[[HubError], None] | None = None
        #: The hub connection's check and reconnect pacing while media restarts
        #: (subscribe to it for SignalingChanged; see :meth:`check_hub`).
        self.hub_check = HubCheck(self.hub)
        #: This machine's addresses, watched while the phone runs (AddressesChanged).
        self.addresses = LocalAddresses()
        #: Plays out every call without a speaker on one 20 ms timer (a bot's calls).
        self.frame_clock = FrameClock()

    @property
    def loop_time(self) -> float:
        return asyncio.get_running_loop().time()

    # -- lifecycle ----------------------------------------------------------

    async def connect(self) -> None:
        """Connect to the hub and start the phone. Raises :class:`HubUnreachable`."""
        ahead = None
        if self._ice_servers is None:  # asked alongside: a call dialed at once needs them
            ahead = asyncio.ensure_future(self.hub.ice_servers())
        try:
            await self.hub.connect()
        except BaseException:
            if ahead is not None:
                _forget(ahead)
            await self.hub.close()  # no HTTP session left open behind the error
            raise
        if ahead is not None:
            self._ice_ahead = (self.loop_time, ahead)
        self.hub_connected.set()
        self.hub_check.changed(True)
        self.addresses.start()
        self._sending = asyncio.create_task(self._sender(), name="phone-sender")
        self._tasks = [
            asyncio.create_task(self._reader(), name="phone-reader"),
            self._sending,
            asyncio.create_task(self._timer(), name="phone-timer"),
        ]

    async def close(self) -> None:
        """Hang up every call, then disconnect.

        What is queued for the hub goes out first, whether or not a call was still in
        progress: the ``hangup`` of a call that ended just before (hung up, then closed
        at once) reaches the peer, which otherwise saw us vanish (``peer-disconnected``,
        or ``media-lost`` as its media died first). Bounded: a dead hub does not keep
        :meth:`close` waiting (:attr:`close_wait`, :attr:`flush_wait`).
        """
        for call in self.calls:
            await call.hangup("closing")
        # Every call not finished yet (those just hung up, and those that ended just
        # before and are closing their media): their results out before we go.
        finishing = list(self._calls.values())
        if finishing:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(c.ended() for c in finishing)),
                                       self.close_wait)
        await self._flush()
        self._closing = True
        if self._ice_ahead is not None:
            _forget(self._ice_ahead[1])
            self._ice_ahead = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.addresses.stop()
        await self.hub.close()

    async def _flush(self) -> None:
        """Wait until the sender has sent (or failed to send) what the outbox holds
        (:attr:`flush_wait` at most)."""
        sender = self._sending
        if sender is None or sender.done():
            return  # never connected, or nothing sends any more
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._outbox.join(), self.flush_wait)
        if not self._outbox.empty():
            log.warning("closing with %d message(s) to the hub not sent",
                        self._outbox.qsize())

    async def check_hub(self) -> bool:
        """Check the hub connection now (a call's media is lost: it may have died
        with it): reconnect at once if its local address is gone or a ping gets no
        pong within a second. True if it is alive. (``docs/protocol.md``, "The hub
        connection during a restart"; :mod:`softphone.client.hubcheck`.)"""
        return await self.hub_check.check()

    async def __aenter__(self) -> Phone:
        await self.connect()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    # -- calls --------------------------------------------------------------

    @property
    def max_calls(self) -> int:
        return self.line.max_calls

    @property
    def current_call(self) -> Call | None:
        """The latest call, while it is in progress (None once it has ended)."""
        call = self._latest
        return None if call is None or call.is_ended else call

    @property
    def calls(self) -> list[Call]:
        """Every call in progress, oldest first."""
        return [c for c in self._calls.values() if not c.is_ended]

    async def dial(self, peer: str, source: AudioSource | None = None,
                   sinks: Sequence[Sink] = (), data: Any = None,
                   on_event: EventCallback | None = None, *,
                   output: AudioOutput | None = None,
                   media: MediaConfig | None = None) -> Call:
        """Call ``peer``; returns at once with the :class:`Call` (it is ringing).

        ``source`` is sent (silence if None), ``sinks`` get what we hear,
        ``output`` plays it (a :class:`~softphone.media.devices.SpeakerDriver`);
        ``media``: this call's settings (default: the phone's).
        """
        check_id(peer, "callee id")
        config = media or self.media_config
        audio = CallAudio(source, sinks, output=output, config=config,
                          frame_clock=self.frame_clock)
        actions = self.line.dial(peer, self.loop_time, data,
                                 features=announced(restart=config.restart_enabled))
        machine = self.line.call
        assert machine is not None
        call = self._track(Call(self, machine))
        if on_event is not None:
            call.on_event(on_event)
        call._adopt(audio)
        call._emit({"event": "state", "state": str(call.state), "t": 0.0})
        self._run([Routed(machine, a) for a in actions])
        call._media_op(lambda: self._prepare_gathering(call))  # gather while it rings
        return call

    async def _prepare_gathering(self, call: Call) -> None:
        await self._prepare_media(call)

    async def next_call(self) -> Call:
        """Wait for the next incoming call (ringing; accept or reject it)."""
        return await self._incoming.get()

    # -- the adapter ---------------------------------------------------------

    def _track(self, call: Call) -> Call:
        self._calls[id(call.machine)] = self._latest = call
        return call

    def _feed(self, call: Call, event: cs.Event) -> None:
        if call.machine.is_ended:
            return  # an event for a call that is over
        actions = self.line.handle_local(event, self.loop_time, call.machine)
        self._run([Routed(call.machine, a) for a in actions])

    def _run(self, routed: list[Routed]) -> None:
        """Carry out actions, each for its call, in order. Never blocks: slow work is queued."""
        for item in routed:
            action = item.action
            if isinstance(action, cs.Send):
                self._outbox.put_nowait(action.message)
            elif isinstance(action, IncomingCall):
                new = self._track(Call(self, action.call))
                if self._ice_servers is None:
                    self._ice_fetches[id(new.machine)] = \
                        asyncio.ensure_future(self.hub.ice_servers())
                new._emit({"event": "incoming", "state": str(new.state), "t": 0.0})
                self._incoming.put_nowait(new)
            elif isinstance(action, HubProblem):
                self._hub_problem(action.error)
            else:
                call = None if item.call is None else self._calls.get(id(item.call))
                if call is None:
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
        elif isinstance(action, cs.MidCall) and isinstance(action.message, HoldMessage):
            call._hold_link().received(action.message)  # hold (client/hold_link.py)
        elif isinstance(action, cs.MidCall):  # a restart offer/answer/candidate
            if call.restart_link is not None:
                call.restart_link.on_message(action.message)
        elif isinstance(action, cs.StateChanged):
            call._emit({"event": "state", "state": str(action.new),
                        "t": round(action.at - call.machine.started_at, 3)})
            if action.new is cs.CallState.CONNECTED:
                call._connected.set()
        elif isinstance(action, cs.Ended):
            spawn(self._finish(call, action), name="call-finish")

    async def _finish(self, call: Call, ended: cs.Ended) -> None:
        try:
            await call._finish(ended)
        finally:
            self._calls.pop(id(call.machine), None)
            fetch = self._ice_fetches.pop(id(call.machine), None)
            if fetch is not None:  # never used: the call was not answered
                _forget(fetch)

    async def _prepare_media(self, call: Call) -> MediaLink:
        """Create the call's peer connection (once) and start gathering candidates."""
        if call.media is None:
            servers = self._ice_servers
            if servers is None:
                servers = await self._hub_ice_servers(call)
            assert call.audio is not None
            media = self._media_factory(
                servers, call.audio, relay_only=self.relay_only,
                on_connected=lambda: self._media_connected(call),
                on_failed=lambda reason: self._media_failed(call, reason),
            )
            call._attach(media)
            # Media restart (client/restart_link.py): started once this connection is up.
            call.restart_link = RestartLink(self, call, servers, media)
            media.pregather()
        assert call.media is not None
        return call.media

    async def _hub_ice_servers(self, call: Call) -> IceServers:
        """The hub's ICE servers for ``call``: those fetched while it rang (incoming), or
        as the phone connected (if fresh), else fetched now."""
        fetch = self._ice_fetches.pop(id(call.machine), None)
        ahead, self._ice_ahead = self._ice_ahead, None
        if ahead is not None:
            if fetch is None and self.loop_time - ahead[0] <= ICE_SERVERS_FRESH:
                fetch = ahead[1]
            else:
                _forget(ahead[1])
        if fetch is not None:
            with contextlib.suppress(HubUnreachable):  # asked again below
                return await fetch
        return await self.hub.ice_servers()

    async def _start_media(self, call: Call, offerer: bool) -> None:
        await self._prepare_media(call)
        assert call.media is not None
        if offerer:
            sdp = await call.media.create_offer()
            self._feed(call, cs.LocalDescription(sdp))

    def _media_connected(self, call: Call) -> None:
        call._derive_sas()  # (before connected() waiters wake: they wait for the code)
        self._feed(call, cs.MediaConnected())
        if call.restart_link is not None and call.state is cs.CallState.CONNECTED:
            call.restart_link.start()
        pair = call.candidate_pair
        if pair is not None and call.state is cs.CallState.CONNECTED:
            call._media_up({"event": "media", "candidate_pair": pair.to_json(),
                            "codec": call.codec})

    def _media_failed(self, call: Call, reason: str) -> None:
        """The call's first connection failed: in a call, media restart's; else the end."""
        if call.restart_link is None or not call.restart_link.first_failed(reason):
            self._feed(call, cs.MediaFailed(reason))

    async def _apply_offer(self, call: Call, sdp: str) -> None:
        assert call.media is not None
        answer = await call.media.accept_offer(sdp)
        call._derive_sas()  # both descriptions are set: the code, while ICE connects
        self._feed(call, cs.LocalDescription(answer))

    async def _apply_answer(self, call: Call, sdp: str) -> None:
        assert call.media is not None
        await call.media.apply_answer(sdp)
        call._derive_sas()  # both descriptions are set: the code, while ICE connects

    async def _add_candidate(self, call: Call, action: cs.AddCandidate) -> None:
        if call.media is not None:
            call.media.add_candidate(action.candidate)

    def _hub_problem(self, error: HubError) -> None:
        if error.code == ErrorCode.OFFLINE and error.ref == "offer":  # a restart offer's
            for call in self.calls:
                if call.peer == error.to and call.restart_link is not None:
                    call.restart_link.peer_unreachable()
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
                self._run(self.line.route(item, self.loop_time))
            self.hub_connected.clear()
            self.hub_check.changed(False)
            if self._closing:
                return
            if last_refusal is not None and self.hub.close_code == 1008:
                self.refusal = last_refusal
                self.refused.set()
            log.warning("lost the hub connection (code %s)", self.hub.close_code)
            self._run(self.line.hub_lost(self.loop_time))
            if not self.reconnect or self.hub.close_code == 1008:
                return
            while not self._closing:
                await self.hub_check.pause(delay)  # (at most 1 s while media restarts)
                delay = self.hub_check.next_backoff(delay)
                try:
                    await self.hub_check.connect()
                except HubUnreachable as exc:
                    log.info("reconnect failed: %s", exc)
                    continue
                self.hub_connected.set()
                self.hub_check.changed(True)
                log.info("reconnected to the hub")
                break

    async def _sender(self) -> None:
        while True:
            message = await self._outbox.get()
            try:
                await self.hub.send(message)
            except HubUnreachable as exc:
                log.warning("could not send %s to %s: %s", message.type, message.to, exc)
                self._run(self.line.hub_lost(self.loop_time))
            finally:
                self._outbox.task_done()

    async def _timer(self) -> None:
        while True:
            self._wake.clear()
            deadline = self.line.deadline()
            timeout = None if deadline is None else max(0.0, deadline - self.loop_time)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._run(self.line.timers(self.loop_time))

