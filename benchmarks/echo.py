"""Echo, double talk, near speech and noise: two CLI phones through a hub and the echo lab.

A is the laptop in a room: ``softphone listen`` on PulseAudio virtual
devices whose speaker is heard again by its own microphone
(tests/support/echolab.py: ``module-loopback`` with ``adjust_time=0``,
40 ms, -6 dB, sample-locked). B is the far end with a headset: ``softphone
call a --play far.wav --record heard.wav --no-audio``; what B records is
what A sends: A's near-end speech and noise, and whatever is left of B's
own speech (the echo). Pink noise and near-end speech (espeak-ng) are
played into A's microphone feed. The timeline, in seconds of A's
microphone feed (B's speech starts within a fraction of a second of it):

    0-2    silence                    the jitter buffers settle
    2-10   B talks alone              residual echo, first 2 s and after
    10-18  both talk                  near speech kept in double talk
    18-26  A alone (the same words)   the voice alone; PESQ-WB
    26-32  nobody talks               noise in near-end silence
    (pink noise into A's microphone from 10 s on: while B talks alone,
    everything B hears is echo, so it is measured by level too)

Measured from B's recording, by correlation with what was sent: the echo
is the least-squares gain of B's own speech in it (at the round-trip lag,
found by cross-correlation between 30 and 800 ms), in dB below that
speech; the near speech is the gain of A's voice. CPU: A's process, utime
+ stime over the call. A's last periodic ``--json`` stats give the
processor's own report (state, echo level, ERLE, delay, gain, CPU).

Each configuration is one call, then ``--m2e-runs`` mouth-to-ear calls
(benchmarks/mouth_to_ear.py, B's speaker hearing a voiced burst said into
A's microphone) with the same flags; the columns are the processing
defaults and ``--no-aec --no-ns --no-agc``, side by side.

    python benchmarks/echo.py                # both columns, about 4 minutes
    python benchmarks/echo.py --m2e-runs 1   # one mouth-to-ear call per column
    python benchmarks/echo.py --check-lab 60 # the echo path alone: delay, drift, gain

The figures depend on the machine's load: the script prints it.

Needs pulseaudio, pulseaudio-utils, libportaudio2, libasound2-plugins,
espeak-ng, sox and the pesq package (pip install 'softphone[bench]').
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mouth_to_ear  # noqa: E402  (this folder: it is on sys.path when run as a script)

from softphone.media.audio import SAMPLE_RATE  # noqa: E402
from tests.support.echolab import EchoLab, pink_noise  # noqa: E402

SOFTPHONE = [sys.executable, "-m", "softphone"]
SEG = 8.0  # seconds per segment of speech
LEAD = 2.0  # silence first: the jitter buffers settle
FAR_TEXTS = ("The birch canoe slid on the smooth planks. Glue the sheet to the dark blue "
             "background.",
             "It is easy to tell the depth of a well. These days a chicken leg is a rare dish.")
NEAR_TEXT = "Rice is often served in round bowls. The juice of lemons makes fine punch."

# The processing flags of `call`/`listen`: the first column is the defaults (processing
# on), the second everything off. (An older softphone without the flags: flags_available()
# is False and both columns run with no flag, the raw lab.)
CONFIGS: dict[str, list[str]] = {
    "default": [],
    "--no-aec --no-ns --no-agc": ["--no-aec", "--no-ns", "--no-agc"],
}


def flags_available() -> bool:
    out = subprocess.run([*SOFTPHONE, "listen", "--help"], capture_output=True, text=True)
    return "--no-aec" in out.stdout


# --- material ------------------------------------------------------------------------------


def speak(text: str, voice: str, seconds: float, peak_dbfs: float) -> np.ndarray:
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", "160", "--stdout", text],
                         check=True, capture_output=True).stdout
    raw = subprocess.run(["sox", "-t", "wav", "-", "-t", "raw", "-r", str(SAMPLE_RATE), "-e",
                          "signed", "-b", "16", "-c", "1", "-"], input=wav, check=True,
                         capture_output=True).stdout
    x = np.frombuffer(raw, dtype=np.int16).astype(np.float64)
    x = x / np.max(np.abs(x)) * 32767 * 10 ** (peak_dbfs / 20)
    n = int(seconds * SAMPLE_RATE)
    if x.size > n - SAMPLE_RATE // 2:
        sys.exit(f"the sentence {text[:30]!r}... is longer than {seconds - 0.5} s")
    out = np.zeros(n)
    out[SAMPLE_RATE // 4: SAMPLE_RATE // 4 + x.size] = x
    return out


@dataclass
class Material:
    far: np.ndarray  # what B sends
    voice: np.ndarray  # one near-end utterance (SEG s)
    feed: np.ndarray  # what goes into A's microphone besides the echo
    voice_track: np.ndarray  # the speech alone in the feed (for correlation)


def material(noise_dbfs: float) -> Material:
    total = int((LEAD + 4 * SEG - 2) * SAMPLE_RATE)
    far = np.zeros(total)
    for k, text in enumerate(FAR_TEXTS):
        a = int((LEAD + k * SEG) * SAMPLE_RATE)
        far[a: a + int(SEG * SAMPLE_RATE)] = speak(text, "en-us", SEG, -6.0)
    voice = speak(NEAR_TEXT, "en-gb+f3", SEG, -8.0)
    track = np.zeros(total)
    a = int((LEAD + SEG) * SAMPLE_RATE)
    track[a: a + voice.size] = voice  # double talk
    track[a + voice.size: a + 2 * voice.size] = voice  # the same words alone
    noise = np.zeros(total)
    noise[a:] = pink_noise((total - a) / SAMPLE_RATE, noise_dbfs)[: total - a]
    return Material(far, voice, track + noise, track)


# --- measuring -------------------------------------------------------------------------------


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getframerate() == SAMPLE_RATE, w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        if w.getnchannels() > 1:
            data = data.reshape(-1, w.getnchannels())[:, 0]
    return data.astype(np.float64)


def xcorr(rec: np.ndarray, ref: np.ndarray, max_lag: int) -> np.ndarray:
    """Cross-correlation of ``rec`` against ``ref`` for lags 0..max_lag (rec later)."""
    size = 1 << int(np.ceil(np.log2(rec.size + ref.size)))
    cc = np.fft.irfft(np.fft.rfft(rec, size) * np.conj(np.fft.rfft(ref, size)), size)
    return cc[: max_lag + 1]


def gain_db(rec: np.ndarray, ref: np.ndarray, lag: int, t0: float, t1: float,
            block_s: float = 0.5, search_ms: float = 80.0) -> float:
    """Gain of ``ref[t0:t1]`` in ``rec`` around ``lag`` (dB), block by block.

    Both jitter buffers move the round trip by tens of ms during a call, so
    each ``block_s`` block takes its own best lag within ``search_ms`` of
    ``lag`` and its least-squares gain; the gains are averaged in power,
    weighted by the reference's energy.
    """
    sec = SAMPLE_RATE
    half = int(search_ms * sec / 1000)
    hit = total = 0.0
    for b0 in np.arange(t0, t1 - block_s / 2, block_s):
        a, b = int(b0 * sec), int(min(b0 + block_s, t1) * sec)
        r = ref[a:b]
        energy = float(np.dot(r, r))
        lo = a + lag - half
        if energy < r.size * 100.0 or lo < 0 or b + lag + half > rec.size:
            continue  # (nearly) silent block, or outside the recording
        cc = xcorr(rec[lo: b + lag + half], r, 2 * half)
        g = float(np.max(np.abs(cc))) / energy
        hit += g * g * energy
        total += energy
    return 10 * np.log10(hit / total + 1e-12) if total else float("nan")


def level_dbfs(x: np.ndarray) -> float:
    return 10 * float(np.log10(float(np.mean(x * x)) / 32768.0**2 + 1e-15))


def pesq_wb(ref: np.ndarray, deg: np.ndarray) -> float:
    import av
    from pesq import pesq  # type: ignore[import-untyped, unused-ignore]

    def to16(x: np.ndarray) -> np.ndarray:
        rs = av.AudioResampler(format="s16", layout="mono", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.clip(x, -32768, 32767).astype(np.int16)
                                           .reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        parts = [f.to_ndarray().reshape(-1) for f in rs.resample(frame)]
        parts += [f.to_ndarray().reshape(-1) for f in rs.resample(None)]
        return np.concatenate(parts).astype(np.float32)

    return float(pesq(16000, to16(ref), to16(deg), "wb"))


@dataclass
class Result:
    echo_first_2s: float = float("nan")
    echo_after: float = float("nan")
    echo_level_after: float = float("nan")
    near_double_talk: float = float("nan")
    near_alone: float = float("nan")
    pesq: float = float("nan")
    noise_dbfs: float = float("nan")
    cpu_percent: float = float("nan")
    echo_lag_ms: float = float("nan")
    #: benchmarks/mouth_to_ear.py with the same flags: each run's median (ms).
    mouth_to_ear: list[float] = field(default_factory=list)
    processor: dict[str, Any] = field(default_factory=dict)
    #: Every periodic report of the processor over the call (``--stats FILE``).
    processor_history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def mouth_to_ear_worst(self) -> float:
        return max(self.mouth_to_ear) if self.mouth_to_ear else float("nan")

    @property
    def mouth_to_ear_median(self) -> float:
        return float(np.median(self.mouth_to_ear)) if self.mouth_to_ear else float("nan")


def analyse(heard: np.ndarray, m: Material, result: Result) -> None:
    sec = SAMPLE_RATE
    rec = np.concatenate((np.zeros(sec), heard))  # A's feed may start before B records
    s1 = LEAD + float(np.flatnonzero(np.abs(m.far[int(LEAD * sec):]) > 30)[0]) / sec
    s2, s3, s4 = LEAD + SEG, LEAD + 2 * SEG, LEAD + 3 * SEG
    # B's speech comes back after a round trip (B -> A's room -> B) of 30..800 ms: looked
    # for there only, since with the echo cancelled anything else may correlate better.
    lo, hi = sec + int(0.03 * sec), sec + int(0.8 * sec)
    cc = np.abs(xcorr(rec[: int((s2 + 3) * sec)], m.far[: int(s2 * sec)], hi))
    far_lag = lo + int(np.argmax(cc[lo:]))
    near_lag = int(np.argmax(np.abs(xcorr(rec, m.voice_track, int(2.5 * sec)))))
    # (With the echo cancelled there is nothing to find: the lag is then noise.)
    result.echo_lag_ms = (far_lag - sec) * 1000 / sec
    result.echo_first_2s = gain_db(rec, m.far, far_lag, s1, s1 + 2.0)
    result.echo_after = gain_db(rec, m.far, far_lag, s1 + 2.0, s2)
    # B alone (its first sentence; the feed may start up to a second before B's speech):
    # everything B hears is echo.
    a, b = int((s1 + 2.0) * sec), int((s2 - 1.0) * sec)
    result.echo_level_after = level_dbfs(rec[far_lag + a: far_lag + b]) - level_dbfs(m.far[a:b])
    result.near_double_talk = gain_db(rec, m.voice_track, near_lag, s2 + 0.5, s3)
    result.near_alone = gain_db(rec, m.voice_track, near_lag, s3 + 0.5, s4)
    a = near_lag + int(s3 * sec)
    result.pesq = pesq_wb(m.voice, rec[a: a + m.voice.size])
    b = near_lag + int((s4 + 1.0) * sec)
    result.noise_dbfs = level_dbfs(rec[b: b + 4 * sec])


# --- running a call --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_call(lab: EchoLab, url: str, m: Material, flags: list[str], work: Path) -> Result:
    far_path = work / "far.wav"
    heard = work / "heard.wav"
    heard.unlink(missing_ok=True)
    with wave.open(str(far_path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(np.clip(m.far, -32768, 32767).astype("<i2").tobytes())
    result = Result()
    a_log = work / "a.log"
    a_err = a_log.open("w")
    # A is the phone with the processing; its flags go here.
    a = subprocess.Popen([*SOFTPHONE, "listen", "--as", "a", "--server", url, "--auto-accept",
                          "--once", "--json", *flags],
                         env={**os.environ, **lab.env_for("a"), "PYTHONUNBUFFERED": "1"},
                         stdout=subprocess.PIPE, stderr=a_err, text=True)
    lines: list[str] = []
    media = threading.Event()

    def read_a() -> None:
        assert a.stdout is not None
        for line in a.stdout:
            lines.append(line)
            if '"media"' in line or '"connected"' in line:
                media.set()

    reader = threading.Thread(target=read_a, daemon=True)
    reader.start()
    time.sleep(2.0)
    duration = str(int(m.far.size / SAMPLE_RATE) + 3)
    b = subprocess.Popen([*SOFTPHONE, "call", "a", "--as", "b", "--server", url, "--play",
                          str(far_path), "--record", str(heard), "--duration", duration,
                          "--no-audio"], env={**os.environ, **lab.env},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not media.wait(20):
            err = (a_log.read_text().strip().splitlines() or [""])[-1]
            raise RuntimeError(f"A never reported media: {''.join(lines[-3:])} {err}")
        cpu0, t0 = cpu_seconds(a.pid), time.monotonic()
        feeder = lab.play_into_mic("a", np.clip(m.feed, -32768, 32767).astype(np.int16))
        feeder.wait(m.feed.size / SAMPLE_RATE + 15)
        cpu1, t1 = cpu_seconds(a.pid), time.monotonic()
        result.cpu_percent = (cpu1 - cpu0) / (t1 - t0) * 100
        b.wait(30)
        a.wait(15)
    finally:
        for p in (b, a):
            if p.poll() is None:
                p.kill()
                p.wait(5)
        a_err.close()
    reader.join(2)
    for line in lines:  # the processor's stats in A's periodic --json stats
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and isinstance(event.get("voice_processing"), dict):
            result.processor = event["voice_processing"]
            result.processor_history.append(event["voice_processing"])
    analyse(read_wav(heard), m, result)
    return result


# --- the report ------------------------------------------------------------------------------


ROWS = [
    ("echo lag B -> A's room -> B (ms)", "echo_lag_ms", "{:.0f}"),
    ("residual echo, first 2 s (dB under B's speech)", "echo_first_2s", "{:.1f}"),
    ("residual echo after 2 s (dB, by correlation)", "echo_after", "{:.1f}"),
    ("  all B hears then, by level (dB under its speech)", "echo_level_after", "{:.1f}"),
    ("near speech in double talk (dB gain)", "near_double_talk", "{:.1f}"),
    ("near speech alone, same words (dB gain)", "near_alone", "{:.1f}"),
    ("PESQ-WB of near speech alone", "pesq", "{:.2f}"),
    ("noise in near-end silence (dBFS)", "noise_dbfs", "{:.1f}"),
    ("CPU of A's process (% of a core)", "cpu_percent", "{:.1f}"),
    ("mouth to ear A -> B, median of the runs (ms)", "mouth_to_ear_median", "{:.1f}"),
    ("mouth to ear, worst run (ms)", "mouth_to_ear_worst", "{:.1f}"),
]


def report(results: dict[str, Result], flags_ok: bool) -> None:
    names = list(results)
    width = max(len(r[0]) for r in ROWS) + 2
    print("".join([" " * width, *(f"{n:>28}" for n in names)]))
    for label, attr, fmt in ROWS:
        cells = [fmt.format(getattr(results[n], attr)) for n in names]
        print(label.ljust(width) + "".join(f"{c:>28}" for c in cells))
    d, off = results[names[0]], results[names[1]]
    print(f"near speech lost in double talk: {d.near_alone - d.near_double_talk:.1f} dB against "
          f"the voice alone, {off.near_double_talk - d.near_double_talk:.1f} dB against "
          f"{names[1]}")
    print(f"noise: {off.noise_dbfs - d.noise_dbfs:.1f} dB lower than {names[1]}; "
          f"PESQ-WB {d.pesq - off.pesq:+.2f}; CPU added {d.cpu_percent - off.cpu_percent:.1f} "
          f"% of a core")
    for name, r in results.items():
        if r.processor:
            print(f"{name}: the processor's own report: {r.processor}")
    if not flags_ok:
        print("NOTE: the CLI has no --no-aec/--no-ns/--no-agc yet and no processing: both "
              "columns are the raw lab (no echo cancellation in either).")


def check_lab(seconds: float) -> None:
    lab = EchoLab(("a",)).start()
    try:
        got = lab.measure_echo("a", seconds)
    finally:
        lab.stop()
    print(f"echo path a_speaker -> a_mic over {seconds:.0f} s ({got.bursts} bursts): "
          f"delay {got.delay_ms:.1f} ms (parec stamps, spread {got.delay_spread_ms:.1f} ms), "
          f"drift {got.drift_samples} samples, gain {got.gain_db:.2f} dB "
          f"(spread {got.gain_spread_db:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check-lab", type=float, metavar="SECONDS",
                        help="only measure the lab's echo path for this long")
    parser.add_argument("--noise", type=float, default=-50.0, help="pink noise level, dBFS")
    parser.add_argument("--m2e-runs", type=int, default=5,
                        help="mouth-to-ear calls per column (benchmarks/mouth_to_ear.py)")
    parser.add_argument("--stats", metavar="FILE",
                        help="write every periodic report of A's processor here (JSON lines)")
    args = parser.parse_args()
    for tool in ("espeak-ng", "sox", "pulseaudio", "pacat", "parec"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: apt-get install espeak-ng sox pulseaudio "
                     "pulseaudio-utils")
    if args.stats:  # a path that cannot be written: said now, not after the calls
        try:
            Path(args.stats).write_text("")
        except OSError as exc:
            sys.exit(f"cannot write {args.stats}: {exc.strerror or exc}")
    if args.check_lab:
        check_lab(args.check_lab)
        return
    try:
        import pesq  # noqa: F401
    except ImportError:
        sys.exit("the pesq package is missing: pip install 'softphone[bench]'")
    flags_ok = flags_available()
    m = material(args.noise)
    results: dict[str, Result] = {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="softphone-echo-") as tmp:
        for name, flags in CONFIGS.items():
            lab = EchoLab(("a", "b")).start()
            port = free_port()
            hub_log = Path(tmp) / "hub.log"
            with hub_log.open("w") as log:
                hub = subprocess.Popen([*SOFTPHONE, "serve", "--port", str(port),
                                        "--ice-server", "none"], stdout=subprocess.DEVNULL,
                                       stderr=log)
            try:
                wait_port(hub, port, hub_log)
                url = f"http://127.0.0.1:{port}"
                use = flags if flags_ok else []
                results[name] = one_call(lab, url, m, use, Path(tmp))
                for k in range(args.m2e_runs):
                    try:
                        run = mouth_to_ear.one_run(lab, url, use, 10)
                    except mouth_to_ear.LabFailed as exc:
                        print(f"{name}: mouth to ear run {k + 1}: the lab failed, nothing "
                              f"measured: {exc}", file=sys.stderr)
                        continue
                    if run.delays:
                        results[name].mouth_to_ear.append(float(np.median(run.delays)))
            finally:
                hub.terminate()
                hub.wait(10)
                lab.stop()
    report(results, flags_ok)
    if args.stats:
        with open(args.stats, "w") as out:
            for name, r in results.items():
                for snapshot in r.processor_history:
                    out.write(json.dumps({"config": name, **snapshot}) + "\n")
        print(f"the processor's reports over each call: {args.stats}")
    print(f"load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f} "
          f"({os.cpu_count()} cores)")


def wait_port(hub: subprocess.Popen[bytes], port: int, log: Path, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and hub.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    last = (log.read_text().strip().splitlines() or ["(nothing on stderr)"])[-1]
    sys.exit(f"the hub did not listen on port {port}: {last}")


if __name__ == "__main__":
    main()
