"""The layers hold: import contracts, and a real `softphone serve` without the media stack.

- The import-linter contracts in pyproject.toml ([tool.importlinter]): core imports
  no other layer and no asyncio/network/media library; the hub never the media
  stack, the phone or the CLI; media neither the phone, the hub nor the CLI; the
  phone neither the hub nor the CLI.
- A running `softphone serve` (the venv's script, and the same command run
  in-process by `python -c`) that has relayed a message has loaded no shared object
  of aiortc, PyAV, numpy or libopus, and imported none of those Python modules.
  The same check on a process that did import them must find them: the
  control that shows the check can fail on this machine.
- Commands that neither call nor serve (help, config, completion, devices)
  import neither the media stack nor aiohttp: each would cost every such
  process a tenth of a second or more.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from .conftest import need

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

#: Python modules a hub process must not import (the media stack).
MEDIA_MODULES = ("aiortc", "av", "numpy", "opuslib_next")
#: Shared objects of those, as paths in /proc/<pid>/maps: the extension modules in the
#: packages, the libraries they bundle (numpy.libs, av.libs), libopus (opuslib_next
#: loads it through ctypes; aiortc links it) and FFmpeg's and libvpx's libraries.
MEDIA_OBJECTS = re.compile(
    r"/(aiortc|av|numpy)(\.libs)?/|/(numpy|av|aiortc)[^/]*\.libs/"
    r"|libopus|opuslib|libav(codec|format|util|device|filter)|libswresample|libvpx")

#: `softphone serve` in-process: imports what argv[3:] name first (the control),
#: serves until SIGINT, then writes the names in sys.modules to argv[1].
IN_PROCESS = """
import sys
for name in sys.argv[3:]:
    __import__(name)
from softphone.cli.main import main
try:
    main(["serve", "--port", sys.argv[2]])
finally:
    with open(sys.argv[1], "w") as out:
        out.write("\\n".join(sorted(sys.modules)))
"""


#: `softphone ARGS` in-process (argv[2:]), then the names in sys.modules to argv[1].
COMMAND = """
import sys
from softphone.cli.main import main
try:
    main(sys.argv[2:])
finally:
    with open(sys.argv[1], "w") as out:
        out.write("\\n".join(sorted(sys.modules)))
"""


def test_import_contracts() -> None:
    lint = BIN / "lint-imports"
    need(lint.exists(), "import-linter (lint-imports)",
         "pip install -e '.[test]' (it is in the test extra)")
    done = subprocess.run([str(lint), "--no-cache", "--no-logo"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "broken" in done.stdout and " 0 broken" in done.stdout, done.stdout


@asynccontextmanager
async def hub_process(argv: list[str]) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """A hub started by ``argv`` (listening on a free port), stopped with SIGINT after."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        found = re.search(r"listening on https?://[^ ]+:(\d+)", line)
        if not found:
            await asyncio.wait_for(proc.wait(), 10)
            raise AssertionError(f"{argv[:3]} did not start: {line}"
                                 f"{(await proc.stderr.read()).decode()}")
        yield proc, int(found.group(1))
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def relay_one_message(port: int) -> None:
    """Two clients on the hub; a message from one reaches the other, `from` set."""
    url = f"http://127.0.0.1:{port}/ws?id="
    async with aiohttp.ClientSession() as session:
        a = await session.ws_connect(url + "layers-a")
        b = await session.ws_connect(url + "layers-b")
        await asyncio.sleep(0.1)  # both registered
        await a.send_str('{"type":"call-request","to":"layers-b"}')
        frame = await b.receive(5)
        assert frame.type == aiohttp.WSMsgType.TEXT, frame
        assert json.loads(frame.data) == {"type": "call-request", "to": "layers-b",
                                          "from": "layers-a"}
        await a.close()
        await b.close()


def media_objects(pid: int) -> set[str]:
    """The media stack's shared objects mapped into process ``pid``."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {line.split(maxsplit=5)[-1] for line in maps.splitlines()
            if MEDIA_OBJECTS.search(line)}


def media_modules(names: str) -> set[str]:
    return {name for name in names.split() if name.split(".")[0] in MEDIA_MODULES}


async def test_the_softphone_script_serves_without_the_media_stack() -> None:
    script = BIN / "softphone"
    need(script.exists(), "the venv's softphone script", "pip install -e .")
    async with hub_process([str(script), "serve", "--port", "0"]) as (proc, port):
        await relay_one_message(port)
        loaded = media_objects(proc.pid)
    assert not loaded, f"`softphone serve` loaded the media stack: {sorted(loaded)}"


@pytest.mark.parametrize("preload", [(), MEDIA_MODULES], ids=["serve", "control"])
async def test_serve_imports_no_media_module(preload: tuple[str, ...],
                                             tmp_path: Path) -> None:
    dump = tmp_path / "modules.txt"
    argv = [sys.executable, "-c", IN_PROCESS, str(dump), "0", *preload]
    async with hub_process(argv) as (proc, port):
        await relay_one_message(port)
        loaded = media_objects(proc.pid)
    assert proc.returncode == 0, proc.returncode
    imported = media_modules(dump.read_text())
    if not preload:
        assert not loaded, f"`softphone serve` loaded the media stack: {sorted(loaded)}"
        assert not imported, f"`softphone serve` imported: {sorted(imported)}"
        return
    # The control: a hub process that did import them; both checks must see them
    # (`import aiortc` maps no shared object of its own: its codecs load them later).
    assert {name.split(".")[0] for name in imported} == set(MEDIA_MODULES)
    for sign in ("/numpy", "/av", "libopus"):
        assert any(sign in path for path in loaded), (sign, sorted(loaded))


#: `softphone doctor` checks the hub (aiohttp) and libopus: the control, which the
#: check below must catch.
DOCTOR = ["doctor", "--server", "http://127.0.0.1:9"]


@pytest.mark.parametrize("args", [
    ["--help"], ["call", "--help"], ["serve", "--help"], ["config", "path"],
    ["completion", "bash"], ["devices"], DOCTOR,
], ids=" ".join)
def test_light_commands_import_no_media_stack_nor_aiohttp(args: list[str],
                                                          tmp_path: Path) -> None:
    dump = tmp_path / "modules.txt"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    done = subprocess.run([sys.executable, "-c", COMMAND, str(dump), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert dump.exists(), done.stdout + done.stderr
    names = dump.read_text().split()
    heavy = {name for name in names if name.split(".")[0] in (*MEDIA_MODULES, "aiohttp")}
    if args == DOCTOR:
        assert {"aiohttp", "opuslib_next"} <= {name.split(".")[0] for name in heavy}
        return
    # (devices: 1 where PortAudio sees no device; it still lists them, or says so.)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    assert not heavy, f"softphone {' '.join(args)} imported: {sorted(heavy)}"
