"""The browser phone's pages, served by the hub.

``GET /`` is the phone (pick an id, call any id); ``/callerA.html`` and
``/callerB.html`` are the same page fixed to ids ``a`` and ``b``, so the
original system's URLs keep working. Its script and style sheet are under
``/static/``. The files live in ``softphone/hub/web/`` (package data: plain
HTML/JS/CSS, no build step) and are read when asked for.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Final

from aiohttp import web

log = logging.getLogger(__name__)

#: The files of ``softphone/hub/web/`` that are served, with their content types.
STATIC_FILES: Final[dict[str, str]] = {
    "phone.js": "text/javascript",
    "phone.css": "text/css",
}
PAGE: Final = "phone.html"
#: URL paths that serve the phone page.
PAGE_PATHS: Final = ("/", "/callerA.html", "/callerB.html")


def read_web_file(name: str) -> bytes:
    """One file of ``softphone/hub/web/`` (raises FileNotFoundError)."""
    return resources.files("softphone.hub").joinpath("web", name).read_bytes()


def _response(name: str, content_type: str) -> web.Response:
    try:
        body = read_web_file(name)
    except FileNotFoundError:
        log.error("softphone/hub/web/%s is missing from the installation", name)
        raise web.HTTPNotFound(text=f"{name} is missing from this softphone installation\n"
                               ) from None
    return web.Response(body=body, content_type=content_type, charset="utf-8",
                        headers={"Cache-Control": "no-cache"})


async def _page(request: web.Request) -> web.Response:
    return _response(PAGE, "text/html")


async def _static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    content_type = STATIC_FILES.get(name)
    if content_type is None:
        raise web.HTTPNotFound(text=f"no such file: {name}\n")
    return _response(name, content_type)


def add_web_routes(app: web.Application) -> None:
    """Add the browser phone's routes to a hub's aiohttp application."""
    app.add_routes([web.get(path, _page) for path in PAGE_PATHS])
    app.add_routes([web.get("/static/{name}", _static)])
