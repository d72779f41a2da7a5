"""One hub node at 100,000 idle WebSocket connections, and connection churn.

    python benchmarks/hub_scale.py                  # 100,000 idle; churn 200,000 cycles
    python benchmarks/hub_scale.py --quick          # 5,000 idle; churn 20,000 cycles
    python benchmarks/hub_scale.py --count 50000 --only ours --no-churn

The hub runs pinned to CPU 0 (taskset); the client processes and this
coordinator run on CPU 1. ``softphone serve`` raises its own open-file limit
for ``--max-connections`` (softphone/hub/fdlimit.py) and says in one line what
the system refused (printed here); when this script runs as root, the hub's
hard limit is raised first, as a service manager's ``LimitNOFILE=`` would.
Where the limit stays below the count, the count is measured at the limit,
and the output says so.

- idle: ``--count`` connections, each registering an id as docs/protocol.md
  says (``GET /ws?id=``), opened by ``--workers`` client processes (each
  raising its own open-file limit) from many loopback source addresses
  (127.1.x.y, bound before connecting): at most 100 per address, so the hub's
  per-address limit stays on at its default, and no address runs out of its
  ~28,000 ephemeral ports. The clients answer the hub's pings, as phones do.
  Registration is checked on ``/healthz``. Then: hub RSS, and a probe: two
  extra clients exchanging ``--probe-rate`` messages a second for
  ``--probe-seconds`` (longer than a heartbeat period, so the hub's sweeps over
  every connection are in it): one-way latency percentiles.
- the PeerJS server (npm ``peer`` 1.x, installed as benchmarks/hub.py does) at
  the same count, same harness, when node/npm are available.
- churn (our hub, a fresh process): ``--churn`` cycles of connect, register
  (a message to itself comes back), close; RSS at start, after
  ``--churn-mark`` cycles and at the end; the target is the end within 5 % of
  the mark.

Every process it starts is stopped at the end (or on Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import hub as hubbench  # noqa: E402  (benchmarks/hub.py: the PeerJS server, helpers)

HOST = "127.0.0.1"
SERVER_CPU = 0
LOAD_CPU = 1
PER_ADDRESS = 100  # the hub's default --max-per-address
PEERJS_HEARTBEAT = 20.0  # seconds between a client's HEARTBEATs (the server waits 60)

def source_address(i: int) -> str:
    """The i-th client source address: 127.1.0.1, 127.1.0.2, ... (all loopback)."""
    return f"127.1.{i // 250}.{i % 250 + 1}"


def raise_hard_limit(wanted: int) -> None:
    """As root: lift the hard open-file limit (what LimitNOFILE= does for a service)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if os.geteuid() == 0 and hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, wanted))


def own_limit(wanted: int) -> int:
    """This process's open-file limit, raised toward ``wanted`` (a client process)."""
    raise_hard_limit(wanted)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    return float("nan")


def fd_limit_of(pid: int) -> int | None:
    """The soft open-file limit process ``pid`` runs with."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                value = line.split()[3]
                return None if value == "unlimited" else int(value)
    return None


def rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------- servers ---


class Target:
    """A server under test, as a pinned subprocess with its log in a file."""

    name = ""
    kind = ""

    def __init__(self, count: int, log_dir: Path, extra: Sequence[str] = ()) -> None:
        self.count = count
        self.extra = list(extra)
        self.port = hubbench.free_port()
        self.log_path = log_dir / f"{self.kind}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.fd_note = ""

    def argv(self) -> list[str]:
        raise NotImplementedError

    def ws_path(self, client_id: str) -> str:
        raise NotImplementedError

    def start(self) -> None:
        wanted = self.count + 5_000
        taskset = shutil.which("taskset")
        argv = ([taskset, "-c", str(SERVER_CPU)] if taskset else []) + self.argv()

        def setup() -> None:
            if not taskset:
                os.sched_setaffinity(0, {SERVER_CPU})
            raise_hard_limit(wanted)
            self.preexec(wanted)

        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, preexec_fn=setup)

    def preexec(self, wanted: int) -> None:
        """In the child before exec (the server raises its own limit, or we do)."""

    async def wait_ready(self) -> None:
        for _ in range(600):
            with contextlib.suppress(OSError):
                _r, w = await asyncio.open_connection(HOST, self.port)
                w.close()
                await asyncio.sleep(0.3)
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.log()[-1500:]}")
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start")

    async def registered(self) -> int | None:
        """Clients the server says it holds (None: it cannot say)."""
        return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_mb(self) -> float:
        assert self.proc is not None
        return rss_mb(self.proc.pid)

    def cpu(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Ours(Target):
    name = "softphone hub"
    kind = "ours"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "softphone", "serve", "--host", HOST, "--port",
                str(self.port), "--ice-server", "none",
                "--max-connections", str(self.count + 1_000), *self.extra]

    def ws_path(self, client_id: str) -> str:
        return f"/ws?id={client_id}"

    async def wait_ready(self) -> None:
        await super().wait_ready()
        said = [line.split(": ", 1)[-1] for line in self.log().splitlines()
                if "open files:" in line]  # (the hub's line when the system refused)
        assert self.proc is not None
        limit = fd_limit_of(self.proc.pid)
        self.fd_note = said[0] if said else f"the hub raised its open-file limit to {limit}"

    async def registered(self) -> int | None:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(HOST, self.port), 10)
        except (OSError, TimeoutError):
            return None
        try:
            w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            data = await asyncio.wait_for(r.read(), 30)
            return int(json.loads(data.split(b"\r\n\r\n", 1)[1])["clients"])
        except (OSError, TimeoutError, ValueError, KeyError, IndexError):
            return None
        finally:
            w.close()


class PeerJS(Target):
    name = "PeerJS server"
    kind = "peerjs"

    def argv(self) -> list[str]:
        server = hubbench.PeerJS(self.count)  # installs it on first use (npm)
        argv = server.argv()
        argv[argv.index("--port") + 1] = str(self.port)
        return argv

    def preexec(self, wanted: int) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))

    def ws_path(self, client_id: str) -> str:
        return f"/peerjs?key=peerjs&id={client_id}&token=t"


def peerjs_available() -> str | None:
    """Why the PeerJS server cannot be measured here (None: it can)."""
    if shutil.which("node") is None:
        return "node is not installed (apt-get install nodejs npm)"
    if not hubbench.PEERJS_BIN.exists() and shutil.which("npm") is None:
        return "npm is not installed (apt-get install npm)"
    return None


# --------------------------------------------------- client frames ---

_MASK = bytes([0x37, 0xFA, 0x21, 0x3D])


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked frame as clients send (payload under 64 KiB)."""
    n = len(payload)
    head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126
                                     else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    masked = bytes(b ^ _MASK[i % 4] for i, b in enumerate(payload))
    return head + _MASK + masked


def upgrade_request(path: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode()


def server_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Take the complete (unmasked) server frames off the front of ``buf``."""
    out: list[tuple[int, bytes]] = []
    while len(buf) >= 2:
        n = buf[1] & 0x7F
        start = 2
        if n == 126:
            if len(buf) < 4:
                break
            n, start = int.from_bytes(buf[2:4], "big"), 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, start = int.from_bytes(buf[2:10], "big"), 10
        if len(buf) < start + n:
            break
        out.append((buf[0] & 0x0F, bytes(buf[start:start + n])))
        del buf[:start + n]
    return out


# ------------------------------------------------------ idle clients ---


class IdleClient(asyncio.Protocol):
    """One idle phone: upgrade, then only answer pings (and send PeerJS heartbeats)."""

    __slots__ = ("buf", "client_id", "done", "peerjs", "ready", "transport", "upgraded")

    def __init__(self, client_id: str, peerjs: bool, done: asyncio.Future[bool]) -> None:
        self.client_id = client_id
        self.peerjs = peerjs
        self.done = done
        self.ready = False
        self.upgraded = False
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buf.startswith(b"HTTP/1.1 101"):
                if not self.done.done():
                    self.done.set_result(False)
                return
            del self.buf[:end + 4]
            self.upgraded = True
            if not self.peerjs:
                self.ready = True
                self.done.set_result(True)
        for opcode, payload in server_frames(self.buf):
            if opcode == 0x9 and self.transport is not None:
                self.transport.write(client_frame(0xA, payload))
            elif opcode == 0x1 and self.peerjs and not self.ready:
                ok = b'"OPEN"' in payload
                self.ready = ok
                if not self.done.done():
                    self.done.set_result(ok)
            elif opcode == 0x8 and self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ready = False
        if not self.done.done():
            self.done.set_result(False)


async def open_idle(port: int, path: str, source: str, client_id: str, peerjs: bool
                    ) -> IdleClient | None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_IP, 24, 1)  # IP_BIND_ADDRESS_NO_PORT
    try:
        sock.bind((source, 0))
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, (HOST, port)), 30)
    except (OSError, TimeoutError):
        sock.close()
        return None
    done: asyncio.Future[bool] = loop.create_future()
    _t, client = await loop.create_connection(
        lambda: IdleClient(client_id, peerjs, done), sock=sock)
    assert client.transport is not None
    client.transport.write(upgrade_request(path))
    try:
        ok = await asyncio.wait_for(done, 60)
    except TimeoutError:
        ok = False
    if not ok:
        client.transport.abort()
        return None
    return client


async def peerjs_heartbeats(clients: list[IdleClient]) -> None:
    """Every client's HEARTBEAT once per PEERJS_HEARTBEAT seconds, spread evenly."""
    frame = client_frame(0x1, b'{"type":"HEARTBEAT"}')
    slices = 100
    while True:
        for k in range(slices):
            for c in clients[k::slices]:
                if c.ready and c.transport is not None:
                    c.transport.write(frame)
            await asyncio.sleep(PEERJS_HEARTBEAT / slices)


async def worker_idle(args: argparse.Namespace) -> None:
    """A client process: open ids [first, first+n) from its addresses; report; wait.

    At a lower priority than the coordinator (the probe) on the same CPU, as
    benchmarks/hub.py's flooder: answering a burst of pings must not count as
    the hub's latency."""
    os.sched_setaffinity(0, {LOAD_CPU})
    os.nice(10)
    limit = own_limit(args.n + 1_000)
    peerjs = args.kind == "peerjs"
    clients: list[IdleClient] = []
    failed = 0
    sem = asyncio.Semaphore(args.inflight)
    t0 = time.monotonic()

    async def one(i: int) -> None:
        nonlocal failed
        number = args.first + i
        client_id = f"idle{number}"
        path = (f"/peerjs?key=peerjs&id={client_id}&token=t" if peerjs
                else f"/ws?id={client_id}")
        async with sem:
            c = await open_idle(args.port, path, source_address(number // PER_ADDRESS),
                                client_id, peerjs)
        if c is None:
            failed += 1
        else:
            clients.append(c)

    beats = asyncio.create_task(peerjs_heartbeats(clients)) if peerjs else None
    await asyncio.gather(*(one(i) for i in range(args.n)))
    print(json.dumps({"opened": len(clients), "failed": failed, "fd_limit": limit,
                      "seconds": round(time.monotonic() - t0, 2)}), flush=True)
    # Idle until told to go (stdin closes), answering pings meanwhile.
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    alive = sum(1 for c in clients if c.ready)
    if beats is not None:
        beats.cancel()
    for c in clients:
        if c.transport is not None:
            c.transport.abort()
    print(json.dumps({"still_open": alive}), flush=True)


# ---------------------------------------------------------------- churn ---


async def churn_cycle(port: int, source: str, client_id: str) -> bool:
    """Connect, register (a message to itself comes back), close: True if all went."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_IP, 24, 1)
    try:
        sock.bind((source, 0))
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, (HOST, port)), 30)
        reader, writer = await asyncio.open_connection(sock=sock)
    except (OSError, TimeoutError):
        sock.close()
        return False
    try:
        writer.write(upgrade_request(f"/ws?id={client_id}"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        if not head.startswith(b"HTTP/1.1 101"):
            return False
        message = json.dumps({"type": "hangup", "to": client_id}).encode()
        writer.write(client_frame(0x1, message))
        buf = bytearray()
        got: list[tuple[int, bytes]] = []
        while not got:
            chunk = await asyncio.wait_for(reader.read(4096), 30)
            if not chunk:
                return False
            buf += chunk
            got = [f for f in server_frames(buf) if f[0] != 0x9]
        if got[0][0] != 0x1 or b'"from"' not in got[0][1]:
            return False
        writer.write(client_frame(0x8, (1000).to_bytes(2, "big")))
        await asyncio.wait_for(reader.read(), 30)  # the hub's close frame, then its FIN
        return True
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return False
    finally:
        writer.close()


async def worker_churn(args: argparse.Namespace) -> None:
    """A client process for churn: for each line ``N PREFIX`` on stdin, run N cycles."""
    os.sched_setaffinity(0, {LOAD_CPU})
    own_limit(args.inflight * 4 + 1_000)
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(args.inflight)
    base = args.first
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line.strip():
            return
        n_text, prefix = line.split()
        n = int(n_text)
        failed = 0
        t0 = time.monotonic()

        async def one(i: int, prefix: str = prefix) -> None:
            nonlocal failed
            async with sem:
                # Every address in turn: closed connections sit in TIME_WAIT a while.
                ok = await churn_cycle(args.port, source_address(base + i % 2000),
                                       f"{prefix}{i}")
            if not ok:
                failed += 1

        for start in range(0, n, 10_000):  # (not a million coroutines at once)
            await asyncio.gather(*(one(i) for i in range(start, min(n, start + 10_000))))
        print(json.dumps({"done": n, "failed": failed,
                          "seconds": round(time.monotonic() - t0, 2)}), flush=True)


# ----------------------------------------------------------- coordinator ---


class Workers:
    """Client processes on CPU 1, talking JSON lines on stdout."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, args: list[list[str]]) -> None:
        for extra in args:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, __file__, *extra, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, limit=2**20)
            self.procs.append(proc)

    async def read_all(self, within: float) -> list[dict[str, Any]]:
        async def one(p: asyncio.subprocess.Process) -> dict[str, Any]:
            assert p.stdout is not None
            line = await p.stdout.readline()
            if not line:
                return {"error": f"worker exited ({await p.wait()})"}
            result: dict[str, Any] = json.loads(line)
            return result
        return await asyncio.wait_for(asyncio.gather(*(one(p) for p in self.procs)), within)

    async def tell_all(self, lines: Sequence[str]) -> None:
        for p, line in zip(self.procs, lines, strict=True):
            assert p.stdin is not None
            p.stdin.write(line.encode())
            await p.stdin.drain()

    async def close(self) -> None:
        for p in self.procs:
            if p.stdin is not None and not p.stdin.is_closing():
                p.stdin.close()
        for p in self.procs:
            try:
                await asyncio.wait_for(p.wait(), 30)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await p.wait()
        self.procs.clear()


@dataclass
class Probe:
    """Two extra clients; one sends to the other at a paced rate; one-way latency."""

    target: Target

    async def run(self, rate: float, seconds: float
                  ) -> tuple[list[float], int, list[tuple[float, float]]]:
        """(latencies in ms, messages sent, [(seconds into the probe, ms)] of the worst)."""
        import aiohttp

        peerjs = isinstance(self.target, PeerJS)
        base = f"http://{HOST}:{self.target.port}"
        latencies: list[float] = []
        when: list[float] = []
        sent = 0
        t_start = time.perf_counter_ns()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                local_addr=("127.0.0.250", 0))) as session:
            a = await session.ws_connect(base + self.target.ws_path("probe-a"), autoping=True)
            b = await session.ws_connect(base + self.target.ws_path("probe-b"), autoping=True)
            if peerjs:
                for ws in (a, b):
                    await ws.receive(10)  # OPEN

            async def receive() -> None:
                async for msg in b:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    obj = json.loads(msg.data)
                    data = obj.get("payload" if peerjs else "data")
                    if isinstance(data, dict) and "t" in data:
                        latencies.append((time.perf_counter_ns() - data["t"]) / 1e6)
                        when.append((data["t"] - t_start) / 1e9)

            reader = asyncio.create_task(receive())
            loop = asyncio.get_running_loop()
            start = loop.time()
            beat = start
            while loop.time() - start < seconds:
                due = int((loop.time() - start) * rate)
                while sent < due:
                    payload = {"candidate": hubbench.CANDIDATE, "t": time.perf_counter_ns()}
                    obj = ({"type": "CANDIDATE", "dst": "probe-b", "payload": payload} if peerjs
                           else {"type": "candidate", "to": "probe-b", "data": payload})
                    await a.send_str(json.dumps(obj))
                    sent += 1
                if peerjs and loop.time() - beat > 5:
                    beat = loop.time()
                    for ws in (a, b):
                        await ws.send_str('{"type":"HEARTBEAT"}')
                await asyncio.sleep(0.002)
            await asyncio.sleep(1.0)
            reader.cancel()
            await a.close()
            await b.close()
        worst = sorted(zip(when, latencies, strict=True), key=lambda x: -x[1])[:3]
        return latencies, sent, sorted(worst)


def pct(values: list[float], q: float) -> float:
    return hubbench.percentile(values, q)


async def idle_run(make: Callable[..., Target], args: argparse.Namespace,
                   log_dir: Path) -> str:
    target = make(args.count, log_dir, args.serve_arg if make is Ours else ())
    target.start()
    workers = Workers()
    notes: list[str] = []
    try:
        await target.wait_ready()
        await asyncio.sleep(1.0)
        before = target.rss_mb()
        count = args.count
        assert target.proc is not None
        server_fds = fd_limit_of(target.proc.pid)
        if server_fds is not None and server_fds < count + 200:
            count = server_fds - 200  # (its listening socket, logs, the probe)
            notes.append(f"{target.name} runs with an open-file limit of {server_fds:,}: "
                         f"measured at {count:,} connections, not {args.count:,}")
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        per_worker = 25_000 if hard == resource.RLIM_INFINITY else min(25_000, hard - 2_000)
        n_workers = args.workers or max(2, -(-count // per_worker))
        share = -(-count // n_workers)
        plan = []
        first = 0
        while first < count:
            n = min(share, count - first)
            plan.append(["--worker-idle", "--kind", target.kind, "--port", str(target.port),
                         "--first", str(first), "--n", str(n),
                         "--inflight", str(args.inflight)])
            first += n
        t0, cpu0 = time.monotonic(), target.cpu()
        await workers.start(plan)
        reports = await workers.read_all(count / 50 + 300)
        took, cpu_open = time.monotonic() - t0, target.cpu() - cpu0
        opened = sum(r.get("opened", 0) for r in reports)
        failed = sum(r.get("failed", 0) for r in reports)
        registered = await target.registered()
        for _ in range(30):  # registering is asynchronous: let it finish
            if registered is None or registered >= opened:
                break
            await asyncio.sleep(1.0)
            registered = await target.registered()
        await asyncio.sleep(3.0)
        after = target.rss_mb()
        latencies, sent, worst = await Probe(target).run(args.probe_rate, args.probe_seconds)
        rss_probe = target.rss_mb()
        per = (after - before) * 1024 / max(1, opened)
        line = (f"idle {opened:>7,} of {count:,} ({failed} failed)  {target.name:<14} "
                f"RSS {before:6.1f} -> {after:7.1f} MB ({per:4.1f} KB/conn; {rss_probe:.1f} "
                f"after the probe)  opened in {took:5.1f} s ({cpu_open / max(1, opened) * 1e6:.0f}"
                f" us server CPU each)"
                + (f"  registered {registered:,}" if registered is not None else "")
                + f"\n    probe: {len(latencies):,} of {sent:,} messages, one-way p50 "
                f"{pct(latencies, 0.5):.2f} ms  p90 {pct(latencies, 0.9):.2f} ms  p99 "
                f"{pct(latencies, 0.99):.2f} ms  max {max(latencies, default=float('nan')):.1f}"
                f" ms  (over {args.probe_seconds:.0f} s at {args.probe_rate:.0f}/s; worst at "
                + ", ".join(f"{t:.1f} s: {ms:.0f} ms" for t, ms in worst) + ")")
        if target.fd_note:
            line += f"\n    {target.fd_note}"
        line += "".join(f"\n    NOTE: {note}" for note in notes)
        alive = target.proc is not None and target.proc.poll() is None
        if not alive:
            line += f"\n    {target.name} DIED:\n{target.log()[-1500:]}"
        return line
    finally:
        await workers.close()
        target.stop()


async def churn_run(args: argparse.Namespace, log_dir: Path) -> str:
    target = Ours(max(args.inflight * 8, 1_000), log_dir, args.serve_arg)
    target.start()
    workers = Workers()
    try:
        await target.wait_ready()
        await asyncio.sleep(1.0)
        start_rss = target.rss_mb()
        n_workers = args.churn_workers
        plan = [["--worker-churn", "--port", str(target.port), "--first", str(2000 * (k + 1)),
                 "--inflight", str(args.inflight)] for k in range(n_workers)]
        await workers.start(plan)
        done = failed = 0
        marks: list[tuple[int, float, float]] = []
        t0, cpu0 = time.monotonic(), target.cpu()
        for phase, total in enumerate((args.churn_mark, args.churn - args.churn_mark)):
            share = -(-total // n_workers)
            counts = [min(share, max(0, total - k * share)) for k in range(n_workers)]
            await workers.tell_all([f"{n} c{phase}w{k}-\n" for k, n in enumerate(counts)])
            reports = await workers.read_all(total / 20 + 600)
            done += sum(r.get("done", 0) for r in reports)
            failed += sum(r.get("failed", 0) for r in reports)
            await asyncio.sleep(3.0)  # what is closing has closed
            marks.append((done, target.rss_mb(), time.monotonic() - t0))
        cpu_each = (target.cpu() - cpu0) / max(1, done) * 1e6
        (n1, rss1, _), (n2, rss2, t2) = marks
        change = (rss2 - rss1) / rss1 * 100
        verdict = "within 5 %" if abs(change) <= 5 else "MORE THAN 5 %"
        left = await target.registered()
        return (f"churn  {target.name}: RSS {start_rss:.1f} MB at start, {rss1:.1f} MB after "
                f"{n1:,} cycles, {rss2:.1f} MB after {n2:,} ({change:+.1f} %, {verdict}); "
                f"{n2 / t2:,.0f} cycles/s ({cpu_each:.0f} us hub CPU each), {failed} failed, "
                f"{left} clients left")
    finally:
        await workers.close()
        target.stop()


async def main(args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, {LOAD_CPU})
    own_limit(10_000)
    log_dir = Path(tempfile.mkdtemp(prefix="hub-scale-"))
    load = os.getloadavg()
    print(f"# hub_scale: {args.count:,} idle connections, churn {args.churn:,} cycles; server "
          f"on CPU {SERVER_CPU}, clients on CPU {LOAD_CPU}; load average {load[0]:.2f} "
          f"{load[1]:.2f} (before); logs in {log_dir}", flush=True)
    kinds: list[Callable[..., Target]] = []
    if args.only in (None, "ours"):
        kinds.append(Ours)
    if args.only in (None, "peerjs"):
        why = peerjs_available()
        if why is None:
            kinds.append(PeerJS)
        else:
            print(f"# PeerJS server not measured: {why}")
    for make in kinds:
        try:
            print(await idle_run(make, args, log_dir), flush=True)
        except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as exc:
            print(f"idle {make.name}: FAILED: {exc!r}"[:2000], flush=True)
        print(f"# load average now {os.getloadavg()[0]:.2f}", flush=True)
    if args.churn and args.only in (None, "ours"):
        print(await churn_run(args, log_dir), flush=True)
    print(f"# load average after: {os.getloadavg()[0]:.2f}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="100,000 idle WebSocket connections on one softphone hub node (and the "
                    "PeerJS server), probe latency at that count, and connect/register/"
                    "disconnect churn. Only 127.0.0.0/8 is used.",
        epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000,
                        help="idle connections (default 100,000)")
    parser.add_argument("--quick", action="store_true",
                        help="5,000 idle, churn 20,000 cycles (mark 2,000), 10 s probe")
    parser.add_argument("--only", choices=["ours", "peerjs"], help="one server only")
    parser.add_argument("--workers", type=int, default=0,
                        help="idle client processes (default: one per 25,000, at least 2)")
    parser.add_argument("--inflight", type=int, default=32,
                        help="handshakes in flight per client process (default 32)")
    parser.add_argument("--probe-rate", type=float, default=100.0,
                        help="probe messages a second (default 100)")
    parser.add_argument("--probe-seconds", type=float, default=20.0,
                        help="probe duration; over 15 s includes the hub's heartbeat sweeps")
    parser.add_argument("--churn", type=int, default=200_000,
                        help="churn cycles in all (default 200,000; 0: no churn)")
    parser.add_argument("--churn-mark", type=int, default=10_000,
                        help="RSS is taken after this many cycles, and at the end")
    parser.add_argument("--churn-workers", type=int, default=2,
                        help="churn client processes (default 2)")
    parser.add_argument("--no-churn", action="store_true", help="skip the churn run")
    parser.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for `softphone serve` (repeatable), e.g. "
                             "--serve-arg=--heartbeat --serve-arg=30")
    # Internal: client processes.
    parser.add_argument("--worker-idle", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-churn", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="ours", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.count, args.churn, args.churn_mark = 5_000, 20_000, 2_000
        args.probe_seconds = min(args.probe_seconds, 10.0)
    if args.no_churn:
        args.churn = 0
    if args.churn and not 0 < args.churn_mark < args.churn:
        parser.error("--churn-mark must be between 0 and --churn")
    return args


if __name__ == "__main__":
    ns = parse_args()
    try:
        if ns.worker_idle:
            asyncio.run(worker_idle(ns))
        elif ns.worker_churn:
            asyncio.run(worker_churn(ns))
        else:
            asyncio.run(main(ns))
    except KeyboardInterrupt:
        sys.exit(130)
