"""Mouth-to-ear delay: a voiced burst into A's microphone, heard on B's speaker.

Two softphone processes call each other through a hub, each on its own
PulseAudio virtual devices (tests/support/pulse.py: a private server, null
sinks, sounddevice -> PortAudio -> ALSA pulse plugin, the real device path).
A burst (60 ms of a voiced sound whose pitch glides from 110 to 190 Hz,
like the start of a vowel said as a question) is played into A's
microphone feed (a pacat stream fed in real time) and
found, by cross-correlation with the burst, twice: where A's microphone
takes it (the feed sink's monitor, which A's microphone is remapped from)
and on B's speaker (its monitor). Both are parec streams with the same
settings whose chunks are stamped as they arrive; the delay is the time
of the match on B's speaker less the time of the match at A's
microphone. What pacat buffers (PulseAudio raises a stream's latency at
each underrun: on a loaded machine by tens of ms in a run) is before both
and counts in neither; parec's buffering is in both and cancels. What is
left is microphone capture to speaker output: device buffers, voice
processing, Opus framing, network, jitter buffer, and B's speaker sink.
Matching the waveform, not a level threshold, measures the same delay
whatever the voice processing does to the level (its noise suppressor
takes most of a short tone burst; its gain control raises a voice). The
pitch glides so that there is one best match: with a steady pitch the
waveform matches itself one period later too, and once the noise
suppressor (in the feed's digital silence) has learned to weaken a
burst's onset, the best match slid one or two periods (7.1 ms each at
140 Hz) later after the first few bursts of a call, while the processing's
delay stayed the same (offline, the real processor: 16.0 ms, then 23.1;
with the glide 16.0 throughout).

Beside each run it prints what the phones say the delay is made of (their
``--json`` stats, ``delay``: :mod:`softphone.media.delay`): A's sending
(microphone, voice processing, frame, Opus's look-ahead), the network, and
B's receiving (jitter buffer wait, speaker), each the median over the call,
and A's own estimate of it (B tells A its receiving part in RTCP XR).

Each run is a new call (its own jitter buffer and device phases); the
phones run with their defaults (voice processing on) unless flags are
given after ``--``, e.g. ``-- --no-aec --no-ns --no-agc``. B's periodic
``--json`` stats give its jitter buffer; A's give its devices.

    python benchmarks/mouth_to_ear.py [--runs 5] [--bursts 15] [-- FLAGS]

Needs pulseaudio, pulseaudio-utils, libportaudio2, libasound2-plugins. The
figures depend on the machine's load: the script prints it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from softphone.media.audio import SAMPLE_RATE  # noqa: E402
from tests.support.pulse import PulseLab, Recording  # noqa: E402

BLOCK = SAMPLE_RATE // 100  # 10 ms
SOFTPHONE = [sys.executable, "-m", "softphone"]
#: Normalized correlation a burst must reach to count as found.
MIN_MATCH = 0.5
#: Seconds after a burst was said that it is looked for (the next comes 0.7 s later).
SEARCH = 0.5


def voiced_burst(seconds: float = 0.06, f0: tuple[float, float] = (110.0, 190.0),
                 peak: float = 12000.0) -> np.ndarray:
    """A short voiced sound: harmonics of a pitch gliding from ``f0[0]`` to ``f0[1]`` Hz,
    falling 6 dB an octave, Hann-shaped (one best match: see the module docstring)."""
    n = int(seconds * SAMPLE_RATE)
    phase = 2 * np.pi * np.cumsum(np.linspace(f0[0], f0[1], n)) / SAMPLE_RATE
    x = sum(np.sin(k * phase) / k for k in range(1, 25)) * np.hanning(n)
    out: np.ndarray = x / np.max(np.abs(x)) * peak
    return out


BURST = voiced_burst()


class Mouth:
    """pacat streams fed in real time with silence; :meth:`say` sends the burst now."""

    def __init__(self, lab: PulseLab, sinks: list[str]) -> None:
        self.errors = [tempfile.TemporaryFile() for _ in sinks]  # (pacat's stderr)
        self.procs = [lab._popen(["pacat", "--playback", "-d", sink, "--format=s16le",
                                  f"--rate={SAMPLE_RATE}", "--channels=1", "--raw",
                                  "--latency-msec=10"], stdin=subprocess.PIPE, stderr=err)
                      for sink, err in zip(sinks, self.errors, strict=True)]
        #: Why the feed stopped early (pacat exited), else None.
        self.failed: str | None = None
        self._go = threading.Event()
        self.said_at: list[float] = []
        self._stop = False
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        pipes = [p.stdin for p in self.procs if p.stdin is not None]
        silence = np.zeros(BLOCK, dtype="<i2").tobytes()
        burst = BURST.astype("<i2")
        blocks = [np.pad(burst[i:i + BLOCK], (0, max(0, i + BLOCK - burst.size)))
                  .astype("<i2").tobytes() for i in range(0, burst.size, BLOCK)]
        start = time.monotonic()
        n = 0
        queue: list[bytes] = []
        while not self._stop:
            if self._go.is_set() and not queue:
                self._go.clear()
                self.said_at.append(time.monotonic())
                queue = list(blocks)
            block = queue.pop(0) if queue else silence
            try:
                for pipe in pipes:
                    pipe.write(block)
                    pipe.flush()
            except OSError as exc:  # pacat exited: say why, once the run is reported
                self.failed = f"the mouth's pacat stopped ({exc.strerror}): {self._why()}"
                return
            n += 1
            wait = start + n * BLOCK / SAMPLE_RATE - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            elif wait < -0.02:  # late: never catch up, or pacat's buffer (and delay) grows
                start -= wait

    def _why(self) -> str:
        parts = []
        for proc, err in zip(self.procs, self.errors, strict=True):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1)
            err.seek(0)
            text = err.read().decode(errors="replace").strip().replace("\n", " | ")
            parts.append(f"exit {proc.returncode}, {text or 'nothing on stderr'}")
        return "; ".join(parts)

    def say(self) -> None:
        self._go.set()

    def stop(self) -> None:
        self._stop = True
        self._thread.join(2)
        for proc in self.procs:
            proc.kill()
            proc.wait(5)
        for err in self.errors:
            err.close()


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

    def time_of(self, index: int) -> float | None:
        """When sample ``index`` came out: its chunk's arrival less what followed it."""
        ends = [s[1] for s in self.stamps]
        k = int(np.searchsorted(ends, index, side="right"))
        if k >= len(self.stamps):
            return None
        arrived, end = self.stamps[k]
        return arrived - (end - index) / SAMPLE_RATE

    def index_at(self, when: float) -> int:
        """The sample that came out at ``when`` (the inverse of :meth:`time_of`)."""
        for arrived, end in self.stamps:
            if arrived >= when:
                return max(0, end - int((arrived - when) * SAMPLE_RATE))
        return self.stamps[-1][1] if self.stamps else 0

    def found(self, said_at: list[float]) -> list[float | None]:
        """Per burst said at ``said_at``: when its best match came out (None: not found)."""
        self._stop = True
        self._watch.join(2)
        x = self.rec.samples().astype(np.float64)
        energy = float(np.dot(BURST, BURST))
        out: list[float | None] = []
        for said in said_at:
            a = self.index_at(said)
            seg = x[a: a + int(SEARCH * SAMPLE_RATE)]
            heard = None
            if seg.size >= BURST.size * 2:
                cc = np.correlate(seg, BURST, "valid")
                k = int(np.argmax(cc))
                match = seg[k: k + BURST.size]
                norm = float(np.sqrt(np.dot(match, match) * energy))
                if norm > 0 and cc[k] / norm >= MIN_MATCH:
                    heard = self.time_of(a + k)
            out.append(heard)
        return out


class LabFailed(RuntimeError):
    """The lab itself failed (not the phones): the run measured nothing."""


def run_bursts(lab: PulseLab, sink: str, source: str, bursts: int) -> list[float | None]:
    """Bursts into ``sink``: ms from its monitor to ``source``, per burst (None: not found)."""
    ears = [Ear(lab, source), Ear(lab, f"{sink}.monitor")]
    mouth = Mouth(lab, [sink])
    time.sleep(1.0)
    for _ in range(bursts):
        mouth.say()
        time.sleep(0.7)
    time.sleep(0.5)
    mouth.stop()
    for ear in ears:
        ear.rec.stop()
    if mouth.failed:
        raise LabFailed(mouth.failed)
    heard, said = (ear.found(mouth.said_at) for ear in ears)
    return [None if h is None or s is None else (h - s) * 1000
            for h, s in zip(heard, said, strict=True)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Run:
    #: Per burst: A's microphone to B's speaker (ms; None: not found).
    found_ms: list[float | None]
    stats: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def delays(self) -> list[float]:
        return [d for d in self.found_ms if d is not None]


class Phone:
    """A softphone process with --json; its periodic stats kept."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([*SOFTPHONE, *argv, "--json"], env={**os.environ, **env},
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        self.stats: list[dict[str, Any]] = []
        self.events: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            self.events.append(str(event.get("event")))
            if event.get("event") == "stats":
                self.stats.append(event)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def one_run(lab: PulseLab, url: str, flags: list[str], bursts: int) -> Run:
    b = Phone(["listen", "--as", "b", "--server", url, "--auto-accept", "--once", *flags],
              lab.env_for("b"))
    try:
        deadline = time.monotonic() + 20
        while "listening" not in b.events and time.monotonic() < deadline:
            time.sleep(0.1)
        a = Phone(["call", "b", "--as", "a", "--server", url, *flags], lab.env_for("a"))
        try:
            time.sleep(3.0)  # connected, jitter buffer settled
            found = run_bursts(lab, lab.feed("a"), f"{lab.speaker('b')}.monitor", bursts)
        finally:
            a.stop()
    finally:
        b.stop()
    return Run(found, {"a": a.stats, "b": b.stats})


def describe(run: Run) -> str:
    d = run.delays
    last_b = run.stats["b"][-1] if run.stats["b"] else {}
    media = last_b.get("media") or {}
    buffers = [s["media"]["buffer_ms"] for s in run.stats["b"]
               if s.get("media") and s["media"].get("buffer_ms") is not None]
    devices = {**((run.stats["a"][-1] if run.stats["a"] else {}).get("devices") or {})}
    xruns = (f"A's mic overflows {devices.get('mic_overflows', '?')}, "
             f"dropped {devices.get('mic_dropped_ms', '?')} ms; "
             f"B's speaker underruns {(last_b.get('devices') or {}).get('speaker_underruns', '?')}")
    return (f"median {statistics.median(d):.1f} ms (min {min(d):.1f}, max {max(d):.1f}, "
            f"{len(d)}/{len(run.found_ms)} bursts); B's jitter buffer "
            f"{'/'.join(f'{b:.0f}' for b in buffers) or '?'} ms, target "
            f"{media.get('target_ms', '?')} ms; {xruns}\n  {budget(run)}")


def part(run: Run, end: str, name: str) -> float | None:
    """The median over a call of one of an end's delay parts (its ``--json`` stats)."""
    values = [s["delay"][name] for s in run.stats[end]
              if s.get("delay") and s["delay"].get(name) is not None]
    return statistics.median(values) if values else None


def budget(run: Run) -> str:
    """What the phones say the delay is made of: A's sending, the network, B's receiving."""
    def ms(x: float | None) -> str:
        return "?" if x is None else f"{x:.1f}"

    send = [("mic", part(run, "a", "mic_ms")), ("processing", part(run, "a", "processing_ms")),
            ("frame", part(run, "a", "frame_ms")), ("codec", part(run, "a", "codec_ms"))]
    receive = [("jitter buffer", part(run, "b", "jitter_buffer_ms")),
               ("speaker", part(run, "b", "speaker_ms"))]
    network = part(run, "b", "network_ms")
    parts = [v for _, v in (*send, *receive, ("network", network))]
    known = [v for v in parts if v is not None]
    return (f"the phones' parts: A sends {' + '.join(f'{n} {ms(v)}' for n, v in send)}; "
            f"network {ms(network)}; B receives "
            f"{' + '.join(f'{n} {ms(v)}' for n, v in receive)}: {sum(known):.1f} ms"
            f"{'' if len(known) == len(parts) else ' (the known parts only)'}; "
            f"A's own estimate (B's part from its RTCP XR): "
            f"{ms(part(run, 'a', 'mouth_to_ear_ms'))} ms")


def main() -> None:
    argv = sys.argv[1:]
    flags: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, flags = argv[:at], argv[at + 1:]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="calls, each measured alone")
    parser.add_argument("--bursts", type=int, default=15, help="bursts per call")
    parser.add_argument("--each", action="store_true", help="print every burst's delay")
    parser.add_argument("--limit", type=float, default=45.0,
                        help="the target: every run's median at most this (ms)")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    lab = PulseLab(("a", "b")).start()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    hub = subprocess.Popen([*SOFTPHONE, "serve", "--port", str(port), "--ice-server", "none"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs: list[Run] = []
    failed = None
    try:
        time.sleep(1.5)
        for k in range(args.runs):
            try:
                run = one_run(lab, url, flags, args.bursts)
            except LabFailed as exc:
                failed = f"run {k + 1}: the lab failed, nothing measured: {exc}"
                break
            if not run.delays:
                failed = f"run {k + 1}: no burst came through the call"
                break
            runs.append(run)
            print(f"run {k + 1}: {describe(run)}", flush=True)
            if args.each:
                print("  each", [d and round(d, 1) for d in run.found_ms])
    finally:
        hub.terminate()
        hub.wait(10)
        lab.stop()
    medians = [statistics.median(r.delays) for r in runs]
    if medians:
        worst = max(medians)
        print(f"mouth to ear ({' '.join(flags) or 'defaults'}): "
              f"medians {' / '.join(f'{m:.1f}' for m in medians)} ms; worst {worst:.1f} ms "
              f"({'within' if worst <= args.limit else 'OVER'} {args.limit:g} ms)"
              f"{f' ({len(runs)} of {args.runs} runs)' if failed else ''}")
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} "
          f"({os.cpu_count()} cores)")
    if failed:
        sys.exit(failed)


if __name__ == "__main__":
    main()
