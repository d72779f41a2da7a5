"""``softphone demo``: an embedded hub and two phones calling each other.

Everything runs in one process on real sockets: the hub listens on a free
port, phone A calls phone B through it, each sends the other its own tone,
and each checks the frequency of what it received.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from softphone.client.phone import Call, CallResult, Phone
from softphone.hub.server import Hub, HubConfig
from softphone.media.audio import dominant_frequency, tone_purity
from softphone.media.rtc import MediaStats
from softphone.media.sinks import CaptureSink
from softphone.media.tracks import ToneSource

#: Received frequency must be within this many Hz of the tone sent.
FREQUENCY_TOLERANCE = 5.0


@dataclass(frozen=True)
class SideReport:
    name: str
    sent_hz: float
    expected_hz: float
    received_hz: float
    purity: float
    result: CallResult
    stats: MediaStats

    @property
    def ok(self) -> bool:
        return abs(self.received_hz - self.expected_hz) <= FREQUENCY_TOLERANCE \
            and self.purity > 0.5

    def lines(self) -> list[str]:
        s = self.stats
        lost = s.packets_lost
        total = s.packets_received + lost
        loss = 100.0 * lost / total if total else 0.0

        def ms(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.1f} ms"

        setup = self.result.first_audio_seconds
        return [
            f"{self.name}: {'OK' if self.ok else 'FAILED'}  received {self.received_hz:.1f} Hz"
            f" (expected {self.expected_hz:.0f} Hz, {100 * self.purity:.0f}% of energy)",
            f"  setup: connected {_secs(self.result.setup_seconds)}, first audio"
            f" {_secs(setup)} after call-request",
            f"  packets: sent {s.packets_sent}, received {s.packets_received},"
            f" lost {lost} ({loss:.1f}%)",
            f"  rtt {ms(s.rtt_ms)}, jitter {ms(s.jitter_ms)}",
        ]


def _secs(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 1000:.0f} ms"


@dataclass(frozen=True)
class DemoReport:
    hub_url: str
    caller: SideReport
    callee: SideReport

    @property
    def ok(self) -> bool:
        return self.caller.ok and self.callee.ok

    def lines(self) -> list[str]:
        return [*self.caller.lines(), *self.callee.lines(),
                "demo passed: audio made it both ways" if self.ok
                else "demo FAILED: audio did not make it both ways"]


async def run_demo(seconds: float = 3.0, tone_a: float = 440.0, tone_b: float = 660.0,
                   progress: Callable[[str], None] = lambda _: None) -> DemoReport:
    """Run the demo call; ``progress`` receives one line per step."""
    hub = Hub(HubConfig(ice_servers=[]))  # all on this machine: no STUN needed
    port = await hub.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}"
    progress(f"hub listening on {url}")
    phone_a = Phone("demo-a", url)
    phone_b = Phone("demo-b", url)
    capture_a, capture_b = CaptureSink(seconds + 5), CaptureSink(seconds + 5)
    call_b: Call | None = None
    try:
        await phone_a.connect()
        await phone_b.connect()

        async def answer() -> Call:
            call = await phone_b.next_call()
            progress(f"demo-b: incoming call from {call.peer}, accepting")
            await call.accept(ToneSource(tone_b), [capture_b])
            return call

        answering = asyncio.create_task(answer())
        progress(f"demo-a: calling demo-b, sending {tone_a:.0f} Hz")
        call_a = await phone_a.dial("demo-b", ToneSource(tone_a), [capture_a])
        call_b = await asyncio.wait_for(answering, 10)
        await asyncio.wait_for(call_a.connected(), 20)
        progress(f"connected; talking for {seconds:.0f} s")
        await asyncio.sleep(seconds)
        stats_a, stats_b = await call_a.stats(), await call_b.stats()
        await call_a.hangup()
        result_a = await asyncio.wait_for(call_a.ended(), 5)
        result_b = await asyncio.wait_for(call_b.ended(), 5)
    finally:
        with contextlib.suppress(Exception):
            await phone_a.close()
        with contextlib.suppress(Exception):
            await phone_b.close()
        await hub.stop()
    # Skip the first half second (jitter buffer filling, codec warm-up).
    got_a = capture_a.samples()[24_000:]
    got_b = capture_b.samples()[24_000:]
    return DemoReport(
        url,
        SideReport("demo-a (caller)", tone_a, tone_b, dominant_frequency(got_a),
                   tone_purity(got_a, tone_b), result_a, stats_a),
        SideReport("demo-b (callee)", tone_b, tone_a, dominant_frequency(got_b),
                   tone_purity(got_b, tone_a), result_b, stats_b),
    )
