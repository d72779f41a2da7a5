"""The signaling wire protocol, sans I/O.

Every frame on the hub's WebSocket is one JSON object. Clients send
``{"type", "to", "data"?}``; the hub delivers ``{"type", "to", "from", "data"?}``
with ``from`` set to the sender's id, whatever the sender wrote there. Messages
the hub itself originates have type ``error`` and no ``from``.

This module only turns text into validated values and values into text; it
never touches a socket. ``docs/protocol.md`` describes the wire format.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from json.scanner import make_scanner
from typing import Any, Final

#: Client ids: 1 to 64 characters of ``A-Z a-z 0-9 . _ -``.
ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")


class MessageType(enum.StrEnum):
    """The seven message types of the original calling system."""

    CALL_REQUEST = "call-request"
    CALL_ACCEPT = "call-accept"
    CALL_REJECT = "call-reject"
    OFFER = "offer"
    ANSWER = "answer"
    CANDIDATE = "candidate"
    HANGUP = "hangup"


#: The types that start, answer and end a call: the hub tracks who is in a call with
#: whom from these (plain strings: the hub tests every relayed message against them).
CALL_TYPES: Final[frozenset[str]] = frozenset(t.value for t in (
    MessageType.CALL_REQUEST, MessageType.CALL_ACCEPT, MessageType.CALL_REJECT,
    MessageType.HANGUP))

#: Type of the messages the hub originates.
ERROR_TYPE: Final = "error"
#: What our hub sends first on a WebSocket opened with ``?ice=1``:
#: ``{"type": "ice-servers", "data": {"iceServers": [...]}}``, as ``GET /ice-servers``
#: would answer (docs/protocol.md): a call needs no HTTP request of its own.
ICE_SERVERS_TYPE: Final = "ice-servers"


class ErrorCode(enum.StrEnum):
    """Codes carried in ``{"type": "error", "data": {"code": ...}}``."""

    OFFLINE = "offline"
    BAD_MESSAGE = "bad-message"
    TOO_LARGE = "too-large"
    RATE_LIMITED = "rate-limited"
    UNAUTHORIZED = "unauthorized"
    REPLACED = "replaced"
    TOO_MANY_CONNECTIONS = "too-many-connections"


class ProtocolError(ValueError):
    """A frame that is not a valid message. ``code`` is the error code to answer with."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.BAD_MESSAGE,
                 ref: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.ref = ref


def is_valid_id(value: object) -> bool:
    """True if ``value`` is a client id this hub accepts."""
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def check_id(value: object, what: str = "id") -> str:
    """Return ``value`` if it is a valid client id, else raise ``ValueError``."""
    if not is_valid_id(value):
        raise ValueError(
            f"invalid {what} {value!r}: use 1 to 64 characters of A-Z a-z 0-9 . _ -"
        )
    assert isinstance(value, str)
    return value


_ABSENT: Final = object()
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True, slots=True)
class Message:
    """One signaling message. ``sender`` is ``from`` on the wire (None if absent)."""

    type: str
    to: str
    data: Any = None
    sender: str | None = None
    has_data: bool = False
    #: The client's own text of this message, kept by :func:`parse_client_message`
    #: when it holds nothing but ``type``, ``to`` and ``data``: relaying it then only
    #: needs ``from`` put in front, not a new serialization of ``data`` (which is most
    #: of a relayed offer's cost). The result is the same JSON value.
    source: str | None = field(default=None, compare=False, repr=False)

    def with_sender(self, sender: str) -> Message:
        return Message(self.type, self.to, self.data, sender, self.has_data, self.source)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "to": self.to}
        if self.sender is not None:
            out["from"] = self.sender
        if self.has_data:
            out["data"] = self.data
        return out

    def encode(self) -> str:
        source = self.source
        if source is not None:
            if self.sender is None:
                return source
            # source is a JSON object with no "from": '{' + its members.
            return f'{{"from":{encode_basestring(self.sender)},{source.lstrip(_JSON_SPACE)[1:]}'
        return _ENCODER.encode(self.to_wire())


#: What JSON allows around values (RFC 8259), and all the decoder skips.
_JSON_SPACE: Final = " \t\n\r"


def make(type_: MessageType | str, to: str, data: Any = _ABSENT) -> Message:
    """Build a client message; ``data`` omitted means the field is absent on the wire."""
    if data is _ABSENT:
        return Message(str(type_), to)
    return Message(str(type_), to, data, None, True)


@dataclass(frozen=True, slots=True)
class HubError:
    """An ``error`` message from the hub."""

    code: str
    message: str
    ref: str | None = None
    to: str | None = None

    def encode(self) -> str:
        data: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.ref is not None:
            data["ref"] = self.ref
        if self.to is not None:
            data["to"] = self.to
        return json.dumps({"type": ERROR_TYPE, "data": data}, separators=(",", ":"))


_KNOWN_TYPES: Final = frozenset(t.value for t in MessageType)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One encoder and decoder for every message: json.dumps/loads with non-default
# arguments build a new one per call, which is most of the hub's cost per message.
_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)


#: The decoder's scanner (C): one JSON value at an index. What decode() calls after
#: skipping white space, which a message as clients write it does not have.
_SCAN: Final[Callable[[str, int], tuple[Any, int]]] = make_scanner(
    _DECODER)  # type: ignore[arg-type]  # (typeshed: its context is a JSONDecoder)


def _load_object(text: str | bytes) -> dict[str, Any]:
    try:
        if isinstance(text, bytes):
            obj = json.loads(text, parse_constant=_reject_constant)
        elif text[:1] == "{" and text[-1:] == "}":
            obj, end = _SCAN(text, 0)
            if end != len(text):
                obj = _DECODER.decode(text)  # raises: "Extra data"
        else:
            obj = _DECODER.decode(text)
    except (ValueError, RecursionError, StopIteration) as exc:
        raise ProtocolError("not JSON") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("not a JSON object")
    return obj


def _typed_ref(obj: dict[str, Any]) -> str | None:
    value = obj.get("type")
    return value if isinstance(value, str) and value in _KNOWN_TYPES else None


def _type_and_to(obj: dict[str, Any]) -> tuple[str, str]:
    """The ``type`` and ``to`` of a client's message, or ProtocolError."""
    type_ = obj.get("type")
    if type_.__class__ is not str:
        raise ProtocolError("'type' must be a string", ref=_typed_ref(obj))
    if type_ not in _KNOWN_TYPES:
        raise ProtocolError(f"unknown type {type_[:40]!r}", ref=None)
    to = obj.get("to")
    if to.__class__ is not str or _ID_MATCH(to) is None:
        raise ProtocolError("'to' must be a string" if not isinstance(to, str) else
                            "'to' is not a valid id", ref=type_)
    return type_, to


#: How deep ``data`` may nest when the hub must encode it again (a message with a
#: ``from`` or an extra field): deeper is ``bad-message``. Signaling data nests a few
#: levels; the limit keeps re-encoding far from the interpreter's recursion limit,
#: wherever in the stack it runs. (Text relayed as it came is not re-encoded.)
MAX_NESTING: Final = 100


def _nests_within(value: Any, limit: int) -> bool:
    """Whether ``value``'s lists and objects nest at most ``limit`` deep (no recursion)."""
    if value.__class__ is not dict and value.__class__ is not list:
        return True
    todo: list[tuple[Any, int]] = [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if depth > limit:
            return False
        for child in (item.values() if item.__class__ is dict else item):
            if child.__class__ is dict or child.__class__ is list:
                todo.append((child, depth + 1))
    return True


def _check_nesting(data: Any) -> None:
    if not _nests_within(data, MAX_NESTING):
        raise ProtocolError(f"'data' nests more than {MAX_NESTING} deep")


def parse_client_message(text: str | bytes, sender: str | None = None) -> Message:
    """Validate a frame a client sent to the hub (the message has ``sender`` as ``from``).

    Raises :class:`ProtocolError` (code ``bad-message``) for anything that is not
    ``{"type": <one of the seven types>, "to": <valid id>, "data"?: <any JSON>}``,
    and for ``data`` nested more than :data:`MAX_NESTING` deep in a message that
    must be encoded again (one with a ``from`` or another extra field).
    A ``from`` field is accepted and ignored: the hub overwrites it.
    """
    obj = _load_object(text)
    type_, to = _type_and_to(obj)
    source = text if isinstance(text, str) and "from" not in obj else None
    if "data" in obj:
        data = obj["data"]
        if source is None or len(obj) != 3:
            _check_nesting(data)
            return Message(type_, to, data, sender, True)
        return Message(type_, to, data, sender, True, source)
    return Message(type_, to, None, sender, False, source if len(obj) == 2 else None)


def relay_text(text: str, sender: str) -> tuple[str, str, str]:
    """``(type, to, text to deliver)`` of a client's frame, ``from`` set to ``sender``.

    The same validation and the same text as ``parse_client_message(text,
    sender).encode()``, without building the :class:`Message` (the hub's path).
    """
    obj = _load_object(text)
    type_, to = _type_and_to(obj)
    if "from" not in obj and len(obj) == (3 if "data" in obj else 2):
        return type_, to, \
            f'{{"from":{encode_basestring(sender)},{text.lstrip(_JSON_SPACE)[1:]}'
    if "data" in obj:
        data = obj["data"]
        _check_nesting(data)
        try:
            return type_, to, Message(type_, to, data, sender, True).encode()
        except RecursionError:  # (not within MAX_NESTING: only a stack already deep)
            raise ProtocolError("'data' nests too deep") from None
    return type_, to, Message(type_, to, None, sender).encode()


_ID_MATCH: Final = ID_PATTERN.fullmatch


def parse_hub_message(text: str | bytes) -> Message | HubError:
    """Parse a frame a client received from a hub (ours or the original).

    Lenient where the original hub was: ``to`` may be missing. Raises
    :class:`ProtocolError` for frames a client cannot use at all.
    """
    obj = _load_object(text)
    type_ = obj.get("type")
    if not isinstance(type_, str):
        raise ProtocolError("'type' must be a string")
    if type_ == ERROR_TYPE and "from" not in obj:
        data = obj.get("data")
        if not isinstance(data, dict):
            data = {}
        code = data.get("code")
        msg = data.get("message")
        ref = data.get("ref")
        to = data.get("to")
        return HubError(
            code=code if isinstance(code, str) else "unknown",
            message=msg if isinstance(msg, str) else "",
            ref=ref if isinstance(ref, str) else None,
            to=to if isinstance(to, str) else None,
        )
    sender = obj.get("from")
    to = obj.get("to")
    if "data" in obj:
        return Message(type_, to if isinstance(to, str) else "", obj["data"],
                       sender if isinstance(sender, str) else None, True)
    return Message(type_, to if isinstance(to, str) else "", None,
                   sender if isinstance(sender, str) else None)


def reason_of(message: Message) -> str | None:
    """The optional ``data.reason`` of a ``call-reject`` or ``hangup``."""
    if isinstance(message.data, dict):
        reason = message.data.get("reason")
        if isinstance(reason, str):
            return reason[:64]
    return None


def session_description(message: Message, expected: str) -> str:
    """Extract the SDP of an ``offer``/``answer`` message, or raise ProtocolError."""
    data = message.data
    if not isinstance(data, dict):
        raise ProtocolError(f"{message.type}: data must be an object")
    sdp = data.get("sdp")
    kind = data.get("type", expected)
    if not isinstance(sdp, str) or kind != expected:
        raise ProtocolError(f"{message.type}: data must be {{'type': {expected!r}, 'sdp': str}}")
    return sdp


@dataclass(frozen=True, slots=True)
class IceCandidate:
    """A trickled ICE candidate (RTCIceCandidateInit). Empty ``candidate`` = end."""

    candidate: str
    sdp_mid: str | None
    sdp_mline_index: int | None

    @property
    def is_end_of_candidates(self) -> bool:
        return self.candidate.strip() == ""

    def to_wire(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "sdpMid": self.sdp_mid,
                "sdpMLineIndex": self.sdp_mline_index}


def ice_candidate(message: Message) -> IceCandidate:
    """Extract the candidate of a ``candidate`` message, or raise ProtocolError."""
    data = message.data
    if data is None:
        return IceCandidate("", None, None)
    if not isinstance(data, dict):
        raise ProtocolError("candidate: data must be an object")
    cand = data.get("candidate", "")
    mid = data.get("sdpMid")
    index = data.get("sdpMLineIndex")
    if not isinstance(cand, str):
        raise ProtocolError("candidate: 'candidate' must be a string")
    if mid is not None and not isinstance(mid, str):
        raise ProtocolError("candidate: 'sdpMid' must be a string")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
        raise ProtocolError("candidate: 'sdpMLineIndex' must be an integer")
    return IceCandidate(cand, mid, index)
