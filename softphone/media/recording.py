"""WAV recordings that stay valid files whatever happens to the process.

:class:`WavWriter` writes 16-bit PCM and rewrites the RIFF and ``data``
sizes in the header after every flush, so a file cut short by Ctrl-C, a
crash or SIGKILL is a valid WAV of what was written up to the last flush
(at most twice :attr:`WavWriter.flush_every` seconds are lost on SIGKILL; nothing
on Ctrl-C). ``FILE`` is opened when the first samples come (its path checked
at once), so a file already there is kept until then: a call that never
connected does not wipe the last one's recording, and one that ends with
nothing recorded leaves an existing ``FILE`` as it was (or makes an empty WAV
where there was none). It is opened as any file is (a symbolic link written
through, a device such as /dev/null written to, the mode kept). Disk writes happen on a thread
(:class:`RecordingThread`), never on the event loop; samples are handed to it in batches of
``flush_every`` seconds. Many recordings can share one thread (a bot
recording every caller: one thread per phone, not per call), and the thread
is woken at most once per ``flush_every`` for all of them, not once per
recording: a bot recording 50 calls would otherwise spend a fifth of its
loop handing batches to 50 threads.

A call on hold is noted (:meth:`WavWriter.note_held`): the spans, in seconds
of the recording, go to a sidecar ``FILE.json`` beside ``FILE`` (e.g.
``bob.wav.json``: ``{"recording": "bob.wav", "rate": 48000, "held": [[3.02,
8.5]]}``; ``null`` as the end of a span the process did not live to close),
written by the same thread, again at every change. A recording never held
has no sidecar.

A recording that stops (the disk full, its folder gone, ``FILE`` not
writable when the first samples come) keeps what it wrote and says why in
:attr:`WavWriter.error` (None while it is fine), besides a log line.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import queue
import struct
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")


def wav_header(rate: int, channels: int, data_bytes: int) -> bytes:
    block = channels * 2
    return _HEADER.pack(b"RIFF", 36 + data_bytes, b"WAVE", b"fmt ", 16, 1, channels, rate,
                        rate * block, block, 16, b"data", data_bytes)


class RecordingThread:
    """One writer thread for any number of :class:`WavWriter` (a phone's recordings).

    Writers hand it work from one thread (the event loop); what they hand
    over is kept and passed to the thread in one go at most every
    ``flush_every`` seconds (and at once when a writer closes). The thread
    starts with the first writer and ends with :meth:`close` (or, for a
    writer's own thread, with that writer).
    """

    def __init__(self, flush_every: float = 0.2, *, name: str = "recordings") -> None:
        self.flush_every = flush_every
        self.name = name
        self._pending: list[tuple[WavWriter, bytes | dict[str, Any] | None]] = []
        self._handed_at = 0.0
        self._queue: queue.SimpleQueue[list[tuple[WavWriter, bytes | dict[str, Any] | None]]
                                       | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # starting and closing, from any thread
        self._closed = False

    def submit(self, writer: WavWriter, item: bytes | dict[str, Any] | None, *,
               now: bool = False) -> None:
        """Queue ``item`` for ``writer`` (samples, held notes, or None: close it);
        ``now``: hand everything queued to the thread at once."""
        self._pending.append((writer, item))
        t = time.monotonic()
        if now or t - self._handed_at >= self.flush_every:
            self._handed_at = t
            batch, self._pending = self._pending, []
            self._start()
            self._queue.put(batch)

    def _start(self) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the recording thread is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Write everything handed over, then end the thread (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if self._pending:
            batch, self._pending = self._pending, []
            self._queue.put(batch)
        if thread is not None:
            self._queue.put(None)
            thread.join()

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            for writer, item in batch:
                try:
                    writer._apply(item)
                except Exception as exc:  # one recording's bug must not stop the others'
                    log.exception("recording %s failed", writer.path)
                    writer._failed = True  # (it says it stopped: it writes no more)
                    writer._stopped(f"failed: {exc!r}")


def check_writable(path: Path) -> None:
    """Raise the OSError opening ``path`` for writing would (a folder, no such folder,
    no permission), without opening it."""
    def fail(code: int, where: Path) -> NoReturn:
        raise OSError(code, os.strerror(code), str(where))

    if path.is_dir():
        fail(errno.EISDIR, path)
    if os.path.lexists(path):
        if path.exists() and not os.access(path, os.W_OK):
            fail(errno.EACCES, path)
        return
    parent = path.parent
    if not parent.exists():
        fail(errno.ENOENT, path)
    if not parent.is_dir():
        fail(errno.ENOTDIR, path)
    if not os.access(parent, os.W_OK):
        fail(errno.EACCES, path)


class WavWriter:
    """Append-only 16-bit PCM WAV file, written by a background thread.

    ``thread``: the :class:`RecordingThread` to write on, shared with other
    recordings (a phone's); without one, the writer has its own.
    """

    def __init__(self, path: str | os.PathLike[str], rate: int = 48_000, channels: int = 1,
                 flush_every: float = 0.2, *, thread: RecordingThread | None = None) -> None:
        self.path = Path(path)
        self.rate = rate
        self.channels = channels
        self.flush_every = flush_every
        self.frames_written = 0
        # Checked now, so that a bad path fails here with a clear error, not later; opened
        # with the first samples (on the thread), so that FILE is kept until then.
        check_writable(self.path)
        self._file: BinaryIO | None = None
        self._data_bytes = 0
        self._pending_flush = 0  # bytes written since the header was last fixed (thread)
        self._batch: list[bytes] = []
        self._batched = 0
        self._batch_bytes = max(1, int(flush_every * rate * channels * 2))
        self._queued_bytes = 0  # everything write() was given
        #: Spans the call was on hold: [start, end] in seconds of the recording
        #: (end None while it lasts).
        self.held: list[list[float | None]] = []
        self._own_thread = thread is None
        self._thread = thread if thread is not None else \
            RecordingThread(flush_every, name=f"wav-{self.path.name}")
        self._done = threading.Event()  # set by the thread once the file is closed
        self._failed = False
        self._error: str | None = None  # set once, by the thread (_stopped)
        self._error_lock = threading.Lock()
        self._closed = False

    def _open(self) -> BinaryIO:
        """On the thread: the file, opened (and its header written) the first time;
        the sidecar of an earlier recording at FILE goes (this one's comes later)."""
        if self._file is None:
            self._file = open(self.path, "wb")
            self._file.write(wav_header(self.rate, self.channels, 0))
            self._file.flush()
            with contextlib.suppress(OSError):
                self.sidecar.unlink(missing_ok=True)
        return self._file

    @property
    def error(self) -> str | None:
        """Why the recording stopped (the disk full, its folder gone...: what was
        written is kept), or None while it is fine. Set by the writer thread; read it
        from any thread, e.g. after :meth:`close`."""
        with self._error_lock:
            return self._error

    def _stopped(self, reason: str) -> None:
        """On the thread: the recording stopped; the first reason is kept."""
        with self._error_lock:
            if self._error is None:
                self._error = reason

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
        self._thread.submit(self, self._notes(), now=True)  # rare, and kept on a crash

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
            self._thread.submit(self, b"".join(self._batch))
            self._batch.clear()
            self._batched = 0

    def close(self) -> None:
        """Write what is queued, fix the header, close the file (waits for it). Idempotent."""
        if self._closed:
            return
        if self.held and self.held[-1][1] is None:  # it ended on hold
            self.note_held(False)
        self._closed = True
        self._hand_over()
        self._thread.submit(self, None, now=True)
        self._done.wait()
        if self._own_thread:
            self._thread.close()

    def _apply(self, item: bytes | dict[str, Any] | None) -> None:
        """On the thread: write samples, the held notes, or (None) finish the file."""
        if item is None:
            try:
                if self._file is None and not self._failed and not os.path.lexists(self.path):
                    self._open()  # (nothing recorded, no FILE: an empty WAV, as asked)
                if self._file is not None and not self._failed:
                    self._fix_header()
            except (OSError, ValueError) as exc:
                log.error("recording %s stopped: %s", self.path, exc)
                self._stopped(str(exc))
            finally:
                if self._file is not None:
                    self._file.close()
                self._done.set()
            return
        if isinstance(item, dict):
            # (the notes are of this recording: it is FILE from now on)
            with contextlib.suppress(OSError):
                self._open()
            self._write_notes(item)
            return
        if self._failed:
            return
        try:
            first = self._file is None
            f = self._open()
            f.write(item)
            self._data_bytes += len(item)
            self._pending_flush += len(item)
            if self._pending_flush >= self._batch_bytes or first:
                self._fix_header()  # (valid from its first samples on)
                self._pending_flush = 0
        except (OSError, ValueError) as exc:  # disk full, file removed...: keep what we have
            log.error("recording %s stopped: %s", self.path, exc)
            self._stopped(str(exc))
            self._failed = True
            with contextlib.suppress(OSError, ValueError):
                self._fix_header()

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
        if f is None:
            return
        end = f.tell()
        f.seek(4)
        f.write(struct.pack("<I", 36 + self._data_bytes))
        f.seek(40)
        f.write(struct.pack("<I", self._data_bytes))
        f.seek(end)
        f.flush()
