"""What a :class:`~softphone.client.call.Call` is made of and ends with: the peer
connection it needs (:class:`MediaLink`), how it went (:class:`CallResult`) and
the exception a call that ended instead raises (:class:`CallEnded`).

All re-exported by :mod:`softphone.client.call`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from softphone.core.callstate import ExitCode, Outcome, Role
from softphone.core.protocol import HubError, IceCandidate
from softphone.media.dtmf_rtp import DtmfChannel
from softphone.media.rtc import CandidatePair, MediaStats

#: A :meth:`Call.on_event <softphone.client.call.Call.on_event>` listener.
EventCallback = Callable[[dict[str, Any]], None]

_T = TypeVar("_T")


def held_call(ref: weakref.ref[_T], holder: str) -> _T:
    """The call a helper (``holder``: "hold link"...) holds weakly, so that the call,
    which holds the helper, is freed with its last reference and not left in a cycle
    for the garbage collector (issue 15). ReferenceError once the call is gone."""
    call = ref()
    if call is None:
        raise ReferenceError(f"the call of this {holder} is gone")
    return call


class MediaLink(Protocol):
    """What a call needs of its peer connection (:class:`~softphone.media.rtc.MediaSession`)."""

    candidate_pair: CandidatePair | None
    #: The call's DTMF both ways.
    dtmf: DtmfChannel

    @property
    def codec(self) -> str | None: ...

    def descriptions(self) -> tuple[str | None, str | None]: ...

    def pregather(self) -> None: ...

    async def create_offer(self) -> str: ...

    async def accept_offer(self, sdp: str) -> str: ...

    async def apply_answer(self, sdp: str) -> None: ...

    def add_candidate(self, candidate: IceCandidate) -> None: ...

    async def stats(self) -> MediaStats: ...

    def turn_errors(self) -> list[str]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class CallResult:
    """How a call went. ``exit_code`` is the CLI's exit code for ``outcome``."""

    peer: str
    role: Role
    outcome: Outcome
    reason: str | None
    ended_by: str  # "local", "remote", "timeout" or "network"
    setup_seconds: float | None  # call-request (sent or received) -> media connected
    first_audio_seconds: float | None  # call-request -> first audible frame received
    talk_seconds: float  # media connected -> ended
    stats: MediaStats = field(default_factory=MediaStats)
    #: The ICE candidate pair the media used (None if it never connected).
    candidate_pair: CandidatePair | None = None
    #: Spans on hold (either side; no audio): (start, end) in seconds since media connected.
    held: tuple[tuple[float, float], ...] = ()

    @property
    def exit_code(self) -> int:
        return int(ExitCode.for_outcome(self.outcome))

    def to_json(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 3)
        return {"peer": self.peer, "role": str(self.role), "outcome": str(self.outcome),
                "reason": self.reason, "ended_by": self.ended_by, "exit_code": self.exit_code,
                "setup_seconds": r(self.setup_seconds),
                "first_audio_seconds": r(self.first_audio_seconds),
                "talk_seconds": r(self.talk_seconds), "stats": self.stats.to_json(),
                "candidate_pair": None if self.candidate_pair is None
                else self.candidate_pair.to_json(),
                "held": [list(span) for span in self.held]}


class CallEnded(Exception):
    """Raised by :meth:`Call.connected <softphone.client.call.Call.connected>` when the call
    ended instead."""

    def __init__(self, result: CallResult) -> None:
        super().__init__(f"call ended: {result.outcome}")
        self.result = result


class PhoneClosed(RuntimeError):
    """The phone cannot place or receive calls: not connected yet, closed, or refused
    by the hub for good (:attr:`refusal`: the hub's error; another phone took its id,
    a bad token). Raised by :meth:`Phone.dial` and :meth:`Phone.next_call`."""

    def __init__(self, message: str, refusal: HubError | None = None) -> None:
        super().__init__(message)
        self.refusal = refusal
