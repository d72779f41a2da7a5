"""A phone that cannot reach its hub: one error, nothing left to report later."""

from __future__ import annotations

import asyncio
import gc
import socket
from typing import Any

from softphone import HubUnreachable, Phone
from softphone.client.signaling import HubClient


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # (nothing listens on it now: connections are refused at once)


async def test_connect_to_an_unreachable_hub_raises_once_and_leaves_no_error_behind() -> None:
    """The ICE servers are asked for alongside the connection. When the connection
    fails, that request's own failure must not surface later as "Task exception was
    never retrieved" with a traceback (it did, at `softphone listen`'s exit)."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        phone = Phone("a", f"http://127.0.0.1:{_closed_port()}", reconnect=False)
        try:
            await phone.connect()
        except HubUnreachable as exc:
            assert "cannot reach" in str(exc) or "127.0.0.1" in str(exc), exc
        else:
            raise AssertionError("connected to a port nothing listens on")
        await asyncio.sleep(0.3)  # (the request's own failure, if it were left running)
        del phone
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert not reported, [c.get("message") for c in reported]


async def test_a_hub_that_never_answers_the_handshake_is_unreachable() -> None:
    """It takes the connection and reads the request, then says nothing: after three
    connect timeouts the phone is told, in one line, not left waiting for good."""
    done = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(4096)
        await done.wait()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = HubClient(f"http://127.0.0.1:{port}", "a", connect_timeout=0.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await asyncio.wait_for(client.connect(), 5)  # (TimeoutError here: no timeout)
    except HubUnreachable as exc:
        assert "\n" not in str(exc) and str(exc).endswith(": no answer in time"), exc
    else:
        raise AssertionError("connected to a hub that never answered")
    finally:
        await client.close()
        done.set()
        server.close()
        await server.wait_closed()
    assert loop.time() - started < 4
