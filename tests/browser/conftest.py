"""The ``chromium`` fixture of the browser phone's tests: real headless Chromium processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from ..support.browser import ChromiumPhone, need_browser, write_tone_wav

PAGE_TONE = 440.0  # what a page's fake microphone plays, unless told otherwise

Launch = Callable[..., Awaitable[ChromiumPhone]]


@pytest.fixture
async def chromium(tmp_path: Path) -> AsyncIterator[Launch]:
    """``await chromium(tone)``: a new headless Chromium whose microphone plays ``tone`` Hz."""
    need_browser()
    from playwright.async_api import async_playwright

    started: list[ChromiumPhone] = []
    async with async_playwright() as pw:

        async def launch(tone: float | None = PAGE_TONE, **context: Any) -> ChromiumPhone:
            wav = None
            if tone is not None:
                wav = write_tone_wav(tmp_path / f"mic-{len(started)}-{tone:.0f}.wav", tone)
            phone = ChromiumPhone(pw, wav)
            started.append(phone)
            return await phone.start(**context)

        try:
            yield launch
        finally:
            for phone in started:
                if phone.console:
                    print(f"--- browser console ({phone.mic_wav}):", *phone.console[-40:],
                          sep="\n")
                await phone.close()
