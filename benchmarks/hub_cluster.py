"""The hub on several nodes (Redis) against the in-memory hub, same harness as hub.py.

    python benchmarks/hub_cluster.py              # 8 s per run
    python benchmarks/hub_cluster.py --quick      # 3 s per run
    python benchmarks/hub_cluster.py --connects   # only: how long a handshake takes

Three set-ups, each measured with benchmarks/hub.py's relay and steady
scenarios (same clients, same delivery checks: no loss, no duplicate, no
misroute):

- ``in-memory``: one ``softphone serve`` (the default registry);
- ``1 node``: one ``softphone serve --redis`` node (every pair on it: local
  delivery, Redis only holds presence);
- ``2 nodes``: two nodes on one Redis, every pair split across them (client
  ``...a`` on node 1, ``...b`` on node 2), so every message goes through Redis
  pub/sub.

Every server process (nodes and redis-server, all their threads) is pinned to
CPU 0, the load generator to CPU 1, as in hub.py. "us/msg" is the CPU of all
server processes together per relayed message; "(CPU redis x%, node1 y%, ...)"
how it split between them. The machine has two cores:
this measures what a message costs through Redis and its latency, not how far
more machines would scale.

``--connects``: how long a WebSocket handshake takes on each set-up (a node
answers it once the id is claimed in Redis): 500 clients one after the other,
then 500 at once; median and 99th percentile from opening the TCP connection
to the ``101``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import signal
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import hub as bench  # noqa: E402  (benchmarks/hub.py: the harness)


def _load_cluster() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "softphone_server_cluster", HERE.parent / "server" / "cluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


cluster = _load_cluster()


def _pin_all_threads(pid: int, cpu: int) -> None:
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), {cpu})


class Nodes(bench.Server):
    """Redis + N ``softphone serve --redis`` nodes, measured as one server."""

    def __init__(self, count: int, relay_rate: bool) -> None:
        super().__init__(0)
        self.name = f"{count} node{'s' if count > 1 else ''}"
        self.redis = cluster.RedisServer()
        extra = ["--ice-server", "none"]
        if relay_rate:
            extra += ["--rate", "1000000", "--burst", "1000000"]
        self.nodes = [cluster.Node(self.redis.url, f"bench{i + 1}", extra=extra)
                      for i in range(count)]
        self.port = self.nodes[0].port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self.redis.start)
            for node in self.nodes:
                await loop.run_in_executor(None, node.start)
            for pid in self._pids():
                _pin_all_threads(pid, bench.SERVER_CPU)
            await asyncio.sleep(0.5)
        except BaseException:
            self.stop()
            raise

    def _pids(self) -> list[int]:
        procs = [self.redis.proc, *(n.proc for n in self.nodes)]
        return [p.pid for p in procs if p is not None]

    def stop(self) -> None:
        for node in self.nodes:
            node.kill(signal.SIGTERM)
        self.redis.cleanup()

    def cpu_seconds(self) -> float:
        each = []
        for pid in self._pids():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            each.append((int(fields[11]) + int(fields[12])) / bench.CLK_TCK)
        # The measured interval is between the last two calls (Meter's): keep them.
        self.snapshots = [*getattr(self, "snapshots", [])[-1:], each]
        return sum(each)

    def cpu_split(self) -> str:
        """How the last measured interval's server CPU split: redis, then each node."""
        snaps = getattr(self, "snapshots", [])
        if len(snaps) < 2:
            return ""
        spent = [b - a for a, b in zip(snaps[0], snaps[1], strict=True)]
        total = sum(spent) or 1.0
        names = ["redis", *(f"node{i + 1}" for i in range(len(self.nodes)))]
        return "(CPU " + ", ".join(f"{n} {100 * x / total:.0f}%"
                                   for n, x in zip(names, spent, strict=True)) + ")"

    def ws_url(self, client_id: str) -> str:
        node = self.nodes[1] if len(self.nodes) > 1 and client_id.endswith("b") \
            else self.nodes[0]
        return f"http://127.0.0.1:{node.port}/ws?id={client_id}"

    def encode(self, to: str, kind: str, payload: dict[str, Any]) -> str:
        return bench.Ours.encode(self, to, kind, payload)  # type: ignore[arg-type]

    def decode(self, text: str) -> tuple[str, dict[str, Any]] | None:
        return bench.Ours.decode(self, text)  # type: ignore[arg-type]


class InMemory(bench.Ours):
    name = "in-memory"


async def connects(server: bench.Server, count: int) -> str:
    """Handshake times: ``count`` clients one by one, then ``count`` at once."""
    async def one(session: aiohttp.ClientSession, client_id: str,
                  out: list[float]) -> aiohttp.ClientWebSocketResponse:
        t0 = time.perf_counter()
        ws = await session.ws_connect(server.ws_url(client_id), compress=0)
        out.append(time.perf_counter() - t0)
        return ws

    parts = []
    pool = bench.sessions(10)
    try:
        for how in ("one by one", "at once"):
            took: list[float] = []
            t0 = time.perf_counter()
            if how == "one by one":
                sockets = [await one(pool[i % 10], f"s{i}a", took) for i in range(count)]
            else:
                sockets = await asyncio.gather(*(one(pool[i % 10], f"c{i}b", took)
                                                 for i in range(count)))
            total = time.perf_counter() - t0
            p50, p99 = (1000 * bench.percentile(took, q) for q in (0.5, 0.99))
            parts.append(f"{how}: p50 {p50:5.2f} ms p99 {p99:6.2f} ms "
                         f"({total:4.2f} s)")
            await asyncio.gather(*(ws.close() for ws in sockets))
    finally:
        for session in pool:
            await session.close()
    return f"connects {count} {server.name:<10} " + "; ".join(parts)


async def main(args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, {bench.LOAD_CPU})
    bench.raise_fd_limit()
    secs = args.seconds
    load = os.getloadavg()
    print(f"# hub on several nodes  load average {load[0]:.2f} {load[1]:.2f} (before); "
          f"servers on CPU {bench.SERVER_CPU}, load on CPU {bench.LOAD_CPU}", flush=True)
    makers: list[tuple[str, Any]] = [
        ("in-memory", lambda relay_rate: InMemory(0, relay_rate)),
        ("1 node", lambda relay_rate: Nodes(1, relay_rate)),
        ("2 nodes", lambda relay_rate: Nodes(2, relay_rate)),
    ]
    if args.connects:
        for _, make in makers:
            print(await bench.run_server(lambda m=make: m(False),
                                         lambda s: connects(s, 500)), flush=True)
        return

    async def split(server: bench.Server, result: Any) -> Any:
        result = await result
        if isinstance(server, Nodes):
            result.extra = (result.extra + " " + server.cpu_split()).strip()
        return result

    for _, make in makers:
        for pairs in (1, 10, 100):
            r = await bench.run_server(
                lambda m=make: m(True),
                lambda s, p=pairs: split(s, bench.relay(s, p, secs)))
            print(r.line(), flush=True)
        r = await bench.run_server(lambda m=make: m(False),
                                   lambda s: split(s, bench.steady(s, 200, args.rate, secs)))
        print(r.line(), flush=True)
    load = os.getloadavg()
    print(f"# load average after: {load[0]:.2f} {load[1]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=2_000,
                        help="steady scenario: messages/s in total (default 2,000: what two "
                             "nodes and Redis sustain on one shared core here)")
    parser.add_argument("--quick", action="store_true", help="3 s runs")
    parser.add_argument("--connects", action="store_true",
                        help="only the handshake times (500 one by one, 500 at once)")
    ns = parser.parse_args()
    if ns.quick:
        ns.seconds = 3.0
    asyncio.run(main(ns))
