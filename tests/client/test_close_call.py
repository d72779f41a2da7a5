"""``Phone.close()`` right after a hang-up, with real parts: two phones in one process
through our hub on real sockets, real aiortc peer connections.

A phone that hangs up and closes at once (``softphone call`` ending on its own, a bot
done with a caller) must still tell the peer: the ``hangup`` queued by the end of its
last call goes out before the hub connection closes. Lost, the peer saw the caller
vanish instead (``peer-disconnected`` from the hub after its grace, or its media dying
first: ``media-lost``, exit code 14).
"""

from __future__ import annotations

import asyncio

import pytest

from softphone import Phone, ToneSource
from softphone.core.callstate import ExitCode, Outcome
from softphone.hub.server import Hub, HubConfig

from ..conftest import hub_url

pytestmark = pytest.mark.e2e


async def test_a_hangup_then_close_at_once_reaches_the_peer() -> None:
    # A short grace: on a lost hangup the hub tells b ``peer-disconnected`` soon.
    hub = Hub(HubConfig(ice_servers=[], peer_grace=0.5))
    await hub.start("127.0.0.1", 0)
    a, b = Phone("a", hub_url(hub)), Phone("b", hub_url(hub))
    a_closed = False
    try:
        await a.connect()
        await b.connect()
        call_a = await a.dial("b", ToneSource(440))
        call_b = await asyncio.wait_for(b.next_call(), 10)
        await call_b.accept(ToneSource(660))
        await asyncio.wait_for(call_a.connected(), 20)
        await asyncio.wait_for(call_b.connected(), 20)
        await call_a.hangup()
        assert a.calls == []  # ended: close() has no call left to hang up ...
        await a.close()  # ... but the hangup is still queued: it goes out first
        a_closed = True
        result_b = await asyncio.wait_for(call_b.ended(), 10)
        assert (result_b.outcome, result_b.ended_by, result_b.reason) == \
            (Outcome.COMPLETED, "remote", "hangup"), result_b
        assert result_b.exit_code == ExitCode.COMPLETED
        result_a = await asyncio.wait_for(call_a.ended(), 5)
        assert (result_a.outcome, result_a.ended_by) == (Outcome.COMPLETED, "local")
    finally:
        if not a_closed:
            await a.close()
        await b.close()
        await hub.stop()
