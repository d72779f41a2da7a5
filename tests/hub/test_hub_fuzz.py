"""Property-based fuzzing (hypothesis) of the parser and of a live hub (how many
examples ran: pytest --hypothesis-show-statistics).

Every frame a client sends to a live hub is accounted for: exactly one frame
comes back for it (the delivered message, or an ``error`` to the sender), the
delivered ones carry the sender's real ``from``, and nothing is logged at
ERROR (an unhandled exception in a handler is logged there by aiohttp).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from softphone.core.protocol import (
    HubError,
    Message,
    ProtocolError,
    parse_client_message,
    relay_text,
)
from softphone.hub.server import Hub, HubConfig, route_frame

TYPES = ["call-request", "call-accept", "call-reject", "offer", "answer", "candidate",
         "hangup", "error", "", "OFFER", "x" * 100]
IDS = st.sampled_from(["a", "b", "ghost", "", "has space", "é", "x" * 65, "a.b_c-D"])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


# Built once: built inside the draw, the strategies cost more than the test
# (hypothesis validates each new one at its first draw).
TYPE_VALUES = st.sampled_from(TYPES) | json_values
ID_VALUES = IDS | json_values
ONE_IN_5, NINE_IN_10 = st.integers(0, 4), st.integers(0, 9)
KEYS = st.text(max_size=5)


@st.composite
def message_objects(draw: st.DrawFn) -> Any:
    obj: dict[str, Any] = {}
    if draw(NINE_IN_10):
        obj["type"] = draw(TYPE_VALUES)
    if draw(NINE_IN_10):
        obj["to"] = draw(ID_VALUES)
    if draw(st.booleans()):
        obj["data"] = draw(json_values)
    if draw(ONE_IN_5) == 0:
        obj["from"] = draw(ID_VALUES)
    if draw(ONE_IN_5) == 0:
        obj[draw(KEYS)] = draw(json_values)
    return obj


def encoded(obj: Any) -> str:
    return json.dumps(obj)


frames = st.one_of(
    message_objects().map(encoded),
    json_values.map(encoded),
    st.text(max_size=200),
    st.binary(max_size=200),
    st.sampled_from(["{", "[" * 5000 + "]" * 5000, '{"type": "offer", "to": "b", "data": NaN}',
                     '{"type":"hangup","to":"b"}' + " " * 3000]),
)


@settings(max_examples=3000, deadline=None)
@given(frames)
def test_parser_never_crashes(frame: str | bytes) -> None:
    try:
        message = parse_client_message(frame)
    except ProtocolError as exc:
        assert str(exc)
        assert exc.code == "bad-message"
        if isinstance(frame, str):
            with pytest.raises(ProtocolError) as same:
                relay_text(frame, "a")
            assert (str(same.value), same.value.ref) == (str(exc), exc.ref)
        routed = route_frame("a", frame)
        assert isinstance(routed, HubError) and routed.code == "bad-message"
        json.loads(routed.encode())
        return
    routed = route_frame("a", frame)
    assert isinstance(routed, Message) and routed.sender == "a"
    if isinstance(frame, str):  # the hub's own path: the same decision, the same text
        assert relay_text(frame, "a") == (routed.type, routed.to, routed.encode())
    wire = json.loads(routed.encode())
    assert set(wire) <= {"type", "to", "from", "data"} and wire["from"] == "a"
    assert wire["type"] == message.type and wire["to"] == message.to


class ErrorRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def exchange(batch: list[str | bytes]) -> None:
    hub = Hub(HubConfig(ice_servers=[], rate=0, max_message_bytes=4096))
    await hub.start()
    try:
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{hub.port}/ws?id="
            a, b = await s.ws_connect(url + "a"), await s.ws_connect(url + "b")
            for frame in batch:
                if isinstance(frame, bytes):
                    await a.send_bytes(frame)
                else:
                    await a.send_str(frame)
            # One frame back per frame sent: to a (an error, or a message to itself) or to b.
            got_a: list[dict[str, Any]] = []
            got_b: list[dict[str, Any]] = []

            async def collect(ws: aiohttp.ClientWebSocketResponse,
                              into: list[dict[str, Any]]) -> None:
                async for reply in ws:
                    assert reply.type == aiohttp.WSMsgType.TEXT, reply
                    into.append(json.loads(reply.data))

            readers = [asyncio.create_task(collect(a, got_a)),
                       asyncio.create_task(collect(b, got_b))]
            for _ in range(2000):
                if len(got_a) + len(got_b) >= len(batch):
                    break
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.03)  # anything more would be a frame too many
            for task in readers:
                task.cancel()
            assert len(got_a) + len(got_b) == len(batch), (got_a, got_b)
            for m in got_a + got_b:
                if m["type"] == "error":
                    assert "from" not in m and m["data"]["code"] in (
                        "bad-message", "offline", "too-large") and m["data"]["message"]
                else:
                    assert m["from"] == "a"
            for m in got_b:
                assert m["type"] != "error" and m["to"] == "b"
    finally:
        await hub.stop()


# 200 batches (of 5 to 30 frames, every kind): a hub, two sockets and a 30 ms wait
# for a frame too many each. The campaign against a live hub (every kind of frame
# and upgrade, 100,000 inputs) is benchmarks/fuzz_hub.py; CI runs its quick mode
# (tests/hub/test_fuzz_campaign.py).
@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(frames, min_size=5, max_size=30))
def test_live_hub_answers_every_frame(batch: list[str | bytes]) -> None:
    errors = ErrorRecords()
    loggers = [logging.getLogger(name) for name in ("softphone", "aiohttp", "asyncio")]
    for logger in loggers:
        logger.addHandler(errors)
    try:
        asyncio.run(asyncio.wait_for(exchange(batch), 30))
    finally:
        for logger in loggers:
            logger.removeHandler(errors)
    assert not errors.records, [r.getMessage() for r in errors.records]

