"""What a call says beside its first offer/answer, sans I/O: features, restarts, hold.

``docs/protocol.md``, "Media restart and hold": ``call-request`` and
``call-accept`` data may carry ``"features"`` (:func:`features_of`,
:func:`with_features`); inside a call, ``offer``/``answer``/``candidate``
messages either belong to the call's first connection (handled by
:class:`~softphone.core.callstate.CallMachine` as before), to a media restart
(``"restart": N``), or are hold messages (``"hold"`` and no ``sdp``).
:func:`classify` says which, as one of the small frozen values below; the
call machine hands the restart and hold ones on unchanged (its
:class:`~softphone.core.callstate.MidCall` action) to the client's adapters:
restarts to :class:`softphone.client.restart_link.RestartLink`, hold messages
to the hold adapter.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from softphone.core.protocol import (
    IceCandidate,
    Message,
    MessageType,
    ProtocolError,
    ice_candidate,
    make,
)

#: Media restart with a fresh peer connection.
FEATURE_RESTART: Final = "restart"
#: Hold and resume messages.
FEATURE_HOLD: Final = "hold"
#: (pages) restart with ``restartIce()`` on the existing connection.
FEATURE_ICE_RESTART: Final = "ice-restart"
#: The largest restart generation (2^31 - 1).
MAX_GENERATION: Final = 2**31 - 1
#: Longest feature string kept, and most features read from one message.
_MAX_FEATURE: Final = 32
_MAX_FEATURES: Final = 16


def announced(restart: bool = True, hold: bool = True) -> tuple[str, ...]:
    """The features we announce (``--no-restart``: without ``restart``)."""
    return tuple(name for name, on in ((FEATURE_RESTART, restart), (FEATURE_HOLD, hold)) if on)


def features_of(data: Any) -> frozenset[str]:
    """The ``features`` of ``call-request``/``call-accept`` data; unknown shapes: none.

    The original pages send no data: an empty set.
    """
    if not isinstance(data, dict):
        return frozenset()
    raw = data.get("features")
    if not isinstance(raw, list):
        return frozenset()
    return frozenset(f for f in raw[:_MAX_FEATURES]
                     if isinstance(f, str) and 0 < len(f) <= _MAX_FEATURE)


def with_features(data: Any, features: Iterable[str]) -> Any:
    """``data`` with ``"features"`` added: None -> ``{"features": [...]}``; a dict without
    the key gets it; anything else (a caller's own non-object data) is left as it is."""
    names = list(features)
    if not names:
        return data
    if data is None:
        return {"features": names}
    if isinstance(data, dict) and "features" not in data:
        return {**data, "features": names}
    return data


# -------------------------------------------------------- in-call messages ---


@dataclass(frozen=True, slots=True)
class MidCallMessage:
    """Base of an in-call message that is not the first connection's."""


@dataclass(frozen=True, slots=True)
class RestartOffer(MidCallMessage):
    generation: int
    sdp: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RestartAnswer(MidCallMessage):
    generation: int
    sdp: str


@dataclass(frozen=True, slots=True)
class RestartCandidate(MidCallMessage):
    """A trickled candidate of restart ``generation`` (browsers trickle; aiortc does not).

    Generation 0 is the call's first connection: its candidates are the call machine's
    until media connects, then handed on as this (``CallMachine``: a late trickle), so
    that one arriving after a restart closed that connection is dropped, not added to
    the new one.
    """

    generation: int
    candidate: IceCandidate


@dataclass(frozen=True, slots=True)
class HoldMessage(MidCallMessage):
    """``offer`` (``kind="offer"``: the peer holds or resumes) or ``answer`` (its ack)
    with ``hold`` and ``seq``, no ``sdp``. For the hold adapter."""

    kind: str  # "offer" | "answer"
    hold: bool
    seq: int


def _generation(data: dict[str, Any], what: str) -> int | None:
    if "restart" not in data:
        return None
    gen = data["restart"]
    if not isinstance(gen, int) or isinstance(gen, bool) or not 1 <= gen <= MAX_GENERATION:
        raise ProtocolError(f"{what}: 'restart' must be an integer from 1 to 2^31 - 1")
    return gen


def classify(message: Message) -> MidCallMessage | None:
    """A restart or hold ``offer``/``answer``/``candidate``, or None (the first connection's,
    or another type). Raises :class:`ProtocolError` for a malformed one."""
    kind = message.type
    data = message.data
    if kind not in (MessageType.OFFER, MessageType.ANSWER, MessageType.CANDIDATE) or \
            not isinstance(data, dict):
        return None
    gen = _generation(data, kind)
    if kind == MessageType.CANDIDATE:
        return None if gen is None else RestartCandidate(gen, ice_candidate(message))
    sdp = data.get("sdp")
    if gen is None:
        if "hold" in data and sdp is None:
            hold, seq = data["hold"], data.get("seq")
            if not isinstance(hold, bool) or not isinstance(seq, int) or \
                    isinstance(seq, bool) or seq < 1:
                raise ProtocolError(f"{kind}: 'hold' must be true/false and 'seq' an "
                                    f"integer >= 1")
            return HoldMessage(str(kind), hold, seq)
        return None
    if not isinstance(sdp, str) or data.get("type", kind) != kind:
        raise ProtocolError(f"{kind}: a restart {kind} needs {{'type': {kind!r}, 'sdp': str}}")
    if kind == MessageType.ANSWER:
        return RestartAnswer(gen, sdp)
    reason = data.get("reason")
    return RestartOffer(gen, sdp, reason[:64] if isinstance(reason, str) else None)


# ------------------------------------------------------ what we send ---


def restart_offer(peer: str, generation: int, sdp: str, reason: str) -> Message:
    return make(MessageType.OFFER, peer, {"type": "offer", "sdp": sdp, "restart": generation,
                                          "reason": reason})


def restart_answer(peer: str, generation: int, sdp: str) -> Message:
    return make(MessageType.ANSWER, peer, {"type": "answer", "sdp": sdp,
                                           "restart": generation})


def hold_message(peer: str, kind: str, hold: bool, seq: int) -> Message:
    """A hold change (``kind="offer"``) or its acknowledgement (``"answer"``)."""
    return make(kind, peer, {"type": kind, "hold": hold, "seq": seq})
