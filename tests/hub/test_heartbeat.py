"""The hub's heartbeat: pings spread over the interval, dead clients still dropped
within 1.5 heartbeats (softphone/hub/heartbeat.py).

The wheel's bookkeeping is pure and tested with stand-in connections (they only
count pings and aborts); the rest runs a real hub with raw WebSocket clients
that note when each ping comes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from softphone.hub.heartbeat import MAX_SLOTS, TICK, Wheel, slots_for
from softphone.hub.server import Hub, HubConfig

# ---------------------------------------------------------------- the wheel ---


@dataclass(eq=False)
class Stub:
    """A stand-in connection: what the wheel reads and calls, counted."""

    quiet: int = 0
    slot: int = 0
    dropped: bool = False
    pings: int = 0
    aborts: int = 0

    def ping(self) -> None:
        self.pings += 1

    def abort(self) -> None:
        self.aborts += 1


def test_slots_follow_the_interval() -> None:
    assert slots_for(15.0) == round(7.5 / TICK) == 300
    assert slots_for(0.3) == 6
    assert slots_for(0.01) == 1
    assert slots_for(3600.0) == MAX_SLOTS


def test_connections_fill_the_slots_in_turn() -> None:
    wheel: Wheel[Stub] = Wheel(3)
    stubs = [Stub() for _ in range(10)]
    for stub in stubs:
        wheel.add(stub)
    assert [s.slot for s in stubs] == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    assert wheel.size == 10 and set(wheel) == set(stubs)
    wheel.discard(stubs[0])
    wheel.discard(stubs[0])  # (twice: no harm)
    assert wheel.size == 9 and stubs[0] not in set(wheel)


def test_a_visit_touches_one_slot_pings_at_two_and_times_out_at_three() -> None:
    wheel: Wheel[Stub] = Wheel(2)
    quiet, talking, dropped = Stub(), Stub(), Stub(dropped=True)
    other = Stub()
    for stub in (quiet, other, talking, dropped):  # slots 0, 1, 0, 1
        wheel.add(stub)
    extra = Stub()
    wheel.add(extra)  # slot 0
    late: list[Stub] = []
    wheel.visit(0, late.append)
    assert (quiet.quiet, talking.quiet, other.quiet) == (1, 1, 0)
    wheel.visit(0, late.append)
    assert quiet.pings == talking.pings == 1 and other.pings == 0
    talking.quiet = 0  # it answered (a connection resets this when it reads anything)
    wheel.visit(0, late.append)
    assert set(late) == {quiet, extra} and quiet.pings == 1 and talking.pings == 1
    late.clear()
    for _ in range(3):
        wheel.visit(1, late.append)
    assert dropped.pings == 0 and set(late) == {other, dropped}
    assert quiet.aborts == 0  # (what to do is the caller's: the hub aborts)


# ------------------------------------------------------------- a live hub ---


UPGRADE = ("GET /ws?id={id} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Version: 13\r\n\r\n")


class RawClient:
    """A WebSocket client on a raw socket that notes when pings come (and answers them
    with ``answer``), and when the hub drops it."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.pings: list[float] = []
        self.gone: float | None = None
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def open(self, port: int, client_id: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(UPGRADE.format(id=client_id).encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.opened = time.monotonic()
        self._writer = writer
        self._task = asyncio.create_task(self._read(reader, writer))

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(2)
                payload = await reader.readexactly(head[1] & 0x7F)
                if head[0] == 0x89:
                    self.pings.append(time.monotonic())
                    if self.answer:  # a masked pong with the same payload
                        writer.write(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.gone = time.monotonic()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._writer.close()


async def started(heartbeat: float) -> Hub:
    hub = Hub(HubConfig(ice_servers=[], heartbeat=heartbeat, max_per_address=0))
    await hub.start("127.0.0.1", 0)
    return hub


async def until(check: Callable[[], bool], what: str, within: float = 30.0) -> None:
    """Wait until ``check()``; ``within`` is a hang guard (far above what it takes)."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_pings_are_spread_over_the_interval() -> None:
    """Many quiet clients are pinged over the whole half heartbeat, a slice per
    tick, not all in one event-loop turn.

    Checked on the heartbeat's turns (which turn of the event loop's timer each
    visit ran in, which slot it looked at, how many it pinged), not on when the
    pings arrived: a loaded machine delays and bunches arrivals, not the slices."""
    heartbeat = 2.0
    hub = await started(heartbeat)
    heart = hub._heartbeat
    assert heart is not None
    wheel = heart.wheel
    visits: list[tuple[int, int, int]] = []  # (turn, slot, connections it pinged)
    turns = 0
    visit, turn = wheel.visit, heart._turn

    def counted(index: int, timed_out: Callable[[Any], None]) -> None:
        slot = wheel._slots[index]
        due = sum(1 for conn in slot if conn.quiet == 1 and not conn.dropped)  # pinged now
        visit(index, timed_out)
        visits.append((turns, index, due))

    def counted_turn() -> None:
        nonlocal turns
        turns += 1
        turn()

    wheel.visit = counted  # type: ignore[method-assign]
    # (each turn schedules the next with the attribute looked up again: this one)
    heart._turn = counted_turn  # type: ignore[method-assign]
    clients = [RawClient(answer=True) for _ in range(200)]
    try:
        assert hub.port is not None
        for i, client in enumerate(clients):
            await client.open(hub.port, f"c{i}")
        await until(lambda: all(c.pings for c in clients), "a quiet client was not pinged")
        per_visit = [n for _, _, n in visits if n]
        per_turn: dict[int, int] = {}
        for at, _, n in visits:
            if n:
                per_turn[at] = per_turn.get(at, 0) + n
        slots, share = len(wheel), -(-len(clients) // len(wheel))
        # Each visit, and each turn of the loop, pinged one slot's share of the clients,
        # never all of them at once; the pings came from (about) every slot, one after
        # the other, in turns of their own.
        assert max(per_visit) <= share, visits
        assert max(per_turn.values()) <= share, per_turn
        assert len(per_turn) >= min(10, slots), f"pings in only {len(per_turn)} turns"
        assert len(per_visit) >= min(10, slots), f"pings in only {len(per_visit)} visits"
        assert len({i for _, i, n in visits if n}) >= min(10, slots), visits
        assert all(c.gone is None for c in clients)  # they answer: none dropped
    finally:
        for client in clients:
            client.close()
        await hub.stop()


@pytest.mark.parametrize("heartbeat", [0.4, 1.0])
async def test_a_silent_client_is_pinged_once_then_dropped(heartbeat: float) -> None:
    """A client that answers nothing is pinged once and then dropped; one that
    answers stays. (That this takes 1 to 1.5 heartbeats is the wheel's count of
    half heartbeats, checked above without a clock.)"""
    hub = await started(heartbeat)
    silent, alive = RawClient(answer=False), RawClient(answer=True)
    try:
        assert hub.port is not None
        await silent.open(hub.port, "silent")
        await alive.open(hub.port, "alive")
        await until(lambda: silent.gone is not None, "the silent client was not dropped")
        assert silent.gone is not None
        assert len(silent.pings) == 1 and silent.pings[0] <= silent.gone  # pinged, dropped
        await until(lambda: bool(alive.pings), "the answering client was not pinged")
        await asyncio.sleep(heartbeat)
        assert alive.gone is None and alive.pings
        assert hub.registry.local_count() == 1
    finally:
        silent.close()
        alive.close()
        await hub.stop()
