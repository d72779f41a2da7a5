"""Asking at the terminal whether to take a call, when stdin is not a terminal the
phone reads keys from (``listen`` without ``--auto-accept``): lines from stdin
without blocking the event loop, answers piped in ahead kept, a closed stdin said.

One line answers one prompt, in order. A prompt withdrawn before its answer was
read (the caller gave up) is still owed that answer: the first line that comes
after it, before the next call rings, was meant for it and is dropped (said), so a
late "y" never answers the next caller."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from typing import TYPE_CHECKING

from softphone.cli.runtime import Output

if TYPE_CHECKING:
    from softphone.client.call import Call


class LineReader:
    """Lines from stdin without blocking the event loop; None in :attr:`queue`
    (and :attr:`eof` set) once stdin is closed."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._buffer = b""
        self._fd = -1  # no stdin, or one that is not a file (click's CliRunner)
        with contextlib.suppress(AttributeError, OSError, ValueError):
            self._fd = sys.stdin.fileno()
        self._tty = self._fd >= 0 and os.isatty(self._fd)
        self.active = False
        #: stdin is closed: what it held is in :attr:`queue`, nothing more will come.
        self.eof = False
        #: The peer of a prompt withdrawn before it read its answer (see the module).
        self.owed: str | None = None

    def start(self) -> None:
        if self._fd < 0:
            return
        try:
            asyncio.get_running_loop().add_reader(self._fd, self._readable)
            self.active = True
        except PermissionError:  # a file or /dev/null (no epoll): read it now, it never blocks
            while not self.eof:
                self._read()
        except (OSError, ValueError, NotImplementedError):
            self.active = False

    def _readable(self) -> None:
        self._read()
        if self.eof:
            asyncio.get_running_loop().remove_reader(self._fd)
            self.active = False

    def _read(self) -> None:
        try:
            chunk = os.read(self._fd, 4096)
        except OSError:
            chunk = b""
        self._buffer += chunk if chunk or not self._buffer else b"\n"  # (a last unended line)
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self.queue.put_nowait(line.decode(errors="replace").strip())
        if not chunk:
            self.eof = True
            self.queue.put_nowait(None)

    def drain(self) -> str | None:
        """Forget what was typed on a terminal before the call rang (stray keys);
        piped lines are answers given ahead and are kept, as is the end of input,
        except a late answer to a withdrawn prompt: returned, to be said."""
        owed, self.owed = self.owed, None
        if not self._tty:
            if owed is None or self.queue.empty():
                return None
            late = self.queue.get_nowait()
            if late is None:  # (the end of input: kept)
                self.queue.put_nowait(None)
                return None
            return f"ignored {late!r}: it came after the call from {owed} had ended"
        while not self.queue.empty():
            self.queue.get_nowait()
        if self.eof:
            self.queue.put_nowait(None)
        return None


async def ask(call: Call, out: Output, reader: LineReader) -> bool | None:
    """Ask accept/reject; None if the prompt was withdrawn (the caller gave up)."""
    late = reader.drain()
    if late is not None:
        out.say(late)
    out.say(f"incoming call from {call.peer}: accept? [y/n]")
    while True:
        if reader.eof and reader.queue.empty():  # every answer piped in is used up
            out.say("stdin closed: cannot ask; use --auto-accept to answer calls")
            await call.ended()  # left to ring: the caller hears no answer
            return None
        getter = asyncio.ensure_future(reader.queue.get())
        ended = asyncio.ensure_future(call.ended())
        await asyncio.wait({getter, ended}, return_when=asyncio.FIRST_COMPLETED)
        if not getter.done():
            getter.cancel()
            reader.owed = call.peer
            return None
        ended.cancel()
        answer = getter.result()
        if answer is None:
            continue  # (eof: said above)
        if answer.lower() in ("y", "yes", "a", "accept"):
            return True
        if answer.lower() in ("n", "no", "r", "reject"):
            return False
        out.say("please answer y or n")
