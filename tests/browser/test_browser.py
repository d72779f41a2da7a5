"""The browser phone (softphone/hub/web/) in real headless Chromium, against real hubs and CLIs.

Chromium is Debian's, driven by Playwright's Python package; its fake
microphone plays a WAV with a known tone (440 Hz on one side, 660 Hz on the
other). What the CLI hears is checked by FFT of its ``--record`` WAV; what
the page hears by FFT of its WebAudio analyser's samples and by getStats()
inbound audio energy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from softphone.core import callstate as cs
from softphone.hub.server import Hub, HubConfig
from softphone.hub.tls import local_addresses
from softphone.media.audio import rms_dbfs

from ..conftest import hub_url
from ..support.browser import (
    assert_page_hears,
    connect_as,
    dial,
    inbound_energy,
    snapshot,
    wait_call_state,
    wait_hub,
    wait_js,
    wait_outcome,
)
from ..support.helpers import Proc, assert_tone, assert_wav_tone, read_wav
from .conftest import PAGE_TONE, SESSION_LOOP, Launch

pytestmark = [pytest.mark.e2e, SESSION_LOOP]

OTHER_TONE = 660.0


# ------------------------------------------------------------------ helpers ---


async def listening(procs: list[Proc], server: str, client_id: str, *extra: str,
                    stdin: bool = False) -> Proc:
    p = Proc("listen", "--as", client_id, "--server", server, "--json", *extra, stdin=stdin)
    procs.append(p)
    await p.wait_for_output('"listening"', within=30)
    return p


def events(proc: Proc) -> list[dict[str, Any]]:
    out = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def ended_event(proc: Proc) -> dict[str, Any]:
    ended = [e for e in events(proc) if e.get("event") == "ended"]
    assert ended, f"no 'ended' event from {proc.args}:\n{proc.stdout}\n{proc.stderr}"
    return ended[-1]


async def serve(procs: list[Proc], *args: str, port: int = 0) -> tuple[Proc, int]:
    """``softphone serve`` as a subprocess; returns it and the port it listens on."""
    p = Proc("serve", "--port", str(port), "--ice-server", "none", *args)
    procs.append(p)
    await p.wait_for_output("listening on", within=30)
    found = re.search(r"listening on https?://\S+:(\d+)", p.stdout)
    assert found is not None, p.stdout
    return p, int(found.group(1))


async def cli_call_refused(procs: list[Proc], hub: Hub, page: Any, button: str) -> Proc:
    """``softphone call pat --as carl`` rings ``page`` (pat), which clicks ``button``;
    the call ends rejected on both sides. Returns the CLI, exited."""
    cli = Proc("call", "pat", "--as", "carl", "--server", hub_url(hub))
    procs.append(cli)
    await wait_call_state(page, "ringing", within=30)
    await page.click(button)
    assert await cli.wait() == cs.EXIT_CODES[cs.Outcome.REJECTED], cli.describe()
    await wait_outcome(page, "rejected")
    return cli


async def error_codes(page: Any) -> list[str]:
    return [e["code"] for e in (await snapshot(page))["errors"]]


# ------------------------------------------------------------ browser tests ---


async def test_page_calls_cli_audio_both_ways(hub: Hub, chromium: Launch,
                                              procs: list[Proc], tmp_path: Path) -> None:
    rec = tmp_path / "cli-heard.wav"
    bob = await listening(procs, hub_url(hub), "bob", "--auto-accept", "--once",
                          "--tone", str(OTHER_TONE), "--record", str(rec))
    browser = await chromium(PAGE_TONE)
    page = await browser.open(hub_url(hub) + "/")
    await connect_as(page, "alice")
    await dial(page, "bob")
    await wait_call_state(page, "connected")
    assert await page.get_attribute("#phone", "data-call-state") == "connected"
    await assert_page_hears(page, OTHER_TONE)
    await page.wait_for_timeout(2000)  # the CLI's recording: 0.5 s skipped, 1 s checked
    await page.click("#hangup")  # the caller (page) hangs up
    state = await wait_outcome(page, "completed")
    assert state["call"]["endedBy"] == "local"
    assert await bob.wait() == 0, bob.stderr
    end = ended_event(bob)
    assert end["outcome"] == "completed" and end["ended_by"] == "remote"
    assert_wav_tone(rec, PAGE_TONE)
    # The page's offer puts Opus first (RED further down): the answer follows it.
    media = next(e for e in events(bob) if e["event"] == "media")
    assert media["codec"] == "opus/48000"


async def test_cli_calls_page_audio_both_ways(hub: Hub, chromium: Launch,
                                              procs: list[Proc], tmp_path: Path) -> None:
    rec = tmp_path / "cli-heard.wav"
    browser = await chromium(PAGE_TONE)
    page = await browser.open(hub_url(hub) + "/?id=pat")  # ?id= connects at once
    await wait_hub(page, "connected")
    # With loss on what the CLI receives: Chrome's RED copies must fill the holes.
    cli = Proc("call", "pat", "--as", "carl", "--server", hub_url(hub), "--json",
               "--tone", str(OTHER_TONE), "--record", str(rec), "--duration", "4",
               "--simulate-loss", "5")
    procs.append(cli)
    await wait_call_state(page, "ringing", within=30)
    assert await page.is_visible("#incoming")
    assert await page.text_content("#caller") == "carl"
    await page.click("#accept")
    await wait_call_state(page, "connected")
    await assert_page_hears(page, OTHER_TONE)
    assert await cli.wait() == 0, cli.stderr  # the CLI (caller) hangs up after --duration
    state = await wait_outcome(page, "completed")
    assert state["call"]["endedBy"] == "remote"
    assert_wav_tone(rec, PAGE_TONE)
    # Our offer leads with RED and Chrome takes it: it decodes ours (it heard the
    # tone) and its own copies replaced the packets the CLI lost.
    media = next(e for e in events(cli) if e["event"] == "media")
    assert media["codec"] == "opus/48000+red"
    stats = ended_event(cli)["stats"]
    assert stats["repaired"] > 0, stats


async def test_page_calls_page_through_our_hub(hub: Hub, chromium: Launch) -> None:
    a_browser = await chromium(PAGE_TONE)
    b_browser = await chromium(OTHER_TONE)
    a = await a_browser.open(hub_url(hub) + "/callerA.html")  # fixed to id a, dials b
    b = await b_browser.open(hub_url(hub) + "/callerB.html")
    await wait_hub(a, "connected")
    await wait_hub(b, "connected")
    assert await a.input_value("#my-id") == "a" and await a.input_value("#peer-id") == "b"
    await a.click("#call")
    await wait_call_state(b, "ringing")
    await b.click("#accept")
    await wait_call_state(a, "connected")
    await wait_call_state(b, "connected")
    await assert_page_hears(a, OTHER_TONE)
    await assert_page_hears(b, PAGE_TONE)
    await b.click("#hangup")  # the callee hangs up
    a_state = await wait_outcome(a, "completed")
    b_state = await wait_outcome(b, "completed")
    assert a_state["call"]["endedBy"] == "remote" and b_state["call"]["endedBy"] == "local"


async def test_page_and_the_original_page_call_each_other(hub: Hub, chromium: Launch) -> None:
    """Our /callerA.html with the original callerB.html (emulated: tests/support/emulators.py).

    The original callee accepts bare and grabs its microphone 0.15 s later, and
    drops candidates that arrive before its remote description; our page waits
    before offering and sends its candidates after its offer, so both hear.
    """
    from ..support.emulators import OriginalPage

    browser = await chromium(PAGE_TONE)
    page = await browser.open(hub_url(hub) + "/callerA.html")
    await wait_hub(page, "connected")
    for direction in ("page calls original", "original calls page"):
        original = OriginalPage(hub_url(hub), "b", tone=OTHER_TONE)
        await original.connect()
        try:
            if direction == "page calls original":
                await page.click("#call")
            else:
                await original.call()
                await wait_call_state(page, "ringing")
                await page.click("#accept")
            await wait_call_state(page, "connected")
            await asyncio.wait_for(original.wait_received(2.0), 15)
            assert original.answered_receive_only in (None, False), direction
            assert_tone(original.received_samples(), PAGE_TONE,
                        what=f"{direction}: what the original page heard")
            await assert_page_hears(page, OTHER_TONE)
            await original.hangup()  # the original sends a bare hangup
            await wait_outcome(page, "completed")
        finally:
            await original.close()


async def test_reject_both_ways(hub: Hub, chromium: Launch, procs: list[Proc]) -> None:
    browser = await chromium(PAGE_TONE)
    page = await browser.open(hub_url(hub) + "/?id=pat")
    await wait_hub(page, "connected")
    # The page rejects the CLI.
    cli = await cli_call_refused(procs, hub, page, "#reject")
    assert "rejected" in cli.stdout
    assert "you rejected the call from carl" in (await page.text_content("#outcome") or "")
    assert "rejected" not in await error_codes(page)  # our own choice is not an error
    # The CLI rejects the page: the page shows it as an error.
    bob = await listening(procs, hub_url(hub), "bob", "--once", stdin=True)
    await dial(page, "bob")
    await bob.wait_for_output('"incoming"', within=20)
    bob.send("n\n")
    assert await bob.wait() == cs.EXIT_CODES[cs.Outcome.REJECTED], bob.stderr
    state = await wait_outcome(page, "rejected")
    assert "rejected" in await error_codes(page), state
    assert "rejected the call" in (await page.text_content("#errors") or "")


async def test_busy_both_ways(hub: Hub, chromium: Launch, procs: list[Proc]) -> None:
    await listening(procs, hub_url(hub), "bob", "--auto-accept", "--once",
                    "--tone", str(OTHER_TONE))
    browser = await chromium(PAGE_TONE)
    alice = await browser.open(hub_url(hub) + "/?id=alice")
    await wait_hub(alice, "connected")
    await dial(alice, "bob")
    await wait_call_state(alice, "connected")
    # A CLI calling the page during its call is told busy.
    carol = Proc("call", "alice", "--as", "carol", "--server", hub_url(hub))
    procs.append(carol)
    assert await carol.wait() == cs.EXIT_CODES[cs.Outcome.BUSY], carol.stdout + carol.stderr
    # So is another page, which shows it as an error.
    dave = await browser.open(hub_url(hub) + "/?id=dave")
    await wait_hub(dave, "connected")
    await dial(dave, "alice")
    await wait_outcome(dave, "busy")
    assert "busy" in await error_codes(dave)
    state = await snapshot(alice)
    assert state["busyRejected"] == ["carol", "dave"]
    assert state["call"]["state"] == "connected"  # alice's call went on
    await alice.click("#hangup")
    await wait_outcome(alice, "completed")


async def test_mute(hub: Hub, chromium: Launch, procs: list[Proc], tmp_path: Path) -> None:
    rec = tmp_path / "cli-heard.wav"
    bob = await listening(procs, hub_url(hub), "bob", "--auto-accept", "--once",
                          "--record", str(rec))
    browser = await chromium(PAGE_TONE)
    page = await browser.open(hub_url(hub) + "/?id=alice")
    await wait_hub(page, "connected")
    await dial(page, "bob")
    await wait_call_state(page, "connected")
    await page.wait_for_timeout(3000)
    await page.click("#mute")
    assert await page.get_attribute("#phone", "data-muted") == "true"
    assert await page.text_content("#mute") == "Unmute"
    await page.wait_for_timeout(3000)
    await page.click("#hangup")
    assert await bob.wait() == 0, bob.stderr
    samples, rate = read_wav(rec)
    assert samples.size > 5 * rate
    assert_tone(samples, PAGE_TONE, rate=rate, until=2.0, what="before muting")
    tail = samples[-int(1.5 * rate):]  # the last 1.5 s, muted
    assert rms_dbfs(tail) < -50, f"muted audio at {rms_dbfs(tail):.1f} dBFS"


async def test_page_errors_offline_bad_id_no_microphone(hub: Hub, chromium: Launch,
                                                       procs: list[Proc]) -> None:
    browser = await chromium(None)  # no fake microphone: getUserMedia fails
    page = await browser.open(hub_url(hub) + "/")
    await page.fill("#my-id", "bad id!")
    await page.click("#connect")
    await wait_js(page, "window.phone.errors.some(e => e.code === 'bad-id')")
    await connect_as(page, "pat")
    await dial(page, "ghost")
    await wait_js(page, "window.phone.errors.some(e => e.code.startsWith('microphone-'))")
    assert (await snapshot(page))["call"] is None  # nobody is rung without a microphone
    # An incoming call that cannot get the microphone is rejected, and the page says why.
    cli = await cli_call_refused(procs, hub, page, "#accept")
    assert "no-microphone" in cli.stdout


async def test_page_shows_offline_callee(hub: Hub, chromium: Launch) -> None:
    browser = await chromium(PAGE_TONE)
    page = await browser.open(hub_url(hub) + "/?id=pat")
    await wait_hub(page, "connected")
    await dial(page, "ghost")
    await wait_outcome(page, "offline")
    assert "offline" in await error_codes(page)
    assert "ghost is offline" in (await page.text_content("#errors") or "")


def lan_address() -> str:
    lan = next((a for a in local_addresses() if "." in a and not a.startswith("127.")), None)
    assert lan is not None, "this machine has no non-loopback IPv4 address"
    return lan


async def test_page_over_plain_http_on_the_lan_says_it_needs_https(chromium: Launch) -> None:
    hub = Hub(HubConfig(ice_servers=[]))
    port = await hub.start(lan_address(), 0)
    try:
        browser = await chromium(PAGE_TONE)
        page = await browser.open(f"http://{lan_address()}:{port}/?id=pat")
        assert await page.evaluate("window.isSecureContext") is False
        await wait_hub(page, "connected")  # signaling works; the microphone does not
        await dial(page, "ghost")
        await wait_js(page, "window.phone.errors.some(e => e.code === 'microphone-unavailable')")
        assert "https" in (await page.text_content("#errors") or "")
        assert (await snapshot(page))["call"] is None
    finally:
        await hub.stop()


TOKEN_SECRET = "s" * 40


@contextlib.asynccontextmanager
async def page_with_a_token(chromium: Launch, **config: Any
                            ) -> AsyncIterator[tuple[str, Any, Any]]:
    """A hub with tokens (``config``: more of its settings) and a page of ``pat`` with
    its token, connected: (the hub's URL, the browser, the page)."""
    from softphone.hub.auth import mint_token

    hub = Hub(HubConfig(secret=TOKEN_SECRET, **config))
    await hub.start("127.0.0.1", 0)
    try:
        browser = await chromium(PAGE_TONE)
        token = mint_token(TOKEN_SECRET, "pat", time.time(), 600)
        page = await browser.open(f"{hub_url(hub)}/?id=pat&token={token}")
        await wait_hub(page, "connected")
        yield hub_url(hub), browser, page
    finally:
        await hub.stop()


async def test_page_with_a_token_on_a_hub_with_a_secret(chromium: Launch) -> None:
    async with page_with_a_token(chromium, ice_servers=[]) as (url, browser, _):
        refused = await browser.open(f"{url}/?id=pat2")  # no token
        await wait_hub(refused, "refused")  # and it does not retry: a token will not appear
        assert "unauthorized" in await error_codes(refused)
        assert "missing token" in (await refused.text_content("#errors") or "")


async def test_page_gets_turn_credentials_from_a_hub_with_tokens(chromium: Launch) -> None:
    """A hub run with --secret and --turn wants a token for /ice-servers (TURN
    credentials are not for anyone): the page asks with its id and ?token=, and gets
    the STUN entry and TURN credentials made for its id (it asked with neither, got
    401, and called with no STUN or TURN at all)."""
    async with page_with_a_token(
            chromium, ice_servers=[{"urls": "stun:stun.example.org:3478"}],
            turn_urls=["turn:turn.example.org:3478"], turn_secret="t" * 40) as (_, _, page):
        servers = await page.evaluate("window.phone.iceServers.take()")
        urls = [u for s in servers for u in ([s["urls"]] if isinstance(s["urls"], str)
                                             else s["urls"])]
        assert "stun:stun.example.org:3478" in urls, servers
        turn = [s for s in servers if "turn:turn.example.org:3478" in str(s["urls"])]
        assert turn and turn[0]["username"].endswith(":pat") and turn[0]["credential"], servers
        assert "ice-servers" not in await error_codes(page)
        # A list fetched ahead for a call that never used it: the next call takes it
        # only while fresh (60 s: TURN credentials expire), else asks again.
        reuse = await page.evaluate("""() => {
            const ice = window.phone.iceServers;
            const first = ice.prefetch();
            const again = ice.prefetch();
            ice.fetchedAt -= 61000;  // (a minute later)
            return [first === again, ice.prefetch() === first];
        }""")
        assert reuse == [True, False], reuse


async def test_page_over_https_with_self_signed(chromium: Launch, procs: list[Proc],
                                                tmp_path: Path) -> None:
    lan = lan_address()
    hub, port = await serve(procs, "--host", "0.0.0.0", "--self-signed",
                            "--tls-dir", str(tmp_path / "tls"))
    await hub.wait_for_output("CLI clients", within=10)
    cert = tmp_path / "tls" / "softphone-cert.pem"
    assert f"https://0.0.0.0:{port}" in hub.stdout and cert.exists(), hub.stdout
    server = f"https://{lan}:{port}"
    # Without the certificate the CLI refuses the hub.
    blind = Proc("call", "x", "--as", "y", "--server", server)
    procs.append(blind)
    code = await blind.wait()
    assert code == cs.EXIT_CODES[cs.Outcome.HUB_UNREACHABLE], (code, blind.stdout, blind.stderr)
    assert "certificate" in blind.stdout + blind.stderr, blind.stdout + blind.stderr
    # With it, it connects; the page on a LAN address gets a secure context and the microphone.
    rec = tmp_path / "cli-heard.wav"
    await listening(procs, server, "bob", "--ca-file", str(cert), "--auto-accept", "--once",
                    "--tone", str(OTHER_TONE), "--record", str(rec), "--duration", "3")
    browser = await chromium(PAGE_TONE, ignore_https_errors=True)
    page = await browser.open(server + "/?id=alice")
    assert await page.evaluate("window.isSecureContext") is True
    await wait_hub(page, "connected")
    await dial(page, "bob")
    await wait_call_state(page, "connected")
    await assert_page_hears(page, OTHER_TONE)
    await wait_outcome(page, "completed")
    assert_wav_tone(rec, PAGE_TONE)
    insecure = Proc("call", "ghost", "--as", "y", "--server", server, "--insecure")
    procs.append(insecure)
    code = await insecure.wait()
    assert code == cs.EXIT_CODES[cs.Outcome.OFFLINE], (code, insecure.stdout, insecure.stderr)


async def test_page_when_the_hub_goes_away_and_comes_back(chromium: Launch, procs: list[Proc],
                                                           tmp_path: Path) -> None:
    hub1, port = await serve(procs)
    server = f"http://127.0.0.1:{port}"
    rec = tmp_path / "cli-heard.wav"
    bob = await listening(procs, server, "bob", "--auto-accept", "--once",
                          "--tone", str(OTHER_TONE), "--record", str(rec))
    browser = await chromium(PAGE_TONE)
    page = await browser.open(server + "/?id=alice")
    await wait_hub(page, "connected")
    await dial(page, "bob")
    await wait_call_state(page, "connected")

    hub1.signal(signal.SIGKILL)
    await hub1.wait()
    await wait_hub(page, "reconnecting")
    assert await page.get_attribute("#phone", "data-hub") == "reconnecting"
    assert "hub unreachable" in (await page.text_content("#hub-status") or "")
    assert "hub-unreachable" in await error_codes(page)
    # The call is peer to peer: it goes on without the hub.
    energy = await inbound_energy(page)
    await page.wait_for_timeout(1000)
    assert await inbound_energy(page) > energy
    assert (await snapshot(page))["call"]["state"] == "connected"
    # It keeps retrying, and says so.
    await wait_js(page, "window.phone.errors.filter(e => e.code === 'hub-unreachable')"
                        ".length >= 2", within=20)

    await serve(procs, port=port)  # the same port: the page knows only its URL
    await wait_hub(page, "connected", within=30)
    assert (await snapshot(page))["connects"] == 2
    async with aiohttp.ClientSession() as session:  # bob's CLI is back too
        for _ in range(100):
            async with session.get(server + "/healthz") as resp:
                if (await resp.json())["clients"] == 2:
                    break
            await asyncio.sleep(0.2)
    await page.click("#hangup")
    await wait_outcome(page, "completed")
    assert await bob.wait() == 0, bob.stderr  # it got the hangup through the new hub
    assert_wav_tone(rec, PAGE_TONE)
