"""Every setting the config file can hold: key, flag, environment variable, type, default.

Keys are named after the flags (``--ring-timeout`` -> ``ring_timeout``), in a
table per part: none for the hub connection (``server``, ``id``, ``token``,
``ca_file``, ``insecure``), ``[ice]``, ``[audio]``, ``[call]``, ``[listen]``
and ``[serve]`` (the hub, for an operator). A repeatable flag is a list
(``--ice-server`` -> ``servers = [...]``). Variables keep their old names where
they had one (``SOFTPHONE_SERVER``, ``SOFTPHONE_INPUT``, ``SOFTPHONE_SECRET``,
...); the others are ``SOFTPHONE_`` and the key (``SOFTPHONE_AUDIO_BITRATE``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from softphone.client.hubaddress import HubAddress
from softphone.core.adapt_config import OPUS_MAX_BITRATE
from softphone.core.iceurl import check_ice_url
from softphone.core.protocol import is_valid_id


class Kind(enum.Enum):
    STR = "str"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    LIST = "list"
    #: A file or folder name: ``~`` expanded; in the file, relative to the file's folder.
    PATH = "path"

    def describe(self) -> str:
        return {"str": "a string", "int": "an integer", "float": "a number",
                "bool": "true or false", "list": "a list of strings",
                "path": "a file name (string)"}[self.value]


@dataclass(frozen=True)
class Option:
    """One setting. ``check`` raises ValueError (one line) for a bad value."""

    key: str
    flag: str
    env: str
    kind: Kind
    default: Any
    commands: tuple[str, ...]
    help: str
    #: Masked when shown; may be given as a file instead (``file_key`` ...).
    secret: bool = False
    check: Callable[[Any], None] | None = None
    #: How to show a value that is partly secret (a password in a URL).
    mask: Callable[[Any], str] | None = None
    #: A string that may also be written as an integer (a device index): made a string.
    index: bool = False

    @property
    def name(self) -> str:
        return self.key.rsplit(".", 1)[-1]

    @property
    def file_key(self) -> str:
        """The key naming a file that holds this secret (``token_file``)."""
        return f"{self.key}_file"

    @property
    def file_flag(self) -> str:
        return f"{self.flag}-file"

    @property
    def file_env(self) -> str:
        return f"{self.env}_FILE"


# ------------------------------------------------------------- checks ---


_HOST_NAME: Final = re.compile(r"[A-Za-z0-9._~-]+|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*")


def check_server_url(value: str) -> None:
    """A hub URL (``http(s)://host:port``, ``ws(s)://host:port``, or ``host:port``):
    ValueError (one line, naming the form) for anything else."""
    HubAddress.parse(value)
    host = urlsplit(value if "://" in value else "http://" + value).hostname or ""
    if not _HOST_NAME.fullmatch(host):
        raise ValueError(f"{value!r} is not a hub URL: use http(s)://host:port or "
                         "ws(s)://host:port")


_server: Final = check_server_url


def _id(value: str) -> None:
    if not is_valid_id(value):
        raise ValueError(f"{value!r} is not an id: use 1 to 64 characters of "
                         "A-Z a-z 0-9 . _ -")


def _ice_urls(value: tuple[str, ...]) -> None:
    if value == ("none",):
        return
    for url in value:
        check_ice_url(url)


def _turn_urls(value: tuple[str, ...]) -> None:
    for url in value:
        check_ice_url(url, turn_only=True)


def check_origins(value: tuple[str, ...]) -> None:
    from softphone.hub.limits import OriginPolicy

    OriginPolicy.from_list(value)


def check_proxies(value: tuple[str, ...]) -> None:
    from softphone.hub.forwarded import TrustedProxies

    TrustedProxies.from_list(value)


def _hub_secret(value: str) -> None:
    from softphone.hub.auth import check_secret

    check_secret(value)


def _loop(value: str) -> None:
    if value not in ("auto", "uvloop", "asyncio"):
        raise ValueError(f"{value!r}: use auto, uvloop or asyncio")


def _range(lo: float | None = None, hi: float | None = None,
           above: float | None = None) -> Callable[[Any], None]:
    def check(value: float) -> None:
        if above is not None and not value > above:
            raise ValueError(f"{value} must be greater than {above:g}")
        if lo is None and hi is not None and value > hi:
            raise ValueError(f"{value:g} must be at most {hi:g}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            span = f"{lo:g}..{hi:g}" if hi is not None else f">= {lo:g}"
            raise ValueError(f"{value} is not in {span}")
    return check


_POSITIVE: Final = _range(above=0)
_NOT_NEGATIVE: Final = _range(lo=0)


def mask_url_password(value: str) -> str:
    """``redis://:pw@host/0`` -> ``redis://:****@host/0``."""
    parts = urlsplit(value)
    if parts.password is None:
        return value
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:****@{host}"))


# ------------------------------------------------------------ options ---

#: ``--bitrate``'s default: no ceiling on the adaptation below Opus's maximum.
MAX_BITRATE_KBPS: Final = OPUS_MAX_BITRATE // 1000
#: ``--redundancy``'s default: ``softphone.media.opus.EncoderSettings.redundancy``
#: (not imported: it loads numpy; tests/cli/test_option_checks.py keeps them equal).
DEFAULT_REDUNDANCY: Final = 2

PHONE: Final = ("call", "listen", "doctor")
CALLS: Final = ("call", "listen")
SERVE: Final = ("serve",)


def _opt(key: str, flag: str, kind: Kind, default: Any, commands: tuple[str, ...],
         help: str, env: str | None = None, **kw: Any) -> Option:
    return Option(key, flag, env or "SOFTPHONE_" + key.upper().replace(".", "_"), kind,
                  default, commands, help, **kw)


#: Every setting, in the order ``softphone config`` shows them.
OPTIONS: Final[tuple[Option, ...]] = (
    # The hub, for a phone.
    _opt("server", "--server", Kind.STR, "http://127.0.0.1:8080", PHONE,
         "The hub: http(s)://host:port or ws(s)://host:port.", check=_server),
    _opt("id", "--as", Kind.STR, None, (*PHONE, "token"), "Your id on the hub.", check=_id),
    _opt("token", "--token", Kind.STR, None, PHONE,
         "Token for a hub run with a secret (softphone token --as ID).", secret=True),
    _opt("ca_file", "--ca-file", Kind.PATH, None, PHONE,
         "https/wss hub: trust certificates signed by this PEM file."),
    _opt("insecure", "--insecure", Kind.BOOL, False, PHONE,
         "https/wss hub: do not check its certificate."),
    # [ice]
    _opt("ice.servers", "--ice-server", Kind.LIST, (), PHONE,
         "STUN/TURN URLs instead of the hub's /ice-servers (['none']: host candidates "
         "only).", check=_ice_urls),
    _opt("ice.username", "--ice-username", Kind.STR, None, PHONE,
         "TURN username for the turn: URLs of ice.servers."),
    _opt("ice.credential", "--ice-credential", Kind.STR, None, PHONE,
         "TURN password for the turn: URLs of ice.servers.", secret=True),
    _opt("ice.relay", "--relay", Kind.BOOL, False, PHONE,
         "Send media only through the TURN server."),
    # [audio]
    _opt("audio.input", "--input", Kind.STR, None, (*PHONE, "devices"),
         "Microphone: index or part of the name (softphone devices).",
         env="SOFTPHONE_INPUT", index=True),
    _opt("audio.output", "--output", Kind.STR, None, (*PHONE, "devices"),
         "Speaker: index or part of the name.", env="SOFTPHONE_OUTPUT", index=True),
    _opt("audio.no_audio", "--no-audio", Kind.BOOL, False, PHONE,
         "Use neither microphone nor speaker."),
    _opt("audio.bitrate", "--bitrate", Kind.INT, MAX_BITRATE_KBPS, CALLS,
         "Most Opus bitrate we send, kbit/s (the adaptation picks below it).",
         check=_range(6, MAX_BITRATE_KBPS)),
    _opt("audio.redundancy", "--redundancy", Kind.INT, DEFAULT_REDUNDANCY, CALLS,
         "Most earlier frames repeated in each packet (RED); 0: Opus alone.",
         check=_range(0, 3)),
    _opt("audio.aec", "--aec", Kind.BOOL, True, CALLS,
         "Echo cancellation on the microphone."),
    _opt("audio.ns", "--ns", Kind.BOOL, True, CALLS,
         "Noise suppression on the microphone."),
    _opt("audio.agc", "--agc", Kind.BOOL, True, CALLS,
         "Automatic gain control on the microphone."),
    # [call], [listen]
    _opt("call.ring_timeout", "--ring-timeout", Kind.FLOAT, 30.0, ("call",),
         "Give up if nobody answers in this many seconds.", check=_POSITIVE),
    _opt("call.setup_timeout", "--setup-timeout", Kind.FLOAT, 15.0, CALLS,
         "Give up if audio is not connected this long after accepting.", check=_POSITIVE),
    _opt("call.no_restart", "--no-restart", Kind.BOOL, False, CALLS,
         "Do not restart the media of a call whose path died."),
    _opt("call.restart_silence", "--restart-silence", Kind.FLOAT, 2.0, CALLS,
         "Restart the media after this many seconds without audio.", check=_POSITIVE),
    _opt("call.restart_probe", "--restart-probe", Kind.FLOAT, 0.5, CALLS,
         "Check the path after this many seconds without audio (below "
         "restart_silence).", check=_POSITIVE),
    _opt("call.restart_retry", "--restart-retry", Kind.FLOAT, 2.0, CALLS,
         "Restart attempts at most this often, seconds.", check=_POSITIVE),
    _opt("call.give_up", "--give-up", Kind.FLOAT, 45.0, CALLS,
         "End the call (media-lost) when its media stays away this long, seconds.",
         check=_POSITIVE),
    _opt("listen.auto_accept", "--auto-accept", Kind.BOOL, False, ("listen",),
         "Answer every call without asking."),
    # [serve]: the hub, for an operator.
    _opt("serve.host", "--host", Kind.STR, "127.0.0.1", SERVE,
         "Address to listen on (0.0.0.0: every interface)."),
    _opt("serve.port", "--port", Kind.INT, 8080, SERVE, "Port to listen on.",
         check=_range(0, 65535)),
    _opt("serve.secret", "--secret", Kind.STR, None, (*SERVE, "token"),
         "Require tokens signed with this secret.", env="SOFTPHONE_SECRET", secret=True,
         check=_hub_secret),
    _opt("serve.ice_servers", "--ice-server", Kind.LIST, (), SERVE,
         "STUN/TURN URLs /ice-servers hands out (default: Google's STUN, unless "
         "turn_urls are set; ['none']: nothing).", check=_ice_urls),
    _opt("serve.ice_username", "--ice-username", Kind.STR, None, SERVE,
         "TURN username handed out with the turn: URLs of serve.ice_servers."),
    _opt("serve.ice_credential", "--ice-credential", Kind.STR, None, SERVE,
         "TURN password handed out with them.", secret=True),
    _opt("serve.turn_urls", "--turn", Kind.LIST, (), SERVE,
         "TURN URLs handed out with time-limited credentials (needs turn_secret).",
         check=_turn_urls),
    _opt("serve.turn_secret", "--turn-secret", Kind.STR, None, SERVE,
         "coturn's static-auth-secret.", env="SOFTPHONE_TURN_SECRET", secret=True),
    _opt("serve.turn_ttl", "--turn-ttl", Kind.FLOAT, 3600.0, SERVE,
         "Lifetime of TURN credentials, seconds.", check=_range(above=0, hi=3650 * 86400)),
    _opt("serve.allow_origins", "--allow-origin", Kind.LIST, (), SERVE,
         "Browser origins allowed besides the hub's own (['*']: any).", check=check_origins),
    _opt("serve.redis", "--redis", Kind.STR, None, SERVE,
         "Share presence and routing with other nodes through this Redis.",
         env="SOFTPHONE_REDIS", mask=mask_url_password),
    _opt("serve.node_id", "--node-id", Kind.STR, None, SERVE,
         "This node's name in Redis (default: hostname-pid)."),
    _opt("serve.loop", "--loop", Kind.STR, "auto", SERVE,
         "Event loop: auto, uvloop or asyncio.", check=_loop),
    _opt("serve.max_message_bytes", "--max-message-bytes", Kind.INT, 65536, SERVE,
         "Larger messages get 'too-large'.", check=_range(lo=256)),
    _opt("serve.rate", "--rate", Kind.FLOAT, 100.0, SERVE,
         "Messages a second per connection (0: unlimited).", check=_NOT_NEGATIVE),
    _opt("serve.burst", "--burst", Kind.FLOAT, 200.0, SERVE,
         "Messages allowed in a burst.", check=_POSITIVE),
    _opt("serve.max_connections", "--max-connections", Kind.INT, 20000, SERVE,
         "Connections in total (0: unlimited).", check=_range(lo=0)),
    _opt("serve.max_per_address", "--max-per-address", Kind.INT, 100, SERVE,
         "Connections from one address (0: unlimited).", check=_range(lo=0)),
    _opt("serve.trusted_proxies", "--trusted-proxy", Kind.LIST, (), SERVE,
         "Reverse proxies (addresses, networks) whose X-Forwarded-For names the client.",
         check=check_proxies),
    _opt("serve.peer_grace", "--peer-grace", Kind.FLOAT, 4.0, SERVE,
         "Seconds a client in a call whose connection closed may be gone before its "
         "peer gets hangup.", check=_NOT_NEGATIVE),
    _opt("serve.peer_away_grace", "--peer-away-grace", Kind.FLOAT, 45.0, SERVE,
         "The same for a client the heartbeat dropped (its network went away).",
         check=_NOT_NEGATIVE),
    _opt("serve.heartbeat", "--heartbeat", Kind.FLOAT, 15.0, SERVE,
         "Ping interval, seconds.", check=_POSITIVE),
    _opt("serve.head_timeout", "--head-timeout", Kind.FLOAT, 10.0, SERVE,
         "Seconds a new connection has to send its request head.", check=_POSITIVE),
    _opt("serve.cert", "--cert", Kind.PATH, None, SERVE,
         "Serve https/wss with this certificate chain (PEM); needs key."),
    _opt("serve.key", "--key", Kind.PATH, None, SERVE, "TLS private key (PEM)."),
    _opt("serve.self_signed", "--self-signed", Kind.BOOL, False, SERVE,
         "Serve https/wss with a generated certificate."),
    _opt("serve.tls_dir", "--tls-dir", Kind.PATH, None, SERVE,
         "With self_signed: keep the key and certificate in this folder."),
)
