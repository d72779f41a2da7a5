"""Adapter test of hold (:mod:`softphone.client.hold_link`) against fakes (tests/client/fakes.py).

A fake hub (in-memory routing, the real wire format) that loses the peer's
first acknowledgements: the hold change is sent again every second, on the
phone's loop clock, until one gets through; the peer answers every copy but
tells its user once. (Audio is checked in the real calls: test_hold.py.)
"""

from __future__ import annotations

import asyncio
from typing import Any

from softphone.client.phone import Phone
from softphone.core.callstate import CallTimeouts
from softphone.core.midcall import FEATURE_HOLD
from softphone.core.protocol import Message

from .fakes import FakeHub, FakeMediaFactory


class LossyHub(FakeHub):
    """Loses the first ``lose`` hold acknowledgements (``answer`` with ``hold``)."""

    def __init__(self, lose: int) -> None:
        super().__init__()
        self.lose = lose
        self.lost: list[Message] = []

    def deliver(self, sender: str, message: Message) -> None:
        data = message.data
        if message.type == "answer" and isinstance(data, dict) and "hold" in data \
                and len(self.lost) < self.lose:
            self.lost.append(message)
            return
        super().deliver(sender, message)

    def holds(self, sender: str, kind: str) -> list[tuple[bool, int]]:
        return [(m.data["hold"], m.data["seq"]) for m in self.log
                if m.sender == sender and m.type == kind and isinstance(m.data, dict)
                and "hold" in m.data]


async def test_a_hold_change_is_sent_every_second_until_acknowledged() -> None:
    hub = LossyHub(lose=2)
    timeouts = CallTimeouts(ring=2.0, setup=2.0)
    a, b = (Phone(name, timeouts=timeouts, reconnect=False, hub=hub.connection(name),
                  media_factory=FakeMediaFactory()) for name in ("a", "b"))
    events_b: list[dict[str, Any]] = []
    for phone in (a, b):
        await phone.connect()
    try:
        call_a = await a.dial("b")
        call_b = await asyncio.wait_for(b.next_call(), 2)
        call_b.on_event(events_b.append)
        await call_b.accept()
        await asyncio.wait_for(call_a.connected(), 2)
        await asyncio.wait_for(call_b.connected(), 2)
        assert FEATURE_HOLD in call_a.peer_features and FEATURE_HOLD in call_b.peer_features

        await call_a.hold()
        await asyncio.sleep(2.5)  # sent at 0, again at 1 and 2 s: the third ack arrives
        assert hub.holds("a", "offer") == [(True, 1)] * 3
        assert hub.holds("b", "answer") == [(True, 1)]  # (two were lost on the way)
        assert len(hub.lost) == 2
        await asyncio.sleep(1.2)
        assert hub.holds("a", "offer") == [(True, 1)] * 3  # acknowledged: no more
        assert [e["event"] for e in events_b if e["event"] in ("hold", "resume")] == ["hold"]
        assert call_b.held_by_remote

        await call_a.resume()
        await asyncio.sleep(0.1)
        assert hub.holds("a", "offer")[-1] == (False, 2)
        assert hub.holds("b", "answer")[-1] == (False, 2)
        assert not call_b.held_by_remote
        await call_a.hangup()
        await asyncio.wait_for(call_b.ended(), 2)
    finally:
        await a.close()
        await b.close()
