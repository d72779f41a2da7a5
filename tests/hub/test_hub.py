"""The hub over real sockets: routing, `from`, errors, ids, HTTP routes."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

import softphone
from softphone.hub.config import static_ice_servers
from softphone.hub.server import DEFAULT_ICE_SERVERS, Hub, HubConfig

from ..conftest import hub_url


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def connect(session: aiohttp.ClientSession, hub: Hub, client_id: str
                  ) -> aiohttp.ClientWebSocketResponse:
    return await session.ws_connect(f"{hub_url(hub)}/ws?id={client_id}")


async def receive(ws: aiohttp.ClientWebSocketResponse, within: float = 2.0) -> dict[str, Any]:
    frame = await ws.receive(within)
    assert frame.type == aiohttp.WSMsgType.TEXT, frame
    obj = json.loads(frame.data)
    assert isinstance(obj, dict)
    return obj


async def nothing(ws: aiohttp.ClientWebSocketResponse, wait: float = 0.2) -> None:
    with pytest.raises(asyncio.TimeoutError):
        frame = await ws.receive(wait)
        raise AssertionError(f"unexpected frame {frame}")


async def test_routes_and_sets_from(hub: Hub, session: aiohttp.ClientSession) -> None:
    a, b = await connect(session, hub, "a"), await connect(session, hub, "b")
    await a.send_json({"type": "call-request", "to": "b"})
    assert await receive(b) == {"type": "call-request", "to": "b", "from": "a"}
    offer = {"type": "offer", "sdp": "v=0\r\n"}
    await b.send_json({"type": "offer", "to": "a", "data": offer})
    assert await receive(a) == {"type": "offer", "to": "a", "from": "b", "data": offer}
    await nothing(b)


async def test_forged_from_is_overwritten(hub: Hub, session: aiohttp.ClientSession) -> None:
    a, b = await connect(session, hub, "a"), await connect(session, hub, "b")
    await a.send_json({"type": "hangup", "to": "b", "from": "mallory", "extra": 1})
    assert await receive(b) == {"type": "hangup", "to": "b", "from": "a"}


async def test_data_null_is_kept(hub: Hub, session: aiohttp.ClientSession) -> None:
    a, b = await connect(session, hub, "a"), await connect(session, hub, "b")
    await a.send_json({"type": "candidate", "to": "b", "data": None})
    assert await receive(b) == {"type": "candidate", "to": "b", "from": "a", "data": None}


async def test_offline_target(hub: Hub, session: aiohttp.ClientSession) -> None:
    a = await connect(session, hub, "a")
    await a.send_json({"type": "call-request", "to": "ghost"})
    reply = await receive(a)
    assert reply["type"] == "error" and "from" not in reply
    assert reply["data"]["code"] == "offline"
    assert reply["data"]["ref"] == "call-request"
    assert reply["data"]["to"] == "ghost"


@pytest.mark.parametrize(("frame", "ref"), [
    ("not json", None),
    ("[1, 2]", None),
    ('"text"', None),
    ("null", None),
    ('{"to": "b"}', None),
    ('{"type": 5, "to": "b"}', None),
    ('{"type": "launch-missiles", "to": "b"}', None),
    ('{"type": "offer"}', "offer"),
    ('{"type": "offer", "to": 7}', "offer"),
    ('{"type": "offer", "to": "has space"}', "offer"),
    ('{"type": "error", "to": "b"}', None),
])
async def test_bad_messages_are_answered_and_connection_kept(
        hub: Hub, session: aiohttp.ClientSession, frame: str, ref: str | None) -> None:
    a, b = await connect(session, hub, "a"), await connect(session, hub, "b")
    await a.send_str(frame)
    reply = await receive(a)
    assert reply["type"] == "error"
    assert reply["data"]["code"] == "bad-message"
    assert reply["data"].get("ref") == ref
    assert reply["data"]["message"]
    await nothing(b)
    # The connection is still usable.
    await a.send_json({"type": "hangup", "to": "b"})
    assert (await receive(b))["from"] == "a"


async def test_binary_frame_is_answered(hub: Hub, session: aiohttp.ClientSession) -> None:
    a = await connect(session, hub, "a")
    await a.send_bytes(b'{"type":"hangup","to":"a"}')
    assert (await receive(a))["data"]["code"] == "bad-message"


async def test_too_large(session: aiohttp.ClientSession) -> None:
    hub = Hub(HubConfig(ice_servers=[], max_message_bytes=1000))
    await hub.start()
    try:
        a, b = await connect(session, hub, "a"), await connect(session, hub, "b")
        await a.send_json({"type": "offer", "to": "b", "data": {"sdp": "x" * 2000}})
        assert (await receive(a))["data"]["code"] == "too-large"
        await nothing(b)
        await a.send_json({"type": "offer", "to": "b", "data": {"sdp": "x" * 100}})
        assert (await receive(b))["type"] == "offer"
    finally:
        await hub.stop()


async def test_message_to_oneself_is_delivered(hub: Hub, session: aiohttp.ClientSession
                                               ) -> None:
    a = await connect(session, hub, "a")
    await a.send_json({"type": "hangup", "to": "a"})
    assert await receive(a) == {"type": "hangup", "to": "a", "from": "a"}


@pytest.mark.parametrize("query", ["", "?id=", "?id=has%20space", "?id=" + "x" * 65,
                                   "?id=%C3%A9"])
async def test_bad_ids_are_refused(hub: Hub, session: aiohttp.ClientSession, query: str
                                   ) -> None:
    ws = await session.ws_connect(f"{hub_url(hub)}/ws{query}")
    reply = await receive(ws)
    assert reply["type"] == "error" and reply["data"]["code"] == "bad-message"
    assert "id" in reply["data"]["message"]
    frame = await ws.receive(2)
    assert frame.type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1008
    assert hub.registry.local_count() == 0


async def test_newest_connection_wins(hub: Hub, session: aiohttp.ClientSession) -> None:
    old = await connect(session, hub, "a")
    new = await connect(session, hub, "a")
    reply = await receive(old)
    assert reply["data"]["code"] == "replaced"
    frame = await old.receive(2)
    assert frame.type == aiohttp.WSMsgType.CLOSE
    await asyncio.sleep(0.1)  # let the hub run the old connection's cleanup
    b = await connect(session, hub, "b")
    await b.send_json({"type": "call-request", "to": "a"})
    assert (await receive(new))["from"] == "b"  # the old close did not unregister the new
    assert hub.registry.local_count() == 2


async def test_many_clients(hub: Hub, session: aiohttp.ClientSession) -> None:
    n = 60
    clients = [await connect(session, hub, f"c{i}") for i in range(n)]
    for i, ws in enumerate(clients):
        await ws.send_json({"type": "candidate", "to": f"c{(i + 1) % n}", "data": {"n": i}})
    for i, ws in enumerate(clients):
        got = await receive(ws)
        assert got["from"] == f"c{(i - 1) % n}"
        assert got["data"] == {"n": (i - 1) % n}
    for ws in clients:
        await nothing(ws, 0.01)
    health = await (await session.get(f"{hub_url(hub)}/healthz")).json()
    assert health == {"status": "ok", "clients": n, "version": softphone.__version__}
    metrics = await (await session.get(f"{hub_url(hub)}/metrics")).text()
    assert f'softphone_hub_info{{version="{softphone.__version__}"}} 1.0' in metrics


async def test_ice_servers_default_and_cors(session: aiohttp.ClientSession) -> None:
    """CORS follows the WebSocket's origin rule: the hub's own pages (a plain hub's
    also over https, a TLS proxy in front), those of --allow-origin, and no other
    page's browser (it cannot read TURN credentials or /metrics)."""
    hub = Hub()
    await hub.start()
    try:
        resp = await session.get(f"{hub_url(hub)}/ice-servers")
        assert resp.status == 200
        assert await resp.json() == {"iceServers": list(DEFAULT_ICE_SERVERS)}
        assert "Access-Control-Allow-Origin" not in resp.headers  # (no Origin: no browser)
        own = f"http://127.0.0.1:{hub.port}"
        for origin, allowed in [(own, True), (f"https://127.0.0.1:{hub.port}", True),
                                ("http://elsewhere.example", False), ("null", False)]:
            for path in ("/ice-servers", "/metrics", "/healthz"):
                got = await session.get(f"{hub_url(hub)}{path}", headers={"Origin": origin})
                assert got.status == 200
                assert got.headers.get("Access-Control-Allow-Origin") == \
                    (origin if allowed else None), (origin, path)
                assert got.headers["Vary"] == "Origin"
            pre = await session.options(f"{hub_url(hub)}/ice-servers", headers={
                "Origin": origin, "Access-Control-Request-Headers": "authorization"})
            assert pre.status == 204
            assert pre.headers.get("Access-Control-Allow-Origin") == \
                (origin if allowed else None), origin
            if allowed:
                assert "Authorization" in pre.headers["Access-Control-Allow-Headers"]
    finally:
        await hub.stop()


@pytest.mark.parametrize(("allow", "origin", "answer"), [
    (["https://app.example"], "https://app.example", "https://app.example"),
    (["https://app.example"], "https://evil.example", None),
    (["*"], "https://evil.example", "*"),
])
async def test_cors_follows_allow_origin(session: aiohttp.ClientSession, allow: list[str],
                                         origin: str, answer: str | None) -> None:
    hub = Hub(HubConfig(allow_origins=allow))
    await hub.start()
    try:
        for path in ("/ice-servers", "/metrics"):
            got = await session.get(f"{hub_url(hub)}{path}", headers={"Origin": origin})
            assert got.status == 200
            assert got.headers.get("Access-Control-Allow-Origin") == answer, path
    finally:
        await hub.stop()


async def test_ice_servers_configured(session: aiohttp.ClientSession) -> None:
    servers = [{"urls": "stun:192.0.2.10:3478"},
               {"urls": "turn:192.0.2.10:3478", "username": "u", "credential": "p"}]
    hub = Hub(HubConfig(ice_servers=servers))
    await hub.start()
    try:
        body = await (await session.get(f"{hub_url(hub)}/ice-servers")).json()
        assert body == {"iceServers": servers}
    finally:
        await hub.stop()


STUN = {"urls": "stun:192.0.2.10:3478"}
TURN = "turn:192.0.2.10:3478"


def test_static_ice_servers_default_only_when_nothing_is_configured() -> None:
    """Google's STUN only for a hub given no ICE servers at all: not next to TURN."""
    assert static_ice_servers(None, ()) == list(DEFAULT_ICE_SERVERS)
    assert static_ice_servers(None, [TURN]) == []
    assert static_ice_servers([STUN], ()) == [STUN]
    assert static_ice_servers([STUN], [TURN]) == [STUN]
    assert static_ice_servers([], ()) == []  # --ice-server none
    assert static_ice_servers([], [TURN]) == []
    configured = [STUN]
    served = static_ice_servers(configured, ())
    served.append({"urls": "stun:elsewhere"})
    assert configured == [STUN]  # a copy: the config is never changed


@pytest.mark.parametrize(("stun", "turn", "expected"), [
    (None, False, ["stun:stun.l.google.com:19302"]),  # neither: the original's default
    ([STUN], False, ["stun:192.0.2.10:3478"]),
    (None, True, [TURN]),  # TURN only: no Google STUN next to it
    ([STUN], True, ["stun:192.0.2.10:3478", TURN]),
], ids=["neither", "stun-only", "turn-only", "both"])
async def test_ice_servers_served_as_configured(session: aiohttp.ClientSession,
                                                stun: list[dict[str, Any]] | None,
                                                turn: bool, expected: list[str]) -> None:
    """/ice-servers and the WebSocket's first frame (?ice=1) hand out the same list."""
    turn_config: dict[str, Any] = {"turn_urls": [TURN], "turn_secret": "s"} if turn else {}
    hub = Hub(HubConfig(ice_servers=stun, **turn_config))
    await hub.start()
    try:
        body = await (await session.get(f"{hub_url(hub)}/ice-servers?id=a")).json()
        assert [s["urls"] for s in body["iceServers"]] == expected
        assert [("username" in s) for s in body["iceServers"]] == \
            [url.startswith("turn:") for url in expected]
        ws = await session.ws_connect(f"{hub_url(hub)}/ws?id=a&ice=1")
        first = await receive(ws)
        assert [s["urls"] for s in first["data"]["iceServers"]] == expected
        await ws.close()
    finally:
        await hub.stop()


async def test_stop_closes_clients_going_away(session: aiohttp.ClientSession) -> None:
    hub = Hub(HubConfig(ice_servers=[]))
    await hub.start()
    a = await connect(session, hub, "a")
    await hub.stop()
    frame = await a.receive(2)
    assert frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert a.close_code == 1001


# ------------------------------------------- the WebSocket path, byte by byte ---


def masked_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A client frame (RFC 6455 5.2), masked as clients must."""
    mask = b"\x01\x02\x03\x04"
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    else:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


UPGRADE = ("GET /ws?id={id} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Version: 13\r\n\r\n")


async def raw(hub: Hub, client_id: str, then: bytes = b""
              ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A hand-written WebSocket client: the upgrade (and ``then``) in one write."""
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    writer.write(UPGRADE.format(id=client_id).encode() + then)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return reader, writer


async def test_frames_sent_with_the_handshake_and_fragmented_ones(
        hub: Hub, session: aiohttp.ClientSession) -> None:
    b = await connect(session, hub, "b")
    text = json.dumps({"type": "offer", "to": "b", "data": {"sdp": "é" * 200}}).encode()
    early = masked_frame(0x1, b'{"type":"call-request","to":"b"}')
    _, writer = await raw(hub, "a", early)
    assert await receive(b) == {"type": "call-request", "to": "b", "from": "a"}
    # Split in three frames, the middle one cut inside a UTF-8 character, a ping
    # between them (control frames may come between fragments), sent byte by byte.
    parts = [masked_frame(0x1, text[:101], fin=False), masked_frame(0x9, b"p"),
             masked_frame(0x0, text[101:300], fin=False), masked_frame(0x0, text[300:])]
    for byte in b"".join(parts):
        writer.write(bytes([byte]))
    await writer.drain()
    got = await receive(b)
    assert got["from"] == "a" and got["data"]["sdp"] == "é" * 200
    writer.close()


async def test_invalid_utf8_closes_with_1007(hub: Hub) -> None:
    reader, writer = await raw(hub, "a", masked_frame(0x1, b'{"type":"\xff"}'))
    frame = await asyncio.wait_for(reader.read(100), 2)
    assert frame[0] == 0x88 and int.from_bytes(frame[2:4], "big") == 1007, frame
    assert await asyncio.wait_for(reader.read(), 2) == b""  # then the hub closes TCP
    writer.close()


async def test_a_bad_upgrade_is_refused_with_http(hub: Hub) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    writer.write(b"GET /ws?id=a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\r\n")
    reply = await asyncio.wait_for(reader.read(), 2)
    assert reply.startswith(b"HTTP/1.1 426 "), reply
    writer.close()
    assert hub.limiter.total == 0 and hub.registry.local_count() == 0


@pytest.mark.parametrize("header", ["Host", "Origin", "Sec-WebSocket-Key"])
async def test_a_repeated_header_is_refused_with_400(
        hub: Hub, header: str, caplog: pytest.LogCaptureFixture) -> None:
    """Two Host headers (as two Origin, two keys): 400, no traceback, nobody signed in."""
    first = UPGRADE.format(id="a").split("\r\n\r\n")[0]
    second = {"Host": "y", "Origin": "http://y",
              "Sec-WebSocket-Key": "eHh4eHh4eHh4eHh4eHh4eA=="}[header]
    if header == "Origin":
        first += "\r\nOrigin: http://x"
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    writer.write(f"{first}\r\n{header}: {second}\r\n\r\n".encode())
    reply = await asyncio.wait_for(reader.read(), 2)
    assert reply.startswith(b"HTTP/1.1 400 "), reply
    assert f"invalid {header} header: multiple values".encode() in reply, reply
    writer.close()
    await asyncio.sleep(0.05)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert hub.limiter.total == 0 and hub.registry.local_count() == 0


async def test_http_then_websocket_from_one_session(
        hub: Hub, session: aiohttp.ClientSession) -> None:
    """HTTP responses close their connection, so the WebSocket after them (as the phone
    does: /ice-servers, then /ws) comes on a new one."""
    for path in ("/ice-servers", "/healthz", "/nowhere"):
        async with session.get(f"{hub_url(hub)}{path}") as resp:
            assert resp.headers["Connection"] == "close"
    a, b = await connect(session, hub, "a"), await connect(session, hub, "b")
    await a.send_json({"type": "hangup", "to": "b"})
    assert await receive(b) == {"type": "hangup", "to": "b", "from": "a"}


async def test_a_client_that_sends_half_a_request_is_not_served(hub: Hub) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    writer.write(b"GET /ws?id=a HTTP/1.1\r\nHost: x\r\n")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()


async def test_pings_are_answered_and_partial_frames_completed(
        hub: Hub, session: aiohttp.ClientSession) -> None:
    b = await connect(session, hub, "b")
    reader, writer = await raw(hub, "a")
    writer.write(masked_frame(0x9, b"hello") + masked_frame(0xA, b"unasked pong"))
    assert await asyncio.wait_for(reader.readexactly(7), 2) == b"\x8a\x05hello"
    big = json.dumps({"type": "offer", "to": "b", "data": "x" * 3000}).encode()
    frame = masked_frame(0x1, big)
    for cut in (1, 3, 7, 500, len(frame)):  # header, length, mask, payload in pieces
        writer.write(frame[:cut])
        await writer.drain()
        await asyncio.sleep(0.01)
        frame = frame[cut:]
    assert (await receive(b))["data"] == "x" * 3000
    writer.close()


@pytest.mark.parametrize(("frame", "code"), [
    (b"\x81\x05hello", 1002),  # not masked
    (b"\xc1\x85" + b"\0" * 9, 1002),  # RSV1 without an extension
    (b"\x89\xfe\x00\x7e" + b"\0" * 130, 1002),  # a control frame over 125 bytes
    (b"\x83\x80\0\0\0\0", 1002),  # reserved opcode
])
async def test_frames_rfc6455_forbids_fail_the_connection(hub: Hub, frame: bytes,
                                                          code: int) -> None:
    reader, writer = await raw(hub, "a", frame)
    reply = await asyncio.wait_for(reader.read(100), 2)
    assert reply[0] == 0x88 and int.from_bytes(reply[2:4], "big") == code, reply
    writer.close()


async def test_a_connection_that_never_sends_its_request_is_closed() -> None:
    hub = Hub(HubConfig(ice_servers=[], head_timeout=0.2))
    await hub.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
        writer.write(b"GET /ws?id=a HTTP/1.1\r\n")
        assert await asyncio.wait_for(reader.read(), 3) == b""
        writer.close()
    finally:
        await hub.stop()


async def test_frames_read_at_once_are_delivered_in_order(
        hub: Hub, session: aiohttp.ClientSession) -> None:
    b = await connect(session, hub, "b")
    texts = [b'{"type":"candidate","to":"b","data":1}', b'{"type":"nope","to":"b"}',
             b'{"type":"candidate","to":"a","data":2}', b'{"type":"candidate","to":"b","data":3}',
             b'{"type":"candidate","to":"c","data":4}']
    reader, writer = await raw(hub, "a")
    await asyncio.sleep(0.1)  # registered
    writer.write(b"".join(masked_frame(0x1, t) for t in texts))  # one write, one read
    assert [(await receive(b))["data"] for _ in range(2)] == [1, 3]
    got = []
    for _ in range(3):
        head = await asyncio.wait_for(reader.readexactly(2), 2)
        got.append(json.loads(await reader.readexactly(head[1])))
    assert [m.get("data", {}).get("code") if m["type"] == "error" else m["data"]
            for m in got] == ["bad-message", 2, "offline"]
    writer.close()
