"""Mouth-to-ear delay: a click into A's microphone, heard on B's speaker.

Two softphone processes call each other through a hub, each on its own
PulseAudio virtual devices (tests/pulse.py: a private server, null sinks,
sounddevice -> PortAudio -> ALSA pulse plugin, the real device path). A
click is played into A's virtual microphone (a pacat stream fed in real
time) and detected in B's virtual speaker's monitor (a parec stream read as
it comes); the delay is detection time minus the time the click was handed
to pacat.

The audio server's own share (pacat's and parec's buffers, the null sink)
is measured first with the same tools on one null sink alone
(pacat -> sink -> parec) and subtracted: what is left is softphone's share,
microphone capture to speaker output (device buffers, Opus, network,
jitter buffer).

    python benchmarks/mouth_to_ear.py [--clicks 20]

Needs pulseaudio, pulseaudio-utils, libportaudio2, libasound2-plugins.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from softphone.media.audio import SAMPLE_RATE  # noqa: E402
from tests.support.pulse import PulseLab, Recording  # noqa: E402

BLOCK = SAMPLE_RATE // 100  # 10 ms
THRESHOLD = 3000


class Mouth:
    """A pacat stream fed in real time with silence; :meth:`click` sends a click now."""

    def __init__(self, lab: PulseLab, sink: str) -> None:
        self.proc = lab._popen(["pacat", "--playback", "-d", sink, "--format=s16le",
                                f"--rate={SAMPLE_RATE}", "--channels=1", "--raw",
                                "--latency-msec=10"], stdin=subprocess.PIPE)
        self._click = threading.Event()
        self.clicked_at: list[float] = []
        self._stop = False
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        assert self.proc.stdin is not None
        silence = np.zeros(BLOCK, dtype="<i2").tobytes()
        t = np.arange(BLOCK) / SAMPLE_RATE
        click = (np.sin(2 * np.pi * 1000 * t) * 16000).astype("<i2").tobytes()
        start = time.monotonic()
        n = 0
        while not self._stop:
            if self._click.is_set():
                self._click.clear()
                self.clicked_at.append(time.monotonic())
                self.proc.stdin.write(click)
            else:
                self.proc.stdin.write(silence)
            self.proc.stdin.flush()
            n += 1
            wait = start + n * BLOCK / SAMPLE_RATE - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            elif wait < -0.02:  # late: never catch up, or pacat's buffer (and delay) grows
                start -= wait

    def click(self) -> None:
        self._click.set()

    def stop(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.proc.kill()


class Ear:
    """A parec stream whose every chunk is stamped with its arrival time."""

    def __init__(self, lab: PulseLab, source: str) -> None:
        self.rec: Recording = lab.record(source, latency_ms=10)
        self.stamps: list[tuple[float, int]] = []  # (arrival time, samples so far)
        self._total = 0
        self._watch = threading.Thread(target=self._stamp, daemon=True)
        self._seen = 0
        self._stop = False
        self._watch.start()

    def _stamp(self) -> None:
        while not self._stop:
            chunks = self.rec.chunks
            while self._seen < len(chunks):
                self._total += len(chunks[self._seen]) // 2
                self._seen += 1
                self.stamps.append((time.monotonic(), self._total))
            time.sleep(0.001)

    def detections(self) -> list[float]:
        """Times at which each click's first loud sample came out."""
        self._stop = True
        self._watch.join(2)
        samples = self.rec.samples()
        loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > THRESHOLD)
        times: list[float] = []
        last = -SAMPLE_RATE
        ends = np.array([s[1] for s in self.stamps])
        for idx in loud:
            if idx - last < SAMPLE_RATE // 2:
                continue  # the same click
            last = int(idx)
            k = int(np.searchsorted(ends, idx, side="right"))
            if k >= len(self.stamps):
                break
            arrived, end = self.stamps[k]
            times.append(arrived - (end - idx) / SAMPLE_RATE)
        return times


def delays(mouth: Mouth, ear: Ear) -> list[float]:
    heard = ear.detections()
    out = []
    for sent in mouth.clicked_at:
        after = [t - sent for t in heard if 0 < t - sent < 1.0]
        if after:
            out.append(after[0] * 1000)
    return out


def run_clicks(lab: PulseLab, sink: str, source: str, clicks: int) -> list[float]:
    ear = Ear(lab, source)
    mouth = Mouth(lab, sink)
    time.sleep(1.0)
    for _ in range(clicks):
        mouth.click()
        time.sleep(0.7)
    time.sleep(0.5)
    mouth.stop()
    ear.rec.stop()
    return delays(mouth, ear)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=20)
    args = parser.parse_args()
    load_before = os.getloadavg()
    lab = PulseLab(("a", "b")).start()
    softphone = [sys.executable, "-m", "softphone"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        server = lab.speaker("a")  # unused by the call yet: the loopback calibration
        loop = run_clicks(lab, server, f"{server}.monitor", args.clicks)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        procs.append(subprocess.Popen([*softphone, "serve", "--port", str(port),
                                       "--ice-server", "none"], stdout=subprocess.DEVNULL))
        time.sleep(1.5)
        procs.append(subprocess.Popen([*softphone, "listen", "--as", "b", "--server", url,
                                       "--auto-accept", "--once"],
                                      env={**os.environ, **lab.env_for("b")},
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1.5)
        procs.append(subprocess.Popen([*softphone, "call", "b", "--as", "a", "--server", url],
                                      env={**os.environ, **lab.env_for("a")},
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(3.0)  # connected, jitter buffer settled
        call = run_clicks(lab, lab.feed("a"), f"{lab.speaker('b')}.monitor", args.clicks)
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        lab.stop()
    load_after = os.getloadavg()
    if not loop or not call:
        sys.exit(f"clicks not detected (loopback {len(loop)}, call {len(call)})")
    base = statistics.median(loop)
    raw = statistics.median(call)
    print(f"audio server loopback (pacat -> null sink -> parec): median {base:.1f} ms "
          f"({len(loop)} clicks, {min(loop):.1f}..{max(loop):.1f})")
    print(f"through the call (A's mic feed -> B's speaker monitor): median {raw:.1f} ms "
          f"({len(call)}/{args.clicks} clicks, {min(call):.1f}..{max(call):.1f})")
    spread = sorted(c - base for c in call)
    print(f"mouth to ear, audio server calibrated out: median {raw - base:.1f} ms "
          f"(p10 {spread[len(spread) // 10]:.1f}, p90 {spread[len(spread) * 9 // 10]:.1f})")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
          f"({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
