"""Real headless Chromium (Debian's ``chromium``) driven by Playwright, for the browser phone.

Each :class:`ChromiumPhone` is one browser process whose fake microphone plays
a WAV file with a known tone (Chromium's fake audio device is per process, so
two sides with different tones need two browsers), and a browser context of its
own in it; tests/browser/conftest.py keeps the processes between tests.
Playwright's own browser download is never used: ``executable_path`` points at
Debian's Chromium.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

from softphone.media.audio import dominant_frequency, tone_purity

from ..conftest import need

CHROMIUM = os.environ.get("SOFTPHONE_CHROMIUM", "/usr/bin/chromium")
RATE = 48000
#: True in a page once its phone is made: it has loaded the hub's call table.
PHONE_READY = "typeof window.phone.snapshot === 'function'"


def need_browser() -> None:
    """Skip (or fail in CI) unless Debian's Chromium and Playwright's Python package are here."""
    need(os.path.exists(CHROMIUM), f"Chromium ({CHROMIUM})", "install it: apt-get install chromium")
    need(importlib.util.find_spec("playwright") is not None, "the Python package playwright",
         "install it: pip install -e '.[test]' (never 'playwright install': Debian's "
         "Chromium is used)")


def write_tone_wav(path: Path, frequency: float, seconds: float = 2.0,
                   amplitude: float = 0.5) -> Path:
    """A mono 48 kHz 16-bit WAV of a sine tone that loops without a click."""
    n = int(RATE * seconds)
    cycles = round(frequency * seconds)  # a whole number of cycles: seamless loop
    t = np.arange(n) / n
    samples = (amplitude * 32767 * np.sin(2 * np.pi * cycles * t)).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(samples.tobytes())
    return path


def chromium_args(mic_wav: Path | None) -> list[str]:
    args = [
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--autoplay-policy=no-user-gesture-required",
    ]
    if mic_wav is not None:
        args += ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={mic_wav}"]
    return args


class ChromiumPhone:
    """One headless Chromium process with a fake microphone (or none), and a browser
    context of its own in it (pages, storage, permissions: nothing shared).

    ``browser``: a Chromium already running with ``mic_wav`` (and nothing open in it),
    to make the context in instead of launching one.
    """

    def __init__(self, playwright: Any, mic_wav: Path | None, browser: Any = None) -> None:
        self._pw = playwright
        self.mic_wav = mic_wav
        self.browser: Any = browser
        self.context: Any = None
        self.console: list[str] = []

    async def start(self, *, ignore_https_errors: bool = False) -> ChromiumPhone:
        if self.browser is None:
            self.browser = await self._pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=chromium_args(self.mic_wav))
        self.context = await self.browser.new_context(
            ignore_https_errors=ignore_https_errors, viewport={"width": 560, "height": 640})
        return self

    async def open(self, url: str, *, call_table: dict[str, Any] | None = None,
                   ready: bool = True) -> Any:
        """A new tab on ``url``; with ``ready``, once its phone is made (:data:`PHONE_READY`).

        ``call_table``: what the tab gets for the hub's ``callstate.json`` instead
        of the hub's own (the request is answered in the browser, by Playwright).
        """
        page = await self.context.new_page()
        page.on("console", lambda msg: self.console.append(f"{msg.type}: {msg.text}"))
        page.on("pageerror", lambda exc: self.console.append(f"pageerror: {exc}"))
        if call_table is not None:
            body = json.dumps(call_table)

            async def serve_table(route: Any) -> None:
                await route.fulfill(status=200, content_type="application/json", body=body)

            await page.route("**/callstate.json", serve_table)
        await page.goto(url)
        if ready:  # (window.phone is <main id="phone"> until the phone replaces it)
            await page.wait_for_function(PHONE_READY)
        return page

    async def close_context(self) -> None:
        """Close the context (its pages and calls); the browser stays."""
        context, self.context = self.context, None
        if context is not None:
            await context.close()

    async def close(self) -> None:
        await self.close_context()
        if self.browser is not None:
            await self.browser.close()


# ------------------------------------------------------------ page helpers ---


async def snapshot(page: Any) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate("window.phone.snapshot()")
    return result


async def wait_js(page: Any, expression: str, within: float = 20.0) -> None:
    """Wait until ``expression`` is true in the page; on timeout, say what the page was doing."""
    try:
        await page.wait_for_function(expression, timeout=within * 1000)
    except Exception as exc:
        state = await snapshot(page)
        raise AssertionError(f"waited {within} s for {expression}; page state: "
                             f"{json.dumps(state)[:2000]}") from exc


async def connect_as(page: Any, my_id: str) -> None:
    await page.fill("#my-id", my_id)
    await page.click("#connect")
    await wait_hub(page, "connected")


async def wait_hub(page: Any, status: str, within: float = 20.0) -> None:
    await wait_js(page, f"window.phone.hub === {json.dumps(status)}", within)


async def wait_call_state(page: Any, state: str, within: float = 20.0) -> None:
    await wait_js(page, "window.phone.line && window.phone.line.call && "
                        f"window.phone.line.call.state === {json.dumps(state)}", within)


async def wait_outcome(page: Any, outcome: str, within: float = 20.0) -> dict[str, Any]:
    await wait_call_state(page, "ended", within)
    state = await snapshot(page)
    assert state["call"]["outcome"] == outcome, state
    return state


async def dial(page: Any, peer: str) -> None:
    await page.fill("#peer-id", peer)
    await page.click("#call")


#: What the page's analyser holds: its last ``fftSize`` (32768) samples at 48 kHz
#: (media.js ``Speaker``), about 0.68 s.
ANALYSER_SECONDS = 32768 / RATE

#: ``window.phone.receivedAudio()``, its samples sent as the bytes of a Float32Array in
#: base64: the same numbers as the page's array of them, without the half a second that
#: Playwright takes to pass 32768 numbers one by one.
_RECEIVED_AUDIO = """() => {
    const got = window.phone.receivedAudio();
    if (got === null) return null;
    const bytes = new Uint8Array(Float32Array.from(got.samples).buffer);
    let text = "";
    for (let i = 0; i < bytes.length; i += 8192) {
        text += String.fromCharCode.apply(null, bytes.subarray(i, i + 8192));
    }
    return {rate: got.rate, samples: btoa(text)};
}"""


async def received_audio(page: Any) -> tuple[np.ndarray, int]:
    """The last ~0.7 s the page's WebAudio analyser heard, as int16 samples."""
    got = await page.evaluate(_RECEIVED_AUDIO)
    assert got is not None, "the page has no remote audio"
    floats = np.frombuffer(base64.b64decode(got["samples"]), dtype="<f4").astype(np.float64)
    samples = np.clip(floats, -1.0, 1.0)
    return (samples * 32767).astype(np.int16), int(got["rate"])


async def assert_page_hears(page: Any, expected: float, *, tolerance: float = 8.0,
                            fresh: bool = False, within: float = 10.0) -> float:
    """The page's analyser hears ``expected`` Hz, and getStats() counts inbound audio energy.

    Both are looked at until they hold (for up to ``within`` s): the analyser's last
    ~0.7 s must carry the tone. With ``fresh``, only what the page played after this
    call counts (the analyser's window is waited out first): for a check right after a
    change that need not have stopped the audio, such as a media restart.
    """
    await wait_js(page, "window.phone.analyser !== null")
    if fresh:
        await page.wait_for_timeout(round((ANALYSER_SECONDS + 0.1) * 1000))
    deadline = time.monotonic() + within
    while True:
        samples, rate = await received_audio(page)
        found = dominant_frequency(samples, rate)
        purity = tone_purity(samples, expected, rate)
        heard = abs(found - expected) <= tolerance and purity > 0.5
        stats = await page.evaluate("window.phone.inboundAudio()")
        counted = (stats is not None and stats["packetsReceived"] > 0
                   and stats["totalAudioEnergy"] > 0)
        if heard and counted:
            return found
        assert time.monotonic() < deadline, (
            f"for {within} s: page heard {found:.1f} Hz ({100 * purity:.0f}% near {expected} Hz);"
            f" its inbound audio stats: {stats}")
        await page.wait_for_timeout(100)


async def inbound_energy(page: Any) -> float:
    stats = await page.evaluate("window.phone.inboundAudio()")
    return 0.0 if stats is None else float(stats["totalAudioEnergy"])
