"""The verification code in the Python API: ``Call.sas`` and the ``media`` event's ``"sas"``.

Real aiortc peers in one process: through our hub both sides get the same
code, the one :mod:`softphone.core.sas` derives from the two peer
connections' SDPs; through the hostile hub (tests/support/hostile_hub.py,
a man in the middle) they get different codes, each the one of the
fingerprints that side really used.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from softphone import Phone, ToneSource
from softphone.client.call import Call
from softphone.core.sas import SAS_BYTES, sas_from_sdp
from softphone.hub.server import Hub

from ..conftest import hub_url
from ..support.hostile_hub import HostileHub

pytestmark = pytest.mark.e2e


def media_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("event") == "media"]


async def connected_pair(url: str) -> tuple[Phone, Phone, Call, Call,
                                             list[dict[str, Any]], list[dict[str, Any]]]:
    """``a`` calls ``b`` through the hub at ``url``; both connected (closed by the caller)."""
    a, b = Phone("a", url), Phone("b", url)
    await a.connect()
    await b.connect()
    events_a: list[dict[str, Any]] = []
    events_b: list[dict[str, Any]] = []
    call_a = await a.dial("b", ToneSource(440), on_event=events_a.append)
    assert call_a.sas is None  # ringing: no media, no code
    call_b = await b.next_call()
    call_b.on_event(events_b.append)
    assert call_b.sas is None
    await call_b.accept(ToneSource(660))
    await asyncio.wait_for(call_a.connected(), 20)
    await asyncio.wait_for(call_b.connected(), 20)
    return a, b, call_a, call_b, events_a, events_b


async def wait_media_event(events: list[dict[str, Any]]) -> dict[str, Any]:
    for _ in range(200):
        if media_events(events):
            return media_events(events)[0]
        await asyncio.sleep(0.01)
    raise AssertionError(f"no media event: {events}")


def code_of_own_sdps(call: Call) -> str:
    assert call.media is not None
    local, remote = call.media.descriptions()
    assert local is not None and remote is not None
    return str(sas_from_sdp(local, remote))


async def test_both_sides_of_a_call_through_our_hub_have_the_same_code(hub: Hub) -> None:
    a, b, call_a, call_b, events_a, events_b = await connected_pair(hub_url(hub))
    try:
        # Set by the time connected() returns, on both sides, and the same.
        assert call_a.sas is not None and call_b.sas is not None
        assert call_a.sas == call_b.sas
        assert len(call_a.sas.split(" ")) == SAS_BYTES
        # It is the code of the peer connections' own two fingerprints.
        assert call_a.sas == code_of_own_sdps(call_a) == code_of_own_sdps(call_b)
        # And the media event carries it.
        media_a, media_b = await wait_media_event(events_a), await wait_media_event(events_b)
        assert media_a["sas"] == media_b["sas"] == call_a.sas
        assert media_a["codec"] and media_a["candidate_pair"], media_a
        await call_a.hangup()
        await asyncio.wait_for(call_b.ended(), 10)
        assert call_a.sas == call_b.sas  # kept after the end
        # The media event came once, before the end.
        kinds = [e["event"] for e in events_a]
        assert kinds.count("media") == 1 and kinds.index("media") < kinds.index("ended"), kinds
    finally:
        await a.close()
        await b.close()


async def test_through_a_man_in_the_middle_the_codes_differ() -> None:
    hostile = HostileHub(bridge=True)
    await hostile.start()
    try:
        a, b, call_a, call_b, events_a, events_b = await connected_pair(hostile.url)
        try:
            assert len(hostile.bridges) == 1  # really bridged
            assert call_a.sas is not None and call_b.sas is not None
            assert call_a.sas != call_b.sas
            # Each is the code of the fingerprints that side used, as the hub saw them.
            assert call_a.sas == str(hostile.expected_sas("a"))
            assert call_b.sas == str(hostile.expected_sas("b"))
            assert (await wait_media_event(events_a))["sas"] == call_a.sas
            assert (await wait_media_event(events_b))["sas"] == call_b.sas
        finally:
            await a.close()
            await b.close()
        assert hostile.errors == []
    finally:
        await hostile.stop()
