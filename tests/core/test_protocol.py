"""softphone.core.protocol, sans I/O: parsing, encoding and the data helpers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from softphone.core import protocol
from softphone.core.protocol import (
    ERROR_TYPE,
    ErrorCode,
    HubError,
    IceCandidate,
    Message,
    MessageType,
    ProtocolError,
    check_id,
    ice_candidate,
    is_valid_id,
    make,
    parse_client_message,
    parse_hub_message,
    reason_of,
    session_description,
)

ALL_TYPES = [t.value for t in MessageType]


def frame(**fields: Any) -> str:
    return json.dumps(fields)


def bad(text: str | bytes) -> ProtocolError:
    """Parse ``text`` as a client frame, expecting a ProtocolError, and return it."""
    with pytest.raises(ProtocolError) as info:
        parse_client_message(text)
    assert info.value.code == ErrorCode.BAD_MESSAGE
    return info.value


# ------------------------------------------------------- parse_client_message ---


def test_message_types_are_the_seven_of_the_original_system() -> None:
    assert sorted(ALL_TYPES) == sorted([
        "call-request", "call-accept", "call-reject", "offer", "answer", "candidate", "hangup",
    ])


@pytest.mark.parametrize("type_", ALL_TYPES)
def test_parse_client_message_without_data(type_: str) -> None:
    message = parse_client_message(frame(type=type_, to="bob"))
    assert message == Message(type_, "bob")
    assert message.has_data is False
    assert message.data is None
    assert message.sender is None


@pytest.mark.parametrize("type_", ALL_TYPES)
@pytest.mark.parametrize("data", [{"reason": "x"}, [1, 2], "text", 0, 1.5, False, {}])
def test_parse_client_message_with_data(type_: str, data: Any) -> None:
    message = parse_client_message(frame(type=type_, to="bob", data=data))
    assert message == Message(type_, "bob", data, None, True)


def test_parse_client_message_data_null_is_present() -> None:
    message = parse_client_message('{"type":"hangup","to":"bob","data":null}')
    assert message == Message("hangup", "bob", None, None, True)
    assert message.has_data is True


def test_parse_client_message_ignores_from_and_extra_fields() -> None:
    message = parse_client_message(
        frame(type="offer", to="bob", data={"sdp": "v=0"}, extra=[1], **{"from": "mallory"}))
    assert message.sender is None
    assert message == Message("offer", "bob", {"sdp": "v=0"}, None, True)
    assert "mallory" not in message.with_sender("alice").encode()


def test_parse_client_message_accepts_bytes() -> None:
    text = frame(type="candidate", to="bob", data={"candidate": "c"})
    assert parse_client_message(text.encode()) == parse_client_message(text)
    assert parse_client_message(text.encode("utf-16")) == parse_client_message(text)


@pytest.mark.parametrize("text", ["", " ", "{", "nope", "{'type': 'offer'}", "{}{}",
                                  '{"type":"offer","to":"bob",}', "\ufeff{}", "1" * 5000])
def test_not_json(text: str) -> None:
    assert str(bad(text)) == "not JSON"


@pytest.mark.parametrize("data", [b"\xff\xfe\xfa", b"\x80", b"{\"type\": \"\xc3\"}"])
def test_not_json_bytes(data: bytes) -> None:
    assert str(bad(data)) == "not JSON"


@pytest.mark.parametrize("text", ["[]", '[{"type":"offer","to":"bob"}]', '"offer"', "1", "-2.5",
                                  "null", "true", "false"])
def test_json_that_is_not_an_object(text: str) -> None:
    error = bad(text)
    assert str(error) == "not a JSON object"
    assert error.ref is None


@pytest.mark.parametrize("fields", [{"to": "bob"}, {"type": None, "to": "bob"},
                                    {"type": 1, "to": "bob"}, {"type": ["offer"], "to": "bob"},
                                    {"type": {"offer": 1}, "to": "bob"}])
def test_missing_or_wrong_typed_type(fields: dict[str, Any]) -> None:
    error = bad(json.dumps(fields))
    assert str(error) == "'type' must be a string"
    assert error.ref is None


@pytest.mark.parametrize("type_", ["error", "ping", "", "OFFER", "offer ", "call_request"])
def test_unknown_type(type_: str) -> None:
    error = bad(frame(type=type_, to="bob"))
    assert str(error).startswith("unknown type")
    assert error.ref is None


def test_unknown_type_is_quoted_truncated() -> None:
    error = bad(frame(type="x" * 1000, to="bob"))
    assert str(error) == f"unknown type {'x' * 40!r}"


@pytest.mark.parametrize("type_", ALL_TYPES)
@pytest.mark.parametrize("to", [None, 1, ["bob"], {"id": "bob"}, True])
def test_wrong_typed_to(type_: str, to: Any) -> None:
    error = bad(frame(type=type_, to=to))
    assert str(error) == "'to' must be a string"
    assert error.ref == type_


def test_missing_to() -> None:
    error = bad(frame(type="hangup"))
    assert str(error) == "'to' must be a string"
    assert error.ref == "hangup"


@pytest.mark.parametrize("to", ["", "a" * 65, "a b", " bob", "bob\n", "b\u00f6b",
                                "\u0431\u043e\u0431", "\U0001f4de", "bob/alice", "bob@hub",
                                "bob\x00", "b\u0131"])
def test_invalid_to(to: str) -> None:
    error = bad(frame(type="offer", to=to, data={}))
    assert str(error) == "'to' is not a valid id"
    assert error.ref == "offer"


def test_longest_valid_to() -> None:
    assert parse_client_message(frame(type="hangup", to="a" * 64)).to == "a" * 64


@pytest.mark.parametrize("text", [
    "[" * 100_000,
    "{\"a\":" * 100_000,
    '{"type":"offer","to":"bob","data":' + "[" * 100_000 + "]" * 100_000 + "}",
])
def test_deep_nesting_is_not_json(text: str) -> None:
    error = bad(text)
    assert str(error) == "not JSON"
    assert isinstance(error.__cause__, RecursionError)


def test_nesting_within_the_limit_is_fine() -> None:
    data = json.loads("[" * 50 + "]" * 50)
    message = parse_client_message(frame(type="offer", to="bob", data=data))
    assert message.data == data
    assert parse_client_message(message.encode()) == message


def test_protocol_error_is_a_value_error_with_defaults() -> None:
    error = ProtocolError("boom")
    assert isinstance(error, ValueError)
    assert error.code == ErrorCode.BAD_MESSAGE
    assert error.ref is None
    other = ProtocolError("big", ErrorCode.TOO_LARGE, "offer")
    assert (other.code, other.ref) == (ErrorCode.TOO_LARGE, "offer")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_standard_json_constants_are_rejected(constant: str) -> None:
    bad('{"type":"offer","to":"bob","data":' + constant + "}")


# -------------------------------------------------------------- Message wire ---


def test_make_without_data_leaves_data_absent() -> None:
    message = make(MessageType.HANGUP, "bob")
    assert message == Message("hangup", "bob", None, None, False)
    assert type(message.type) is str
    assert message.to_wire() == {"type": "hangup", "to": "bob"}
    assert message.encode() == '{"type":"hangup","to":"bob"}'


def test_make_with_data_none_sends_null() -> None:
    message = make("hangup", "bob", None)
    assert message == Message("hangup", "bob", None, None, True)
    assert message.to_wire() == {"type": "hangup", "to": "bob", "data": None}
    assert message.encode() == '{"type":"hangup","to":"bob","data":null}'


def test_make_with_data() -> None:
    message = make(MessageType.CALL_REJECT, "bob", {"reason": "busy"})
    assert message.encode() == '{"type":"call-reject","to":"bob","data":{"reason":"busy"}}'


def test_with_sender_adds_from_and_keeps_the_rest() -> None:
    for message in (make("hangup", "bob"), make("hangup", "bob", None),
                    make("offer", "bob", {"sdp": "x"})):
        sent = message.with_sender("alice")
        assert (sent.type, sent.to, sent.data, sent.has_data) == (
            message.type, message.to, message.data, message.has_data)
        assert sent.sender == "alice"
        assert sent.to_wire() == {**message.to_wire(), "from": "alice"}
        assert message.sender is None  # frozen: the original is unchanged


@pytest.mark.parametrize("message", [
    make("call-request", "bob"),
    make("call-request", "bob", None),
    make("call-accept", "bob", {"media": "ready"}),
    make("candidate", "bob", {"candidate": "", "sdpMid": None, "sdpMLineIndex": 0}),
    make("offer", "bob", {"type": "offer", "sdp": "v=0\r\n\u00e9"}),
    make("hangup", "bob", [1, "two", 3.5, True, None]),
])
def test_encode_round_trips(message: Message) -> None:
    assert parse_client_message(message.encode()) == message
    assert parse_client_message(message.encode().encode()) == message
    relayed = message.with_sender("alice")
    assert parse_hub_message(relayed.encode()) == relayed
    assert json.loads(relayed.encode()) == relayed.to_wire()


@pytest.mark.parametrize("text", [
    '{"type":"offer","to":"bob","data":{"sdp":"v=0","n":1.0e3}}',
    ' \r\n\t{ "to" : "bob", "type":"hangup" } \n',
    '{"type":"candidate","to":"bob","data":null}',
    '{"type":"offer","to":"carol","to":"bob","data":[1]}',  # the last one counts
    '{"type":"offer","to":"bob","data":"\\u00e9\\ud83d\\ude00 \\"from\\""}',
    '{"type":"offer","to":"bob","from":"mallory","data":1}',
    '{"type":"offer","to":"bob","data":1,"extra":{"from":"mallory"}}',
    '{"type":"offer","to":"bob","extra":2}',
])
def test_relayed_text_is_the_message_from_the_sender(text: str) -> None:
    """Relayed as the client wrote it with ``from`` put in, or re-encoded: the same JSON."""
    message = parse_client_message(text)
    relayed = message.with_sender("alice").encode()
    assert json.loads(relayed) == {**message.to_wire(), "from": "alice"}
    assert "mallory" not in relayed and "extra" not in relayed
    assert parse_hub_message(relayed) == message.with_sender("alice")


def test_encode_is_compact() -> None:
    text = make("offer", "bob", {"a": [1, 2]}).with_sender("alice").encode()
    assert text == '{"type":"offer","to":"bob","from":"alice","data":{"a":[1,2]}}'


# ----------------------------------------------------------------- HubError ---


def test_hub_error_encode_full() -> None:
    error = HubError(ErrorCode.OFFLINE, "bob is not connected", "offer", "bob")
    assert json.loads(error.encode()) == {
        "type": "error",
        "data": {"code": "offline", "message": "bob is not connected", "ref": "offer",
                 "to": "bob"},
    }
    assert " " not in error.encode().replace("bob is not connected", "")


def test_hub_error_encode_minimal() -> None:
    error = HubError("bad-message", "not JSON")
    assert error.encode() == '{"type":"error","data":{"code":"bad-message","message":"not JSON"}}'


@pytest.mark.parametrize("error", [
    HubError("offline", "gone", "offer", "bob"),
    HubError("bad-message", "not JSON"),
    HubError("rate-limited", "slow down", ref="candidate"),
    HubError("offline", "gone", to="bob"),
])
def test_hub_error_round_trip(error: HubError) -> None:
    assert parse_hub_message(error.encode()) == error
    assert parse_hub_message(error.encode().encode()) == error


# -------------------------------------------------------- parse_hub_message ---


def test_parse_hub_error() -> None:
    text = frame(type="error", data={"code": "offline", "message": "bob is not connected",
                                     "ref": "call-request", "to": "bob"})
    assert parse_hub_message(text) == HubError("offline", "bob is not connected",
                                               "call-request", "bob")


@pytest.mark.parametrize("fields", [
    {"type": "error"},
    {"type": "error", "data": None},
    {"type": "error", "data": "offline"},
    {"type": "error", "data": ["offline"]},
    {"type": "error", "data": {}},
    {"type": "error", "data": {"code": 1, "message": None, "ref": 2, "to": ["bob"]}},
])
def test_parse_hub_error_lenient(fields: dict[str, Any]) -> None:
    assert parse_hub_message(json.dumps(fields)) == HubError("unknown", "", None, None)


def test_parse_hub_error_type_is_the_constant() -> None:
    assert ERROR_TYPE == "error"


def test_parse_hub_error_with_from_is_a_message() -> None:
    text = frame(type="error", to="alice", data={"code": "x"}, **{"from": "bob"})
    assert parse_hub_message(text) == Message("error", "alice", {"code": "x"}, "bob", True)


def test_parse_hub_message_with_from() -> None:
    text = frame(type="offer", to="alice", data={"type": "offer", "sdp": "v=0"},
                 **{"from": "bob"})
    assert parse_hub_message(text) == Message(
        "offer", "alice", {"type": "offer", "sdp": "v=0"}, "bob", True)


def test_parse_hub_message_without_data_and_with_null_data() -> None:
    assert parse_hub_message('{"type":"hangup","to":"alice","from":"bob"}') == Message(
        "hangup", "alice", None, "bob", False)
    assert parse_hub_message('{"type":"hangup","to":"alice","from":"bob","data":null}') == (
        Message("hangup", "alice", None, "bob", True))


def test_parse_hub_message_missing_to_is_lenient() -> None:
    assert parse_hub_message('{"type":"call-request","from":"bob"}') == Message(
        "call-request", "", None, "bob", False)
    assert parse_hub_message('{"type":"hangup","to":7,"from":"bob","data":{}}') == Message(
        "hangup", "", {}, "bob", True)


def test_parse_hub_message_wrong_typed_from_is_no_sender() -> None:
    assert parse_hub_message('{"type":"hangup","to":"alice","from":5}').sender is None
    assert parse_hub_message('{"type":"hangup","to":"alice"}').sender is None


def test_parse_hub_message_keeps_unknown_types() -> None:
    # A client is lenient: the caller decides what to do with unknown types.
    assert parse_hub_message('{"type":"ping","from":"bob"}') == Message("ping", "", None, "bob")


@pytest.mark.parametrize("text", ["", "nope", "[" * 100_000, b"\xff"])
def test_parse_hub_message_not_json(text: str | bytes) -> None:
    with pytest.raises(ProtocolError, match="not JSON"):
        parse_hub_message(text)


@pytest.mark.parametrize("text", ["[]", "null", '"error"', "3"])
def test_parse_hub_message_not_an_object(text: str) -> None:
    with pytest.raises(ProtocolError, match="not a JSON object"):
        parse_hub_message(text)


@pytest.mark.parametrize("text", ['{"to":"alice","from":"bob"}', '{"type":null}', '{"type":1}'])
def test_parse_hub_message_without_string_type(text: str) -> None:
    with pytest.raises(ProtocolError, match="'type' must be a string"):
        parse_hub_message(text)


# ------------------------------------------------------------------ helpers ---


def peer_message(type_: str, *data: Any) -> Message:
    """A message as received from the hub; ``data`` omitted = absent."""
    return make(type_, "alice", *data).with_sender("bob")


@pytest.mark.parametrize(("data", "expected"), [
    ({"reason": "busy"}, "busy"),
    ({"reason": ""}, ""),
    ({"reason": "x" * 100}, "x" * 64),
    ({"reason": 5}, None),
    ({"reason": None}, None),
    ({"other": "busy"}, None),
    ({}, None),
    (None, None),
    ("busy", None),
    (["busy"], None),
])
def test_reason_of(data: Any, expected: str | None) -> None:
    assert reason_of(peer_message("hangup", data)) == expected


def test_reason_of_absent_data() -> None:
    assert reason_of(peer_message("call-reject")) is None


def test_session_description() -> None:
    offer = peer_message("offer", {"type": "offer", "sdp": "v=0\r\n"})
    assert session_description(offer, "offer") == "v=0\r\n"
    answer = peer_message("answer", {"type": "answer", "sdp": ""})
    assert session_description(answer, "answer") == ""


def test_session_description_type_defaults_to_expected() -> None:
    assert session_description(peer_message("answer", {"sdp": "v=0"}), "answer") == "v=0"


@pytest.mark.parametrize("data", [
    {"type": "answer", "sdp": "v=0"},  # wrong kind
    {"type": None, "sdp": "v=0"},
    {"type": "offer"},  # no sdp
    {"type": "offer", "sdp": None},
    {"type": "offer", "sdp": 5},
    {"type": "offer", "sdp": ["v=0"]},
    None,
    "v=0",
    ["offer", "v=0"],
])
def test_session_description_rejects(data: Any) -> None:
    with pytest.raises(ProtocolError, match=r"^offer: data must be"):
        session_description(peer_message("offer", data), "offer")


def test_session_description_absent_data() -> None:
    with pytest.raises(ProtocolError, match="data must be an object"):
        session_description(peer_message("offer"), "offer")


def test_ice_candidate() -> None:
    data = {"candidate": "candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host",
            "sdpMid": "0", "sdpMLineIndex": 0}
    candidate = ice_candidate(peer_message("candidate", data))
    assert candidate == IceCandidate(str(data["candidate"]), "0", 0)
    assert candidate.is_end_of_candidates is False
    assert candidate.to_wire() == data


def test_ice_candidate_optional_fields() -> None:
    candidate = ice_candidate(peer_message("candidate", {"candidate": "c", "sdpMid": None}))
    assert candidate == IceCandidate("c", None, None)
    assert candidate.to_wire() == {"candidate": "c", "sdpMid": None, "sdpMLineIndex": None}


@pytest.mark.parametrize("message", [
    peer_message("candidate"),  # data absent
    peer_message("candidate", None),  # data null
    peer_message("candidate", {}),
    peer_message("candidate", {"candidate": ""}),
    peer_message("candidate", {"candidate": "  \t", "sdpMid": "0", "sdpMLineIndex": 0}),
])
def test_ice_candidate_end_of_candidates(message: Message) -> None:
    assert ice_candidate(message).is_end_of_candidates is True


def test_ice_candidate_none_is_empty() -> None:
    assert ice_candidate(peer_message("candidate", None)) == IceCandidate("", None, None)


@pytest.mark.parametrize(("data", "match"), [
    ("candidate:1", "data must be an object"),
    (["candidate:1"], "data must be an object"),
    (0, "data must be an object"),
    ({"candidate": None}, "'candidate' must be a string"),
    ({"candidate": 1}, "'candidate' must be a string"),
    ({"candidate": "c", "sdpMid": 0}, "'sdpMid' must be a string"),
    ({"candidate": "c", "sdpMLineIndex": "0"}, "'sdpMLineIndex' must be an integer"),
    ({"candidate": "c", "sdpMLineIndex": 0.0}, "'sdpMLineIndex' must be an integer"),
    ({"candidate": "c", "sdpMLineIndex": True}, "'sdpMLineIndex' must be an integer"),
])
def test_ice_candidate_rejects(data: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        ice_candidate(peer_message("candidate", data))


# ----------------------------------------------------------------------- ids ---


@pytest.mark.parametrize("value", ["a", "A", "0", ".", "_", "-", "a" * 64, "alice.smith_2-x",
                                   "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"])
def test_valid_ids(value: str) -> None:
    assert is_valid_id(value) is True
    assert check_id(value) == value


@pytest.mark.parametrize("value", ["", "a" * 65, "a b", "a\n", "\na", "a\t", "caf\u00e9",
                                   "\u0661", "\uff41", "a/b", "a:b", "a+b", "a@b", "a\x00",
                                   None, 5, 1.5, b"alice", ["alice"], {"id": "alice"}])
def test_invalid_ids(value: object) -> None:
    assert is_valid_id(value) is False
    with pytest.raises(ValueError, match="invalid peer id"):
        check_id(value, "peer id")


def test_check_id_default_label() -> None:
    with pytest.raises(ValueError, match=r"^invalid id '': use 1 to 64 characters"):
        check_id("")


def test_id_pattern_is_exported() -> None:
    assert protocol.ID_PATTERN.fullmatch("a" * 64)
    assert not protocol.ID_PATTERN.fullmatch("a" * 65)


# --------------------------------------------------------------- properties ---

json_leaves = (st.none() | st.booleans() | st.integers()
               | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
ids = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)
maybe_types = st.sampled_from(ALL_TYPES) | json_values
maybe_ids = ids | json_values


@st.composite
def message_like(draw: st.DrawFn) -> dict[str, Any]:
    """Objects that look like client frames, valid or not."""
    obj: dict[str, Any] = draw(st.dictionaries(st.text(max_size=6), json_values, max_size=3))
    if draw(st.booleans()):
        obj["type"] = draw(maybe_types)
    if draw(st.booleans()):
        obj["to"] = draw(maybe_ids)
    if draw(st.booleans()):
        obj["data"] = draw(json_values)
    if draw(st.booleans()):
        obj["from"] = draw(json_values)
    return obj


def canonical(value: Any) -> str:
    """Compare JSON values by their text: NaN equals NaN, key order does not matter."""
    return json.dumps(value, sort_keys=True)


def check_parse(text: str | bytes, parsed: Any) -> None:
    """parse_client_message(text) is a Message faithful to ``parsed``, or a ProtocolError."""
    try:
        message = parse_client_message(text)
    except ProtocolError as exc:
        assert exc.code == ErrorCode.BAD_MESSAGE
        return
    assert isinstance(message, Message)
    assert isinstance(parsed, dict)
    wire = json.loads(message.with_sender("hub-sender").encode())
    assert wire["type"] == parsed["type"]
    assert wire["to"] == parsed["to"]
    assert wire["from"] == "hub-sender"
    assert ("data" in wire) == ("data" in parsed)
    if "data" in parsed:
        assert canonical(wire["data"]) == canonical(parsed["data"])
    assert set(wire) <= {"type", "to", "from", "data"}


@settings(max_examples=100, deadline=None)
@given(st.text())
def test_property_arbitrary_text(text: str) -> None:
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        parsed = None
    check_parse(text, parsed)


@settings(max_examples=100, deadline=None)
@given(st.binary())
def test_property_arbitrary_bytes(data: bytes) -> None:
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        parsed = None
    check_parse(data, parsed)


@settings(max_examples=100, deadline=None)
@given(json_values)
def test_property_arbitrary_json_values(value: Any) -> None:
    check_parse(json.dumps(value), value)


@settings(max_examples=100, deadline=None)
@given(message_like())
def test_property_message_like_objects(obj: dict[str, Any]) -> None:
    check_parse(json.dumps(obj), obj)
    valid = isinstance(obj.get("type"), str) and obj["type"] in ALL_TYPES and is_valid_id(
        obj.get("to"))
    try:
        parse_client_message(json.dumps(obj))
    except ProtocolError:
        assert not valid
    else:
        assert valid


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(ALL_TYPES), ids, st.none() | json_values, st.booleans(), ids)
def test_property_encode_parse_round_trip(type_: str, to: str, data: Any, has_data: bool,
                                          sender: str) -> None:
    message = make(type_, to, data) if has_data else make(type_, to)
    assert parse_client_message(message.encode()) == message
    relayed = message.with_sender(sender)
    assert parse_hub_message(relayed.encode()) == relayed
