"""Media restart on the command line: the options, their bad values, and what
``softphone listen --json`` says when its call's media is restarted.

The restart is started by the other end, a :class:`~softphone.Phone` in the
test (real hub, real peer connections), as a peer that lost its path does;
the listening process answers it with a fresh connection and reports it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from click.testing import CliRunner

from softphone import Phone, ToneSource
from softphone.cli.main import main
from softphone.core import restart as r
from softphone.core.callstate import ExitCode
from softphone.hub.server import Hub
from softphone.media.tracks import CaptureSink

from ..conftest import hub_url
from ..support.helpers import Proc, assert_tone


@pytest.mark.parametrize(("args", "message"), [
    (["--restart-silence", "0"], "greater than 0"),
    (["--give-up", "-3"], "greater than 0"),
    (["--restart-retry", "soon"], "'soon' is not a valid float"),
    (["--restart-probe", "3"], "--restart-probe (3 s) must be shorter than --restart-silence"),
    (["--restart-silence", "0.4", "--restart-probe", "0.5"],
     "--restart-probe (0.5 s) must be shorter than --restart-silence (0.4 s)"),
])
@pytest.mark.parametrize("command", [["call", "b", "--as", "a"], ["listen", "--as", "b"]])
def test_bad_restart_options_are_one_line_and_exit_2(command: list[str], args: list[str],
                                                      message: str) -> None:
    result = CliRunner().invoke(main, [*command, *args])
    assert result.exit_code == ExitCode.USAGE, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output


def test_the_options_are_documented_in_help() -> None:
    for command in ("call", "listen"):
        out = CliRunner().invoke(main, [command, "--help"]).output
        for flag in ("--no-restart", "--restart-silence", "--restart-probe",
                     "--restart-retry", "--give-up"):
            assert flag in out, (command, flag)
        assert "media-lost" in out  # the exit code's line


def json_events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.mark.e2e
async def test_listen_json_reports_a_media_restart(hub: Hub, procs: list[Proc]) -> None:
    listener = Proc("listen", "--as", "b", "--server", hub_url(hub), "--auto-accept",
                    "--once", "--json", "--tone", "660", "--no-audio", "--give-up", "30")
    procs.append(listener)
    await listener.wait_for_output('"event":"listening"')
    heard = CaptureSink(20.0)
    events: list[dict[str, Any]] = []
    a = Phone("a", hub_url(hub))
    await a.connect()
    try:
        call = await a.dial("b", ToneSource(440), [heard], on_event=events.append)
        await asyncio.wait_for(call.connected(), 20)
        assert "restart" in call.peer_features, call.peer_features
        await asyncio.sleep(1.0)
        link = call.restart_link
        assert link is not None
        # Our side saw its connection fail: it restarts; the process answers.
        link.feed(r.ConnectionChanged(0, r.PeerState.FAILED))
        await listener.wait_for_output('"event":"media-restart"', within=15)
        await asyncio.sleep(1.5)
        assert [e for e in events if e["event"] == "media-restart"], events
        assert_tone(heard.samples()[-int(1.2 * 48000):], 660, skip=0.0, min_seconds=1.0,
                    what="a after the restart")
        await call.hangup()
        assert (await call.ended()).exit_code == 0
    finally:
        await a.close()
    assert await listener.wait(15) == 0, listener.describe()
    got = json_events(listener.stdout)
    restarts = [e for e in got if e["event"] == "media-restart"]
    assert len(restarts) == 1, listener.stdout
    event = restarts[0]
    assert event["reason"] == "peer" and event["generation"] == 1 and event["attempts"] == 1
    # How long the gap was is a speed figure (the phone's wall clock), not checked here.
    assert isinstance(event["gap_ms"], int) and event["gap_ms"] >= 0, event
    assert event["peer"] == "a" and event["sas"], event
    lost = [e for e in got if e["event"] == "media-lost"]
    assert lost and lost[0]["reason"] == "peer" and lost[0]["restarting"] is True, got
    end = got[-1]
    assert end["event"] == "ended" and end["outcome"] == "completed", end
    # The human lines (on stderr with --json) say it too.
    assert "media lost (peer), restarting" in listener.stderr, listener.stderr
    assert "media back after " in listener.stderr
    assert "Traceback" not in listener.stderr
