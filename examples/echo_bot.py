"""Echo bot: answers every call and sends each caller's voice back to them.

    python examples/echo_bot.py --as echo --server http://127.0.0.1:8080
    softphone call echo --as me --tone 440 --record heard.wav --duration 5

Ctrl-C or SIGTERM (systemd's stop) hangs up the call and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from softphone import CallEnded, EchoSource, HubUnreachable, Phone, PhoneClosed

log = logging.getLogger("echo_bot")


async def main(client_id: str, server: str) -> None:
    # SIGTERM (systemd's stop) as Ctrl-C: this task is cancelled, and leaving
    # `async with Phone` hangs up every call and closes the phone.
    this = asyncio.current_task()
    assert this is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, this.cancel)
    async with Phone(client_id, server) as phone:
        log.info("echo bot %s ready on %s", client_id, server)
        while True:
            call = await phone.next_call()
            echo = EchoSource()
            with contextlib.suppress(CallEnded):  # (the caller gave up first)
                await call.accept(source=echo, sinks=[echo])  # what we hear goes back out
            result = await call.ended()
            log.info("call from %s: %s", call.peer, result.outcome)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--as", dest="client_id", default="echo")
    parser.add_argument("--server", default="http://127.0.0.1:8080")
    args = parser.parse_args()
    # (our own lines at INFO; the library and aiortc at WARNING, quiet)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    try:
        asyncio.run(main(args.client_id, args.server))
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C or SIGTERM: hung up
        pass
    except (HubUnreachable, PhoneClosed) as exc:  # (e.g. another phone took our id)
        sys.exit(f"echo_bot: {exc}")
