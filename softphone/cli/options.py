"""Typed option groups: click options that reach a command as one dataclass.

Each group is a decorator (:func:`option_group`) adding its click options to a
command and handing the command one frozen dataclass in their place, built
(and checked as a whole: options that go together, or exclude each other)
before the command runs. A bad combination is a click usage error: exit 2,
one line. The hub's own groups (TLS server, security) live in
:mod:`softphone.cli.serve`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from softphone.client.signaling import DEFAULT_SERVER, HubAddress
from softphone.core.protocol import is_valid_id

T = TypeVar("T")
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def option_group(keyword: str, build: Callable[..., T], options: Sequence[Decorator]
                 ) -> Decorator:
    """Add ``options`` to a command; it gets ``build(**their values)`` as ``keyword``.

    ``build`` runs before the command (inside click's context), so the click
    errors it raises are usage errors like any other.
    """
    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        names: list[str] = []

        @functools.wraps(f)
        def with_group(*args: Any, **kwargs: Any) -> Any:
            kwargs[keyword] = build(**{name: kwargs.pop(name) for name in names})
            return f(*args, **kwargs)

        command: Callable[..., Any] = with_group
        for option in reversed(options):
            command = option(command)
            param: click.Parameter = command.__click_params__[-1]  # type: ignore[attr-defined]
            assert param.name is not None
            names.append(param.name)
        return command
    return decorate


# -------------------------------------------------------------- checks ---


def check_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not is_valid_id(value):
        raise click.BadParameter(f"{value!r}: use 1 to 64 characters of A-Z a-z 0-9 . _ -")
    return value


def check_server(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        HubAddress.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    return value


def positive(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise click.BadParameter("must be greater than 0")
    return value


def not_negative(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if value < 0:
        raise click.BadParameter("must be 0 or more")
    return value


def as_option(required: bool = True) -> Decorator:
    """``--as ID``: the command gets it as ``client_id``."""
    return click.option("--as", "client_id", envvar="SOFTPHONE_ID", required=required,
                        callback=check_id, metavar="ID",
                        help="Your id on the hub (env SOFTPHONE_ID).")


# ---------------------------------------------------------- hub client ---


@dataclass(frozen=True)
class TlsClientOptions:
    """How a phone checks an https/wss hub (``--ca-file`` / ``--insecure``)."""

    ca_file: str | None = None
    insecure: bool = False


@dataclass(frozen=True)
class HubClientOptions:
    """Which hub a phone uses and how it gets in: ``--server``, ``--token``, TLS."""

    server: str = DEFAULT_SERVER
    token: str | None = None
    tls: TlsClientOptions = TlsClientOptions()


def _hub_client(server: str, hub_token: str | None, ca_file: str | None,
                insecure: bool) -> HubClientOptions:
    if ca_file and insecure:
        raise click.UsageError("use either --ca-file or --insecure, not both")
    return HubClientOptions(server, hub_token, TlsClientOptions(ca_file, insecure))


hub_client_options = option_group("hub", _hub_client, [
    click.option("--server", envvar="SOFTPHONE_SERVER", default=DEFAULT_SERVER,
                 show_default=True, callback=check_server, metavar="URL",
                 help="The hub: http(s)://host:port or ws(s)://host:port "
                      "(env SOFTPHONE_SERVER)."),
    click.option("--token", "hub_token", envvar="SOFTPHONE_TOKEN", metavar="TOKEN",
                 help="Token for a hub run with --secret (softphone token --as ID; "
                      "env SOFTPHONE_TOKEN)."),
    click.option("--ca-file", type=click.Path(dir_okay=False), metavar="FILE",
                 help="https/wss hub: trust certificates signed by this PEM file (for "
                      "'serve --self-signed', the certificate it prints)."),
    click.option("--insecure", is_flag=True,
                 help="https/wss hub: do not check its certificate."),
])


# ------------------------------------------------------------------ ICE ---


@dataclass(frozen=True)
class IceOptions:
    """STUN/TURN servers (``--ice-server`` and credentials) and ``--relay``."""

    #: RTCIceServer dicts; None: the phone asks the hub's /ice-servers.
    servers: list[dict[str, Any]] | None = None
    relay_only: bool = False


def ice_list(values: tuple[str, ...], username: str | None = None,
             credential: str | None = None) -> list[dict[str, Any]] | None:
    """``--ice-server`` URLs as RTCIceServer dicts (None: none given; ``none``: [])."""
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


def _ice(ice_servers: tuple[str, ...], ice_username: str | None, ice_credential: str | None,
         relay_only: bool = False) -> IceOptions:
    return IceOptions(ice_list(ice_servers, ice_username, ice_credential), relay_only)


_ICE_CREDENTIALS = [
    click.option("--ice-username", metavar="USER", default=None,
                 help="TURN username for the turn:/turns: --ice-server URLs."),
    click.option("--ice-credential", metavar="PASSWORD", default=None,
                 help="TURN password (credential) for the turn:/turns: --ice-server URLs."),
]

#: A phone's ICE options (``call``, ``listen``).
phone_ice_options = option_group("ice", _ice, [
    click.option("--ice-server", "ice_servers", multiple=True, metavar="URL",
                 help="STUN/TURN server URL instead of the hub's /ice-servers "
                      "(repeatable; 'none' for host candidates only)."),
    *_ICE_CREDENTIALS,
    click.option("--relay", "relay_only", is_flag=True,
                 help="Relay-only: send media through the TURN server, never directly."),
])

#: The hub's ICE options (``serve``): what /ice-servers hands out.
hub_ice_options = option_group("ice", _ice, [
    click.option("--ice-server", "ice_servers", multiple=True, metavar="URL",
                 help="STUN/TURN URL that /ice-servers hands out (repeatable; 'none' for "
                      "an empty list). Default: the original system's Google STUN entry."),
    *_ICE_CREDENTIALS,
])


# --------------------------------------------------------------- media ---


@dataclass(frozen=True)
class VoiceOptions:
    """How a phone codes what it sends (``--bitrate``, ``--redundancy``) and
    the loss it simulates on what it receives (``--simulate-loss``)."""

    bitrate_kbps: int | None = None  # None: the encoder's default
    redundancy: int | None = None  # None: the encoder's default
    simulate_loss: float = 0.0  # percent of received packets dropped


@dataclass(frozen=True)
class AudioDeviceOptions:
    """Microphone and speaker: ``--input``, ``--output``, ``--no-audio``."""

    input: str | None = None
    output: str | None = None
    no_audio: bool = False


@dataclass(frozen=True)
class MediaOptions:
    """What a call sends (``--play``/``--tone``, else the microphone), keeps
    (``--record``) and plays, and how it codes its voice."""

    play: str | None = None
    tone: float | None = None
    record: str | None = None
    voice: VoiceOptions = VoiceOptions()
    audio: AudioDeviceOptions = AudioDeviceOptions()


def _media(play: str | None, tone: float | None, record: str | None, bitrate: int | None,
           redundancy: int | None, simulate_loss: float | None, input: str | None,
           output: str | None, no_audio: bool) -> MediaOptions:
    if play and tone is not None:
        raise click.UsageError("use either --play or --tone, not both")
    return MediaOptions(play, tone, record, VoiceOptions(bitrate, redundancy, simulate_loss or 0.0),
                        AudioDeviceOptions(input, output, no_audio))


media_options = option_group("media", _media, [
    click.option("--play", type=click.Path(dir_okay=False), metavar="FILE",
                 help="Send this audio file (any format FFmpeg reads), then silence."),
    click.option("--tone", type=float, default=None, metavar="HZ",
                 help="Send a sine tone of this frequency."),
    click.option("--record", type=click.Path(dir_okay=False), metavar="FILE",
                 help="Record what the other side sends to a WAV file. In listen, "
                      "{peer}, {n} and {time} are replaced."),
    click.option("--bitrate", type=click.IntRange(6, 510), metavar="KBPS",
                 help="Opus bitrate we send, kbit/s (default 128)."),
    click.option("--redundancy", type=click.IntRange(0, 3), metavar="N",
                 help="Earlier frames repeated in each packet (RED) when the peer "
                      "accepts it: a lost packet is rebuilt exactly from the next "
                      "one, for N+1 times the bitrate. 0: Opus alone (default 1)."),
    click.option("--simulate-loss", type=click.FloatRange(0, 100), metavar="PCT",
                 help="Drop this share of received audio packets (testing)."),
    click.option("--input", envvar="SOFTPHONE_INPUT", metavar="DEVICE",
                 help="Microphone: index or part of the name (env SOFTPHONE_INPUT). "
                      "Default: the default microphone unless --tone/--play."),
    click.option("--output", envvar="SOFTPHONE_OUTPUT", metavar="DEVICE",
                 help="Speaker: index or part of the name (softphone devices; env "
                      "SOFTPHONE_OUTPUT). Default: the default speaker, if any."),
    click.option("--no-audio", is_flag=True, help="Use neither microphone nor speaker."),
])


@dataclass(frozen=True)
class TalkOptions:
    """How ``call`` and ``listen`` run a call: timeouts, length, JSON events."""

    setup_timeout: float = 15.0
    duration: float | None = None
    json_mode: bool = False


talk_options = option_group("talk", TalkOptions, [
    click.option("--setup-timeout", type=float, default=15.0, show_default=True,
                 callback=positive, metavar="S",
                 help="Give up if audio is not connected this long after accepting."),
    click.option("--duration", type=float, default=None, callback=positive, metavar="S",
                 help="Hang up after this many seconds of conversation."),
    click.option("--json", "json_mode", is_flag=True,
                 help="Print the call's events as JSON lines on stdout."),
])


def phone_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """All of a phone's groups: ``hub``, ``ice``, ``media``, ``talk``."""
    for group in (talk_options, phone_ice_options, media_options, hub_client_options):
        f = group(f)
    return f
