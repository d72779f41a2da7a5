"""Menu bot (IVR): answers, plays a menu, plays what each key chooses, hangs up on #.

    python examples/ivr.py --as menu --server http://127.0.0.1:8080
    softphone call menu --as me --dtmf ",2,#"     # or press keys on the terminal phone

Keys 1, 2 and 3 each play their choice (a tone, or --choice 1=sales.wav ...),
0 plays the menu again, # says goodbye and hangs up. The menu and every
choice are encoded once, whatever the number of callers (--max-calls at once).
Ctrl-C or SIGTERM (systemd's stop) hangs up every call and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import numpy as np

from softphone import (
    AudioFileError,
    Call,
    CallEnded,
    HubUnreachable,
    Phone,
    PhoneClosed,
    PromptSource,
    SharedPrompt,
)

log = logging.getLogger("ivr")

#: The tone each key plays unless --choice gives it a file.
TONES = {"1": 440.0, "2": 660.0, "3": 880.0}
MENU_TONE = 1000.0
GOODBYE_SECONDS = 0.6


def beeps(frequency: float, seconds: float = 0.8) -> SharedPrompt:
    """A menu to loop: ``frequency`` for half of ``seconds``, then silence."""
    t = np.arange(int(seconds * 48_000)) / 48_000
    beep = np.where(t < seconds / 2, 0.3 * 32767 * np.sin(2 * np.pi * frequency * t), 0)
    return SharedPrompt(beep.astype(np.int16))


async def serve(call: Call, menu: SharedPrompt, choices: dict[str, SharedPrompt]) -> None:
    """One caller: menu, then whatever each key chooses, until # or they hang up."""
    voice = PromptSource(menu, loop=True)
    try:
        await call.accept(voice)  # (CallEnded: the caller gave up first)
        await call.connected()
        while True:
            key = (await call.next_digit()).digit
            log.info("%s pressed %s", call.peer, key)
            if key == "#":
                goodbye = choices["#"]
                voice.play(goodbye)
                await asyncio.sleep(goodbye.seconds)
                await call.hangup("goodbye")
                break
            if key in choices:
                voice.play(choices[key], loop=True)
            else:  # 0, or a key with no choice: the menu again
                voice.play(menu, loop=True)
    except CallEnded:
        pass
    result = await call.ended()
    log.info("call from %s: %s (%.1f s)", call.peer, result.outcome, result.talk_seconds)


async def main(client_id: str, server: str, max_calls: int, menu_file: str | None,
               choice_files: list[str]) -> None:
    # SIGTERM (systemd's stop) as Ctrl-C: this task is cancelled, and leaving
    # `async with Phone` hangs up every call and closes the phone.
    this = asyncio.current_task()
    assert this is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, this.cancel)
    menu = SharedPrompt.from_file(menu_file) if menu_file else beeps(MENU_TONE)
    choices = {key: SharedPrompt.tone(hz, 1.0) for key, hz in TONES.items()}
    choices["#"] = SharedPrompt.tone(MENU_TONE, GOODBYE_SECONDS)  # the goodbye
    for item in choice_files:
        key, _, path = item.partition("=")
        choices[key] = SharedPrompt.from_file(path)
    calls: set[asyncio.Task[None]] = set()
    async with Phone(client_id, server, max_calls=max_calls) as phone:
        log.info("menu bot %s ready (up to %d calls at once)", client_id, max_calls)
        while True:
            call = await phone.next_call()
            task = asyncio.create_task(serve(call, menu, choices))
            calls.add(task)
            task.add_done_callback(calls.discard)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--as", dest="client_id", default="menu")
    parser.add_argument("--server", default="http://127.0.0.1:8080")
    parser.add_argument("--max-calls", type=int, default=10)
    parser.add_argument("--menu", help="audio file played (looped) as the menu")
    parser.add_argument("--choice", action="append", default=[], metavar="KEY=FILE",
                        help="play FILE when KEY is pressed (repeatable; # for goodbye)")
    args = parser.parse_args()
    # (our own lines at INFO; the library and aiortc at WARNING, quiet)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    try:
        asyncio.run(main(args.client_id, args.server, args.max_calls, args.menu, args.choice))
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C or SIGTERM: hung up
        pass
    except (AudioFileError, HubUnreachable, PhoneClosed) as exc:  # (one line, no traceback)
        sys.exit(f"ivr: {exc}")
