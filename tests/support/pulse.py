"""A private PulseAudio server with virtual microphones and speakers (no hardware).

The recipe measured in ``../shared/NOTES.md``: pulseaudio in user mode with
a private runtime directory; per phone a null sink as its speaker and a
second null sink (the "feed") whose monitor is remapped into its
microphone; ``rate=48000 channels=1``; one idle ``parec`` reading each
monitor (otherwise new streams stall up to 2 s). A softphone process uses
it through sounddevice -> PortAudio (ALSA) -> the ALSA pulse plugin, with
:meth:`PulseLab.env_for` in its environment (``PULSE_SERVER`` must be set
before the process starts; ``PULSE_SINK`` / ``PULSE_SOURCE`` pick its own
devices on the shared server).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from softphone.media.audio import SAMPLE_RATE, ToneGenerator

PACKAGES = "apt-get install pulseaudio pulseaudio-utils libportaudio2 libasound2-plugins"


def need_pulse() -> None:
    """Skip (or fail in CI) unless PulseAudio, its tools and PortAudio are installed."""
    from ..conftest import need, need_command  # (here: the benchmarks use this module too)

    for cmd, pkg in (("pulseaudio", "pulseaudio"), ("pacat", "pulseaudio-utils"),
                     ("parec", "pulseaudio-utils")):
        need_command(cmd, pkg)
    need(Path("/usr/share/alsa/alsa.conf.d/pulse.conf").exists()
         or any(Path(p).exists() for p in ("/etc/alsa/conf.d/99-pulse.conf",
                                            "/usr/share/alsa/alsa.conf.d/50-pulseaudio.conf")),
         "the ALSA pulse plugin", f"install it: {PACKAGES}")
    try:
        import sounddevice  # noqa: F401
    except OSError as exc:
        need(False, f"PortAudio ({exc})", f"install it: {PACKAGES}")


class PulseLab:
    """One PulseAudio server holding a microphone and a speaker for each phone."""

    def __init__(self, phones: Iterable[str] = ("a", "b"), *, client_shm: bool = True) -> None:
        """``client_shm=False``: its clients send audio over the socket, not shared
        memory. PulseAudio 16's server aborts now and then when a client's
        shared-memory connection closes under load (``memblock.c: Assertion
        'pa_atomic_load(&b->pool->stat.n_imported) > 0' failed``): 11 of 114 runs of
        100 speaker reopens with one busy loop, 0 of 56 with it off (2026-12-07). A
        speaker's buffer change is such a close; the tests' labs turn it off so that
        this server bug does not fail them (the benchmarks keep the default)."""
        self.phones = list(phones)
        self.dir = Path(tempfile.mkdtemp(prefix="softphone-pulse-"))
        self.socket = self.dir / "pulse" / "native"
        self.env = {
            "XDG_RUNTIME_DIR": str(self.dir),
            "PULSE_STATE_PATH": str(self.dir / "state"),
            "PULSE_COOKIE": str(self.dir / "cookie"),
            "PULSE_SERVER": f"unix:{self.socket}",
            "HOME": str(self.dir),
        }
        if not client_shm:
            conf = self.dir / "client.conf"
            conf.write_text("enable-shm = no\n")
            self.env["PULSE_CLIENTCONFIG"] = str(conf)
        self._idle: list[subprocess.Popen[bytes]] = []
        self._children: list[subprocess.Popen[bytes]] = []
        self._daemon_pid: int | None = None
        self._recordings: list[Recording] = []

    # names ------------------------------------------------------------------

    @staticmethod
    def speaker(phone: str) -> str:
        return f"{phone}_speaker"

    @staticmethod
    def feed(phone: str) -> str:
        """The null sink whose monitor is ``phone``'s microphone: play into it."""
        return f"{phone}_mic_feed"

    @staticmethod
    def mic(phone: str) -> str:
        return f"{phone}_mic"

    def env_for(self, phone: str) -> dict[str, str]:
        """Environment of a process whose default devices are ``phone``'s."""
        return {**self.env, "PULSE_SINK": self.speaker(phone), "PULSE_SOURCE": self.mic(phone)}

    # life -------------------------------------------------------------------

    def start(self) -> PulseLab:
        lines = ["load-module module-native-protocol-unix auth-anonymous=1"]
        for p in self.phones:
            for sink in (self.speaker(p), self.feed(p)):
                lines.append(f"load-module module-null-sink sink_name={sink} rate=48000 "
                             f"channels=1 norewinds=1")
            lines.append(f"load-module module-remap-source source_name={self.mic(p)} "
                         f"master={self.feed(p)}.monitor channels=1 rate=48000")
        pa = self.dir / "lab.pa"
        pa.write_text("\n".join(lines) + "\n")
        (self.dir / "state").mkdir()
        env = {**os.environ, **self.env}
        subprocess.run(["pulseaudio", "-n", "-F", str(pa), "--daemonize=yes", "--system=false",
                        "--exit-idle-time=-1", f"--log-target=file:{self.dir}/pulse.log"],
                       env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=20)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.socket.exists() and subprocess.run(
                    ["pactl", "info"], env=env, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL).returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("pulseaudio did not start")
        pid_file = self.dir / "pulse" / "pid"
        with contextlib.suppress(OSError, ValueError):
            self._daemon_pid = int(pid_file.read_text().split()[0])
        for p in self.phones:
            for sink in (self.speaker(p), self.feed(p)):
                self._idle.append(self._popen(["parec", "-d", f"{sink}.monitor",
                                               "--latency-msec=20"], stdout=subprocess.DEVNULL))
        return self

    def stop(self) -> None:
        for proc in self._children + self._idle:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        for rec in self._recordings:
            rec.stop()
        for proc in self._children + self._idle:
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError, ValueError):
                        stream.close()
        self.kill_server()
        shutil.rmtree(self.dir, ignore_errors=True)

    def kill_server(self) -> None:
        """Make the audio server vanish (a device lost mid-call)."""
        if self._daemon_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._daemon_pid, 9)
            self._daemon_pid = None

    def _popen(self, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        kw.setdefault("stderr", subprocess.DEVNULL)
        proc: subprocess.Popen[bytes] = subprocess.Popen(
            argv, env={**os.environ, **self.env}, **kw)
        return proc

    # audio ------------------------------------------------------------------

    def play(self, sink: str, samples: np.ndarray, latency_ms: int = 20
             ) -> subprocess.Popen[bytes]:
        """Play int16 mono 48 kHz ``samples`` into ``sink`` (``pacat``); returns the process."""
        proc = self._popen(["pacat", "--playback", "-d", sink, "--format=s16le",
                            f"--rate={SAMPLE_RATE}", "--channels=1", "--raw",
                            f"--latency-msec={latency_ms}"], stdin=subprocess.PIPE)
        self._children.append(proc)
        stdin = proc.stdin
        assert stdin is not None
        data = samples.astype("<i2").tobytes()

        def feed() -> None:  # pacat takes it in real time: do not block the caller
            with contextlib.suppress(BrokenPipeError, ValueError, OSError):
                stdin.write(data)
                stdin.close()

        threading.Thread(target=feed, daemon=True, name="pacat-feed").start()
        return proc

    def play_tone(self, phone: str, frequency: float, seconds: float,
                  amplitude: float = 0.3) -> subprocess.Popen[bytes]:
        """A tone into ``phone``'s microphone."""
        tone = ToneGenerator(frequency, amplitude).next(int(seconds * SAMPLE_RATE))
        return self.play(self.feed(phone), tone)

    def record(self, source: str, latency_ms: int = 20) -> Recording:
        """Start recording ``source`` (e.g. ``"a_speaker.monitor"``); see :func:`read_all`."""
        proc = self._popen(["parec", "-d", source, "--format=s16le", f"--rate={SAMPLE_RATE}",
                            "--channels=1", "--raw", f"--latency-msec={latency_ms}"],
                           stdout=subprocess.PIPE)
        self._children.append(proc)
        rec = Recording(proc)
        self._recordings.append(rec)
        return rec

    def record_speaker(self, phone: str) -> Recording:
        return self.record(f"{self.speaker(phone)}.monitor")


class Recording:
    """A parec process whose output is read as it comes (a full pipe would stall it)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.chunks: list[bytes] = []
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._read, daemon=True, name="parec-read")
        self._thread.start()

    def _read(self) -> None:
        stdout = self.proc.stdout
        assert isinstance(stdout, io.BufferedReader)
        while True:
            chunk = stdout.read1(65536)
            if not chunk:
                return
            self.chunks.append(chunk)

    def samples(self) -> np.ndarray:
        """What was recorded so far (int16)."""
        data = b"".join(self.chunks)
        return np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.int16)

    def stop(self) -> np.ndarray:
        """Stop recording (idempotent) and return what was recorded."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._thread.join(10)
        return self.samples()


def read_all(rec: Recording) -> np.ndarray:
    """Stop a :meth:`PulseLab.record` recording and return what it recorded (int16)."""
    return rec.stop()
