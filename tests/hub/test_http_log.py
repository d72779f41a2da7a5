"""What the hub logs for HTTP requests aiohttp's parser refuses: one line at info.

aiohttp logs such a request at ERROR with a traceback; anyone on the network can
send one, so the hub's log would fill with false alarms. A handler that really
fails is still an ERROR with its traceback.
"""

from __future__ import annotations

import asyncio
import logging
import re

import pytest
from aiohttp import web

from softphone.hub.routes import HTTP_LOG_NAME
from softphone.hub.server import Hub, HubConfig

GARBAGE = [
    b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n",
    b"GET /\x00\xff HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(40)) + b"\r\n\r\n",
    b"GET /healthz HTTP/9.9\r\n\r\n",
    b"GET /" + b"x" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
]


async def ask(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_malformed_requests_are_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    hub = Hub(HubConfig(ice_servers=[]))
    await hub.start("127.0.0.1", 0)
    assert hub.port is not None
    try:
        for request in GARBAGE:
            answer = await ask(hub.port, request)
            assert answer == b"" or re.match(rb"HTTP/1\.[01] 4", answer), answer[:100]
        healthy = await ask(hub.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert healthy.startswith(b"HTTP/1.1 200")
    finally:
        await hub.stop()
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not errors, [(r.name, r.getMessage()) for r in errors]
    lines = [r for r in caplog.records if r.name == HTTP_LOG_NAME]
    assert lines, "nothing logged for the malformed requests"
    for record in lines:
        assert record.levelno in (logging.INFO, logging.DEBUG)  # (debug: aiohttp's choice)
        assert record.getMessage().startswith("bad-http remote=127.0.0.1 status=4")
        assert record.exc_info is None and "\n" not in record.getMessage()


async def test_a_failing_handler_is_still_an_error(caplog: pytest.LogCaptureFixture) -> None:
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("a bug in a handler")

    def add(app: web.Application) -> None:
        app.router.add_get("/boom", boom)

    hub = Hub(HubConfig(ice_servers=[], extra_routes=[add]))
    await hub.start("127.0.0.1", 0)
    assert hub.port is not None
    try:
        answer = await ask(hub.port, b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 500")
    finally:
        await hub.stop()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].name == HTTP_LOG_NAME
    assert errors[0].exc_info is not None and "a bug in a handler" in str(errors[0].exc_info[1])
