"""Call setup time: call-request sent -> media connected -> first audio heard.

Real calls between two Phones through an embedded hub on this machine, with
three ICE configurations: no STUN server, the original hub's default Google
STUN entry (unreachable here), and a STUN server that receives but never
answers (the worst case: aioice would wait 5 s per side; softphone caps it).
The first is also run with aiortc's, aioice's and OpenSSL's own setup timing
(``MediaConfig(fast_setup=STOCK_SETUP)``: no seam 8 of
``softphone.media.aiortc_seams``). Through NAT, loss and delay:
``benchmarks/netlab_table.py``.

    python benchmarks/call_setup.py [--calls 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from softphone import CaptureSink, MediaConfig, Phone, ToneSource
from softphone.hub.server import DEFAULT_ICE_SERVERS, Hub, HubConfig
from softphone.media.aiortc_seams import STOCK_SETUP


async def one(url: str, n: int, media: MediaConfig) -> tuple[float, float]:
    a, b = Phone(f"a{n}", url, media=media), Phone(f"b{n}", url, media=media)
    await a.connect()
    await b.connect()
    try:
        call = await a.dial(f"b{n}", ToneSource(440), [CaptureSink(2)])
        incoming = await b.next_call()
        await incoming.accept(ToneSource(660))
        await asyncio.wait_for(call.connected(), 20)
        await asyncio.sleep(0.5)
        await call.hangup()
        result = await call.ended()
    finally:
        await a.close()
        await b.close()
    assert result.setup_seconds is not None and result.first_audio_seconds is not None
    return result.setup_seconds, result.first_audio_seconds


async def series(servers: list[dict[str, str]], calls: int,
                 media: MediaConfig) -> tuple[list[float], list[float]]:
    hub = Hub(HubConfig(ice_servers=servers))
    port = await hub.start()
    connected, audio = [], []
    try:
        for n in range(calls):
            c, f = await one(f"http://127.0.0.1:{port}", n, media)
            connected.append(c)
            audio.append(f)
    finally:
        await hub.stop()
    return connected, audio


def summary(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p90 = ms[min(len(ms) - 1, int(0.9 * len(ms)))]
    return f"median {statistics.median(ms):6.0f} ms   p90 {p90:6.0f} ms   max {ms[-1]:6.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args()
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    ours, stock = MediaConfig(), MediaConfig(fast_setup=STOCK_SETUP)
    configs = {
        "no STUN": ([], ours),
        "no STUN, stock timing": ([], stock),
        "default Google STUN": (list(DEFAULT_ICE_SERVERS), ours),
        "STUN that never answers": ([{"urls": f"stun:127.0.0.1:{dead.getsockname()[1]}"}],
                                    ours),
    }
    print(f"# call setup, {args.calls} calls each, load average {os.getloadavg()[0]:.2f}")
    for name, (servers, media) in configs.items():
        connected, audio = asyncio.run(series(servers, args.calls, media))
        print(f"{name:<26} connected: {summary(connected)}")
        print(f"{'':<26} first audio: {summary(audio)}")
    dead.close()


if __name__ == "__main__":
    main()
