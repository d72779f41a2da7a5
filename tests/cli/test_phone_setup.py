"""PhoneSetup's own resources: the one recording thread of a command's --record files."""

from __future__ import annotations

import threading
import wave
from pathlib import Path

import numpy as np

from softphone.cli.options import HubClientOptions, IceOptions, MediaOptions
from softphone.cli.phone_setup import PhoneSetup


def test_the_recording_thread_writes_every_file_and_ends_with_the_command(
        tmp_path: Path) -> None:
    """Three calls' --record files on one thread; close() (the command's end) ends it."""
    setup = PhoneSetup("bot", HubClientOptions(), IceOptions(),
                       MediaOptions(record=str(tmp_path / "{peer}-{n}.wav")))
    before = set(threading.enumerate())
    sinks = [setup.sinks("c", n)[0] for n in (1, 2, 3)]
    tone = (8000 * np.sin(np.arange(960) / 8)).astype(np.int16)
    for sink in sinks:
        for _ in range(50):
            sink.writer.write(tone.tobytes())
    new = [t for t in threading.enumerate() if t not in before]
    assert [t.name for t in new] == ["recordings"]  # one thread for the three
    for sink in sinks:
        sink.close()
    setup.close()
    assert not new[0].is_alive()
    setup.close()  # twice: nothing more
    for n in (1, 2, 3):
        with wave.open(str(tmp_path / f"c-{n}.wav")) as w:
            assert w.getnframes() == 50 * 960
