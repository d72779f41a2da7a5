"""Audio quality, bits, delay and CPU: softphone's voice pipeline against stock aiortc's.

Each measurement is a real call between two aiortc peers (Phones through a
hub, on 127.0.0.1). The receiving side's packets are impaired (random loss,
bursts, jitter) at the same point for both pipelines, before any buffer.
What the receiver *plays out* (pulled every 20 ms, as a sound card would)
is scored:

- PESQ-WB (ITU-T P.862.2, the ``pesq`` package) of an espeak-ng speech
  sample, and the RTP payload bitrate the sender put out in that call;
- one-way delay, sender's frame handed to the encoder -> frame played out,
  measured with short clicks (median), on a clean call, and before and 2 s
  after a 300 ms loss burst;
- CPU per call: each party in its own process, both sending speech, the
  process time of each over the steady state (from 5 s on), in percent of
  one core;
- for ours, PESQ-WB against the bits sent on a clean call, at several
  ``--bitrate`` ceilings (the adaptation's own choice last).

Pipelines: "aiortc" (stock: 96 kbit/s stereo Opus, its 4-packet buffer, no
concealment) and "softphone" (as shipped: the bitrate, RED and FEC follow
the loss the receiver reports). Each runs in its own processes (aiortc's
encoder is replaced per process). Usage::

    python benchmarks/audio_quality.py            # everything (about 15 minutes)
    python benchmarks/audio_quality.py --quick    # clean, 5 %, one run, short CPU run
    python benchmarks/audio_quality.py --only '5% loss + jitter' --pipeline softphone --trace

Needs espeak-ng (apt-get install espeak-ng) and pesq (pip install pesq).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from softphone import Phone
from softphone.hub.server import Hub, HubConfig
from softphone.media.audio import SAMPLE_RATE
from softphone.media.netsim import Impairment
from softphone.media.opus import EncoderSettings
from softphone.media.rtc import MediaConfig
from softphone.media.tracks import FileSource, PacedSource, load_audio_file

SPEECH = (
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
    "It is easy to tell the depth of a well. These days a chicken leg is a rare dish. "
    "Rice is often served in round bowls. The juice of lemons makes fine punch."
)

JITTER = {"delay": 0.02, "jitter": 0.01}
SCENARIOS: dict[str, dict[str, Any]] = {
    "clean": {},
    "5% loss + jitter": {"loss": 0.05, **JITTER},
    "10% loss + jitter": {"loss": 0.10, **JITTER},
    "bursty (1% bursts of 6) + jitter": {"burst_rate": 0.01, "burst_length": 6, **JITTER},
}
QUICK = ["clean", "5% loss + jitter"]
PIPELINES = ("aiortc", "softphone")
#: --bitrate ceilings (kbit/s) for our PESQ-versus-bits curve; None: the adaptation's.
CURVE = [24, 32, 48, 64, None]
QUICK_CURVE = [32, None]


@dataclass(frozen=True)
class Target:
    """One row's target, as the issue puts it, against stock's figures."""

    pesq_min: float | None = None  # absolute
    pesq_below_stock: float | None = None  # at least stock's minus this
    bits_ratio: float | None = None  # at most this times stock's bits


TARGETS = {
    "clean": Target(pesq_below_stock=0.02, bits_ratio=1.0),
    "5% loss + jitter": Target(pesq_min=4.2, bits_ratio=1.0),
    "10% loss + jitter": Target(pesq_min=4.0, bits_ratio=1.2),
    "bursty (1% bursts of 6) + jitter": Target(pesq_min=3.8, bits_ratio=1.0),
}


class TimedCapture:
    """A sink that keeps what was played and when each 20 ms frame was played."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []
        self.times: list[float] = []

    def write(self, samples: np.ndarray) -> None:
        self.times.append(time.monotonic())
        self.frames.append(samples.copy())

    def close(self) -> None:
        """Nothing to close (a sink has write and close)."""

    def audio(self) -> np.ndarray:
        return np.concatenate(self.frames) if self.frames else np.zeros(0, np.int16)


class ClickSource(PacedSource):
    """10 ms 2 kHz bursts every 400 ms; remembers when each was handed to the encoder."""

    def __init__(self, period: float = 0.4) -> None:
        super().__init__()
        self.period_samples = int(period * SAMPLE_RATE)
        n = SAMPLE_RATE // 100
        self.burst = (np.sin(2 * np.pi * 2000 * np.arange(n) / SAMPLE_RATE)
                      * 20000).astype(np.int16)
        self.position = 0
        self.sent: list[float] = []

    def next_samples(self, count: int) -> np.ndarray:
        phase = (self.position + np.arange(count)) % self.period_samples
        out = np.where(phase < self.burst.size,
                       self.burst[np.minimum(phase, self.burst.size - 1)], 0).astype(np.int16)
        now = time.monotonic()
        self.sent.extend(now + i / SAMPLE_RATE for i in np.flatnonzero(phase == 0))
        self.position += count
        return out


def click_onsets(capture: TimedCapture, threshold: int = 4000) -> list[float]:
    """Times at which played-out clicks start (frame play time + offset in frame)."""
    onsets: list[float] = []
    last = -1.0
    for when, frame in zip(capture.times, capture.frames, strict=True):
        loud = np.flatnonzero(np.abs(frame.astype(np.int32)) > threshold)
        if loud.size:
            t = when + loud[0] / SAMPLE_RATE
            if t - last > 0.2:
                onsets.append(t)
            last = t
    return onsets


def pair_delays(sent: list[float], played: list[float]) -> list[tuple[float, float]]:
    """(send time, delay) for each click that was played (nearest later onset < 1 s)."""
    out = []
    j = 0
    for s in sent:
        while j < len(played) and played[j] < s:
            j += 1
        if j < len(played) and played[j] - s < 1.0:
            out.append((s, played[j] - s))
    return out


def media_config(pipeline: str, impairment: Impairment | None = None,
                 ceiling_kbps: int | None = None) -> MediaConfig:
    encoder = EncoderSettings(bitrate=None if ceiling_kbps is None else ceiling_kbps * 1000)
    return MediaConfig(pipeline, encoder, impairment=impairment)


class Trace(logging.Handler):
    """(``--trace``) The adaptation's decisions in one call, with their time."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.start = time.monotonic()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name in ("softphone.media.sending", "softphone.core.adapt"):
            self.lines.append(f"{record.created - time.time() + time.monotonic() - self.start:6.2f}"
                              f" {record.getMessage()}")


def playout_counts(call: Any) -> dict[str, Any]:
    """(``--trace``) What our playout did in a call (empty for stock aiortc's)."""
    playout = getattr(getattr(call, "audio", None), "playout", None)
    if playout is None or not hasattr(playout, "stretch_stats"):
        return {}
    b, s = playout.buffer.stats, playout.stretch_stats
    return {"received": b.received, "late": b.late, "played": b.played,
            "repaired": b.repaired, "fec": b.recovered, "concealed": b.concealed,
            "skipped": b.skipped, "accelerated": s.accelerated, "expanded": s.expanded,
            "refused": s.refused, "faded": s.faded,
            "target_ms": round(1000 * playout.buffer.target, 1),
            "delay_ms": round(1000 * playout.delay, 1)}


async def one_call(pipeline: str, source: PacedSource, seconds: float,
                   impairment: Impairment | None, ceiling_kbps: int | None = None,
                   trace: dict[str, Any] | None = None
                   ) -> tuple[TimedCapture, float, float]:
    """A calls B; B's receive side is impaired. Returns B's playout, when it
    started, and the RTP payload bitrate A sent (kbit/s). ``trace``: filled
    with the adaptation's decisions and what B's playout did."""
    handler = Trace()
    if trace is not None:
        logging.getLogger("softphone").addHandler(handler)
        logging.getLogger("softphone").setLevel(logging.INFO)
    hub = Hub(HubConfig(ice_servers=[]))
    await hub.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{hub.port}"
    a = Phone("a", url, media=media_config(pipeline, ceiling_kbps=ceiling_kbps))
    b = Phone("b", url, media=media_config(pipeline, impairment))
    capture = TimedCapture()
    await a.connect()
    await b.connect()
    try:
        call_a = await a.dial("b", source)
        call_b = await b.next_call()
        await call_b.accept(None, [capture])
        await asyncio.wait_for(call_a.connected(), 10)
        started = time.monotonic()
        first = await call_a.stats()
        await asyncio.sleep(seconds)
        last = await call_a.stats()
        kbps = (last.bytes_sent - first.bytes_sent) * 8 / (time.monotonic() - started) / 1000
        if trace is not None:
            trace["playout"] = playout_counts(call_b)
            trace["connected_at"] = round(started - handler.start, 2)
        await call_a.hangup()
        await call_b.ended()
    finally:
        if trace is not None:
            logging.getLogger("softphone").removeHandler(handler)
            trace["decisions"] = handler.lines
        await a.close()
        await b.close()
        await hub.stop()
    return capture, started, kbps


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    import av

    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate_out)
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate_in
    parts = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(parts).astype(np.int16)


async def pesq_run(pipeline: str, speech_path: str, scenario: dict[str, Any], seed: int,
                   ceiling_kbps: int | None = None, trace: bool = False) -> dict[str, Any]:
    from pesq import pesq

    speech48 = load_audio_file(speech_path)
    impairment = Impairment(seed=seed, **scenario) if scenario else None
    seconds = speech48.size / SAMPLE_RATE + 1.0
    traced: dict[str, Any] | None = {} if trace else None
    capture, _, kbps = await one_call(pipeline, FileSource(speech48), seconds, impairment,
                                      ceiling_kbps, traced)
    played = capture.audio()
    ref16 = resample(speech48, SAMPLE_RATE, 16000)
    deg16 = resample(played, SAMPLE_RATE, 16000)
    score = float(pesq(16000, ref16.astype(np.float32), deg16.astype(np.float32), "wb"))
    if traced is not None:
        print(json.dumps({"pipeline": pipeline, "seed": seed, "pesq": round(score, 3),
                          "kbps": round(kbps, 1), "load": os.getloadavg()[0], **traced},
                         indent=1), file=sys.stderr, flush=True)
    return {"pesq": score, "kbps": kbps, "dropped": impairment.dropped if impairment else 0,
            "packets": impairment.count if impairment else 0}


async def delay_run(pipeline: str, burst_at: float | None) -> dict[str, Any]:
    source = ClickSource()
    impairment = None
    seconds = 4.0
    if burst_at is not None:
        first = int(burst_at / 0.02)
        impairment = Impairment(drop_indices=frozenset(range(first, first + 15)))
        seconds = burst_at + 4.0
    capture, started, _ = await one_call(pipeline, source, seconds, impairment)
    pairs = pair_delays(source.sent, click_onsets(capture))
    t0 = source.sent[0] if source.sent else started
    result: dict[str, Any] = {}
    if burst_at is None:
        result["delay_ms"] = 1000 * statistics.median(d for s, d in pairs if s - t0 > 0.5)
    else:
        before = [d for s, d in pairs if 1.0 < s - t0 < burst_at]
        after = [d for s, d in pairs if s - t0 > burst_at + 0.3 + 2.0]
        result["before_ms"] = 1000 * statistics.median(before) if before else None
        result["after_ms"] = 1000 * statistics.median(after) if after else None
    return result


# -- CPU: one process per party ------------------------------------------------------


async def party(args: argparse.Namespace) -> dict[str, Any]:
    """One side of a call in this process: both sides send the speech, looped."""
    phone = Phone(args.party, args.hub, media=media_config(args.worker))
    capture = TimedCapture()
    await phone.connect()
    try:
        source = FileSource(load_audio_file(args.speech), loop=True)
        if args.party == "a":
            await asyncio.sleep(2.0)  # b is connected by then
            call = await phone.dial("b", source)
        else:
            call = await phone.next_call()
            await call.accept(source, [capture])
        await asyncio.wait_for(call.connected(), 15)
        await asyncio.sleep(5.0)  # past the start: steady state from here
        cpu0, wall0 = time.process_time(), time.monotonic()
        first = await call.stats()
        await asyncio.sleep(args.cpu_seconds)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        last = await call.stats()
        if args.party == "a":
            await call.hangup()
        await call.ended()
    finally:
        await phone.close()
    return {"cpu_percent": 100 * cpu / wall,
            "kbps": (last.bytes_sent - first.bytes_sent) * 8 / wall / 1000}


async def cpu_run(pipeline: str, speech: str, seconds: float) -> dict[str, Any]:
    hub = Hub(HubConfig(ice_servers=[]))
    await hub.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{hub.port}"
    try:
        procs = [await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--worker", pipeline, "--party", name, "--hub", url,
            "--speech", speech, "--cpu-seconds", str(seconds),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            for name in ("b", "a")]
        outs = [await p.communicate() for p in procs]
    finally:
        await hub.stop()
    parties = []
    for proc, (out, err) in zip(procs, outs, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(f"{pipeline} party failed:\n{err.decode()[-3000:]}")
        parties.append(json.loads(out.decode().strip().splitlines()[-1]))
    return {"cpu_percent": statistics.mean(p["cpu_percent"] for p in parties),
            "cpu_parties": [p["cpu_percent"] for p in parties],
            "kbps": statistics.mean(p["kbps"] for p in parties)}


# -- workers and the table --------------------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    """Every call measurement for one pipeline; print one JSON object."""
    if args.party:
        print(json.dumps(asyncio.run(party(args))))
        return
    out: dict[str, Any] = {"pipeline": args.worker, "pesq": {}, "kbps": {}, "runs": args.runs}
    for name in args.scenarios:
        runs = [asyncio.run(pesq_run(args.worker, args.speech, SCENARIOS[name], seed=run + 1,
                                     trace=args.trace))
                for run in range(args.runs)]
        out["pesq"][name] = statistics.mean(r["pesq"] for r in runs)
        out["kbps"][name] = statistics.mean(r["kbps"] for r in runs)
    if args.only:
        print(json.dumps(out))
        return
    out["delay"] = asyncio.run(delay_run(args.worker, None))
    out["burst"] = asyncio.run(delay_run(args.worker, 3.0))
    out["cpu"] = asyncio.run(cpu_run(args.worker, args.speech, args.cpu_seconds))
    if args.worker == "softphone":
        out["curve"] = [
            {"ceiling": c, **asyncio.run(pesq_run(args.worker, args.speech, {}, 1, c))}
            for c in args.curve]
    print(json.dumps(out))


def make_speech(folder: str) -> str:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        sys.exit("espeak-ng is missing: apt-get install espeak-ng")
    path = os.path.join(folder, "speech.wav")
    subprocess.run([espeak, "-v", "en-us", "-s", "150", "-w", path, SPEECH], check=True)
    return path


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def verdict(name: str, stock: dict[str, Any], ours: dict[str, Any]) -> str:
    t = TARGETS[name]
    a, o = stock["pesq"][name], ours["pesq"][name]
    ka, ko = stock["kbps"][name], ours["kbps"][name]
    floor = t.pesq_min if t.pesq_min is not None else a - (t.pesq_below_stock or 0.0)
    parts = [f">= {floor:.2f}: {'met' if o >= floor else 'MISSED'}"]
    if t.bits_ratio is not None:
        limit = t.bits_ratio * ka
        parts.append(f"bits <= {limit:.0f}: {'met' if ko <= limit else 'MISSED'}")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="clean and 5 %% only, one run each, a short CPU run")
    parser.add_argument("--runs", type=int, default=2, help="runs per scenario (averaged)")
    parser.add_argument("--worker", choices=PIPELINES, help=argparse.SUPPRESS)
    parser.add_argument("--speech", help=argparse.SUPPRESS)
    parser.add_argument("--scenarios", nargs="*", default=list(SCENARIOS), help=argparse.SUPPRESS)
    parser.add_argument("--party", choices=("a", "b"), help=argparse.SUPPRESS)
    parser.add_argument("--hub", help=argparse.SUPPRESS)
    parser.add_argument("--cpu-seconds", type=float, default=20.0, help=argparse.SUPPRESS)
    parser.add_argument("--curve", nargs="*", type=lambda x: None if x == "auto" else int(x),
                        default=CURVE, help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=list(SCENARIOS), action="append", metavar="ROW",
                        help="only these PESQ rows (repeatable; no delay, CPU or curve): "
                             + ", ".join(repr(s) for s in SCENARIOS).replace("%", "%%"))
    parser.add_argument("--pipeline", choices=PIPELINES, action="append",
                        help="(with --only) only this pipeline (repeatable)")
    parser.add_argument("--trace", action="store_true",
                        help="print each call's adaptation decisions and playout counts")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    try:
        import pesq  # noqa: F401
    except ImportError:
        sys.exit("the pesq package is missing: pip install pesq")
    scenarios = args.only or (QUICK if args.quick else list(SCENARIOS))
    runs = 1 if args.quick else args.runs
    pipelines = tuple(args.pipeline or PIPELINES) if args.only else PIPELINES
    cpu_seconds = 8.0 if args.quick else 20.0
    curve = QUICK_CURVE if args.quick else CURVE
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        speech = make_speech(tmp)
        results = {}
        for pipeline in pipelines:
            print(f"measuring {pipeline}'s pipeline...", file=sys.stderr, flush=True)
            cmd = [sys.executable, __file__, "--worker", pipeline, "--speech", speech,
                   "--runs", str(runs), "--cpu-seconds", str(cpu_seconds),
                   "--scenarios", *scenarios,
                   "--curve", *("auto" if c is None else str(c) for c in curve),
                   *(["--only", *scenarios[:1]] if args.only else []),
                   *(["--trace"] if args.trace else [])]
            done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if args.trace
                                  else subprocess.PIPE, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"{pipeline} worker failed:\n{(done.stderr or '')[-3000:]}")
            results[pipeline] = json.loads(done.stdout.strip().splitlines()[-1])
    if args.only:
        print(f"# audio quality, {runs} run(s) per row; load average {load_before:.2f} "
              f"before, {os.getloadavg()[0]:.2f} after ({os.cpu_count()} cores)")
        for name in scenarios:
            print(f"{'PESQ-WB, ' + name:<42} " + " ".join(
                f"{p} {r['pesq'][name]:.2f} ({r['kbps'][name]:.0f} kbit/s)"
                for p, r in results.items()))
        return
    stock, ours = results["aiortc"], results["softphone"]
    print(f"# audio quality, {runs} run(s) per scenario; load average {load_before:.2f} "
          f"before, {os.getloadavg()[0]:.2f} after ({os.cpu_count()} cores)")
    print(f"{'measure':<42} {'aiortc':>9} {'softphone':>10}  target")
    for name in scenarios:
        print(f"{'PESQ-WB, ' + name:<42} {stock['pesq'][name]:>9.2f} "
              f"{ours['pesq'][name]:>10.2f}  {verdict(name, stock, ours)}")
        print(f"{'  sent, RTP payload (kbit/s)':<42} {stock['kbps'][name]:>9.0f} "
              f"{ours['kbps'][name]:>10.0f}")
    a, o = stock["delay"]["delay_ms"], ours["delay"]["delay_ms"]
    print(f"{'one-way delay, clean (ms)':<42} {fmt(a, '.1f'):>9} {fmt(o, '.1f'):>10}  "
          f"<= 30: {'met' if o is not None and o <= 30 else 'MISSED'}")
    for label, key in (("delay before a 300 ms burst (ms)", "before_ms"),
                       ("delay 2 s after the burst (ms)", "after_ms")):
        a, o = stock["burst"][key], ours["burst"][key]
        note = ""
        if key == "after_ms":
            before = ours["burst"]["before_ms"]
            ok = o is not None and before is not None and o <= before + 10
            note = f"within 10 of before: {'met' if ok else 'MISSED'}"
        print(f"{label:<42} {fmt(a, '.1f'):>9} {fmt(o, '.1f'):>10}  {note}")
    a, o = stock["cpu"]["cpu_percent"], ours["cpu"]["cpu_percent"]
    print(f"{'CPU per party, % of a core':<42} {a:>9.1f} {o:>10.1f}  "
          f"<= stock: {'met' if o <= a else 'MISSED'}")
    print(f"{'  (each party; sent kbit/s)':<42} "
          f"{'/'.join(f'{x:.1f}' for x in stock['cpu']['cpu_parties']):>9} "
          f"{'/'.join(f'{x:.1f}' for x in ours['cpu']['cpu_parties']):>10}  "
          f"{stock['cpu']['kbps']:.0f} / {ours['cpu']['kbps']:.0f}")
    print("\n# softphone, clean: PESQ-WB against the bits sent (--bitrate ceiling)")
    print(f"{'ceiling':>8} {'sent kbit/s':>12} {'PESQ-WB':>8}")
    for point in ours["curve"]:
        ceiling = "auto" if point["ceiling"] is None else f"{point['ceiling']}k"
        print(f"{ceiling:>8} {point['kbps']:>12.0f} {point['pesq']:>8.2f}")


if __name__ == "__main__":
    main()
