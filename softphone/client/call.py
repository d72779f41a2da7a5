"""One call of a :class:`~softphone.client.phone.Phone`: what a user does with it and reads.

:class:`Call` is the public API of a call: answer, reject, hang up, mute,
wait; and what a terminal phone or a bot shows: times
(:attr:`Call.started_at`, :attr:`Call.connected_at`,
:attr:`Call.setup_seconds`, :attr:`Call.talk_seconds`), levels
(:attr:`Call.mic_dbfs`, :attr:`Call.speaker_dbfs`), :attr:`Call.codec`,
:meth:`Call.stats`, :attr:`Call.muted`, the verification code :attr:`Call.sas`
(:mod:`softphone.core.sas`; also in the ``media`` event). Its audio is one
:class:`~softphone.media.audiopath.CallAudio` (:attr:`Call.audio`); its
events (``state``, ``media``, ``dtmf``, ``dtmf-sent``, ``device-lost``,
``hold``, ``resume``, ``media-lost``, ``media-restart``, ``ended``) go to
:meth:`Call.on_event` listeners (:mod:`~softphone.client.call_events`);
:meth:`Call.hold` and :meth:`Call.resume` (:mod:`~softphone.client.hold_link`). Keys (DTMF, RFC
4733): :meth:`Call.send_dtmf` sends them, :meth:`Call.next_digit` waits for
the next one the peer pressed (:mod:`~softphone.client.dtmf_link`). :class:`CallResult`
says how it went (:mod:`softphone.client.calltypes`, re-exported here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from softphone.client.call_events import ANNOUNCE_WAIT as ANNOUNCE_WAIT
from softphone.client.call_events import CallEvents
from softphone.client.calltypes import CallEnded as CallEnded
from softphone.client.calltypes import CallResult as CallResult
from softphone.client.calltypes import EventCallback as EventCallback
from softphone.client.calltypes import MediaLink as MediaLink
from softphone.client.dtmf_link import DtmfLink
from softphone.client.hold_link import HoldLink, hold_agreed
from softphone.core import callstate as cs
from softphone.core.dtmf import DtmfEvent
from softphone.core.midcall import announced
from softphone.core.sas import FingerprintError, sas_from_sdp
from softphone.media.audiopath import CallAudio, MediaConfig
from softphone.media.dtmf_rtp import DtmfUnavailable as DtmfUnavailable
from softphone.media.rtc import CandidatePair, MediaStats
from softphone.media.tracks import AudioOutput, AudioSource, Sink

if TYPE_CHECKING:
    from softphone.client.phone import Phone
    from softphone.client.restart_link import RestartLink

log = logging.getLogger(__name__)


def release(source: AudioSource | None, sinks: Sequence[Sink], output: AudioOutput | None,
            in_use: Sequence[CallAudio]) -> None:
    """Close what a refused :meth:`Call.accept` or :meth:`Phone.dial
    <softphone.client.phone.Phone.dial>` was given (as the call would have at its
    end), except what ``in_use`` (the phone's calls' audio) still sends or plays."""
    used: set[int] = set()
    for audio in in_use:
        used |= {id(audio.source), id(audio.output), *(id(sink) for sink in audio.sinks)}
    closers: list[Callable[[], None]] = []
    if source is not None and id(source) not in used:
        closers.append(source.stop)
    closers += [close for sink in sinks if id(sink) not in used
                and (close := getattr(sink, "close", None)) is not None]
    if output is not None and id(output) not in used:
        closers.append(output.stop)
    for close in closers:
        try:
            close()
        except Exception:
            log.exception("closing %r failed", close)


class Call:
    """One call, outgoing or incoming. Created by :meth:`Phone.dial` or received.

    Times are on the phone's event loop clock (``loop.time()``, monotonic).
    """

    def __init__(self, phone: Phone, machine: cs.CallMachine) -> None:
        self.phone = phone
        #: The sans-I/O state of the call (read it through the properties below).
        self.machine = machine
        #: The call's audio path, once it has one (dialing, or accepted).
        self.audio: CallAudio | None = None
        #: The peer connection, once media is being set up.
        self.media: MediaLink | None = None
        self._media_queue: asyncio.Queue[Callable[[], Coroutine[Any, Any, None]] | None] = \
            asyncio.Queue()
        self._media_task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._ended: asyncio.Future[CallResult] = asyncio.get_running_loop().create_future()
        #: Its listeners, and its events being announced (:meth:`_announce`).
        self._events = CallEvents(machine)
        self._final_stats = MediaStats()
        #: Its keys: the tones it sends, the digits the peer pressed.
        self._keys = DtmfLink(self)
        #: The verification code (four PGP words, :mod:`softphone.core.sas`), set once
        #: media is connected; None before, or if an SDP had no usable fingerprint.
        self.sas: str | None = None
        self._sas: asyncio.Task[str | None] | None = None
        self._hold: HoldLink | None = None
        #: Media restart (:mod:`softphone.client.restart_link`), made with the first
        #: connection; feed it :meth:`RestartLink.hold_changed` etc.
        self.restart_link: RestartLink | None = None

    # -- what a user does -----------------------------------------------------

    def on_event(self, callback: EventCallback) -> None:
        """Call ``callback(event_dict)`` for every state change, device loss and the end.

        Each event is a dict with ``"event"`` and ``"peer"``. Media restart
        (``docs/protocol.md``, "Media restart and hold") adds two:

        - ``{"event": "media-lost", "reason": R, "restarting": bool}``: the media
          path died (``R``: ``ice-disconnected``, ``ice-failed``, ``rtp-silence``,
          ``path-dead``, ``address-change``, ``peer-address-change``, ``peer``: the
          peer restarts); ``restarting`` False when the peer cannot restart (then
          only the old path may come back);
        - ``{"event": "media-restart", "reason": R, "gap_ms": N, "generation": G,
          "attempts": A, "candidate_pair": {...}, "sas": CODE}``: media is back on
          a fresh peer connection (generation ``G``, after ``A`` attempts), ``N`` ms
          without audio; ``sas`` is the new connection's verification code (the same:
          a call's connections keep its first DTLS certificate).

        Media that does not come back within ``--give-up`` ends the call with the
        outcome ``media-lost`` (never ``completed``).
        """
        self._events.listen(callback)

    @property
    def listened(self) -> bool:
        """The call has event listeners (:meth:`on_event`): what it tells as events (a
        ``media-lost``) reaches someone, and the library logs it at info only."""
        return self._events.listened

    async def accept(self, source: AudioSource | None = None, sinks: Sequence[Sink] = (), *,
                     output: AudioOutput | None = None, media: MediaConfig | None = None
                     ) -> None:
        """Answer an incoming call, sending ``source`` (silence if None).

        ``sinks`` get what we hear; ``output`` plays it (a speaker,
        :class:`~softphone.media.devices.SpeakerDriver`); ``media``: this
        call's settings (default: the phone's).

        Raises :class:`CallEnded` if the call is over (the caller gave up: missed),
        :class:`~softphone.core.callstate.CallStateError` if it cannot be answered
        (an outgoing call, or one accepted already); TypeError for a sink that is not
        one. A refused accept changes nothing
        of the call and closes what it was given (``source``, ``sinks``, ``output``),
        except what a call of the phone already uses: what is handed to accept is
        the call's either way (an accepted call closes it as it ends).
        """
        try:
            if self.machine.is_ended:
                raise CallEnded(await self.ended())
            self.machine.check(cs.LocalAccept)
            self._prepare(source, sinks, output, media)  # (TypeError: not a sink)
        except BaseException:
            release(source, sinks, output, self.phone.audio_in_use())
            raise
        config = media or self.phone.media_config
        self.phone._feed(self, cs.LocalAccept(announced(restart=config.restart_enabled)))

    async def reject(self, reason: str = "declined") -> None:
        self.phone._feed(self, cs.LocalReject(reason))

    async def hangup(self, reason: str = "hangup") -> None:
        """End the call (cancel it if it is not connected yet). Idempotent."""
        if not self.machine.is_ended:
            self.phone._feed(self, cs.LocalHangup(reason))

    async def send_dtmf(self, tones: str, duration_ms: float = 100, gap_ms: float = 70) -> None:
        """Press keys: send ``tones`` as RTP telephone events (RFC 4733), as ``insertDTMF`` does.

        ``0-9 * # A-D``; ``,`` is a 2 s pause; ``duration_ms`` per tone
        (40..6000), ``gap_ms`` between tones (at least 30). Waits until media
        is connected, then until the last tone is out. A bad character, no
        character at all, or a duration or gap out of range is a one-line
        ValueError (before anything is sent);
        :class:`~softphone.media.dtmf_rtp.DtmfUnavailable` if the peer did
        not agree to telephone events. :class:`CallEnded` if the call is over
        before every tone went out (or was over already); a call that ends once
        the last tone is out (the peer hangs up on ``#``) returns normally.
        """
        await self._keys.send(tones, duration_ms, gap_ms)

    async def next_digit(self, timeout: float | None = None) -> DtmfEvent:  # noqa: ASYNC109
        """The next key the peer pressed (each digit once, when it ended).

        Digits that came before this was called are given first, oldest first.
        Raises :class:`CallEnded` once the call is over and no digit is left;
        ``TimeoutError`` if no key came within ``timeout`` seconds (None: wait
        as long as the call lasts). A key pressed after a timeout is kept for
        the next call. Cancelling the wait (``asyncio.wait_for``) leaves nothing
        behind either.
        """
        return await self._keys.next_digit(timeout)

    async def hold(self) -> None:
        """Put the call on hold: no audio either way until :meth:`resume` (and the peer's,
        if it holds too). Events: ``{"event": "hold", "by": "local"}``; ``"remote"`` there.

        Waits until media is up (:class:`CallEnded` if the call ends first), then holds
        at once and tells the peer (every second until it acknowledges). A peer that did
        not announce ``hold`` is not told: we send silence and play nothing.
        """
        (await self._holding()).local(True)

    async def resume(self) -> None:
        """Take the call off hold (our side; audio flows once neither side holds)."""
        (await self._holding()).local(False)

    @property
    def on_hold(self) -> bool:
        """We put the call on hold (:meth:`hold`)."""
        return self._hold is not None and self._hold.local_held

    @property
    def held_by_remote(self) -> bool:
        """The peer put the call on hold."""
        return self._hold is not None and self._hold.remote_held

    def mute(self, muted: bool = True) -> None:
        """Send silence (``muted``) or the source again."""
        if self.audio is not None:
            self.audio.muted = muted

    async def connected(self) -> None:
        """Wait until media is up (returns at once if it was). Raises if the call ended first.

        Once it returns, :attr:`sas` is known (the code is derived with the media).
        """
        waiter: asyncio.Future[Any] = asyncio.ensure_future(self._connected.wait())
        ended: asyncio.Future[Any] = self._ended
        done, _ = await asyncio.wait({waiter, ended}, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            result = self._ended.result()
            raise CallEnded(result)
        if self._sas is not None:
            await asyncio.shield(self._sas)

    async def ended(self) -> CallResult:
        """Wait for the end of the call and return how it went."""
        return await asyncio.shield(self._ended)

    async def stats(self) -> MediaStats:
        """The media figures now (after the end: as they were at the end)."""
        if self.media is not None and not self.machine.is_ended:
            stats = await self.media.stats()
            link = self.restart_link  # (a restarted call: with its earlier connections')
            return stats if link is None else link.carried(stats)
        return self._final_stats

    # -- what a user reads ------------------------------------------------------

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
    def is_ended(self) -> bool:
        return self.machine.is_ended

    @property
    def request_data(self) -> Any:
        return self.machine.request_data

    @property
    def peer_features(self) -> frozenset[str]:
        """What the peer announced in its ``call-request``/``call-accept`` (``"restart"``,
        ``"hold"``, ...; ``docs/protocol.md``: Features). Empty for a peer that sends no
        data (the original pages), and for a caller until the callee accepted."""
        return self.machine.peer_features

    @property
    def features(self) -> tuple[str, ...]:
        """What we announced (``--no-restart``: without ``"restart"``). A feature is used
        only when both sides announced it."""
        return self.machine.features

    @property
    def result(self) -> CallResult | None:
        return self._ended.result() if self._ended.done() else None

    @property
    def announce_wait(self) -> float:
        """Seconds the end waits for events still being announced (their verification
        code being derived); then they go without it (default :data:`ANNOUNCE_WAIT`)."""
        return self._events.announce_wait

    @announce_wait.setter
    def announce_wait(self, seconds: float) -> None:
        self._events.announce_wait = seconds

    @property
    def started_at(self) -> float:
        """When the call-request was sent or received."""
        return self.machine.started_at

    @property
    def connected_at(self) -> float | None:
        """When media connected (None before)."""
        return self.machine.connected_at

    @property
    def setup_seconds(self) -> float | None:
        """call-request -> media connected (None until then)."""
        at = self.machine.connected_at
        return None if at is None else at - self.machine.started_at

    @property
    def talk_seconds(self) -> float:
        """Seconds since media connected (0 before; frozen at the end)."""
        at = self.machine.connected_at
        if at is None:
            return 0.0
        end = self.machine.ended_at
        return (self.phone.loop_time if end is None else end) - at

    @property
    def codec(self) -> str | None:
        """The audio codec agreed (``opus/48000``, ``opus/48000+red``), once answered."""
        return None if self.media is None else self.media.codec

    @property
    def candidate_pair(self) -> CandidatePair | None:
        """The ICE candidate pair the media uses, once connected."""
        return None if self.media is None else self.media.candidate_pair

    @property
    def muted(self) -> bool:
        return self.audio is not None and self.audio.muted

    @property
    def mic_dbfs(self) -> float:
        """Level of what we send now (dBFS; -inf when muted or before the call sends)."""
        return float("-inf") if self.audio is None else self.audio.mic_dbfs

    @property
    def speaker_dbfs(self) -> float:
        """Level of what we play now (dBFS)."""
        return float("-inf") if self.audio is None else self.audio.speaker_dbfs

    # -- internals ------------------------------------------------------------

    def _hold_link(self) -> HoldLink:
        """The call's hold (made when first needed: connected, the features are known)."""
        if self._hold is None:
            self._hold = HoldLink(self, enabled=hold_agreed(self))
        return self._hold

    async def _holding(self) -> HoldLink:
        await self.connected()
        if self.machine.is_ended:
            raise CallEnded(await self.ended())
        return self._hold_link()

    def _prepare(self, source: AudioSource | None, sinks: Sequence[Sink],
                 output: AudioOutput | None, media: MediaConfig | None) -> None:
        self._adopt(CallAudio(source, sinks, output=output,
                              config=media or self.phone.media_config,
                              frame_clock=self.phone.frame_clock))

    def _adopt(self, audio: CallAudio) -> None:
        """Make ``audio`` this call's (its device losses become our events)."""
        audio.on_device_lost = self._device_lost
        self.audio = audio

    def _device_lost(self, message: str) -> None:
        self._emit({"event": "device-lost", "message": message})

    def _attach(self, media: MediaLink) -> None:
        """``media`` is this call's peer connection: its DTMF become our events."""
        self.media = media
        self._keys.attach(media.dtmf)

    def _let_go(self) -> None:
        """The call's media is closed: its DTMF no longer tells the call (the audio
        let go of its own as it closed), so no cycle keeps the ended call's objects
        for the garbage collector, some 60 calls later (issue 15)."""
        if self.media is not None:
            self.media.dtmf.on_event = None
            self.media.dtmf.on_tone = None

    def _derive_sas(self) -> None:
        """Start deriving :attr:`sas` once both descriptions are set (once per call).

        PBKDF2 takes ~25 ms: it runs in a thread, usually while ICE and DTLS connect.
        """
        if self._sas is not None or self.media is None:
            return
        local, remote = self.media.descriptions()
        if local is not None and remote is not None:
            self._sas = asyncio.create_task(self._sas_of(local, remote), name="call-sas")

    async def _sas_of(self, local: str, remote: str) -> str | None:
        try:
            self.sas = str(await asyncio.to_thread(sas_from_sdp, local, remote))
        except FingerprintError as exc:
            log.warning("no verification code for the call with %s: %s", self.peer, exc)
        return self.sas

    def _media_up(self, event: dict[str, Any]) -> None:
        """Media connected: the ``media`` event, with the code, once it is derived."""
        self._derive_sas()

        async def code() -> dict[str, Any]:
            if self._sas is not None:
                await asyncio.shield(self._sas)
            return {"sas": self.sas}

        self._announce({**event, "sas": None}, code, name="call-media-event")

    def _announce(self, event: dict[str, Any],
                  details: Callable[[], Coroutine[Any, Any, dict[str, Any]]], *,
                  name: str) -> None:
        """Emit ``event`` with what ``details()`` adds, once it has, before the end
        (:meth:`CallEvents.announce <softphone.client.call_events.CallEvents.announce>`)."""
        self._events.announce(event, details, name=name)

    def _emit(self, event: dict[str, Any]) -> None:
        self._events.emit(event)

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
                # (info: the call ends with it, and its outcome says so)
                log.info("media operation failed: %s", exc, exc_info=log.isEnabledFor(10))
                self.phone._feed(self, cs.MediaFailed(f"media-error: {exc}"[:120]))

    async def _finish(self, ended: cs.Ended) -> None:
        """Stop media and audio, collect the figures, resolve :meth:`ended`."""
        self._media_queue.put_nowait(None)
        if self._media_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._media_task), 2.0)
            self._media_task.cancel()
        reason = ended.reason
        link = self.restart_link
        if link is not None:  # its other connections; the current one is closed below
            await link.close()
        if self.media is not None:
            errors = self.media.turn_errors()
            if ended.outcome is cs.Outcome.MEDIA_FAILED and errors and \
                    errors[0] not in (reason or ""):  # say why no relay could help
                reason = f"{reason}; {errors[0]}"
            self._final_stats = await self.media.stats()
            if link is not None:
                self._final_stats = link.carried(self._final_stats)
            await self.media.close()
        m = self.machine
        first_audio = None
        if self.audio is not None:
            heard = self.audio.receiver.first_audio_at
            first_audio = None if heard is None else heard - m.started_at
            await self.audio.close()  # the output device, the source, the sinks
        self._let_go()
        held = () if self._hold is None else self._hold.close(ended.at)
        result = CallResult(
            peer=m.peer, role=m.role, outcome=ended.outcome, reason=reason, ended_by=ended.by,
            setup_seconds=self.setup_seconds,
            first_audio_seconds=first_audio,
            talk_seconds=0.0 if m.connected_at is None else ended.at - m.connected_at,
            stats=self._final_stats,
            candidate_pair=self.candidate_pair,
            held=held,
        )
        await self._events.announced()  # the media and media-restart events come first
        self._emit({"event": "ended", **result.to_json()})
        self._events.close()  # the last event: the listeners go (issue 15)
        if not self._ended.done():
            self._ended.set_result(result)
