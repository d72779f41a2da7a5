"""Announcer: calls someone, plays an audio file to them, and hangs up when it ends.

    python examples/announcer.py bob announcement.wav --as announcer

Exits with softphone's call exit codes (0 when the announcement was played).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from softphone import AudioFileError, CallEnded, ExitCode, FileSource, HubUnreachable, Phone


async def main(callee: str, path: str, client_id: str, server: str) -> int:
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
        await source.finished.wait()
        await asyncio.sleep(0.3)  # let the last packets out
        await call.hangup()
        result = await call.ended()
        print(f"announced to {callee}: {result.talk_seconds:.1f} s")
        return result.exit_code


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("callee")
    parser.add_argument("file")
    parser.add_argument("--as", dest="client_id", default="announcer")
    parser.add_argument("--server", default="http://127.0.0.1:8080")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.callee, args.file, args.client_id, args.server)))
