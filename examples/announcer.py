"""Announcer: calls someone, plays an audio file to them, and hangs up when it ends.

    python examples/announcer.py bob announcement.wav --as announcer

Exits with softphone's call exit codes: 0 when the call completed, whether the
announcement played to its end or the callee hung up during it (it says which).
Ctrl-C or SIGTERM hangs up and exits with 130.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from softphone import AudioFileError, CallEnded, ExitCode, FileSource, HubUnreachable, Phone


async def main(callee: str, path: str, client_id: str, server: str) -> int:
    # SIGTERM (systemd's stop) as Ctrl-C: this task is cancelled, and leaving
    # `async with Phone` hangs up every call and closes the phone.
    this = asyncio.current_task()
    assert this is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, this.cancel)
    try:
        source = FileSource.from_file(path)
    except AudioFileError as exc:
        print(f"announcer: {exc}", file=sys.stderr)
        return ExitCode.ERROR
    try:
        return await announce(callee, source, client_id, server)
    except HubUnreachable as exc:
        print(f"announcer: {exc}", file=sys.stderr)
        return ExitCode.HUB_UNREACHABLE
    except ValueError as exc:  # a bad id, or calling ourselves
        print(f"announcer: {exc}", file=sys.stderr)
        return ExitCode.USAGE


async def announce(callee: str, source: FileSource, client_id: str, server: str) -> int:
    async with Phone(client_id, server) as phone:
        call = await phone.dial(callee, source=source)
        try:
            await call.connected()
        except CallEnded as ended:
            print(f"announcement not delivered: {ended.result.outcome}", file=sys.stderr)
            return ended.result.exit_code
        # The end of the file or of the call (the callee hung up), whichever comes first.
        played = asyncio.create_task(source.finished.wait())
        over = asyncio.create_task(call.ended())
        await asyncio.wait((played, over), return_when=asyncio.FIRST_COMPLETED)
        played.cancel()
        if not over.done():
            await asyncio.sleep(0.3)  # let the last packets out
            await call.hangup()
        result = await over
        if source.finished.is_set():
            print(f"announced to {callee}: {result.talk_seconds:.1f} s")
        else:
            print(f"{callee} hung up during the announcement: {result.outcome}, "
                  f"{result.talk_seconds:.1f} s", file=sys.stderr)
        return result.exit_code


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("callee")
    parser.add_argument("file")
    parser.add_argument("--as", dest="client_id", default="announcer")
    parser.add_argument("--server", default="http://127.0.0.1:8080")
    args = parser.parse_args()
    try:
        sys.exit(asyncio.run(main(args.callee, args.file, args.client_id, args.server)))
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C or SIGTERM: hung up
        print("announcer: interrupted, hung up", file=sys.stderr)
        sys.exit(ExitCode.INTERRUPTED)
