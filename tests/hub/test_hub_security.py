"""A hub you can put on the internet: tokens, limits, origins, liveness, metrics, TURN.

Pure decisions (softphone.hub.auth, softphone.hub.limits) are unit-tested with time
passed in; the hub applying them is tested on real sockets.
"""

from __future__ import annotations

import asyncio
import base64
import heapq
import itertools
import json
import logging
import re
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import aioice.turn
import jwt
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from softphone.cli.main import main
from softphone.hub.auth import (
    AuthError,
    check_secret,
    mint_token,
    turn_credentials,
    verify_token,
)
from softphone.hub.limits import (
    CallPairs,
    ConnectionLimiter,
    Notices,
    OriginPolicy,
    PeerGone,
    TokenBucket,
)
from softphone.hub.registry import MemoryRegistry
from softphone.hub.server import Hub, HubConfig

from ..conftest import hub_url, need_command
from ..support.coturn import COTURN_CONF, StartCoturn, allocates
from ..support.helpers import Proc

SECRET = "s3cret-" + "x" * 40
OTHER = "other-" + "y" * 40


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def started(**config: Any) -> Hub:
    hub = Hub(HubConfig(ice_servers=[], **config))
    await hub.start("127.0.0.1", 0)
    return hub


async def connect(session: aiohttp.ClientSession, hub: Hub, query: str,
                  **kw: Any) -> aiohttp.ClientWebSocketResponse:
    return await session.ws_connect(f"{hub_url(hub)}/ws?{query}", **kw)


async def receive(ws: aiohttp.ClientWebSocketResponse, within: float = 3.0) -> dict[str, Any]:
    frame = await ws.receive(within)
    assert frame.type == aiohttp.WSMsgType.TEXT, frame
    obj = json.loads(frame.data)
    assert isinstance(obj, dict)
    return obj


async def closed(ws: aiohttp.ClientWebSocketResponse, within: float = 3.0) -> int | None:
    frame = await ws.receive(within)
    assert frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), frame
    return ws.close_code


async def nothing(ws: aiohttp.ClientWebSocketResponse, wait: float = 0.2) -> None:
    with pytest.raises(asyncio.TimeoutError):
        frame = await ws.receive(wait)
        raise AssertionError(f"unexpected frame {frame}")


async def eventually(check: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------ tokens ---


def test_token_round_trip_and_claims() -> None:
    now = 1_700_000_000.0
    token = mint_token(SECRET, "alice", now, 60)
    verify_token(SECRET, token, "alice", now + 59)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert claims == {"sub": "alice", "iat": int(now), "exp": int(now) + 60}


@pytest.mark.parametrize(("token", "client_id", "at", "why"), [
    (None, "alice", 0, "missing"),
    ("", "alice", 0, "missing"),
    ("not-a-token", "alice", 0, "malformed"),
    ("a.b.c", "alice", 0, "malformed"),
    ("expired", "alice", 3600, "expired"),
    ("wrong-key", "alice", 0, "not signed"),
    ("good", "bob", 0, "another id"),
    ("no-exp", "alice", 0, "'exp'"),
    ("none-alg", "alice", 0, "malformed"),
])
def test_token_refusals(token: str | None, client_id: str, at: float, why: str) -> None:
    now = 1_700_000_000.0
    tokens = {
        "good": mint_token(SECRET, "alice", now, 60),
        "expired": mint_token(SECRET, "alice", now, 60),
        "wrong-key": mint_token(OTHER, "alice", now, 60),
        "no-exp": jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"),
        "none-alg": jwt.encode({"sub": "alice", "exp": now + 60}, None, algorithm="none"),
    }
    with pytest.raises(AuthError, match=why):
        verify_token(SECRET, tokens.get(token or "", token), client_id, now + at)


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        check_secret("short")
    with pytest.raises(ValueError, match="32 bytes"):
        Hub(HubConfig(secret="short"))


def test_turn_rest_credentials_match_openssl() -> None:
    """The format coturn's use-auth-secret checks, against an independent HMAC."""
    openssl = need_command("openssl", "openssl")
    creds = turn_credentials("turn-secret", "alice", 1_700_000_000.0, 600)
    assert creds.username == "1700000600:alice"
    assert creds.expires == 1_700_000_600
    digest = subprocess.run(
        [openssl, "dgst", "-sha1", "-hmac", "turn-secret", "-binary"],
        input=creds.username.encode(), capture_output=True, check=True).stdout
    assert creds.credential == base64.b64encode(digest).decode()


# ------------------------------------------------------------ pure limits ---


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.allow(0.05)
    assert bucket.allow(0.1)  # one token back after 1/rate
    assert not bucket.allow(0.1)
    assert [bucket.allow(100.0) for _ in range(4)] == [True, True, True, False]  # capped
    assert all(TokenBucket(0, 1, 0).allow(0.0) for _ in range(1000))  # 0 = unlimited
    empty = TokenBucket(rate=10, burst=1, now=0.0)
    assert empty.delay(0.0) == 0.0 and empty.allow(0.0)
    assert empty.delay(0.0) == pytest.approx(0.1)
    assert empty.delay(0.05) == pytest.approx(0.05)
    assert empty.delay(0.2) == 0.0
    assert TokenBucket(0, 1, 0).delay(0.0) == 0.0


def test_token_bucket_exact_times() -> None:
    """Times that are exact in binary (1/rate = 0.25 s): the burst, then refusals, one
    token back exactly 1/rate after the last was taken, never more than the burst."""
    bucket = TokenBucket(rate=4, burst=3, now=10.0)
    assert [bucket.allow(10.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.delay(10.0) == 0.25
    assert not bucket.allow(10.125)  # half a token
    assert bucket.delay(10.125) == 0.125
    assert bucket.allow(10.25) and not bucket.allow(10.25)  # exactly one more
    assert not bucket.allow(10.0)  # time going back gives nothing back
    assert bucket.allow(10.5) and not bucket.allow(10.5)
    # An hour idle refills the burst, not 14,400 tokens.
    assert [bucket.allow(3610.5) for _ in range(4)] == [True, True, True, False]
    assert [bucket.allow(3611.25) for _ in range(4)] == [True, True, True, False]
    assert [bucket.allow(3611.5) for _ in range(2)] == [True, False]


def test_token_bucket_is_ready_when_delay_says() -> None:
    """Asked again exactly ``delay`` after a refusal (as the hub does, holding the
    sender until then), the bucket has the token: rounding does not refuse it."""
    for rate in (0.3, 3.0, 7.0, 10.0, 100.0):
        for i in range(1, 200):
            bucket = TokenBucket(rate=rate, burst=1, now=0.0)
            assert bucket.allow(0.0)
            now = i / 200 / rate
            assert not bucket.allow(now)
            wait = bucket.delay(now)
            assert wait > 0
            assert bucket.delay(now + wait) == 0.0 and bucket.allow(now + wait)
            assert not bucket.allow(now + wait)


def test_connection_limiter() -> None:
    lim = ConnectionLimiter(max_total=3, max_per_address=2)
    assert lim.open("a") is None and lim.open("a") is None
    assert lim.open("a") is not None and "address" in lim.open("a").value  # type: ignore[union-attr]
    assert lim.open("b") is None
    assert lim.open("c") is not None and "full" in lim.open("c").value  # type: ignore[union-attr]
    lim.close("a")
    assert lim.open("c") is None
    lim.close("zzz")  # never opened: ignored
    assert lim.total == 3
    unlimited = ConnectionLimiter()
    assert all(unlimited.open("x") is None for _ in range(1000))


@pytest.mark.parametrize(("origin", "allowed", "ok"), [
    (None, [], True),  # not a browser
    ("http://hub.example:8080", [], True),  # the hub's own pages
    ("HTTP://Hub.Example:8080", [], True),
    ("http://evil.example", [], False),
    ("http://hub.example:8081", [], False),
    ("https://hub.example:8080", [], False),
    ("null", [], False),
    ("https://app.example", ["https://app.example"], True),
    ("https://app.example:443", ["https://app.example"], True),
    ("https://app.example", ["*"], True),
    ("https://other.example", ["https://app.example"], False),
])
def test_origin_policy(origin: str | None, allowed: list[str], ok: bool) -> None:
    policy = OriginPolicy.from_list(allowed)
    assert policy.allows(origin, "http://hub.example:8080") is ok


@pytest.mark.parametrize(("host", "trusted"), [
    ("127.0.0.1:21001", True), ("127.0.0.1", True), ("10.1.2.3:80", True),
    ("[::1]:21001", True), ("[::1]", True), ("::1", True), ("[2001:db8::1]:8080", True),
    ("localhost:21001", True), ("LOCALHOST", True), ("phone.localhost:8080", True),
    ("myhost:8080", True), ("MyHost.lan.", True),  # the machine's own names
    ("phone.example.com", True), ("phone.example.com:8443", True),  # declared
    ("evil.example:21001", False), ("evil.example", False), ("localhost.evil.example", False),
    ("127.0.0.1.evil.example", False), ("example.com", False), ("", False),
    ("x:notaport", False), ("a b", False), ("user@127.0.0.1", False), ("127.0.0.1/x", False),
])
def test_origin_policy_trusts_only_hosts_that_cannot_be_rebound(host: str, trusted: bool) -> None:
    policy = OriginPolicy.from_list(["https://phone.example.com"], ["myhost", "myhost.lan"])
    assert policy.trusts_host(host) is trusted
    assert policy.serves_pages_at(host) is trusted
    if host and host != "::1":  # (no origin without brackets)
        assert policy.allows_at(f"http://{host}", host, False) is trusted


def test_origin_policy_refuses_a_rebound_name() -> None:
    """DNS rebinding: a page of evil.example, whose DNS now says 127.0.0.1, is not
    the hub's own page even though its Host header says evil.example."""
    policy = OriginPolicy.from_list([])
    rebound = "http://evil.example:21001"
    assert not policy.allows_at(rebound, "evil.example:21001", False)
    assert not policy.allows_at("https://evil.example:21001", "evil.example:21001", False)
    assert not policy.allows_at("https://evil.example", "evil.example", True)
    assert policy.allows_at("http://127.0.0.1:21001", "127.0.0.1:21001", False)
    assert policy.allows_at("https://127.0.0.1:21001", "127.0.0.1:21001", False)  # TLS proxy
    assert policy.allows_at("http://localhost:21001", "localhost:21001", False)
    assert policy.allows_at(None, "evil.example:21001", False)  # not a browser
    assert OriginPolicy.from_list([rebound]).allows_at(rebound, "evil.example:21001", False)
    assert OriginPolicy.from_list(["*"]).allows_at(rebound, "evil.example:21001", False)
    assert OriginPolicy.from_list(["*"]).serves_pages_at("evil.example:21001")
    declared = OriginPolicy.from_list(["https://phone.example.com"])
    assert declared.allows_at("https://phone.example.com", "phone.example.com", False)
    assert declared.allows_at("http://phone.example.com:8080", "phone.example.com:8080", False)
    assert not declared.allows_at(rebound, "evil.example:21001", False)


def test_origin_refusal_says_what_to_add() -> None:
    policy = OriginPolicy.from_list([])
    assert policy.refusal("https://Phone.Example.com", "phone.example.com", False) == (
        "origin https://phone.example.com refused: a page served under a name needs "
        "--allow-origin https://phone.example.com (the Host header gives the hub's own "
        "origin only as an IP address, localhost or this machine's name: DNS rebinding)")
    assert policy.refusal("https://app.example", "127.0.0.1:8080", False) == (
        "origin https://app.example refused: not the hub's own origin; a page there needs "
        "--allow-origin https://app.example")
    assert "not an origin" in policy.refusal("null", "127.0.0.1:8080", False)
    assert policy.own_origin("Phone.Example.com:443", True) == "https://phone.example.com"


def test_notices_are_rate_limited() -> None:
    notices = Notices(interval=60.0, rate=0.1, burst=2.0, max_keys=3)
    assert notices.say("a", 0.0)
    assert not notices.say("a", 1.0) and not notices.say("a", 59.9)  # a page retrying
    assert notices.say("b", 1.0)
    assert not notices.say("c", 1.0)  # a flood of origins: at most `rate` a second
    assert notices.say("c", 11.0)
    assert not notices.say("d", 30.0)  # keys remembered: at most max_keys
    assert notices.say("a", 60.0)  # once a minute each
    assert notices.say("d", 61.5)  # (b's and c's minute is over: forgotten)


def test_origin_policy_refuses_non_origins() -> None:
    with pytest.raises(ValueError, match="not an origin"):
        OriginPolicy.from_list(["app.example"])


def test_call_pairs() -> None:
    pairs = CallPairs(grace=3.0)
    assert not pairs.relayed("call-accept", "b", "a")  # nobody asked: no pair
    pairs.relayed("call-request", "a", "b")
    assert pairs.relayed("call-accept", "b", "a")
    assert pairs.peer_of("a") == "b" and pairs.peer_of("b") == "a" and len(pairs) == 1
    # b leaves and comes back in time: nothing to tell.
    assert pairs.disconnected("b", 10.0) == 13.0
    pairs.connected("b")
    assert pairs.due(20.0) == [] and len(pairs) == 1
    # b leaves for good.
    assert pairs.disconnected("b", 30.0) == 33.0
    assert pairs.next_deadline() == 33.0
    assert pairs.due(32.9) == []
    assert pairs.due(33.0) == [PeerGone("b", "a")]
    assert len(pairs) == 0 and pairs.next_deadline() is None and pairs.due(99.0) == []
    # A hangup ends the call: leaving afterwards tells nobody.
    pairs.relayed("call-request", "a", "b")
    pairs.relayed("call-accept", "b", "a")
    assert pairs.relayed("hangup", "a", "b") and len(pairs) == 0
    assert pairs.disconnected("a", 0.0) is None
    # A reject ends a request; a later accept pairs nobody.
    pairs.relayed("call-request", "a", "b")
    pairs.relayed("call-reject", "b", "a")
    assert not pairs.relayed("call-accept", "b", "a")
    # Both sides gone: one notice, to a peer that is gone too (delivery will fail).
    pairs.relayed("call-request", "a", "b")
    pairs.relayed("call-accept", "b", "a")
    pairs.disconnected("a", 0.0)
    pairs.disconnected("b", 1.0)
    assert pairs.due(10.0) == [PeerGone("a", "b")]
    assert pairs.due(10.0) == []


def test_call_pairs_of_a_bot_in_many_calls() -> None:
    """A bot answering several callers (``--max-calls``): each call is its own pair."""
    pairs = CallPairs(grace=4.0)
    for caller in ("c1", "c2", "c3"):
        pairs.relayed("call-request", caller, "bot")
        assert pairs.relayed("call-accept", "bot", caller)
    assert len(pairs) == 3 and pairs.peers_of("bot") == {"c1", "c2", "c3"}
    # One caller hangs up; another is killed (its connection closed): the bot hears of it.
    assert pairs.relayed("hangup", "c1", "bot") and len(pairs) == 2
    assert pairs.disconnected("c2", 10.0) == 14.0
    assert pairs.due(14.0) == [PeerGone("c2", "bot")]
    assert pairs.peers_of("bot") == {"c3"} and len(pairs) == 1
    # The bot itself goes: every caller it still has is told.
    pairs.relayed("call-request", "c4", "bot")
    pairs.relayed("call-accept", "bot", "c4")
    pairs.disconnected("bot", 20.0)
    assert pairs.due(24.0) == [PeerGone("bot", "c3"), PeerGone("bot", "c4")]
    assert len(pairs) == 0 and pairs.next_deadline() is None


def test_call_pairs_cannot_be_hijacked() -> None:
    pairs = CallPairs(grace=1.0)
    pairs.relayed("call-request", "a", "b")
    pairs.relayed("call-accept", "b", "a")
    assert not pairs.relayed("call-accept", "mallory", "a")  # a never called mallory
    assert not pairs.relayed("hangup", "mallory", "a")
    assert pairs.peer_of("a") == "b"


# ------------------------------------------------------- auth on the wire ---


async def test_auth_matrix_live(session: aiohttp.ClientSession) -> None:
    hub = await started(secret=SECRET)
    now = time.time()
    cases = {
        "missing": "id=alice",
        "malformed": "id=alice&token=garbage",
        "expired": f"id=alice&token={mint_token(SECRET, 'alice', now - 7200, 60)}",
        "wrongly signed": f"id=alice&token={mint_token(OTHER, 'alice', now, 60)}",
        "other id": f"id=alice&token={mint_token(SECRET, 'bob', now, 60)}",
    }
    try:
        for what, query in cases.items():
            ws = await connect(session, hub, query)
            reply = await receive(ws)
            assert reply["type"] == "error", what
            assert reply["data"]["code"] == "unauthorized", what
            assert reply["data"]["message"].startswith("unauthorized: "), what
            assert await closed(ws) == 1008, what
            assert hub.registry.local_count() == 0
        good = await connect(session, hub, f"id=alice&token={mint_token(SECRET, 'alice', now)}")
        bob = await connect(session, hub, f"id=bob&token={mint_token(SECRET, 'bob', now)}")
        await bob.send_json({"type": "call-request", "to": "alice"})
        assert await receive(good) == {"type": "call-request", "to": "alice", "from": "bob"}
    finally:
        await hub.stop()


async def test_unauthenticated_newcomer_does_not_replace(session: aiohttp.ClientSession
                                                         ) -> None:
    hub = await started(secret=SECRET)
    try:
        token = mint_token(SECRET, "alice", time.time())
        old = await connect(session, hub, f"id=alice&token={token}")
        thief = await connect(session, hub, "id=alice&token=forged")
        assert (await receive(thief))["data"]["code"] == "unauthorized"
        await nothing(old)
        new = await connect(session, hub, f"id=alice&token={token}")
        assert (await receive(old))["data"]["code"] == "replaced"
        assert await closed(old) == 1008
        await asyncio.sleep(0.1)
        assert hub.registry.local_count() == 1
        bob = await connect(session, hub, f"id=bob&token={mint_token(SECRET, 'bob', time.time())}")
        await bob.send_json({"type": "hangup", "to": "alice"})
        assert (await receive(new))["from"] == "bob"
    finally:
        await hub.stop()


async def test_open_hub_warns_beyond_loopback(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "softphone.hub.server")
    hub = Hub(HubConfig(ice_servers=[]))
    await hub.start("0.0.0.0", 0)
    await hub.stop()
    said = [r.getMessage() for r in caplog.records if "hub is open" in r.getMessage()]
    assert len(said) == 1 and "TURN" not in said[0], said
    caplog.clear()
    # (with TURN, the warning says that anyone gets its credentials too)
    hub = Hub(HubConfig(ice_servers=[], turn_urls=["turn:127.0.0.1:3478"],
                        turn_secret="t" * 32))
    await hub.start("0.0.0.0", 0)
    await hub.stop()
    assert any(r.getMessage().endswith("can take any id and get its TURN credentials")
               for r in caplog.records), caplog.records
    caplog.clear()
    for config in (HubConfig(ice_servers=[]), HubConfig(ice_servers=[], secret=SECRET)):
        hub = Hub(config)
        await hub.start("127.0.0.1" if config.secret is None else "0.0.0.0", 0)
        await hub.stop()
    assert not any("hub is open" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------- limits ---


class ManualClock:
    """A clock the test moves (HubConfig.clock): the hub's rate limit reads the time
    from it, and a sender it holds is read again only when :meth:`advance` gets there."""

    def __init__(self, now: float) -> None:
        self.now = now
        self._timers: list[tuple[float, int, Callable[[], object]]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], object]) -> None:
        heapq.heappush(self._timers, (self.now + delay, next(self._order), callback))

    def advance(self, seconds: float) -> None:
        """Move on; what is due runs in the event loop, as a loop's timer would."""
        self.now += seconds
        loop = asyncio.get_running_loop()
        while self._timers and self._timers[0][0] <= self.now:
            loop.call_soon(heapq.heappop(self._timers)[2])


async def test_rate_limit_answers_and_keeps_the_connection(
        session: aiohttp.ClientSession) -> None:
    """Past the burst, messages are dropped with one notice a second, and the hub stops
    reading the sender until a token is back (backpressure); the connection is kept.

    The hub's rate limit runs on a clock the test moves (exact in binary: a token every
    0.25 s), so what passes, what is dropped and how many notices are sent are exact
    however fast the machine is."""
    clock = ManualClock(1000.0)
    hub = await started(rate=4, burst=4, clock=clock)

    def dropped() -> float | None:
        return hub.metrics.registry.get_sample_value("softphone_hub_rate_limited_total")

    async def passed() -> int:
        n = (await receive(b))["data"]["n"]
        assert isinstance(n, int)
        return n

    try:
        a, b = await connect(session, hub, "id=a"), await connect(session, hub, "id=b")
        for i in range(20):
            await a.send_json({"type": "candidate", "to": "b", "data": {"n": i}})
        assert [await passed() for _ in range(4)] == [0, 1, 2, 3]  # the burst
        await eventually(lambda: dropped() == 1)  # 4, and the hub holds a
        await nothing(b, 0.5)  # the clock stands still: nothing more, however long
        # A token every 0.25 s: one message passes, the next is dropped.
        for step in range(1, 9):
            clock.advance(0.25)
            assert await passed() == 3 + 2 * step  # 5, 7, ... 19
            if step < 8:
                await eventually(lambda step=step: dropped() == 1 + step)  # 6, 8, ... 18
        assert dropped() == 8
        # Idle for 10 s: the burst is back, and no more than it.
        clock.advance(10.0)
        for i in range(20, 25):
            await a.send_json({"type": "candidate", "to": "b", "data": {"n": i}})
        assert [await passed() for _ in range(4)] == [20, 21, 22, 23]
        await eventually(lambda: dropped() == 9)  # 24
        clock.advance(0.25)  # one token: a is read again, and answered in order
        await a.send_json({"type": "hangup", "to": "nobody"})
        # The notices: at 1000.0, at 1001.0 (message 12), at 1012.0 (message 24);
        # none for the 6 dropped less than a second after one. Then the answer.
        for _ in range(3):
            notice = await receive(a)
            assert notice["data"]["code"] == "rate-limited", notice
            assert "more than 4 messages a second" in notice["data"]["message"]
        assert (await receive(a))["data"]["code"] == "offline"
        clock.advance(0.25)
        await a.send_json({"type": "hangup", "to": "b"})
        assert (await receive(b))["type"] == "hangup"  # b got nothing else in between
        assert not a.closed and not b.closed
        metrics = await (await session.get(f"{hub_url(hub)}/metrics")).text()
        assert "softphone_hub_rate_limited_total 9.0" in metrics
    finally:
        await hub.stop()


async def test_too_large_counts_bytes_not_characters(session: aiohttp.ClientSession) -> None:
    hub = await started(max_message_bytes=1000)
    try:
        a, b = await connect(session, hub, "id=a"), await connect(session, hub, "id=b")
        await a.send_json({"type": "offer", "to": "b", "data": {"sdp": "é" * 600}})
        assert (await receive(a))["data"]["code"] == "too-large"
        await a.send_json({"type": "offer", "to": "b", "data": {"sdp": "e" * 600}})
        assert (await receive(b))["type"] == "offer"
    finally:
        await hub.stop()


async def test_connections_per_address_and_total(session: aiohttp.ClientSession) -> None:
    hub = await started(max_per_address=2)
    try:
        first = await connect(session, hub, "id=c1")
        kept = await connect(session, hub, "id=c2")  # (a dropped reference would close it)
        third = await connect(session, hub, "id=c3")
        reply = await receive(third)
        assert reply["data"]["code"] == "too-many-connections"
        assert "address" in reply["data"]["message"]
        assert await closed(third) == 1013
        await first.close()
        await eventually(lambda: hub.limiter.total == 1)
        again = await connect(session, hub, "id=c3")
        await nothing(again)
        assert hub.registry.local_count() == 2 and not kept.closed
    finally:
        await hub.stop()
    hub = await started(max_connections=1)
    try:
        kept = await connect(session, hub, "id=c1")
        second = await connect(session, hub, "id=c2")
        reply = await receive(second)
        assert reply["data"]["code"] == "too-many-connections"
        assert "full" in reply["data"]["message"]
        assert not kept.closed
    finally:
        await hub.stop()


def raw_client(hub: Hub, client_id: str) -> socket.socket:
    """A WebSocket client that upgrades, then never reads nor answers anything."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", hub.port))
    sock.sendall(f"GET /ws?id={client_id} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    return sock


async def test_slow_reader_cannot_grow_the_hub(session: aiohttp.ClientSession) -> None:
    """A client that never reads is dropped once its bounded send queue is full."""
    hub = await started(send_queue_bytes=256 * 1024, rate=0)
    try:
        slow = raw_client(hub, "slow")
        await eventually(lambda: hub.registry.local_count() == 1)
        a = await connect(session, hub, "id=a")
        blob = {"sdp": "x" * 30_000}
        peak = 0
        outcome = None
        for _ in range(2000):
            await a.send_json({"type": "offer", "to": "slow", "data": blob})
            conn = next((c for c in hub._connections if c.client_id == "slow"), None)
            if conn is not None:
                peak = max(peak, conn.queued)
            try:
                frame = await a.receive(0.001)
            except TimeoutError:
                continue
            outcome = json.loads(frame.data)
            break
        assert outcome is not None and outcome["data"]["code"] == "offline", outcome
        assert 0 < peak <= 256 * 1024  # then the next frame went over: dropped
        await eventually(lambda: hub.registry.local_count() == 1)  # only a is left
        slow.close()
    finally:
        await hub.stop()


# ---------------------------------------------------------------- origins ---


async def test_origin_allowlist(session: aiohttp.ClientSession) -> None:
    hub = await started(allow_origins=["https://app.example"])
    try:
        own = f"http://127.0.0.1:{hub.port}"
        for origin, ok in [(None, True), (own, True), ("https://app.example", True),
                           ("https://evil.example", False), ("null", False)]:
            headers = {"Origin": origin} if origin else {}
            if ok:
                ws = await connect(session, hub, "id=x", headers=headers)
                await nothing(ws, 0.05)
                await ws.close()
            else:
                with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                    await connect(session, hub, "id=x", headers=headers)
                assert exc.value.status == 403
        metrics = await (await session.get(f"{hub_url(hub)}/metrics")).text()
        assert 'softphone_hub_connections_refused_total{reason="origin"} 2.0' in metrics
    finally:
        await hub.stop()


async def test_dns_rebinding_gets_nothing(session: aiohttp.ClientSession,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """A page of evil.example whose DNS rebinds to the hub's 127.0.0.1 sends Origin and
    Host evil.example:PORT: no WebSocket (nobody replaced), no CORS, no phone page;
    one warning that says what to add. IP addresses, localhost, the machine's name and
    a declared name are the hub's own."""
    caplog.set_level(logging.DEBUG, "softphone.hub.server")
    hub = await started(allow_origins=["https://phone.example.com"])
    try:
        port = hub.port
        alice = await connect(session, hub, "id=alice")
        rebound = f"evil.example:{port}"
        for _ in range(3):  # a page retrying
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await connect(session, hub, "id=alice", headers={
                    "Origin": f"http://{rebound}", "Host": rebound})
            assert exc.value.status == 403
        await nothing(alice, 0.05)  # not replaced
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                  and "reason=origin" in r.getMessage()]
        assert warned == [f"refused reason=origin remote=127.0.0.1: origin http://{rebound} "
                          f"refused: a page served under a name needs --allow-origin "
                          f"http://{rebound} (the Host header gives the hub's own origin only "
                          f"as an IP address, localhost or this machine's name: DNS "
                          f"rebinding)"], warned
        for path in ("/metrics", "/ice-servers", "/healthz"):
            got = await session.get(f"{hub_url(hub)}{path}", headers={
                "Origin": f"http://{rebound}", "Host": rebound})
            assert got.status == 200 and "Access-Control-Allow-Origin" not in got.headers
        page = await session.get(f"{hub_url(hub)}/", headers={"Host": rebound})
        assert page.status == 403
        assert f"--allow-origin http://{rebound}" in await page.text()
        own = [f"127.0.0.1:{port}", f"localhost:{port}", f"phone.example.com:{port}",
               f"{socket.gethostname()}:{port}"]
        for i, host in enumerate(own):
            ws = await connect(session, hub, f"id=u{i}", headers={
                "Origin": f"http://{host}", "Host": host})
            await nothing(ws, 0.01)
            await ws.close()
            got = await session.get(f"{hub_url(hub)}/metrics", headers={
                "Origin": f"http://{host}", "Host": host})
            assert got.headers.get("Access-Control-Allow-Origin") == f"http://{host}", host
            assert (await session.get(f"{hub_url(hub)}/", headers={"Host": host})).status \
                == 200, host
        await alice.close()
    finally:
        await hub.stop()


# --------------------------------------------------------------- liveness ---


async def test_heartbeat_drops_a_dead_client(session: aiohttp.ClientSession) -> None:
    hub = await started(heartbeat=0.3)
    try:
        # Pings go unanswered, as from a machine that vanished without closing.
        dead = raw_client(hub, "dead")
        alive = await connect(session, hub, "id=alive")
        inbox: asyncio.Queue[Any] = asyncio.Queue()

        async def read() -> None:  # receive() is what answers the hub's pings
            async for frame in alive:
                await inbox.put(json.loads(frame.data))

        reader = asyncio.create_task(read())
        await eventually(lambda: hub.registry.local_count() == 2)
        await eventually(lambda: hub.registry.local_count() == 1, within=5)
        assert isinstance(hub.registry, MemoryRegistry)
        assert hub.registry.holder("dead") is None
        dead.close()
        await asyncio.sleep(1.0)  # several more heartbeats: the live client stays
        await alive.send_json({"type": "hangup", "to": "dead"})
        assert (await asyncio.wait_for(inbox.get(), 3))["data"]["code"] == "offline"
        reader.cancel()
    finally:
        await hub.stop()


async def start_call(session: aiohttp.ClientSession, hub: Hub
                     ) -> tuple[aiohttp.ClientWebSocketResponse, aiohttp.ClientWebSocketResponse]:
    a, b = await connect(session, hub, "id=a"), await connect(session, hub, "id=b")
    await a.send_json({"type": "call-request", "to": "b"})
    await receive(b)
    await b.send_json({"type": "call-accept", "to": "a", "data": {"media": "ready"}})
    await receive(a)
    return a, b


async def test_peer_disconnected(session: aiohttp.ClientSession) -> None:
    hub = await started(peer_grace=0.3)
    try:
        a, b = await start_call(session, hub)
        assert len(hub.pairs) == 1
        await b.close()
        got = await receive(a, within=3)
        assert got == {"type": "hangup", "to": "a", "from": "b",
                       "data": {"reason": "peer-disconnected"}}
        assert len(hub.pairs) == 0
    finally:
        await hub.stop()


async def test_peer_back_within_grace_keeps_the_call(session: aiohttp.ClientSession) -> None:
    hub = await started(peer_grace=0.6)
    try:
        a, b = await start_call(session, hub)
        await b.close()
        await asyncio.sleep(0.1)
        b2 = await connect(session, hub, "id=b")
        await nothing(a, 1.0)
        assert len(hub.pairs) == 1
        await b2.send_json({"type": "hangup", "to": "a"})
        assert (await receive(a))["type"] == "hangup"
        await b2.close()
        await nothing(a, 1.0)  # the call was over: nobody to tell
    finally:
        await hub.stop()


# ------------------------------------------------------------ observability ---


async def test_metrics_and_logs_without_secrets(session: aiohttp.ClientSession,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    hub = await started(secret=SECRET)
    try:
        ta, tb = mint_token(SECRET, "a", time.time()), mint_token(SECRET, "b", time.time())
        a = await connect(session, hub, f"id=a&token={ta}")
        b = await connect(session, hub, f"id=b&token={tb}")
        await a.send_json({"type": "call-request", "to": "b"})
        await receive(b)
        await b.send_json({"type": "call-accept", "to": "a"})
        await receive(a)
        sdp = "v=0\r\no=- SECRET-SDP-BODY 2 IN IP4 127.0.0.1\r\n"
        await a.send_json({"type": "offer", "to": "b", "data": {"type": "offer", "sdp": sdp}})
        await receive(b)
        await a.send_json({"type": "offer", "to": "nobody"})
        await receive(a)
        refused = await connect(session, hub, "id=c&token=bad")
        await receive(refused)
        await closed(refused)
        resp = await session.get(f"{hub_url(hub)}/metrics")
        assert resp.status == 200 and resp.content_type == "text/plain"
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(await resp.text()):
            for s in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                values[f"{s.name}{{{labels}}}"] = s.value
        assert values["softphone_hub_connections{}"] == 2
        assert values["softphone_hub_messages_total{type=call-request}"] == 1
        assert values["softphone_hub_messages_total{type=offer}"] == 1
        assert values["softphone_hub_errors_total{code=offline}"] == 1
        assert values["softphone_hub_errors_total{code=unauthorized}"] == 1
        assert values["softphone_hub_calls{}"] == 1
        assert values["softphone_hub_calls_started_total{}"] == 1
    finally:
        await hub.stop()
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("softphone"))
    assert "connect id=a" in text and "call-start" in text
    for secret in (SECRET, ta, tb, "SECRET-SDP-BODY", "v=0"):
        assert secret not in text


# ------------------------------------------------------------------- TURN ---


async def test_ice_servers_hand_out_turn_credentials(session: aiohttp.ClientSession) -> None:
    hub = await started(turn_urls=["turn:192.0.2.1:3478", "turn:192.0.2.1:3478?transport=tcp"],
                        turn_secret="coturn-secret", turn_ttl=600)
    try:
        body = await (await session.get(f"{hub_url(hub)}/ice-servers?id=alice")).json()
        turn = body["iceServers"]
        assert [s["urls"] for s in turn] == ["turn:192.0.2.1:3478",
                                             "turn:192.0.2.1:3478?transport=tcp"]
        expires, who = turn[0]["username"].split(":")
        assert who == "alice" and 590 <= int(expires) - time.time() <= 601
        assert turn[0]["credential"] == turn_credentials(
            "coturn-secret", "alice", int(expires) - 600, 600).credential
    finally:
        await hub.stop()
    hub = await started(secret=SECRET, turn_urls=["turn:192.0.2.1:3478"],
                        turn_secret="coturn-secret")
    try:
        refused = await session.get(f"{hub_url(hub)}/ice-servers?id=alice")
        assert refused.status == 401
        assert (await refused.json())["error"] == "unauthorized"
        token = mint_token(SECRET, "alice", time.time())
        ok = await session.get(f"{hub_url(hub)}/ice-servers?id=alice",
                               headers={"Authorization": f"Bearer {token}"})
        assert ok.status == 200
        assert (await ok.json())["iceServers"][0]["username"].endswith(":alice")
    finally:
        await hub.stop()


STATIC_TURN = [{"urls": "stun:192.0.2.1:3478"},
               {"urls": "turn:192.0.2.1:3478", "username": "staticuser",
                "credential": "static-turn-password"}]


async def test_static_turn_credentials_need_a_token(session: aiohttp.ClientSession) -> None:
    """On a hub with tokens, /ice-servers hands static TURN credentials (--ice-username,
    --ice-credential) only to a valid token, as REST ones: 401 without one. STUN alone
    is still for anyone; the WebSocket's ?ice=1 needs the token as the sign-in does."""
    hub = Hub(HubConfig(ice_servers=STATIC_TURN, secret=SECRET))
    await hub.start("127.0.0.1", 0)
    now = time.time()
    try:
        for query in ("id=alice", "id=alice&token=garbage",
                      f"id=alice&token={mint_token(OTHER, 'alice', now)}",
                      f"id=alice&token={mint_token(SECRET, 'bob', now)}"):
            refused = await session.get(f"{hub_url(hub)}/ice-servers?{query}")
            text = await refused.text()
            assert refused.status == 401, (query, text)
            assert json.loads(text)["error"] == "unauthorized"
            assert "static-turn-password" not in text and "staticuser" not in text
        token = mint_token(SECRET, "alice", now)
        ok = await session.get(f"{hub_url(hub)}/ice-servers?id=alice",
                               headers={"Authorization": f"Bearer {token}"})
        assert ok.status == 200 and (await ok.json())["iceServers"] == STATIC_TURN
        # The WebSocket: no token, no ICE servers (refused); with one, the list first.
        ws = await connect(session, hub, "id=alice&ice=1")
        reply = await receive(ws)
        assert reply["type"] == "error" and reply["data"]["code"] == "unauthorized"
        assert "static-turn-password" not in json.dumps(reply)
        assert await closed(ws) == 1008
        ws = await connect(session, hub, f"id=alice&ice=1&token={token}")
        first = await receive(ws)
        assert first["data"]["iceServers"] == STATIC_TURN
        await ws.close()
    finally:
        await hub.stop()
    hub = Hub(HubConfig(ice_servers=STATIC_TURN[:1], secret=SECRET))  # STUN only
    await hub.start("127.0.0.1", 0)
    try:
        anyone = await session.get(f"{hub_url(hub)}/ice-servers")
        assert anyone.status == 200 and (await anyone.json())["iceServers"] == STATIC_TURN[:1]
    finally:
        await hub.stop()


async def test_static_turn_credentials_of_serve_need_a_token(procs: list[Proc],
                                                             tmp_path: Path) -> None:
    """The operator's command line: serve --secret-file with --ice-credential-file."""
    (tmp_path / "secret").write_text(SECRET + "\n")
    (tmp_path / "turn-secret").write_text("static-turn-password\n")
    for name in ("secret", "turn-secret"):
        (tmp_path / name).chmod(0o600)
    hub = Proc("serve", "--port", "0", "--secret-file", str(tmp_path / "secret"),
               "--ice-server", "turn:127.0.0.1:23478", "--ice-username", "staticuser",
               "--ice-credential-file", str(tmp_path / "turn-secret"))
    procs.append(hub)
    await hub.wait_for_output("listening on")
    port = re.search(r"listening on http://127\.0\.0\.1:(\d+)", hub.stdout)
    assert port is not None, hub.stdout
    url = f"http://127.0.0.1:{port[1]}/ice-servers"
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            text = await resp.text()
            assert resp.status == 401 and "static-turn-password" not in text, text
        token = mint_token(SECRET, "alice", time.time())
        async with session.get(f"{url}?id=alice&token={token}") as resp:
            assert resp.status == 200
            assert (await resp.json())["iceServers"][0]["credential"] == "static-turn-password"


async def test_ice_servers_without_an_id_say_so(session: aiohttp.ClientSession) -> None:
    """A valid token for alice but no ?id=: "no id", not "token is for another id"."""
    hub = await started(secret=SECRET, turn_urls=["turn:192.0.2.1:3478"],
                        turn_secret="coturn-secret")
    try:
        token = mint_token(SECRET, "alice", time.time())
        for query in (f"token={token}", f"id=&token={token}"):
            resp = await session.get(f"{hub_url(hub)}/ice-servers?{query}")
            body = await resp.json()
            assert resp.status == 401
            assert body == {"error": "unauthorized",
                            "message": "no id: add ?id=<the id the token is for>"}, body
        no_token = await (await session.get(f"{hub_url(hub)}/ice-servers")).json()
        assert no_token["message"].startswith("missing token"), no_token
    finally:
        await hub.stop()


# -------------------------------------------------------------------- CLI ---


def test_token_command() -> None:
    result = CliRunner().invoke(main, ["token", "--as", "alice", "--secret", SECRET,
                                       "--ttl", "30m"])
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    verify_token(SECRET, token, "alice", time.time() + 29 * 60)
    with pytest.raises(AuthError, match="expired"):
        verify_token(SECRET, token, "alice", time.time() + 31 * 60 + 10)


@pytest.mark.parametrize(("args", "text"), [
    (["token", "--as", "alice", "--secret", "short"], "32 bytes"),
    (["token", "--as", "alice", "--secret", SECRET, "--ttl", "soon"], "30m"),
    (["token", "--as", "bad id", "--secret", SECRET], "characters"),
    (["serve", "--secret", "short"], "32 bytes"),
    (["serve", "--turn", "turn:h:3478"], "--turn-secret"),
    (["serve", "--turn", "stun:h:3478", "--turn-secret", "x"], "turn: or turns:"),
    (["serve", "--allow-origin", "app.example"], "not an origin"),
    (["serve", "--rate", "-1"], "0 or more"),
])
def test_cli_refuses_bad_security_options(args: list[str], text: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert text in result.output
    assert "Traceback" not in result.output


def test_secrets_on_the_command_line_are_warned_about() -> None:
    """serve --help says each secret given on the command line shows in the process
    list, and names the file option; server/README.md's hub commands use the files
    (its lab section shows the lab's own command line)."""
    help_text = " ".join(CliRunner().invoke(main, ["serve", "--help"]).output.split())
    options = re.split(r" (?=--[a-z-]+ [A-Z]+ )", help_text)
    for flag, alternative in (("--secret", "--secret-file"),
                              ("--turn-secret", "--turn-secret-file"),
                              ("--ice-credential", "--ice-credential-file")):
        text = next(o for o in options if o.startswith(f"{flag} "))
        text = text.replace("- ", "-")  # (click wraps after a hyphen)
        assert "process list" in text and alternative in text, text
    readme = (Path(__file__).resolve().parents[2] / "server" / "README.md").read_text()
    commands = "".join(re.findall(r"```sh\n(.*?)```", readme.split(
        "## How the lab uses these files")[0], re.DOTALL))
    assert "--turn-secret-file" in commands and "--ice-credential-file" in commands
    assert not re.search(r"--turn-secret [^-\s]|--ice-credential [^-\s]", commands)


async def test_cli_with_tokens(procs: list[Proc]) -> None:
    """call/listen use --token / SOFTPHONE_TOKEN; a refused token exits 11 with one line."""
    hub = await started(secret=SECRET)
    url = hub_url(hub)
    try:
        bad = Proc("listen", "--as", "b", "--server", url, "--auto-accept",
                   env={"SOFTPHONE_TOKEN": mint_token(SECRET, "someone-else", time.time())})
        procs.append(bad)
        assert await bad.wait(20) == 11
        assert "the hub refused us: unauthorized: token is for another id" in bad.stdout
        assert "Traceback" not in bad.stderr
        # (said once, by the CLI: not also as the library's warnings)
        assert "WARNING" not in bad.stderr and "hub error" not in bad.stderr, bad.stderr
        callee = Proc("listen", "--as", "b", "--server", url, "--auto-accept", "--once",
                      "--token", mint_token(SECRET, "b", time.time()))
        procs.append(callee)
        await callee.wait_for_output("listening as")
        expired = Proc("call", "b", "--as", "a", "--server", url, "--token",
                       mint_token(SECRET, "a", time.time() - 7200, 60))
        procs.append(expired)
        assert await expired.wait(20) == 11
        assert "the hub refused us: unauthorized: token expired" in expired.stdout
        caller = Proc("call", "b", "--as", "a", "--server", url, "--duration", "0.5",
                      env={"SOFTPHONE_TOKEN": mint_token(SECRET, "a", time.time())})
        procs.append(caller)
        assert await caller.wait(30) == 0, caller.stdout + caller.stderr
        assert await callee.wait(10) == 0
    finally:
        await hub.stop()


async def test_turn_credentials_work_with_real_coturn(
        coturn: StartCoturn, session: aiohttp.ClientSession) -> None:
    """/ice-servers' TURN REST credentials get a relay allocation from coturn
    (use-auth-secret); the same credentials signed with another secret are refused."""
    turn = coturn()
    hub = await started(turn_urls=[turn.url("tcp")], turn_secret=turn.secret)
    try:
        body = await (await session.get(f"{hub_url(hub)}/ice-servers?id=alice")).json()
        entry = body["iceServers"][0]
        relay, _ = await asyncio.wait_for(aioice.turn.create_turn_endpoint(
            asyncio.DatagramProtocol, (turn.ip, turn.port), entry["username"],
            entry["credential"], transport="tcp"), 10)
        try:
            assert relay.get_extra_info("sockname")[0] == "127.0.0.1"  # the relayed address
        finally:
            relay.close()
        forged = turn_credentials("not-the-secret", "alice", time.time(), 600)
        with pytest.raises(Exception, match=r"401|Unauthorized"):
            await asyncio.wait_for(aioice.turn.create_turn_endpoint(
                asyncio.DatagramProtocol, (turn.ip, turn.port), forged.username,
                forged.credential, transport="tcp"), 10)
    finally:
        await hub.stop()


async def test_shipped_coturn_conf_holds_no_usable_secret(coturn: StartCoturn) -> None:
    """server/coturn.conf started as server/README.md says (``turnserver -c
    server/coturn.conf --static-auth-secret SECRET``): credentials signed with SECRET
    get a relay, and none signed with a secret written in the file. (It once held
    ``static-auth-secret=change-me``, and coturn accepted credentials signed with
    either: a public password to the relay.)"""
    turn = coturn()
    assert await allocates(turn.ip, turn.port, turn.secret)
    assert await allocates(turn.ip, turn.port, turn.secret, transport="udp")
    assert not await allocates(turn.ip, turn.port, "change-me")
    assert not await allocates(turn.ip, turn.port, "change-me", transport="udp")
    settings = [line.strip() for line in COTURN_CONF.read_text().splitlines()]
    assert not [line for line in settings if line.startswith("static-auth-secret")]
