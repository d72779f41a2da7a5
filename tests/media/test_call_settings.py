"""Every setting travels with its call: phones in one process each send with their own.

Real aiortc peers, a real hub, one process. What each phone actually sends is
measured: RTP payload bytes per packet from its sender's statistics (one
packet every 20 ms, so bytes x 8 x 50 is the bitrate, whatever the load),
and whether the packets that reached its peer were RED. Before the settings
were per call, every encoder took the settings of the last call set up, so
both sides of the first call below sent at the same bitrate.
"""

from __future__ import annotations

import asyncio

import numpy as np

from softphone import Phone
from softphone.client.call import Call
from softphone.hub.server import Hub
from softphone.media.audio import Int16Array
from softphone.media.audiopath import MediaConfig
from softphone.media.opus import EncoderSettings
from softphone.media.tracks import PacedSource

from ..conftest import hub_url

LOW = MediaConfig(encoder=EncoderSettings(bitrate=32_000, redundancy=0))
# Fixed settings (no adaptation): on a clean path the adaptation would send no RED.
HIGH = MediaConfig(encoder=EncoderSettings(bitrate=128_000, redundancy=1, adapt=False))


class NoiseSource(PacedSource):
    """Loud white noise: Opus spends its whole bitrate on it (a tone would not)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.rng = np.random.default_rng(seed)

    def next_samples(self, count: int) -> Int16Array:
        return (self.rng.standard_normal(count) * 6000).astype(np.int16)


def kbps_per_packet(stats_before: tuple[int, int], stats_after: tuple[int, int]) -> float:
    """Payload bitrate from (packets, bytes) sent: bytes per 20 ms packet x 8 x 50."""
    packets = stats_after[0] - stats_before[0]
    assert packets >= 50, f"only {packets} packets sent"
    return (stats_after[1] - stats_before[1]) / packets * 8 * 50 / 1000


async def sent(call: Call) -> tuple[int, int]:
    stats = await call.stats()
    return stats.packets_sent, stats.bytes_sent


def red_share(call: Call) -> float:
    """Share of the packets ``call`` received that were RED."""
    assert call.audio is not None and call.audio.playout is not None
    playout = call.audio.playout
    return playout.stats.red_packets / max(1, playout.buffer.stats.received)


async def test_two_phones_in_one_process_send_with_their_own_bitrate_and_redundancy(
        hub: Hub) -> None:
    """32 kbit/s without RED and 128 kbit/s with RED 1, in one call and beside another."""
    url = hub_url(hub)
    phones = {"low": Phone("low", url, media=LOW), "high": Phone("high", url, media=HIGH),
              "red-a": Phone("red-a", url, media=HIGH), "red-b": Phone("red-b", url, media=HIGH)}
    for phone in phones.values():
        await phone.connect()
    try:
        # Both calls are set up at once: the mixed one (no RED agreed, as "low"
        # does not do it) and one where both sides send RED.
        low = await phones["low"].dial("high", NoiseSource(1))
        red_a = await phones["red-a"].dial("red-b", NoiseSource(2))
        high = await phones["high"].next_call()
        red_b = await phones["red-b"].next_call()
        await high.accept(NoiseSource(3))
        await red_b.accept(NoiseSource(4))
        calls = {"low": low, "high": high, "red-a": red_a, "red-b": red_b}
        for call in calls.values():
            await asyncio.wait_for(call.connected(), 20)
        await asyncio.sleep(1.0)  # past the encoders' start
        before = {name: await sent(call) for name, call in calls.items()}
        await asyncio.sleep(3.0)
        rates = {name: kbps_per_packet(before[name], await sent(call))
                 for name, call in calls.items()}
        red = {name: red_share(call) for name, call in calls.items()}
        codecs = {name: call.codec for name, call in calls.items()}
        for call in (low, red_a):
            await call.hangup()
            await call.ended()
    finally:
        for phone in phones.values():
            await phone.close()
    assert codecs == {"low": "opus/48000", "high": "opus/48000",
                      "red-a": "opus/48000+red", "red-b": "opus/48000+red"}, codecs
    # Each sends at its own bitrate (RED 1 carries every frame twice).
    assert 16 <= rates["low"] <= 42, rates
    assert 100 <= rates["high"] <= 160, rates
    assert 200 <= rates["red-a"] <= 320 and 200 <= rates["red-b"] <= 320, rates
    # What reached each peer: plain Opus from the mixed call, RED from the other.
    assert red["low"] == 0 and red["high"] == 0, red
    assert red["red-a"] > 0.95 and red["red-b"] > 0.95, red
