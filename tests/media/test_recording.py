"""Recordings are valid WAV files after a clean close, Ctrl-C or SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

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


def write_tone(path, hz: float, frames: int) -> bytes:
    """A finished recording of ``frames`` 20 ms frames of ``hz`` at ``path``; its bytes."""
    w = WavWriter(path)
    tone = ToneGenerator(hz)
    for _ in range(frames):
        w.write(tone.next().tobytes())
    w.close()
    return path.read_bytes()  # type: ignore[no-any-return]


def test_an_existing_file_is_kept_when_nothing_is_recorded(tmp_path) -> None:
    """A call that never connected (hub unreachable, callee offline) records nothing:
    the file an earlier call recorded is left as it was, and nothing else is left."""
    path = tmp_path / "keep.wav"
    before = write_tone(path, 440, 50)
    held = WavWriter(path)
    held.note_held(False)  # (no hold: nothing)
    held.close()
    WavWriter(path).close()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.wav"]


def test_a_recording_is_opened_as_any_file_is(tmp_path) -> None:
    """Through a symbolic link into its target (the link stays), into a device
    (--record /dev/null: it stays a device), keeping an existing file's mode."""
    import stat

    target = tmp_path / "target.wav"
    write_tone(target, 440, 5)
    target.chmod(0o600)
    link = tmp_path / "link.wav"
    link.symlink_to(target)
    paths = [link]
    device = tmp_path / "null"  # (a /dev/null of its own: the real one is never at risk)
    if os.geteuid() == 0:  # (mknod needs root, as CI runs)
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        paths.append(device)
    for path in paths:
        w = WavWriter(path)
        tone = ToneGenerator(700)
        for _ in range(60):
            w.write(tone.next().tobytes())
        w.close()
    assert link.is_symlink() and read_wav(target)[0].size == 60 * 960
    assert_tone(read_wav(target)[0], 700, skip=0, tolerance=2)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    if device in paths:
        assert stat.S_ISCHR(device.stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in
                                                               [target, *paths])


@pytest.mark.parametrize("where", ["folder", "missing-folder", "under-a-file"])
def test_a_path_that_cannot_be_written_fails_at_once(tmp_path, where: str) -> None:
    (tmp_path / "file").write_text("x")
    path = {"folder": tmp_path, "missing-folder": tmp_path / "nope" / "a.wav",
            "under-a-file": tmp_path / "file" / "a.wav"}[where]
    with pytest.raises(OSError):
        WavWriter(path)


def test_an_existing_file_is_replaced_once_audio_comes(tmp_path) -> None:
    path = tmp_path / "keep.wav"
    write_tone(path, 440, 50)
    (tmp_path / "keep.wav.json").write_text('{"held": [[0.1, 0.2]]}')  # the old one's
    w = WavWriter(path, flush_every=0.05)
    tone = ToneGenerator(900)
    for _ in range(60):
        w.write(tone.next().tobytes())
    for _ in range(200):  # the thread moves it onto FILE with the first samples
        if read_wav(path)[0].size != 50 * 960:
            break
        time.sleep(0.01)
    samples, _ = read_wav(path)
    assert samples.size >= 960 and samples.size != 50 * 960
    w.close()
    samples, _ = read_wav(path)
    assert samples.size == 60 * 960
    assert_tone(samples, 900, skip=0, tolerance=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.wav"]  # no stale sidecar


@pytest.mark.parametrize("existing", [False, True], ids=["new", "over-an-old-one"])
def test_sigkill_leaves_a_valid_file(tmp_path, existing: bool) -> None:
    """The header is rewritten on every flush: a killed process leaves a playable file
    (at FILE, also when it replaced an earlier recording there)."""
    path = tmp_path / "killed.wav"
    if existing:
        write_tone(path, 440, 50)
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


class CountingQueue:
    """A stand-in for the thread's queue that counts hand-overs (adapter test)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.puts = 0

    def put(self, item) -> None:
        self.puts += 1
        self.inner.put(item)

    def get(self):
        return self.inner.get()


def test_many_recordings_share_one_thread_woken_once_per_batch(tmp_path) -> None:
    import threading

    from softphone.media.recording import RecordingThread

    thread = RecordingThread(flush_every=0.2)
    counting = CountingQueue(thread._queue)
    thread._queue = counting  # type: ignore[assignment]
    before = threading.active_count()
    tones = [ToneGenerator(300 + 100 * k) for k in range(10)]
    writers = [WavWriter(tmp_path / f"{k}.wav", thread=thread) for k in range(10)]
    for _ in range(100):  # 2 s each, written at once: no time passes between hand-overs
        for w, tone in zip(writers, tones, strict=True):
            w.write(tone.next().tobytes())
    assert threading.active_count() == before + 1  # one thread for all ten
    assert counting.puts == 1  # ten recordings' batches, one wake-up
    for w in writers:
        w.close()
    assert counting.puts == 11  # each close hands over at once (and waits for its file)
    for k in range(10):
        samples, rate = read_wav(tmp_path / f"{k}.wav")
        assert rate == 48_000 and samples.size == 100 * 960
        assert_tone(samples, 300 + 100 * k, skip=0, tolerance=2)
    more = WavWriter(tmp_path / "later.wav", thread=thread)  # the thread lives on
    more.write(tones[0].next().tobytes())
    more.close()
    assert read_wav(tmp_path / "later.wav")[0].size == 960
    thread.close()
    thread.close()  # idempotent
    assert threading.active_count() == before


def test_one_recording_failing_leaves_the_others_writing(tmp_path) -> None:
    from softphone.media.recording import RecordingThread

    thread = RecordingThread()
    good = WavWriter(tmp_path / "good.wav", thread=thread)
    folder = tmp_path / "gone"
    folder.mkdir()
    bad = WavWriter(folder / "bad.wav", thread=thread)
    folder.rmdir()  # opening it fails on the thread (as a removed disk would)
    tone = ToneGenerator(500)
    for _ in range(50):
        frame = tone.next().tobytes()
        good.write(frame)
        bad.write(frame)
    bad.close()
    good.close()
    samples, _ = read_wav(tmp_path / "good.wav")
    assert samples.size == 50 * 960
    assert_tone(samples, 500, skip=0, tolerance=2)
    thread.close()


@pytest.mark.parametrize("audio", [True, False], ids=["audio", "nothing-recorded"])
def test_a_recording_that_stops_says_why_in_error(tmp_path, audio: bool) -> None:
    """Its folder removed after construction: `error` (on the writer and on the
    RecorderSink a bot holds) says why once it is closed; a recording that went
    fine beside it has None."""
    from softphone.media.recording import RecordingThread
    from softphone.media.sinks import RecorderSink

    thread = RecordingThread()
    folder = tmp_path / "gone"
    folder.mkdir()
    good = RecorderSink(tmp_path / "good.wav", thread=thread)
    bad = RecorderSink(folder / "bad.wav", thread=thread)
    alone = WavWriter(folder / "alone.wav")  # (a thread of its own)
    assert (good.error, bad.error, alone.error) == (None, None, None)
    folder.rmdir()
    tone = ToneGenerator(500)
    for _ in range(20 if audio else 0):
        frame = tone.next()
        good.write(frame)
        bad.write(frame)
        alone.write(frame.tobytes())
    for recording in (bad, good, alone):
        recording.close()
    thread.close()
    assert good.error is None
    for error in (bad.error, bad.writer.error, alone.error):
        assert error is not None and "No such file or directory" in error, error
    assert read_wav(tmp_path / "good.wav")[0].size == (20 * 960 if audio else 0)
