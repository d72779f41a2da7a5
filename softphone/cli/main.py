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

from softphone import __version__
from softphone.client.signaling import DEFAULT_SERVER, HubAddress, HubUnreachable
from softphone.core.callstate import EXIT_CODES, CallState, CallTimeouts, Outcome
from softphone.core.protocol import is_valid_id

log = logging.getLogger(__name__)

#: Exit code for an error that is not a call outcome (bad file, internal error).
EXIT_ERROR = 1
#: Exit code for Ctrl-C outside a call (like a shell: 128 + SIGINT).
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = "\b\nExit codes:\n" + "\n".join(
    f"  {code:>3}  {outcome}" for outcome, code in EXIT_CODES.items()
) + f"\n  {EXIT_ERROR:>3}  error (bad file, bad setup)\n    2  usage error" \
    "\n   11  refused by the hub (bad token, or replaced by a newer connection)"

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
        #: The live status line of a call on a terminal (softphone.cli.tui.CallScreen).
        self.screen: Any = None

    def say(self, text: str) -> None:
        if self.screen is not None and self.screen.say(text):
            return
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


# -------------------------------------------------------------------- TLS ---
# Options stored in ctx.meta (expose_value=False) so command signatures stay as they are.


def _meta_keeper(prefix: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback keeping an option's value in ``ctx.meta["softphone.<prefix><name>"]``."""
    def keep(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        ctx.meta[f"softphone.{prefix}{param.name}"] = value
        return value
    return keep


_tls_meta = _meta_keeper("tls.")


def tls_client_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--insecure", is_flag=True, expose_value=False, callback=_tls_meta,
                     help="https/wss hub: do not check its certificate.")(f)
    f = click.option("--ca-file", type=click.Path(dir_okay=False), expose_value=False,
                     callback=_tls_meta, metavar="FILE",
                     help="https/wss hub: trust certificates signed by this PEM file (for "
                          "'serve --self-signed', the certificate it prints).")(f)
    return f


def client_tls() -> Any:
    """The ssl context for Phone(ssl_context=...) from --ca-file / --insecure (None: system CAs)."""
    from softphone.hub.tls import TLSConfigError, client_context

    meta = click.get_current_context().meta
    ca_file = meta.get("softphone.tls.ca_file")
    insecure = bool(meta.get("softphone.tls.insecure"))
    if ca_file and insecure:
        raise click.UsageError("use either --ca-file or --insecure, not both")
    try:
        return client_context(ca_file, insecure)
    except TLSConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--ca-file") from exc


def tls_server_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--tls-dir", type=click.Path(file_okay=False), expose_value=False,
                     callback=_tls_meta, metavar="DIR",
                     help="With --self-signed: keep the key and certificate here (reused "
                          "while valid) instead of a temporary directory.")(f)
    f = click.option("--self-signed", is_flag=True, expose_value=False, callback=_tls_meta,
                     help="Serve https/wss with a generated certificate for localhost and "
                          "this machine's addresses (browsers need https for the microphone).")(f)
    f = click.option("--key", type=click.Path(dir_okay=False), expose_value=False,
                     callback=_tls_meta, metavar="FILE", help="TLS private key (PEM).")(f)
    f = click.option("--cert", type=click.Path(dir_okay=False), expose_value=False,
                     callback=_tls_meta, metavar="FILE",
                     help="Serve https/wss with this certificate chain (PEM); needs --key.")(f)
    return f


def server_tls(host: str) -> tuple[Any, list[str]]:
    """The hub's ssl context (None: plain http) and lines to print ({port} to fill in)."""
    import atexit
    import shutil
    import tempfile

    from softphone.hub.tls import (
        TLSConfigError,
        default_names,
        local_addresses,
        self_signed,
        server_context,
    )

    meta = click.get_current_context().meta
    cert, key = meta.get("softphone.tls.cert"), meta.get("softphone.tls.key")
    generate = bool(meta.get("softphone.tls.self_signed"))
    tls_dir = meta.get("softphone.tls.tls_dir")
    if generate and (cert or key):
        raise click.UsageError("use either --self-signed or --cert/--key, not both")
    if bool(cert) != bool(key):
        raise click.UsageError("--cert and --key go together")
    if tls_dir and not generate:
        raise click.UsageError("--tls-dir goes with --self-signed")
    notes: list[str] = []
    if generate:
        folder = tls_dir
        if folder is None:
            folder = tempfile.mkdtemp(prefix="softphone-tls-")
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
        try:
            made = self_signed(folder, default_names([host]))
        except OSError as exc:
            fail(f"cannot write the certificate to {folder}: {exc.strerror or exc}")
        cert, key = str(made.cert), str(made.key)
        notes.append(f"self-signed certificate {'reused' if made.reused else 'made'}: {cert}")
        notes.append(f"  for {', '.join(made.names)}; SHA-256 {made.fingerprint}")
        notes.append(f"  CLI clients: --ca-file {cert} (or --insecure); browsers will warn once")
        if host in ("0.0.0.0", "::"):
            notes += [f"  phones on the LAN: https://{a}:{{port}}/" for a in local_addresses()
                      if not a.startswith(("127.", "::1")) and ":" not in a]
    if cert is None or key is None:
        return None, notes
    try:
        return server_context(cert, key), notes
    except TLSConfigError as exc:
        fail(str(exc))


token_option = click.option(
    "--token", "hub_token", envvar="SOFTPHONE_TOKEN", metavar="TOKEN",
    help="Token for a hub run with --secret (softphone token --as ID; env SOFTPHONE_TOKEN).")

#: Exit code when the hub refuses us for good (bad token, or replaced by a newer login).
EXIT_REFUSED = 11


_keep = _meta_keeper("")


def media_config() -> Any:
    """The MediaConfig asked for by --bitrate / --simulate-loss (see voice_options)."""
    from softphone.media.netsim import Impairment
    from softphone.media.opus import EncoderSettings
    from softphone.media.rtc import MediaConfig

    meta = click.get_current_context().meta
    loss = meta.get("softphone.simulate_loss") or 0.0
    settings: dict[str, Any] = {}
    if meta.get("softphone.bitrate") is not None:
        settings["bitrate"] = meta["softphone.bitrate"] * 1000
    if meta.get("softphone.redundancy") is not None:
        settings["redundancy"] = meta["softphone.redundancy"]
    encoder = EncoderSettings(**settings)
    return MediaConfig(encoder=encoder,
                       impairment=Impairment(loss=loss / 100, seed=0) if loss else None)


def voice_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Codec and test options; their values go to ctx.meta (read by media_config)."""
    f = click.option("--simulate-loss", type=click.FloatRange(0, 100), metavar="PCT",
                     expose_value=False, callback=_keep,
                     help="Drop this share of received audio packets (testing).")(f)
    f = click.option("--bitrate", type=click.IntRange(6, 510), metavar="KBPS",
                     expose_value=False, callback=_keep,
                     help="Opus bitrate we send, kbit/s (default 128).")(f)
    f = click.option("--redundancy", type=click.IntRange(0, 3), metavar="N",
                     expose_value=False, callback=_keep,
                     help="Earlier frames repeated in each packet (RED) when the peer "
                          "accepts it: a lost packet is rebuilt exactly from the next "
                          "one, for N+1 times the bitrate. 0: Opus alone (default 1).")(f)
    return f


def media_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = voice_options(f)
    f = click.option("--json", "json_mode", is_flag=True,
                     help="Print the call's events as JSON lines on stdout.")(f)
    f = click.option("--ice-server", "ice_servers", multiple=True, metavar="URL",
                     help="STUN/TURN server URL instead of the hub's /ice-servers "
                          "(repeatable; 'none' for host candidates only).")(f)
    f = click.option("--relay", "relay_only", is_flag=True,
                     help="Relay-only: send media through the TURN server, never directly.")(f)
    f = ice_credential_options(f)
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
    return audio_device_options(f)


# ------------------------------------------------------- audio devices ---
# Stored in ctx.meta (expose_value=False) like the TLS options; see softphone/tui.py.


_audio_meta = _meta_keeper("audio.")


def audio_device_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--no-audio", is_flag=True, expose_value=False, callback=_audio_meta,
                     help="Use neither microphone nor speaker.")(f)
    f = click.option("--output", envvar="SOFTPHONE_OUTPUT", expose_value=False,
                     callback=_audio_meta, metavar="DEVICE",
                     help="Speaker: index or part of the name (softphone devices; env "
                          "SOFTPHONE_OUTPUT). Default: the default speaker, if any.")(f)
    f = click.option("--input", envvar="SOFTPHONE_INPUT", expose_value=False,
                     callback=_audio_meta, metavar="DEVICE",
                     help="Microphone: index or part of the name (env SOFTPHONE_INPUT). "
                          "Default: the default microphone unless --tone/--play.")(f)
    return f


def audio_device(kind: str) -> Any:
    """The microphone ("input") or speaker ("output") the options ask for, or None."""
    from softphone.cli.tui import open_mic, open_speaker
    from softphone.media.devices import DeviceError

    meta = click.get_current_context().meta
    spec = meta.get(f"softphone.audio.{kind}")
    if meta.get("softphone.audio.no_audio"):
        if spec:
            raise click.UsageError(f"use either --{kind} or --no-audio, not both")
        return None
    opener = open_mic if kind == "input" else open_speaker
    try:
        device, notice = opener(spec, required=bool(spec))
    except DeviceError as exc:
        raise click.BadParameter(str(exc), param_hint=f"--{kind}") from exc
    if notice and not meta.get(f"softphone.audio.{kind}.noticed"):
        meta[f"softphone.audio.{kind}.noticed"] = True
        click.echo(f"softphone: {notice} (see softphone devices, or --no-audio)", err=True)
    return device


def make_source(play: str | None, tone: float | None) -> Any:
    """The track to send, or exit with a clear message."""
    from softphone.media.tracks import AudioFileError, FileSource, SilenceSource, ToneSource

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
    if click.get_current_context().meta.get("softphone.audio.echo"):
        from softphone.media.tracks import EchoSource

        return EchoSource()
    mic = audio_device("input")
    return mic if mic is not None else SilenceSource()


def make_sinks(record: str | None, peer: str = "", n: int = 1) -> list[Any]:
    from softphone.media.tracks import RecorderSink

    meta = click.get_current_context().meta
    echo = meta.get("softphone.audio.echo") and not meta.get("softphone.audio.output")
    speaker = [] if echo else [audio_device("output")]
    speaker = [s for s in speaker if s is not None]
    if not record:
        return speaker
    path = record.format(peer=peer, n=n, time=datetime.now().strftime("%Y%m%d-%H%M%S")) \
        if "{" in record else record
    try:
        return [RecorderSink(path), *speaker]
    except OSError as exc:
        fail(f"cannot record to {path}: {exc.strerror or exc}")


def ice_credential_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--ice-username / --ice-credential: the credentials of the turn: URLs of --ice-server."""
    f = click.option("--ice-credential", metavar="PASSWORD", default=None,
                     help="TURN password (credential) for the turn:/turns: --ice-server URLs.")(f)
    f = click.option("--ice-username", metavar="USER", default=None,
                     help="TURN username for the turn:/turns: --ice-server URLs.")(f)
    return f


def ice_list(values: tuple[str, ...], username: str | None = None,
             credential: str | None = None) -> list[dict[str, Any]] | None:
    if (username is None) != (credential is None):
        raise click.UsageError("--ice-username and --ice-credential go together")
    if not values:
        if username is not None:
            raise click.UsageError("--ice-username/--ice-credential need a turn: --ice-server")
        return None
    if values == ("none",):
        return []
    out: list[dict[str, Any]] = []
    for url in values:
        scheme = url.split(":", 1)[0]
        if scheme not in ("stun", "stuns", "turn", "turns"):
            raise click.BadParameter(f"{url!r} is not a stun: or turn: URL",
                                     param_hint="--ice-server")
        entry: dict[str, Any] = {"urls": url}
        if scheme in ("turn", "turns"):
            if username is None or credential is None:
                raise click.UsageError(f"{url} needs --ice-username and --ice-credential")
            entry.update(username=username, credential=credential)
        out.append(entry)
    return out


# ------------------------------------------------------------------ main ---


class SoftphoneGroup(click.Group):
    """Turns a missing system dependency into one clear line, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from softphone.core.errors import MissingDependency

        try:
            return super().invoke(ctx)
        except MissingDependency as exc:
            fail(str(exc))


@click.group(cls=SoftphoneGroup, context_settings={"help_option_names": ["-h", "--help"]})
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


def _turn_url(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
              ) -> tuple[str, ...]:
    for url in value:
        if url.split(":", 1)[0] not in ("turn", "turns"):
            raise click.BadParameter(f"{url!r} is not a turn: or turns: URL")
    return value


def _origins(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
             ) -> tuple[str, ...]:
    from softphone.hub.limits import OriginPolicy

    try:
        OriginPolicy.from_list(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    return value


def _not_negative(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if value < 0:
        raise click.BadParameter("must be 0 or more")
    return value


def hub_security_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Identity, origin, limit and TURN options of ``serve``."""
    opts = [
        click.option("--secret", envvar="SOFTPHONE_SECRET", metavar="S",
                     help="Require tokens signed with this secret (env SOFTPHONE_SECRET)."),
        click.option("--allow-origin", "allow_origins", multiple=True, metavar="ORIGIN",
                     callback=_origins,
                     help="Browser origin allowed to connect besides the hub's own "
                          "(repeatable; '*' for any). Clients sending no Origin are allowed."),
        click.option("--turn", "turn_urls", multiple=True, metavar="URL", callback=_turn_url,
                     help="TURN URL handed out by /ice-servers with time-limited "
                          "credentials (repeatable; needs --turn-secret)."),
        click.option("--turn-secret", envvar="SOFTPHONE_TURN_SECRET", metavar="S",
                     help="coturn's static-auth-secret (env SOFTPHONE_TURN_SECRET)."),
        click.option("--turn-ttl", type=float, default=3600.0, show_default=True,
                     callback=_positive, metavar="S", help="Lifetime of TURN credentials."),
        click.option("--max-message-bytes", type=click.IntRange(256), default=64 * 1024,
                     show_default=True, help="Larger messages get 'too-large'."),
        click.option("--rate", type=float, default=100.0, show_default=True,
                     callback=_not_negative, metavar="N",
                     help="Messages a second per connection (0: unlimited)."),
        click.option("--burst", type=float, default=200.0, show_default=True,
                     callback=_positive, metavar="N", help="Messages allowed in a burst."),
        click.option("--max-connections", type=click.IntRange(0), default=20_000,
                     show_default=True, help="Connections in total (0: unlimited)."),
        click.option("--max-per-address", type=click.IntRange(0), default=100,
                     show_default=True, help="Connections from one address (0: unlimited)."),
        click.option("--peer-grace", type=float, default=4.0, show_default=True,
                     callback=_not_negative, metavar="S",
                     help="How long a client in a call may be gone before its peer is "
                          "sent hangup (peer-disconnected)."),
        click.option("--heartbeat", type=float, default=15.0, show_default=True,
                     callback=_positive, metavar="S",
                     help="Ping interval; a client silent for 1.5 times it is dropped."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def hub_security_config(*, turn_urls: tuple[str, ...], turn_secret: str | None,
                        **rest: Any) -> dict[str, Any]:
    """HubConfig fields from the options of :func:`hub_security_options`."""
    if turn_urls and not turn_secret:
        raise click.UsageError("--turn needs --turn-secret (coturn's static-auth-secret)")
    if turn_secret and not turn_urls:
        raise click.UsageError("--turn-secret needs at least one --turn URL")
    if rest.get("secret") is not None:
        _secret(rest["secret"])
    return {"turn_urls": turn_urls, "turn_secret": turn_secret,
            "peer_grace": rest.pop("peer_grace"), **rest}


def _secret(value: str) -> str:
    from softphone.hub.auth import check_secret

    try:
        return check_secret(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--secret") from None


_TTL_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _ttl(ctx: click.Context, param: click.Parameter, value: str) -> float:
    text = value.strip().lower()
    unit = _TTL_UNITS.get(text[-1:], None)
    number = text[:-1] if unit is not None else text
    try:
        seconds = float(number) * (unit or 1.0)
    except ValueError:
        raise click.BadParameter(f"{value!r}: use seconds or 30m, 12h, 7d") from None
    if not seconds > 0 or seconds != seconds or seconds == float("inf"):
        raise click.BadParameter("must be greater than 0")
    return seconds


@main.command()
@_as_option()
@click.option("--secret", envvar="SOFTPHONE_SECRET", required=True, metavar="S",
              help="The hub's secret (env SOFTPHONE_SECRET).")
@click.option("--ttl", default="24h", show_default=True, callback=_ttl, metavar="TIME",
              help="Lifetime: seconds, or with a unit (30m, 12h, 7d).")
def token(client_id: str, secret: str, ttl: float) -> None:
    """Print a token that lets ID connect to a hub run with this --secret."""
    from softphone.hub.auth import mint_token

    click.echo(mint_token(_secret(secret), client_id, time.time(), ttl))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--ice-server", "ice_servers", multiple=True, metavar="URL",
              help="STUN/TURN URL that /ice-servers hands out (repeatable; 'none' for an "
                   "empty list). Default: the original system's Google STUN entry.")
@click.option("--redis", "redis_url", envvar="SOFTPHONE_REDIS", metavar="URL",
              help="Run as one node of several sharing this Redis (redis://host:6379/0; "
                   "env SOFTPHONE_REDIS): presence and routing across nodes. "
                   "See docs/scale-out.md.")
@click.option("--node-id", metavar="ID",
              help="This node's name in Redis (default: hostname-pid; unique per node).")
@click.option("--loop", "loop_kind", type=click.Choice(["auto", "uvloop", "asyncio"]),
              default="auto", show_default=True,
              help="Event loop: uvloop (less CPU and memory per client) or the standard "
                   "asyncio one; auto takes uvloop when it is installed.")
@ice_credential_options
@hub_security_options
@tls_server_options
def serve(host: str, port: int, ice_servers: tuple[str, ...], ice_username: str | None,
          ice_credential: str | None, redis_url: str | None = None,
          node_id: str | None = None, loop_kind: str = "auto", **security: Any) -> None:
    """Run the signaling hub (WebSocket /ws, /ice-servers, /healthz, /metrics).

    It also serves the browser phone at / (https with --self-signed or
    --cert/--key, which browsers need for the microphone off localhost).

    With --secret (or SOFTPHONE_SECRET) every client needs a token
    (softphone token --as ID); without it the hub is open, like the original.
    With --redis several hubs act as one; if Redis cannot be reached at start,
    the exit code is 12.
    """
    from softphone.hub.server import DEFAULT_ICE_SERVERS, Hub, HubConfig, serve_forever

    servers = ice_list(ice_servers, ice_username, ice_credential)
    registry: Any = None
    if redis_url is not None:
        from softphone.hub.redis_registry import RedisRegistry
        try:
            registry = RedisRegistry(redis_url, node_id)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--redis/--node-id") from None
    elif node_id is not None:
        raise click.UsageError("--node-id goes with --redis")
    hub = Hub(HubConfig(ice_servers=DEFAULT_ICE_SERVERS if servers is None else servers,
                        **hub_security_config(**security)), registry)

    tls, tls_notes = server_tls(host)

    def ready(bound: int) -> None:
        scheme = "https" if tls is not None else "http"
        click.echo(f"softphone hub listening on {scheme}://{host}:{bound} (Ctrl-C to stop)")
        for note in tls_notes:
            click.echo(note.replace("{port}", str(bound)))

    async def run() -> None:
        interrupts = Interrupts()
        interrupts.install()
        if registry is not None:
            await registry.start()  # RegistryUnavailable: Redis is not there
        task = asyncio.create_task(serve_forever(hub, host, port, ready, ssl_context=tls))
        await _first(task, interrupts.event.wait())
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if task.done() and not task.cancelled() and task.exception():
            raise task.exception()  # type: ignore[misc]

    from softphone.hub.redis_registry import RegistryUnavailable

    loop_factory = event_loop_factory(loop_kind)
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(run())
    except RegistryUnavailable as exc:
        fail(str(exc), EXIT_REDIS_UNAVAILABLE)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    click.echo("hub stopped")


def event_loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The hub's event loop: uvloop if installed (``auto``) or asked for, else asyncio's.

    uvloop (libuv, in C) costs the hub less CPU per relayed message and less memory
    per connection; without it the standard loop does the same job.
    """
    if kind == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if kind == "uvloop":
            raise click.UsageError("--loop uvloop: uvloop is not installed "
                                   "(pip install uvloop)") from None
        log.debug("uvloop not installed: standard asyncio event loop")
        return None
    return uvloop.new_event_loop


#: Exit code of ``serve --redis`` when Redis cannot be reached at start.
EXIT_REDIS_UNAVAILABLE = 12


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
    from softphone.client.phone import CallEnded

    async def connected_then_timer() -> None:
        try:
            await call.connected()
        except CallEnded:
            return
        pair = call.candidate_pair
        out.say(f"connected to {call.peer}"
                f" ({(call.machine.connected_at - call.machine.started_at):.2f} s)"
                + (f" via {pair}" if pair is not None else ""))
        if duration is not None:
            await asyncio.sleep(duration)
            await call.hangup("duration")
            return
        await asyncio.Event().wait()

    from softphone.cli.tui import CallScreen

    timer = asyncio.create_task(connected_then_timer())
    screen = out.screen = CallScreen(call, out, out.human)
    screen.start()
    try:
        await _first(call.ended(), interrupts.event.wait(), timer)
        if not call.machine.is_ended:
            await call.hangup("interrupted" if interrupts.event.is_set() else "hangup")
        result = await call.ended()
    finally:
        out.screen = None
        screen.stop()
    timer.cancel()
    return result


@main.command(epilog=EXIT_CODES_HELP)
@click.argument("callee", callback=_check_id)
@_as_option()
@server_option
@token_option
@tls_client_options
@media_options
@click.option("--ring-timeout", type=float, default=30.0, show_default=True,
              callback=_positive, metavar="S", help="Give up if nobody answers in time.")
def call(callee: str, client_id: str, server: str, play: str | None, tone: float | None,
         record: str | None, duration: float | None, setup_timeout: float,
         ice_servers: tuple[str, ...], json_mode: bool, ring_timeout: float,
         ice_username: str | None, ice_credential: str | None, relay_only: bool,
         hub_token: str | None) -> None:
    """Call CALLEE through the hub and talk until someone hangs up.

    Sends --play or --tone (silence otherwise), records with --record.
    Ctrl-C hangs up cleanly.
    """
    if callee == client_id:
        raise click.BadParameter("you cannot call yourself", param_hint="CALLEE")
    tls = client_tls()
    out = Output(json_mode)
    source = make_source(play, tone)
    servers = ice_list(ice_servers, ice_username, ice_credential)
    timeouts = CallTimeouts(ring=ring_timeout, setup=setup_timeout)
    sinks = make_sinks(record, callee)

    media = media_config()

    async def run() -> int:
        from softphone.client.phone import Phone

        interrupts = Interrupts()
        interrupts.install()
        phone = Phone(client_id, server, ice_servers=servers, timeouts=timeouts, media=media,
                      reconnect=True, relay_only=relay_only, token=hub_token,
                      ssl_context=tls)
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
        if phone.refusal is not None:
            out.say(f"the hub refused us: {phone.refusal.message}")
            return EXIT_REFUSED
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
@token_option
@tls_client_options
@media_options
@click.option("--auto-accept", is_flag=True, help="Answer every call without asking.")
@click.option("--once", is_flag=True, help="Handle one call, then exit with its outcome.")
@click.option("--echo", is_flag=True, expose_value=False, callback=_audio_meta,
              help="Send each caller's audio back to them (the echo test).")
def listen(client_id: str, server: str, play: str | None, tone: float | None,
           record: str | None, duration: float | None, setup_timeout: float,
           ice_servers: tuple[str, ...], json_mode: bool, auto_accept: bool,
           once: bool, ice_username: str | None, ice_credential: str | None,
           relay_only: bool, hub_token: str | None) -> None:
    """Wait for calls and answer them (asks y/n unless --auto-accept).

    A second caller during a call gets 'busy'. Ctrl-C hangs up and exits.
    """
    tls = client_tls()
    out = Output(json_mode)
    if click.get_current_context().meta.get("softphone.audio.echo") and (play or tone):
        raise click.UsageError("--echo sends the caller's audio: not with --play/--tone")
    make_source(play, tone).stop()  # validate the file/tone now, before anyone calls
    servers = ice_list(ice_servers, ice_username, ice_credential)
    timeouts = CallTimeouts(setup=setup_timeout)

    media = media_config()

    async def run() -> int:
        from softphone.client.phone import Phone

        interrupts = Interrupts()
        interrupts.install()
        from softphone.cli.tui import ask_key, is_terminal

        reader = LineReader()
        keys = not auto_accept and is_terminal(out.human)
        if not auto_accept and not keys:
            reader.start()
        phone = Phone(client_id, server, ice_servers=servers, timeouts=timeouts, media=media,
                      relay_only=relay_only, token=hub_token, ssl_context=tls)
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
                await _first(next_call, interrupts.event.wait(), phone.refused.wait())
                if phone.refusal is not None:
                    out.say(f"the hub refused us: {phone.refusal.message}")
                    return EXIT_REFUSED
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
                    asking = asyncio.ensure_future(ask_key(incoming, out) if keys
                                                   else _ask(incoming, out, reader))
                    await _first(asking, interrupts.event.wait())
                    accept = asking.result() if asking.done() and not asking.cancelled() \
                        else False
                if accept:
                    source = make_source(play, tone)
                    sinks = make_sinks(record, incoming.peer, n)
                    if source.__class__.__name__ == "EchoSource":  # what we hear goes back
                        sinks.append(source)
                    await incoming.accept(source, sinks)
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


# ---------------------------------------------------------------- devices ---


@main.command()
def devices() -> None:
    """List the microphones and speakers PortAudio sees (for --input/--output)."""
    from softphone.media.devices import DeviceError, list_devices

    try:
        found = list_devices()
    except DeviceError as exc:
        fail(str(exc))
    if not any(d.inputs or d.outputs for d in found):
        fail("no audio devices (no sound card, or no audio server; with PulseAudio check "
             "PULSE_SERVER); use --tone/--play, --record or --no-audio")
    for kind, label in (("input", "microphones (--input)"), ("output", "speakers (--output)")):
        click.echo(f"{label}:")
        for d in found:
            if d.has(kind):  # type: ignore[arg-type]
                default = d.default_input if kind == "input" else d.default_output
                channels = d.inputs if kind == "input" else d.outputs
                click.echo(f"  {'*' if default else ' '} {d.index:>3}  {d.name} ({d.hostapi}, "
                           f"{channels} ch, {d.default_rate:.0f} Hz)")
    click.echo("* default")


# ------------------------------------------------------------------- demo ---


@main.command()
@click.option("--seconds", type=float, default=3.0, show_default=True, callback=_positive,
              help="How long the two phones talk.")
def demo(seconds: float) -> None:
    """Call between two phones through an embedded hub, and check the audio.

    Nothing else is needed: the hub and both phones run in this process.
    Exit 0 only if each side received the other's tone.
    """
    from softphone.cli.demo import run_demo

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
