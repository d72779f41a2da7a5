"""DTMF between two CLI phones (real processes, real hub): ``call --dtmf`` to ``listen --json``."""

from __future__ import annotations

import json
from typing import Any

from softphone.hub.server import Hub

from ..conftest import Proc, hub_url


def events(text: str, kind: str) -> list[dict[str, Any]]:
    out = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [e for e in out if e.get("event") == kind]


async def test_call_presses_keys_and_listen_hears_each_once(hub: Hub, procs: list[Proc]
                                                           ) -> None:
    bob = Proc("listen", "--as", "bob", "--server", hub_url(hub), "--auto-accept", "--once",
               "--json", "--tone", "660", "--no-audio")
    procs.append(bob)
    await bob.wait_for_output('"listening"', within=30)
    alice = Proc("call", "bob", "--as", "alice", "--server", hub_url(hub), "--tone", "440",
                 "--dtmf", "12#", "--duration", "2.5", "--json", "--no-audio")
    procs.append(alice)
    assert await alice.wait(within=30) == 0, alice.stderr
    assert await bob.wait(within=15) == 0, bob.stderr
    heard = events(bob.stdout, "dtmf")
    assert [(e["digit"], e["duration_ms"], e["peer"]) for e in heard] == [
        ("1", 100, "alice"), ("2", 100, "alice"), ("#", 100, "alice")]
    assert [e["digit"] for e in events(alice.stdout, "dtmf-sent")] == ["1", "2", "#"]
    assert "sent DTMF 12# to bob" in alice.stderr
    assert "DTMF # from alice (100 ms)" in bob.stderr
    # Three separate digits, in order, each its full 100 ms: the gap between tones
    # kept them distinct. (How far apart they are on the wire is checked in media
    # time, on the RTP timestamps: tests/media/test_dtmf_rtp.py; not here, by the
    # wall clock, which a loaded machine stretches.)


async def test_bad_keys_are_a_one_line_usage_error(hub: Hub) -> None:
    proc = Proc("call", "bob", "--as", "alice", "--server", hub_url(hub), "--dtmf", "12x")
    assert await proc.wait(within=30) == 2
    assert "bad DTMF character 'x'" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_max_calls_options_that_do_not_go_together(hub: Hub) -> None:
    for extra, message in ((["--max-calls", "3"], "needs --auto-accept"),
                           (["--max-calls", "3", "--auto-accept", "--once"], "--once"),
                           (["--max-calls", "0", "--auto-accept"], "--max-calls")):
        proc = Proc("listen", "--as", "bot", "--server", hub_url(hub), *extra)
        assert await proc.wait(within=30) == 2, proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr
