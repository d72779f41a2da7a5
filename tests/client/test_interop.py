"""Interop with the ORIGINAL system: its browser pages and its Go hub (emulated).

Real sockets, real aiortc peers, ``softphone`` run as a subprocess; audio is
checked by frequency (first 0.5 s skipped, within 5 Hz, purity > 0.5).
See ``tests/support/emulators.py`` for what the emulators reproduce, and
``benchmarks/emulators.py`` for the check that they still do.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest

from softphone.core.callstate import EXIT_CODES, Outcome
from softphone.hub.server import Hub

from ..conftest import hub_url
from ..support.emulators import OriginalHub, OriginalPage
from ..support.helpers import Proc, assert_tone, assert_wav_tone

pytestmark = pytest.mark.e2e

NO_ANSWER = EXIT_CODES[Outcome.NO_ANSWER]


@pytest.fixture
def our_hub(hub: Hub) -> str:
    """Our hub (the ``hub`` fixture)'s URL."""
    return hub_url(hub)


@pytest.fixture
async def original_hub() -> AsyncIterator[OriginalHub]:
    hub = OriginalHub()
    await hub.start("127.0.0.1", 0)
    try:
        yield hub
    finally:
        await hub.stop()


def start(procs: list[Proc], *args: str) -> Proc:
    """``softphone -v ARGS``, stopped at the end of the test."""
    proc = Proc("-v", *args)
    procs.append(proc)
    return proc


# ------------------------------------------------------ original pages ---


async def test_original_page_calls_our_listen(our_hub: str, procs: list[Proc],
                                              tmp_path: Path) -> None:
    """callerA.html (440 Hz) calls `softphone listen --as b` (660 Hz) through our hub."""
    record = tmp_path / "listen.wav"
    page = OriginalPage(our_hub, "a", tone=440)
    try:
        listen = start(procs, "listen", "--as", "b", "--auto-accept", "--once",
                       "--tone", "660", "--record", str(record), "--server", our_hub)
        await listen.wait_for_output("listening as b")
        await page.connect()
        await page.call()
        try:
            await asyncio.wait_for(page.connected.wait(), 10)
            await asyncio.wait_for(page.wait_received(2.0), 10)
        except TimeoutError:
            raise AssertionError(f"page: no call ({page.received}, {page.errors})\n"
                                 f"{listen.describe()}") from None
        received = page.received_samples()
        await page.hangup()
        assert await listen.wait(10) == 0, listen.describe()
    finally:
        await page.close()
    assert page.errors == []
    # The page trickled: its offer had no candidates, they came one by one.
    offer = next(m for m in page.sent if m["type"] == "offer")
    assert "a=candidate" not in offer["data"]["sdp"]
    assert any(m["type"] == "candidate" for m in page.sent)
    assert_wav_tone(record, 440, what="listen's recording")
    assert_tone(received, 660, what="what the page received")
    assert "call completed with a" in listen.stdout, listen.describe()


async def test_our_call_to_original_page(our_hub: str, procs: list[Proc],
                                         tmp_path: Path) -> None:
    """`softphone call a --as b` (660 Hz) to callerA.html (440 Hz), which grabs its
    microphone 0.15 s after accepting: our 0.3 s offer delay must beat it.
    (An offer before the page's microphone is answered receive-only: the
    emulated bug the offer delay exists for, checked by benchmarks/emulators.py.)"""
    record = tmp_path / "call.wav"
    page = OriginalPage(our_hub, "a", tone=440, mic_delay=0.15)
    try:
        await page.connect()
        call = start(procs, "call", "a", "--as", "b", "--tone", "660", "--duration", "2",
                     "--record", str(record), "--server", our_hub)
        assert await call.wait(15) == 0, call.describe()
        await asyncio.wait_for(page.hung_up.wait(), 5)
        received = page.received_samples()
    finally:
        await page.close()
    assert page.errors == []
    assert page.answered_receive_only is False, "the offer came before the page's microphone"
    accept = next(m for m in page.sent if m["type"] == "call-accept")
    assert "data" not in accept
    answer = next(m for m in page.sent if m["type"] == "answer")
    assert "a=candidate" not in answer["data"]["sdp"]
    assert any(m["type"] == "candidate" for m in page.sent)
    assert_wav_tone(record, 440, what="call's recording")
    assert_tone(received, 660, what="what the page received")


# -------------------------------------------------------- original hub ---


async def test_our_cli_through_original_hub(original_hub: OriginalHub, procs: list[Proc],
                                             tmp_path: Path) -> None:
    """`softphone listen` and `softphone call`, both on the original hub."""
    rec_a, rec_b = tmp_path / "a.wav", tmp_path / "b.wav"
    listen = start(procs, "listen", "--as", "b", "--auto-accept", "--once", "--tone", "660",
                   "--record", str(rec_b), "--server", original_hub.url)
    await listen.wait_for_output("listening as b")
    call = start(procs, "call", "b", "--as", "a", "--tone", "440", "--duration", "2",
                 "--record", str(rec_a), "--server", original_hub.url)
    assert await call.wait(15) == 0, call.describe() + listen.describe()
    assert await listen.wait(10) == 0, listen.describe()
    assert_wav_tone(rec_a, 660, what="caller's recording")
    assert_wav_tone(rec_b, 440, what="callee's recording")
    assert "Traceback" not in call.stderr + listen.stderr


async def test_a_hostile_peer_on_the_original_hub_reaches_the_terminal_as_text(
        original_hub: OriginalHub, procs: list[Proc]) -> None:
    """The original hub forwards any id and any reason. A peer whose id carries a path
    and terminal escapes calls our listener; then our caller calls it and it rejects
    with a reason that would clear the screen, retitle the window and forge a line.
    What reaches the terminal is text, the escapes written out (a security review).
    (Where such an id's recording goes: test_record_paths_... in test_user_flow.py.)"""
    evil = "../x\x1b]0;PWNED\x07\x1b[2J"
    listen = start(procs, "listen", "--as", "b", "--auto-accept", "--no-audio",
                   "--server", original_hub.url)
    await listen.wait_for_output("listening as b")
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{original_hub.url}/ws?id={quote(evil)}")
        await original_hub.wait_until(lambda clients: evil in clients)
        await ws.send_str(json.dumps({"type": "call-request", "to": "b"}))
        await listen.wait_for_output("incoming call from", within=10)
        await ws.send_str(json.dumps({"type": "hangup", "to": "b"}))
        await ws.close()
        # (our CLI calls only ids it could have: the reason comes from one of those)
        ws = await session.ws_connect(f"{original_hub.url}/ws?id=mallory")
        await original_hub.wait_until(lambda clients: "mallory" in clients)
        call = start(procs, "call", "mallory", "--as", "a", "--no-audio",
                     "--server", original_hub.url)
        async with asyncio.timeout(15):
            async for frame in ws:  # its call-request
                if json.loads(frame.data).get("type") == "call-request":
                    break
        await ws.send_str(json.dumps({"type": "call-reject", "to": "a", "data": {
            "reason": "\x1b]0;T\x07\x1b[2J\x1b[31mFAKE: call verified OK\nline"}}))
        assert await call.wait(15) == EXIT_CODES[Outcome.REJECTED], call.describe()
        await ws.close()
    for proc in (listen, call):
        for text in (proc.stdout, proc.stderr):
            assert "\x1b" not in text and "\x07" not in text, proc.describe()
    assert "incoming call from ../x\\x1b]0;PWNED\\x07\\x1b[2J" in listen.stdout
    assert "(\\x1b]0;T\\x07\\x1b[2J\\x1b[31mFAKE: call verified OK\\nline)" \
        in call.stdout, call.describe()


async def test_call_nobody_through_original_hub(original_hub: OriginalHub,
                                                procs: list[Proc]) -> None:
    """The original hub drops messages to unknown ids: no `offline`, so no answer."""
    call = start(procs, "call", "nobody", "--as", "a", "--ring-timeout", "1",
                 "--server", original_hub.url)
    # A hang guard, not a speed check: 1 s of ringing and a process start take a few
    # seconds; the default ring timeout (30 s) would not be done by then.
    assert await call.wait(25) == NO_ANSWER, call.describe()
    # The ring timeout ended it (no-answer is its outcome only), and the caller
    # withdrew its call-request with a hangup.
    assert "no answer from nobody" in call.stdout, call.describe()
    # The hub has read all a sent once it has seen a's connection close (a hang guard).
    await asyncio.wait_for(original_hub.wait_until(lambda clients: "a" not in clients), 10)
    sent = [json.loads(raw)["type"] for sender, raw in original_hub.frames if sender == "a"]
    assert sent[0] == "call-request" and "hangup" in sent[1:], sent
