"""What the phone library logs, and at which level, with real parts: a real hub on a
real socket, real phones in one process.

The rule (as for a lost device): what reaches someone otherwise (a call's event or
outcome, the refusal, the ``on_hub_state`` hook) is logged at info; what reaches
no one is a warning.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from softphone import Phone, ToneSource
from softphone.core.callstate import Outcome
from softphone.core.restart_events import RestartSettings
from softphone.hub.server import Hub, HubConfig
from softphone.media.audiopath import MediaConfig

from ..conftest import hub_url
from .test_restart_call import blackhole

pytestmark = pytest.mark.e2e

SECRET = "s3cret-" + "x" * 40


def records(caplog: pytest.LogCaptureFixture, logger: str, text: str) -> list[int]:
    """The levels of the records of ``logger`` whose message has ``text``."""
    return [r.levelno for r in caplog.records
            if r.name == logger and text in r.getMessage()]


async def test_a_message_the_refused_phone_could_not_send_is_info(
        caplog: pytest.LogCaptureFixture) -> None:
    """Refused by the hub (no token): the call-request of a dial then cannot go out.
    The refusal and the call's outcome say it; the library, at info only."""
    caplog.set_level(logging.INFO, logger="softphone")
    hub = Hub(HubConfig(ice_servers=[], secret=SECRET))
    await hub.start("127.0.0.1", 0)
    phone = Phone("alice", hub_url(hub))
    try:
        await phone.connect()
        await asyncio.wait_for(phone.refused.wait(), 10)
        call = await phone.dial("bob")
        result = await asyncio.wait_for(call.ended(), 10)
        assert result.outcome is Outcome.HUB_UNREACHABLE, result
        assert records(caplog, "softphone.client.phone", "could not send call-request") == [
            logging.INFO]
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING
                    and r.name == "softphone.client.phone"], caplog.text
    finally:
        await phone.close()
        await hub.stop()


async def restarted(hub: Hub, phone: Phone) -> Hub:
    """Stop ``hub``, wait until ``phone`` sees it gone, start a new one on its port and
    wait until ``phone`` is back on it."""
    port = hub.port
    assert port is not None
    await hub.stop()
    loop = asyncio.get_running_loop()
    end = loop.time() + 10
    while phone.hub_connected.is_set():
        assert loop.time() < end, "the phone did not see the hub go"
        await asyncio.sleep(0.02)
    again = Hub(HubConfig(ice_servers=[]))
    await again.start("127.0.0.1", port)
    await asyncio.wait_for(phone.hub_connected.wait(), 15)
    return again


async def test_losing_and_regaining_the_hub_goes_to_the_hook(
        caplog: pytest.LogCaptureFixture) -> None:
    """The hub restarts on its port. Without ``on_hub_state`` the loss is a warning;
    with it, the hook hears False then True, and the library logs both at info."""
    caplog.set_level(logging.INFO, logger="softphone")
    logger = "softphone.client.phone"
    hub = Hub(HubConfig(ice_servers=[]))
    await hub.start("127.0.0.1", 0)
    phone = Phone("alice", hub_url(hub))
    states: list[tuple[bool, str]] = []
    try:
        await phone.connect()
        hub = await restarted(hub, phone)
        assert records(caplog, logger, "lost the hub connection") == [logging.WARNING]
        assert records(caplog, logger, "reconnected to the hub") == [logging.INFO]
        caplog.clear()
        phone.on_hub_state = lambda up, description: states.append((up, description))
        hub = await restarted(hub, phone)
        assert [up for up, _ in states] == [False, True], states
        assert states[0][1].startswith("lost the hub connection (code ") \
            and states[0][1].endswith("), reconnecting"), states
        assert states[1][1] == "reconnected to the hub"
        assert records(caplog, logger, "lost the hub connection") == [logging.INFO]
        assert records(caplog, logger, "reconnected to the hub") == [logging.INFO]
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING
                    and r.name == logger], caplog.text
    finally:
        await phone.close()
        await hub.stop()


async def test_lost_media_is_a_warning_only_for_a_call_nobody_listens_to(
        hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    """The media dies: the call's ``media-lost`` event tells a's listener (a logs it at
    info); b's call has no listener, so b logs it as a warning."""
    caplog.set_level(logging.INFO, logger="softphone")
    media = MediaConfig(restart=RestartSettings(give_up=40.0))
    a, b = Phone("a", hub_url(hub), media=media), Phone("b", hub_url(hub), media=media)
    events: list[dict[str, Any]] = []
    await a.connect()
    await b.connect()
    try:
        call_a = await a.dial("b", ToneSource(440), on_event=events.append)
        call_b = await b.next_call()
        await call_b.accept(ToneSource(660))
        await asyncio.wait_for(call_a.connected(), 20)
        await asyncio.wait_for(call_b.connected(), 20)
        blackhole(call_b.media)
        loop = asyncio.get_running_loop()
        end = loop.time() + 15
        logger = "softphone.client.restart_link"
        while not (records(caplog, logger, "media lost with b")
                   and records(caplog, logger, "media lost with a")):
            assert loop.time() < end, caplog.text
            await asyncio.sleep(0.05)
        assert [e for e in events if e.get("event") == "media-lost"], events
        assert records(caplog, logger, "media lost with b")[0] == logging.INFO  # (a's)
        assert records(caplog, logger, "media lost with a")[0] == logging.WARNING  # (b's)
    finally:
        await a.close()
        await b.close()
