"""Answering machine: greets each caller, then records their message to a WAV file.

    python examples/answering_machine.py --as bob --greeting hello.wav --dir messages/

Each message is saved as messages/<caller>-<time>.wav; a message ends when the
caller hangs up or after --max-seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from pathlib import Path

from softphone import (
    AudioFileError,
    CallEnded,
    FileSource,
    HubUnreachable,
    Phone,
    PhoneClosed,
    RecorderSink,
    ToneGenerator,
    load_audio_file,
)

log = logging.getLogger("answering_machine")


async def main(client_id: str, server: str, greeting: str | None, folder: Path,
               max_seconds: float) -> None:
    # A greeting file, or a half-second beep.
    greeting_samples = (load_audio_file(greeting) if greeting
                        else ToneGenerator(1000).next(24_000))
    async with Phone(client_id, server) as phone:
        log.info("answering machine %s ready; messages go to %s", client_id, folder)
        while True:
            call = await phone.next_call()
            path = folder / f"{call.peer}-{time.strftime('%Y%m%d-%H%M%S')}.wav"
            with contextlib.suppress(CallEnded):  # (the caller gave up first)
                await call.accept(source=FileSource(greeting_samples),
                                  sinks=[RecorderSink(path)])
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(call.ended(), max_seconds)
            await call.hangup()
            result = await call.ended()
            log.info("message from %s: %s (%.1f s) -> %s", call.peer, result.outcome,
                         result.talk_seconds, path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--as", dest="client_id", default="voicemail")
    parser.add_argument("--server", default="http://127.0.0.1:8080")
    parser.add_argument("--greeting", help="audio file played when answering")
    parser.add_argument("--dir", default="messages", type=Path)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    args = parser.parse_args()
    # (our own lines at INFO; the library and aiortc at WARNING, quiet)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    args.dir.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(main(args.client_id, args.server, args.greeting, args.dir,
                         args.max_seconds))
    except KeyboardInterrupt:
        pass
    except (AudioFileError, HubUnreachable, PhoneClosed) as exc:  # (one line, no traceback)
        sys.exit(f"answering_machine: {exc}")
