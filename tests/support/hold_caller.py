"""A caller on the Python API that holds and resumes on a schedule.

``python hold_caller.py PEER --as ID --server URL --tone HZ --record FILE
--hold-at S --hold-for S --duration S``: calls PEER sending a tone and
recording what it hears; ``--hold-at`` seconds after media connected it puts
the call on hold (``await call.hold()``), ``--hold-for`` seconds later it
resumes, and ``--duration`` seconds after media connected it hangs up. Every
call event is printed as a JSON line on stdout (as ``softphone call --json``
prints them); the exit code is the call's. For calls through the network
lab, where the command line has no scripted hold.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

from softphone import Phone, RecorderSink, ToneSource


def print_event(event: dict[str, Any]) -> None:
    print(json.dumps(event, separators=(",", ":")), flush=True)


async def run(args: argparse.Namespace) -> int:
    async with Phone(args.client_id, args.server) as phone:
        call = await phone.dial(args.peer, ToneSource(args.tone), [RecorderSink(args.record)],
                                on_event=print_event)
        await asyncio.wait_for(call.connected(), 20)
        await asyncio.sleep(args.hold_at)
        await call.hold()
        await asyncio.sleep(args.hold_for)
        await call.resume()
        await asyncio.sleep(max(0.0, args.duration - args.hold_at - args.hold_for))
        await call.hangup()
        return (await call.ended()).exit_code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peer")
    parser.add_argument("--as", dest="client_id", required=True)
    parser.add_argument("--server", required=True)
    parser.add_argument("--tone", type=float, default=440.0)
    parser.add_argument("--record", required=True)
    parser.add_argument("--hold-at", type=float, default=3.0)
    parser.add_argument("--hold-for", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=9.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
