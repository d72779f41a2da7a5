"""Answering machine: greets each caller, then records their message to a WAV file.

    python examples/answering_machine.py --as bob --greeting hello.wav --dir messages/

Each message is saved as messages/<caller>-<time>.wav; a message ends when the
caller hangs up or after --max-seconds. Up to --max-calls callers at once (one
more is told busy). Ctrl-C or SIGTERM (systemd's stop) hangs up every call and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from pathlib import Path

from softphone import (
    AudioFileError,
    Call,
    CallEnded,
    FileSource,
    HubUnreachable,
    Phone,
    PhoneClosed,
    RecorderSink,
    RecordingThread,
    ToneGenerator,
    load_audio_file,
)
from softphone.media.audio import Int16Array

log = logging.getLogger("answering_machine")


async def main(client_id: str, server: str, greeting: str | None, folder: Path,
               max_seconds: float, max_calls: int) -> None:
    # SIGTERM (systemd's stop) as Ctrl-C: this task is cancelled, and leaving
    # `async with Phone` hangs up every call and closes the phone.
    this = asyncio.current_task()
    assert this is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, this.cancel)
    # A greeting file, or a half-second beep.
    greeting_samples = (load_audio_file(greeting) if greeting
                        else ToneGenerator(1000).next(24_000))
    recordings = RecordingThread()  # one writer thread for every caller's file
    calls: set[asyncio.Task[None]] = set()
    try:
        async with Phone(client_id, server, max_calls=max_calls) as phone:
            log.info("answering machine %s ready (up to %d calls at once); messages go "
                     "to %s", client_id, max_calls, folder)
            while True:
                call = await phone.next_call()
                task = asyncio.create_task(
                    take_message(call, greeting_samples, folder, max_seconds, recordings))
                calls.add(task)
                task.add_done_callback(calls.discard)
    finally:
        recordings.close()


async def take_message(call: Call, greeting: Int16Array, folder: Path, max_seconds: float,
                       recordings: RecordingThread) -> None:
    """One caller: the greeting, then their message recorded until they hang up."""
    path = folder / f"{call.peer}-{time.strftime('%Y%m%d-%H%M%S')}.wav"
    existed = path.exists()
    try:
        recorder = RecorderSink(path, thread=recordings)
    except OSError as exc:  # (the folder gone, say)
        log.info("call from %s declined: cannot record to %s (%s)", call.peer, path,
                 exc.strerror)
        await call.reject("unavailable")
        return
    try:
        await call.accept(source=FileSource(greeting), sinks=[recorder])
    except CallEnded as gave_up:  # the caller gave up first: no message, no file
        if not existed:  # (the refused accept closed the recorder: an empty WAV)
            path.unlink(missing_ok=True)
        log.info("missed call from %s: %s (no message)", call.peer, gave_up.result.outcome)
        return
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(call.ended(), max_seconds)
    await call.hangup()
    result = await call.ended()
    stopped = f" (recording stopped: {recorder.error})" if recorder.error else ""
    log.info("message from %s: %s (%.1f s) -> %s%s", call.peer, result.outcome,
             result.talk_seconds, path, stopped)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--as", dest="client_id", default="voicemail")
    parser.add_argument("--server", default="http://127.0.0.1:8080")
    parser.add_argument("--greeting", help="audio file played when answering")
    parser.add_argument("--dir", default="messages", type=Path)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--max-calls", type=int, default=10)
    args = parser.parse_args()
    # (our own lines at INFO; the library and aiortc at WARNING, quiet)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    args.dir.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(main(args.client_id, args.server, args.greeting, args.dir,
                         args.max_seconds, args.max_calls))
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C or SIGTERM: hung up
        pass
    except (AudioFileError, HubUnreachable, PhoneClosed) as exc:  # (one line, no traceback)
        sys.exit(f"answering_machine: {exc}")
