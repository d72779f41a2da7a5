"""Several hub nodes on one real redis-server (softphone/hub/redis_*.py, server/cluster.py).

Nodes run in-process (a Hub with a RedisRegistry, short heartbeats) where the
test speaks raw WebSocket, and as ``softphone serve --redis`` subprocesses
(server/cluster.py's building blocks) where a node must die or CLI phones call.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest

from softphone.core.protocol import Message, ProtocolError, relay_text
from softphone.hub.redis_parts import (
    Bounce,
    Deliver,
    Forget,
    Keys,
    PresenceCache,
    Replace,
    Watch,
    bounce_for,
    call_event,
    decode_envelope,
    decode_envelopes,
    deliver_envelope,
    encode_envelope,
    encode_envelopes,
    holder_value,
    parse_holder,
)
from softphone.hub.redis_registry import RedisRegistry
from softphone.hub.redis_wire import ReplyError, RespReader, command, has_hiredis, new_parser
from softphone.hub.server import Hub, HubConfig

from ..conftest import need, need_command
from ..support.coturn import allocates
from ..support.helpers import Proc, assert_wav_tone
from .test_hub import UPGRADE as HAND_WRITTEN_UPGRADE

ROOT = Path(__file__).resolve().parents[2]


def load_cluster() -> ModuleType:
    """server/cluster.py is a script (no package): load it by path."""
    name = "softphone_server_cluster"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "server" / "cluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


cluster = load_cluster()

# -- pure parts ----------------------------------------------------------------------


def test_keys_and_holder_values() -> None:
    keys = Keys("sp:")
    assert keys.client("alice") == "sp:id:alice"
    assert keys.node("n1") == "sp:node:n1"
    assert keys.channel("n1") == "sp:to:n1"
    assert parse_holder(holder_value("n1", "abc")) == ("n1", "abc")


def test_envelopes_round_trip() -> None:
    text = '{"type":"offer","to":"b","from":"a","data":{"sdp":"v=0\\r\\n|x"}}'
    for envelope in (Deliver("b", "node-1", text), Replace("alice", "0123abcd"),
                     Bounce("a", "b", "offer")):
        assert decode_envelope(encode_envelope(envelope)) == envelope
        assert decode_envelope(encode_envelope(envelope).encode()) == envelope
    assert decode_envelope("hello") is None
    assert decode_envelope("R\x1eonly-two") is None


def test_envelopes_of_the_routing_round_trip() -> None:
    text = '{"from":"a","type":"offer","to":"b","data":{"sdp":"v=0\\r\\n"}}'
    first = Deliver("b", "n1", text, "a")
    again = Deliver("b", "n1", text, "a", forwarded=True)
    forget = Forget("b", "n2")
    for envelope in (first, again, forget):
        assert decode_envelope(encode_envelope(envelope)) == envelope
    assert deliver_envelope("b", "n1", "a", text) == encode_envelope(first)
    batch = encode_envelopes([encode_envelope(e) for e in (first, again, forget)])
    assert decode_envelopes(batch) == [first, again, forget]
    assert decode_envelopes(batch.encode()) == [first, again, forget]
    assert decode_envelopes("junk\x1d" + encode_envelope(forget)) == [None, forget]


@pytest.mark.parametrize("char", ["\x1d", "\x1e"])
def test_the_envelope_separators_never_occur_in_a_relayed_message(char: str) -> None:
    """JSON allows no raw control character, so a message the hub relays cannot hold
    the characters that separate envelopes and their fields."""
    for text in ('{"type":"offer","to":"b","data":"' + char + '"}',
                 '{"type":"offer",' + char + '"to":"b"}'):
        with pytest.raises(ProtocolError):
            relay_text(text, "a")
    _, _, wire = relay_text('{"type":"offer","to":"b","data":"\\u001d","x":1}', "a")
    assert char not in wire


def test_presence_cache() -> None:
    cache = PresenceCache(limit=3)
    cache.learn("a", "n1")
    cache.learn("b", "n2")
    cache.learn("c", "n1")
    assert (cache.get("a"), cache.get("b"), cache.get("zz")) == ("n1", "n2", None)
    cache.forget("b", "n3")  # it is not on n3: kept
    assert cache.get("b") == "n2"
    cache.forget("b", "n2")
    assert cache.get("b") is None
    cache.learn("d", "n2")
    cache.learn("a", "n2")  # (an update: nothing evicted)
    assert len(cache) == 3
    cache.learn("e", "n2")  # full: the first learnt (a: an update is not a new entry) goes
    assert cache.get("a") is None and len(cache) == 3
    assert cache.forget_node("n2") == 2 and len(cache) == 1 and cache.get("c") == "n1"


REPLIES = [
    b"+OK\r\n", b":42\r\n", b":-1\r\n", b"$5\r\nhello\r\n", b"$0\r\n\r\n", b"$-1\r\n",
    b"-ERR unknown command\r\n", b"*0\r\n", b"*-1\r\n",
    b"*2\r\n:1\r\n$2\r\nn2\r\n",
    b"*3\r\n$7\r\nmessage\r\n$5\r\nto:n1\r\n$6\r\nD\x1eb\r\nx\r\n",
    b"*2\r\n*1\r\n:1\r\n*2\r\n$1\r\na\r\n$-1\r\n",
]


def _read_all(parser: Any, data: bytes, step: int) -> list[Any]:
    out: list[Any] = []
    for i in range(0, len(data), step):
        parser.feed(data[i:i + step])
        while (reply := parser.gets()) is not False:
            out.append(reply)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, Exception):
        return ("error", str(value))
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_resp_reader_reads_what_hiredis_reads(step: int) -> None:
    """The fallback parser against hiredis (the one the redis extra installs), fed
    whole and in pieces."""
    need(has_hiredis(), "hiredis", "pip install 'softphone[redis]'")
    data = b"".join(REPLIES)
    ours = _read_all(RespReader(), data, step)
    theirs = _read_all(new_parser(), data, step)
    assert len(ours) == len(REPLIES)
    assert _plain(ours) == _plain(theirs)
    assert isinstance(ours[6], ReplyError) and isinstance(theirs[6], ReplyError)
    assert ours[3] == b"hello" and ours[9] == [1, b"n2"]


def test_commands_are_resp_arrays_of_bulk_strings() -> None:
    assert command("PUBLISH", b"to:n1", "h\u00e9", 3) == (
        b"*4\r\n$7\r\nPUBLISH\r\n$5\r\nto:n1\r\n$3\r\nh\xc3\xa9\r\n$1\r\n3\r\n")
    parser = RespReader()
    parser.feed(command("SET", "k", b"\r\n"))
    assert parser.gets() == [b"SET", b"k", b"\r\n"]  # (a request is an array too)


def test_bounce_names_the_sender_and_the_type() -> None:
    text = Message("call-request", "b", None, "a", False).encode()
    assert bounce_for(Deliver("b", "n1", text)) == Bounce("a", "b", "call-request")
    assert bounce_for(Deliver("b", "n1", "garbage")) is None


def test_call_event_reads_only_call_messages() -> None:
    # call_event relies on the hub writing "type" first.
    assert Message("hangup", "b", None, "a", False).encode().startswith('{"type":"hangup"')
    assert call_event(Message("call-accept", "a", {"media": "ready"}, "b", True).encode()) \
        == ("call-accept", "b")
    assert call_event(Message("offer", "b", {"sdp": "x"}, "a", True).encode()) is None
    assert call_event("not json") is None
    assert call_event('{"from":"a","type":"hangup"}') == ("hangup", "a")


def test_watch_judges_gone_and_back() -> None:
    w = Watch()
    w.relayed("call-request", "alice", "n1")
    w.relayed("offer", "carol", "n1")  # not a call message: not watched
    assert w.ids() == ["alice"]
    # alive on its node: nothing
    assert w.judge({"alice": "n1"}, {"n1": True}) == ([], [])
    # its node died and nobody holds it: gone, once
    assert w.judge({"alice": None}, {"n1": False}) == (["alice"], [])
    assert w.judge({"alice": None}, {"n1": False}) == ([], [])
    # it reconnected on another node: back
    assert w.judge({"alice": "n2"}, {"n1": False, "n2": True}) == ([], ["alice"])
    # it left a node that is alive: that node handles it; we forget it
    assert w.judge({"alice": None}, {"n2": True}) == ([], [])
    assert len(w) == 0
    w.relayed("call-accept", "bob", "n2")
    w.relayed("hangup", "bob", "n2")
    assert len(w) == 0


def test_watch_is_bounded() -> None:
    w = Watch(limit=3)
    for i in range(10):
        w.relayed("call-request", f"c{i}", "n1")
    assert w.ids() == ["c7", "c8", "c9"]


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture
def redis_server() -> Iterator[Any]:
    need(importlib.util.find_spec("redis") is not None, "the redis package",
         "pip install 'softphone[redis]'")
    need_command("redis-server", "redis-server")
    server = cluster.RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


class Nodes:
    """In-process hub nodes sharing one Redis, with fast heartbeats.

    Presence lives ``ttl`` = 3 s (15 heartbeats): with 0.8 s, a test process
    stalled for 0.6 s on a loaded machine (CI, with a network-lab call beside it)
    let an id expire between two refreshes, and a message for it came back
    ``offline`` (test_cross_node_offline timed out waiting for it). Expiry itself
    is tested with nodes as processes, killed.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.hubs: list[Hub] = []

    async def add(self, node_id: str, **config: Any) -> Hub:
        registry = RedisRegistry(self.url, node_id, heartbeat=0.2, ttl=3.0)
        await registry.start()
        hub = Hub(HubConfig(ice_servers=[], **config), registry)
        await hub.start("127.0.0.1", 0)
        self.hubs.append(hub)
        return hub


@pytest.fixture
async def nodes(redis_server: Any) -> AsyncIterator[Nodes]:
    n = Nodes(redis_server.url)
    try:
        yield n
    finally:
        for hub in n.hubs:
            await hub.stop()


def ws_url(hub: Hub, client_id: str) -> str:
    return f"http://127.0.0.1:{hub.port}/ws?id={client_id}"


async def recv(ws: aiohttp.ClientWebSocketResponse, within: float = 5.0) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.receive(), within)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    out = json.loads(msg.data)
    assert isinstance(out, dict)
    return out


async def health(session: aiohttp.ClientSession, hub: Hub) -> dict[str, Any]:
    async with session.get(f"http://127.0.0.1:{hub.port}/healthz") as resp:
        assert resp.status == 200
        body = await resp.json()
        assert isinstance(body, dict)
        return body


async def metrics(session: aiohttp.ClientSession, hub: Hub) -> str:
    async with session.get(f"http://127.0.0.1:{hub.port}/metrics") as resp:
        return await resp.text()


async def eventually(check: Any, within: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while True:
        if await check():
            return
        assert time.monotonic() < deadline, f"{what} not reached within {within} s"
        await asyncio.sleep(0.1)


# -- cross-node messages -----------------------------------------------------------------


def hold_claims(registry: RedisRegistry) -> tuple[asyncio.Event, asyncio.Event]:
    """Make ``registry``'s Redis claim (its Lua script) wait until the test lets it go:
    (entered, go)."""
    entered, go = asyncio.Event(), asyncio.Event()
    claim = registry._scripts["claim"]

    async def held(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        await go.wait()
        return await claim(*args, **kwargs)

    registry._scripts["claim"] = held
    return entered, go


UPGRADE = HAND_WRITTEN_UPGRADE.format(id="bob").encode()


async def read_frame(reader: asyncio.StreamReader) -> str:
    """One unmasked text frame from the hub (payloads under 64 KB)."""
    head = await reader.readexactly(2)
    assert head[0] == 0x81, head
    size = head[1] & 0x7F
    if size == 126:
        size = int.from_bytes(await reader.readexactly(2), "big")
    return (await reader.readexactly(size)).decode()


async def test_handshake_answered_after_the_claim(nodes: Nodes) -> None:
    """A client is told it is connected only once its id is claimed in Redis, so a
    call from another node at once finds it (it used to find it ``offline`` in
    between); what the hub writes meanwhile (a pong) waits behind the answer."""
    n1, n2 = await nodes.add("n1"), await nodes.add("n2")
    entered, go = hold_claims(n2.registry)  # type: ignore[arg-type]
    reader, writer = await asyncio.open_connection("127.0.0.1", n2.port)
    async with aiohttp.ClientSession() as s, s.ws_connect(ws_url(n1, "alice")) as alice:
        try:
            writer.write(UPGRADE + b"\x89\x80abcd")  # and a ping right behind it
            await asyncio.wait_for(entered.wait(), 5)
            with pytest.raises(TimeoutError):  # (an answer written before it would be here)
                await asyncio.wait_for(reader.read(1), 0.3)
            go.set()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 101"), head
            await alice.send_json({"type": "call-request", "to": "bob"})  # at once
            assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\x8a\x00"  # pong
            got = json.loads(await asyncio.wait_for(read_frame(reader), 5))
            assert (got["type"], got["from"]) == ("call-request", "alice")
        finally:
            writer.close()
            await writer.wait_closed()


async def test_a_hub_stopping_answers_before_it_closes(nodes: Nodes) -> None:
    """A client still being registered when the hub stops is answered, then told
    ``going away`` (1001): a close it can read, not a handshake cut short."""
    n2 = await nodes.add("n2")
    entered, go = hold_claims(n2.registry)  # type: ignore[arg-type]
    reader, writer = await asyncio.open_connection("127.0.0.1", n2.port)
    try:
        writer.write(UPGRADE)
        await asyncio.wait_for(entered.wait(), 5)
        stopping = asyncio.ensure_future(n2.stop())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
        close = await asyncio.wait_for(reader.readexactly(4), 5)
        assert close[0] == 0x88 and int.from_bytes(close[2:4], "big") == 1001, close
        await asyncio.wait_for(stopping, 10)
    finally:
        go.set()  # (the registration ends after the stop: nothing to answer, no error)
        await asyncio.sleep(0.2)
        writer.close()


async def test_a_registry_fault_cuts_the_connection(nodes: Nodes) -> None:
    """A client whose registration fails is cut at once (it would wait for an answer
    that never comes); the hub goes on."""
    n1 = await nodes.add("n1")
    registry = n1.registry
    assert isinstance(registry, RedisRegistry)
    register = registry.register
    calls = [0]

    async def failing(peer: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("registry fault")
        return await register(peer)

    registry.register = failing  # type: ignore[method-assign]
    reader, writer = await asyncio.open_connection("127.0.0.1", n1.port)
    try:
        writer.write(UPGRADE)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # cut, nothing answered
    finally:
        writer.close()
    async with aiohttp.ClientSession() as s, s.ws_connect(ws_url(n1, "bob")) as bob:
        assert (await health(s, n1))["clients"] == 1
        await bob.send_json({"type": "call-request", "to": "nobody"})
        assert (await recv(bob))["data"]["code"] == "offline"


async def test_cross_node_routing_sets_from(nodes: Nodes) -> None:
    n1, n2 = await nodes.add("n1"), await nodes.add("n2")
    async with aiohttp.ClientSession() as s, \
            s.ws_connect(ws_url(n1, "alice")) as alice, s.ws_connect(ws_url(n2, "bob")) as bob:
        await alice.send_json({"type": "offer", "to": "bob", "from": "mallory",
                               "data": {"type": "offer", "sdp": "v=0"}, "extra": 1})
        assert await recv(bob) == {"type": "offer", "to": "bob", "from": "alice",
                                   "data": {"type": "offer", "sdp": "v=0"}}
        await bob.send_json({"type": "call-accept", "to": "alice"})
        assert await recv(alice) == {"type": "call-accept", "to": "alice", "from": "bob"}
        await bob.send_json({"type": "candidate", "to": "alice", "data": None})
        assert await recv(alice) == {"type": "candidate", "to": "alice", "from": "bob",
                                     "data": None}
        assert (await health(s, n1))["clients"] == 1
        assert (await health(s, n2))["clients"] == 1


async def test_cross_node_routing_without_hiredis(nodes: Nodes,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The pure-Python reply parser (when hiredis is not installed) routes the same."""
    import softphone.hub.redis_wire as wire

    monkeypatch.setattr(wire, "new_parser", RespReader)
    n1, n2 = await nodes.add("n1"), await nodes.add("n2")
    async with aiohttp.ClientSession() as s, \
            s.ws_connect(ws_url(n1, "alice")) as alice, s.ws_connect(ws_url(n2, "bob")) as bob:
        for i in range(20):
            await alice.send_json({"type": "candidate", "to": "bob", "data": i})
        assert [(await recv(bob))["data"] for _ in range(20)] == list(range(20))
        await bob.send_json({"type": "answer", "to": "alice", "data": {"sdp": "x"}})
        assert (await recv(alice))["from"] == "bob"
        await alice.send_json({"type": "offer", "to": "nobody"})
        assert (await recv(alice))["data"]["code"] == "offline"


async def test_cross_node_offline(nodes: Nodes) -> None:
    n1, n2 = await nodes.add("n1"), await nodes.add("n2")
    async with aiohttp.ClientSession() as s, s.ws_connect(ws_url(n1, "alice")) as alice:
        await alice.send_json({"type": "call-request", "to": "nobody"})
        assert await recv(alice) == {"type": "error", "data": {
            "code": "offline", "message": "nobody is not connected", "ref": "call-request",
            "to": "nobody"}}
        bob = await s.ws_connect(ws_url(n2, "bob"))
        # (at once: his handshake is answered once n2 has claimed his id in Redis)
        await alice.send_json({"type": "call-request", "to": "bob"})
        assert (await recv(bob))["from"] == "alice"
        await bob.close()
        # Until n2 has seen bob go, a message for him still reaches his closing
        # connection (on a loaded machine that took longer than a fixed 0.2 s).
        for _ in range(250):  # 5 s at most
            if not n2.registry.local_count():
                break
            await asyncio.sleep(0.02)
        await alice.send_json({"type": "call-request", "to": "bob"})
        reply = await recv(alice)
        assert reply["type"] == "error" and reply["data"]["code"] == "offline"


async def test_duplicate_id_across_nodes_newest_wins(nodes: Nodes, redis_server: Any) -> None:
    n1, n2 = await nodes.add("n1"), await nodes.add("n2")
    async with aiohttp.ClientSession() as s:
        old = await s.ws_connect(ws_url(n1, "alice"))
        bob = await s.ws_connect(ws_url(n1, "bob"))
        await asyncio.sleep(0.1)
        new = await s.ws_connect(ws_url(n2, "alice"))
        reply = await recv(old)
        assert reply["type"] == "error" and reply["data"]["code"] == "replaced"
        closing = await asyncio.wait_for(old.receive(), 5)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert old.close_code == 1008
        await asyncio.sleep(0.5)  # the old connection's unregister has run
        assert (await health(s, n1))["clients"] == 1
        # The newer holder keeps the id, on the other node.
        await bob.send_json({"type": "call-request", "to": "alice"})
        assert await recv(new) == {"type": "call-request", "to": "alice", "from": "bob"}
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            value = await r.get("softphone:id:alice")
        finally:
            await r.aclose()
        assert value is not None and value.startswith("n2|")
        # And back: a third connection on the first node takes it again.
        newest = await s.ws_connect(ws_url(n1, "alice"))
        assert (await recv(new))["data"]["code"] == "replaced"
        await asyncio.sleep(0.3)
        await bob.send_json({"type": "hangup", "to": "alice"})
        assert (await recv(newest))["type"] == "hangup"
        for ws in (new, newest, bob):
            await ws.close()


async def test_lost_replace_notice_is_caught_by_the_heartbeat(
        nodes: Nodes, redis_server: Any) -> None:
    """Another node took the id but its notice never came: the next refresh finds out."""
    import redis.asyncio as aioredis

    n1 = await nodes.add("n1")
    async with aiohttp.ClientSession() as s, s.ws_connect(ws_url(n1, "alice")) as alice:
        await asyncio.sleep(0.1)
        r = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            assert (await r.get("softphone:id:alice") or "").startswith("n1|")
            await r.set("softphone:id:alice", "elsewhere|0000", px=5000)
        finally:
            await r.aclose()
        reply = await recv(alice, within=5)
        assert reply["type"] == "error" and reply["data"]["code"] == "replaced"


async def test_stale_presence_still_answers_offline(nodes: Nodes, redis_server: Any) -> None:
    """Presence says a live node holds the id, but it does not (it just left): offline."""
    import redis.asyncio as aioredis

    n1 = await nodes.add("n1")
    await nodes.add("n2")
    r = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await r.set("softphone:id:ghost", "n2|0000", px=5000)
    finally:
        await r.aclose()
    async with aiohttp.ClientSession() as s, s.ws_connect(ws_url(n1, "alice")) as alice:
        await alice.send_json({"type": "call-request", "to": "ghost"})
        assert await recv(alice) == {"type": "error", "data": {
            "code": "offline", "message": "ghost is not connected", "ref": "call-request",
            "to": "ghost"}}


# -- batching and the presence cache ---------------------------------------------------


async def redis_stats(url: str) -> dict[str, int]:
    """Calls per command so far (INFO commandstats)."""
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        info = await r.info("commandstats")
    finally:
        await r.aclose()
    return {name[len("cmdstat_"):]: int(v["calls"]) for name, v in info.items()}


def masked_text(payload: bytes) -> bytes:
    """A client's text frame (mask 0: the payload as it is)."""
    n = len(payload)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0xFE]) + n.to_bytes(2, "big")
    return head + b"\0\0\0\0" + payload


async def test_messages_of_one_turn_go_in_one_publish(nodes: Nodes, redis_server: Any) -> None:
    """Fifty messages read at once for clients of one node: one PUBLISH, in order, once
    the presence cache knows the node (the first message asks the ROUTE script)."""
    n1, n2 = await nodes.add("n1"), await nodes.add("n2")
    async with aiohttp.ClientSession() as s, s.ws_connect(ws_url(n2, "bob")) as bob:
        reader, writer = await asyncio.open_connection("127.0.0.1", n1.port)
        writer.write(b"GET /ws?id=alice HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.1)
        writer.write(masked_text(b'{"type":"offer","to":"bob","data":-1}'))
        assert (await recv(bob))["data"] == -1
        assert n1.registry.cache.get("bob") == "n2"  # type: ignore[attr-defined]
        before = await redis_stats(redis_server.url)
        writer.write(b"".join(masked_text(b'{"type":"candidate","to":"bob","data":%d}' % i)
                              for i in range(50)))
        got = [(await recv(bob))["data"] for _ in range(50)]
        after = await redis_stats(redis_server.url)
        writer.close()
    assert got == list(range(50))
    assert after.get("evalsha", 0) == before.get("evalsha", 0)
    assert 1 <= after["publish"] - before["publish"] <= 3, (before, after)  # (one read, or few)


async def test_a_cached_recipient_that_moved_still_gets_its_messages(nodes: Nodes) -> None:
    """bob's node is cached on alice's node; bob reconnects on a third node (the old
    connection is replaced): alice's next messages reach the new bob, in order, and
    her node learns where he is."""
    n1, n2, n3 = await nodes.add("n1"), await nodes.add("n2"), await nodes.add("n3")
    async with aiohttp.ClientSession() as s, s.ws_connect(ws_url(n1, "alice")) as alice:
        old = await s.ws_connect(ws_url(n2, "bob"))
        await asyncio.sleep(0.1)
        await alice.send_json({"type": "offer", "to": "bob", "data": 0})
        assert (await recv(old))["data"] == 0
        assert n1.registry.cache.get("bob") == "n2"  # type: ignore[attr-defined]
        new = await s.ws_connect(ws_url(n3, "bob"))
        assert (await recv(old))["data"]["code"] == "replaced"
        for i in range(1, 21):
            await alice.send_json({"type": "candidate", "to": "bob", "data": i})
        assert [(await recv(new))["data"] for _ in range(20)] == list(range(1, 21))

        async def learned() -> bool:
            return n1.registry.cache.get("bob") in (None, "n3")  # type: ignore[attr-defined]

        await eventually(learned, 5, "n1 forgot that bob was on n2")
        await alice.send_json({"type": "hangup", "to": "bob"})
        assert (await recv(new))["type"] == "hangup"
        assert n1.registry.cache.get("bob") == "n3"  # type: ignore[attr-defined]
        await old.close()
        await new.close()


async def test_a_cached_recipient_that_left_is_offline(nodes: Nodes) -> None:
    n1, n2 = await nodes.add("n1"), await nodes.add("n2")
    async with aiohttp.ClientSession() as s, s.ws_connect(ws_url(n1, "alice")) as alice:
        bob = await s.ws_connect(ws_url(n2, "bob"))
        await asyncio.sleep(0.1)
        await alice.send_json({"type": "call-request", "to": "bob"})
        assert (await recv(bob))["type"] == "call-request"
        assert n1.registry.cache.get("bob") == "n2"  # type: ignore[attr-defined]
        await bob.close()
        await asyncio.sleep(0.3)  # gone from n2 (its presence too)
        await alice.send_json({"type": "offer", "to": "bob", "data": {"sdp": "x"}})
        assert await recv(alice) == {"type": "error", "data": {
            "code": "offline", "message": "bob is not connected", "ref": "offer", "to": "bob"}}

        async def forgotten() -> bool:
            return n1.registry.cache.get("bob") is None  # type: ignore[attr-defined]

        await eventually(forgotten, 5, "n1 forgot bob")


async def test_order_is_kept_while_the_cache_learns(nodes: Nodes) -> None:
    """Messages sent back to back from the first one on (the first ones through the
    ROUTE script, the rest straight to the node once it is known) arrive in order,
    and so do the answers, which go straight back (the sender's node was learnt)."""
    n1, n2 = await nodes.add("n1", rate=0), await nodes.add("n2", rate=0)
    async with aiohttp.ClientSession() as s, s.ws_connect(ws_url(n1, "alice")) as alice, \
            s.ws_connect(ws_url(n2, "bob")) as bob:
        await asyncio.sleep(0.1)
        for i in range(300):
            await alice.send_json({"type": "candidate", "to": "bob", "data": i})
        assert [(await recv(bob))["data"] for _ in range(300)] == list(range(300))
        assert n2.registry.cache.get("alice") == "n1"  # type: ignore[attr-defined]
        for i in range(100):
            await bob.send_json({"type": "candidate", "to": "alice", "data": i})
        assert [(await recv(alice))["data"] for _ in range(100)] == list(range(100))


async def test_a_slow_redis_holds_the_senders_not_the_hub(nodes: Nodes,
                                                          redis_server: Any) -> None:
    """While Redis does not answer, at most ``high_water`` messages wait for it; the
    sender is not read meanwhile (TCP holds the rest), and nothing is lost."""
    n1, n2 = await nodes.add("n1", rate=0), await nodes.add("n2", rate=0)
    router = n1.registry.router  # type: ignore[attr-defined]
    router.high_water = 20
    async with aiohttp.ClientSession() as s, s.ws_connect(ws_url(n1, "alice")) as alice, \
            s.ws_connect(ws_url(n1, "carol")) as carol, \
            s.ws_connect(ws_url(n2, "bob")) as bob:
        await asyncio.sleep(0.1)
        await alice.send_json({"type": "offer", "to": "bob", "data": -1})
        assert (await recv(bob))["data"] == -1
        redis_server.proc.send_signal(signal.SIGSTOP)
        try:
            for i in range(100):
                await alice.send_json({"type": "candidate", "to": "bob", "data": i})
            await asyncio.sleep(0.5)
            assert router.pending == 20
            # The hub itself is not held: local delivery goes on.
            await carol.send_json({"type": "hangup", "to": "carol"})
            assert (await recv(carol))["from"] == "carol"
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
        assert [(await recv(bob))["data"] for _ in range(100)] == list(range(100))
        assert router.pending == 0


# -- Redis lost and back ---------------------------------------------------------------


async def test_redis_stopped_and_restarted(nodes: Nodes, redis_server: Any) -> None:
    n1, n2 = await nodes.add("n1"), await nodes.add("n2")
    async with aiohttp.ClientSession() as s, \
            s.ws_connect(ws_url(n1, "alice")) as alice, \
            s.ws_connect(ws_url(n1, "carol")) as carol, \
            s.ws_connect(ws_url(n2, "bob")) as bob:
        await alice.send_json({"type": "call-request", "to": "bob"})
        assert (await recv(bob))["from"] == "alice"

        redis_server.stop(signal.SIGKILL)

        async def degraded() -> bool:
            return (await health(s, n1))["status"] == "degraded"

        await eventually(degraded, what="n1 degraded")
        got = await health(s, n1)
        assert (got["status"], got["clients"]) == ("degraded", 2)
        assert "softphone_hub_degraded 1.0" in await metrics(s, n1)
        # Local delivery keeps working; other nodes' clients are offline.
        await alice.send_json({"type": "call-request", "to": "carol"})
        assert await recv(carol) == {"type": "call-request", "to": "carol", "from": "alice"}
        await alice.send_json({"type": "call-request", "to": "bob"})
        assert (await recv(alice))["data"]["code"] == "offline"

        redis_server.start()  # same port, empty: the nodes must announce their ids again

        async def recovered() -> bool:
            return all([(await health(s, h))["status"] == "ok" for h in (n1, n2)])

        await eventually(recovered, what="recovery")
        assert "softphone_hub_degraded 0.0" in await metrics(s, n1)
        await alice.send_json({"type": "call-request", "to": "bob"})
        assert await recv(bob) == {"type": "call-request", "to": "bob", "from": "alice"}
        await bob.send_json({"type": "call-reject", "to": "carol"})
        assert (await recv(carol))["from"] == "bob"


async def test_a_failed_retry_says_why(nodes: Nodes, redis_server: Any,
                                       caplog: pytest.LogCaptureFixture) -> None:
    """Redis's password changed under a running node: the node degrades (its
    subscription ended), and its retries' real cause, the authentication, is said
    at warning once; each retry failing again with it at info (-v)."""
    import redis.asyncio as aioredis

    caplog.set_level(logging.INFO, logger="softphone.hub.redis_registry")
    n1 = await nodes.add("n1")
    admin = aioredis.from_url(redis_server.url)

    def said(level: int) -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.name == "softphone.hub.redis_registry" and r.levelno == level
                and "redis-retry-failed" in r.getMessage()]

    async def auth_said_then_repeated() -> bool:
        return sum("auth" in m.lower() for m in said(logging.INFO)) >= 2
    try:
        await admin.config_set("requirepass", "changed")
        await admin.execute_command("CLIENT", "KILL", "SKIPME", "yes")  # the node's, all
        async with aiohttp.ClientSession() as s:
            async def degraded() -> bool:
                return (await health(s, n1))["status"] == "degraded"

            await eventually(degraded, what="n1 degraded")
            await eventually(auth_said_then_repeated, what="the retries' auth failure")
            assert sum("auth" in m.lower() for m in said(logging.WARNING)) == 1, \
                said(logging.WARNING)
            await admin.config_set("requirepass", "")

            async def recovered() -> bool:
                return (await health(s, n1))["status"] == "ok"

            await eventually(recovered, what="recovery")
    finally:
        await admin.config_set("requirepass", "")
        await admin.aclose()


async def test_redis_unavailable_at_start(redis_server: Any, procs: list[Proc]) -> None:
    port = cluster.free_port()
    p = Proc("serve", "--port", "0", "--redis", f"redis://127.0.0.1:{port}/0")
    procs.append(p)
    code = await p.wait(30)
    assert code == 12
    assert p.stderr.startswith("softphone: cannot reach Redis at redis://127.0.0.1:")
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def one_line(p: Proc) -> str:
    """What ``p`` wrote: exactly one line on stderr, nothing on stdout."""
    assert p.stdout == "" and "Traceback" not in p.stderr, p.describe()
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.describe()
    return lines[0]


@pytest.mark.parametrize("problem", ["database out of range", "password Redis has not",
                                     "wrong password", "no password", "wrong user"])
async def test_redis_refusing_the_url_is_a_configuration_error(
        redis_server: Any, procs: list[Proc], problem: str) -> None:
    """Redis answers but refuses what the URL asks: not an outage (12, which a service
    manager retries) but a mistake in --redis, exit 2 (the unit's
    RestartPreventExitStatus), one line, the password hidden."""
    import redis

    base = f"127.0.0.1:{redis_server.port}"
    good = f"redis://{base}/0"
    if problem in ("wrong password", "no password", "wrong user"):
        with redis.Redis(host="127.0.0.1", port=redis_server.port) as admin:
            admin.config_set("requirepass", "right-pw")
        good = f"redis://:right-pw@{base}/0"
    url, says = {
        "database out of range": (f"redis://{base}/99", "DB index is out of range"),
        "password Redis has not": (f"redis://:hunter2@{base}/0", "without any password"),
        "wrong password": (f"redis://:hunter2@{base}/0", "invalid username-password"),
        "no password": (f"redis://{base}/0", "Authentication required"),
        "wrong user": (f"redis://nobody:right-pw@{base}/0", "invalid username-password"),
    }[problem]
    p = Proc("serve", "--port", "0", "--redis", url)
    procs.append(p)
    assert await p.wait(30) == 2, p.describe()
    line = one_line(p)
    shown = url.replace(":hunter2@", ":***@").replace(":right-pw@", ":***@")
    assert line.startswith(f"softphone: Redis at {shown} refuses this URL: "), line
    assert says in line and "hunter2" not in line and "right-pw" not in line, line
    ok = Proc("serve", "--port", "0", "--redis", good)  # (the right URL: it starts)
    procs.append(ok)
    await ok.wait_for_output("listening on")


@pytest.mark.parametrize("path", ["abc", "-1", "0/1", "1x"])
async def test_a_malformed_redis_database_is_a_usage_error(
        redis_server: Any, procs: list[Proc], path: str) -> None:
    """redis-py reads redis://HOST/abc as database 0, silently: refused at once
    (exit 2, one line) before anything connects."""
    url = f"redis://127.0.0.1:{redis_server.port}/{path}"
    p = Proc("serve", "--port", "0", "--redis", url)
    procs.append(p)
    assert await p.wait(15) == 2, p.describe()
    assert one_line(p) == ("softphone: --redis/--node-id: the path of a Redis URL is a "
                           f"database number (redis://HOST:6379/0), not '/{path}'")
    with pytest.raises(ValueError, match="database number"):
        RedisRegistry(url, "n1")
    RedisRegistry(f"redis://127.0.0.1:{redis_server.port}/", "n1")  # (database 0)


# -- nodes as processes ------------------------------------------------------------------


@pytest.fixture
def node_procs(redis_server: Any, tmp_path: Path) -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for node in started:
        node.kill(signal.SIGKILL)


async def start_node(node_procs: list[Any], redis_server: Any, node_id: str,
                     log_dir: Path, port: int | None = None) -> Any:
    node = cluster.Node(redis_server.url, node_id, port=port,
                        extra=["--ice-server", "none", "--peer-grace", "2"],
                        log_path=str(log_dir / f"{node_id}.log"))
    await asyncio.get_running_loop().run_in_executor(None, node.start)
    node_procs.append(node)
    return node


async def test_dead_node_presence_vanishes_and_peer_hangs_up(
        nodes: Nodes, redis_server: Any, node_procs: list[Any], tmp_path: Path) -> None:
    n1 = await nodes.add("n1", peer_grace=1.0)
    far = await start_node(node_procs, redis_server, "far", tmp_path)
    async with aiohttp.ClientSession() as s, s.ws_connect(ws_url(n1, "bob")) as bob:
        alice = await s.ws_connect(f"{far.url}/ws?id=alice")
        await alice.send_json({"type": "call-request", "to": "bob"})
        assert (await recv(bob))["type"] == "call-request"
        await bob.send_json({"type": "call-accept", "to": "alice"})
        assert (await recv(alice))["type"] == "call-accept"

        far.kill(signal.SIGKILL)
        killed = time.monotonic()
        # bob's node tells bob his peer is gone: the node died, alice is nowhere.
        hangup = await recv(bob, within=20)
        took = time.monotonic() - killed
        assert hangup == {"type": "hangup", "to": "bob", "from": "alice",
                          "data": {"reason": "peer-disconnected"}}
        # and alice's presence is gone too: offline
        await bob.send_json({"type": "call-request", "to": "alice"})
        assert (await recv(bob))["data"]["code"] == "offline"
        await alice.close()
    print(f"peer-disconnected after the node's SIGKILL: {took:.1f} s")


async def test_a_node_whose_id_is_taken_is_degraded(
        redis_server: Any, node_procs: list[Any], tmp_path: Path) -> None:
    """A node frozen past its key's ttl finds, once thawed, another node running with
    its id: it says it is degraded (/healthz, /metrics) while that lasts; the other
    node gone, it is ours again and ok."""
    old = await start_node(node_procs, redis_server, "n1", tmp_path)
    (tmp_path / "new").mkdir()

    async def state(node: Any, s: aiohttp.ClientSession) -> tuple[str, bool]:
        async with s.get(f"{node.url}/healthz") as resp:
            status = (await resp.json())["status"]
        async with s.get(f"{node.url}/metrics") as resp:
            return status, "softphone_hub_degraded 1.0" in await resp.text()

    async with aiohttp.ClientSession() as s:
        assert await state(old, s) == ("ok", False)
        old.proc.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(4.5)  # its key (ttl 3 s) expires
            new = await start_node(node_procs, redis_server, "n1", tmp_path / "new")
        finally:
            old.proc.send_signal(signal.SIGCONT)

        async def old_degraded() -> bool:
            return await state(old, s) == ("degraded", True)

        await eventually(old_degraded, what="the old n1 degraded")
        assert await state(new, s) == ("ok", False)
        new.kill(signal.SIGTERM)  # (it releases the id: the old node takes it back)

        async def old_ok() -> bool:
            return await state(old, s) == ("ok", False)

        await eventually(old_ok, what="the old n1 ok again")


async def test_cli_call_across_nodes_carries_audio(
        redis_server: Any, node_procs: list[Any], procs: list[Proc], tmp_path: Path) -> None:
    n1 = await start_node(node_procs, redis_server, "n1", tmp_path)
    n2 = await start_node(node_procs, redis_server, "n2", tmp_path)
    rec_a, rec_b = str(tmp_path / "a.wav"), str(tmp_path / "b.wav")
    b = Proc("listen", "--as", "b", "--server", n2.url, "--auto-accept", "--once",
             "--tone", "660", "--record", rec_b)
    procs.append(b)
    await b.wait_for_output("listening as")
    a = Proc("call", "b", "--as", "a", "--server", n1.url, "--tone", "440",
             "--record", rec_a, "--duration", "2.5")
    procs.append(a)
    assert await a.wait(60) == 0, a.stderr
    assert await b.wait(30) == 0, b.stderr
    assert_wav_tone(rec_a, 660, what="a heard b")
    assert_wav_tone(rec_b, 440, what="b heard a")


async def test_node_sigkilled_mid_call_clients_move_and_audio_continues(
        redis_server: Any, node_procs: list[Any], procs: list[Proc], tmp_path: Path) -> None:
    n1 = await start_node(node_procs, redis_server, "n1", tmp_path)
    n2 = await start_node(node_procs, redis_server, "n2", tmp_path)
    # One address per side, each preferring a different node, so the two phones
    # start on different nodes. n1, the listener's node, dies mid-call; the
    # listener reconnects through its front, which now leads to n2. (The callee:
    # `softphone listen` reconnects; `softphone call` does not.)
    front_a = cluster.Front([("127.0.0.1", n2.port), ("127.0.0.1", n1.port)],
                            mode="failover")
    front_b = cluster.Front([("127.0.0.1", n1.port), ("127.0.0.1", n2.port)],
                            mode="failover")
    await front_a.start()
    await front_b.start()
    rec_a = tmp_path / "a.wav"
    try:
        b = Proc("listen", "--as", "b", "--server", front_b.url, "--auto-accept", "--once",
                 "--tone", "660")
        procs.append(b)
        await b.wait_for_output("listening as")
        a = Proc("call", "b", "--as", "a", "--server", front_a.url, "--tone", "440",
                 "--record", str(rec_a), "--duration", "7")
        procs.append(a)
        await a.wait_for_output("connected to b", within=30)
        await asyncio.sleep(1.5)
        n1.kill(signal.SIGKILL)

        async def both_on_n2() -> bool:
            async with aiohttp.ClientSession() as s, s.get(f"{n2.url}/healthz") as resp:
                return int((await resp.json())["clients"]) == 2

        await eventually(both_on_n2, within=15, what="b re-registered on n2")
        assert await a.wait(60) == 0, a.stdout + a.stderr
        assert await b.wait(30) == 0, b.stdout + b.stderr
    finally:
        await front_a.stop()
        await front_b.stop()
    assert "completed" in a.stdout
    assert_wav_tone(rec_a, 660, until=-0.25, min_seconds=5.0, max_gap=0.1,
                    what="a heard b across n1's death")


async def test_cluster_script_relayed_call_through_one_address(
        procs: list[Proc], tmp_path: Path) -> None:
    """server/cluster.py as a whole: Redis, two nodes, coturn, the front; a --relay call."""
    need_command("redis-server", "redis-server")
    need_command("turnserver", "coturn")
    rec_a, rec_b = str(tmp_path / "a.wav"), str(tmp_path / "b.wav")
    async with cluster.Cluster(2, turn=True, log_dir=str(tmp_path)) as c:
        url = c.front.url
        async with aiohttp.ClientSession() as s, \
                s.get(f"{url}/ice-servers", params={"id": "a"}) as resp:
            servers = (await resp.json())["iceServers"]
        assert [e["urls"].split(":")[0] for e in servers] == ["stun", "turn"]
        assert servers[1]["username"].endswith(":a")
        b = Proc("listen", "--as", "b", "--server", url, "--auto-accept", "--once",
                 "--tone", "660", "--record", rec_b, "--relay")
        procs.append(b)
        await b.wait_for_output("listening as")
        a = Proc("call", "b", "--as", "a", "--server", url, "--tone", "440", "--relay",
                 "--record", rec_a, "--duration", "2.5")
        procs.append(a)
        assert await a.wait(60) == 0, a.stdout + a.stderr
        assert await b.wait(30) == 0, b.stdout + b.stderr
        assert "relay/udp" in a.stdout, a.stdout
        # Its coturn takes credentials signed with the cluster's secret only, not with
        # a placeholder of server/coturn.conf (it once shipped `change-me`, and the
        # cluster's copy held both: coturn accepted either).
        assert c.turn is not None
        for transport in ("udp", "tcp"):
            assert await allocates(c.turn.listen, c.turn.port, c.turn.secret, transport)
            assert not await allocates(c.turn.listen, c.turn.port, "change-me", transport)
    assert_wav_tone(rec_a, 660, what="a heard b")
    assert_wav_tone(rec_b, 440, what="b heard a")


def test_cluster_writes_exactly_one_turn_secret() -> None:
    """cluster.py's copy of coturn.conf holds the cluster's secret and no other: coturn
    would accept credentials signed with any static-auth-secret line it reads."""
    template = "use-auth-secret\nstatic-auth-secret=change-me\n#static-auth-secret=x\n"
    written = cluster.coturn_config(template, "s3cret").splitlines()
    assert [line for line in written if line.startswith("static-auth-secret")] == \
        ["static-auth-secret=s3cret"]
    assert "use-auth-secret" in written and "#static-auth-secret=x" in written
    shipped = cluster.coturn_config((ROOT / "server" / "coturn.conf").read_text(), "s3cret")
    assert shipped.count("\nstatic-auth-secret=") == 1
    with pytest.raises(ValueError):
        cluster.coturn_config(template, "two\nlines")
