"""A recording notes the spans its call was on hold, in a sidecar beside the WAV file."""

from __future__ import annotations

import json
import time
from pathlib import Path

from softphone.media.audio import FRAME_SAMPLES, ToneGenerator
from softphone.media.recording import WavWriter
from softphone.media.tracks import HeldNoting, RecorderSink

from ..support.helpers import read_wav


def write_frames(writer: WavWriter, n: int) -> None:
    tone = ToneGenerator(500)
    for _ in range(n):
        writer.write(tone.next().tobytes())


def notes(path: Path) -> dict[str, object]:
    return json.loads(path.with_name(path.name + ".json").read_text())  # type: ignore[no-any-return]


def test_held_spans_are_noted_in_seconds_of_the_recording(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    sink = RecorderSink(path)
    assert isinstance(sink, HeldNoting)
    w = sink.writer
    write_frames(w, 50)  # 1 s
    sink.note_held(True)
    sink.note_held(True)  # already held: nothing new
    write_frames(w, 25)
    sink.note_held(False)
    write_frames(w, 10)
    sink.note_held(True)  # still held when the recording ends
    write_frames(w, 5)
    sink.close()
    assert w.sidecar == tmp_path / "call.wav.json"
    assert notes(path) == {"recording": "call.wav", "rate": 48_000,
                           "held": [[1.0, 1.5], [1.7, 1.8]]}
    samples, _ = read_wav(path)
    assert samples.size == 90 * FRAME_SAMPLES  # the audio is all there


def test_the_sidecar_is_written_at_each_change_not_only_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "open.wav"
    w = WavWriter(path)
    write_frames(w, 10)
    w.note_held(True)
    w.write(b"")  # (nothing)
    for _ in range(200):  # the writer thread writes it soon after
        if w.sidecar.exists():
            break
        time.sleep(0.01)
    assert notes(path)["held"] == [[0.2, None]]  # a process killed now leaves this
    w.close()
    assert notes(path)["held"] == [[0.2, 0.2]]


def test_a_recording_never_held_has_no_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "plain.wav"
    w = WavWriter(path)
    write_frames(w, 10)
    w.note_held(False)  # a resume without a hold: nothing
    w.close()
    assert not w.sidecar.exists()
