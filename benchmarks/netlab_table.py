"""Calls through the network lab: which scenarios connect, how fast, over which pair.

Builds the lab of ``tests/support/netlab.py`` (network namespaces, NAT
routers, a real coturn, the hub) and prints two Markdown tables.

Paths: one call per scenario (``softphone call`` in one home, ``softphone
listen`` in the other, tones both ways): connected or not, time to connected
and to first audio (the caller's, from call-request), the candidate pair the
caller reported, and whether the tone it heard was right and continuous.

Setup (issue 16): call-request to first audio at the caller, in the four
scenarios with a target, ``--setup-calls`` calls each (median; p90 for the
lossy one), softphone beside stock aiortc. "Stock" is a plain aiortc phone
written here (``stock-call`` / ``stock-listen``, nothing of softphone's
media imported) on the same hub protocol, behaving as the original pages did:
ICE servers fetched and the peer connection made when the call is accepted
(caller) or the offer arrives (callee); its first audio is the first decoded
frame with sound in it (aiortc's own jitter buffer included, as it would play
it). Calls of the two alternate, so both see the same load. The machine's
load average is printed with the figures.

Usage (as root; needs iproute2, iptables, coturn and NetfilterQueue)::

    python benchmarks/netlab_table.py                    # both tables (~12 min)
    python benchmarks/netlab_table.py --runs 3           # each path scenario 3 times
    python benchmarks/netlab_table.py --only setup --setup-calls 20
    python benchmarks/netlab_table.py --only paths
    python benchmarks/netlab_table.py --only events     # switch, rebinding, outage

Network events (issue 16, ``benchmarks/netlab_events.py``): a network switch,
a NAT rebinding and a 30 s outage in the middle of a call, each in a fresh lab;
the time from the event (the outage: the restore) to the far tone back, both
directions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from tests.support.netlab import CallRun, NetLab

#: Tones: the caller sends CALLER_TONE, the callee CALLEE_TONE (as tests/support/netlab.py).
CALLER_TONE = 440.0
CALLEE_TONE = 660.0


@dataclass
class Scenario:
    name: str
    setup: Callable[[NetLab], list[str]]  # configures the lab, returns extra caller args
    setup_timeout: float = 10.0


def _hub(lab_: NetLab, **kwargs: object) -> None:
    lab_.stop_hubs()
    lab_.start_hub(**kwargs)  # type: ignore[arg-type]


def eim_stun(lab_: NetLab) -> list[str]:
    from tests.support.netlab import RouterConfig

    lab_.configure_both(RouterConfig())
    _hub(lab_, turn=())
    return []


def sym_stun(lab_: NetLab) -> list[str]:
    from tests.support.netlab import RouterConfig

    lab_.configure_both(RouterConfig(nat="symmetric"))
    _hub(lab_, turn=())
    return []


def sym_turn(lab_: NetLab) -> list[str]:
    from tests.support.netlab import RouterConfig

    lab_.configure_both(RouterConfig(nat="symmetric"))
    _hub(lab_)
    return []


def tcp_only(lab_: NetLab) -> list[str]:
    from tests.support.netlab import RouterConfig

    lab_.configure_both(RouterConfig(block_udp=True))
    _hub(lab_, stun=False, turn=("tcp",))
    return []


def relay_only(lab_: NetLab) -> list[str]:
    from tests.support.netlab import RouterConfig

    lab_.configure_both(RouterConfig())
    _hub(lab_)
    return ["--relay"]


def lossy(lab_: NetLab) -> list[str]:
    from tests.support.netlab import Impairment, RouterConfig

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
    from tests.support.netlab import RouterConfig

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


@dataclass
class SetupScenario:
    """A row of the setup table: its target is ``statistic`` of first audio <= ``limit_ms``."""

    name: str
    setup: Callable[[NetLab], list[str]]
    limit_ms: float
    statistic: str = "median"  # or "p90"
    setup_timeout: float = 15.0


SETUP_SCENARIOS = [
    SetupScenario("cone (EIM) NAT both, STUN", eim_stun, 150.0),
    SetupScenario("symmetric NAT both, TURN (UDP)", sym_turn, 200.0),
    SetupScenario("UDP blocked, TURN over TCP", tcp_only, 700.0),
    SetupScenario("5% loss, 50 +- 10 ms each way, STUN", lossy, 1000.0, "p90"),
]


def audio_check(run: CallRun) -> str:
    from softphone.media.audio import dominant_frequency, silent_gaps
    from tests.conftest import read_wav

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


def paths_table(the_lab: NetLab, runs: int, duration: float) -> list[str]:
    from tests.support.netlab import run_call

    rows: list[tuple[str, ...]] = []
    for scenario in SCENARIOS:
        for i in range(runs):
            extra = scenario.setup(the_lab)
            run = run_call(the_lab, f"s{len(rows)}", caller_args=extra,
                           duration=duration, setup_timeout=scenario.setup_timeout)
            end = run.caller.ended
            connected = run.caller.candidate_pair is not None
            outcome = f"yes (exit {run.caller.exit_code})" if connected else \
                f"no: {end.get('outcome', '?')} (exit {run.caller.exit_code})"
            reason = "" if connected else f" {str(end.get('reason', ''))[:60]}"
            rows.append((scenario.name + (f" #{i + 1}" if runs > 1 else ""),
                         outcome + reason, fmt(end.get("setup_seconds")),
                         fmt(end.get("first_audio_seconds")), run.caller.pair_text(),
                         audio_check(run) if connected else "-",
                         f"{run.wall_seconds:.1f} s"))
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    header = ("scenario", "connected", "time to connected", "time to first audio",
              "candidate pair (caller: local <-> remote)", "audio heard by caller",
              "caller process")
    return _markdown(header, rows)


def _markdown(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


# ============================================================ the setup table ===


@dataclass
class Figures:
    """First audio (seconds) of the calls that had one, and how many calls there were."""

    first_audio: list[float] = field(default_factory=list)
    calls: int = 0

    def add(self, value: object) -> None:
        self.calls += 1
        if isinstance(value, int | float):
            self.first_audio.append(float(value))

    def statistic(self, which: str) -> float | None:
        values = sorted(self.first_audio)
        if not values:
            return None
        if which == "median":
            return statistics.median(values)
        return values[math.ceil(0.9 * len(values)) - 1]  # p90, nearest rank: 9th of 10

    def text(self) -> str:
        if not self.first_audio:
            return f"- (0/{self.calls} connected)"
        median, p90 = self.statistic("median"), self.statistic("p90")
        assert median is not None and p90 is not None
        missing = "" if len(self.first_audio) == self.calls else \
            f", {len(self.first_audio)}/{self.calls} connected"
        return f"{median * 1000:.0f} ms / {p90 * 1000:.0f} ms{missing}"


def run_stock_call(the_lab: NetLab, name: str, *, duration: float,
                   setup_timeout: float) -> dict[str, Any]:
    """A call between two stock aiortc phones through the lab; the caller's ``ended`` event."""
    here = [sys.executable, str(Path(__file__).resolve())]
    common = ["--server", the_lab.hub_url, "--setup-timeout", str(setup_timeout)]
    callee = the_lab.spawn("b", f"{name}-stock-callee", [
        *here, "stock-listen", "--as", "b", "--tone", str(CALLEE_TONE), *common])
    try:
        the_lab._wait_for(callee, r'"event":\s*"listening"', 20.0)
        caller = the_lab.spawn("a", f"{name}-stock-caller", [
            *here, "stock-call", "b", "--as", "a", "--tone", str(CALLER_TONE),
            "--duration", str(duration), *common])
        try:
            caller.popen.wait(setup_timeout + duration + 30.0)
        except subprocess.TimeoutExpired:
            caller.stop()
    finally:
        callee.stop()
    for line in reversed(caller.stdout().splitlines()):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "ended":
            return event
    return {}


def setup_table(the_lab: NetLab, calls: int, stock: bool, which: str = "") -> list[str]:
    """The setup rows whose name contains ``which`` (every row: "")."""
    from tests.support.netlab import run_call

    load_before = os.getloadavg()
    started = time.monotonic()
    rows: list[tuple[str, ...]] = []
    for scenario in [s for s in SETUP_SCENARIOS if which.lower() in s.name.lower()]:
        extra = scenario.setup(the_lab)
        ours, theirs = Figures(), Figures()
        for i in range(calls):
            run = run_call(the_lab, f"setup{len(rows)}-{i}", caller_args=extra, duration=1.0,
                           setup_timeout=scenario.setup_timeout)
            ours.add(run.caller.ended.get("first_audio_seconds"))
            states = " ".join(f"{e.get('state')} {e.get('t')}" for e in run.caller.events
                              if e.get("event") == "state")
            if stock:
                ended = run_stock_call(the_lab, f"setup{len(rows)}-{i}", duration=1.0,
                                       setup_timeout=scenario.setup_timeout)
                theirs.add(ended.get("first_audio_seconds"))
            print(f"{scenario.name} #{i + 1}: ours {ours.first_audio[-1:]} stock "
                  f"{theirs.first_audio[-1:]} (load {os.getloadavg()[0]:.1f}; ours: {states})",
                  file=sys.stderr, flush=True)
        got = ours.statistic(scenario.statistic)
        met = "-" if got is None else "yes" if got * 1000 <= scenario.limit_ms else "NO"
        rows.append((scenario.name, f"{scenario.statistic} <= {scenario.limit_ms:.0f} ms",
                     ours.text(), theirs.text() if stock else "-", met))
    header = ("scenario", "target (first audio)", "softphone: median / p90",
              "stock aiortc: median / p90", "target met")
    load_after = os.getloadavg()
    return [f"Call-request to first audio at the caller, {calls} calls each "
            f"({(time.monotonic() - started) / 60:.1f} min; load average "
            f"{load_before[0]:.1f} before, {load_after[0]:.1f} after, "
            f"{os.cpu_count()} CPUs):", "", *_markdown(header, rows)]


# ================================================== the stock aiortc phone ===


def _stock_tone(hz: float) -> Any:
    """An aiortc audio track: a sine of ``hz``, 20 ms frames in real time."""
    import fractions

    import av
    import numpy as np
    from aiortc.mediastreams import MediaStreamTrack

    class Tone(MediaStreamTrack):
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self.sent = 0
            self.start: float | None = None

        async def recv(self) -> av.AudioFrame:
            if self.start is None:
                self.start = time.monotonic()
            due = self.start + self.sent * 0.02
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            t = (np.arange(960) + self.sent * 960) / 48000
            samples = (np.sin(2 * np.pi * hz * t) * 8000).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16",
                                               layout="mono")
            frame.sample_rate = 48000
            frame.pts = self.sent * 960
            frame.time_base = fractions.Fraction(1, 48000)
            self.sent += 1
            return frame

    return Tone()


class StockPhone:
    """One side of a stock aiortc call: the hub protocol, one RTCPeerConnection."""

    def __init__(self, args: argparse.Namespace) -> None:
        from softphone.client.signaling import HubClient

        assert "softphone.media.rtc" not in sys.modules, "stock must be plain aiortc"
        self.args = args
        self.hub = HubClient(args.server, args.client_id)
        self.pc: Any = None
        self.peer: str | None = None
        self.t0 = 0.0
        self.connected_at: float | None = None
        self.heard_at: float | None = None
        self.heard = asyncio.Event()
        self.done = asyncio.Event()
        self.tasks: set[asyncio.Task[Any]] = set()

    def event(self, **fields: Any) -> None:
        print(json.dumps(fields), flush=True)

    async def new_pc(self) -> Any:
        from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

        servers = [RTCIceServer(urls=s["urls"], username=s.get("username"),
                                credential=s.get("credential"))
                   for s in await self.hub.ice_servers() if s.get("urls")]
        pc = self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        pc.addTrack(_stock_tone(self.args.tone))

        @pc.on("track")
        def on_track(track: Any) -> None:
            self.spawn(self.listen(track))

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "connected" and self.connected_at is None:
                self.connected_at = time.monotonic()
            elif pc.connectionState == "failed":
                self.done.set()

        return pc

    async def listen(self, track: Any) -> None:
        import numpy as np

        while True:
            frame = await track.recv()
            if self.heard_at is None and np.abs(frame.to_ndarray()).max() > 1000:
                self.heard_at = time.monotonic()
                self.heard.set()

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def send(self, kind: str, data: Any = None) -> None:
        from softphone.core.protocol import make

        assert self.peer is not None
        await self.hub.send(make(kind, self.peer) if data is None else make(kind, self.peer, data))

    async def on_message(self, kind: str, data: Any) -> None:
        from aiortc import RTCSessionDescription

        if kind == "call-request":
            self.t0 = time.monotonic()
            await self.send("call-accept", {"media": "ready"})
        elif kind == "call-accept":  # the caller: offer now
            pc = await self.new_pc()
            await pc.setLocalDescription(await pc.createOffer())
            await self.send("offer", {"type": "offer", "sdp": pc.localDescription.sdp})
        elif kind == "offer" and isinstance(data, dict):
            pc = await self.new_pc()
            await pc.setRemoteDescription(RTCSessionDescription(sdp=data["sdp"], type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            await self.send("answer", {"type": "answer", "sdp": pc.localDescription.sdp})
        elif kind == "answer" and isinstance(data, dict) and self.pc is not None:
            await self.pc.setRemoteDescription(
                RTCSessionDescription(sdp=data["sdp"], type="answer"))
        elif kind in ("hangup", "call-reject"):
            self.done.set()

    async def read(self) -> None:
        from softphone.core.protocol import HubError

        async for message in self.hub.messages():
            if isinstance(message, HubError) or message.sender is None:
                continue
            self.peer = self.peer or message.sender
            self.spawn(self.on_message(message.type, message.data))

    def ended(self) -> dict[str, Any]:
        def since(at: float | None) -> float | None:
            return None if at is None else round(at - self.t0, 3)
        return {"event": "ended", "setup_seconds": since(self.connected_at),
                "first_audio_seconds": since(self.heard_at)}

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.pc is not None:
            await self.pc.close()
        await self.hub.close()


async def stock_call(args: argparse.Namespace) -> int:
    phone = StockPhone(args)
    await phone.hub.connect()
    reader = asyncio.ensure_future(phone.read())
    try:
        phone.peer = args.peer
        phone.t0 = time.monotonic()
        await phone.send("call-request")
        waiters = {asyncio.ensure_future(phone.heard.wait()),
                   asyncio.ensure_future(phone.done.wait())}
        await asyncio.wait(waiters, timeout=args.setup_timeout,
                           return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        if phone.heard_at is not None:
            await asyncio.sleep(args.duration)
        await phone.send("hangup")
        phone.event(**phone.ended())
        return 0 if phone.heard_at is not None else 8
    finally:
        reader.cancel()
        await phone.close()


async def stock_listen(args: argparse.Namespace) -> int:
    phone = StockPhone(args)
    await phone.hub.connect()
    reader = asyncio.ensure_future(phone.read())
    phone.event(event="listening", id=args.client_id)
    try:
        await asyncio.wait_for(phone.done.wait(), args.setup_timeout + 120.0)
        phone.event(**phone.ended())
        return 0
    finally:
        reader.cancel()
        await phone.close()


def stock_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="netlab_table.py stock-call|stock-listen")
    parser.add_argument("mode", choices=["stock-call", "stock-listen"])
    parser.add_argument("peer", nargs="?")
    parser.add_argument("--as", dest="client_id", required=True)
    parser.add_argument("--server", required=True)
    parser.add_argument("--tone", type=float, default=CALLER_TONE)
    parser.add_argument("--duration", type=float, default=1.0)
    parser.add_argument("--setup-timeout", type=float, default=15.0)
    args = parser.parse_args(argv)
    run = stock_call if args.mode == "stock-call" else stock_listen
    return asyncio.run(run(args))


# ====================================================================== main ===


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1].startswith("stock-"):
        return stock_main(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="calls per path scenario")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--setup-calls", type=int, default=10,
                        help="calls per setup scenario, of each phone")
    parser.add_argument("--only", choices=["paths", "setup", "events"])
    parser.add_argument("--no-stock", action="store_true",
                        help="setup table: softphone only")
    parser.add_argument("--setup-scenario", default="", metavar="TEXT",
                        help="setup table: only the rows whose name contains TEXT "
                             "(e.g. 'loss')")
    args = parser.parse_args()
    if not any(args.setup_scenario.lower() in s.name.lower() for s in SETUP_SCENARIOS):
        parser.error(f"--setup-scenario {args.setup_scenario!r} matches no setup row (rows: "
                     + "; ".join(s.name for s in SETUP_SCENARIOS) + ")")
    from tests.support.netlab import lab, missing_requirements

    problems = missing_requirements(delay=True)
    if problems:
        print("cannot run the network lab: " + "; ".join(problems), file=sys.stderr)
        return 1
    out: list[str] = []
    with tempfile.TemporaryDirectory(prefix="netlab-") as tmp:
        if args.only != "events":
            with lab(Path(tmp)) as the_lab:
                the_lab.start_coturn()
                if args.only in (None, "paths"):
                    out += paths_table(the_lab, args.runs, args.duration)
                if args.only in (None, "setup"):
                    out += ["", *setup_table(the_lab, args.setup_calls,
                                             stock=not args.no_stock,
                                             which=args.setup_scenario)]
        if args.only in (None, "events"):  # a fresh lab per run (after the one above)
            from benchmarks.netlab_events import events_table

            out += ["", *events_table(Path(tmp), args.runs)]
    print("\n".join(out).strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
