"""Edges of ``call`` a user review found: a --record file of an earlier call kept
when the call never starts, the status line while the media is being restarted,
the same keys in every --json ``ended`` event, and --input naming a device on a
machine without any.

Real hubs on real sockets; the calls are ``softphone`` subprocesses (the status
line: the CLI's call screen on a real call between two phones in the test).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest

from softphone import ExitCode, ToneSource
from softphone.cli.tui import CallScreen
from softphone.core import restart as r
from softphone.hub.server import Hub

from ..conftest import phone_pair
from ..support.helpers import Proc, assert_wav_tone, read_wav
from ..support.pulse import PulseLab
from .conftest import silent_server
from .test_user_flow import NO_STUN, calling, listening


def free_port() -> int:
    """A port nobody listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# ------------------------------------------------------------ --record ---

async def test_record_keeps_an_earlier_recording_until_the_call_connects(
        hub: Hub, procs: list[Proc], tmp_path: Path) -> None:
    """A call that never starts (hub unreachable, callee offline) leaves the file an
    earlier call recorded as it was; one that connects replaces it, and Ctrl-C
    mid-call leaves a playable recording of that call."""
    keep = tmp_path / "keep.wav"
    b = await listening(procs, hub, "b", "--auto-accept", "--tone", "440")
    first = calling(procs, hub, "b", "a", "--duration", "1.5", "--record", str(keep))
    assert await first.wait() == ExitCode.COMPLETED, first.describe()
    recorded = keep.read_bytes()
    assert len(recorded) > 10_000
    unreachable = Proc("call", "b", "--as", "a", "--server", f"http://127.0.0.1:{free_port()}",
                       "--no-audio", *NO_STUN, "--record", str(keep))
    procs.append(unreachable)
    assert await unreachable.wait() == ExitCode.HUB_UNREACHABLE, unreachable.describe()
    offline = calling(procs, hub, "nobody", "a", "--record", str(keep))
    assert await offline.wait() == ExitCode.OFFLINE, offline.describe()
    assert keep.read_bytes() == recorded
    assert os.listdir(tmp_path) == ["keep.wav"]  # nothing left over
    b.signal(signal.SIGINT)
    assert await b.wait() == 0, b.describe()
    await listening(procs, hub, "c", "--auto-accept", "--tone", "660")
    second = calling(procs, hub, "c", "a", "--record", str(keep))
    await second.wait_for_output("connected to c")
    await asyncio.sleep(2.0)
    second.signal(signal.SIGINT)
    assert await second.wait() == ExitCode.COMPLETED, second.describe()
    assert read_wav(keep)[0].size > 48_000
    assert_wav_tone(keep, 660, what="the call Ctrl-C ended")
    assert os.listdir(tmp_path) == ["keep.wav"]


# ------------------------------------------------------------ --json ended ---

async def test_every_json_ended_event_has_the_same_keys(hub: Hub, procs: list[Proc]) -> None:
    """Hub unreachable, Ctrl-C before the hub answered, callee offline: one set of
    keys (null where unknown), the callee as peer, "caller" as role."""
    unreachable = Proc("call", "b", "--as", "a", "--server",
                       f"http://127.0.0.1:{free_port()}", "--no-audio", *NO_STUN, "--json")
    procs.append(unreachable)
    offline = calling(procs, hub, "b", "a", "--json")
    async with silent_server() as (port, accepted):
        waiting = Proc("call", "b", "--as", "a", "--server", f"http://127.0.0.1:{port}",
                       "--no-audio", *NO_STUN, "--json")
        procs.append(waiting)
        await asyncio.wait_for(accepted.wait(), 15)
        await asyncio.sleep(0.3)
        waiting.signal(signal.SIGINT)
        assert await waiting.wait(within=5) == ExitCode.CANCELLED, waiting.describe()
    assert await unreachable.wait() == ExitCode.HUB_UNREACHABLE, unreachable.describe()
    assert await offline.wait() == ExitCode.OFFLINE, offline.describe()
    ended = {name: [e for e in json_lines(p.stdout) if e["event"] == "ended"]
             for name, p in (("unreachable", unreachable), ("offline", offline),
                             ("interrupted", waiting))}
    assert all(len(events) == 1 for events in ended.values()), ended
    keys = {name: sorted(events[0]) for name, events in ended.items()}
    assert keys["unreachable"] == keys["offline"] == keys["interrupted"], keys
    for name, outcome, code in (("unreachable", "hub-unreachable", 7),
                                ("interrupted", "cancelled", 10)):
        event = ended[name][0]
        assert event["peer"] == "b" and event["role"] == "caller", event
        assert event["outcome"] == outcome and event["exit_code"] == code, event
        assert event["setup_seconds"] is None and event["talk_seconds"] == 0.0, event
        assert event["candidate_pair"] is None and event["ended_by"], event


# ------------------------------------------------------------ status line ---

class Said:
    """The lines and events the call screen says (the CLI's Output, kept)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def say(self, text: str) -> None:
        self.lines.append(text)

    def event(self, event: dict[str, Any]) -> None:
        pass


async def test_the_status_line_says_restarting_while_the_media_is_down(hub: Hub) -> None:
    """Not ``connected`` with the dead path's figures: ``restarting`` without them,
    then ``connected`` again once the media is back."""
    async with phone_pair(hub) as (a, b):
        call = await a.dial("b", ToneSource(440), [])
        incoming = await asyncio.wait_for(b.next_call(), 10)
        await incoming.accept(ToneSource(660), [])
        await asyncio.wait_for(call.connected(), 20)
        said = Said()
        screen = CallScreen(call, said, None, interactive=False)
        screen.start()
        try:
            for _ in range(100):  # the screen's first figures
                if "rtt" in screen.text():
                    break
                await asyncio.sleep(0.05)
            assert screen.text().startswith("connected") and "rtt" in screen.text()
            lines: dict[str, str] = {}
            back = asyncio.Event()

            def on_event(event: dict[str, Any]) -> None:  # (after the screen's own)
                if event["event"] in ("media-lost", "media-restart"):
                    lines[event["event"]] = screen.text()
                if event["event"] == "media-restart":
                    back.set()

            call.on_event(on_event)
            link = call.restart_link
            assert link is not None
            link.feed(r.ConnectionChanged(0, r.PeerState.FAILED))
            await asyncio.wait_for(back.wait(), 15)
            assert lines["media-lost"].startswith("restarting "), lines
            assert "rtt" not in lines["media-lost"] and "buf" not in lines["media-lost"]
            assert lines["media-restart"].startswith("connected "), lines
            assert any(line.startswith("media back after") for line in said.lines)
        finally:
            screen.stop()
            await call.hangup()


# ------------------------------------------------------------ --input ---

async def test_a_device_that_does_not_match_names_where_it_came_from(
        procs: list[Proc], tmp_path: Path, pulse: PulseLab) -> None:
    """PulseAudio's devices, and a microphone index that names none: one line, exit 2,
    naming the flag, the variable or the config file's line and key that gave it (it
    was click's usage error about an --input the user may never have typed)."""
    config = tmp_path / "config.toml"
    config.write_text('id = "a"\n\n[audio]\ninput = "77"\n')
    server = ("--server", f"http://127.0.0.1:{free_port()}", *NO_STUN)
    cases = [
        ((), {"SOFTPHONE_CONFIG": str(config)}, f"{config}:4: audio.input '77': "),
        ((), {"SOFTPHONE_INPUT": "78"}, "SOFTPHONE_INPUT='78': "),
        (("--input", "79"), {"SOFTPHONE_CONFIG": str(config)}, "--input '79': "),
    ]
    for args, env, named in cases:
        p = Proc("call", "b", "--as", "a", *args, *server, env={**pulse.env_for("a"), **env})
        procs.append(p)
        assert await p.wait() == ExitCode.USAGE, p.describe()
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"softphone: {named}"), p.describe()
        assert "microphone" in lines[0], p.describe()


@pytest.mark.parametrize(("option", "kind"), [("--input", "microphone (input)"),
                                              ("--output", "speaker (output)")])
async def test_a_device_named_where_there_is_none_is_a_usage_error(
        procs: list[Proc], tmp_path: Path, option: str, kind: str) -> None:
    """No sound devices at all (no audio server, no card): ``--input 3`` names no
    device: exit 2, one line naming it."""
    env = {"PULSE_SERVER": f"unix:{tmp_path}/nothing", "XDG_RUNTIME_DIR": str(tmp_path)}
    sends = ("--tone", "440") if option == "--output" else ()  # (no microphone notice)
    p = Proc("call", "b", "--as", "a", option, "3", *sends, "--server",
             f"http://127.0.0.1:{free_port()}", *NO_STUN, env=env)
    procs.append(p)
    assert await p.wait() == ExitCode.USAGE, p.describe()
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.describe()
    assert lines[0].startswith(f"softphone: {option} '3': no such device: no audio {kind} "
                               "device"), lines
    assert "Traceback" not in p.stderr and "cannot reach" not in p.stdout
    listing = Proc("devices", option, "3", env=env)  # (devices says it the same way)
    procs.append(listing)
    assert await listing.wait() == ExitCode.USAGE, listing.describe()
    assert listing.stderr.startswith(f"softphone: {option} '3': no such device: "), \
        listing.describe()


async def test_ctrl_c_while_serve_waits_for_redis_is_130(procs: list[Proc]) -> None:
    """A Redis that takes the connection and never answers: Ctrl-C stops serve at once,
    as any command before it got going (README: 130). It was ignored until the connect
    timed out, then exit 12 (the operator review)."""
    async with silent_server() as (port, accepted):
        p = Proc("serve", "--port", str(free_port()), "--redis", f"redis://127.0.0.1:{port}/0")
        procs.append(p)
        await asyncio.wait_for(accepted.wait(), 15)
        p.signal()
        assert await p.wait(10) == ExitCode.INTERRUPTED, p.describe()
        assert "Traceback" not in p.stderr and "cannot reach Redis" not in p.stderr
