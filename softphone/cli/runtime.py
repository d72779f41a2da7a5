"""What every command shares while it runs: human lines and JSON events,
one-line failures with their exit code, and Ctrl-C as an asyncio event.

Exit codes: :class:`softphone.core.callstate.ExitCode`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Final, NoReturn, TextIO

import click

from softphone.core.callstate import ExitCode

#: Characters a terminal acts on (C0 controls, DEL, C1 controls: ESC starts its escapes).
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with every control character written out (``\\x1b``, ``\\n``): words a
    peer or a hub chose (an id, a reason, an error) reach a person's terminal as text,
    never as an escape sequence (a window title, a cleared screen) or a forged line."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class Output:
    """Human lines and JSON events, as the user asked (lines through :func:`printable`)."""

    def __init__(self, json_mode: bool) -> None:
        self.json_mode = json_mode
        self.human: TextIO = sys.stderr if json_mode else sys.stdout
        self._t0 = time.monotonic()
        #: The live status line of a call on a terminal (softphone.cli.tui.CallScreen).
        self.screen: Any = None

    def say(self, text: str) -> None:
        text = printable(text)
        if self.screen is not None and self.screen.say(text):
            return
        print(text, file=self.human, flush=True)

    def event(self, event: dict[str, Any]) -> None:
        if self.json_mode:
            event = {"time": round(time.monotonic() - self._t0, 3), **event}
            line = json.dumps(event, separators=(",", ":"))

            def write() -> None:
                print(line, flush=True)

            # (a live status line on stderr is cleared first: stdout may be that terminal)
            if self.screen is None or not self.screen.above(write):
                write()


#: Codes of one command only: not listed by the others' ``--help``.
OWN_CODES: Final = {ExitCode.REDIS_UNAVAILABLE: "serve", ExitCode.DOCTOR_FAILED: "doctor"}


def exit_codes_help(codes: Iterable[ExitCode] | None = None, note: str = "") -> str:
    """A ``--help`` epilog listing ``codes`` (one a line: click's ``\\b`` keeps them);
    by default every code but those of another command (:data:`OWN_CODES`)."""
    if codes is None:
        codes = [code for code in ExitCode if code not in OWN_CODES]
    lines = [f"  {code.value:>3}  {code.name.lower().replace('_', '-')}: {code.meaning}"
             for code in codes]
    return "\b\nExit codes:\n" + "\n".join(lines) + (f"\n\n{note}" if note else "")


def fail(message: str, code: ExitCode = ExitCode.ERROR) -> NoReturn:
    """Exit with one line on stderr."""
    click.echo(f"softphone: {printable(message)}", err=True)
    sys.exit(code)


class Interrupts:
    """SIGINT, SIGTERM and SIGHUP (the terminal closed) as an asyncio event; a second
    one exits at once."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.count = 0

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            if sig == signal.SIGHUP and signal.getsignal(sig) is signal.SIG_IGN:
                continue  # (nohup: the terminal closing is to leave it running)
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._fire)

    def interrupt(self) -> None:
        """A Ctrl-C that came as a key (a terminal in raw mode sends no SIGINT)."""
        self._fire()

    def _fire(self) -> None:
        self.count += 1
        if self.count > 1:
            os._exit(ExitCode.INTERRUPTED)
        self.event.set()


async def first_done(*aws: Awaitable[Any]) -> None:
    """Wait until one of ``aws`` is done, then cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


def run_to_exit(main: Coroutine[Any, Any, int], close: Callable[[], None]) -> NoReturn:
    """``asyncio.run(main)``, then ``close()``, then exit with main's code. Once main
    has its code (the outcome is printed), Ctrl-C no longer changes it: not while the
    loop closes (asyncio hands Ctrl-C back to Python then) nor during ``close()``."""
    decided: list[int] = []

    async def deciding() -> int:
        code = await main
        decided.append(code)
        return code

    previous = None
    try:
        try:
            code = asyncio.run(deciding())
        except KeyboardInterrupt:
            if not decided:
                raise
            code = decided[0]
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    finally:
        close()
    if previous is not None:
        signal.signal(signal.SIGINT, previous)
    sys.exit(code)
