"""Typed option groups: click options that reach a command as one dataclass.

Each group is a decorator (:func:`option_group`) adding its click options to a
command and handing the command one frozen dataclass in their place, built
(and checked as a whole: options that go together, or exclude each other)
before the command runs. A bad combination is a click usage error: exit 2,
one line. The hub's own groups (TLS server, security) live in
:mod:`softphone.cli.serve`.

Values the user did not type come from the environment or the config file
before the groups are built (:mod:`softphone.cli.config_wiring` wraps every
command): the groups see one value per option and never know where it came
from. Options the config layer needs to know more about are
:class:`ConfigOption`: ``needed`` (required, but only once the config file
was read) and ``secret_file`` (``--token-file``: read by the config layer,
never handed to the command).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from softphone.cli.config_options import DEFAULT_REDUNDANCY, MAX_BITRATE_KBPS, check_server_url
from softphone.client.hubaddress import DEFAULT_SERVER
from softphone.core.iceurl import check_ice_url
from softphone.core.protocol import is_valid_id

T = TypeVar("T")
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


class ConfigOption(click.Option):
    """A click option the config layer (:mod:`softphone.cli.config_wiring`) treats specially.

    ``needed``: the command cannot run without a value; it may come from the
    command line, the environment or the config file, so it is checked once
    the file is read (click's own ``required`` would refuse before).
    ``secret_file``: ``--X-file FILE`` names a file holding the secret of
    ``--X``; the config layer reads it (with ``SOFTPHONE_X_FILE`` and
    ``x_file`` in the file, at the same ranks) and the command never sees it.
    """

    def __init__(self, *args: Any, needed: bool = False, secret_file: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.needed = needed
        self.secret_file = secret_file


def secret_file_option(flag: str, env: str, what: str) -> Decorator:
    """``--X-file FILE``: the secret of ``--X`` read from a file (env ``env``)."""
    # (any name: the config layer reads it, and one it cannot read, a folder too, is
    # exit 1 as any file an option names, not click's usage error)
    return click.option(flag, cls=ConfigOption, secret_file=True, metavar="FILE",
                        type=click.Path(),
                        help=f"Read {what} from this file instead (env {env}); keep it "
                             "readable only by you.")


def option_group(keyword: str, build: Callable[..., T], options: Sequence[Decorator]
                 ) -> Decorator:
    """Add ``options`` to a command; it gets ``build(**their values)`` as ``keyword``.

    ``build`` runs before the command (inside click's context), so the click
    errors it raises are usage errors like any other. A ``secret_file``
    option among ``options`` is listed with the group but not passed to
    ``build`` (the config layer consumes it).
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
            if not getattr(param, "secret_file", False):
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
        check_server_url(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    return value


def finite(ctx: click.Context | None, param: click.Parameter | None,
           value: float | None) -> float | None:
    """A float option's value, refused unless it is a number (click's ``float`` takes
    ``nan`` and ``inf``): the message the config file's numbers get too
    (:func:`softphone.cli.config.check_value`)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter("must be a finite number")
    return value


def positive(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    value = finite(ctx, param, value)
    if value is not None and value <= 0:
        raise click.BadParameter("must be greater than 0")
    return value


def percent(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A share from 0 to 100 (``--simulate-loss``)."""
    value = finite(ctx, param, value)
    if value is not None and not 0 <= value <= 100:
        raise click.BadParameter(f"{value:g} is not in the range 0<=x<=100")
    return value


def not_negative(ctx: click.Context, param: click.Parameter, value: float) -> float:
    finite(ctx, param, value)
    if value < 0:
        raise click.BadParameter("must be 0 or more")
    return value


def as_option(required: bool = True) -> Decorator:
    """``--as ID``: the command gets it as ``client_id``; ``required``: from the
    command line, the environment or the config file (``id``)."""
    return click.option("--as", "client_id", envvar="SOFTPHONE_ID", cls=ConfigOption,
                        needed=required, callback=check_id, metavar="ID",
                        help="Your id on the hub (env SOFTPHONE_ID; config: id)"
                             + (", required." if required else "."))


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
    secret_file_option("--token-file", "SOFTPHONE_TOKEN_FILE", "the token"),
    click.option("--ca-file", type=click.Path(dir_okay=False), metavar="FILE",
                 help="https/wss hub: trust certificates signed by this PEM file (for "
                      "'serve --self-signed', the certificate it prints)."),
    click.option("--insecure/--no-insecure", default=False,
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
        try:
            ice = check_ice_url(url)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--ice-server") from None
        entry: dict[str, Any] = {"urls": url}
        if ice.is_turn:
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
                 help="TURN password (credential) for the turn:/turns: --ice-server URLs "
                      "(better --ice-credential-file: on the command line it shows in "
                      "the process list)."),
]


def _ice_credential_file(env: str) -> Decorator:
    return secret_file_option("--ice-credential-file", env, "the TURN password")


#: A phone's ICE options (``call``, ``listen``).
phone_ice_options = option_group("ice", _ice, [
    click.option("--ice-server", "ice_servers", multiple=True, metavar="URL",
                 help="STUN/TURN server URL instead of the hub's /ice-servers "
                      "(repeatable; 'none' for host candidates only)."),
    *_ICE_CREDENTIALS,
    _ice_credential_file("SOFTPHONE_ICE_CREDENTIAL_FILE"),
    click.option("--relay/--no-relay", "relay_only", default=False,
                 help="Relay-only: send media through the TURN server, never directly."),
])

#: The hub's ICE options (``serve``): what /ice-servers hands out.
hub_ice_options = option_group("ice", _ice, [
    click.option("--ice-server", "ice_servers", multiple=True, metavar="URL",
                 help="STUN/TURN URL that /ice-servers hands out (repeatable; 'none' for "
                      "an empty list). Default: the original system's Google STUN entry, "
                      "but only without --turn: with --turn the list holds just what is "
                      "given. A TURN server answers STUN too: add --ice-server "
                      "stun:HOST:3478 to hand it out as the STUN server."),
    *_ICE_CREDENTIALS,
    _ice_credential_file("SOFTPHONE_SERVE_ICE_CREDENTIAL_FILE"),
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
class ProcessingOptions:
    """What is done to a real microphone: ``--no-aec``, ``--no-ns``, ``--no-agc``."""

    aec: bool = True  # echo cancellation
    ns: bool = True  # noise suppression
    agc: bool = True  # automatic gain control


@dataclass(frozen=True)
class RestartOptions:
    """Media restart (``docs/protocol.md``): ``--no-restart``, ``--restart-silence``,
    ``--restart-probe``, ``--restart-retry``, ``--give-up`` (seconds)."""

    enabled: bool = True
    silence: float = 2.0
    probe: float = 0.5
    retry: float = 2.0
    give_up: float = 45.0


@dataclass(frozen=True)
class MediaOptions:
    """What a call sends (``--play``/``--tone``, else the microphone), keeps
    (``--record``) and plays, how it codes its voice, and how its media is
    restarted when its path dies."""

    play: str | None = None
    tone: float | None = None
    record: str | None = None
    voice: VoiceOptions = VoiceOptions()
    audio: AudioDeviceOptions = AudioDeviceOptions()
    processing: ProcessingOptions = ProcessingOptions()
    restart: RestartOptions = RestartOptions()


def _restart(no_restart: bool, silence: float | None, probe: float | None,
             retry: float | None, give_up: float | None) -> RestartOptions:
    default = RestartOptions()
    out = RestartOptions(not no_restart, silence or default.silence, probe or default.probe,
                         retry or default.retry, give_up or default.give_up)
    if out.probe >= out.silence:
        raise click.UsageError(f"--restart-probe ({out.probe:g} s) must be shorter than "
                               f"--restart-silence ({out.silence:g} s)")
    return out


def _media(play: str | None, tone: float | None, record: str | None, bitrate: int | None,
           redundancy: int | None, simulate_loss: float | None, input: str | None,
           output: str | None, no_audio: bool, aec: bool = True, ns: bool = True,
           agc: bool = True, no_restart: bool = False, restart_silence: float | None = None,
           restart_probe: float | None = None, restart_retry: float | None = None,
           give_up: float | None = None) -> MediaOptions:
    if play and tone is not None:
        raise click.UsageError("use either --play or --tone, not both")
    return MediaOptions(play, tone, record, VoiceOptions(bitrate, redundancy, simulate_loss or 0.0),
                        AudioDeviceOptions(input, output, no_audio),
                        ProcessingOptions(aec, ns, agc),
                        _restart(no_restart, restart_silence, restart_probe, restart_retry,
                                 give_up))


_INPUT = click.option(
    "--input", envvar="SOFTPHONE_INPUT", metavar="DEVICE",
    help="Microphone: index or part of the name (env SOFTPHONE_INPUT). "
         "Default: the default microphone unless --tone/--play.")
_OUTPUT = click.option(
    "--output", envvar="SOFTPHONE_OUTPUT", metavar="DEVICE",
    help="Speaker: index or part of the name (softphone devices; env "
         "SOFTPHONE_OUTPUT). Default: the default speaker, if any.")
_NO_AUDIO = click.option("--no-audio/--audio", default=False,
                         help="Use neither microphone nor speaker.")


media_options = option_group("media", _media, [
    click.option("--play", type=click.Path(dir_okay=False), metavar="FILE",
                 help="Send this audio file (any format FFmpeg reads), then silence."),
    click.option("--tone", type=float, default=None, callback=finite, metavar="HZ",
                 help="Send a sine tone of this frequency."),
    click.option("--record", type=click.Path(dir_okay=False), metavar="FILE",
                 help="Record what the other side sends to a WAV file. In listen, "
                      "{peer}, {n} and {time} are replaced."),
    click.option("--bitrate", type=click.IntRange(6, MAX_BITRATE_KBPS), metavar="KBPS",
                 help="Most Opus bitrate we send, kbit/s: the call adapts its bitrate to "
                      f"the network below it (default {MAX_BITRATE_KBPS}, Opus's "
                      "maximum)."),
    click.option("--redundancy", type=click.IntRange(0, 3), metavar="N",
                 help="Most earlier frames repeated in each packet (RED) when the peer "
                      "accepts it, as loss appears: a lost packet is rebuilt exactly "
                      "from the next one, for up to N+1 times the bitrate. 0: Opus "
                      f"alone (default {DEFAULT_REDUNDANCY})."),
    click.option("--simulate-loss", type=float, callback=percent, metavar="PCT",
                 help="Drop this share of received audio packets (testing)."),
    _INPUT,
    _OUTPUT,
    _NO_AUDIO,
    # What is done to a real microphone (not to --play/--tone): on unless turned off.
    click.option("--aec/--no-aec", default=True,
                 help="Echo cancellation on the microphone (default on): the other side "
                      "does not hear itself from your speaker."),
    click.option("--ns/--no-ns", default=True,
                 help="Noise suppression on the microphone (default on)."),
    click.option("--agc/--no-agc", default=True,
                 help="Automatic gain control on the microphone (default on)."),
    # Media restart: a call whose media path dies gets a fresh connection (issue 16).
    click.option("--no-restart/--restart", default=False,
                 help="Do not restart the media of a call whose path died (the peer is "
                      "not offered it); lost media still ends the call after --give-up."),
    click.option("--restart-silence", type=float, callback=positive, metavar="S",
                 help="Restart the media after this long without audio packets "
                      "(default 2)."),
    click.option("--restart-probe", type=float, callback=positive, metavar="S",
                 help="After this long without audio packets, check the path; no answer: "
                      "restart at once (default 0.5; below --restart-silence)."),
    click.option("--restart-retry", type=float, callback=positive, metavar="S",
                 help="Start restart attempts at most this often (default 2)."),
    click.option("--give-up", type=float, callback=positive, metavar="S",
                 help="End the call (outcome media-lost, exit 14) when its media stays "
                      "away this long (default 45)."),
])


def _devices(input: str | None, output: str | None, no_audio: bool) -> AudioDeviceOptions:
    if no_audio and (input or output):
        raise click.UsageError(f"use either --{'input' if input else 'output'} or "
                               "--no-audio, not both")
    return AudioDeviceOptions(input, output, no_audio)


#: Microphone and speaker alone (``doctor``): ``--input``, ``--output``, ``--no-audio``.
audio_device_options = option_group("audio", _devices, [_INPUT, _OUTPUT, _NO_AUDIO])


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
