"""``softphone serve`` (the hub) and ``softphone token``, with the hub's own
option groups: TLS (:class:`TlsServerOptions`) and identity, origins, limits
and TURN (:class:`HubSecurityOptions`).

Nothing here imports aiortc, PyAV, numpy or libopus: the hub runs without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import math
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import click

from softphone import __version__
from softphone.cli.config_options import check_origins, check_proxies
from softphone.cli.options import (
    ConfigOption,
    IceOptions,
    as_option,
    hub_ice_options,
    not_negative,
    option_group,
    positive,
    secret_file_option,
)
from softphone.cli.runtime import Interrupts, exit_codes_help, fail, first_done
from softphone.core.callstate import ExitCode
from softphone.core.iceurl import check_ice_url

if TYPE_CHECKING:
    import ssl

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ TLS ---


@dataclass(frozen=True)
class TlsServerOptions:
    """How the hub serves https/wss: ``--cert``/``--key``, or ``--self-signed``
    (kept in ``--tls-dir``, else a temporary directory); none of them: plain http."""

    cert: str | None = None
    key: str | None = None
    self_signed: bool = False
    tls_dir: str | None = None


def _tls_server(cert: str | None, key: str | None, self_signed: bool,
                tls_dir: str | None) -> TlsServerOptions:
    if self_signed and (cert or key):
        raise click.UsageError("use either --self-signed or --cert/--key, not both")
    if bool(cert) != bool(key):
        raise click.UsageError("--cert and --key go together")
    if tls_dir and not self_signed:
        raise click.UsageError("--tls-dir goes with --self-signed")
    return TlsServerOptions(cert, key, self_signed, tls_dir)


tls_server_options = option_group("tls", _tls_server, [
    click.option("--cert", type=click.Path(dir_okay=False), metavar="FILE",
                 help="Serve https/wss with this certificate chain (PEM); needs --key."),
    click.option("--key", type=click.Path(dir_okay=False), metavar="FILE",
                 help="TLS private key (PEM)."),
    click.option("--self-signed/--no-self-signed", default=False,
                 help="Serve https/wss with a generated certificate for localhost and "
                      "this machine's addresses (browsers need https for the microphone)."),
    click.option("--tls-dir", type=click.Path(file_okay=False), metavar="DIR",
                 help="With --self-signed: keep the key and certificate here (reused "
                      "while valid) instead of a temporary directory."),
])


def url_host(host: str) -> str:
    """``host`` as it goes in a URL: an IPv6 literal in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def lan_addresses(sockets: Sequence[socket.socket]) -> list[str]:
    """The LAN addresses (loopback left out) the hub answers on, as URL hosts.

    Only a wildcard socket answers on them: ``0.0.0.0`` on every IPv4 address,
    ``::`` on every IPv6 one, and on the IPv4 ones too unless it is IPv6-only
    (asyncio makes ``::`` IPv6-only; ``--host ''`` listens on both).
    """
    from softphone.hub.tls import local_addresses

    v4 = v6 = False
    for sock in sockets:
        if str(sock.getsockname()[0]) not in ("0.0.0.0", "::"):
            continue
        if sock.family == socket.AF_INET:
            v4 = True
        elif sock.family == socket.AF_INET6:
            v6 = True
            if not sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY):
                v4 = True
    out: list[str] = []
    for addr in local_addresses():
        ip = ipaddress.ip_address(addr)
        if ip.is_loopback or (ip.version == 4 and not v4) or (ip.version == 6 and not v6):
            continue
        out.append(url_host(addr))
    return out


def server_tls(host: str, tls: TlsServerOptions) -> tuple[ssl.SSLContext | None, list[str]]:
    """The hub's ssl context (None: plain http) and lines to print ({port} to fill in)."""
    import atexit
    import shutil
    import tempfile

    from softphone.hub.tls import (
        TLSConfigError,
        default_names,
        self_signed,
        server_context,
    )

    cert, key = tls.cert, tls.key
    notes: list[str] = []
    if tls.self_signed:
        folder = tls.tls_dir
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
    if cert is None or key is None:
        return None, notes
    try:
        context = server_context(cert, key)
    except TLSConfigError as exc:
        fail(str(exc))
    if not tls.self_signed:  # (ours is made 0600)
        import os
        from pathlib import Path

        from softphone.cli.config import permission_warning
        from softphone.cli.config_wiring import warn

        with contextlib.suppress(OSError):
            said = permission_warning(Path(key), os.stat(key).st_mode, "the TLS private key")
            warn([said] if said else [])
    return context, notes


# ------------------------------------------------------------- security ---


@dataclass(frozen=True)
class HubSecurityOptions:
    """Identity, origins, limits and TURN: the HubConfig fields of the same names."""

    secret: str | None = None
    allow_origins: tuple[str, ...] = ()
    turn_urls: tuple[str, ...] = ()
    turn_secret: str | None = None
    turn_ttl: float = 3600.0
    max_message_bytes: int = 64 * 1024
    rate: float = 100.0
    burst: float = 200.0
    max_connections: int = 20_000
    max_per_address: int = 100
    trusted_proxies: tuple[str, ...] = ()
    peer_grace: float = 4.0
    peer_away_grace: float = 45.0
    heartbeat: float = 15.0
    head_timeout: float = 10.0  # (softphone.hub.dispatch.HEAD_TIMEOUT: not imported here)

    def hub_config_fields(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _hub_security(**values: Any) -> HubSecurityOptions:
    options = HubSecurityOptions(**values)
    if options.turn_urls and not options.turn_secret:
        raise click.UsageError("--turn needs --turn-secret (coturn's static-auth-secret)")
    if options.turn_secret and not options.turn_urls:
        raise click.UsageError("--turn-secret needs at least one --turn URL")
    if options.secret is not None:
        check_secret(options.secret)
    return options


def check_secret(value: str) -> str:
    from softphone.hub.auth import check_secret as check

    try:
        return check(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--secret") from None


def _turn_url(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
              ) -> tuple[str, ...]:
    for url in value:
        try:
            check_ice_url(url, turn_only=True)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def _checked_by(check: Callable[[tuple[str, ...]], object]
                ) -> Callable[[click.Context, click.Parameter, tuple[str, ...]], tuple[str, ...]]:
    """A click callback: the values as given, once ``check`` took them (its
    ValueError: a one-line usage error)."""

    def callback(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
                 ) -> tuple[str, ...]:
        try:
            check(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
        return value

    return callback


hub_security_options = option_group("security", _hub_security, [
    click.option("--secret", envvar="SOFTPHONE_SECRET", metavar="S",
                 help="Require tokens signed with this secret (env SOFTPHONE_SECRET; "
                      "better --secret-file: on the command line it shows in the "
                      "process list)."),
    secret_file_option("--secret-file", "SOFTPHONE_SECRET_FILE", "the secret"),
    click.option("--allow-origin", "allow_origins", multiple=True, metavar="ORIGIN",
                 callback=_checked_by(check_origins),
                 help="Browser origin allowed to connect (and to read the HTTP routes: "
                      "CORS) besides the hub's own (repeatable; '*' for any). The hub's "
                      "own is its page under an IP address, localhost or this machine's "
                      "name; under any other name (a proxy's domain) give it here, e.g. "
                      "--allow-origin https://phone.example.com (a name could be DNS "
                      "rebinding). Clients sending no Origin are allowed."),
    click.option("--turn", "turn_urls", multiple=True, metavar="URL", callback=_turn_url,
                 help="TURN URL handed out by /ice-servers with time-limited "
                      "credentials (repeatable; needs --turn-secret)."),
    click.option("--turn-secret", envvar="SOFTPHONE_TURN_SECRET", metavar="S",
                 help="coturn's static-auth-secret (env SOFTPHONE_TURN_SECRET; better "
                      "--turn-secret-file: on the command line it shows in the process "
                      "list)."),
    secret_file_option("--turn-secret-file", "SOFTPHONE_TURN_SECRET_FILE",
                       "coturn's static-auth-secret"),
    click.option("--turn-ttl", type=float, default=3600.0, show_default=True,
                 callback=lambda ctx, param, value: _at_most_ten_years(
                     positive(ctx, param, value)),
                 metavar="S", help="Lifetime of TURN credentials (at most ten years)."),
    click.option("--max-message-bytes", type=click.IntRange(256), default=64 * 1024,
                 show_default=True, help="Larger messages get 'too-large'."),
    click.option("--rate", type=float, default=100.0, show_default=True,
                 callback=not_negative, metavar="N",
                 help="Messages a second per connection (0: unlimited)."),
    click.option("--burst", type=float, default=200.0, show_default=True,
                 callback=positive, metavar="N", help="Messages allowed in a burst."),
    click.option("--max-connections", type=click.IntRange(0), default=20_000,
                 show_default=True, help="Connections in total (0: unlimited)."),
    click.option("--max-per-address", type=click.IntRange(0), default=100,
                 show_default=True, help="Connections from one address (0: unlimited)."),
    click.option("--trusted-proxy", "trusted_proxies", multiple=True, metavar="ADDRESS",
                 callback=_checked_by(check_proxies),
                 help="A reverse proxy (address or network, e.g. 127.0.0.1 or 10.0.0.5) "
                      "whose X-Forwarded-For names the client that connections are "
                      "counted per address and logged by (repeatable; default: none, the "
                      "header is ignored). Anyone who can connect from it can name any "
                      "address: name only the proxy."),
    click.option("--peer-grace", type=float, default=4.0, show_default=True,
                 callback=not_negative, metavar="S",
                 help="How long a client in a call whose connection was closed (its "
                      "process quit or was killed) may be gone before its peer is sent "
                      "hangup (peer-disconnected)."),
    click.option("--peer-away-grace", type=float, default=45.0, show_default=True,
                 callback=not_negative, metavar="S",
                 help="The same for a client the heartbeat dropped (its network went "
                      "away, nothing was closed): room for its phone to come back and "
                      "restart the call's media."),
    click.option("--heartbeat", type=float, default=15.0, show_default=True,
                 callback=positive, metavar="S",
                 help="Ping interval; a client silent for 1.5 times it is dropped."),
    click.option("--head-timeout", type=float, default=10.0, show_default=True,
                 callback=positive, metavar="S",
                 help="Seconds a new connection has to send its request head."),
])


# ---------------------------------------------------------------- token ---


_TTL_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


#: The longest token lifetime taken: ten years (1e300 s was an expiry no one meant).
_TTL_MOST: Final = 3650 * 86400.0


def _at_most_ten_years(seconds: float | None) -> float | None:
    """``--turn-ttl``: its expiry goes in the TURN username (1e300 s made a username
    of 300 digits)."""
    if seconds is not None and seconds > _TTL_MOST:
        raise click.BadParameter(f"{seconds:g}: at most {_TTL_MOST:.0f} s (ten years)")
    return seconds


def _ttl(ctx: click.Context, param: click.Parameter, value: str) -> float:
    text = value.strip().lower()
    unit = _TTL_UNITS.get(text[-1:], None)
    number = text[:-1] if unit is not None else text
    try:
        seconds = float(number) * (unit or 1.0)
    except ValueError:
        raise click.BadParameter(f"{value!r}: use seconds or 30m, 12h, 7d") from None
    if not math.isfinite(seconds):
        raise click.BadParameter(f"{value!r}: must be a finite number of seconds "
                                 "(or 30m, 12h, 7d)")
    if seconds < 1:  # (a token's expiry is in whole seconds: it would be expired)
        raise click.BadParameter(f"{value!r}: at least 1 s")
    if seconds > _TTL_MOST:
        raise click.BadParameter(f"{value!r}: at most 3650d (ten years)")
    return seconds


@click.command()
@as_option()
@click.option("--secret", envvar="SOFTPHONE_SECRET", cls=ConfigOption, needed=True,
              metavar="S", help="The hub's secret (env SOFTPHONE_SECRET; config: "
                                "serve.secret), required.")
@secret_file_option("--secret-file", "SOFTPHONE_SECRET_FILE", "the hub's secret")
@click.option("--ttl", default="24h", show_default=True, callback=_ttl, metavar="TIME",
              help="Lifetime: seconds, or with a unit (30m, 12h, 7d).")
def token(client_id: str, secret: str, ttl: float) -> None:
    """Print a token that lets ID connect to a hub run with this --secret."""
    from softphone.hub.auth import mint_token

    click.echo(mint_token(check_secret(secret), client_id, time.time(), ttl))


# ---------------------------------------------------------------- serve ---


@click.command(epilog=exit_codes_help(
    [ExitCode.ERROR, ExitCode.USAGE, ExitCode.REDIS_UNAVAILABLE]))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port to listen on (0: any free port, printed when the hub is up).")
@hub_ice_options
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
@hub_security_options
@tls_server_options
def serve(host: str, port: int, ice: IceOptions, redis_url: str | None,
          node_id: str | None, loop_kind: str, security: HubSecurityOptions,
          tls: TlsServerOptions) -> None:
    """Run the signaling hub (WebSocket /ws, /ice-servers, /healthz, /metrics).

    It also serves the browser phone at / (https with --self-signed or
    --cert/--key, which browsers need for the microphone off localhost).

    With --secret-file FILE (or SOFTPHONE_SECRET_FILE, secret_file in the
    [serve] table of the config file; --secret too, but then it shows in the
    process list, as --turn-secret and --ice-credential do: better their -file
    options) every client needs a token (softphone token --as ID), and
    /ice-servers hands out TURN credentials (--turn-secret or --ice-credential
    ones) only with a valid one (else 401); without it the hub is open, like
    the original. With --redis several hubs
    act as one; if Redis cannot be reached at start, the exit code is 12 (if
    it refuses the URL's password or database number, 2).

    Every option may be set in the config file's [serve] table (--config FILE
    or SOFTPHONE_CONFIG; softphone config --help lists the keys).
    """
    from softphone.hub.server import Hub, HubConfig, serve_forever

    registry: Any = None
    if redis_url is not None:
        from softphone.hub.redis_registry import RedisRegistry
        try:
            registry = RedisRegistry(redis_url, node_id)
        except ValueError as exc:  # a malformed URL (/abc as the database), a bad node id
            fail(f"--redis/--node-id: {exc}", ExitCode.USAGE)
    elif node_id is not None:
        raise click.UsageError("--node-id goes with --redis")
    # None (no --ice-server): the default Google STUN only if there is no --turn either.
    hub = Hub(HubConfig(ice_servers=ice.servers, **security.hub_config_fields()), registry)

    ssl_context, tls_notes = server_tls(host, tls)

    def ready(bound: int) -> None:
        scheme = "https" if ssl_context is not None else "http"
        click.echo(f"softphone hub {__version__} listening on {scheme}://{url_host(host)}:"
                   f"{bound} (Ctrl-C to stop)")
        for note in tls_notes:
            click.echo(note.replace("{port}", str(bound)))
        if tls.self_signed:
            for addr in lan_addresses(hub.sockets()):
                click.echo(f"  phones on the LAN: https://{addr}:{bound}/")

    async def run() -> bool:
        """Serve until Ctrl-C; False if it came before the hub got going (Redis)."""
        interrupts = Interrupts()
        interrupts.install()
        if registry is not None:  # (connecting, or waiting for a crashed node's key)
            starting = asyncio.ensure_future(registry.start())
            await first_done(starting, interrupts.event.wait())
            if not starting.done() or starting.cancelled():
                with contextlib.suppress(Exception):  # (a frozen Redis: not for long)
                    await asyncio.wait_for(registry.close(), 1.0)
                return False
            starting.result()  # RegistryUnavailable: Redis is not there
        task = asyncio.create_task(
            serve_forever(hub, host, port, ready, ssl_context=ssl_context))
        await first_done(task, interrupts.event.wait())
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if task.done() and not task.cancelled() and task.exception():
            raise task.exception()  # type: ignore[misc]
        return True

    from softphone.hub.redis_registry import NodeIdTaken, RedisRefused, RegistryUnavailable

    loop_factory = event_loop_factory(loop_kind)
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            if not runner.run(run()):  # Ctrl-C before it listened (README: 130)
                sys.exit(ExitCode.INTERRUPTED)
    except RegistryUnavailable as exc:
        fail(str(exc), ExitCode.REDIS_UNAVAILABLE)
    except (NodeIdTaken, RedisRefused) as exc:  # configuration mistakes: no use retrying
        fail(str(exc), ExitCode.USAGE)
    except OSError as exc:
        fail(f"cannot listen on {url_host(host)}:{port}: {exc.strerror or exc}")
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
