"""The browser phone's pages, served by the hub.

``GET /`` is the phone (pick an id, call any id); ``/callerA.html`` and
``/callerB.html`` are the same page fixed to ids ``a`` and ``b``, so the
original system's URLs keep working. Its ES modules and style sheet are under
``/static/``. The files live in ``softphone/hub/web/`` (package data: plain
HTML/JS/CSS, no build step) and are read when asked for.

``GET /callstate.json`` is :mod:`softphone.core.callstate`'s transition table
with its states, outcomes, local events, timeouts and reasons, made from the
Python objects at request time; the page runs its call state machine from it
(``web/callstate.js``), so the two cannot drift.
"""

from __future__ import annotations

import dataclasses
import logging
from importlib import resources
from types import MappingProxyType
from typing import Any, Final

from aiohttp import web

from softphone.core import callstate as cs

log = logging.getLogger(__name__)

#: The files of ``softphone/hub/web/`` that are served, with their content types.
STATIC_FILES: Final[dict[str, str]] = {
    "main.js": "text/javascript",  # the entry module; it imports the others
    "phone.js": "text/javascript",
    "callstate.js": "text/javascript",
    "line.js": "text/javascript",
    "hubclient.js": "text/javascript",
    "media.js": "text/javascript",
    "ui.js": "text/javascript",
    "sas.js": "text/javascript",  # the verification code (core/sas.py's derivation)
    "features.js": "text/javascript",  # media restart and hold: features, messages
    "restart.js": "text/javascript",  # core/restart.py's decisions
    "hold.js": "text/javascript",  # core/hold.py's decisions
    "session.js": "text/javascript",  # a call's connections, restart and hold, carried out
    "phone.css": "text/css",
}
PAGE: Final = "phone.html"
#: URL paths that serve the phone page.
PAGE_PATHS: Final = ("/", "/callerA.html", "/callerB.html")
#: URL path of the call table (:func:`call_table`).
CALL_TABLE_PATH: Final = "/callstate.json"
#: Headers of the page and its files: no other site may frame them (clickjacking: a
#: hidden phone under a decoy, its Accept button under the victim's click). The
#: CSP's ``frame-ancestors`` for current browsers, X-Frame-Options for older ones;
#: nothing else here sends a Content-Security-Policy.
FRAME_HEADERS: Final = MappingProxyType({
    "Content-Security-Policy": "frame-ancestors 'self'",
    "X-Frame-Options": "SAMEORIGIN",
})


def read_web_file(name: str) -> bytes:
    """One file of ``softphone/hub/web/`` (raises FileNotFoundError)."""
    return resources.files("softphone.hub").joinpath("web", name).read_bytes()


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)


def call_table() -> dict[str, Any]:
    """:mod:`softphone.core.callstate` as JSON for the page's state machine.

    ``transitions`` lists ``[role, state, event, next state]``, one row per entry
    of :data:`~softphone.core.callstate.TRANSITIONS`; ``localEvents`` are the
    events that are refused (rather than ignored) where the table has no entry.
    """
    events = {event for _, _, event in cs.TRANSITIONS}
    local = cs._LOCAL_EVENTS  # the events CallMachine.handle refuses (not public in callstate)
    timeouts = cs.CallTimeouts()
    return {
        "roles": [role.value for role in cs.Role],
        "states": {state.name: state.value for state in cs.CallState},
        "outcomes": {outcome.name: outcome.value for outcome in cs.Outcome},
        "transitions": [[role.value, state.value, event.__name__, new.value]
                        for (role, state, event), new in cs.TRANSITIONS.items()],
        "localEvents": sorted(event.__name__ for event in events
                              if issubclass(event, local)),
        "timeouts": {_camel(f.name): getattr(timeouts, f.name)
                     for f in dataclasses.fields(timeouts)},
        "reasons": {name.removeprefix("REASON_"): value for name, value in vars(cs).items()
                    if name.startswith("REASON_") and isinstance(value, str)},
    }


def _response(name: str, content_type: str) -> web.Response:
    try:
        body = read_web_file(name)
    except FileNotFoundError:
        log.error("softphone/hub/web/%s is missing from the installation", name)
        raise web.HTTPNotFound(text=f"{name} is missing from this softphone installation\n"
                               ) from None
    return web.Response(body=body, content_type=content_type, charset="utf-8",
                        headers={"Cache-Control": "no-cache", **FRAME_HEADERS})


async def _page(request: web.Request) -> web.Response:
    return _response(PAGE, "text/html")


async def _static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    content_type = STATIC_FILES.get(name)
    if content_type is None:
        raise web.HTTPNotFound(text=f"no such file: {name}\n")
    return _response(name, content_type)


async def _call_table(request: web.Request) -> web.Response:
    return web.json_response(call_table(), headers={"Cache-Control": "no-cache"})


def add_web_routes(app: web.Application) -> None:
    """Add the browser phone's routes to a hub's aiohttp application."""
    app.add_routes([web.get(path, _page) for path in PAGE_PATHS])
    app.add_routes([web.get("/static/{name}", _static),
                    web.get(CALL_TABLE_PATH, _call_table)])
