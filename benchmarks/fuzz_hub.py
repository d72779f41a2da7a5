"""Fuzz campaign against a live hub: 100,000 generated inputs over raw sockets.

    python benchmarks/fuzz_hub.py              # 100,000 inputs (a few minutes)
    python benchmarks/fuzz_hub.py --quick      # 3,000 inputs (about a minute)
    python benchmarks/fuzz_hub.py --quick --head-timeout 6 --heartbeat 4   # ~15 s
    python benchmarks/fuzz_hub.py --inputs 20000 --seed 7 --concurrency 32

Starts ``softphone serve`` as a subprocess on a free port of 127.0.0.1 (the
only address this script ever connects to), with ``--secret`` so that tokens
are checked, and every other limit at its default. Then it throws inputs at
it over asyncio streams, with its own WebSocket frame encoder (nothing here
would refuse to send a broken frame):

- malformed JSON, wrong message shapes, valid messages (to itself, to ids
  nobody holds), huge JSON (below, between and above the size limits), deep
  nesting (around the interpreter's recursion limit too), invalid UTF-8;
- fragmented messages (with pings inside, and broken sequences), messages
  split into small TCP writes, binary frames, oversized and lying frame
  lengths, control-frame abuse (long, fragmented, unknown opcodes, RSV bits,
  unmasked frames, close frames with bad codes or reasons, ping floods);
- bad and partial upgrades, slowloris request heads (dripped but complete,
  and stalled), garbage and forged tokens, early frames behind the request,
  HTTP garbage on the other routes.

Each input has the answers a correct hub may give (an ``error`` with a given
code, the message delivered back, a pong, a close frame with a given code,
an HTTP status, or the connection closed). A session's inputs go one at a
time, each awaited, so every answer belongs to one input. Counted per class:
answered (error/message/pong/HTTP answer), closed with a code (close frame or
HTTP error status), closed without one (TCP), unanswered (nothing within the
time limit), unexpected (an answer, but not one this input may get).

At the end: the hub must be alive and answer ``/healthz``, its log must hold
no ``Traceback`` and no ERROR line, and its RSS must be back near its level
after a warm-up (the first 2 % of the inputs). Exit code 0 when all holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from fuzz_cases import (  # benchmarks/fuzz_cases.py
    HOST,
    SECRET,
    WEIGHTS,
    Case,
    Generator,
    Session,
    sessions,
    text,
    token_for,
    upgrade_head,
    ws_frame,
    ws_path,
)

HEAD_TIMEOUT = 30.0  # the hub's default time for a request head (serve --head-timeout)
HEARTBEAT = 15.0  # the hub's default heartbeat (serve --heartbeat): drops a stalled frame
ANSWER_TIMEOUT = 5.0
STALL_GRACE = 20.0  # how much longer than the hub should take a stalled input waits
SOURCES = [f"127.0.0.{i}" for i in range(2, 18)]  # spread over the per-address limit

# ------------------------------------------------------------ transport ---


class Conn:
    """A raw TCP connection to the hub, reading server frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, source: str) -> Conn:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IP, 24, 1)  # IP_BIND_ADDRESS_NO_PORT
        sock.bind((source, 0))
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (HOST, port)), ANSWER_TIMEOUT)
        except BaseException:
            sock.close()
            raise
        reader = asyncio.StreamReader(limit=2**22)
        transport, protocol = await loop.create_connection(
            lambda: _ResetIsEof(reader), sock=sock)
        return cls(reader, asyncio.StreamWriter(transport, protocol, reader, loop))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def status(self, within: float) -> str:
        """The HTTP status of the response head: ``http:NNN``, ``eof`` or ``timeout``."""
        try:
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), within)
        except asyncio.IncompleteReadError as exc:
            return _status_of(exc.partial) if exc.partial.startswith(b"HTTP/") else "eof"
        except (ConnectionError, asyncio.LimitOverrunError):
            return "eof"
        except TimeoutError:
            return "timeout"
        return _status_of(head)

    async def event(self, within: float, pings: bool = True) -> str:
        """The next thing the hub says: ``error:CODE``, ``msg``, ``pong``, ``close:CODE``,
        ``eof``, ``timeout`` (a ping from the hub is skipped, and answered if ``pings``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return "timeout"
            try:
                head = await asyncio.wait_for(self.reader.readexactly(2), left)
                n = head[1] & 0x7F
                if n == 126:
                    n = int.from_bytes(await self.reader.readexactly(2), "big")
                elif n == 127:
                    n = int.from_bytes(await self.reader.readexactly(8), "big")
                payload = await asyncio.wait_for(self.reader.readexactly(n), left + 1)
            except (asyncio.IncompleteReadError, ConnectionError):
                return "eof"
            except TimeoutError:
                return "timeout"
            opcode = head[0] & 0x0F
            if opcode == 0x1:
                try:
                    obj = json.loads(payload)
                except ValueError:
                    return "bad-json-from-hub"
                if obj.get("type") == "error" and "from" not in obj:
                    return f"error:{obj.get('data', {}).get('code')}"
                return "msg"
            if opcode == 0xA:
                return "pong"
            if opcode == 0x8:
                return f"close:{int.from_bytes(payload[:2], 'big')}" if len(payload) >= 2 \
                    else "close:1005"
            if opcode == 0x9:
                if pings:
                    with contextlib.suppress(ConnectionError):
                        await self.send(ws_frame(0xA, payload))
                continue
            return f"opcode-{opcode}-from-hub"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


class _ResetIsEof(asyncio.StreamReaderProtocol):
    """A reset connection ends the stream like a FIN: what arrived before it stays
    readable. (asyncio's StreamReader would raise at once, losing a close frame the
    hub sent just before it closed a connection we were still writing to.)"""

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(None)


def _status_of(head: bytes) -> str:
    try:
        return "http:" + head.split(b" ", 2)[1].decode()
    except (IndexError, UnicodeDecodeError):
        return "bad-http-from-hub"


# ------------------------------------------------------------------ hub ---


class HubProcess:
    """``softphone serve`` on a free port of 127.0.0.1, its log in a file."""

    def __init__(self, log_dir: Path, head_timeout: float = HEAD_TIMEOUT,
                 heartbeat: float = HEARTBEAT) -> None:
        self.log_path = log_dir / "hub.log"
        self.port = _free_port()
        self.head_timeout = head_timeout
        self.heartbeat = heartbeat
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "softphone", "serve", "--host", HOST, "--port",
                 str(self.port), "--ice-server", "none", "--secret", SECRET,
                 "--head-timeout", str(self.head_timeout), "--heartbeat", str(self.heartbeat)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})

    async def wait_ready(self) -> None:
        for _ in range(300):
            if await self.healthz() is not None:
                return
            if not self.alive():
                raise SystemExit(f"the hub exited at start:\n{self.log()[-2000:]}")
            await asyncio.sleep(0.1)
        raise SystemExit("the hub did not answer /healthz within 30 s")

    async def healthz(self) -> dict[str, object] | None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, self.port), 5)
        except (OSError, TimeoutError):
            return None
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            data = await asyncio.wait_for(reader.read(), 10)
            body = data.split(b"\r\n\r\n", 1)[1]
            result: dict[str, object] = json.loads(body)
            return result
        except (OSError, TimeoutError, ValueError, IndexError):
            return None
        finally:
            writer.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_mb(self) -> float:
        assert self.proc is not None
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------ campaign ---


@dataclass
class Tally:
    count: Counter[str] = field(default_factory=Counter)
    answered: Counter[str] = field(default_factory=Counter)
    closed_code: Counter[str] = field(default_factory=Counter)
    closed_tcp: Counter[str] = field(default_factory=Counter)
    unanswered: Counter[str] = field(default_factory=Counter)
    unexpected: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    verdicts: Counter[tuple[str, str]] = field(default_factory=Counter)

    def record(self, case: Case, verdict: str) -> None:
        cls = case.cls
        self.count[cls] += 1
        self.verdicts[(case.kind, verdict)] += 1
        if "timeout" in verdict:
            self.unanswered[cls] += 1
        elif any(part.startswith("close:") for part in verdict.split("+")) or (
                verdict.startswith("http:") and not verdict.startswith(("http:2", "http:1"))):
            self.closed_code[cls] += 1
        elif verdict.endswith("eof"):
            self.closed_tcp[cls] += 1
        else:
            self.answered[cls] += 1
        if verdict not in case.expect:
            self.unexpected[cls] += 1
            if len(self.examples[cls]) < 5:
                self.examples[cls].append(
                    f"{case.kind}: got {verdict}, expected one of {sorted(case.expect)}")

    @property
    def total(self) -> int:
        return sum(self.count.values())


async def run_session(port: int, source: str, session: Session, tally: Tally,
                      stall_timeout: float) -> None:
    """Run a session's inputs; those not sent because the connection ended early go
    again on a new connection with the same id. (``stall_timeout``: how long a stalled
    input waits for the hub to close it.)"""
    if session.conn_case is not None:
        case = session.conn_case
        tally.record(case, await run_connection_case(port, source, case, stall_timeout))
        return
    left = session.cases
    while left:
        left = await _run_cases(port, source, session.me, left, tally)


async def _run_cases(port: int, source: str, me: str, cases: list[Case],
                     tally: Tally) -> list[Case]:
    try:
        conn = await Conn.open(port, source)
    except (OSError, TimeoutError):
        for case in cases:
            tally.record(case, "timeout")
        return []
    try:
        await conn.send(upgrade_head(ws_path(me, token_for(me))))
        status = await conn.status(ANSWER_TIMEOUT)
        if status != "http:101":
            for case in cases:
                tally.record(case, f"session-{status}")
            return []
        for i, case in enumerate(cases):
            frames = case.frames
            try:
                if case.split:
                    data = b"".join(frames)
                    i = 0
                    while i < len(data):
                        step = random.randint(1, 7)
                        await conn.send(data[i:i + step])
                        i += step
                        await asyncio.sleep(0)
                    sending = None
                else:  # read while it is sent: a hub may answer (and close) before the end
                    sending = asyncio.create_task(conn.send(b"".join(frames)))
            except ConnectionError:
                tally.record(case, "eof")
                return cases[i + 1:]
            events = [await conn.event(ANSWER_TIMEOUT) for _ in range(case.replies)]
            if sending is not None:
                with contextlib.suppress(ConnectionError, TimeoutError):
                    await asyncio.wait_for(sending, ANSWER_TIMEOUT)
            tally.record(case, "+".join(events))
            if case.fatal or any(e.startswith(("close:", "eof", "timeout")) for e in events):
                return cases[i + 1:]
        return []
    finally:
        conn.close()


async def run_connection_case(port: int, source: str, case: Case,
                              stall_timeout: float) -> str:
    try:
        conn = await Conn.open(port, source)
    except (OSError, TimeoutError):
        return "timeout"
    try:
        head = case.head
        if case.drip:
            pieces = max(2, min(len(head), 40))
            step = len(head) // pieces + 1
            for i in range(0, len(head), step):
                await conn.send(head[i:i + step])
                await asyncio.sleep(case.drip / pieces)
        else:
            await conn.send(head)
        if case.half_close:
            conn.writer.write_eof()
        if case.stall and case.after_101 != "read":  # the hub must close it
            return await conn.status(stall_timeout)
        timeout = stall_timeout if case.stall else ANSWER_TIMEOUT
        status = await conn.status(timeout)
        if status != "http:101":
            return status
        if case.after_101 == "msg":
            me = _query_id(head)
            await conn.send(text(json.dumps({"type": "hangup", "to": me})))
            return "101+" + await conn.event(ANSWER_TIMEOUT)
        if case.after_101 == "read":  # (a stalled frame must not be followed by a pong)
            return "101+" + await conn.event(timeout, pings=not case.stall)
        events = [await conn.event(ANSWER_TIMEOUT)]
        if events[0].startswith("error:"):
            events.append(await conn.event(ANSWER_TIMEOUT))
        elif case.after_101 == "either":
            me = _query_id(head)
            await conn.send(text(json.dumps({"type": "hangup", "to": me})))
            events = [await conn.event(ANSWER_TIMEOUT)]
        return "+".join(["101", *events])
    except ConnectionError:
        return "eof"
    finally:
        conn.close()


def _query_id(head: bytes) -> str:
    path = head.split(b" ", 2)[1].decode()
    query = path.partition("?")[2]
    for part in query.split("&"):
        if part.startswith("id="):
            return part[3:]
    return ""


async def campaign(args: argparse.Namespace) -> int:
    log_dir = Path(tempfile.mkdtemp(prefix="fuzz-hub-"))
    hub = HubProcess(log_dir, args.head_timeout, args.heartbeat)
    hub.start()
    try:
        return await _campaign(args, hub)
    finally:
        hub.stop()
        print(f"# hub log: {hub.log_path}")


async def _campaign(args: argparse.Namespace, hub: HubProcess) -> int:
    await hub.wait_ready()
    rss_start = hub.rss_mb()
    print(f"# fuzz campaign: {args.inputs:,} inputs, seed {args.seed}, concurrency "
          f"{args.concurrency}, hub pid {hub.proc.pid if hub.proc else '?'} on "
          f"{HOST}:{hub.port}; load average {os.getloadavg()[0]:.2f}", flush=True)
    gen = Generator(args.seed)
    tally = Tally()
    # A stalled head is closed after the head timeout, a stalled frame (the client
    # answers no ping meanwhile) after 1 to 1.5 heartbeats.
    stall_timeout = max(args.head_timeout, 1.5 * args.heartbeat) + STALL_GRACE
    pending = sessions(gen, args.inputs)
    warm_at = max(1, args.inputs // 50)
    rss_warm: float | None = None
    health_failures = 0
    started = time.monotonic()
    deadline = started + args.max_seconds
    stalls: set[asyncio.Task[None]] = set()
    number = 0
    step = max(1, args.inputs // 10)
    next_report = step

    async def worker() -> None:
        nonlocal number, rss_warm, next_report
        while time.monotonic() < deadline:
            session = next(pending, None)
            number += 1
            n = number
            if session is None:
                return
            source = SOURCES[n % len(SOURCES)]
            if session.conn_case is not None and session.conn_case.stall:
                # Takes the hub's timeout (30 s): run aside, without holding a worker.
                task = asyncio.create_task(run_session(hub.port, source, session, tally,
                                                       stall_timeout))
                stalls.add(task)
                task.add_done_callback(stalls.discard)
                continue
            await run_session(hub.port, source, session, tally, stall_timeout)
            done = tally.total
            if rss_warm is None and done >= warm_at:
                rss_warm = hub.rss_mb()
            if done >= next_report:
                next_report += step
                print(f"  {done:>7,} inputs  {time.monotonic() - started:6.1f} s  hub RSS "
                      f"{hub.rss_mb():6.1f} MB  alive {hub.alive()}", flush=True)

    async def watchdog() -> None:
        nonlocal health_failures
        while True:
            await asyncio.sleep(5)
            if await hub.healthz() is None:
                health_failures += 1

    watch = asyncio.create_task(watchdog())
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    if stalls:
        await asyncio.gather(*stalls)
    watch.cancel()
    elapsed = time.monotonic() - started
    await asyncio.sleep(2.0)  # let the hub finish closing what is closing
    health = await hub.healthz()
    rss_end = hub.rss_mb()
    alive = hub.alive()
    return report(args, tally, hub, elapsed, rss_start, rss_warm, rss_end, alive, health,
                  health_failures)


def report(args: argparse.Namespace, tally: Tally, hub: HubProcess, elapsed: float,
           rss_start: float, rss_warm: float | None, rss_end: float, alive: bool,
           health: dict[str, object] | None, health_failures: int) -> int:
    print()
    print(f"{'input class':<16} {'count':>7} {'answered':>9} {'closed+code':>12} "
          f"{'closed(tcp)':>11} {'unanswered':>10} {'unexpected':>10}")
    for cls in WEIGHTS:
        if not tally.count[cls]:
            continue
        print(f"{cls:<16} {tally.count[cls]:>7,} {tally.answered[cls]:>9,} "
              f"{tally.closed_code[cls]:>12,} {tally.closed_tcp[cls]:>11,} "
              f"{tally.unanswered[cls]:>10,} {tally.unexpected[cls]:>10,}")
    unanswered = sum(tally.unanswered.values())
    unexpected = sum(tally.unexpected.values())
    print(f"{'total':<16} {tally.total:>7,} {sum(tally.answered.values()):>9,} "
          f"{sum(tally.closed_code.values()):>12,} {sum(tally.closed_tcp.values()):>11,} "
          f"{unanswered:>10,} {unexpected:>10,}")
    for cls, lines in tally.examples.items():
        for line in lines:
            print(f"  unexpected [{cls}] {line}")
    if args.verdicts:
        for (kind, verdict), n in sorted(tally.verdicts.items()):
            print(f"  {kind:<28} {verdict:<40} {n:>6}")
    bad_lines, groups = log_problems(hub.log())
    warm = rss_warm if rss_warm is not None else rss_start
    rss_ok = rss_end <= warm * 1.10 + 2.0
    print()
    print(f"inputs {tally.total:,} in {elapsed:.1f} s ({tally.total / elapsed:,.0f}/s); "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"crashes: {0 if alive else 1} (hub alive: {alive}; /healthz at the end: "
          f"{health}; /healthz failures during the run: {health_failures})")
    print(f"unanswered: {unanswered}; unexpected answers: {unexpected}")
    print(f"hub log: {len(bad_lines)} Traceback/ERROR lines" + "".join(
        f"\n  {n:>6} x {what[:160]}" for what, n in groups.most_common(10)))
    print(f"hub RSS: {rss_start:.1f} MB at start, {warm:.1f} MB after warm-up, "
          f"{rss_end:.1f} MB at the end ({'OK' if rss_ok else 'HIGHER'}: "
          f"limit warm-up + 10 % + 2 MB)")
    ok = alive and health is not None and not unanswered and not unexpected \
        and not bad_lines and rss_ok and tally.total == args.inputs
    if tally.total != args.inputs:
        print(f"INCOMPLETE: {tally.total} of {args.inputs} inputs in --max-seconds "
              f"{args.max_seconds}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def log_problems(log: str) -> tuple[list[str], Counter[str]]:
    """Lines of the hub's log that show an error or a traceback, and the problems
    grouped: the logged message with the exception that ended its traceback."""
    lines = log.splitlines()
    bad = [line for line in lines
           if "Traceback" in line or " ERROR " in line or " CRITICAL " in line
           or "Exception in" in line or "exception was never retrieved" in line]
    groups: Counter[str] = Counter()
    current: str | None = None
    last = ""
    for line in [*lines, "2000-01-01 00:00:00,000 END"]:
        starts = line[:4].isdigit() and line[4:5] == "-"
        if starts or not line.strip():
            if current is not None:
                groups[f"{current} -> {last.strip()}" if last else current] += 1
            current, last = None, ""
        if starts and (" ERROR " in line or " CRITICAL " in line):
            current = re.sub(r"\d+\.\d+\.\d+\.\d+(:\d+)?", "<addr>",
                             line.split(" ", 3)[-1])[:100]
        elif current is not None and line and not line.startswith((" ", "Traceback")):
            last = line
    return bad, groups


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Fuzz a live softphone hub on 127.0.0.1 with generated frames and "
                    "handshakes; prints a table per input class and exits 0 if every "
                    "input was answered or closed as it should be, the hub survived with a "
                    "clean log, and its memory came back.",
        epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=100_000,
                        help="inputs to generate (default 100,000)")
    parser.add_argument("--quick", action="store_true", help="3,000 inputs")
    parser.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    parser.add_argument("--concurrency", type=int, default=48,
                        help="sessions in flight (default 48; stalled heads run aside)")
    parser.add_argument("--max-seconds", type=float, default=1200.0,
                        help="stop starting new inputs after this long (default 1200)")
    parser.add_argument("--head-timeout", type=float, default=HEAD_TIMEOUT,
                        help="the hub's --head-timeout: how long stalled request heads "
                             "take to be closed (default 30; a shorter one makes a "
                             "short run shorter; keep it above 3 s, the longest drip of a "
                             "complete head)")
    parser.add_argument("--heartbeat", type=float, default=HEARTBEAT,
                        help="the hub's --heartbeat: a stalled frame is dropped after 1 to "
                             "1.5 of them (default 15)")
    parser.add_argument("--verdicts", action="store_true",
                        help="also print every (input kind, verdict) pair seen")
    args = parser.parse_args()
    if args.quick:
        args.inputs = 3_000
    try:
        sys.exit(asyncio.run(campaign(args)))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
