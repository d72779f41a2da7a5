"""The peers of ``benchmarks/capacity.py``: caller processes and the plain aiortc echo bot.

Run by capacity.py, one process each (never by hand):

- ``callers``: many :class:`~softphone.Phone`\\ s in one process, each dialing
  the bot with its own tone (encoded once, looped) and keeping every audio
  packet it receives (arrival time, RTP timestamp, payload), not played;
  after the window it analyses them (missing and late frames, the decoded
  audio's frequency) and writes JSON.
- ``soak-caller``: calls the bot again and again, ten at a time, and says
  when the bot may be read (after 30 calls, every 100, at the end).
- ``plain-bot``: the anchor, a plain aiortc echo bot: one
  ``RTCPeerConnection`` per caller, the received track added back (aiortc
  decodes and re-encodes), speaking the hub protocol through softphone's
  signaling client (nothing of softphone's media is imported).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RATE = 48_000
FRAME = 960


# ============================================================== caller side ===


class PacketLog:
    """Every audio packet a caller receives: (arrival, timestamp, payload, is_red)."""

    def __init__(self) -> None:
        self.packets: list[tuple[float, int, bytes, bool]] = []

    def push(self, ssrc: int, seq: int, timestamp: int, payload: bytes,
             is_red: bool = False) -> None:
        self.packets.append((time.monotonic(), timestamp, payload, is_red))


def keep_packets() -> None:
    """In a caller process: received packets are logged, not played (no decoding in real time)."""
    from softphone.media.audiopath import CallAudio

    def packet_handler(self: Any) -> Any:
        log = PacketLog()
        self.bench_log = log
        return log.push

    CallAudio.packet_handler = packet_handler  # type: ignore[method-assign]


def analyse(packets: list[tuple[float, int, bytes, bool]], start: float, end: float,
            expected_hz: float) -> dict[str, Any]:
    """One caller's window: missing and late frames, and what its audio was."""
    import numpy as np

    from softphone.media import red
    from softphone.media.audio import dominant_frequency, tone_purity
    from softphone.media.opus import OpusDecoder

    window = [p for p in packets if start <= p[0] <= end]
    if len(window) < 10:
        return {"frames": len(window), "missing": None, "late_ms": [], "max_gap_ms": None,
                "heard_hz": None, "purity": 0.0}
    ref = window[0][1]
    frames: dict[int, tuple[float, bytes, bool]] = {}
    for arrival, ts, payload, is_red in window:
        rel = ((ts - ref + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)  # unwrapped around the first
        frames.setdefault(rel, (arrival, payload, is_red))
    keys = sorted(frames)
    expected = (keys[-1] - keys[0]) // FRAME + 1
    offsets = [frames[k][0] - k / RATE for k in keys]
    base = min(offsets)
    late_ms = [round((o - base) * 1000, 2) for o in offsets]
    arrivals = sorted(frames[k][0] for k in keys)
    max_gap_ms = max((b - a) * 1000 for a, b in itertools.pairwise(arrivals))
    decoder = OpusDecoder()
    pcm = []
    for k in keys:
        _, payload, is_red = frames[k]
        if is_red:
            try:
                payload = red.parse(payload)[-1].data
            except red.RedError:
                continue
        if payload:
            with contextlib.suppress(Exception):
                pcm.append(decoder.decode(payload).copy())  # (a view of its buffer)
    audio = np.concatenate(pcm) if pcm else np.zeros(0, np.int16)
    body = audio[RATE // 2:] if audio.size > RATE else audio
    return {"frames": len(keys), "missing": expected - len(keys), "late_ms": late_ms,
            "max_gap_ms": round(max_gap_ms, 1),
            "heard_hz": round(dominant_frequency(body, RATE), 1) if body.size > 1024 else None,
            "purity": round(tone_purity(body, expected_hz, RATE, width=20.0), 3)}


async def run_callers(server: str, bot: str, ids: list[str], freqs: list[float],
                      hear: float | None, warmup: float, seconds: float, out: Path) -> None:
    """One caller process: dial ``bot`` from each id, hold, analyse, write JSON."""
    keep_packets()
    from softphone import Phone
    from softphone.media.encoded import PromptSource, SharedPrompt

    phones = [Phone(i, server, reconnect=False) for i in ids]
    await asyncio.gather(*(p.connect() for p in phones))
    calls = []
    for phone, hz in zip(phones, freqs, strict=True):
        calls.append(await phone.dial(bot, PromptSource(SharedPrompt.tone(hz), loop=True)))
        await asyncio.sleep(0.02)  # no stampede on the hub
    results: list[dict[str, Any]] = []
    try:
        await asyncio.wait_for(asyncio.gather(*(c.connected() for c in calls)), 60)
        print("connected", flush=True)
        start = time.monotonic() + warmup
        await asyncio.sleep(warmup + seconds)
        end = time.monotonic()
        for caller, call, hz in zip(ids, calls, freqs, strict=True):
            log = getattr(call.audio, "bench_log", None)
            packets = log.packets if log is not None else []
            result = analyse(packets, start, end, hear or hz)
            result.update(caller=caller, tone=hz, expected_hz=hear or hz)
            results.append(result)
    except Exception as exc:  # a call that never connected: say so in the results
        for caller, hz in zip(ids, freqs, strict=True):
            if not any(r["caller"] == caller for r in results):
                results.append({"caller": caller, "tone": hz, "expected_hz": hear or hz,
                                "frames": 0, "missing": None, "late_ms": [],
                                "max_gap_ms": None,
                                "heard_hz": None, "purity": 0.0,
                                "error": f"{type(exc).__name__}: {exc}"[:200]})
    finally:
        await asyncio.gather(*(c.hangup() for c in calls), return_exceptions=True)
        await asyncio.gather(*(p.close() for p in phones), return_exceptions=True)
    write_json(out, results)
    print("done", flush=True)


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1))



def is_mark(done: int, calls: int) -> bool:
    """After how many calls the soak reads the bot: 30, every 100, and at the end."""
    return done == 30 or done % 100 == 0 or done >= calls


async def run_soak_caller(server: str, bot: str, calls: int, parallel: int,
                          hold: float) -> None:
    """Calls ``bot`` ``calls`` times, ``parallel`` at a time; prints after each wave."""
    from softphone import Phone
    from softphone.media.encoded import PromptSource, SharedPrompt

    prompt = SharedPrompt.tone(500)
    phones = [Phone(f"soak{i}", server, reconnect=False) for i in range(parallel)]
    await asyncio.gather(*(p.connect() for p in phones))
    done = failed = 0
    try:
        while done < calls:
            wave_size = min(parallel, calls - done)

            async def one(phone: Any) -> bool:
                call = await phone.dial(bot, PromptSource(prompt, loop=True))
                try:
                    await asyncio.wait_for(call.connected(), 20)
                    await asyncio.sleep(hold)
                    return True
                except Exception:
                    return False
                finally:
                    await call.hangup()
                    await call.ended()

            ok = await asyncio.gather(*(one(p) for p in phones[:wave_size]))
            done += wave_size
            failed += ok.count(False)
            if is_mark(done, calls):  # the bot is read now: no call in progress
                print(f"calls {done} failed {failed}", flush=True)
                await asyncio.sleep(3.0)
            else:
                await asyncio.sleep(0.2)
    finally:
        await asyncio.gather(*(p.close() for p in phones), return_exceptions=True)


# ============================================================ the anchor bot ===


async def run_plain_bot(server: str, client_id: str) -> None:
    """A plain aiortc echo bot on our hub protocol: one RTCPeerConnection per caller."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from softphone.client.signaling import HubClient
    from softphone.core.protocol import HubError, make

    assert "softphone.media.rtc" not in sys.modules, "the anchor must be plain aiortc"
    hub = HubClient(server, client_id)
    await hub.connect()
    pcs: dict[str, Any] = {}
    print("listening", flush=True)

    async def answer(peer: str, sdp: str) -> None:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pcs[peer] = pc

        @pc.on("track")
        def on_track(track: Any) -> None:
            pc.addTrack(track)  # the received track, sent back (aiortc re-encodes it)

        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await hub.send(make("answer", peer, {"type": "answer",
                                             "sdp": pc.localDescription.sdp}))

    tasks: set[asyncio.Task[None]] = set()
    async for message in hub.messages():
        if isinstance(message, HubError) or message.sender is None:
            continue
        peer = message.sender
        if message.type == "call-request":
            await hub.send(make("call-accept", peer, {"media": "ready"}))
        elif message.type == "offer" and isinstance(message.data, dict):
            task = asyncio.create_task(answer(peer, str(message.data.get("sdp"))))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elif message.type == "hangup":
            pc = pcs.pop(peer, None)
            if pc is not None:
                await pc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("callers")
    c.add_argument("--server", required=True)
    c.add_argument("--bot", required=True)
    c.add_argument("--ids", required=True)
    c.add_argument("--freqs", required=True)
    c.add_argument("--hear", type=float)
    c.add_argument("--warmup", type=float, default=3.0)
    c.add_argument("--seconds", type=float, default=15.0)
    c.add_argument("--out", required=True, type=Path)
    b = sub.add_parser("plain-bot")
    b.add_argument("--server", required=True)
    b.add_argument("--as", dest="client_id", required=True)
    s = sub.add_parser("soak-caller")
    s.add_argument("--server", required=True)
    s.add_argument("--bot", required=True)
    s.add_argument("--calls", type=int, default=300)
    s.add_argument("--parallel", type=int, default=10)
    s.add_argument("--hold", type=float, default=1.0)
    args = parser.parse_args()
    if args.command == "callers":
        asyncio.run(run_callers(args.server, args.bot, args.ids.split(","),
                                [float(f) for f in args.freqs.split(",")], args.hear,
                                args.warmup, args.seconds, args.out))
    elif args.command == "plain-bot":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_plain_bot(args.server, args.client_id))
    else:
        asyncio.run(run_soak_caller(args.server, args.bot, args.calls, args.parallel,
                                    args.hold))


if __name__ == "__main__":
    main()
