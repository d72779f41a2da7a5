"""The Python API: a :class:`Phone` that places and answers calls.

This is the asyncio adapter around the sans-IO core. It feeds hub messages,
media callbacks and timer expiries into a :class:`~softphone.core.line.Line` and
carries out the actions that come back: frames to the hub (in order, from
one sender task), media operations (in order, on one worker per call),
events for the user. A phone holds one call at a time (a second caller is
told ``busy``), or up to ``max_calls`` at once, each with its own media and
settings (a bot serving many callers).

The hub connection and the media session are given to it as two small
interfaces (:class:`HubConnection`, and
:class:`~softphone.client.media_setup.MediaFactory`, re-exported here): a
:class:`~softphone.client.signaling.HubClient` and
:class:`~softphone.media.rtc.MediaSession` by default, fakes in the
adapter tests. Each call's first peer connection, and the ICE servers it is
made with, are :mod:`softphone.client.media_setup`'s; reading the hub connection
(reconnecting, refusals) is :mod:`softphone.client.hub_reader`'s.

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
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Final

from softphone._tasks import spawn
from softphone.client.call import Call as Call
from softphone.client.call import CallEnded as CallEnded
from softphone.client.call import CallResult as CallResult
from softphone.client.call import EventCallback as EventCallback
from softphone.client.call import MediaLink as MediaLink
from softphone.client.call import release
from softphone.client.calltypes import PhoneClosed as PhoneClosed
from softphone.client.hub_reader import read_hub
from softphone.client.hubcheck import HubCheck
from softphone.client.hubconnection import SAID_ELSEWHERE
from softphone.client.hubconnection import HubConnection as HubConnection
from softphone.client.media_setup import ICE_SERVERS_FRESH as ICE_SERVERS_FRESH
from softphone.client.media_setup import IceServers as IceServers
from softphone.client.media_setup import MediaFactory as MediaFactory
from softphone.client.media_setup import MediaSetup
from softphone.client.signaling import DEFAULT_SERVER, HubClient, HubUnreachable
from softphone.core import callstate as cs
from softphone.core.line import HubProblem, IncomingCall, Line, Routed
from softphone.core.midcall import HoldMessage, announced
from softphone.core.protocol import ErrorCode, HubError, Message, check_id
from softphone.media.audiopath import CallAudio, MediaConfig
from softphone.media.frameclock import FrameClock
from softphone.media.opus import require_libopus
from softphone.media.pathcheck import LocalAddresses
from softphone.media.rtc import MediaSession
from softphone.media.tracks import AudioOutput, AudioSource, Sink

log = logging.getLogger(__name__)


#: Seconds :meth:`Phone.close` waits for its calls to finish (media closed), and then
#: for what is queued for the hub to go out (the defaults of each phone's
#: ``close_wait`` and ``flush_wait``).
CLOSE_CALLS_WAIT: Final = 3.0
CLOSE_FLUSH_WAIT: Final = 1.0


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
        #: Each call's first peer connection, and the ICE servers it is made with.
        self._media_setup = MediaSetup(self, ice_servers)
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
        #: Set as :meth:`close` starts (or the hub refuses us): no more calls.
        self._shut = asyncio.Event()
        self._gone = "is closed"  # (why, once shut: for PhoneClosed)
        self._closed = False  # (close() called)
        self.hub_connected = asyncio.Event()
        self.hub_errors: list[HubError] = []
        #: Set when the hub refused us for good (bad token, replaced, or too many
        #: connections from our address when we first connect): no reconnecting.
        self.refused = asyncio.Event()
        self.refusal: HubError | None = None
        self.on_hub_error: Callable[[HubError], None] | None = None
        #: Called ``on_hub_state(connected, description)`` when the hub connection is
        #: lost (False, e.g. "lost the hub connection (code 1006), reconnecting") and
        #: when it is back (True, "reconnected to the hub"); not for a refusal (that is
        #: :attr:`refused`). While set, the library logs these at info only (the one
        #: who set it says them); else a loss is a warning.
        self.on_hub_state: Callable[[bool, str], None] | None = None
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
        """Connect to the hub and start the phone. Raises :class:`HubUnreachable`, and
        :class:`PhoneClosed` for a phone already closed (make a new one)."""
        if self._closed:
            raise PhoneClosed("the phone is closed: make a new Phone to connect again")
        try:  # (the hub's ICE servers asked alongside: a call dialed at once needs them)
            await self._media_setup.connecting(self.hub.connect)
        except BaseException:
            await self.hub.close()  # no HTTP session left open behind the error
            raise
        self.hub_connected.set()
        self.hub_check.changed(True)
        self.addresses.start()
        self._sending = asyncio.create_task(self._sender(), name="phone-sender")
        self._tasks = [
            asyncio.create_task(read_hub(self), name="phone-reader"),
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
        From its start, :meth:`dial` and :meth:`next_call` raise :class:`PhoneClosed`.
        """
        self._closed = True
        self._shut.set()
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
        self._media_setup.close()
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

        Raises at once: :class:`PhoneClosed` if the phone is not connected or closed;
        ValueError for a bad id or our own; :class:`LineBusy
        <softphone.core.line.LineBusy>` if every line is taken or a call with ``peer``
        is in progress; TypeError for a sink that is not one. A refused dial closes
        what it was given (``source``, ``sinks``, ``output``), except what a call of
        the phone already uses.
        """
        config = media or self.media_config
        try:
            self._check_open(receiving=False)
            check_id(peer, "callee id")
            self.line.check_dial(peer)
            audio = CallAudio(source, sinks, output=output, config=config,
                              frame_clock=self.frame_clock)  # (TypeError: not a sink)
        except BaseException:
            release(source, sinks, output, self.audio_in_use())
            raise
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
        call._media_op(lambda: self._media_setup.gather(call))  # gather while it rings
        return call

    async def next_call(self) -> Call:
        """Wait for the next incoming call (ringing; accept or reject it).

        Raises :class:`PhoneClosed` once the phone can no longer receive calls (not
        connected, :meth:`close` called, or refused by the hub: another phone took
        its id), also while waiting.
        """
        self._check_open()
        if not self._incoming.empty():
            return self._incoming.get_nowait()
        getting = asyncio.ensure_future(self._incoming.get())
        shut = asyncio.ensure_future(self._shut.wait())
        try:
            await asyncio.wait({getting, shut}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            shut.cancel()
            if not getting.done():
                getting.cancel()
        if getting.done() and not getting.cancelled():
            return getting.result()  # (a call that came as the phone shut: it is ended)
        self._check_open()
        raise AssertionError("unreachable: the phone is shut")

    def _check_open(self, *, receiving: bool = True) -> None:
        """Raise :class:`PhoneClosed` unless the phone may receive calls (``receiving``)
        or place them. (A dial on a phone that lost the hub for good is let through:
        its call ends as a dial without a hub does, ``hub-unreachable``, which the CLI
        reports as the hub's refusal.)"""
        if self._closed:
            raise PhoneClosed("the phone is closed")
        refusal = self.refusal if self.refused.is_set() else None
        if receiving and refusal is not None:
            raise PhoneClosed(f"the hub refused this phone ({refusal.code}: "
                              f"{refusal.message})", refusal)
        if receiving and self._shut.is_set():
            raise PhoneClosed(f"the phone {self._gone}")
        if self._sending is None:
            raise PhoneClosed("the phone is not connected: use `async with Phone(...)` "
                              "or `await phone.connect()`")

    def audio_in_use(self) -> list[CallAudio]:
        """The audio of the calls not finished yet (what a refused call must not close)."""
        return [c.audio for c in self._calls.values() if c.audio is not None]

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
                self._media_setup.ringing(new)
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
        setup = self._media_setup
        if isinstance(action, cs.StartMedia):
            call._media_op(lambda: setup.start(call, action.offerer))
        elif isinstance(action, cs.ApplyOffer):
            call._media_op(lambda: setup.apply_offer(call, action.sdp))
        elif isinstance(action, cs.ApplyAnswer):
            call._media_op(lambda: setup.apply_answer(call, action.sdp))
        elif isinstance(action, cs.AddCandidate):
            call._media_op(lambda: setup.add_candidate(call, action))
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
            self._media_setup.finished(call)

    def _hub_problem(self, error: HubError) -> None:
        if error.code == ErrorCode.OFFLINE and error.ref == "offer":  # a restart offer's
            for call in self.calls:
                if call.peer == error.to and call.restart_link is not None:
                    call.restart_link.peer_unreachable()
        self.hub_errors.append(error)
        # (a refusal is said by whoever waits on ``refused``, the CLI; an offline
        # peer is a call's outcome or a message to one who left: info. Others, such
        # as rate-limited or too-large, only here: a warning)
        log.log(logging.INFO if error.code in SAID_ELSEWHERE else logging.WARNING,
                "hub error %s: %s", error.code, error.message)
        if self.on_hub_error is not None:
            self.on_hub_error(error)

    # -- tasks ----------------------------------------------------------------

    async def _sender(self) -> None:
        while True:
            message = await self._outbox.get()
            try:
                await self.hub.send(message)
            except HubUnreachable as exc:
                routed = self.line.hub_lost(self.loop_time)
                # (said elsewhere, info: the refusal, or the end of the call it was for)
                said = self.refused.is_set() or self._ended_by_hub_loss(message.to, routed)
                log.log(logging.INFO if said else logging.WARNING,
                        "could not send %s to %s: %s", message.type, message.to, exc)
                self._run(routed)
            finally:
                self._outbox.task_done()

    def _ended_by_hub_loss(self, peer: str, routed: list[Routed]) -> bool:
        """The call with ``peer`` ends because the hub is lost (now, ``routed``, or just
        before): its outcome, ``hub-unreachable``, says so."""
        if any(isinstance(r.action, cs.Ended) and r.call is not None and r.call.peer == peer
               for r in routed):
            return True
        calls = [*self._calls.values(), *([self._latest] if self._latest else [])]
        return any(c.peer == peer and c.machine.outcome is cs.Outcome.HUB_UNREACHABLE
                   for c in calls)

    async def _timer(self) -> None:
        while True:
            self._wake.clear()
            deadline = self.line.deadline()
            timeout = None if deadline is None else max(0.0, deadline - self.loop_time)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._run(self.line.timers(self.loop_time))

