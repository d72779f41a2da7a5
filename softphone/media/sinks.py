"""Where what a call plays goes: :class:`Sink`\\ s.

A sink gets every stretch the call plays, as it is played, and is closed when
the call ends: :class:`RecorderSink` writes a WAV file (and the spans on hold
beside it, :class:`HeldNoting`), :class:`CaptureSink` keeps the last seconds in
memory for analysis. :class:`softphone.media.tracks.EchoSource` is a source
that is also a sink. Re-exported by :mod:`softphone.media.tracks`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from softphone.media.audio import SAMPLE_RATE, Int16Array
from softphone.media.recording import RecordingThread, WavWriter


@runtime_checkable
class Sink(Protocol):
    """Where what a call plays goes, as it is played (on the event loop; 20 ms at a time,
    or a device's stretches of any length); closed when the call ends."""

    def write(self, samples: Int16Array) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class HeldNoting(Protocol):
    """A sink that notes when the call goes on hold and comes back (a recording)."""

    def note_held(self, held: bool) -> None: ...


class RecorderSink:
    """Writes received audio to a WAV file (see :class:`WavWriter`), and the spans
    the call was on hold beside it (:meth:`WavWriter.note_held`). ``thread``: write
    on this :class:`RecordingThread`, shared with other recordings (a bot's calls),
    not on a thread of its own. :attr:`error`: why the recording stopped, if it did."""

    def __init__(self, path: str | Path, *, thread: RecordingThread | None = None) -> None:
        self.writer = WavWriter(path, thread=thread)

    @property
    def error(self) -> str | None:
        """Why the recording stopped (the disk full, its folder gone...; what was
        written is kept), or None while it is fine (:attr:`WavWriter.error`)."""
        return self.writer.error

    def write(self, samples: Int16Array) -> None:
        self.writer.write(samples.tobytes())

    def note_held(self, held: bool) -> None:
        self.writer.note_held(held)

    def close(self) -> None:
        self.writer.close()


class CaptureSink:
    """Keeps the most recent ``seconds`` of received audio in memory (for analysis)."""

    def __init__(self, seconds: float = 10.0) -> None:
        self._buffer = np.zeros(int(seconds * SAMPLE_RATE), dtype=np.int16)
        self._pos = 0  # next write index
        self._filled = 0

    def write(self, samples: Int16Array) -> None:
        buf = self._buffer
        if samples.size >= buf.size:
            buf[:] = samples[-buf.size:]
            self._pos, self._filled = 0, buf.size
            return
        end = self._pos + samples.size
        if end <= buf.size:
            buf[self._pos:end] = samples
        else:
            split = buf.size - self._pos
            buf[self._pos:] = samples[:split]
            buf[: end - buf.size] = samples[split:]
        self._pos = end % buf.size
        self._filled = min(buf.size, self._filled + samples.size)

    def close(self) -> None:
        """Nothing to close: what was kept stays readable (:meth:`samples`)."""

    def samples(self) -> Int16Array:
        """What was kept, oldest first."""
        buf = self._buffer
        if self._filled < buf.size:
            return buf[: self._filled].copy()
        return np.concatenate((buf[self._pos:], buf[: self._pos]))
