"""Calls that survive the network (issue 16): a switch, a NAT rebinding, an outage.

Each test builds the network lab (``tests/support/netlab.py``: two homes
behind NAT, the hub and coturn on a public segment), starts a call between
two ``softphone`` processes sending tones both ways and recording what they
hear, and in the middle of the call does one thing to the network:

- **switch**: the caller's host moves to a new private address behind a new
  NAT router with a new public address, and its old address goes away;
- **rebinding**: the callee's router forgets its UDP mappings, so the call's
  packets leave from a new external port and the caller's packets to the old
  one are dropped (the hub connection, over TCP, survives, as it does when
  only a UDP mapping times out);
- **outage**: the callee's home passes nothing at all for 30 s, then works
  again as before.

They assert what the issue asks, but its speed: each side hears the other's
tone again after the event (after the restore, for the outage), steadily to
the end; both exit 0, ``completed``; both report a ``media-restart`` event.
(Stock aiortc has no ICE restart: with it the tone never came back.) How soon
the tone is back (the issue's 1.5 s target) is a figure, measured by
``benchmarks/netlab_events.py`` and printed here, not asserted: it is wall
time, which a loaded machine stretches.

A lab that did not do what it should (the lab's own checks raise
:class:`LabError`) or a call that had no audio before the event
(:class:`Precondition`) fails a test with that error rather than an assertion.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ..conftest import need_command, read_wav
from ..support.helpers import tone_windows
from ..support.netlab import (
    CALLEE_TONE,
    CALLER_TONE,
    REBIND_PORTS,
    ROUTER_WAN,
    SECOND_ROUTER_WAN,
    CallRun,
    LabError,
    NetLab,
    Party,
    TimedEvent,
    run_call_with_events,
    started_lab,
)

#: The issue's target: far tone back within this of the event (or of the restore);
#: printed next to what each run measured, not asserted.
BACK_WITHIN = 1.5
EVENT_AT = 3.0  # seconds after media connected
#: Talk time after the event (after the restore, for the outage): room for the tone
#: to come back (the target: within BACK_WITHIN) and then last to the end.
AFTER = 6.0
WINDOW = 0.1  # seconds per analysis window
#: Continuous tone that counts as "back".
STEADY = 1.0
#: How much of the recording, at least, follows the tone's return and is checked to
#: have it "steadily to the end" (what the recording's last 0.3 s leaves out not
#: counted): a tone back only in the last moments says nothing about it lasting. A
#: length, not a bound on how soon it is back: that has the rest of AFTER.
LASTS = 1.0


class Precondition(Exception):
    """The call did not get as far as the event (not the failure these tests expect)."""


@pytest.fixture
def netlab(tmp_path: Path) -> Iterator[NetLab]:
    with started_lab(tmp_path / "lab", hub=True) as the_lab:  # cone NAT + STUN: the common case
        yield the_lab


def assert_tone_back(party: Party, expected: float, event_at: float, limit: float,
                     what: str) -> float:
    """``party`` heard ``expected`` steadily before ``event_at`` and again after losing
    it, steadily to the end; returns the gap (s), printed against the target
    ``limit`` (a figure, not a check)."""
    samples, rate = read_wav(party.recording)
    heard = tone_windows(samples, rate, expected, WINDOW)
    end = heard.size * WINDOW
    before = heard[int(1.0 / WINDOW):int((event_at - 0.5) / WINDOW)]
    if before.size == 0 or before.mean() < 0.9:
        raise Precondition(f"{party.role} did not hear a steady {expected:g} Hz before "
                           f"{what} ({end:.1f} s recorded)")
    start = int((event_at - 0.5) / WINDOW)
    tail = int(0.3 / WINDOW)  # the call's end: the tone stops as it hangs up
    silent = np.flatnonzero(~heard[start:heard.size - tail])
    if silent.size == 0:
        return 0.0  # not even a dropout
    lost = start + int(silent[0])
    steady = int(STEADY / WINDOW)
    back = next((i for i in range(lost, heard.size - steady + 1)
                 if heard[i:i + steady].all()), None)
    assert back is not None, (
        f"{party.role}: the {expected:g} Hz tone never came back after {what} (silent "
        f"from {lost * WINDOW:.1f} s to the end of the recording at {end:.1f} s)")
    gap = (back - lost) * WINDOW
    print(f"{party.role}: the tone came back {gap:.1f} s after it stopped at {what} "
          f"(target {limit:g} s)")
    rest = heard[back:max(back + 1, heard.size - tail)]
    assert rest.size >= round(LASTS / WINDOW), (
        f"{party.role}: the tone came back at {back * WINDOW:.1f} s, only "
        f"{rest.size * WINDOW:.1f} s before the end of the recording at {end:.1f} s "
        f"(less than {LASTS:g} s to check it stayed)")
    assert rest.mean() >= 0.9, (
        f"{party.role}: after it came back at {back * WINDOW:.1f} s the tone was there "
        f"{rest.mean():.0%} of the time until {end:.1f} s")
    return gap


def assert_survived(run: CallRun, event_at: float, limit: float, what: str) -> None:
    """Audio back both ways (how soon: printed against ``limit``), then a normal end
    with the restart reported."""
    for party, expected in ((run.caller, CALLEE_TONE), (run.callee, CALLER_TONE)):
        assert_tone_back(party, expected, event_at, limit, what)
    for party in (run.caller, run.callee):
        assert "Traceback" not in party.stderr, run.describe()
        assert party.exit_code == 0, run.describe()
        assert party.ended.get("outcome") == "completed", run.describe()
        restarts = [e for e in party.events if e.get("event") == "media-restart"]
        assert restarts, f"{party.role} reported no media-restart event:\n{party.stdout}"
        for event in restarts:
            assert isinstance(event.get("reason"), str), event
            gap_ms = event.get("gap_ms")  # (the phone's wall-clock figure: not bounded)
            assert isinstance(gap_ms, int) and gap_ms >= 0, event


@pytest.mark.netlab
def test_network_switch_mid_call(netlab: NetLab) -> None:
    """The caller moves to a new network behind a new NAT (Wi-Fi -> tether)."""
    netlab.add_second_network("a")  # built in advance: the switch itself is instant

    def switch() -> None:
        netlab.switch_network("a")
        # The lab did it: the new home reaches the hub, from the new public address.
        if not netlab.hub_reachable("a"):
            raise LabError("after the switch, a cannot reach the hub")
        seen = netlab.stun_binding("a")[0]
        if seen != SECOND_ROUTER_WAN["a"]:
            raise LabError(f"after the switch, a is seen at {seen}")

    event = TimedEvent(EVENT_AT, "network switch", switch)
    run = run_call_with_events(netlab, "switch", [event], duration=EVENT_AT + AFTER)
    assert_survived(run, EVENT_AT, BACK_WITHIN, "the network switch")


@pytest.mark.netlab
def test_nat_rebinding_mid_call(netlab: NetLab) -> None:
    """The callee's NAT forgets its UDP mappings: new external ports from then on."""
    need_command("conntrack", "conntrack")
    forgotten = []

    def rebind() -> None:
        forgotten.extend(netlab.rebind_nat("b"))
        media = [m for m in forgotten if m.remote == ROUTER_WAN["a"]]
        if not media:
            raise LabError(f"b had no UDP flow to a's public address: {forgotten}")

    event = TimedEvent(EVENT_AT, "NAT rebinding", rebind)
    run = run_call_with_events(netlab, "rebind", [event], duration=EVENT_AT + AFTER)
    # The lab did it: the flows it forgot left, later, from new external ports.
    old = {(m.host_port, m.remote, m.remote_port): m.public_port for m in forgotten}
    lo, hi = REBIND_PORTS
    # (conntrack keeps an entry ~30 s after its last packet: still listed after the call)
    moved = [m for m in netlab.nat_mappings("b")
             if (m.host_port, m.remote, m.remote_port) in old and lo <= m.public_port <= hi]
    if not moved:
        raise LabError(f"no forgotten flow got a new external port: {forgotten}")
    assert_survived(run, EVENT_AT, BACK_WITHIN, "the NAT rebinding")


OUTAGE = 30.0


@pytest.mark.netlab
def test_30_s_outage_mid_call(netlab: NetLab) -> None:
    """The callee's home is cut off for 30 s (a train in a tunnel), then works again."""

    # The outage lasts from the cut to the restore, not from the end of the check
    # that follows the cut (up to 1 s later: a limit that short failed in CI).
    times: dict[str, float] = {}

    def cut() -> None:
        netlab.start_outage("b")
        times["cut"] = time.monotonic()
        if netlab.hub_reachable("b", timeout=1.0):
            raise LabError("during the outage b still reaches the hub")

    def restore() -> None:
        netlab.end_outage("b")
        times["restored"] = time.monotonic()

    events = [TimedEvent(EVENT_AT, "outage starts", cut),
              TimedEvent(EVENT_AT + OUTAGE, "outage ends", restore)]
    run = run_call_with_events(netlab, "outage", events, duration=EVENT_AT + OUTAGE + AFTER)
    if not netlab.hub_reachable("b"):
        raise LabError("after the outage b cannot reach the hub")
    actual = times["restored"] - times["cut"]
    assert_survived(run, EVENT_AT, actual + BACK_WITHIN, f"a {actual:.0f} s outage")
