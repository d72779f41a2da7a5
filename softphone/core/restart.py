"""Media restart inside a call, sans I/O: when to restart, glare, give-up.

aiortc has no ICE restart, so a call whose media path died gets a *fresh*
peer connection and a new offer/answer through the hub, inside the same call
(``docs/protocol.md``, "Media restart and hold"). This module decides when and
how; an adapter does the I/O. One :class:`RestartMachine` per call, driven by
events (small frozen dataclasses) with the time passed in as ``now``; it
returns actions and never reads a clock. :meth:`RestartMachine.deadline` says
when :meth:`RestartMachine.handle_timer` is next due.

Connections are numbered by *generation*: 0 is the call's first one, each
restart attempt takes the next number. Events name the generation they come
from; the adapter feeds those of the connections it holds open (it drops a
connection's handlers when told to close it: a glare may reuse its number),
and whatever belongs to an old or abandoned one is ignored. At most one
attempt is in flight; the connection that carried media before (``current``)
stays open until the new one carries RTP, so a path that comes back by itself
keeps playing meanwhile.

Lost media (an *episode*) starts on: the current connection ``disconnected``
or ``failed``; no RTP for ``silence`` seconds while connected and not on hold,
or for ``probe_after`` seconds when a check on the path then gets no answer;
a local address removed; the peer's packets arriving from a new address (its
NAT rebound: ours to the old one are lost); or a restart offer from the peer.
It ends when RTP arrives on the new connection (:class:`RestartDone`), or
after ``give_up`` seconds (:class:`GiveUp` with :data:`MEDIA_LOST`).

Glare (both sides offer at once): the offer with the higher generation wins,
and between equal generations the caller's; the loser drops its own attempt
and answers. Both sides compare the same two pairs, so they agree.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from softphone.core.restart_events import (
    MEDIA_LOST,
    AcceptRestartOffer,
    AddressesChanged,
    AnswerSent,
    ApplyRestartAnswer,
    CheckSignaling,
    CloseConnection,
    ConnectionChanged,
    GiveUp,
    HoldChanged,
    IgnoreStale,
    MediaStalled,
    OfferSent,
    PeerState,
    PeerUnreachable,
    ProbePath,
    ProbeResult,
    RemoteAddressChanged,
    RemoteRestartAnswer,
    RemoteRestartOffer,
    ResendRestartOffer,
    RestartAction,
    RestartDone,
    RestartEvent,
    RestartReason,
    RestartSettings,
    RtpReceived,
    SendRestartOffer,
    SignalingChanged,
    StartRestart,
)

__all__ = [  # the vocabulary, re-exported: restart.X is the whole API
    "MEDIA_LOST", "AcceptRestartOffer", "AddressesChanged", "AnswerSent", "ApplyRestartAnswer",
    "CheckSignaling", "CloseConnection", "ConnectionChanged", "GiveUp", "HoldChanged",
    "IgnoreStale", "MediaStalled", "OfferSent", "PeerState", "PeerUnreachable", "ProbePath",
    "ProbeResult", "RemoteAddressChanged", "RemoteRestartAnswer", "RemoteRestartOffer",
    "ResendRestartOffer", "RestartAction", "RestartDone", "RestartEvent", "RestartMachine",
    "RestartReason", "RestartSettings", "RtpReceived", "SendRestartOffer", "SignalingChanged",
    "StartRestart",
]


# ----------------------------------------------------------------- state ---


class _Phase(enum.Enum):
    PREPARING = "preparing"  # offer or answer being made
    OFFERED = "offered"  # our offer sent, waiting for the answer
    CONNECTING = "connecting"  # answered (or our answer sent): waiting for RTP


@dataclass(slots=True)
class _Attempt:
    generation: int
    offerer: bool
    phase: _Phase
    deadline: float
    connected: bool = False


@dataclass(slots=True)
class _Episode:
    reason: RestartReason
    started_at: float
    last_audio_at: float
    attempts: int = 0
    audio_back_at: float | None = None  # RTP on the old connection again


@dataclass
class RestartMachine:
    """The media-restart decisions of one call, as seen from one side."""

    is_caller: bool
    #: Both sides announced the ``restart`` feature (else: detect and give up only).
    enabled: bool = True
    settings: RestartSettings = field(default_factory=RestartSettings)

    current: int = field(init=False, default=0)
    highest: int = field(init=False, default=0)
    armed: bool = field(init=False, default=False)
    held: bool = field(init=False, default=False)
    signaling_up: bool = field(init=False, default=True)
    ended: bool = field(init=False, default=False)
    attempt: _Attempt | None = field(init=False, default=None)
    episode: _Episode | None = field(init=False, default=None)
    _last_rtp: float = field(init=False, default=0.0)
    _probed: bool = field(init=False, default=False)  # this silence's check was asked for
    _addresses: frozenset[str] | None = field(init=False, default=None)
    _last_attempt_at: float | None = field(init=False, default=None)

    # -- entry points -------------------------------------------------------

    def handle(self, event: RestartEvent, now: float) -> list[RestartAction]:
        """Feed one event; return the actions to carry out, in order."""
        if self.ended:
            return []
        handler = getattr(self, "_on_" + type(event).__name__)
        actions: list[RestartAction] = handler(event, now)
        return actions

    def deadline(self) -> float | None:
        """When :meth:`handle_timer` must next be called, or None."""
        if self.ended or not self.armed:
            return None
        times: list[float] = []
        episode = self.episode
        if episode is None:
            if not self.held:
                times.append(self._last_rtp + self.settings.silence)
                if not self._probed:
                    times.append(self._last_rtp + self.settings.probe_after)
        else:
            times.append(episode.started_at + self.settings.give_up)
            if self.attempt is not None:
                times.append(self.attempt.deadline)
            elif self.enabled and self.signaling_up:
                times.append(self._next_attempt_at())
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[RestartAction]:
        if self.ended or not self.armed:
            return []
        episode = self.episode
        if episode is None:
            if self.held:
                return []
            if now >= self._last_rtp + self.settings.silence:
                return self._lost(RestartReason.RTP_SILENCE, now)
            if not self._probed and now >= self._last_rtp + self.settings.probe_after:
                self._probed = True
                return [ProbePath(self.current)]
            return []
        if now >= episode.started_at + self.settings.give_up:
            actions: list[RestartAction] = []
            if self.attempt is not None:
                actions.append(CloseConnection(self.attempt.generation))
                self.attempt = None
            self.ended = True
            self.episode = None
            return [*actions, GiveUp(MEDIA_LOST, episode.reason)]
        attempt = self.attempt
        if attempt is not None and now >= attempt.deadline:
            actions = self._abandon()
            if attempt.phase is _Phase.OFFERED:
                # No answer: the offer (or the answer) may sit in a dead hub connection.
                actions.append(CheckSignaling())
            return actions + self._settle_or_retry(now)
        if attempt is None:
            return self._try(now)
        return []

    def finish(self) -> None:
        """The call ended: nothing more is decided."""
        self.ended = True

    # -- helpers ------------------------------------------------------------

    @property
    def restarting(self) -> bool:
        """True while media is lost (an episode is under way)."""
        return self.episode is not None

    def _next_attempt_at(self) -> float:
        if self._last_attempt_at is None:
            return 0.0
        return self._last_attempt_at + self.settings.retry_interval

    def _lost(self, reason: RestartReason, now: float) -> list[RestartAction]:
        """Media was lost on the current connection: begin an episode."""
        self.episode = _Episode(reason, now, self._last_rtp)
        if not self.enabled:
            return [MediaStalled(reason)]
        # The hub connection may have died with the media path, silently: check it.
        check: list[RestartAction] = [CheckSignaling()] if self.signaling_up else []
        return [*check, StartRestart(reason, self.current), *self._try(now, at_once=True)]

    def _try(self, now: float, at_once: bool = False) -> list[RestartAction]:
        """Start an attempt (our offer) if none is in flight and the hub is reachable."""
        if (not self.enabled or self.episode is None or self.attempt is not None
                or not self.signaling_up):
            return []
        if not at_once and now < self._next_attempt_at():
            return []
        self.highest += 1
        generation = self.highest
        self.attempt = _Attempt(generation, True, _Phase.PREPARING,
                                now + self.settings.prepare_timeout)
        self._last_attempt_at = now
        self.episode.attempts += 1
        return [SendRestartOffer(generation, self.episode.reason)]

    def _abandon(self) -> list[RestartAction]:
        attempt, self.attempt = self.attempt, None
        return [] if attempt is None else [CloseConnection(attempt.generation)]

    def _settle_or_retry(self, now: float) -> list[RestartAction]:
        """After an attempt failed: done if the old path is back, else try again."""
        episode = self.episode
        if (episode is not None and episode.audio_back_at is not None
                and now - self._last_rtp < self.settings.silence):
            return self._done(self.current, now)
        return self._try(now)

    def _done(self, generation: int, now: float) -> list[RestartAction]:
        episode = self.episode
        assert episode is not None
        back = episode.audio_back_at if episode.audio_back_at is not None else now
        gap_ms = max(0, round((back - episode.last_audio_at) * 1000))
        self.episode = None
        self._last_attempt_at = None
        actions: list[RestartAction] = [
            RestartDone(generation, gap_ms, episode.reason, episode.attempts)]
        if generation != self.current:
            actions.append(CloseConnection(self.current))
            self.current = generation
        self._last_rtp = now
        self._probed = False
        return actions

    def _media_back(self, generation: int, now: float) -> list[RestartAction]:
        """``generation`` carries media (RTP, or connected while held)."""
        attempt = self.attempt
        if attempt is not None and attempt.generation == generation:
            self.attempt = None
            return self._done(generation, now)
        return []

    # -- handlers, one per event type ---------------------------------------

    def _on_ConnectionChanged(self, event: ConnectionChanged,
                              now: float) -> list[RestartAction]:
        gen, state = event.generation, event.state
        if gen == self.current:
            if state is PeerState.CONNECTED and not self.armed:
                self.armed = True
                self._last_rtp = now
                self._probed = False
                return []
            if (self.armed and self.episode is None
                    and state in (PeerState.DISCONNECTED, PeerState.FAILED)):
                reason = RestartReason.ICE_FAILED if state is PeerState.FAILED \
                    else RestartReason.ICE_DISCONNECTED
                return self._lost(reason, now)
            return []
        attempt = self.attempt
        if attempt is None or attempt.generation != gen:
            return []
        if state is PeerState.CONNECTED:
            attempt.connected = True
            if self.held:
                return self._media_back(gen, now)
        elif state is PeerState.FAILED:
            return self._abandon() + self._settle_or_retry(now)
        return []

    def _on_ProbeResult(self, event: ProbeResult, now: float) -> list[RestartAction]:
        if (event.ok or event.generation != self.current or not self.armed or self.held
                or self.episode is not None
                or now - self._last_rtp < self.settings.probe_after):
            return []  # the path answers (the peer may just have paused), or RTP came
        return self._lost(RestartReason.PATH_DEAD, now)

    def _on_RtpReceived(self, event: RtpReceived, now: float) -> list[RestartAction]:
        if event.generation == self.current:
            self._last_rtp = now
            self._probed = False
            episode = self.episode
            if episode is not None:
                if episode.audio_back_at is None:
                    episode.audio_back_at = now
                if self.attempt is None:  # nothing in flight: the old path is back
                    return self._done(self.current, now)
            return []
        return self._media_back(event.generation, now)

    def _on_RemoteAddressChanged(self, event: RemoteAddressChanged,
                                 now: float) -> list[RestartAction]:
        if event.generation != self.current or not self.armed or self.episode is not None:
            return []
        return self._lost(RestartReason.PEER_ADDRESS_CHANGE, now)

    def _on_AddressesChanged(self, event: AddressesChanged,
                             now: float) -> list[RestartAction]:
        old, self._addresses = self._addresses, event.addresses
        if old is None or not self.armed:
            return []
        removed = old - event.addresses
        added = event.addresses - old
        if not removed and not added:
            return []
        if self.episode is None:
            if removed:
                return self._lost(RestartReason.ADDRESS_CHANGE, now)
            return []  # an address only added while media flows: keep the path
        # Lost already: a new address may be the way out, retry now.
        actions: list[RestartAction] = [CheckSignaling()] if removed else []
        attempt = self.attempt
        if attempt is not None and not attempt.connected:
            actions += self._abandon()
        if self.attempt is None:
            actions += self._try(now, at_once=True)
        return actions

    def _on_SignalingChanged(self, event: SignalingChanged,
                             now: float) -> list[RestartAction]:
        was_up, self.signaling_up = self.signaling_up, event.up
        if not event.up or was_up or self.episode is None:
            return []
        # Back on the hub while media is lost: what we sent may have gone into
        # the dead connection, and the peer may be waiting. Offer afresh now.
        attempt = self.attempt
        actions: list[RestartAction] = []
        if attempt is not None and not attempt.connected:
            actions += self._abandon()
        return actions + self._try(now, at_once=True)

    def _on_RemoteRestartOffer(self, event: RemoteRestartOffer,
                               now: float) -> list[RestartAction]:
        gen = event.generation
        if not self.enabled:
            return [IgnoreStale("offer", gen, "restart was not agreed")]
        if not self.armed:
            return [IgnoreStale("offer", gen, "not connected yet")]
        if gen <= self.current:
            return [IgnoreStale("offer", gen, f"stale (current is {self.current})")]
        attempt = self.attempt
        actions: list[RestartAction] = []
        if attempt is not None:
            if attempt.offerer:
                ours = (attempt.generation, self.is_caller)
                theirs = (gen, not self.is_caller)
                if theirs < ours:
                    return [IgnoreStale("offer", gen, "glare: our offer wins"),
                            ResendRestartOffer(attempt.generation)]
            elif gen == attempt.generation:
                return [IgnoreStale("offer", gen, "repeated")]
            elif gen < attempt.generation:
                return [IgnoreStale("offer", gen, "stale (a newer one was accepted)")]
            actions += self._abandon()
        if self.episode is None:
            self.episode = _Episode(RestartReason.PEER, now, self._last_rtp)
            actions.append(StartRestart(RestartReason.PEER, self.current))
        self.highest = max(self.highest, gen)
        self.attempt = _Attempt(gen, False, _Phase.PREPARING,
                                now + self.settings.prepare_timeout)
        self._last_attempt_at = now
        self.episode.attempts += 1
        return [*actions, AcceptRestartOffer(gen, event.sdp)]

    def _on_RemoteRestartAnswer(self, event: RemoteRestartAnswer,
                                now: float) -> list[RestartAction]:
        attempt = self.attempt
        gen = event.generation
        if (attempt is None or not attempt.offerer or attempt.generation != gen
                or attempt.phase is _Phase.CONNECTING):
            return [IgnoreStale("answer", gen, "no offer of ours is waiting for it")]
        attempt.phase = _Phase.CONNECTING
        attempt.deadline = now + self.settings.connect_timeout
        return [ApplyRestartAnswer(gen, event.sdp)]

    def _on_OfferSent(self, event: OfferSent, now: float) -> list[RestartAction]:
        attempt = self.attempt
        if (attempt is not None and attempt.offerer and attempt.generation == event.generation
                and attempt.phase is _Phase.PREPARING):
            attempt.phase = _Phase.OFFERED
            attempt.deadline = now + self.settings.answer_timeout
        return []

    def _on_AnswerSent(self, event: AnswerSent, now: float) -> list[RestartAction]:
        attempt = self.attempt
        if (attempt is not None and not attempt.offerer
                and attempt.generation == event.generation
                and attempt.phase is _Phase.PREPARING):
            attempt.phase = _Phase.CONNECTING
            attempt.deadline = now + self.settings.connect_timeout
        return []

    def _on_PeerUnreachable(self, event: PeerUnreachable, now: float) -> list[RestartAction]:
        attempt = self.attempt
        if attempt is None or not attempt.offerer or attempt.connected:
            return []
        return self._abandon() + self._settle_or_retry(now)

    def _on_HoldChanged(self, event: HoldChanged, now: float) -> list[RestartAction]:
        was, self.held = self.held, event.held
        if was and not event.held:
            # Resumed: the peer gets a full silence period to start sending again.
            self._last_rtp = max(self._last_rtp, now)
            self._probed = False
        elif event.held and self.attempt is not None and self.attempt.connected:
            return self._media_back(self.attempt.generation, now)
        return []
