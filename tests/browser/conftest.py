"""The ``chromium`` fixture of the browser phone's tests: real headless Chromium processes.

One Playwright driver and the Chromium processes it launched are kept for the
session (starting them is most of a short test), so these tests run in the
session's event loop (``pytestmark`` of each module), as do the fixtures they
use. Each test still gets a browser context of its own (its own pages,
storage and permissions, closed at its end) in a Chromium no other phone of
the test uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from softphone.hub.server import Hub

from ..conftest import running_hub
from ..support.browser import ChromiumPhone, need_browser, wait_call_state, write_tone_wav

PAGE_TONE = 440.0  # what a page's fake microphone plays, unless told otherwise

Launch = Callable[..., Awaitable[ChromiumPhone]]

#: The mark of every test module here: the session's event loop (the browsers' driver).
SESSION_LOOP = pytest.mark.asyncio(loop_scope="session")


async def answer(page: Any, within: float = 30.0) -> None:
    """Answer the page's incoming call as its user does: click Accept once it rings
    (no URL parameter makes the page answer by itself)."""
    await wait_call_state(page, "ringing", within=within)
    await page.click("#accept")


class Browsers:
    """Headless Chromium processes by microphone tone, kept between tests."""

    def __init__(self, playwright: Any, directory: Path) -> None:
        self.playwright = playwright
        self.directory = directory
        self.idle: dict[float | None, list[Any]] = {}
        self.wavs: dict[float, Path] = {}

    def phone(self, tone: float | None) -> ChromiumPhone:
        """A phone in an idle Chromium whose microphone plays ``tone``, else in a new one."""
        wav = None
        if tone is not None:
            wav = self.wavs.get(tone)
            if wav is None:
                wav = write_tone_wav(self.directory / f"mic-{tone:.0f}.wav", tone)
                self.wavs[tone] = wav
        idle = self.idle.setdefault(tone, [])
        while idle:
            browser = idle.pop()
            if browser.is_connected():
                return ChromiumPhone(self.playwright, wav, browser)
        return ChromiumPhone(self.playwright, wav)

    async def put_back(self, tone: float | None, phone: ChromiumPhone) -> None:
        """Close the phone's context; keep its Chromium for the next tests if it is well."""
        try:
            await asyncio.wait_for(phone.close_context(), 20)
        except Exception:
            with contextlib.suppress(Exception):
                await phone.close()  # (the browser too: it is not kept)
            raise
        if phone.browser is not None and phone.browser.is_connected():
            self.idle.setdefault(tone, []).append(phone.browser)

    async def close(self) -> None:
        for browsers in self.idle.values():
            for browser in browsers:
                await browser.close()
        self.idle.clear()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browsers(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Browsers]:
    need_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        kept = Browsers(pw, tmp_path_factory.mktemp("mic"))
        try:
            yield kept
        finally:
            await kept.close()


@pytest_asyncio.fixture(loop_scope="session")
async def chromium(browsers: Browsers) -> AsyncIterator[Launch]:
    """``await chromium(tone)``: a headless Chromium whose microphone plays ``tone`` Hz,
    with a new browser context (one a test has to itself)."""
    started: list[tuple[float | None, ChromiumPhone]] = []

    async def launch(tone: float | None = PAGE_TONE, **context: Any) -> ChromiumPhone:
        phone = browsers.phone(tone)
        started.append((tone, phone))
        return await phone.start(**context)

    try:
        yield launch
    finally:
        failed: Exception | None = None
        for tone, phone in started:
            if phone.console:
                print(f"--- browser console ({phone.mic_wav}):", *phone.console[-40:], sep="\n")
            try:
                await browsers.put_back(tone, phone)
            except Exception as exc:  # (the others are still closed)
                failed = failed or exc
        if failed is not None:
            raise failed


@pytest_asyncio.fixture(loop_scope="session")
async def hub() -> AsyncIterator[Hub]:
    """tests/conftest.py's ``hub``, in the session's event loop (:data:`SESSION_LOOP`)."""
    async with running_hub() as h:
        yield h


def _playwrights(task: asyncio.Task[Any]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and f"{os.sep}playwright{os.sep}" in code.co_filename


@pytest_asyncio.fixture(loop_scope="session", autouse=True)
async def _tasks_end_with_the_test() -> AsyncIterator[None]:
    """What a test's own event loop did at its end: cancel the tasks the test left
    running (none, when it passes), but not the kept browsers' (Playwright's)."""
    before = asyncio.all_tasks()
    yield
    me = asyncio.current_task()
    left = [task for task in asyncio.all_tasks() - before
            if task is not me and not task.done() and not _playwrights(task)]
    for task in left:
        task.cancel()
    if left:
        done, _ = await asyncio.wait(left, timeout=10)
        for task in done:  # (as a loop's close does: reported, not raised)
            if not task.cancelled() and task.exception() is not None:
                asyncio.get_running_loop().call_exception_handler({
                    "message": "a task the test left running failed", "task": task,
                    "exception": task.exception()})
