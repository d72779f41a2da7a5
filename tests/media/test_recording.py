"""Recordings are valid WAV files after a clean close, Ctrl-C or SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np

from softphone.media.audio import ToneGenerator
from softphone.media.recording import WavWriter

from ..support.helpers import assert_tone, read_wav


def test_clean_close(tmp_path) -> None:
    path = tmp_path / "x.wav"
    w = WavWriter(path)
    tone = ToneGenerator(1000)
    for _ in range(50):
        w.write(tone.next().tobytes())
    w.close()
    w.close()  # idempotent
    samples, rate = read_wav(path)
    assert rate == 48_000 and samples.size == 50 * 960
    assert_tone(samples, 1000, skip=0, tolerance=2)


def test_empty_recording_is_valid(tmp_path) -> None:
    path = tmp_path / "empty.wav"
    WavWriter(path).close()
    samples, _ = read_wav(path)
    assert samples.size == 0


def test_sigkill_leaves_a_valid_file(tmp_path) -> None:
    """The header is rewritten on every flush: a killed process leaves a playable file."""
    path = tmp_path / "killed.wav"
    script = textwrap.dedent(f"""
        import sys, time
        from softphone.media.audio import ToneGenerator
        from softphone.media.recording import WavWriter
        w = WavWriter({str(path)!r}, flush_every=0.1)
        tone = ToneGenerator(700)
        for i in range(1000):
            w.write(tone.next().tobytes())
            if i == 100:
                print("ready", flush=True)
            time.sleep(0.01)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    samples, _ = read_wav(path)
    assert samples.size >= 100 * 960  # at least what was written before "ready"
    assert_tone(samples, 700, skip=0, tolerance=2)
    assert path.stat().st_size == 44 + samples.size * 2 or samples.size * 2 <= \
        path.stat().st_size - 44  # header never claims more than the file holds
    assert np.any(samples)
