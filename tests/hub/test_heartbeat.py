"""The hub's heartbeat: pings spread over the interval, dead clients still dropped
within 1.5 heartbeats (softphone/hub/heartbeat.py).

The wheel's bookkeeping is pure and tested with stand-in connections (they only
count pings and aborts); the rest runs a real hub with raw WebSocket clients
that note when each ping comes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

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


async def test_pings_are_spread_over_the_interval() -> None:
    """Many quiet clients are pinged over the whole half heartbeat, a slice per
    tick, not all in one event-loop turn."""
    heartbeat = 2.0
    hub = await started(heartbeat)
    clients = [RawClient(answer=True) for _ in range(200)]
    try:
        assert hub.port is not None
        for i, client in enumerate(clients):
            await client.open(hub.port, f"c{i}")
        await asyncio.sleep(1.6 * heartbeat)
        firsts = sorted(c.pings[0] for c in clients if c.pings)
        assert len(firsts) == len(clients), "a quiet client was not pinged in time"
        span = firsts[-1] - firsts[0]
        moments = {round(t / TICK) for t in firsts}
        assert span > heartbeat / 4, f"pings all within {span * 1000:.0f} ms"
        assert len(moments) >= 10, f"pings at only {len(moments)} moments"
        assert all(c.gone is None for c in clients)  # they answer: none dropped
    finally:
        for client in clients:
            client.close()
        await hub.stop()


@pytest.mark.parametrize("heartbeat", [0.4, 1.0])
async def test_a_silent_client_is_dropped_within_one_and_a_half_heartbeats(
        heartbeat: float) -> None:
    hub = await started(heartbeat)
    silent, alive = RawClient(answer=False), RawClient(answer=True)
    try:
        assert hub.port is not None
        await silent.open(hub.port, "silent")
        await alive.open(hub.port, "alive")
        for _ in range(int(4 * heartbeat / 0.02)):
            if silent.gone is not None:
                break
            await asyncio.sleep(0.02)
        assert silent.gone is not None, "the silent client was not dropped"
        took = silent.gone - silent.opened
        tick = heartbeat / 2 / slots_for(heartbeat)
        # 1 to 1.5 heartbeats after it last sent anything, give or take a tick (and
        # this shared machine's scheduling, upwards).
        assert heartbeat - 2 * tick <= took <= 1.5 * heartbeat + 2 * tick + 0.5, took
        assert len(silent.pings) == 1  # pinged once, then dropped
        await asyncio.sleep(heartbeat)
        assert alive.gone is None and alive.pings
        assert hub.registry.local_count() == 1
    finally:
        silent.close()
        alive.close()
        await hub.stop()
