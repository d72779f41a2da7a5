"""The browser phone's files as the hub serves them, and its call state machine from the hub.

The page (ES modules in ``softphone/hub/web/``, no build step) runs its calls
from the table the hub serves at ``/callstate.json``, made from
:mod:`softphone.core.callstate`. Checked here: that the served JSON is the
Python table, and that a page given a different table (answered in the
browser by Playwright) follows that one: it refuses what the table lacks and
keeps the table's timeouts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from softphone.core import callstate as cs
from softphone.hub.server import Hub
from softphone.hub.webpages import PAGE_PATHS, STATIC_FILES

from ..conftest import hub_url
from ..support.browser import (
    PHONE_READY,
    dial,
    snapshot,
    wait_call_state,
    wait_hub,
    wait_js,
    wait_outcome,
)
from .conftest import SESSION_LOOP, Launch

pytestmark = [pytest.mark.e2e, SESSION_LOOP]

WEB = Path(__file__).resolve().parents[2] / "softphone" / "hub" / "web"
IMPORT = re.compile(r'^import\b[^;]*?from\s+"\./([\w.-]+)";', re.MULTILINE | re.DOTALL)


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        assert resp.headers["Cache-Control"] == "no-cache"
        return await resp.json()


# ------------------------------------------------------- no browser needed ---


async def test_hub_serves_the_pages_and_every_module(hub: Hub) -> None:
    modules = sorted(p.name for p in WEB.glob("*.js"))
    assert {"main.js", "callstate.js", "line.js", "hubclient.js", "media.js", "ui.js",
            "phone.js"} <= set(modules)
    # Every module in web/ is served, and every module a module imports is one of them.
    assert set(modules) <= set(STATIC_FILES), "a module in web/ is not in STATIC_FILES"
    for name in modules:
        for imported in IMPORT.findall((WEB / name).read_text()):
            assert imported in modules, f"{name} imports {imported}, which is not in web/"
    async with aiohttp.ClientSession() as session:
        for path in ("/", "/callerA.html", "/callerB.html"):
            async with session.get(hub_url(hub) + path) as resp:
                assert resp.status == 200
                assert resp.content_type == "text/html"
                assert '<script type="module" src="static/main.js">' in await resp.text()
        for name, kind in STATIC_FILES.items():
            async with session.get(f"{hub_url(hub)}/static/{name}") as resp:
                assert resp.status == 200 and resp.content_type == kind, name
                assert await resp.read() == (WEB / name).read_bytes()
        for path in ("/static/nope.js", "/static/..%2Fhub.py", "/static/phone.html",
                     "/callerC.html"):
            async with session.get(hub_url(hub) + path) as resp:
                assert resp.status == 404, path


async def test_page_and_its_files_may_not_be_framed_by_other_sites(hub: Hub) -> None:
    """Clickjacking: the page and every file of it say that only its own origin may
    frame them (CSP frame-ancestors, and X-Frame-Options for older browsers)."""
    paths = [*PAGE_PATHS, *(f"/static/{name}" for name in STATIC_FILES)]
    async with aiohttp.ClientSession() as session:
        for path in paths:
            async with session.get(hub_url(hub) + path) as resp:
                assert resp.status == 200, path
                assert resp.headers.getall("Content-Security-Policy") == [
                    "frame-ancestors 'self'"], path
                assert resp.headers.getall("X-Frame-Options") == ["SAMEORIGIN"], path


async def test_served_call_table_is_callstate(hub: Hub) -> None:
    """/callstate.json is callstate.py's TRANSITIONS, states, outcomes, timeouts, reasons."""
    table = await get_json(hub_url(hub) + "/callstate.json")
    rows = {(role, state, event): new for role, state, event, new in table["transitions"]}
    assert len(rows) == len(table["transitions"]), "duplicate rows"
    assert rows == {(str(role), str(state), event.__name__): str(new)
                    for (role, state, event), new in cs.TRANSITIONS.items()}
    assert table["roles"] == [str(role) for role in cs.Role]
    assert table["states"] == {s.name: str(s) for s in cs.CallState}
    assert table["outcomes"] == {o.name: str(o) for o in cs.Outcome}
    assert set(table["localEvents"]) == {e.__name__ for e in cs._LOCAL_EVENTS}
    t = cs.CallTimeouts()
    assert table["timeouts"] == {"ring": t.ring, "setup": t.setup, "offerDelay": t.offer_delay}
    assert table["reasons"] == {"NO_ANSWER": cs.REASON_NO_ANSWER,
                                "MEDIA_FAILED": cs.REASON_MEDIA_FAILED, "BUSY": cs.REASON_BUSY,
                                "GLARE": cs.REASON_GLARE,
                                "PEER_DISCONNECTED": cs.REASON_PEER_DISCONNECTED,
                                "MEDIA_LOST": cs.REASON_MEDIA_LOST}


# ------------------------------------------------------------ browser tests ---


async def test_chromium_shows_the_page_in_a_frame_of_its_own_site_only(
        hub: Hub, chromium: Launch) -> None:
    """A site framing the phone (to put its buttons under a victim's clicks) gets an
    empty frame; a page of the hub's own origin may still frame it."""
    browser = await chromium(None)
    framer = (f'<!doctype html><iframe src="{hub_url(hub)}/?id=victim" width="500" '
              'height="500"></iframe>')

    async def serve(request: Any) -> web.Response:
        return web.Response(text=framer, content_type="text/html")

    # The other site: a real server on another port (a page Playwright made up would
    # be a public one, and Chromium keeps those from framing local servers anyway).
    other_app = web.Application()
    other_app.router.add_get("/", serve)
    runner = web.AppRunner(other_app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        other = f"http://127.0.0.1:{runner.addresses[0][1]}/"
        page = await browser.open(other, ready=False)
        await page.wait_for_timeout(1500)  # (the same page loads in 0.1 s)
        assert await page.frame_locator("iframe").locator("#my-id").count() == 0
    finally:
        await runner.cleanup()
    own = hub_url(hub) + "/framer.html"  # (answered in the browser, as from the hub)

    async def serve_own(route: Any) -> None:
        await route.fulfill(status=200, content_type="text/html", body=framer)

    await browser.context.route(own, serve_own)
    page = await browser.open(own, ready=False)
    await page.frame_locator("iframe").locator("#my-id").wait_for(timeout=10_000)


async def test_page_runs_its_calls_from_the_served_table(hub: Hub, chromium: Launch) -> None:
    """A table without (callee, ringing, LocalAccept) and a 4 s ring: the pages follow it."""
    table = await get_json(hub_url(hub) + "/callstate.json")
    no_accept = dict(table, transitions=[
        row for row in table["transitions"] if row[:3] != ["callee", "ringing", "LocalAccept"]])
    short_ring = dict(table, timeouts=dict(table["timeouts"], ring=4.0))
    browser = await chromium()
    pat = await browser.open(hub_url(hub) + "/?id=pat", call_table=no_accept)
    carl = await browser.open(hub_url(hub) + "/?id=carl", call_table=short_ring)
    assert await pat.evaluate("window.phone.table.next('callee', 'ringing', 'LocalAccept')") \
        is None
    assert await carl.evaluate("window.phone.table.next('callee', 'ringing', 'LocalAccept')") \
        == "connecting"
    await wait_hub(pat, "connected")
    await wait_hub(carl, "connected")
    await dial(carl, "pat")
    await wait_call_state(pat, "ringing")
    await pat.click("#accept")
    # pat's table has no accept while ringing: refused, and the page says so.
    await wait_js(pat, "window.phone.errors.some(e => e.code === 'not-allowed')")
    pat_state = await snapshot(pat)
    refused = next(e for e in pat_state["errors"] if e["code"] == "not-allowed")
    assert refused["message"] == "LocalAccept is not allowed when the callee is ringing"
    assert pat_state["call"]["state"] == "ringing"
    assert (await snapshot(carl))["call"]["state"] == "dialing"
    # carl's table rings for 4 s, not callstate's 30: no answer, and pat missed the call.
    state = await wait_outcome(carl, "no-answer", within=15)
    ended_at = state["call"]["history"][-1][1]
    assert 3.5 <= ended_at < 10, state["call"]["history"]
    await wait_outcome(pat, "missed")


async def test_page_refuses_a_table_it_cannot_run(hub: Hub, chromium: Launch) -> None:
    table = await get_json(hub_url(hub) + "/callstate.json")
    teleport = dict(table, transitions=[*table["transitions"], ["caller", "dialing", "Teleport",
                                                                "ended"]])
    browser = await chromium(None)
    page = await browser.open(hub_url(hub) + "/?id=pat", call_table=teleport, ready=False)
    await page.wait_for_selector('#errors li[data-code="call-table"]')
    text = await page.text_content("#errors") or ""
    assert "cannot use the hub's call table" in text and "Teleport" in text, text
    assert not await page.evaluate(PHONE_READY)
    assert await page.is_disabled("#connect")
    # The hub's own table is fine: the same page works with it.
    good = await browser.open(hub_url(hub) + "/?id=pat")
    await wait_hub(good, "connected")


_ENDINGS = [("RemoteHangup", None), ("RemoteHangup", "peer-disconnected"),
            ("RemoteHangup", "media-failed"), ("RemoteHangup", "media-lost"),
            ("RemoteHangup", "hangup"), ("RemoteHangup", "no-such-call"),
            ("RemoteHangup", "interrupted"), ("LocalHangup", "interrupted")]


async def test_page_core_ends_a_call_whose_media_is_lost_as_callstate_does(
        hub: Hub, chromium: Launch) -> None:
    """A connected call, its media lost (a restart under way), then a hangup: the
    page's machine gives the outcome callstate.py gives, for each reason (a deliberate
    hangup is completed, the hub's peer-disconnected or none is media-lost; ours is
    always completed)."""
    expected = []
    for event, reason in _ENDINGS:
        m = cs.CallMachine(cs.Role.CALLER, "bob", 0.0)
        m.handle(cs.RemoteAccept(), 1.0)
        m.handle(cs.MediaConnected(), 2.0)
        m.handle(cs.MediaInterrupted(lost=True), 3.0)
        m.handle(cs.RemoteHangup(reason) if event == "RemoteHangup" else cs.LocalHangup(reason),
                 4.0)
        expected.append(str(m.outcome))
    browser = await chromium(None)
    page = await browser.open(hub_url(hub) + "/")
    got = await page.evaluate("""async (endings) => {
        const {CallMachine} = await import("./static/callstate.js");
        return endings.map(([type, reason]) => {
            const m = new CallMachine("caller", "bob", 0, window.phone.table);
            m.handle({type: "RemoteAccept"}, 1);
            m.handle({type: "MediaConnected"}, 2);
            m.handle({type: "MediaInterrupted", lost: true}, 3);
            m.handle(reason === null ? {type} : {type, reason}, 4);
            return m.outcome;
        });
    }""", [list(e) for e in _ENDINGS])
    assert got == expected
    assert expected == ["media-lost", "media-lost", "media-lost", "media-lost", "completed",
                        "media-lost", "completed", "completed"]


async def test_page_core_holds_early_candidates_and_answers_busy(hub: Hub,
                                                                  chromium: Launch) -> None:
    """The page's sans-IO modules, run in Chromium: the same actions callstate/line give."""
    browser = await chromium(None)
    page = await browser.open(hub_url(hub) + "/")
    kinds = await page.evaluate("""async () => {
        const {Line} = await import("./static/line.js");
        const line = new Line("bob", window.phone.table);
        const out = [];
        const feed = (m) => out.push(...line.receive(m, 0).map(a => a.kind +
            (a.kind === "send" ? ":" + a.message.type + ":" + a.message.to +
             (a.message.data && a.message.data.reason ? ":" + a.message.data.reason : "") : "")));
        feed({type: "call-request", from: "alice", to: "bob"});
        out.push(...line.handleLocal({type: "LocalAccept"}, 1).map(a => a.kind + (a.kind ===
            "send" ? ":" + a.message.type + ":" + JSON.stringify(a.message.data) : "")));
        const cand = {candidate: "candidate:1 1 udp 1 192.0.2.9 9 typ host", sdpMid: "0"};
        feed({type: "candidate", from: "alice", to: "bob", data: cand});
        feed({type: "candidate", from: "mallory", to: "bob", data: cand});
        feed({type: "offer", from: "alice", to: "bob", data: {type: "offer", sdp: "v=0"}});
        feed({type: "call-request", from: "carol", to: "bob"});
        return out;
    }""")
    assert kinds == [
        "incoming",
        'send:call-accept:{"media":"ready"}', "state", "startMedia",
        # the early candidate is held, then applied after the offer; mallory, with whom
        # we have no call, is told so (a hangup)
        "send:hangup:mallory:no-such-call", "stray", "applyOffer", "addCandidate",
        "send:call-reject:carol:busy", "busy",
    ]
