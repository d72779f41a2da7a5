"""Media restart in a call: the asyncio adapter around
:class:`~softphone.core.restart.RestartMachine`.

One :class:`RestartLink` per call (``Call.restart_link``), made with its first
peer connection and started when that connects (``docs/protocol.md``, "Media
restart and hold"). It feeds the machine each connection's state, RTP received
(aiortc's per-connection packet counter sampled on a timer, and a new
connection's first packet at once: :class:`~softphone.media.handover.Handover`;
nothing per packet here), the peer's restart messages (the call machine's
``MidCall`` action), the hub connection going down and up, an ``offline``
answer to our offer, hold, and the phone loop's time. It carries out what the
machine says: a fresh peer connection (the phone's media factory, the call's
one ``CallAudio``) offering or answering with ``restart`` = its generation;
make before break (the old connection plays until the new one carries RTP);
the call's ``media-lost``/``media-restart`` events; the end as ``media-lost``.
Each connection is a :class:`~softphone.client.restart_conn.RestartConn`; all
of them use the call's first DTLS certificate, so the verification code stays.

The network's part, one method each: :meth:`RestartLink.probe_path`
(:func:`softphone.media.pathcheck.probe_path`), :meth:`RestartLink.check_signaling`
(``Phone.check_hub()``; its changes come back as :meth:`signaling_changed`, and
while media is lost the phone's reconnects are hurried: ``HubCheck.episode``),
the phone's address watcher (``Phone.addresses``, subscribed in :meth:`start`) and
a :class:`~softphone.media.pathcheck.RemoteAddressWatch` on the current
connection (:meth:`_watch`). Hold (:mod:`softphone.client.hold_link`): while no
RTP is expected, silence restarts nothing (:meth:`hold_changed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import weakref
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Final

from softphone._tasks import spawn
from softphone.client.calltypes import held_call
from softphone.client.restart_conn import RestartConn, verification_code
from softphone.core import callstate as cs
from softphone.core import restart as r
from softphone.core.line import Routed
from softphone.core.midcall import (
    FEATURE_RESTART,
    MidCallMessage,
    RestartAnswer,
    RestartCandidate,
    RestartOffer,
    restart_answer,
    restart_offer,
)
from softphone.core.protocol import Message
from softphone.media import pathcheck
from softphone.media.handover import Generation
from softphone.media.rtc import MediaStats, RTCCertificate

if TYPE_CHECKING:
    from softphone.client.call import Call, MediaLink
    from softphone.client.phone import Phone

log = logging.getLogger(__name__)

#: Seconds between two looks at the packet counters while media flows, and while it
#: is lost (the gap is measured to this).
SAMPLE_EVERY: Final = 0.2
SAMPLE_EVERY_LOST: Final = 0.05
#: The counters added up over the connections a call had (``MediaStats``).
_SUMMED: Final = ("packets_sent", "packets_received", "packets_lost", "bytes_sent")


class RestartLink:
    """Media restart for one call (see the module docstring)."""

    def __init__(self, phone: Phone, call: Call, ice_servers: Sequence[dict[str, Any]],
                 first: MediaLink) -> None:
        self.phone = phone
        # Weak: the call holds its link (a cycle would leave the ended call's objects
        # to the garbage collector: issue 15).
        self._call = weakref.ref(call)
        self.ice_servers = list(ice_servers)
        assert call.audio is not None
        self.audio = call.audio
        self.settings = self.audio.config.restart
        self.machine: r.RestartMachine | None = None
        self._conns: dict[int, RestartConn] = {0: RestartConn(0, first)}
        #: The call's first DTLS certificate, given to each of its later connections: the
        #: verification code stays the same (None: a media link without one, a fake).
        certificate = getattr(first, "certificate", None)
        self.certificate = certificate if isinstance(certificate, RTCCertificate) else None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        #: The figures of the connections already closed (added to the current one's).
        self._carried = MediaStats()
        self._closing: set[asyncio.Task[None]] = set()
        self._unsubscribe: list[Callable[[], None]] = []
        self._episode = False  # told the phone's hub check that media is lost
        self.audio.handover.on_playing = self._playing

    @property
    def call(self) -> Call:
        return held_call(self._call, "restart link")

    # -- what the phone and the call feed ------------------------------------------

    @property
    def enabled(self) -> bool:
        """Both sides announced ``restart`` (else: watched, and given up on, only)."""
        return FEATURE_RESTART in self.call.features and \
            FEATURE_RESTART in self.call.peer_features

    @property
    def restarting(self) -> bool:
        """Media is lost and being restarted (or waited for)."""
        return self.machine is not None and self.machine.restarting

    def start(self) -> None:
        """The call's first connection is up: watch it (once)."""
        if self.machine is not None or self._stopped:
            return
        self.machine = r.RestartMachine(self.call.role is cs.Role.CALLER, self.enabled,
                                        self.settings)
        first = self._conns.get(0)
        if first is None or first.share is None:
            log.info("the call's media cannot report RTP: no media restart")
            return
        first.seen = first.share.packets_received()
        self.feed(r.ConnectionChanged(0, r.PeerState.CONNECTED))
        self._watch(first)
        phone = self.phone
        # The baseline first, then each change (the machine compares with the last).
        self.feed(r.AddressesChanged(phone.addresses.current))
        self._unsubscribe += [phone.addresses.subscribe(self.feed),
                              phone.hub_check.subscribe(self.signaling_changed)]
        hold = self.call._hold_link()
        hold.on_rtp_expected.append(lambda expected: self.hold_changed(not expected))
        if not hold.machine.expects_rtp:
            self.hold_changed(True)
        self._task = asyncio.create_task(self._run(), name="restart-link")

    def first_failed(self, reason: str) -> bool:
        """The first connection failed: True if that is ours to handle (the call is up)."""
        if self.machine is None or not self.machine.armed:
            return False  # setting up: the call machine's media failure
        self._state(self._conns.get(0), r.PeerState.FAILED, reason)
        return True

    def feed(self, event: r.RestartEvent) -> None:
        """Feed the machine one event now; carry out what it says."""
        machine = self.machine
        if machine is None or self._stopped:
            return
        self._do(machine.handle(event, self.phone.loop_time))

    def on_message(self, message: MidCallMessage) -> None:
        """A restart offer, answer or candidate from the peer."""
        if isinstance(message, RestartOffer):
            log.info("restart offer %d from %s (%s)", message.generation, self.call.peer,
                     message.reason)
            self.feed(r.RemoteRestartOffer(message.generation, message.sdp))
        elif isinstance(message, RestartAnswer):
            self.feed(r.RemoteRestartAnswer(message.generation, message.sdp))
        elif isinstance(message, RestartCandidate):  # (0: the first connection's, late)
            conn = self._conn_of(message.generation)
            if conn is None:  # docs/protocol.md: a generation that is not open: dropped
                log.info("candidate of connection %d from %s dropped: not open",
                         message.generation, self.call.peer)
            else:
                conn.session.add_candidate(message.candidate)

    def signaling_changed(self, up: bool) -> None:
        self.feed(r.SignalingChanged(up))

    def peer_unreachable(self) -> None:
        """The hub answered our restart offer ``offline``."""
        self.feed(r.PeerUnreachable())

    def hold_changed(self, held: bool) -> None:
        """For the hold adapter: while held no RTP is expected (no restart for silence)."""
        self.feed(r.HoldChanged(held))

    # -- the network's checks ---------------------------------------------------------

    async def probe_path(self, session: MediaLink) -> bool | None:
        """One connectivity check on ``session``'s selected pair: did the peer answer?

        None: no check can be made (not a real peer connection), so no result is
        fed and the silence timeout (``--restart-silence``) decides.
        """
        if getattr(session, "pc", None) is None:
            return None
        return await pathcheck.probe_path(session)

    async def check_signaling(self) -> None:
        """Check the hub connection, reconnecting at once if it is dead (the phone's
        :class:`~softphone.client.hubcheck.HubCheck`); its changes come back as
        :meth:`signaling_changed`."""
        await self.phone.check_hub()

    # -- the end -----------------------------------------------------------------------

    def carried(self, current: MediaStats) -> MediaStats:
        """``current``'s figures plus those of the call's connections already closed."""
        carried = self._carried
        return dataclasses.replace(current, **{
            name: getattr(current, name) + getattr(carried, name) for name in _SUMMED})

    async def close(self) -> None:
        """The call ended: stop, close every connection but the call's current one."""
        self._stopped = True
        if self.machine is not None:
            self.machine.finish()
        if self._task is not None:
            self._task.cancel()
        self._lost(False)
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        for conn in self._conns.values():
            if conn.watch is not None:
                conn.watch.stop()
                conn.watch = None  # (its callback holds conn)
        current = self.call.media
        for conn in list(self._conns.values()):
            if conn.session is not current and not conn.closed:
                conn.closed = True
                with contextlib.suppress(Exception):
                    await conn.session.close()
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=3.0)
        # Nothing of the call refers back to us any more: no cycle through us keeps
        # its connections (and their audio) for the garbage collector (issue 15).
        if self.audio.handover.on_playing == self._playing:
            self.audio.handover.on_playing = None
        self._conns.clear()
        self._task = None  # (cancelled: its traceback's frame refers to us)

    # -- internals -----------------------------------------------------------------------

    async def _run(self) -> None:
        """Sample the counters, fire the machine's timers."""
        loop = asyncio.get_running_loop()
        while not self._stopped and self.machine is not None and not self.machine.ended:
            now = loop.time()
            self._sample()
            machine = self.machine
            due = machine.deadline()
            if due is not None and now >= due:
                self._do(machine.handle_timer(now))
                due = machine.deadline()
            wait = SAMPLE_EVERY_LOST if machine.restarting else SAMPLE_EVERY
            if due is not None:
                wait = min(wait, max(0.005, due - loop.time()))
            await asyncio.sleep(wait)

    def _sample(self) -> None:
        for conn in list(self._conns.values()):
            share = conn.share
            if share is None or conn.closed:
                continue
            count = share.packets_received()
            if count != conn.seen:
                conn.seen = count
                self.feed(r.RtpReceived(conn.generation))

    def _playing(self, share: Generation) -> None:
        """A newer connection's first packet is being played: it carries RTP."""
        for conn in list(self._conns.values()):
            if conn.share is share and not conn.closed:
                self.feed(r.RtpReceived(conn.generation))

    def _conn_of(self, generation: int) -> RestartConn | None:
        conn = self._conns.get(generation)
        return None if conn is None or conn.closed else conn

    def _state(self, conn: RestartConn | None, state: r.PeerState, reason: str = "") -> None:
        """A connection's state changed (events of closed connections are dropped)."""
        machine = self.machine
        if conn is None or conn.closed or machine is None or \
                self._conns.get(conn.generation) is not conn:
            return
        log.info("connection %d of the call with %s: %s %s", conn.generation,
                 self.call.peer, state, reason)
        current = conn.generation == machine.current
        if state is r.PeerState.CONNECTED and not current and conn.share is not None:
            self.audio.handover.send_from(conn.share)  # it works: send on it
        self.feed(r.ConnectionChanged(conn.generation, state))
        if state is r.PeerState.FAILED and current and not self.enabled and \
                not self.call.is_ended:
            # No restart agreed, and an aiortc connection that failed never comes back.
            self.phone._feed(self.call, cs.MediaGiveUp(reason or "ice-failed"))

    def _send(self, message: Message) -> None:
        call = self.call
        if not call.is_ended:
            self.phone._run([Routed(call.machine, cs.Send(message))])

    def _lost(self, lost: bool) -> None:
        """Tell the phone's hub check whether this call's media is lost (hurried
        reconnects while it is)."""
        if lost != self._episode:
            self._episode = lost
            self.phone.hub_check.episode(self, lost)

    def _watch(self, conn: RestartConn) -> None:
        """Watch where the peer's packets on ``conn`` (now current) come from."""
        if conn.watch is not None or conn.share is None or conn.closed:
            return
        generation = conn.generation

        def moved(address: tuple[str, int]) -> None:
            if not conn.closed:
                self.feed(r.RemoteAddressChanged(generation))

        watch = pathcheck.RemoteAddressWatch(conn.session, moved)
        if watch.start():
            conn.watch = watch

    def _op(self, conn: RestartConn, op: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``op`` after the connection's earlier operations (failing it if it raises)."""
        conn.then(op, lambda why: self._state(conn, r.PeerState.FAILED, why))

    def _open(self, generation: int, reason: str = "") -> RestartConn:
        """A fresh peer connection for ``generation``, gathering at once."""
        conn: RestartConn

        def connected() -> None:
            self._state(conn, r.PeerState.CONNECTED)

        def failed(why: str) -> None:
            self._state(conn, r.PeerState.FAILED, why)

        session = self.phone._media_factory(
            self.ice_servers, self.audio, relay_only=self.phone.relay_only,
            on_connected=connected, on_failed=failed, certificate=self.certificate)
        conn = RestartConn(generation, session, reason=reason)
        self._conns[generation] = conn
        session.pregather()
        return conn

    def _do(self, actions: list[r.RestartAction]) -> None:
        for action in actions:
            try:
                self._carry_out(action)
            except Exception:
                log.exception("media restart: %s failed", action)

    def _carry_out(self, action: r.RestartAction) -> None:
        call = self.call
        if isinstance(action, r.StartRestart | r.MediaStalled):
            restarting = isinstance(action, r.StartRestart)
            # (the call's media-lost event says it to its listeners: then info only)
            log.log(self._told_level(), "media lost with %s (%s)%s", call.peer,
                    action.reason, ", restarting" if restarting else "")
            self.phone._feed(call, cs.MediaInterrupted(lost=True))
            self._lost(True)
            call._emit({"event": "media-lost", "reason": str(action.reason),
                        "restarting": restarting})
        elif isinstance(action, r.ProbePath):
            conn = self._conn_of(action.generation)
            if conn is not None:
                spawn(self._probe(conn), name="restart-probe")
        elif isinstance(action, r.SendRestartOffer):
            self._offer(self._open(action.generation, str(action.reason)))
        elif isinstance(action, r.ResendRestartOffer):
            conn = self._conn_of(action.generation)
            if conn is not None and conn.offer is not None:
                self._send(restart_offer(call.peer, conn.generation, conn.offer, conn.reason))
        elif isinstance(action, r.AcceptRestartOffer):
            self._answer(self._open(action.generation), action.sdp)
        elif isinstance(action, r.ApplyRestartAnswer):
            conn = self._conn_of(action.generation)
            if conn is not None:
                session, sdp = conn.session, action.sdp
                self._op(conn, lambda: session.apply_answer(sdp))
        elif isinstance(action, r.IgnoreStale):
            log.info("restart %s %d from %s ignored: %s", action.kind, action.generation,
                     call.peer, action.why)
        elif isinstance(action, r.CloseConnection):
            self._close(action.generation)
        elif isinstance(action, r.CheckSignaling):
            spawn(self.check_signaling(), name="restart-check-hub")
        elif isinstance(action, r.RestartDone):
            self._done(action)
        elif isinstance(action, r.GiveUp):
            log.log(self._told_level(), "media with %s did not come back: ending the call",
                    call.peer)  # (the call's outcome, media-lost, says it to its listeners)
            self._lost(False)
            self.phone._feed(call, cs.MediaGiveUp(str(action.outcome)))

    def _told_level(self) -> int:
        """A warning, unless the call's events reach someone (they say it): info."""
        return logging.INFO if self.call.listened else logging.WARNING

    def _offer(self, conn: RestartConn) -> None:
        async def offer() -> None:
            sdp = await conn.session.create_offer()
            if conn.closed:
                return
            conn.offer = sdp
            self._send(restart_offer(self.call.peer, conn.generation, sdp, conn.reason))
            self.feed(r.OfferSent(conn.generation))

        self._op(conn, offer)

    def _answer(self, conn: RestartConn, sdp: str) -> None:
        async def answer() -> None:
            local = await conn.session.accept_offer(sdp)
            if conn.closed:
                return
            self._send(restart_answer(self.call.peer, conn.generation, local))
            self.feed(r.AnswerSent(conn.generation))

        self._op(conn, answer)

    async def _probe(self, conn: RestartConn) -> None:
        ok = await self.probe_path(conn.session)
        if ok is not None and not conn.closed:
            self.feed(r.ProbeResult(conn.generation, ok))

    def _close(self, generation: int) -> None:
        conn = self._conns.pop(generation, None)
        if conn is None or conn.closed:
            return
        conn.closed = True
        if conn.watch is not None:
            conn.watch.stop()
            conn.watch = None  # (its callback holds conn)
        handover = self.audio.handover
        share = conn.share
        machine = self.machine
        current = None if machine is None else self._conn_of(machine.current)
        if share is not None:
            handover.close(share)
            if current is not None and current.share is not None:
                if handover.sending is share:
                    handover.send_from(current.share)
                if handover.playing is share:
                    handover.play_from(current.share)
        task = spawn(self._retire(conn), name=f"restart-close-{generation}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _retire(self, conn: RestartConn) -> None:
        """Close a connection, keeping its figures if it carried the call."""
        if conn.chain is not None:
            conn.chain.cancel()
        call = self._call()  # (gone: the call ended and was let go of meanwhile)
        if (call is not None and conn.session is call.media) or conn.seen:
            stats = await conn.session.stats()
            self._carried = MediaStats(**{
                name: getattr(self._carried, name) + getattr(stats, name) for name in _SUMMED})
        await conn.session.close()

    def _done(self, action: r.RestartDone) -> None:
        conn = self._conn_of(action.generation)
        call = self.call
        if conn is None:
            return
        if call.machine.is_ended:
            # Came up as the call ended: not the call's media (it closes with the rest).
            log.debug("media with %s back on connection %d after the call's end: dropped",
                      call.peer, action.generation)
            return
        if conn.share is not None:
            self.audio.handover.send_from(conn.share)
            self.audio.handover.play_from(conn.share)
        if call.media is not conn.session:
            call._attach(conn.session)  # its DTMF, pair and figures are the call's now
        self.phone._feed(call, cs.MediaInterrupted(lost=False))
        self._lost(False)
        self._watch(conn)
        log.info("media with %s back on connection %d after %d ms (%s, %d attempts)",
                 call.peer, action.generation, action.gap_ms, action.reason, action.attempts)
        event: dict[str, Any] = {
            "event": "media-restart", "reason": str(action.reason), "gap_ms": action.gap_ms,
            "generation": action.generation, "attempts": action.attempts}
        pair = conn.session.candidate_pair
        if pair is not None:
            event["candidate_pair"] = pair.to_json()
        session = conn.session

        async def code() -> dict[str, Any]:
            """The new connection's verification code (the call's first DTLS certificate
            is kept, so it is the code the users compared)."""
            found = await verification_code(session)
            if found is None:
                return {}
            if call.sas is not None and found != call.sas:
                log.warning("the verification code of the call with %s changed: %s -> %s",
                            call.peer, call.sas, found)
            call.sas = found
            return {"sas": found}

        # (Before the call's end event, with the code once derived; not after the end.)
        call._announce(event, code, name="restart-event")
