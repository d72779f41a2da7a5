"""Deeply nested JSON on every path the hub parses it, wherever in the stack.

How deep Python's JSON parser and encoder may go depends on how deep the stack
already is, so a message nested close to the interpreter's recursion limit may
parse and then fail to encode (RecursionError, which is not a ValueError). The
hub must answer ``bad-message`` for it like for any bad message, keep the
connection and log nothing at ERROR. The stack depths are made with plain
recursion (``at_depth``); the last test is a live hub on real sockets.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import aiohttp
import pytest

from softphone.core.protocol import (
    MAX_NESTING,
    ErrorCode,
    ProtocolError,
    parse_client_message,
    relay_text,
)
from softphone.hub.auth import AuthError, verify_token
from softphone.hub.redis_parts import Deliver, bounce_for, call_event
from softphone.hub.server import Hub, HubConfig

from ..conftest import hub_url

T = TypeVar("T")

#: Stack depths already in use when a frame is parsed (the hub's own is about 30).
STACKS = [0, 15, 30, 60, 120]
#: Nesting depths around the recursion limit (1000), where parse and encode differ.
EDGE = range(900, 1001, 4)
OPENERS = [("[", "]", ""), ('{"a":', "}", "1")]


def at_depth(stack: int, fn: Callable[[], T]) -> T:
    """``fn()`` called ``stack`` frames deeper than here."""
    if stack <= 0:
        return fn()
    return at_depth(stack - 1, fn)


def nested(depth: int, opener: str = "[", closer: str = "]", inner: str = "") -> str:
    return opener * depth + inner + closer * depth


def message(data: str, extra: str = "") -> str:
    return '{"type":"offer","to":"bob","data":' + data + extra + "}"


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize(("opener", "closer", "inner"), OPENERS)
def test_relay_text_never_raises_recursion_error(stack: int, opener: str, closer: str,
                                                 inner: str) -> None:
    """Deep data with a field that makes the hub encode it again: bad-message."""
    for depth in EDGE:
        for extra in (',"x":1', ',"from":"mallory"'):
            text = message(nested(depth, opener, closer, inner), extra)
            with pytest.raises(ProtocolError) as info:
                at_depth(stack, lambda t=text: relay_text(t, "alice"))  # type: ignore[misc]
            assert info.value.code == ErrorCode.BAD_MESSAGE
            with pytest.raises(ProtocolError):
                at_depth(stack, lambda t=text: parse_client_message(t, "alice"))  # type: ignore[misc]


def test_nesting_limit_is_exact_when_re_encoding() -> None:
    ok = message(nested(MAX_NESTING), ',"x":1')
    _, _, wire = relay_text(ok, "alice")
    assert json.loads(wire)["data"] == json.loads(nested(MAX_NESTING))
    assert parse_client_message(ok, "alice").encode() == wire
    too_deep = message(nested(MAX_NESTING + 1), ',"x":1')
    for parse in (relay_text, parse_client_message):
        with pytest.raises(ProtocolError, match=f"nests more than {MAX_NESTING} deep"):
            parse(too_deep, "alice")


def test_deep_data_relayed_as_it_came_is_not_limited() -> None:
    """Without extra fields the text is passed on, not encoded again: any depth the
    parser takes goes through unchanged."""
    text = message(nested(500))
    _, _, wire = relay_text(text, "alice")
    assert wire == '{"from":"alice",' + text[1:]


@pytest.mark.parametrize("stack", STACKS)
def test_the_registry_parsers_take_deep_text(stack: int) -> None:
    """What another node relays (as it came, so possibly deep) is read by
    bounce_for and call_event: never an exception."""
    for depth in [*EDGE, 5000, 100_000]:
        for type_ in ("hangup", "offer"):
            text = '{"type":"' + type_ + '","to":"b","from":"a","data":' + nested(depth) + "}"
            bounce = at_depth(stack, lambda t=text: bounce_for(Deliver("b", "n1", t, "a")))  # type: ignore[misc]
            assert bounce is None or (bounce.sender, bounce.ref) == ("a", type_)
            event = at_depth(stack, lambda t=text: call_event(t))  # type: ignore[misc]
            assert event is None or event == (type_, "a")


@pytest.mark.parametrize("stack", STACKS)
def test_a_token_with_a_deep_header_is_malformed(stack: int) -> None:
    for depth in [*EDGE, 3000]:
        header = base64.urlsafe_b64encode(nested(depth).encode()).rstrip(b"=").decode()
        token = header + ".e30.c2ln"
        with pytest.raises(AuthError, match="malformed token"):
            at_depth(stack, lambda t=token: verify_token("s" * 40, t, "a", 0.0))  # type: ignore[misc]


async def test_a_live_hub_answers_deep_messages_and_keeps_the_connection(
        caplog: pytest.LogCaptureFixture) -> None:
    """The fuzz campaign's edge inputs, on real sockets: each gets bad-message (or,
    without an extra field, is delivered), and the connection keeps working."""
    caplog.set_level(logging.INFO)
    hub = Hub(HubConfig(ice_servers=[], rate=0))
    await hub.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session, \
                session.ws_connect(f"{hub_url(hub)}/ws?id=me") as ws:
            answers: list[Any] = []
            for depth in range(940, 1020, 3):
                for opener, closer, inner in OPENERS:
                    for extra in ("", ',"from":"x"', ',"x":1'):
                        text = '{"type":"offer","to":"me","data":' \
                            + nested(depth, opener, closer, inner) + extra + "}"
                        await ws.send_str(text)
                        frame = await ws.receive(5)
                        assert frame.type == aiohttp.WSMsgType.TEXT, frame
                        reply = json.loads(frame.data) if len(frame.data) < 200 else {}
                        if extra:
                            assert reply.get("type") == "error", (depth, extra, reply)
                            assert reply["data"]["code"] == "bad-message"
                        answers.append(reply.get("data", {}).get("code", "delivered"))
            await ws.send_json({"type": "hangup", "to": "me"})
            reply = json.loads((await ws.receive(5)).data)
            assert reply == {"type": "hangup", "to": "me", "from": "me"}
        assert answers.count("bad-message") >= 2 * len(range(940, 1020, 3)) * 2
        await asyncio.sleep(0)
    finally:
        await hub.stop()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], \
        [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
