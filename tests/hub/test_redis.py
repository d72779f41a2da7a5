"""Several hub nodes on one real redis-server (softphone/redis_registry.py, server/cluster.py).

Nodes run in-process (a Hub with a RedisRegistry, short heartbeats) where the
test speaks raw WebSocket, and as ``softphone serve --redis`` subprocesses
(server/cluster.py's building blocks) where a node must die or CLI phones call.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest

from softphone.core.protocol import Message
from softphone.hub.redis_registry import (
    Bounce,
    Deliver,
    Keys,
    RedisRegistry,
    Replace,
    Watch,
    bounce_for,
    call_event,
    decode_envelope,
    encode_envelope,
    holder_value,
    parse_holder,
)
from softphone.hub.server import Hub, HubConfig

from ..conftest import need, need_command
from ..support.helpers import Proc, assert_wav_tone

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
    """In-process hub nodes sharing one Redis, with fast heartbeats."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.hubs: list[Hub] = []

    async def add(self, node_id: str, **config: Any) -> Hub:
        registry = RedisRegistry(self.url, node_id, heartbeat=0.2, ttl=0.8)
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


async def test_cross_node_offline(nodes: Nodes) -> None:
    n1, n2 = await nodes.add("n1"), await nodes.add("n2")
    async with aiohttp.ClientSession() as s, s.ws_connect(ws_url(n1, "alice")) as alice:
        await alice.send_json({"type": "call-request", "to": "nobody"})
        assert await recv(alice) == {"type": "error", "data": {
            "code": "offline", "message": "nobody is not connected", "ref": "call-request",
            "to": "nobody"}}
        bob = await s.ws_connect(ws_url(n2, "bob"))
        await alice.send_json({"type": "call-request", "to": "bob"})
        assert (await recv(bob))["from"] == "alice"
        await bob.close()
        await asyncio.sleep(0.2)
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
        assert (await health(s, n1)) == {"status": "degraded", "clients": 2}
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


async def test_redis_unavailable_at_start(redis_server: Any, procs: list[Proc]) -> None:
    port = cluster.free_port()
    p = Proc("serve", "--port", "0", "--redis", f"redis://127.0.0.1:{port}/0")
    procs.append(p)
    code = await p.wait(30)
    assert code == 12
    assert p.stderr.startswith("softphone: cannot reach Redis at redis://127.0.0.1:")
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


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
    assert_wav_tone(rec_a, 660, what="a heard b")
    assert_wav_tone(rec_b, 440, what="b heard a")
