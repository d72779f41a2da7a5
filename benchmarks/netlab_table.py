"""Calls through the network lab: which scenarios connect, how fast, over which pair.

Builds the lab of ``tests/netlab.py`` (network namespaces, NAT routers, a
real coturn, the hub), runs one call per scenario (``softphone call`` in one
home, ``softphone listen`` in the other, tones both ways) and prints a
Markdown table: scenario, connected or not, time to connected and to first
audio (the caller's, from call-request), the candidate pair the caller
reported, and whether the tone it heard was right and continuous.

Usage (as root; needs iproute2, iptables, coturn and NetfilterQueue)::

    python benchmarks/netlab_table.py            # every scenario, once (~1.5 min)
    python benchmarks/netlab_table.py --runs 3   # each scenario 3 times
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from softphone.media.audio import dominant_frequency, silent_gaps  # noqa: E402
from tests.conftest import read_wav  # noqa: E402
from tests.support.netlab import (  # noqa: E402
    CALLEE_TONE,
    CallRun,
    Impairment,
    NetLab,
    RouterConfig,
    lab,
    missing_requirements,
    run_call,
)


@dataclass
class Scenario:
    name: str
    setup: Callable[[NetLab], list[str]]  # configures the lab, returns extra caller args
    setup_timeout: float = 10.0


def _hub(lab_: NetLab, **kwargs: object) -> None:
    lab_.stop_hubs()
    lab_.start_hub(**kwargs)  # type: ignore[arg-type]


def eim_stun(lab_: NetLab) -> list[str]:
    lab_.configure_both(RouterConfig())
    _hub(lab_, turn=())
    return []


def sym_stun(lab_: NetLab) -> list[str]:
    lab_.configure_both(RouterConfig(nat="symmetric"))
    _hub(lab_, turn=())
    return []


def sym_turn(lab_: NetLab) -> list[str]:
    lab_.configure_both(RouterConfig(nat="symmetric"))
    _hub(lab_)
    return []


def tcp_only(lab_: NetLab) -> list[str]:
    lab_.configure_both(RouterConfig(block_udp=True))
    _hub(lab_, stun=False, turn=("tcp",))
    return []


def relay_only(lab_: NetLab) -> list[str]:
    lab_.configure_both(RouterConfig())
    _hub(lab_)
    return ["--relay"]


def lossy(lab_: NetLab) -> list[str]:
    bad = Impairment(loss=0.05, delay_ms=50.0, jitter_ms=10.0)
    lab_.configure_both(RouterConfig())
    lab_.configure("a", RouterConfig(up=bad, down=bad))
    _hub(lab_, turn=())
    return []


def lossy_turn(lab_: NetLab) -> list[str]:
    lossy(lab_)
    _hub(lab_)
    return ["--relay"]


def expired_creds(lab_: NetLab) -> list[str]:
    lab_.configure_both(RouterConfig())
    _hub(lab_, turn=())
    username, credential = lab_.turn_credentials("a", ttl=-60.0)
    return ["--relay", "--ice-server", lab_.turn_url(), "--ice-username", username,
            "--ice-credential", credential]


SCENARIOS = [
    Scenario("EIM NAT both, STUN only", eim_stun),
    Scenario("symmetric NAT both, STUN only", sym_stun, setup_timeout=4.0),
    Scenario("symmetric NAT both, TURN (UDP) from the hub", sym_turn),
    Scenario("UDP blocked, TURN over TCP", tcp_only, setup_timeout=15.0),
    Scenario("EIM NAT, caller --relay", relay_only),
    Scenario("5% loss, 50 +- 10 ms each way, STUN", lossy, setup_timeout=15.0),
    Scenario("5% loss, 50 +- 10 ms each way, --relay", lossy_turn, setup_timeout=15.0),
    Scenario("expired TURN credentials, --relay", expired_creds, setup_timeout=60.0),
]


def audio_check(run: CallRun) -> str:
    try:
        samples, rate = read_wav(run.caller.recording)
    except (OSError, EOFError):
        return "-"
    body = samples[rate // 2:]
    if body.size < rate:
        return "-"
    freq = dominant_frequency(body, rate)
    gaps = silent_gaps(body, rate)
    verdict = "ok" if abs(freq - CALLEE_TONE) < 5.0 else "WRONG"
    return f"{verdict} {freq:.0f} Hz, longest gap {max(gaps, default=0) * 1000:.0f} ms"


def fmt(x: object) -> str:
    return f"{x:.2f} s" if isinstance(x, int | float) else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--duration", type=float, default=3.0)
    args = parser.parse_args()
    problems = missing_requirements(delay=True)
    if problems:
        print("cannot run the network lab: " + "; ".join(problems), file=sys.stderr)
        return 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="netlab-") as tmp, lab(Path(tmp)) as the_lab:
        the_lab.start_coturn()
        for scenario in SCENARIOS:
            for i in range(args.runs):
                extra = scenario.setup(the_lab)
                run = run_call(the_lab, f"s{len(rows)}", caller_args=extra,
                               duration=args.duration, setup_timeout=scenario.setup_timeout)
                end = run.caller.ended
                connected = run.caller.candidate_pair is not None
                outcome = f"yes (exit {run.caller.exit_code})" if connected else \
                    f"no: {end.get('outcome', '?')} (exit {run.caller.exit_code})"
                reason = "" if connected else f" {str(end.get('reason', ''))[:60]}"
                rows.append((scenario.name + (f" #{i + 1}" if args.runs > 1 else ""),
                             outcome + reason, fmt(end.get("setup_seconds")),
                             fmt(end.get("first_audio_seconds")), run.caller.pair_text(),
                             audio_check(run) if connected else "-",
                             f"{run.wall_seconds:.1f} s"))
                print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    header = ("scenario", "connected", "time to connected", "time to first audio",
              "candidate pair (caller: local <-> remote)", "audio heard by caller",
              "caller process")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
