"""The ``softphone`` command line (click).

Commands: ``serve`` (the hub), ``call``, ``listen``, ``demo``. Human-readable
lines go to stdout, or to stderr with ``--json`` (stdout is then JSON lines
only). Each call outcome has its own exit code; see ``softphone call --help``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, NoReturn, TextIO

import click

from . import __version__
from .callstate import EXIT_CODES, CallState, CallTimeouts, Outcome
from .protocol import is_valid_id
from .signaling import DEFAULT_SERVER, HubAddress, HubUnreachable

#: Exit code for an error that is not a call outcome (bad file, internal error).
EXIT_ERROR = 1
#: Exit code for Ctrl-C outside a call (like a shell: 128 + SIGINT).
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = "\b\nExit codes:\n" + "\n".join(
    f"  {code:>3}  {outcome}" for outcome, code in EXIT_CODES.items()
) + f"\n  {EXIT_ERROR:>3}  error (bad file, bad setup)\n    2  usage error"

OUTCOME_TEXT: dict[Outcome, str] = {
    Outcome.COMPLETED: "call completed",
    Outcome.REJECTED: "{peer} rejected the call",
    Outcome.BUSY: "{peer} is busy (in another call)",
    Outcome.NO_ANSWER: "no answer from {peer}",
    Outcome.OFFLINE: "{peer} is offline (not connected to the hub)",
    Outcome.HUB_UNREACHABLE: "lost the hub before the call was set up",
    Outcome.MEDIA_FAILED: "media failed: could not connect audio with {peer}",
    Outcome.MISSED: "missed call from {peer} (the caller hung up)",
    Outcome.CANCELLED: "call cancelled before audio connected",
}


# ----------------------------------------------------------------- output ---


class Output:
    """Human lines and JSON events, as the user asked."""

    def __init__(self, json_mode: bool) -> None:
        self.json_mode = json_mode
        self.human: TextIO = sys.stderr if json_mode else sys.stdout
        self._t0 = time.monotonic()

    def say(self, text: str) -> None:
        print(text, file=self.human, flush=True)

    def event(self, event: dict[str, Any]) -> None:
        if self.json_mode:
            event = {"time": round(time.monotonic() - self._t0, 3), **event}
            print(json.dumps(event, separators=(",", ":")), flush=True)


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"softphone: {message}", err=True)
    sys.exit(code)


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if verbose < 2:
        # aiortc/aioice log expected network noise (failed pairs, mDNS) at WARNING.
        for name in ("aiortc", "aioice"):
            logging.getLogger(name).setLevel(logging.ERROR)


# ------------------------------------------------------------- arguments ---


def _check_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not is_valid_id(value):
        raise click.BadParameter(f"{value!r}: use 1 to 64 characters of A-Z a-z 0-9 . _ -")
    return value


def _check_server(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        HubAddress.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    return value


def _positive(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise click.BadParameter("must be greater than 0")
    return value


def _as_option(required: bool = True) -> Callable[[Any], Any]:
    return click.option("--as", "client_id", envvar="SOFTPHONE_ID", required=required,
                        callback=_check_id, metavar="ID",
                        help="Your id on the hub (env SOFTPHONE_ID).")


server_option = click.option(
    "--server", envvar="SOFTPHONE_SERVER", default=DEFAULT_SERVER, show_default=True,
    callback=_check_server, metavar="URL",
    help="The hub: http(s)://host:port or ws(s)://host:port (env SOFTPHONE_SERVER).")


def media_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--json", "json_mode", is_flag=True,
                     help="Print the call's events as JSON lines on stdout.")(f)
    f = click.option("--ice-server", "ice_servers", multiple=True, metavar="URL",
                     help="STUN/TURN server URL instead of the hub's /ice-servers "
                          "(repeatable; 'none' for host candidates only).")(f)
    f = click.option("--setup-timeout", type=float, default=15.0, show_default=True,
                     callback=_positive, metavar="S",
                     help="Give up if audio is not connected this long after accepting.")(f)
    f = click.option("--duration", type=float, default=None, callback=_positive, metavar="S",
                     help="Hang up after this many seconds of conversation.")(f)
    f = click.option("--record", type=click.Path(dir_okay=False), metavar="FILE",
                     help="Record what the other side sends to a WAV file. In listen, "
                          "{peer}, {n} and {time} are replaced.")(f)
    f = click.option("--tone", type=float, default=None, metavar="HZ",
                     help="Send a sine tone of this frequency.")(f)
    f = click.option("--play", type=click.Path(dir_okay=False), metavar="FILE",
                     help="Send this audio file (any format FFmpeg reads), then silence.")(f)
    return f


def make_source(play: str | None, tone: float | None) -> Any:
    """The track to send, or exit with a clear message."""
    from .tracks import AudioFileError, FileSource, SilenceSource, ToneSource

    if play and tone is not None:
        raise click.UsageError("use either --play or --tone, not both")
    if play:
        try:
            return FileSource.from_file(play)
        except AudioFileError as exc:
            raise click.BadParameter(str(exc), param_hint="--play") from exc
    if tone is not None:
        try:
            return ToneSource(tone)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--tone") from exc
    return SilenceSource()


def make_sinks(record: str | None, peer: str = "", n: int = 1) -> list[Any]:
    from .tracks import RecorderSink

    if not record:
        return []
    path = record.format(peer=peer, n=n, time=datetime.now().strftime("%Y%m%d-%H%M%S")) \
        if "{" in record else record
    try:
        return [RecorderSink(path)]
    except OSError as exc:
        fail(f"cannot record to {path}: {exc.strerror or exc}")


def ice_list(values: tuple[str, ...]) -> list[dict[str, Any]] | None:
    if not values:
        return None
    if values == ("none",):
        return []
    out = []
    for url in values:
        if url.split(":", 1)[0] not in ("stun", "stuns", "turn", "turns"):
            raise click.BadParameter(f"{url!r} is not a stun: or turn: URL",
                                     param_hint="--ice-server")
        out.append({"urls": url})
    return out


# ------------------------------------------------------------------ main ---


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="softphone")
@click.option("-v", "--verbose", count=True, help="More logging (-v, -vv).")
def main(verbose: int) -> None:
    """A WebRTC softphone for the terminal, with its own signaling hub.

    \b
    Try it:   softphone demo
    Hub:      softphone serve --port 8080
    Answer:   softphone listen --as bob --auto-accept
    Call:     softphone call bob --as alice --tone 440
    """
    setup_logging(verbose)


class Interrupts:
    """SIGINT/SIGTERM as an asyncio event; a second Ctrl-C exits at once."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.count = 0

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._fire)

    def _fire(self) -> None:
        self.count += 1
        if self.count > 1:
            os._exit(EXIT_INTERRUPTED)
        self.event.set()


async def _first(*aws: Any) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


# ------------------------------------------------------------------ serve ---


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--ice-server", "ice_servers", multiple=True, metavar="URL",
              help="STUN/TURN URL that /ice-servers hands out (repeatable; 'none' for an "
                   "empty list). Default: the original system's Google STUN entry.")
def serve(host: str, port: int, ice_servers: tuple[str, ...]) -> None:
    """Run the signaling hub (WebSocket /ws, /ice-servers, /healthz)."""
    from .hub import DEFAULT_ICE_SERVERS, Hub, HubConfig, serve_forever

    servers = ice_list(ice_servers)
    hub = Hub(HubConfig(ice_servers=DEFAULT_ICE_SERVERS if servers is None else servers))

    def ready(bound: int) -> None:
        click.echo(f"softphone hub listening on http://{host}:{bound} (Ctrl-C to stop)")

    async def run() -> None:
        interrupts = Interrupts()
        interrupts.install()
        task = asyncio.create_task(serve_forever(hub, host, port, ready))
        await _first(task, interrupts.event.wait())
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if task.done() and not task.cancelled() and task.exception():
            raise task.exception()  # type: ignore[misc]

    try:
        asyncio.run(run())
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    click.echo("hub stopped")


# ------------------------------------------------------------------- call ---


def _describe(result: Any) -> str:
    text = OUTCOME_TEXT[result.outcome].format(peer=result.peer)
    if result.outcome is Outcome.COMPLETED:
        who = "we" if result.ended_by == "local" else "they"
        text += f" with {result.peer}, talked {result.talk_seconds:.1f} s ({who} hung up)"
    elif result.reason and result.outcome in (Outcome.MEDIA_FAILED, Outcome.REJECTED):
        text += f" ({result.reason})"
    return text


async def _talk(call: Any, out: Output, interrupts: Interrupts, duration: float | None) -> Any:
    """Wait for the call to end, hanging up on Ctrl-C or after ``duration``."""
    from .phone import CallEnded

    async def connected_then_timer() -> None:
        try:
            await call.connected()
        except CallEnded:
            return
        out.say(f"connected to {call.peer}"
                f" ({(call.machine.connected_at - call.machine.started_at):.2f} s)")
        if duration is not None:
            await asyncio.sleep(duration)
            await call.hangup("duration")
            return
        await asyncio.Event().wait()

    timer = asyncio.create_task(connected_then_timer())
    await _first(call.ended(), interrupts.event.wait(), timer)
    if not call.machine.is_ended:
        await call.hangup("interrupted" if interrupts.event.is_set() else "hangup")
    result = await call.ended()
    timer.cancel()
    return result


@main.command(epilog=EXIT_CODES_HELP)
@click.argument("callee", callback=_check_id)
@_as_option()
@server_option
@media_options
@click.option("--ring-timeout", type=float, default=30.0, show_default=True,
              callback=_positive, metavar="S", help="Give up if nobody answers in time.")
def call(callee: str, client_id: str, server: str, play: str | None, tone: float | None,
         record: str | None, duration: float | None, setup_timeout: float,
         ice_servers: tuple[str, ...], json_mode: bool, ring_timeout: float) -> None:
    """Call CALLEE through the hub and talk until someone hangs up.

    Sends --play or --tone (silence otherwise), records with --record.
    Ctrl-C hangs up cleanly.
    """
    if callee == client_id:
        raise click.BadParameter("you cannot call yourself", param_hint="CALLEE")
    out = Output(json_mode)
    source = make_source(play, tone)
    servers = ice_list(ice_servers)
    timeouts = CallTimeouts(ring=ring_timeout, setup=setup_timeout)
    sinks = make_sinks(record, callee)

    async def run() -> int:
        from .phone import Phone

        interrupts = Interrupts()
        interrupts.install()
        phone = Phone(client_id, server, ice_servers=servers, timeouts=timeouts,
                      reconnect=False)
        try:
            await phone.connect()
        except HubUnreachable as exc:
            out.say(str(exc))
            out.event({"event": "ended", "outcome": str(Outcome.HUB_UNREACHABLE),
                       "exit_code": EXIT_CODES[Outcome.HUB_UNREACHABLE], "reason": str(exc)})
            for sink in sinks:
                sink.close()
            return EXIT_CODES[Outcome.HUB_UNREACHABLE]
        try:
            out.say(f"calling {callee} as {client_id} via {phone.hub.address.http}")
            the_call = await phone.dial(callee, source, sinks, on_event=out.event)
            result = await _talk(the_call, out, interrupts, duration)
        finally:
            await phone.close()
        out.say(_describe(result))
        if record and result.outcome is Outcome.COMPLETED:
            out.say(f"recorded to {sinks[0].writer.path} ({sinks[0].writer.seconds:.1f} s)")
        return int(result.exit_code)

    sys.exit(asyncio.run(run()))


# ----------------------------------------------------------------- listen ---


class LineReader:
    """Lines from stdin without blocking the event loop."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._buffer = b""
        self._fd = sys.stdin.fileno() if sys.stdin is not None else -1
        self.active = False

    def start(self) -> None:
        if self._fd < 0:
            return
        try:
            asyncio.get_running_loop().add_reader(self._fd, self._readable)
            self.active = True
        except (OSError, ValueError, NotImplementedError):
            self.active = False

    def _readable(self) -> None:
        try:
            chunk = os.read(self._fd, 4096)
        except OSError:
            chunk = b""
        if not chunk:
            asyncio.get_running_loop().remove_reader(self._fd)
            self.active = False
            self.queue.put_nowait(None)
            return
        self._buffer += chunk
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self.queue.put_nowait(line.decode(errors="replace").strip())

    def drain(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()


async def _ask(call: Any, out: Output, reader: LineReader) -> bool | None:
    """Ask accept/reject; None if the prompt was withdrawn (the caller gave up)."""
    reader.drain()
    out.say(f"incoming call from {call.peer}: accept? [y/n]")
    while True:
        getter = asyncio.ensure_future(reader.queue.get())
        ended = asyncio.ensure_future(call.ended())
        await asyncio.wait({getter, ended}, return_when=asyncio.FIRST_COMPLETED)
        if not getter.done():
            getter.cancel()
            return None
        ended.cancel()
        answer = getter.result()
        if answer is None:
            out.say("stdin closed: cannot ask; use --auto-accept to answer calls")
            await call.ended()
            return None
        if answer.lower() in ("y", "yes", "a", "accept"):
            return True
        if answer.lower() in ("n", "no", "r", "reject"):
            return False
        out.say("please answer y or n")


@main.command(epilog=EXIT_CODES_HELP + "\n\n(--once exits with the call's code.)")
@_as_option()
@server_option
@media_options
@click.option("--auto-accept", is_flag=True, help="Answer every call without asking.")
@click.option("--once", is_flag=True, help="Handle one call, then exit with its outcome.")
def listen(client_id: str, server: str, play: str | None, tone: float | None,
           record: str | None, duration: float | None, setup_timeout: float,
           ice_servers: tuple[str, ...], json_mode: bool, auto_accept: bool,
           once: bool) -> None:
    """Wait for calls and answer them (asks y/n unless --auto-accept).

    A second caller during a call gets 'busy'. Ctrl-C hangs up and exits.
    """
    out = Output(json_mode)
    make_source(play, tone).stop()  # validate the file/tone now, before anyone calls
    servers = ice_list(ice_servers)
    timeouts = CallTimeouts(setup=setup_timeout)

    async def run() -> int:
        from .phone import Phone

        interrupts = Interrupts()
        interrupts.install()
        reader = LineReader()
        if not auto_accept:
            reader.start()
        phone = Phone(client_id, server, ice_servers=servers, timeouts=timeouts)
        try:
            await phone.connect()
        except HubUnreachable as exc:
            out.say(str(exc))
            return EXIT_CODES[Outcome.HUB_UNREACHABLE]
        out.say(f"listening as {client_id} on {phone.hub.address.http} (Ctrl-C to stop)")
        out.event({"event": "listening", "id": client_id})
        code = 0
        n = 0
        try:
            while True:
                next_call = asyncio.ensure_future(phone.next_call())
                await _first(next_call, interrupts.event.wait())
                if not next_call.done() or next_call.cancelled():
                    return EXIT_INTERRUPTED if once else 0
                incoming = next_call.result()
                n += 1
                incoming.on_event(out.event)
                out.event({"event": "incoming", "peer": incoming.peer})
                if auto_accept:
                    accept: bool | None = True
                    out.say(f"incoming call from {incoming.peer}: accepting")
                else:
                    asking = asyncio.ensure_future(_ask(incoming, out, reader))
                    await _first(asking, interrupts.event.wait())
                    accept = asking.result() if asking.done() and not asking.cancelled() \
                        else False
                if accept:
                    await incoming.accept(make_source(play, tone),
                                          make_sinks(record, incoming.peer, n))
                elif accept is False and incoming.state is CallState.RINGING:
                    await incoming.reject()
                result = await _talk(incoming, out, interrupts, duration)
                out.say(_describe(result))
                code = int(result.exit_code)
                if once or interrupts.event.is_set():
                    return code
        finally:
            await phone.close()

    sys.exit(asyncio.run(run()))


# ------------------------------------------------------------------- demo ---


@main.command()
@click.option("--seconds", type=float, default=3.0, show_default=True, callback=_positive,
              help="How long the two phones talk.")
def demo(seconds: float) -> None:
    """Call between two phones through an embedded hub, and check the audio.

    Nothing else is needed: the hub and both phones run in this process.
    Exit 0 only if each side received the other's tone.
    """
    from .demo import run_demo

    async def run() -> Any:
        interrupts = Interrupts()
        interrupts.install()
        task = asyncio.ensure_future(run_demo(seconds, progress=click.echo))
        await _first(task, interrupts.event.wait())
        if not task.done():
            return None
        return task.result()

    report = asyncio.run(run())
    if report is None:
        fail("interrupted", EXIT_INTERRUPTED)
    for line in report.lines():
        click.echo(line)
    sys.exit(0 if report.ok else EXIT_ERROR)


if __name__ == "__main__":  # pragma: no cover
    main()
