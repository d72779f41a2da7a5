"""The hub's HTTP side: ``/ice-servers``, ``/healthz``, ``/metrics``, the browser
phone (:mod:`softphone.hub.webpages`), CORS for the origins the WebSocket takes,
one request per connection. The phone page is served only under a ``Host`` the
hub trusts (:meth:`~softphone.hub.limits.OriginPolicy.serves_pages_at`); refused
origins are logged by :class:`OriginRefusals`.

:func:`make_app` builds the aiohttp application that answers every request
that is not a WebSocket upgrade to ``/ws`` (those never reach it:
:class:`~softphone.hub.dispatch.Dispatch`).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware

from softphone.core.protocol import ErrorCode, is_valid_id
from softphone.core.version import __version__
from softphone.hub.auth import AuthError, turn_credentials, verify_token
from softphone.hub.config import static_ice_servers
from softphone.hub.limits import CallPairs, Notices, OriginPolicy
from softphone.hub.metrics import CONTENT_TYPE_LATEST, HubMetrics
from softphone.hub.registry import Registry
from softphone.hub.webpages import PAGE_PATHS, add_web_routes

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Where the HTTP side logs (see :class:`HttpLog`).
HTTP_LOG_NAME = "softphone.hub.http"


class HttpLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The logger the hub gives aiohttp's request handlers (``AppRunner(logger=...)``).

    aiohttp logs a request its parser refuses (garbage, a bad header, a line too
    long: it answers 400) as an ERROR with a traceback, as if the hub had failed.
    It is the client's mistake, and anyone on the network can send one: here it
    is one line (``bad-http``) at info (at debug where aiohttp says debug).
    Anything else is logged as aiohttp logs it.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        super().__init__(logger or logging.getLogger(HTTP_LOG_NAME), {})

    def log(self, level: int, msg: object, *args: object, exc_info: Any = None,
            **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else \
            sys.exc_info()[1] if exc_info is True else None
        if isinstance(exc, HttpProcessingError):
            if self.logger.isEnabledFor(min(level, logging.INFO)):
                why = " ".join(str(exc.message).split())[:200] or type(exc).__name__
                self.logger.log(min(level, logging.INFO), "bad-http remote=%s status=%s "
                                "why=%r", args[0] if args else "?", exc.code, why)
            return
        super().log(level, msg, *args, exc_info=exc_info, **kwargs)


class OriginRefusals:
    """Tells the log of the browser origins the hub refuses (a WebSocket upgrade, a
    CORS request, its page under a name it does not trust): one warning that says
    what the operator adds to allow it, each at most once a minute (:class:`Notices`;
    the others at debug)."""

    def __init__(self, policy: OriginPolicy, logger: logging.Logger | None = None,
                 notices: Notices | None = None) -> None:
        self.policy = policy
        self.log = logger or logging.getLogger(__name__)
        self.notices = notices or Notices()

    def refused(self, origin: str, host: str, tls: bool, remote: str) -> None:
        line = self.policy.refusal(origin, host, tls)
        level = logging.WARNING if self.notices.say(line, time.monotonic()) else logging.DEBUG
        self.log.log(level, "refused reason=origin remote=%s: %s", remote, line)


class IceSettings(Protocol):
    """What ``/ice-servers`` hands out (:class:`~softphone.hub.server.HubConfig` is one)."""

    @property
    def ice_servers(self) -> Sequence[dict[str, Any]] | None:
        """Handed out as they are (None: not configured, see :func:`static_ice_servers`)."""
        ...

    @property
    def secret(self) -> str | None:
        """Clients need a token signed with this (None: an open hub)."""
        ...

    @property
    def turn_urls(self) -> Sequence[str]:
        """TURN URLs handed out with REST credentials from :attr:`turn_secret`."""
        ...

    @property
    def turn_secret(self) -> str | None: ...

    @property
    def turn_ttl(self) -> float: ...


def ice_servers_for(ice: IceSettings, client_id: str, now: float) -> list[dict[str, Any]]:
    """What ``/ice-servers`` (and the WebSocket's first frame, ``?ice=1``) hands
    ``client_id`` (already authenticated on a hub with a secret): the STUN/TURN
    servers, each TURN URL with REST credentials for the id."""
    servers = static_ice_servers(ice.ice_servers, ice.turn_urls)
    if ice.turn_secret and ice.turn_urls:
        if not is_valid_id(client_id):
            client_id = "anonymous"
        creds = turn_credentials(ice.turn_secret, client_id, now, ice.turn_ttl)
        servers += [{"urls": url, "username": creds.username,
                     "credential": creds.credential} for url in ice.turn_urls]
    return servers


def hands_out_credentials(ice: IceSettings) -> bool:
    """Whether :func:`ice_servers_for` hands out TURN credentials: REST ones
    (``turn_secret``), or static ones (``--ice-username``/``--ice-credential`` in
    :attr:`IceSettings.ice_servers`). On a hub with a secret, ``/ice-servers``
    answers those only to a valid token (401 otherwise)."""
    if ice.turn_secret and ice.turn_urls:
        return True
    return any("credential" in entry or "username" in entry
               for entry in static_ice_servers(ice.ice_servers, ice.turn_urls))


class Routes:
    """The handlers of the hub's own routes, over the hub's state."""

    def __init__(self, ice: IceSettings, registry: Registry, metrics: HubMetrics,
                 pairs: CallPairs) -> None:
        self.ice = ice
        self.registry = registry
        self.metrics = metrics
        self.pairs = pairs

    async def ice_servers(self, request: web.Request) -> web.Response:
        ice = self.ice
        client_id = request.query.get("id", "")
        if ice.secret and hands_out_credentials(ice):  # (STUN alone: to anyone)
            token = request.query.get("token") or _bearer(request)
            try:
                if token and not client_id:  # (not "for another id": none was given)
                    raise AuthError("no id: add ?id=<the id the token is for>")
                verify_token(ice.secret, token, client_id, time.time())
            except AuthError as exc:
                self.metrics.error(ErrorCode.UNAUTHORIZED)
                return web.json_response(
                    {"error": ErrorCode.UNAUTHORIZED.value, "message": str(exc)}, status=401)
        return web.json_response({"iceServers": ice_servers_for(ice, client_id, time.time())})

    async def healthz(self, request: web.Request) -> web.Response:
        # "degraded" (still HTTP 200): a shared registry is unreachable; this node
        # serves its own clients and recovers by itself (docs/scale-out.md).
        return web.json_response({"status": self.registry.status(),
                                  "clients": self.registry.local_count(),
                                  "version": __version__})

    async def metrics_page(self, request: web.Request) -> web.Response:
        self.metrics.calls.set(len(self.pairs))
        resp = web.Response(body=self.metrics.exposition())
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp


def make_app(routes: Routes,
             extra_routes: Iterable[Callable[[web.Application], None]] = (),
             origins: OriginPolicy | None = None,
             refusals: OriginRefusals | None = None) -> web.Application:
    """The application: the hub's routes, the browser phone, then ``extra_routes``;
    CORS for the pages ``origins`` lets use the WebSocket (default: any, as the
    original hub), the refusals told to ``refusals``."""
    policy = OriginPolicy(frozenset({"*"})) if origins is None else origins
    app = web.Application(middlewares=[_one_request,
                                       _cors(refusals or OriginRefusals(policy))])
    app.add_routes([
        web.get("/ice-servers", routes.ice_servers),
        web.get("/healthz", routes.healthz),
        web.get("/metrics", routes.metrics_page),
    ])
    add_web_routes(app)  # the browser phone: /, /callerA.html, /callerB.html
    for add in extra_routes:
        add(app)
    # Every response of the HTTP routes closes its connection, so that the next
    # request of that client (a WebSocket upgrade) comes through Dispatch again.
    app.on_response_prepare.append(_close_after)  # (whatever else answers)
    return app


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


async def _close_after(request: web.Request, response: web.StreamResponse) -> None:
    response.force_close()


@web.middleware
async def _one_request(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One request per connection on the HTTP routes (``Connection: close``)."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.force_close()
        raise
    response.force_close()
    return response


def _remote(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return str(peer[0]) if peer else ""


def _cors(refusals: OriginRefusals) -> Middleware:
    """CORS on the HTTP routes for the pages that may use the WebSocket: the hub's
    own (under a ``Host`` it trusts: :meth:`OriginPolicy.trusts_host`), and those of
    ``--allow-origin`` (``*``: any, as the original hub). Another page's browser
    gets no CORS header, so it cannot read ``/ice-servers`` (TURN credentials) or
    ``/metrics``. The phone page under a ``Host`` the hub does not trust is refused
    (403, saying why): its WebSocket would be."""
    origins = refusals.policy

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PAGE_PATHS and not origins.serves_pages_at(request.host):
            own = origins.own_origin(request.host, request.secure)
            refusals.refused(own, request.host, request.secure, _remote(request))
            return web.Response(status=403, text=(
                f"This hub does not serve its phone under {own}: a name could be DNS "
                f"rebinding. Open it at its IP address, localhost or this machine's name, "
                f"or start the hub with --allow-origin {own}\n"))
        if request.method == "OPTIONS":
            response: web.StreamResponse = web.Response(status=204)
        else:
            response = await handler(request)
        origin = request.headers.get("Origin")
        if "*" in origins.allowed:
            response.headers["Access-Control-Allow-Origin"] = "*"
        elif origin is not None and origins.allows_at(origin, request.host, request.secure):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        else:
            response.headers["Vary"] = "Origin"
            if origin is not None:
                refusals.refused(origin, request.host, request.secure, _remote(request))
            return response
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        # ("*" does not cover Authorization, which /ice-servers takes a token in)
        response.headers["Access-Control-Allow-Headers"] = "Authorization, *"
        return response

    return cors
