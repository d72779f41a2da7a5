"""What a phone says when the URL it was given answers something else than the hub's
WebSocket: one line, the HTTP status, and never the token (it rides in the URL)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from softphone.client.phone import Phone
from softphone.client.signaling import HubUnreachable, _describe
from softphone.hub.server import Hub

from ..conftest import hub_url

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJlLXNlY3JldA"


@pytest.fixture
async def proxy_502() -> AsyncIterator[str]:
    """A reverse proxy whose hub is down: 502 for everything."""
    async def bad_gateway(request: web.Request) -> web.Response:
        return web.Response(status=502)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", bad_gateway)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.parametrize(("where", "status"), [("wrong-path", 404), ("proxy-502", 502)])
async def test_an_http_answer_is_said_without_the_token(
        hub: Hub, proxy_502: str, where: str, status: int) -> None:
    server = f"{hub_url(hub)}/x" if where == "wrong-path" else proxy_502
    phone = Phone("a", server, token=TOKEN, reconnect=False)
    try:
        with pytest.raises(HubUnreachable) as caught:
            await phone.connect()
    finally:
        await phone.close()
    said = str(caught.value)
    assert f"it answered HTTP {status} instead of a WebSocket" in said, said
    assert TOKEN[:10] not in said and "token=" not in said, said
    assert "\n" not in said


def test_a_token_quoted_by_another_error_is_masked() -> None:
    exc = RuntimeError(f"0, message='x', url='ws://h:1/ws?id=a&ice=1&token={TOKEN}'")
    said = _describe(exc)
    assert TOKEN[:10] not in said and "token=***" in said, said


def test_the_doctor_masks_a_token_another_error_quotes() -> None:
    from softphone.cli.doctor_signaling import reason_of

    said = reason_of(RuntimeError(f"0, message='x', url='wss://h/ws?id=a&token={TOKEN}'"))
    assert TOKEN[:10] not in said and "token=***" in said, said
