"""The plain decision of whether a closed hub connection was a refusal or a loss;
and a hub full in total, on a real hub with real phones."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest

from softphone.client.hubcheck import FIRST_BACKOFF, MAX_BACKOFF
from softphone.client.hubconnection import FULL_FOR_US, RefusalWatch
from softphone.client.phone import Phone
from softphone.core.protocol import ErrorCode, HubError
from softphone.hub.server import Hub, HubConfig

UNAUTHORIZED = HubError(ErrorCode.UNAUTHORIZED, "bad token")
FULL_US = HubError(ErrorCode.TOO_MANY_CONNECTIONS, FULL_FOR_US)
FULL_ALL = HubError(ErrorCode.TOO_MANY_CONNECTIONS, "the hub is full")


def test_a_refusal_is_its_error_then_a_policy_close() -> None:
    watch = RefusalWatch()
    watch.error(UNAUTHORIZED)
    assert watch.closed(1008) == UNAUTHORIZED
    watch.error(UNAUTHORIZED)
    assert watch.closed(1006) is None  # (the error, then a lost connection: a loss)
    assert watch.closed(1008) is None  # (a policy close with no refusal said on it)


def test_a_hub_full_for_us_refuses_only_the_first_connection() -> None:
    watch = RefusalWatch()
    watch.error(FULL_US)
    assert watch.closed(1013) == FULL_US
    again = RefusalWatch()
    assert again.closed(1001) is None  # the first connection worked; lost later
    again.error(FULL_US)
    assert again.closed(1013) is None  # reconnecting: keep trying


def test_a_hub_full_in_total_is_never_a_refusal() -> None:
    watch = RefusalWatch()
    watch.error(FULL_ALL)
    assert watch.closed(1013) is None


def test_other_errors_are_no_refusal() -> None:
    watch = RefusalWatch()
    watch.error(HubError(ErrorCode.OFFLINE, "b is offline"))
    assert watch.closed(1008) is None


FULL_SAID = "the hub is full (code 1013): trying again, less often while it stays full"


def test_a_hub_full_in_total_is_said_once_and_keeps_the_backoff() -> None:
    watch = RefusalWatch()
    assert watch.opened()  # (nothing turned away yet: "reconnected" at the handshake)
    assert not watch.works(FULL_ALL)  # the hub's refusal: no reset of the backoff
    assert watch.closed(1013) is None
    assert watch.loss(1013, True) == (True, FULL_SAID)
    for _ in range(3):  # turned away again and again: only logged, never "reconnected"
        assert not watch.opened()
        assert not watch.works(FULL_ALL)
        assert not watch.kept()  # (the hub said full on it: its close is coming)
        assert watch.closed(1013) is None
        assert watch.loss(1013, True) == (False, "the hub is still full (code 1013): "
                                                 "trying again")
    assert not watch.opened()
    assert watch.kept()  # kept open a while: "reconnected", once
    assert not watch.kept()
    assert watch.closed(1006) is None
    assert watch.loss(1006, True) == (True, "lost the hub connection (code 1006), "
                                            "reconnecting")
    assert watch.opened()


def test_a_message_shows_a_connection_kept() -> None:
    watch = RefusalWatch()
    watch.works(FULL_ALL)
    watch.closed(1013)
    assert not watch.opened()
    assert watch.works(HubError(ErrorCode.OFFLINE, "b is offline"))
    assert watch.kept() and watch.turned_away == 0
    assert watch.closed(1000) is None
    assert watch.loss(1000, False) == (True, "lost the hub connection (code 1000), "
                                             "not reconnecting")


async def _until(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within  # (a hang guard, far above what it takes)
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_a_full_hub_is_tried_again_less_often_and_said_once(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A hub at max_connections takes each upgrade, says it is full and closes (1013):
    the phone says so once, its backoff grows to the longest (not reset by each
    refused connection), it never says "reconnected" for one; once the hub has
    room it is back, said once. The hub warns once, and again only after it had room."""
    caplog.set_level(logging.INFO)
    hub = Hub(HubConfig(ice_servers=[], max_connections=1))
    await hub.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{hub.port}"
    m1, m2, m3 = (Phone(name, url, ice_servers=[]) for name in ("m1", "m2", "m3"))
    said: list[tuple[bool, str]] = []
    m2.on_hub_state = lambda up, text: said.append((up, text))
    backoffs: list[float] = []

    async def quick(backoff: float) -> None:  # (the pauses asked for, not waited out)
        backoffs.append(backoff)
        await asyncio.sleep(0.05)

    monkeypatch.setattr(m2.hub_check, "pause", quick)

    def hub_warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.name == "softphone.hub.server" and r.levelno >= logging.WARNING
                and "full" in r.getMessage()]
    try:
        await m1.connect()
        await m2.connect()  # (the handshake goes through: then the hub turns it away)
        await _until(lambda: len(backoffs) >= 8, 30, "no attempts")
        assert backoffs[:7] == [FIRST_BACKOFF * 2 ** i for i in range(5)] + [MAX_BACKOFF] * 2
        assert said == [(False, FULL_SAID)]
        assert len(hub_warnings()) == 1, hub_warnings()
        await m1.close()  # room: the next attempt is kept
        await _until(lambda: len(said) > 1, 30, "not reconnected")
        assert said == [(False, FULL_SAID), (True, "reconnected to the hub")]
        assert m2.hub_connected.is_set()
        assert len(hub_warnings()) == 1
        await m3.connect()  # full again (m2 took the room): the hub says it again
        await _until(lambda: len(hub_warnings()) == 2, 30, "no second warning")
    finally:
        for phone in (m3, m2, m1):
            await phone.close()
        await hub.stop()
