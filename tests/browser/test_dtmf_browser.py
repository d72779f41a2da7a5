"""The browser phone's keypad: real Chromium's ``RTCRtpSender.dtmf.insertDTMF`` to a CLI phone.

Chromium offers ``telephone-event/48000`` and ``/8000`` and was seen sending
each digit as only its three end packets on the 8000 Hz payload type; the
CLI must report each key once, whichever side offered.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from softphone.hub.server import Hub

from ..conftest import Proc, hub_url
from ..support.browser import connect_as, dial, snapshot, wait_call_state, wait_js
from .conftest import SESSION_LOOP, Launch, answer

pytestmark = [pytest.mark.e2e, SESSION_LOOP]


def dtmf_events(proc: Proc) -> list[dict[str, Any]]:
    out = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return [e for e in out if e.get("event") == "dtmf"]


async def wait_digits(proc: Proc, count: int) -> list[dict[str, Any]]:
    for _ in range(count):
        await proc.wait_for_output('"event":"dtmf"', within=10)
    return dtmf_events(proc)


async def test_page_keypad_to_a_cli_phone(hub: Hub, chromium: Launch, procs: list[Proc]
                                          ) -> None:
    bob = Proc("listen", "--as", "bob", "--server", hub_url(hub), "--auto-accept", "--once",
               "--json", "--tone", "660", "--no-audio")
    procs.append(bob)
    await bob.wait_for_output('"listening"', within=30)
    browser = await chromium()
    page = await browser.open(hub_url(hub) + "/")
    await connect_as(page, "alice")
    assert await page.is_disabled("#keypad button[data-key='5']")  # no call: no keys
    await dial(page, "bob")
    await wait_call_state(page, "connected")
    await page.wait_for_timeout(500)
    sent = ""
    for key in ("5", "0", "#"):  # the keypad's buttons
        await page.click(f"#keypad button[data-key='{key}']")
        sent += key  # the key's tone has started (the next is played after it)
        await wait_js(page, f"window.phone.keysSent === {json.dumps(sent)}")
    heard = await wait_digits(bob, 3)
    assert [e["digit"] for e in heard] == ["5", "0", "#"], bob.stdout
    assert all(80 <= e["duration_ms"] <= 160 for e in heard), heard
    await wait_js(page, "window.phone.snapshot().keysSent === '50#'")
    assert await page.text_content("#keys-sent") == "50#"
    # A string of keys with a pause, as insertDTMF takes it.
    assert await page.evaluate("window.phone.pressKeys('12')")
    heard = await wait_digits(bob, 2)
    assert [e["digit"] for e in heard][-2:] == ["1", "2"]
    await page.click("#hangup")
    assert await bob.wait(15) == 0, bob.stderr
    assert (await snapshot(page))["errors"] == []


async def test_cli_calls_the_page_and_the_page_presses_keys(hub: Hub, chromium: Launch,
                                                            procs: list[Proc]) -> None:
    """We offer, Chromium answers: its keys still reach us, each once."""
    browser = await chromium()
    page = await browser.open(hub_url(hub) + "/?id=page")
    await wait_js(page, "window.phone.hub === 'connected'")
    alice = Proc("call", "page", "--as", "alice", "--server", hub_url(hub), "--tone", "440",
                 "--json", "--no-audio")
    procs.append(alice)
    await answer(page)
    await wait_call_state(page, "connected")
    await page.wait_for_timeout(500)
    await page.keyboard.press("7")  # the keyboard works too, outside the id fields
    await wait_js(page, "window.phone.keysSent === '7'")  # its tone has started
    await page.keyboard.press("*")
    heard = await wait_digits(alice, 2)
    assert [e["digit"] for e in heard] == ["7", "*"], alice.stdout
    await wait_js(page, "window.phone.keysSent === '7*'")
    await page.click("#hangup")
    assert await alice.wait(20) == 0, alice.stderr
