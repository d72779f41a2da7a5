"""WAV recordings that stay valid files whatever happens to the process.

:class:`WavWriter` writes 16-bit PCM and rewrites the RIFF and ``data``
sizes in the header after every flush, so a file cut short by Ctrl-C, a
crash or SIGKILL is a valid WAV of what was written up to the last flush
(at most :attr:`WavWriter.flush_every` seconds are lost on SIGKILL; nothing
on Ctrl-C). Disk writes happen on a thread of their own, never on the event
loop; samples are handed to it in batches of ``flush_every`` seconds (one
wake-up of the thread per batch, not per 20 ms: a bot recording many calls
would spend its time waking threads).

A call on hold is noted (:meth:`WavWriter.note_held`): the spans, in seconds
of the recording, go to a sidecar ``FILE.json`` beside ``FILE`` (e.g.
``bob.wav.json``: ``{"recording": "bob.wav", "rate": 48000, "held": [[3.02,
8.5]]}``; ``null`` as the end of a span the process did not live to close),
written by the same thread, again at every change. A recording never held
has no sidecar.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import struct
import threading
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")


def wav_header(rate: int, channels: int, data_bytes: int) -> bytes:
    block = channels * 2
    return _HEADER.pack(b"RIFF", 36 + data_bytes, b"WAVE", b"fmt ", 16, 1, channels, rate,
                        rate * block, block, 16, b"data", data_bytes)


class WavWriter:
    """Append-only 16-bit PCM WAV file, written by a background thread."""

    def __init__(self, path: str | os.PathLike[str], rate: int = 48_000, channels: int = 1,
                 flush_every: float = 0.2) -> None:
        self.path = Path(path)
        self.rate = rate
        self.channels = channels
        self.flush_every = flush_every
        self.frames_written = 0
        # Open now, so that a bad path fails here with a clear error, not later.
        self._file: BinaryIO = open(self.path, "wb")
        self._file.write(wav_header(rate, channels, 0))
        self._file.flush()
        self._data_bytes = 0
        self._batch: list[bytes] = []
        self._batched = 0
        self._batch_bytes = max(1, int(flush_every * rate * channels * 2))
        self._queued_bytes = 0  # everything write() was given
        #: Spans the call was on hold: [start, end] in seconds of the recording
        #: (end None while it lasts).
        self.held: list[list[float | None]] = []
        self._queue: queue.SimpleQueue[bytes | dict[str, Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"wav-{self.path.name}",
                                        daemon=True)
        self._closed = False
        self._thread.start()

    @property
    def seconds(self) -> float:
        return self._data_bytes / (self.rate * self.channels * 2)

    @property
    def sidecar(self) -> Path:
        """Where the held spans go (written once the call was held): ``FILE.json``."""
        return self.path.with_name(self.path.name + ".json")

    def note_held(self, held: bool) -> None:
        """The call went on hold (True) or came back, now: noted at the current end of
        the recording and written to :attr:`sidecar` (by the writer thread)."""
        if self._closed:
            return
        at = round(self._queued_bytes / (self.rate * self.channels * 2), 3)
        if held and (not self.held or self.held[-1][1] is not None):
            self.held.append([at, None])
        elif not held and self.held and self.held[-1][1] is None:
            self.held[-1][1] = at
        else:
            return
        self._hand_over()  # the audio before the change first
        self._queue.put(self._notes())

    def _notes(self) -> dict[str, Any]:
        return {"recording": self.path.name, "rate": self.rate,
                "held": [list(span) for span in self.held]}

    def write(self, pcm: bytes) -> None:
        """Queue interleaved int16 samples (cheap; call it from one thread, e.g. the loop)."""
        if not self._closed and pcm:
            self._batch.append(pcm)
            self._batched += len(pcm)
            self._queued_bytes += len(pcm)
            if self._batched >= self._batch_bytes:
                self._hand_over()

    def _hand_over(self) -> None:
        if self._batch:
            self._queue.put(b"".join(self._batch))
            self._batch.clear()
            self._batched = 0

    def close(self) -> None:
        """Write what is queued, fix the header, close the file. Idempotent."""
        if self._closed:
            return
        if self.held and self.held[-1][1] is None:  # it ended on hold
            self.note_held(False)
        self._closed = True
        self._hand_over()
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        bytes_per_flush = max(1, int(self.flush_every * self.rate * self.channels * 2))
        pending = 0
        try:
            while True:
                chunk = self._queue.get()
                if chunk is None:
                    break
                if isinstance(chunk, dict):
                    self._write_notes(chunk)
                    continue
                self._file.write(chunk)
                self._data_bytes += len(chunk)
                pending += len(chunk)
                if pending >= bytes_per_flush:
                    self._fix_header()
                    pending = 0
        except OSError as exc:  # disk full, file removed...: keep what we have
            log.error("recording %s stopped: %s", self.path, exc)
        finally:
            try:
                self._fix_header()
            finally:
                self._file.close()

    def _write_notes(self, notes: dict[str, Any]) -> None:
        """The sidecar, replaced whole (a reader never sees half of it)."""
        part = self.sidecar.with_name(self.sidecar.name + ".part")
        try:
            part.write_text(json.dumps(notes) + "\n")
            os.replace(part, self.sidecar)
        except OSError as exc:
            log.error("could not note the held spans of %s: %s", self.path, exc)

    def _fix_header(self) -> None:
        f = self._file
        end = f.tell()
        f.seek(4)
        f.write(struct.pack("<I", 36 + self._data_bytes))
        f.seek(40)
        f.write(struct.pack("<I", self._data_bytes))
        f.seek(end)
        f.flush()
