"""The browser phone at the edges a user found: a microphone prompt answered after the
call was missed, a page reloaded (or hidden) mid-call, a hub that refuses the page.

Real hub, real Chromium, real CLI and :class:`softphone.Phone` peers.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from softphone import Phone, ToneSource
from softphone.core import callstate as cs
from softphone.hub.server import Hub

from ..conftest import hub_url
from ..support.browser import snapshot, wait_call_state, wait_hub, wait_js, wait_outcome
from ..support.helpers import Proc
from .conftest import PAGE_TONE, SESSION_LOOP, Launch, answer
from .test_browser import page_with_a_token

pytestmark = [pytest.mark.e2e, SESSION_LOOP]

#: getUserMedia answered 4 s late, as by a user slow at the browser's prompt; every
#: stream it gave is kept in window.__streams for the test to look at.
SLOW_MICROPHONE = """(() => {
    const md = navigator.mediaDevices;
    const real = md.getUserMedia.bind(md);
    window.__streams = [];
    md.getUserMedia = (constraints) => new Promise((resolve, reject) => {
        setTimeout(() => real(constraints).then((stream) => {
            window.__streams.push(stream);
            resolve(stream);
        }, reject), 4000);
    });
})();"""

LIVE_TRACKS = """window.__streams.flatMap((s) => s.getTracks())
    .filter((t) => t.readyState === "live").length"""


async def test_microphone_granted_after_a_missed_call_is_stopped(
        hub: Hub, chromium: Launch, procs: list[Proc]) -> None:
    browser = await chromium(PAGE_TONE)
    await browser.context.add_init_script(SLOW_MICROPHONE)
    page = await browser.open(hub_url(hub) + "/?id=pat")
    await wait_hub(page, "connected")
    cli = Proc("call", "pat", "--as", "carl", "--server", hub_url(hub), "--ring-timeout", "1.5")
    procs.append(cli)
    await wait_call_state(page, "ringing", within=30)  # the page asks for the microphone now
    assert await cli.wait() == cs.EXIT_CODES[cs.Outcome.NO_ANSWER], cli.describe()
    await wait_outcome(page, "missed")
    # The "prompt" is answered after the call was missed: that stream is stopped at once.
    await wait_js(page, "window.__streams.length === 1", within=10)
    await page.wait_for_timeout(1000)
    assert await page.evaluate(LIVE_TRACKS) == 0
    assert await page.evaluate("window.phone.microphone.stream") is None


async def page_in_a_call_with_carl(hub: Hub, chromium: Launch
                                   ) -> tuple[Any, Phone, Any]:
    """The page (pat, answered with its Accept button) in a connected call from a Phone
    (carl)."""
    page = await (await chromium(PAGE_TONE)).open(hub_url(hub) + "/?id=pat")
    await wait_hub(page, "connected")
    carl = Phone("carl", hub_url(hub))
    await carl.connect()
    call = await carl.dial("pat", ToneSource(660.0))
    await answer(page)
    await asyncio.wait_for(call.connected(), 20)
    await wait_call_state(page, "connected")
    await asyncio.sleep(1.0)
    return page, carl, call


async def test_no_url_makes_the_page_answer_a_call(hub: Hub, chromium: Launch) -> None:
    """A link such as ``/?id=victim&autoaccept=1`` (it used to answer every call) opened
    in a browser that lets the hub's page use the microphone: an attacker's call rings
    there and is not answered (nobody hears that microphone) until Accept is clicked."""
    page = await (await chromium(PAGE_TONE)).open(hub_url(hub) + "/?id=victim&autoaccept=1")
    await wait_hub(page, "connected")
    assert await page.evaluate("window.phone.autoAccept") is False
    mallory = Phone("mallory", hub_url(hub))
    await mallory.connect()
    try:
        call = await mallory.dial("victim", ToneSource(660.0))
        await wait_call_state(page, "ringing", within=30)
        await asyncio.sleep(3.0)  # an answer would have come long before
        assert call.state == cs.CallState.DIALING and call.connected_at is None, call.state
        assert (await snapshot(page))["call"]["state"] == "ringing"
        assert await page.is_visible("#incoming")
        await page.click("#accept")  # the user answers: now it connects
        await asyncio.wait_for(call.connected(), 20)
        await wait_call_state(page, "connected")
        await call.hangup()
        assert (await call.ended()).outcome == cs.Outcome.COMPLETED
    finally:
        await mallory.close()


@pytest.mark.parametrize("how", ["reload", "close"])
async def test_page_going_away_hangs_up_on_pagehide(hub: Hub, chromium: Launch,
                                                    how: str) -> None:
    """Reloaded or closed mid-call, the page hangs up as it goes (pagehide): carl's call
    completes at once, not after the hub's grace (``peer-disconnected``) or --give-up."""
    page, carl, call = await page_in_a_call_with_carl(hub, chromium)
    try:
        start = time.monotonic()
        await (page.reload() if how == "reload" else page.close())
        result = await asyncio.wait_for(call.ended(), 10)
        assert time.monotonic() - start < 3
        assert result.outcome == cs.Outcome.COMPLETED, result
        assert result.ended_by == "remote" and result.reason == "hangup", result
    finally:
        await carl.close()


async def test_page_without_the_call_hangs_up_on_its_peer(hub: Hub, chromium: Launch) -> None:
    """A reloaded page that could not say goodbye (no pagehide hangup) is a new page
    under the same id: the hub kept the call, so carl's restart offers reach it; it
    answers them with one hangup, and carl's call ends at once, not after --give-up."""
    page, carl, call = await page_in_a_call_with_carl(hub, chromium)
    try:
        await page.evaluate("window.phone.leave = () => {}")  # as if pagehide never came
        start = time.monotonic()
        await page.reload()
        await wait_hub(page, "connected")
        result = await asyncio.wait_for(call.ended(), 15)
        assert time.monotonic() - start < 12
        # (carl was restarting its media, which never came back: media-lost, at once)
        assert result.outcome == cs.Outcome.MEDIA_LOST, result
        assert result.ended_by == "remote" and result.reason == "no-such-call", result
        await asyncio.sleep(1.0)
        log = [e["text"] for e in await page.evaluate("window.phone.log")]
        assert sum("hung up on it" in text for text in log) == 1, log
        assert (await snapshot(page))["call"] is None
    finally:
        await carl.close()


async def test_a_tab_replaced_by_another_ends_its_call(hub: Hub, chromium: Launch) -> None:
    """A second tab takes the id: the first is refused (replaced) and ends its call at
    once (hub-unreachable, replaced), instead of keeping its media with nobody able to
    reach it; carl's call ends soon after (the new tab has no such call)."""
    page, carl, call = await page_in_a_call_with_carl(hub, chromium)
    try:
        second = await page.context.new_page()
        await second.goto(hub_url(hub) + "/?id=pat")
        state = await wait_outcome(page, "hub-unreachable", within=10)
        assert state["call"]["reason"] == "replaced", state
        result = await asyncio.wait_for(call.ended(), 15)
        assert result.ended_by == "remote", result
    finally:
        await carl.close()


async def fed_to_a_page_line(hub: Hub, chromium: Launch, messages: list[tuple[Any, float]],
                             *, reasons: bool = True) -> list[str]:
    """The page's own line (bob's) fed ``messages`` (each with its time): what it did
    with each, as "kind[:type:to[:reason]]" joined by commas."""
    page = await (await chromium(None)).open(hub_url(hub) + "/")
    out: list[str] = await page.evaluate("""async ([messages, reasons]) => {
        const {Line} = await import("./static/line.js");
        const line = new Line("bob", window.phone.table);
        return messages.map(([m, t]) => line.receive(m, t).map(a => a.kind +
            (a.kind === "send" ? ":" + a.message.type + ":" + a.message.to +
             (reasons && a.message.data && a.message.data.reason
              ? ":" + a.message.data.reason : "") : "")
        ).join(","));
    }""", [messages, reasons])
    return out


async def test_page_answers_stray_call_messages_with_one_hangup(hub: Hub,
                                                                 chromium: Launch) -> None:
    """The page's line: a call message of a call it does not have gets one hangup per
    peer every few seconds; a hangup, a call-request, a busy caller's do not."""
    restart = {"type": "offer", "sdp": "v=0", "restart": 2, "reason": "rtp-silence"}
    out = await fed_to_a_page_line(hub, chromium, [
        ({"type": "offer", "from": "carl", "to": "bob", "data": restart}, 0),
        ({"type": "offer", "from": "carl", "to": "bob", "data": restart}, 2),
        ({"type": "candidate", "from": "mallory", "to": "bob", "data": {"candidate": ""}}, 2),
        ({"type": "hangup", "from": "eve", "to": "bob", "data": {"reason": "hangup"}}, 2),
        ({"type": "offer", "from": "carl", "to": "bob", "data": restart}, 6),
        ({"type": "call-request", "from": "alice", "to": "bob"}, 7),
        ({"type": "answer", "from": "dave", "to": "bob",
          "data": {"type": "answer", "sdp": "v=0"}}, 8),
        ({"type": "call-request", "from": "carol", "to": "bob"}, 9),
        ({"type": "call-accept", "from": "erin", "to": "bob"}, 10),
    ])
    assert out == [
        "send:hangup:carl:no-such-call,stray", "", "send:hangup:mallory:no-such-call,stray", "",
        "send:hangup:carl:no-such-call,stray", "incoming",
        "send:hangup:dave:no-such-call,stray", "send:call-reject:carol:busy,busy",
        "send:hangup:erin:no-such-call,stray",
    ]


async def test_page_ignores_late_messages_of_an_earlier_call(hub: Hub,
                                                              chromium: Launch) -> None:
    """A call that ended lately, not only the latest one: its peer's late messages get
    no hangup for a few seconds after its end, as the phone's line does."""
    late = {"type": "candidate", "from": "alice", "to": "bob", "data": {"candidate": ""}}
    out = await fed_to_a_page_line(hub, chromium, [
        ({"type": "call-request", "from": "alice", "to": "bob"}, 0),
        ({"type": "hangup", "from": "alice", "to": "bob", "data": {"reason": "hangup"}}, 1),
        ({"type": "call-request", "from": "frank", "to": "bob"}, 2),
        (late, 3),  # alice's call ended 2 s ago; frank's is the latest
        (late, 6.5),  # 5.5 s after its end: told
    ], reasons=False)
    assert out[2:] == ["incoming", "", "send:hangup:alice,stray"], out


async def test_page_says_a_refusal_once(chromium: Launch) -> None:
    async with page_with_a_token(chromium, ice_servers=[]) as (url, browser, _):
        refused = await browser.open(f"{url}/?id=pat2&token=bad")
        await wait_hub(refused, "refused")
        await refused.wait_for_timeout(500)
        errors = (await snapshot(refused))["errors"]
        assert [e["code"] for e in errors] == ["unauthorized"], errors
        lines = await refused.locator("#errors li").all_text_contents()
        assert len(lines) == 1 and "unauthorized" in lines[0], lines


async def test_page_takes_a_new_call_from_the_peer_of_its_connected_call(
        hub: Hub, chromium: Launch) -> None:
    """The peer was started again and calls at once: the page's old call ends (as
    callstate.py's line ends it: no-such-call) and the new one rings, not ignored."""
    page = await (await chromium(None)).open(hub_url(hub) + "/")
    out = await page.evaluate("""async () => {
        const {Line} = await import("./static/line.js");
        const line = new Line("bob", window.phone.table);
        line.receive({type: "call-request", from: "carl", to: "bob"}, 0);
        line.handleLocal({type: "LocalAccept"}, 1);
        line.handleLocal({type: "MediaConnected"}, 2);
        const first = line.call;
        const actions = line.receive({type: "call-request", from: "carl", to: "bob"}, 3);
        return {kinds: actions.map(a => a.kind === "ended" ? `ended:${a.outcome}:${a.reason}`
                                                          : a.kind),
                oldState: first.state, newState: line.call.state,
                same: line.call === first};
    }""")
    assert out["kinds"][-1] == "incoming" and "ended:completed:no-such-call" in out["kinds"]
    assert out["oldState"] == "ended" and out["newState"] == "ringing" and not out["same"]
