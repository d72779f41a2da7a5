"""How many calls one bot process carries: softphone's bots against a plain aiortc echo bot.

One bot process pinned to CPU 0 (``taskset``); N callers on CPU 1, in
several caller processes of many :class:`~softphone.Phone`\\ s each (with
the hub). Each caller sends its own tone (encoded once, looped) and keeps
every audio packet it receives (arrival time, RTP timestamp, payload); the
bot's CPU is read from /proc over a measuring window. For each bot and N:

- ``cpu/call``: the bot's CPU time (user + system) over the window, per
  call, in % of one core (and the bot's and the callers' totals: callers
  near 100 % of their core are the limit, not the bot);
- ``p99 late``/``max late``: how late the frames reach the callers, against
  the RTP clock (arrival minus timestamp, less the smallest such offset of
  that caller), p99 over all callers' frames and the worst; for the echo
  bots this is the round trip's variation;
- ``max gap``/``gaps``: the longest time any caller went without a frame;
  callers who missed a frame, or went more than two frames' time (40 ms)
  without one, in the window: a gap over one frame, which a one-frame
  jitter buffer would hear;
- ``heard``: callers whose decoded audio is what they should hear (their
  own tone back from an echo bot; the prompt from the answering machine).

The bots: ``echo`` is ``softphone listen --echo --max-calls N`` (each
caller's packets straight back); ``machine`` is ``softphone listen --play
PROMPT --record DIR/{peer}-{n}.wav --max-calls N`` (the prompt encoded once;
each caller decoded and recorded; the recordings are checked too);
``aiortc`` is the anchor: a plain aiortc echo bot written here, one
``RTCPeerConnection`` per caller with the received track added back
(aiortc decodes, re-encodes), speaking the hub protocol through
softphone's signaling client (nothing of softphone's media is imported).

    python benchmarks/capacity.py --quick               # N = 1, 5; a few seconds each
    python benchmarks/capacity.py                       # N = 1, 10, 20, 50, 80, 120
    python benchmarks/capacity.py --bots echo --counts 50,100 --seconds 20
    python benchmarks/capacity.py --soak 300            # the echo bot after 30 and 300 calls

Run it on a quiet machine with two cores or more. The caller processes,
the soak caller and the anchor bot are ``benchmarks/capacity_peers.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import time
import wave
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RATE = 48_000
FRAME = 960
PROMPT_HZ = 1000.0
PER_PROCESS = 25  # callers per caller process, at most
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ============================================================= orchestrator ===


def pinned(cpu: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if cpu >= 0 else argv


def softphone(*args: str) -> list[str]:
    return [sys.executable, "-m", "softphone", *args]


def peer(*args: str) -> list[str]:
    """A process of benchmarks/capacity_peers.py (callers, the plain bot, the soak caller)."""
    return [sys.executable, str(Path(__file__).resolve().with_name("capacity_peers.py")), *args]


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1))


def tail_of_logs(folder: Path, pattern: str) -> list[str]:
    return [f"  {log.name}: {log.read_text()[-600:]}" for log in sorted(folder.glob(pattern))]


class Proc:
    """A child process whose stdout lines are read in a thread-free way (asyncio)."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        #: The lines wait_for has looked at (the last: the one it found).
        self.lines: list[str] = []
        self._read_lines: list[str] = []  # every line read so far
        self._news = asyncio.Event()
        self._eof = False
        # Read stdout all the time: a bot with --json writes a line per event and
        # stats every 2 s per call, and a full pipe would stall it (it did, at 80
        # calls and after 100 soak calls, when only wait_for read).
        self._reader = asyncio.create_task(self._read(), name=f"{name}-stdout")

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self._read_lines.append(line.decode(errors="replace").strip())
            self._news.set()
        self._eof = True
        self._news.set()

    @classmethod
    async def start(cls, argv: list[str], name: str, log: Path | None = None) -> Proc:
        err = os.open(log or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=err,
                stdin=asyncio.subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        finally:
            os.close(err)
        return cls(proc, name)

    async def wait_for(self, text: str, within: float) -> None:
        """Wait for a line with ``text`` after the lines earlier waits looked at.

        ``self.lines[-1]`` is then that line (as callers read it)."""
        deadline = time.monotonic() + within
        while True:
            while len(self.lines) < len(self._read_lines):
                self.lines.append(self._read_lines[len(self.lines)])
                if text in self.lines[-1]:
                    return
            if self._eof:
                raise RuntimeError(f"{self.name} exited before {text!r}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: {text!r} not seen in {within} s")
            self._news.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), left)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def vitals(self) -> dict[str, float]:
        pid = self.proc.pid
        status = Path(f"/proc/{pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines()
                   if line.startswith("VmRSS:"))
        return {"rss_mb": round(rss / 1024, 1), "fds": len(os.listdir(f"/proc/{pid}/fd")),
                "threads": len(os.listdir(f"/proc/{pid}/task"))}

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@dataclass
class Row:
    bot: str
    calls: int
    cpu_per_call: float  # % of one core
    cpu_total: float
    callers_cpu: float  # all caller processes together (near 100 %: they are the limit)
    p99_late_ms: float
    max_late_ms: float
    missing_pct: float
    max_gap_ms: float  # the longest time without a frame, any caller
    callers_with_gaps: int
    heard_ok: int
    recorded_ok: int | None = None
    rss_mb: float = 0.0

    def line(self) -> str:
        rec = "" if self.recorded_ok is None else f" rec {self.recorded_ok}/{self.calls}"
        return (f"{self.bot:<8} {self.calls:>4}  cpu/call {self.cpu_per_call:5.2f} %  "
                f"(bot {self.cpu_total:5.1f} %, callers {self.callers_cpu:5.1f} %)  "
                f"p99 late {self.p99_late_ms:6.1f} ms  "
                f"max {self.max_late_ms:6.1f} ms  missing {self.missing_pct:5.2f} %  "
                f"max gap {self.max_gap_ms:5.0f} ms  "
                f"gaps {self.callers_with_gaps:>3}/{self.calls}  heard "
                f"{self.heard_ok:>3}/{self.calls}{rec}  rss {self.rss_mb:.0f} MB")


def write_prompt(path: Path, seconds: float) -> None:
    import numpy as np

    n = int(seconds * RATE)
    samples = 0.3 * 32767 * np.sin(2 * np.pi * PROMPT_HZ * np.arange(n) / RATE)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(samples.astype(np.int16).tobytes())


def frequencies(n: int) -> list[float]:
    """Distinct tones, 25 Hz apart from 310 Hz (far enough for a 1 s FFT window).

    Not from 300 Hz: Opus codes a pure 1200 Hz sine with a quarter of its
    energy off the tone (purity 0.72 offline, encoder and decoder alone), so
    the 37th caller was never "heard" whatever the bot did. Every tone of
    this set up to the 120th codes with purity over 0.9 offline.
    """
    return [310.0 + 25.0 * i for i in range(n)]


async def measure(kind: str, n: int, url: str, args: argparse.Namespace, tmp: Path,
                  run: int) -> Row:
    bot_id = f"bot-{kind}-{run}"
    record_dir = tmp / f"rec-{run}"
    if kind == "echo":
        argv = softphone("listen", "--as", bot_id, "--server", url, "--auto-accept", "--json",
                         "--no-audio", "--echo", "--max-calls", str(n))
    elif kind == "machine":
        argv = softphone("listen", "--as", bot_id, "--server", url, "--auto-accept", "--json",
                         "--no-audio", "--play", str(tmp / "prompt.wav"),
                         "--record", str(record_dir / "{peer}-{n}.wav"), "--max-calls", str(n))
    else:
        argv = peer("plain-bot", "--server", url, "--as", bot_id)
    bot = await Proc.start(pinned(args.bot_cpu, argv), kind, tmp / f"bot-{run}.log")
    await bot.wait_for("listening", 30)
    freqs = frequencies(n)
    hear = PROMPT_HZ if kind == "machine" else None
    callers = []
    # Groups of equal size: a small last group connects sooner, so its window ended
    # (and it exited) before the others' did, before its CPU time was read.
    size = math.ceil(n / math.ceil(n / PER_PROCESS))
    for k in range(0, n, size):
        ids = [f"c{run}x{i}" for i in range(k, min(n, k + size))]
        out = tmp / f"callers-{run}-{k}.json"
        argv = peer("callers", "--server", url, "--bot", bot_id, "--ids", ",".join(ids),
                    "--freqs", ",".join(str(f) for f in freqs[k:k + len(ids)]),
                    "--warmup", str(args.warmup), "--seconds", str(args.seconds),
                    "--out", str(out), *(["--hear", str(hear)] if hear else []))
        callers.append((await Proc.start(pinned(args.caller_cpu, argv), f"callers{k}",
                                         tmp / f"callers-{run}-{k}.log"), out))
    try:
        await asyncio.gather(*(c.wait_for("connected", 90) for c, _ in callers))
        await asyncio.sleep(args.warmup)
        cpu0, t0 = bot.cpu_seconds(), time.monotonic()
        callers0 = sum(c.cpu_seconds() for c, _ in callers)
        await asyncio.sleep(args.seconds * 0.9)
        cpu1, t1 = bot.cpu_seconds(), time.monotonic()
        callers1 = sum(c.cpu_seconds() for c, _ in callers)
        vitals = bot.vitals()
        await asyncio.gather(*(c.wait_for("done", args.seconds + 60) for c, _ in callers))
    finally:
        for c, _ in callers:
            await c.stop()
        await bot.stop()
    results: list[dict[str, Any]] = []
    for _, out in callers:
        results += json.loads(out.read_text())
    late = sorted(x for r in results for x in r["late_ms"])
    frames = sum(r["frames"] for r in results)
    missing = sum(r["missing"] or 0 for r in results)
    # A gap over one frame: a frame missing, or none arriving for more than two
    # frames' time (a one-frame jitter buffer would run dry).
    gaps = sum(1 for r in results if r["missing"] is None or r["missing"] > 0
               or r["max_gap_ms"] > 2000 * FRAME / RATE)
    worst_gap = max((r["max_gap_ms"] or 0.0 for r in results), default=0.0)
    unheard = [r for r in results if r["heard_hz"] is None
               or abs(r["heard_hz"] - r["expected_hz"]) >= 5 or r["purity"] <= 0.8]
    heard = len(results) - len(unheard)
    for r in unheard:  # who, and what they heard instead
        print(f"  {kind} {n}: {r['caller']} expected {r['expected_hz']} Hz, heard "
              f"{r['heard_hz']} Hz (purity {r['purity']}, {r['frames']} frames, "
              f"{r['missing']} missing){' ' + r['error'] if 'error' in r else ''}",
              file=sys.stderr)
    recorded = None
    if kind == "machine":
        recorded = check_recordings(record_dir, {r["caller"]: r["tone"] for r in results})
    cpu = 100.0 * (cpu1 - cpu0) / (t1 - t0)
    callers_cpu = 100.0 * (callers1 - callers0) / (t1 - t0)
    return Row(kind, n, round(cpu / n, 2), round(cpu, 1), round(callers_cpu, 1),
               late[min(len(late) - 1, int(0.99 * len(late)))] if late else math.inf,
               late[-1] if late else math.inf,
               round(100.0 * missing / max(1, frames + missing), 2), round(worst_gap, 1), gaps,
               heard, recorded, vitals["rss_mb"])


def check_recordings(folder: Path, tones: dict[str, float]) -> int:
    """How many callers' recordings (by the answering machine) hold their own tone."""
    import numpy as np

    from softphone.media.audio import dominant_frequency

    ok = 0
    for path in folder.glob("*.wav"):
        peer = path.stem.rsplit("-", 1)[0]
        with wave.open(str(path)) as w:
            samples = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        if peer in tones and samples.size > RATE and \
                abs(dominant_frequency(samples[RATE // 2:], RATE) - tones[peer]) < 5:
            ok += 1
    return ok


async def soak(url: str, args: argparse.Namespace) -> None:
    bot = await Proc.start(pinned(args.bot_cpu, softphone(
        "listen", "--as", "soakbot", "--server", url, "--auto-accept", "--json", "--no-audio",
        "--echo", "--max-calls", "10")), "soakbot")
    await bot.wait_for("listening", 30)
    caller = await Proc.start(pinned(args.caller_cpu, peer(
        "soak-caller", "--server", url, "--bot", "soakbot", "--calls", str(args.soak),
        "--parallel", "10")), "soak-caller")
    marks: dict[int, dict[str, float]] = {}
    try:
        while True:
            await caller.wait_for("calls", 600)
            done = int(caller.lines[-1].split()[1])
            await asyncio.sleep(1.5)  # the bot's side of the last calls is closed
            marks[done] = bot.vitals()
            print(f"after {done:>4} calls: {marks[done]}  ({caller.lines[-1]})", flush=True)
            if done >= args.soak:
                break
    finally:
        await caller.stop()
        await bot.stop()
    first, last = marks.get(30), marks.get(args.soak)
    if first and last:
        print(f"RSS {100 * (last['rss_mb'] / first['rss_mb'] - 1):+.1f} %, "
              f"fds {last['fds'] - first['fds']:+.0f}, "
              f"threads {last['threads'] - first['threads']:+.0f} (after 30 -> after all)")


async def orchestrate(args: argparse.Namespace) -> None:
    counts = [int(x) for x in args.counts.split(",")]
    bots = args.bots.split(",")
    with tempfile.TemporaryDirectory(prefix="capacity-") as name:
        tmp = Path(name)
        write_prompt(tmp / "prompt.wav", args.warmup + args.seconds + 30)
        port = args.port
        hub = await Proc.start(pinned(args.caller_cpu, softphone(
            "serve", "--port", str(port), "--ice-server", "none")), "hub")
        await hub.wait_for("listening on", 30)
        url = f"http://127.0.0.1:{port}"
        try:
            print(f"# capacity: bot on CPU {args.bot_cpu}, callers and hub on CPU "
                  f"{args.caller_cpu}; {args.seconds:.0f} s windows; load average "
                  f"{os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs", flush=True)
            if args.soak:
                await soak(url, args)
                return
            rows = []
            run = 0
            for n in counts:
                for kind in bots:
                    run += 1
                    try:
                        row = await measure(kind, n, url, args, tmp, run)
                    except Exception as exc:
                        print(f"{kind:<8} {n:>4}  failed: {exc}", flush=True)
                        print(*tail_of_logs(tmp, f"*-{run}*.log"), sep="\n", flush=True)
                        continue
                    rows.append(row)
                    print(row.line(), flush=True)
            if args.json:
                write_json(Path(args.json), [asdict(r) for r in rows])
        finally:
            await hub.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--counts", default="1,10,20,50,80,120")
    parser.add_argument("--bots", default="echo,machine,aiortc")
    parser.add_argument("--seconds", type=float, default=15.0, help="measuring window")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true", help="N = 1, 5 with short windows")
    parser.add_argument("--soak", type=int, default=0, metavar="CALLS",
                        help="instead: CALLS calls to the echo bot, 10 at a time; its RSS, "
                             "fds and threads after 30 and at the end")
    parser.add_argument("--port", type=int, default=18_790)
    parser.add_argument("--bot-cpu", type=int, default=0)
    parser.add_argument("--caller-cpu", type=int, default=1)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    if args.quick:
        args.counts, args.seconds, args.warmup = "1,5", 4.0, 2.0
    asyncio.run(orchestrate(args))


if __name__ == "__main__":
    main()
