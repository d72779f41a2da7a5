"""Call setup time between the browser phone and the CLI, in every direction.

Measured the same way for each direction, on the caller's side: from the
moment the caller sends ``call-request`` to the moment its call state
becomes ``connected`` (ICE and DTLS up). The callee answers at once: the CLI
with ``listen --auto-accept``, the page with ``window.phone.autoAccept`` set by
this script (no URL parameter does it: a link must not answer calls; it still gets
the microphone before it sends ``call-accept``, as a person clicking Accept
would make it do).

- page -> CLI: the page's own timestamps (``performance.now()`` in its call
  state machine, ``window.phone.results``);
- CLI -> page: ``softphone call --json``, its ``state: connected`` event
  (``t`` is seconds since its ``call-request``);
- page -> page: the calling page's timestamps.

Everything runs on this machine: an embedded hub on 127.0.0.1, Debian's
headless Chromium (one process per side, fake microphones) and ``softphone``
subprocesses. Usage::

    python benchmarks/browser_setup.py [--calls 5] [--screenshot docs/screenshot-call.png]

Needs the ``chromium`` Debian package and the ``playwright`` Python package
(``pip install -e '.[test]'``; never ``playwright install``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from softphone.hub.server import Hub, HubConfig  # noqa: E402
from tests.support.browser import (  # noqa: E402
    ChromiumPhone,
    wait_call_state,
    wait_hub,
    wait_js,
    write_tone_wav,
)


async def accept_delay(callee: Any) -> float:
    """The callee page's last call: call-request received -> call-accept sent (its microphone)."""
    history = (await callee.evaluate("window.phone.snapshot()"))["call"]["history"]
    return float(next(t for state, t in history if state == "connecting"))


async def page_setup_times(caller: Any, peer: str, calls: int, talk: float = 1.0,
                           screenshot: Path | None = None, callee: Any = None,
                           accepts: list[float] | None = None) -> list[float]:
    """Dial ``peer`` from the page ``calls`` times; the caller's request -> connected, seconds."""
    times = []
    for n in range(calls):
        done = len(await caller.evaluate("window.phone.results"))
        await caller.fill("#peer-id", peer)
        await caller.click("#call")
        await wait_call_state(caller, "connected", within=30)
        await caller.wait_for_timeout(talk * 1000)
        if screenshot is not None and n == calls - 1:
            await caller.wait_for_timeout(1500)  # the call timer and level meter move
            await caller.locator("#phone").screenshot(path=str(screenshot))
        await caller.click("#hangup")
        await wait_js(caller, f"window.phone.results.length > {done}")
        result = (await caller.evaluate("window.phone.results"))[-1]
        if result["outcome"] != "completed":
            raise RuntimeError(f"call {n + 1} to {peer}: {result}")
        times.append(float(result["setupSeconds"]))
        if callee is not None and accepts is not None:
            accepts.append(await accept_delay(callee))
        await caller.wait_for_timeout(300)
    return times


async def cli_setup_times(server: str, peer: str, calls: int, callee: Any,
                          accepts: list[float]) -> list[float]:
    times = []
    for n in range(calls):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "softphone", "call", peer, "--as", "dave",
            "--server", server, "--json", "--tone", "660", "--duration", "1",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        if proc.returncode != 0:
            raise RuntimeError(f"CLI call {n + 1} exited {proc.returncode}: {err.decode()}")
        for line in out.decode().splitlines():
            event = json.loads(line)
            if event.get("event") == "state" and event.get("state") == "connected":
                times.append(float(event["t"]))
                break
        accepts.append(await accept_delay(callee))
        await asyncio.sleep(0.3)
    return times


def summary(name: str, times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    return (f"{name:<12} median {statistics.median(ms):6.0f} ms   min {ms[0]:5.0f}   "
            f"max {ms[-1]:5.0f}   ({len(ms)} calls)")


async def main(calls: int, screenshot: Path | None) -> None:
    from playwright.async_api import async_playwright

    hub = Hub(HubConfig(ice_servers=[]))
    port = await hub.start("127.0.0.1", 0)
    server = f"http://127.0.0.1:{port}"
    listener = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "softphone", "listen", "--as", "carol", "--server", server,
        "--auto-accept", "--tone", "660", "--json",
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert listener.stdout is not None
    await asyncio.wait_for(listener.stdout.readline(), 60)  # {"event":"listening"...}
    results: dict[str, list[float]] = {}
    accepts: dict[str, list[float]] = {"CLI -> page": [], "page -> page": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            async with async_playwright() as pw:
                a = await ChromiumPhone(pw, write_tone_wav(Path(tmp) / "a.wav", 440)).start()
                b = await ChromiumPhone(pw, write_tone_wav(Path(tmp) / "b.wav", 660)).start()
                try:
                    caller = await a.open(f"{server}/?id=alice")
                    callee = await b.open(f"{server}/?id=bob")
                    await callee.evaluate("window.phone.autoAccept = true")
                    await wait_hub(caller, "connected")
                    await wait_hub(callee, "connected")
                    results["page -> CLI"] = await page_setup_times(caller, "carol", calls)
                    results["CLI -> page"] = await cli_setup_times(
                        server, "bob", calls, callee, accepts["CLI -> page"])
                    results["page -> page"] = await page_setup_times(
                        caller, "bob", calls, screenshot=screenshot, callee=callee,
                        accepts=accepts["page -> page"])
                finally:
                    await a.close()
                    await b.close()
    finally:
        listener.terminate()
        await listener.wait()
        await hub.stop()
    print("call setup: caller's call-request -> connected (ICE + DTLS up), this machine")
    for name, times in results.items():
        print(summary(name, times))
    print("of which the callee page took, call-request -> call-accept (microphone first):")
    for name, times in accepts.items():
        print(summary(name, times))
    if screenshot is not None:
        print(f"screenshot of the page in a call: {screenshot}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5, help="calls per direction")
    parser.add_argument("--screenshot", type=Path, default=None,
                        help="save a PNG of the calling page during the last page -> page call")
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.screenshot))
