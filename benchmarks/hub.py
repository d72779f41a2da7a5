"""Hub load benchmark: softphone's hub against the PeerJS server, same harness.

    python benchmarks/hub.py                 # every scenario, both servers
    python benchmarks/hub.py --quick         # shorter runs, 2,000 idle connections
    python benchmarks/hub.py --only ours     # skip the PeerJS server
    python benchmarks/hub.py --bare          # also a bare aiohttp relay (no checks)

The server under test runs as a subprocess pinned to CPU 0; this load
generator (and the flooding process) run on CPU 1. Scenarios:

- relay: 1, 10, 100 client pairs, both sides sending as fast as a window of
  in-flight messages allows (offer/candidate mix: one 1.5 KB offer per nine
  150-byte candidates). Throughput, server CPU per relayed message, p50/p99
  latency.
- steady: 200 clients, 10,000 msg/s in total, paced; p50/p99 latency.
- flood: 198 clients at 5,000 msg/s in total while another process floods
  one victim as fast as it can; p50/p99 of the 198 well-behaved clients.
- idle: N connections (10,000 by default) from 100 loopback addresses (so the
  hub's per-address limit of 100 stays on); server RSS before and after.

Every relayed message carries (sender, sequence number, send time): the
receiver checks it came from its partner (misroute), in sequence (loss,
duplicate). The generator's own CPU use is printed; above ~90 % of its core
the figures measure the generator, and the script says so.

Our hub runs with every check on (rate limit, sizes, per-address and total
connection limits, metrics). For the relay scenario its per-connection rate
limit is raised to 10^6 msg/s (still checked), since one pair sends far more
than a phone ever does; in steady/flood/idle it keeps its defaults.
The PeerJS server (npm ``peer`` 1.x) is installed into benchmarks/.peerjs on
first use; it needs a HEARTBEAT every few seconds and ``--concurrent_limit``
above the idle count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
PEERJS_DIR = HERE / ".peerjs"
PEERJS_BIN = PEERJS_DIR / "node_modules" / "peer" / "dist" / "bin" / "peerjs.js"
SERVER_CPU = 0
LOAD_CPU = 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
OFFER_SDP = "v=0\r\n" + "a=candidate:1 1 udp 2130706431 192.0.2.1 50000 typ host\r\n" * 27
CANDIDATE = "candidate:842163049 1 udp 1677729535 192.0.2.1 50000 typ srflx raddr 0.0.0.0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def spawn(argv: list[str], setup: Callable[[], None]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=setup)


def _pin_flooder() -> None:
    """The flooder shares the load CPU, at a lower priority than the measuring clients."""
    os.sched_setaffinity(0, {LOAD_CPU})
    os.nice(10)


def _pin_server() -> None:
    os.sched_setaffinity(0, {SERVER_CPU})
    raise_fd_limit()


# ----------------------------------------------------------------- servers ---


class Server:
    """A server under test, as a pinned subprocess."""

    name = ""

    def __init__(self, idle: int) -> None:
        self.port = free_port()
        self.idle = idle
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def ws_url(self, client_id: str) -> str:
        raise NotImplementedError

    def encode(self, to: str, kind: str, payload: dict[str, Any]) -> str:
        raise NotImplementedError

    def decode(self, text: str) -> tuple[str, dict[str, Any]] | None:
        """(sender, payload) of a relayed message; None for anything else."""
        raise NotImplementedError

    heartbeat: str | None = None
    greeting = False

    async def start(self) -> None:
        self.proc = spawn(self.argv(), _pin_server)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), 0.2):
                await asyncio.sleep(0.3)
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")


class Ours(Server):
    name = "softphone hub"

    def __init__(self, idle: int, relay_rate: bool = False) -> None:
        super().__init__(idle)
        self.relay_rate = relay_rate

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "softphone", "serve", "--port", str(self.port),
                "--ice-server", "none", "--max-connections", str(max(20_000, self.idle + 500))]
        if self.relay_rate:
            argv += ["--rate", "1000000", "--burst", "1000000"]
        return argv

    def ws_url(self, client_id: str) -> str:
        return f"http://127.0.0.1:{self.port}/ws?id={client_id}"

    def encode(self, to: str, kind: str, payload: dict[str, Any]) -> str:
        return json.dumps({"type": kind, "to": to, "data": payload}, separators=(",", ":"))

    def decode(self, text: str) -> tuple[str, dict[str, Any]] | None:
        obj = json.loads(text)
        if obj.get("type") == "error":
            return None
        return obj["from"], obj["data"]


class Bare(Ours):
    """A bare aiohttp relay with no checks: what the framework itself costs."""

    name = "bare aiohttp"

    def argv(self) -> list[str]:
        return [sys.executable, __file__, "--bare-server", str(self.port)]


def bare_server(port: int) -> None:
    from aiohttp import web

    clients: dict[str, web.WebSocketResponse] = {}

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        me = request.query["id"]
        clients[me] = ws
        try:
            async for frame in ws:
                obj = json.loads(frame.data)
                obj["from"] = me
                peer = clients.get(obj["to"])
                if peer is not None:
                    await peer.send_str(json.dumps(obj))
        finally:
            if clients.get(me) is ws:
                del clients[me]
        return ws

    app = web.Application()
    app.add_routes([web.get("/ws", ws_handler)])
    try:  # the same event loop as `softphone serve` (uvloop when installed)
        import uvloop
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=loop)


class PeerJS(Server):
    name = "PeerJS server"
    heartbeat = '{"type":"HEARTBEAT"}'
    greeting = True

    def argv(self) -> list[str]:
        install_peerjs()
        node = shutil.which("node") or "node"
        return [node, str(PEERJS_BIN), "--port", str(self.port), "--host", "127.0.0.1",
                "--concurrent_limit", str(max(20_000, self.idle + 500))]

    def ws_url(self, client_id: str) -> str:
        return f"http://127.0.0.1:{self.port}/peerjs?key=peerjs&id={client_id}&token=t"

    def encode(self, to: str, kind: str, payload: dict[str, Any]) -> str:
        return json.dumps({"type": kind.upper(), "dst": to, "payload": payload},
                          separators=(",", ":"))

    def decode(self, text: str) -> tuple[str, dict[str, Any]] | None:
        obj = json.loads(text)
        if obj.get("type") not in ("OFFER", "CANDIDATE"):
            return None
        return obj["src"], obj["payload"]


def install_peerjs() -> None:
    if PEERJS_BIN.exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("the PeerJS anchor needs npm: apt-get install npm")
    PEERJS_DIR.mkdir(exist_ok=True)
    (PEERJS_DIR / "package.json").write_text('{"private": true}\n')
    subprocess.run([npm, "install", "--no-audit", "--no-fund", "peer@1"], cwd=PEERJS_DIR,
                   check=True, stdout=subprocess.DEVNULL)


# --------------------------------------------------------------- clients ---


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    misrouted: int = 0
    refused: int = 0

    def check(self) -> str:
        bad = self.lost + self.duplicated + self.misrouted
        return "ok" if bad == 0 else (f"LOST {self.lost} DUP {self.duplicated} "
                                      f"MISROUTED {self.misrouted}")


class Client:
    def __init__(self, server: Server, client_id: str, partner: str, tally: Tally | None,
                 session: aiohttp.ClientSession) -> None:
        self.server = server
        self.id = client_id
        self.partner = partner
        self.tally = tally
        self.session = session
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.sent = 0
        self.expected = 0
        self.window: asyncio.Semaphore | None = None
        self.peer: Client | None = None
        self._reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self.ws = await self.session.ws_connect(self.server.ws_url(self.id), compress=0,
                                                autoping=True, max_msg_size=0)
        if self.server.greeting:
            msg = await self.ws.receive(10)
            if "OPEN" not in str(msg.data):
                raise RuntimeError(f"{self.server.name} refused {self.id}: {msg.data}")
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        decode = self.server.decode
        async for frame in self.ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                continue
            got = decode(frame.data)
            tally = self.tally
            if got is None:
                if tally is not None:
                    tally.refused += 1
                continue
            src, payload = got
            if tally is None:
                continue
            now = time.perf_counter_ns()
            if src != self.partner or payload.get("to") != self.id:
                tally.misrouted += 1
                continue
            n = payload["n"]
            if n < self.expected:
                tally.duplicated += 1
                continue
            if n > self.expected:
                tally.lost += n - self.expected
            self.expected = n + 1
            tally.delivered += 1
            tally.latencies.append((now - payload["t"]) / 1e6)
            peer = self.peer
            if peer is not None and peer.window is not None:
                peer.window.release()

    async def send(self) -> None:
        assert self.ws is not None
        n = self.sent
        self.sent += 1
        payload: dict[str, Any]
        if n % 10 == 0:
            kind, payload = "offer", {"type": "offer", "sdp": OFFER_SDP}
        else:
            kind, payload = "candidate", {"candidate": CANDIDATE, "sdpMid": "0",
                                          "sdpMLineIndex": 0}
        payload = {**payload, "n": n, "to": self.partner, "t": time.perf_counter_ns()}
        await self.ws.send_str(self.server.encode(self.partner, kind, payload))

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self.ws is not None:
            await self.ws.close()


async def heartbeats(server: Server, clients: Sequence[Client], stop: asyncio.Event) -> None:
    if server.heartbeat is None:
        return
    while not stop.is_set():
        for c in clients:
            if c.ws is not None and not c.ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await c.ws.send_str(server.heartbeat)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 5.0)


def sessions(n: int = 100) -> list[aiohttp.ClientSession]:
    """Sessions bound to 127.0.0.2 .. 127.0.0.(n+1): n source addresses."""
    return [aiohttp.ClientSession(connector=aiohttp.TCPConnector(
        limit=0, local_addr=(f"127.0.0.{i + 2}", 0))) for i in range(n)]


async def make_pairs(server: Server, pairs: int, tally: Tally, prefix: str,
                     pool: Sequence[aiohttp.ClientSession]) -> list[Client]:
    clients: list[Client] = []
    for i in range(pairs):
        a = Client(server, f"{prefix}{i}a", f"{prefix}{i}b", tally, pool[(2 * i) % len(pool)])
        b = Client(server, f"{prefix}{i}b", f"{prefix}{i}a", tally,
                   pool[(2 * i + 1) % len(pool)])
        a.peer, b.peer = b, a
        clients += [a, b]
    for chunk in range(0, len(clients), 100):
        await asyncio.gather(*(c.connect() for c in clients[chunk:chunk + 100]))
    return clients


# ------------------------------------------------------------- scenarios ---


@dataclass
class Result:
    scenario: str
    server: str
    rate: float
    cpu_us: float
    p50: float
    p99: float
    check: str
    gen_cpu: float
    extra: str = ""

    def line(self) -> str:
        gen = f"{self.gen_cpu * 100:3.0f}%" + (" (GENERATOR-BOUND)" if self.gen_cpu > 0.9 else "")
        return (f"{self.scenario:<22} {self.server:<14} {self.rate:>9,.0f} msg/s  "
                f"{self.cpu_us:6.1f} us/msg  p50 {self.p50:6.2f} ms  p99 {self.p99:7.2f} ms  "
                f"delivery {self.check}  generator {gen} {self.extra}")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Meter:
    """Server CPU, generator CPU and wall time over a measured interval."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def __enter__(self) -> Meter:
        self.cpu0 = self.server.cpu_seconds()
        self.gen0 = time.process_time()
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self.t0
        self.cpu = self.server.cpu_seconds() - self.cpu0
        self.gen = (time.process_time() - self.gen0) / self.wall


async def relay(server: Server, pairs: int, seconds: float) -> Result:
    tally = Tally()
    pool = sessions(4)
    clients = await make_pairs(server, pairs, tally, "r", pool)
    window = max(4, 200 // pairs)
    for c in clients:
        c.window = asyncio.Semaphore(window)
    stop = asyncio.Event()
    beat = asyncio.create_task(heartbeats(server, clients, stop))

    async def pump(c: Client) -> None:
        assert c.window is not None
        while not stop.is_set():
            await c.window.acquire()
            await c.send()

    await asyncio.sleep(0.2)
    with Meter(server) as m:
        tasks = [asyncio.create_task(pump(c)) for c in clients]
        await asyncio.sleep(seconds)
        stop.set()
        for t in tasks:
            t.cancel()
        await drain(clients, tally)
    beat.cancel()
    tally.lost = max(tally.lost, sum(c.sent for c in clients) - tally.delivered)
    await close_all(clients, pool)
    return Result(f"relay {pairs} pair{'s' if pairs > 1 else ''}", server.name,
                  tally.delivered / m.wall, m.cpu / max(1, tally.delivered) * 1e6,
                  percentile(tally.latencies, 0.5), percentile(tally.latencies, 0.99),
                  tally.check(), m.gen)


async def drain(clients: Sequence[Client], tally: Tally, within: float = 10.0) -> None:
    """Wait until every message sent is delivered (what is still missing then is lost)."""
    for _ in range(int(within / 0.05)):
        if tally.delivered + tally.lost >= sum(c.sent for c in clients):
            return
        await asyncio.sleep(0.05)


async def paced(clients: Sequence[Client], rate: float, seconds: float,
                stop: asyncio.Event) -> None:
    """Send ``rate`` msg/s in total, round-robin over ``clients``, for ``seconds``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    order = list(clients)
    i = 0
    while not stop.is_set():
        elapsed = loop.time() - start
        if elapsed >= seconds:
            return
        due = int(elapsed * rate) - sent
        for _ in range(due):
            await order[i % len(order)].send()
            i += 1
        sent += max(0, due)
        await asyncio.sleep(0.002)


async def steady(server: Server, clients_n: int, rate: float, seconds: float,
                 flood: bool = False) -> Result:
    tally = Tally()
    pool = sessions(100)
    clients = await make_pairs(server, clients_n // 2, tally, "s", pool)
    stop = asyncio.Event()
    beat = asyncio.create_task(heartbeats(server, clients, stop))
    flooder: subprocess.Popen[bytes] | None = None
    victim: Client | None = None
    if flood:
        victim = Client(server, "victim", "flooder", None, pool[0])
        await victim.connect()
        flooder = spawn(
            [sys.executable, __file__, "--flooder", server.ws_url("flooder"),
             "--flood-kind", "peerjs" if isinstance(server, PeerJS) else "ours"],
            _pin_flooder)
        await asyncio.sleep(1.0)
    await asyncio.sleep(0.3)
    with Meter(server) as m:
        await paced(clients, rate, seconds, stop)
        await drain(clients, tally)
    m.wall = seconds  # the offered rate was paced over this long
    stop.set()
    beat.cancel()
    tally.lost = max(tally.lost, sum(c.sent for c in clients) - tally.delivered)
    extra = ""
    if flooder is not None:
        flooder.terminate()
        flooder.wait()
        extra = "(with one client flooding)"
    if victim is not None:
        await victim.close()
    await close_all(clients, pool)
    name = f"flood, {clients_n} others" if flood else f"steady {clients_n} clients"
    return Result(name, server.name, tally.delivered / m.wall,
                  m.cpu / max(1, tally.delivered) * 1e6,
                  percentile(tally.latencies, 0.5), percentile(tally.latencies, 0.99),
                  tally.check(), m.gen, extra)


async def idle(server: Server, count: int) -> str:
    pool = sessions(100)
    before = server.rss_mb()
    clients = [Client(server, f"i{i}", f"i{i ^ 1}", None, pool[i % len(pool)])
               for i in range(count)]
    t0 = time.monotonic()
    for chunk in range(0, count, 200):
        await asyncio.gather(*(c.connect() for c in clients[chunk:chunk + 200]))
    took = time.monotonic() - t0
    stop = asyncio.Event()
    beat = asyncio.create_task(heartbeats(server, clients, stop))
    await asyncio.sleep(3.0)
    after = server.rss_mb()
    # Delivery still works with every connection open: a sample of pairs.
    tally = Tally()
    sample = random.Random(1).sample(range(0, count, 2), min(500, count // 2))
    for i in sample:
        a, b = clients[i], clients[i + 1]
        a.tally = b.tally = tally
        a.partner, b.partner = b.id, a.id
        await a.send()
    await asyncio.sleep(1.0)
    tally.lost = max(tally.lost, len(sample) - tally.delivered)
    stop.set()
    beat.cancel()
    await close_all(clients, pool)
    return (f"idle {count:>6} conns      {server.name:<14} RSS {before:6.1f} -> {after:6.1f} MB "
            f"({(after - before) * 1024 / count:5.1f} KB/conn), opened in {took:4.1f} s, "
            f"sample delivery {tally.check()}")


async def close_all(clients: Sequence[Client], pool: Sequence[aiohttp.ClientSession]) -> None:
    for chunk in range(0, len(clients), 500):
        await asyncio.gather(*(c.close() for c in clients[chunk:chunk + 500]),
                             return_exceptions=True)
    for s in pool:
        await s.close()


# ----------------------------------------------------------------- flooder ---


async def flood(url: str, kind: str) -> None:
    server: Server = PeerJS(0) if kind == "peerjs" else Ours(0)
    async with aiohttp.ClientSession() as s:
        c = Client(server, "flooder", "victim", None, s)
        await c.connect()
        while True:
            for _ in range(50):
                await c.send()
            await asyncio.sleep(0)


# -------------------------------------------------------------------- main ---


async def run_server(make: Callable[[], Server], body: Callable[[Server], Any]) -> Any:
    server = make()
    await server.start()
    try:
        return await body(server)
    finally:
        server.stop()


async def main(args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, {LOAD_CPU})
    raise_fd_limit()
    kinds: list[tuple[str, Callable[[int, bool], Server]]] = []
    if args.only in (None, "ours"):
        kinds.append(("ours", lambda idle, relay_rate: Ours(idle, relay_rate)))
    if args.only == "bare" or args.bare:
        kinds.append(("bare", lambda idle, relay_rate: Bare(idle)))
    if args.only in (None, "peerjs"):
        kinds.append(("peerjs", lambda idle, relay_rate: PeerJS(idle)))
    secs = args.seconds
    print(f"# hub benchmark  load average {os.getloadavg()[0]:.2f} "
          f"{os.getloadavg()[1]:.2f} (before); server on CPU {SERVER_CPU}, "
          f"load on CPU {LOAD_CPU}", flush=True)
    results: dict[tuple[str, str], Result] = {}
    todo = set(args.scenarios.split(","))
    # Scenario by scenario, every server back to back: the machine's load drifts.
    plan: list[tuple[bool, int, Callable[[Server], Any]]] = []
    if "relay" in todo:
        plan += [(True, 0, lambda s, p=pairs: relay(s, p, secs)) for pairs in (1, 10, 100)]
    if "steady" in todo:
        plan.append((False, 0, lambda s: steady(s, 200, 10_000, secs)))
    if "flood" in todo:
        plan.append((False, 0, lambda s: steady(s, 198, 5_000, secs, flood=True)))
    if "idle" in todo:
        plan.append((False, args.idle, lambda s: idle(s, args.idle)))
    for relay_rate, idle_count, body in plan:
        for key, make in kinds:
            out = await run_server(
                lambda m=make, r=relay_rate, i=idle_count: m(i, r),  # type: ignore[misc]
                body)
            if isinstance(out, Result):
                results[(out.scenario, key)] = out
                print(out.line(), flush=True)
            else:
                print(out, flush=True)
        print(f"# load average now {os.getloadavg()[0]:.2f}", flush=True)
    if any(k == "peerjs" for k, _ in kinds) and any(k == "ours" for k, _ in kinds):
        print("\n# ratios (softphone hub / PeerJS server; < 1 is better for CPU, latency)")
        for (scenario, key), ours in results.items():
            if key != "ours" or (scenario, "peerjs") not in results:
                continue
            theirs = results[(scenario, "peerjs")]
            print(f"{scenario:<22} throughput x{ours.rate / theirs.rate:4.2f}  "
                  f"CPU/msg x{ours.cpu_us / theirs.cpu_us:4.2f}  "
                  f"p99 x{ours.p99 / theirs.p99:4.2f}")
    print(f"# load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["ours", "peerjs", "bare"])
    parser.add_argument("--bare", action="store_true",
                        help="also run a bare aiohttp relay with no checks")
    parser.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="3 s runs, 2,000 idle")
    parser.add_argument("--scenarios", default="relay,steady,flood,idle",
                        help="comma-separated subset of relay,steady,flood,idle")
    parser.add_argument("--flooder", help=argparse.SUPPRESS)
    parser.add_argument("--flood-kind", help=argparse.SUPPRESS)
    parser.add_argument("--nodes", action="store_true",
                        help="multi-node mode: in-memory hub vs 1 vs 2 nodes on Redis, pairs "
                             "split across nodes (benchmarks/hub_cluster.py; --seconds, --quick)")
    ns = parser.parse_args()
    if ns.quick:
        ns.seconds, ns.idle = 3.0, 2_000
    if ns.nodes:
        import hub_cluster  # benchmarks/hub_cluster.py (multi-node mode)

        ns.rate = 2_000.0
        asyncio.run(hub_cluster.main(ns))
        sys.exit(0)
    if ns.bare_server:
        bare_server(ns.bare_server)
        sys.exit(0)
    if ns.flooder:
        with contextlib.suppress(KeyboardInterrupt, aiohttp.ClientError, ConnectionError):
            asyncio.run(flood(ns.flooder, ns.flood_kind))
        sys.exit(0)
    asyncio.run(main(ns))
