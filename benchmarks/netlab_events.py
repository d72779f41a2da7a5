"""Network events in the middle of a call (issue 16): how soon the far tone is back.

The events of ``tests/netlab/test_network_events.py``, measured rather than
asserted: a network switch of the caller (new address behind a new NAT), a
NAT rebinding of the callee's router, and a 30 s outage of the callee's home.
Each run is a fresh lab (cone NAT both sides, STUN from the hub), a call of
``softphone call`` and ``softphone listen`` with tones both ways and
recordings, and the event :data:`EVENT_AT` seconds after the caller's media
came up. For each direction: the time from the event (for the outage: from the
restore) to the far tone being back steadily (1 s without a break), read from
what that side recorded; and what the phones reported (``media-restart``
reason and ``gap_ms``, exit code).

The recordings' time 0 is taken to be the caller's ``media`` event, as the
lab's event times are: the callee's recording starts within a few tens of
milliseconds of it, which this figure does not correct.

Stock aiortc has no media restart (its issue #211): after these events its
calls stay silent (the issue measured 14-17 s of silence to the end of the
call), so it has no column here.

Run through ``benchmarks/netlab_table.py --only events`` (as root).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:

    from tests.support.netlab import CallRun, NetLab, Party, TimedEvent

CALLER_TONE = 440.0
CALLEE_TONE = 660.0
#: Seconds after the caller's media came up that the event happens.
EVENT_AT = 3.0
OUTAGE = 30.0
#: The issue's target: far tone back within this of the event (of the restore).
TARGET = 1.5
WINDOW = 0.1
STEADY = 1.0


@dataclass
class EventScenario:
    name: str
    #: Builds what the lab needs in advance; returns the events and the call's duration.
    prepare: Callable[[NetLab], tuple[list[TimedEvent], float]]
    #: Which event the time is measured from (its index).
    measured_from: int = 0


def switch(lab_: NetLab) -> tuple[list[TimedEvent], float]:
    from tests.support.netlab import TimedEvent

    lab_.add_second_network("a")
    return [TimedEvent(EVENT_AT, "network switch", lambda: lab_.switch_network("a"))], 8.0


def rebind(lab_: NetLab) -> tuple[list[TimedEvent], float]:
    from tests.support.netlab import TimedEvent

    return [TimedEvent(EVENT_AT, "NAT rebinding", lambda: lab_.rebind_nat("b"))], 8.0


def outage(lab_: NetLab) -> tuple[list[TimedEvent], float]:
    from tests.support.netlab import TimedEvent

    return [TimedEvent(EVENT_AT, "outage starts", lambda: lab_.start_outage("b")),
            TimedEvent(EVENT_AT + OUTAGE, "outage ends", lambda: lab_.end_outage("b"))], \
        OUTAGE + 8.0


EVENT_SCENARIOS = [
    EventScenario("network switch (caller: new address, new NAT)", switch),
    EventScenario("NAT rebinding (callee's router, new external ports)", rebind),
    EventScenario("30 s outage of the callee's home, then restore", outage, measured_from=1),
]


def tone_back_after(party: Party, expected: float, lost_from: float,
                    measured_from: float) -> str:
    """Seconds from ``measured_from`` until ``party`` heard ``expected`` steadily again
    (after losing it at or after ``lost_from``); "no audible gap" if it never stopped
    (concealment can bridge a gap of a few hundred ms)."""
    from tests.conftest import read_wav
    from tests.support.helpers import tone_windows

    try:
        samples, rate = read_wav(party.recording)
    except (OSError, EOFError, ValueError):
        return "no recording"
    heard = tone_windows(samples, rate, expected, WINDOW)
    start = max(0, int((lost_from - 0.5) / WINDOW))
    silent = np.flatnonzero(~heard[start:])
    if silent.size == 0:
        return "no audible gap"
    lost = start + int(silent[0])
    steady = int(STEADY / WINDOW)
    back = next((i for i in range(lost, heard.size - steady + 1)
                 if heard[i:i + steady].all()), None)
    if back is None:
        return f"never (silent from {lost * WINDOW:.1f} s)"
    return f"{back * WINDOW - measured_from:.1f} s"


def _restarts(party: Party) -> str:
    events: list[dict[str, Any]] = [e for e in party.events if e.get("event") == "media-restart"]
    if not events:
        return "none"
    return ", ".join(f"{e.get('reason')} {e.get('gap_ms')} ms" for e in events)


def _row(scenario: EventScenario, run: CallRun, events: list[TimedEvent],
         label: str) -> tuple[str, ...]:
    lost_from = events[0].done_at or EVENT_AT
    measured = events[scenario.measured_from].done_at or events[scenario.measured_from].at
    return (label,
            tone_back_after(run.caller, CALLEE_TONE, lost_from, measured),
            tone_back_after(run.callee, CALLER_TONE, lost_from, measured),
            f"{_restarts(run.caller)} / {_restarts(run.callee)}",
            f"{run.caller.exit_code} {run.caller.ended.get('outcome', '?')} / "
            f"{run.callee.exit_code} {run.callee.ended.get('outcome', '?')}")


def events_table(workdir: Path, runs: int) -> list[str]:
    """One fresh lab per run; the table as Markdown lines."""
    from tests.support.netlab import lab, run_call_with_events

    rows: list[tuple[str, ...]] = []
    for scenario in EVENT_SCENARIOS:
        for i in range(runs):
            label = scenario.name + (f" #{i + 1}" if runs > 1 else "")
            with lab(workdir / f"events-{len(rows)}") as the_lab:
                the_lab.start_coturn()
                the_lab.start_hub(turn=())
                events, duration = scenario.prepare(the_lab)
                run = run_call_with_events(the_lab, f"ev{len(rows)}", events,
                                           duration=EVENT_AT + duration)
                rows.append(_row(scenario, run, events, label))
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    header = ("event", f"caller hears callee again (target <= {TARGET:g} s)",
              f"callee hears caller again (target <= {TARGET:g} s)",
              "media-restart reported (caller / callee)", "exit, outcome (caller / callee)")
    return ["Far tone back after a network event, from the event (the outage: from "
            "the restore), one call each, cone NAT + STUN:", "",
            "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]
