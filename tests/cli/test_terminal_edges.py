"""The terminal phone at its edges: devices checked before anyone calls, device
notices that keep their reason, a status line that fits an 80-column terminal,
JSON events on the same terminal as the live line, and the lines a call ends with.

Real hubs, real ``softphone`` subprocesses (on a pseudo-terminal where the live
line matters); the status line's text function on its own.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from softphone.cli.status_text import status_text
from softphone.hub.server import Hub
from softphone.media.rtc import MediaStats

from ..conftest import hub_url
from ..support.helpers import Proc
from ..support.pulse import PulseLab
from . import test_tui
from .test_tui import finish, terminal

terminals = test_tui.terminals  # (the fixture: a pseudo-terminal per softphone, closed after)

NO_STUN = ("--ice-server", "none")


# ------------------------------------------------------------------ devices ---

@pytest.mark.e2e
async def test_listen_checks_output_before_listening(hub: Hub, procs: list[Proc],
                                                     tmp_path: Path) -> None:
    """A --output that names no device: exit 2 at once, as ``call`` does, not after
    the first caller was accepted (and told "rejected")."""
    env = {"PULSE_SERVER": f"unix:{tmp_path}/nothing", "XDG_RUNTIME_DIR": str(tmp_path)}
    bob = Proc("listen", "--as", "q", "--server", hub_url(hub), "--output", "nosuch",
               "--tone", "440", "--auto-accept", "--once", *NO_STUN, env=env)
    procs.append(bob)
    assert await bob.wait(15) == 2, bob.describe()
    assert "listening as" not in bob.stdout, bob.describe()
    assert bob.stderr.count("\n") == 1 and "--output 'nosuch'" in bob.stderr, bob.describe()


@pytest.mark.e2e
async def test_device_notice_keeps_its_reason(hub: Hub, pulse: PulseLab, procs: list[Proc]
                                              ) -> None:
    """The sound server gone after ``listen`` started (its devices still listed): the
    notice at the next call says why the device cannot be used, not just its name."""
    bob = Proc("listen", "--as", "b", "--server", hub_url(hub), "--auto-accept", "--once",
               *NO_STUN, env=pulse.env_for("b"))
    procs.append(bob)
    await bob.wait_for_output("listening as b")
    pulse.kill_server()
    alice = Proc("call", "b", "--as", "a", "--server", hub_url(hub), "--tone", "440",
                 "--no-audio", "--duration", "1", *NO_STUN)
    procs.append(alice)
    assert await alice.wait() == 0, alice.describe()
    assert await bob.wait() == 0, bob.describe()
    notices = [line for line in bob.stderr.splitlines() if line.startswith("softphone: ")]
    assert notices, bob.describe()
    for line in notices:
        assert "sound server running?" in line, bob.describe()
        assert "--tone/--play to send" not in line, line  # (the notice's own advice only)


# -------------------------------------------------------------- status line ---

def test_status_line_at_80_columns_keeps_state_time_muted_and_keys() -> None:
    """Everything on: the line fits 80 columns (79 usable) by losing whole figures,
    the least important first; the state, time, MUTED, hold and the keys stay."""
    from softphone.media.apm import VoiceStats

    stats = MediaStats(packets_received=500, packets_lost=0, jitter_ms=3.1, rtt_ms=12.0,
                       buffer_ms=0.0)
    voice = VoiceStats(state="waiting", aec=True, ns=True, agc=True)
    common = dict(state="connected", seconds=65, codec="opus/48000+red", stats=stats,
                  mic_dbfs=-20.0, speaker_dbfs=-30.0, keys=True, voice=voice,
                  sas="apple banana", width=79)
    muted = status_text(muted=True, **common)  # type: ignore[arg-type]
    assert len(muted) <= 79, muted
    assert muted.startswith("connected  1:05  MUTED  "), muted
    assert muted.endswith("m:unmute h:hangup p:hold 0-9*#:keys"), muted
    assert "code:" not in muted and "buf" not in muted  # (cut first)
    held = status_text(muted=False, held="local", on_hold=True, heard="7*", **common)  # type: ignore[arg-type]
    assert held.startswith("connected  on hold (local)  1:05  "), held
    assert "dtmf in 7*" in held and held.endswith("m:mute h:hangup p:resume"), held
    # Wide enough: everything, in the line's order.
    wide = status_text(muted=True, **{**common, "width": 300})  # type: ignore[arg-type]
    assert re.fullmatch(r"connected  1:05  MUTED  opus/48000\+red  rtt 12ms  jit 3.1ms  "
                        r"loss 0.0%  buf 0.0ms  mic \[#+-*\]  spk \[#+-*\]  m:unmute h:hangup "
                        r"p:hold 0-9\*#:keys  aec waiting  code: apple banana", wide), wide


@pytest.mark.e2e
async def test_connected_line_is_followed_by_the_current_state(
        hub: Hub, procs: list[Proc], terminals: list) -> None:  # type: ignore[type-arg]
    """The status line redrawn under "connected to b" says connected, not the
    "connecting" it said before."""
    bob = Proc("listen", "--as", "b", "--server", hub_url(hub), "--auto-accept", "--once",
               "--tone", "440", "--no-audio", *NO_STUN)
    procs.append(bob)
    await bob.wait_for_output("listening as b")
    alice = terminal(terminals, "call", "b", "--as", "a", "--server", hub_url(hub),
                     "--no-audio", "--duration", "1", *NO_STUN)
    assert await finish(alice) == 0
    said = str(alice.before)
    after = said[said.index("connected to b"):].split("\r\n", 1)[1]
    assert after.startswith("connected  0:0"), repr(after[:80])


@pytest.mark.e2e
async def test_json_events_are_not_glued_to_the_status_line(
        hub: Hub, procs: list[Proc], terminals: list) -> None:  # type: ignore[type-arg]
    """--json on a terminal: the status line (stderr) is cleared before each JSON line
    (stdout, the same terminal), so every event starts a line of its own."""
    bob = Proc("listen", "--as", "b", "--server", hub_url(hub), "--auto-accept", "--once",
               "--tone", "440", "--no-audio", *NO_STUN)
    procs.append(bob)
    await bob.wait_for_output("listening as b")
    alice = terminal(terminals, "call", "b", "--as", "a", "--server", hub_url(hub),
                     "--no-audio", "--json", "--duration", "3", *NO_STUN)
    assert await finish(alice) == 0
    said = str(alice.before)
    starts = [m.start() for m in re.finditer(r'\{"time"', said)]
    assert len(starts) >= 4, said  # (state events, a stats event, ended)
    for at in starts:
        before = said[:at]
        assert before.endswith(("\n", "\x1b[K")) or not before, repr(said[at - 80: at + 40])
    assert "connected  0:0" in said  # (there was a status line to clear)


# ------------------------------------------------------------ the call's end ---

@pytest.mark.e2e
async def test_listen_says_where_it_recorded(hub: Hub, procs: list[Proc],
                                             tmp_path: Path) -> None:
    rec = tmp_path / "calls.wav"
    bob = Proc("listen", "--as", "b", "--server", hub_url(hub), "--auto-accept", "--once",
               "--no-audio", "--record", str(rec), *NO_STUN)
    procs.append(bob)
    await bob.wait_for_output("listening as b")
    alice = Proc("call", "b", "--as", "a", "--server", hub_url(hub), "--tone", "440",
                 "--no-audio", "--duration", "1", *NO_STUN)
    procs.append(alice)
    assert await alice.wait() == 0, alice.describe()
    assert await bob.wait() == 0, bob.describe()
    assert re.search(rf"recorded to {re.escape(str(rec))} \([0-9.]+ s\)", bob.stdout), \
        bob.describe()


def test_a_recording_that_stopped_early_is_said(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """--record whose folder went away mid-call: the line at the end says the recording
    stopped and why (a real WavWriter; it said "recorded to" as if all were kept)."""
    from types import SimpleNamespace

    from softphone.cli.calls import say_recorded, unplaced_result
    from softphone.cli.runtime import Output
    from softphone.core.callstate import Outcome
    from softphone.media.recording import WavWriter

    folder = tmp_path / "gone"
    folder.mkdir()
    writer = WavWriter(folder / "a.wav")
    folder.rmdir()
    writer.write(bytes(1920))
    writer.close()
    result = unplaced_result("bob", Outcome.COMPLETED, "hangup")
    say_recorded(Output(json_mode=False), [SimpleNamespace(writer=writer)], result)
    said = capsys.readouterr().out
    assert "it stopped early:" in said and "a.wav" in said, said
