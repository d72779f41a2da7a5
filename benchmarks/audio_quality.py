"""Audio quality and delay: softphone's voice pipeline against aiortc's own, side by side.

Each measurement is a real call between two aiortc peers (two Phones through
an embedded hub, on this machine's network address). The receiving side's
packets are impaired (random loss, bursts, jitter) at the same point for both
pipelines, before any buffer. What the receiver *plays out* (pulled every
20 ms, as a sound card would) is scored:

- PESQ-WB (ITU-T P.862.2, the ``pesq`` package) of an espeak-ng speech sample;
- one-way delay, sender's frame handed to the encoder -> frame played out,
  measured with short clicks (median), on a clean call and 2 s after a
  300 ms loss burst.

Three pipelines: aiortc's own; softphone's as shipped (Opus with RED, one
earlier frame repeated in each packet); softphone's with ``--redundancy 0``
(Opus with in-band FEC alone, half the bitrate). The sent bitrate is printed
too. Each pipeline runs in its own process (aiortc's encoder is replaced per
process). Usage::

    python benchmarks/audio_quality.py            # everything (about 12 minutes)
    python benchmarks/audio_quality.py --quick    # fewer scenarios, shorter

Needs espeak-ng (apt-get install espeak-ng) and pesq (pip install pesq).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from softphone import Phone
from softphone.hub.server import Hub, HubConfig
from softphone.media.audio import FRAME_SAMPLES, SAMPLE_RATE
from softphone.media.netsim import Impairment
from softphone.media.opus import EncoderSettings
from softphone.media.rtc import MediaConfig
from softphone.media.tracks import FileSource, PacedSource, load_audio_file

SPEECH = (
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
    "It is easy to tell the depth of a well. These days a chicken leg is a rare dish. "
    "Rice is often served in round bowls. The juice of lemons makes fine punch."
)

SCENARIOS: dict[str, dict[str, Any]] = {
    "5% loss, no jitter": {"loss": 0.05},
    "clean": {},
    "2% loss": {"loss": 0.02, "delay": 0.02, "jitter": 0.01},
    "5% loss": {"loss": 0.05, "delay": 0.02, "jitter": 0.01},
    "10% loss": {"loss": 0.10, "delay": 0.02, "jitter": 0.01},
    "bursty": {"burst_rate": 0.01, "burst_length": 6, "delay": 0.02, "jitter": 0.01},
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
        out = np.zeros(count, dtype=np.int16)
        now = time.monotonic()
        for i in range(count):
            phase = (self.position + i) % self.period_samples
            if phase < self.burst.size:
                out[i] = self.burst[phase]
                if phase == 0:
                    self.sent.append(now + i / SAMPLE_RATE)
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


PIPELINES = ("aiortc", "softphone", "softphone-fec")


def media_config(pipeline: str, impairment: Impairment | None = None) -> MediaConfig:
    if pipeline == "softphone-fec":
        return MediaConfig("softphone", EncoderSettings(redundancy=0), impairment=impairment)
    return MediaConfig(pipeline, impairment=impairment)


async def one_call(pipeline: str, source: PacedSource, seconds: float,
                   impairment: Impairment | None) -> tuple[TimedCapture, float, float]:
    """A calls B; B's receive side is impaired. Returns B's playout, when it
    started, and the RTP payload bitrate A sent (kbit/s)."""
    hub = Hub(HubConfig(ice_servers=[]))
    port = await hub.start()
    url = f"http://127.0.0.1:{port}"
    a = Phone("a", url, media=media_config(pipeline))
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
        await asyncio.sleep(seconds)
        assert call_a.media is not None
        report = await call_a.media.pc.getStats()
        sent = sum(int(stat.bytesSent) for stat in report.values()
                   if getattr(stat, "type", "") == "outbound-rtp")
        kbps = sent * 8 / (time.monotonic() - started) / 1000
        await call_a.hangup()
        await call_b.ended()
    finally:
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


async def pesq_run(pipeline: str, speech_path: str, scenario: dict[str, Any],
                   seed: int) -> dict[str, Any]:
    from pesq import pesq

    speech48 = load_audio_file(speech_path)
    impairment = Impairment(seed=seed, **scenario) if scenario else None
    seconds = speech48.size / SAMPLE_RATE + 1.0
    capture, _, kbps = await one_call(pipeline, FileSource(speech48), seconds, impairment)
    played = capture.audio()
    ref16 = resample(speech48, SAMPLE_RATE, 16000)
    deg16 = resample(played, SAMPLE_RATE, 16000)
    score = float(pesq(16000, ref16.astype(np.float32), deg16.astype(np.float32), "wb"))
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


def worker(args: argparse.Namespace) -> None:
    """Run every measurement for one pipeline; print one JSON object."""
    out: dict[str, Any] = {"pipeline": args.worker, "pesq": {}, "runs": args.runs}
    for name in args.scenarios:
        scores = []
        for run in range(args.runs):
            r = asyncio.run(pesq_run(args.worker, args.speech, SCENARIOS[name], seed=run + 1))
            scores.append(r["pesq"])
            if name == "clean":
                out["kbps"] = r["kbps"]
        out["pesq"][name] = statistics.mean(scores)
    out["delay"] = asyncio.run(delay_run(args.worker, None))
    out["burst"] = asyncio.run(delay_run(args.worker, 3.0))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer scenarios, one run each")
    parser.add_argument("--runs", type=int, default=2, help="runs per scenario (averaged)")
    parser.add_argument("--worker", choices=PIPELINES, help=argparse.SUPPRESS)
    parser.add_argument("--speech", help=argparse.SUPPRESS)
    parser.add_argument("--scenarios", nargs="*", default=list(SCENARIOS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    try:
        import pesq  # noqa: F401
    except ImportError:
        sys.exit("the pesq package is missing: pip install pesq")
    scenarios = ["clean", "5% loss"] if args.quick else list(SCENARIOS)
    runs = 1 if args.quick else args.runs
    with tempfile.TemporaryDirectory() as tmp:
        speech = make_speech(tmp)
        results = {}
        for pipeline in PIPELINES:
            print(f"measuring {pipeline}'s pipeline...", file=sys.stderr, flush=True)
            cmd = [sys.executable, __file__, "--worker", pipeline, "--speech", speech,
                   "--runs", str(runs), "--scenarios", *scenarios]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"{pipeline} worker failed:\n{done.stderr[-3000:]}")
            results[pipeline] = json.loads(done.stdout.strip().splitlines()[-1])
    stock, ours, fec = (results[p] for p in PIPELINES)
    print(f"# audio quality, {runs} run(s) per scenario, load average "
          f"{os.getloadavg()[0]:.2f}, frame {FRAME_SAMPLES / 48:.0f} ms")
    print(f"{'measure':<34} {'aiortc':>9} {'softphone':>10} {'ratio':>7} {'FEC only':>9}")
    for name in scenarios:
        a, o, f = stock["pesq"][name], ours["pesq"][name], fec["pesq"][name]
        print(f"{'PESQ-WB, ' + name:<34} {a:>9.2f} {o:>10.2f} {o / a:>7.2f} {f:>9.2f}")
    rows = [("one-way delay, clean (ms)", "delay", "delay_ms"),
            ("delay before burst (ms)", "burst", "before_ms"),
            ("delay 2 s after burst (ms)", "burst", "after_ms")]
    for label, group, key in rows:
        a, o, f = (r[group][key] for r in (stock, ours, fec))
        ratio = fmt(o / a) if a and o else "n/a"
        print(f"{label:<34} {fmt(a, '.1f'):>9} {fmt(o, '.1f'):>10} {ratio:>7} {fmt(f, '.1f'):>9}")
    a, o, f = (r.get("kbps") for r in (stock, ours, fec))
    ratio = fmt(o / a) if a and o else "n/a"
    print(f"{'sent, RTP payload (kbit/s)':<34} {fmt(a, '.0f'):>9} {fmt(o, '.0f'):>10} "
          f"{ratio:>7} {fmt(f, '.0f'):>9}")


if __name__ == "__main__":
    main()
