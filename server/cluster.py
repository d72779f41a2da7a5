#!/usr/bin/env python3
"""Run softphone's hub as several nodes on one Redis, behind one address, with coturn.

    python server/cluster.py --nodes 2 --port 8080 [--host 0.0.0.0]

starts ``redis-server`` (private, in a temporary directory), N ``softphone serve
--redis ...`` nodes on free ports, coturn (unless ``--no-turn``) and a small TCP
front on ``--port`` that spreads connections over the nodes (round robin; a node
that refuses the connection is skipped, so clients of a dead node reconnect to a
live one). Ctrl-C stops everything. See server/README.md.

The pieces (:class:`RedisServer`, :class:`Node`, :class:`Front`,
:class:`Coturn`, :class:`Cluster`) are what tests/test_redis.py and
benchmarks/hub_cluster.py use too. This file is a script, not a package:
load it by path (``load_cluster_module()`` in those files).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("softphone.cluster")

HERE = Path(__file__).resolve().parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def primary_address() -> str:
    """This machine's address on its default route (aiortc ignores loopback); else 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def _wait_port(host: str, port: int, within: float, proc: subprocess.Popen[bytes] | None,
               what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {host}:{port} within {within} s")



def _signal_and_wait(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    """Send ``sig`` to a running ``proc`` and reap it (SIGKILL after 10 s)."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

class RedisServer:
    """A private redis-server on 127.0.0.1: no persistence, its own directory."""

    def __init__(self, port: int | None = None, workdir: str | None = None) -> None:
        self.port = port or free_port()
        self.workdir = workdir or tempfile.mkdtemp(prefix="softphone-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is missing: apt-get install redis-server")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.workdir,
             "--save", "", "--appendonly", "no", "--protected-mode", "yes",
             "--logfile", os.path.join(self.workdir, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port("127.0.0.1", self.port, 10, self.proc, "redis-server")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        _signal_and_wait(self.proc, sig)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


class Node:
    """One ``softphone serve --redis`` process."""

    def __init__(self, redis_url: str, node_id: str, port: int | None = None,
                 host: str = "127.0.0.1", extra: Sequence[str] = (),
                 log_path: str | None = None) -> None:
        self.redis_url = redis_url
        self.node_id = node_id
        self.port = port or free_port()
        self.host = host
        self.extra = list(extra)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "softphone", "-v", "serve", "--host", self.host,
             "--port", str(self.port), "--redis", self.redis_url, "--node-id", self.node_id,
             *self.extra],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if out is not subprocess.DEVNULL:
            out.close()  # type: ignore[union-attr]
        _wait_port("127.0.0.1", self.port, 20, self.proc, f"node {self.node_id}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        _signal_and_wait(self.proc, sig)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Front:
    """One address for several nodes: a TCP relay (WebSocket and HTTP alike).

    ``round-robin`` spreads connections; ``failover`` always tries the nodes in
    the order given. A node that refuses the connection is skipped. When a node
    dies, its connections are closed, and the clients' reconnections land on a
    live node.
    """

    def __init__(self, backends: Sequence[tuple[str, int]], host: str = "127.0.0.1",
                 port: int = 0, mode: str = "round-robin") -> None:
        if mode not in ("round-robin", "failover"):
            raise ValueError(f"unknown front mode {mode!r}")
        self.backends = list(backends)
        self.host = host
        self.port = port
        self.mode = mode
        self._next = itertools.count()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _order(self) -> list[tuple[str, int]]:
        if self.mode == "failover":
            return list(self.backends)
        start = next(self._next) % len(self.backends)
        return self.backends[start:] + self.backends[:start]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            for host, port in self._order():
                try:
                    up_reader, up_writer = await asyncio.wait_for(
                        asyncio.open_connection(host, port), 2.0)
                except (TimeoutError, OSError):
                    continue
                await self._pipe(reader, writer, up_reader, up_writer)
                return
            log.warning("front: no live node for a connection")
        except asyncio.CancelledError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._tasks.discard(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                if dst.can_write_eof():
                    dst.write_eof()

        a = asyncio.create_task(copy(reader, up_writer))
        b = asyncio.create_task(copy(up_reader, writer))
        try:
            # Either side ending ends the relay (a dead node closes its clients).
            await asyncio.wait({a, b}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            a.cancel()
            b.cancel()
            await asyncio.gather(a, b, return_exceptions=True)
            up_writer.close()


def coturn_config(template: str, secret: str) -> str:
    """``template`` (server/coturn.conf) with exactly one ``static-auth-secret``:
    ``secret``. coturn accepts credentials signed with every such line it reads, so
    any other (a placeholder someone uncommented) is dropped, not overridden."""
    if not secret or any(c.isspace() for c in secret):
        raise ValueError("the TURN secret must be non-empty, without spaces or newlines")
    kept = [line for line in template.splitlines()
            if not line.strip().startswith("static-auth-secret")]
    return "\n".join(kept) + f"\nstatic-auth-secret={secret}\n"


class Coturn:
    """coturn with TURN REST credentials (server/coturn.conf), on a free port."""

    def __init__(self, secret: str, listen: str = "127.0.0.1", port: int | None = None,
                 workdir: str | None = None) -> None:
        self.secret = secret
        self.listen = listen
        self.port = port or free_port()
        self.workdir = workdir or tempfile.mkdtemp(prefix="softphone-turn-")
        #: The secret in a file only we can read: the nodes take it from there, not
        #: from their command line (which any local user sees in ps).
        self.secret_file = os.path.join(self.workdir, "secret")
        fd = os.open(self.secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secret + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("turnserver")
        if exe is None:
            raise RuntimeError("turnserver is missing: apt-get install coturn")
        # (coturn's config is server/coturn.conf plus the secret, in a 0600 file of ours:
        # not on its command line, which any local user sees in ps)
        conf = os.path.join(self.workdir, "coturn.conf")
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(coturn_config((HERE / "coturn.conf").read_text(), self.secret))
        self.proc = subprocess.Popen(
            [exe, "-c", conf,
             "--listening-ip", self.listen, "--listening-port", str(self.port),
             "--realm", "softphone.local", "--pidfile", os.path.join(self.workdir, "pid"),
             "--log-file", os.path.join(self.workdir, "turn.log"), "--no-cli",
             "--userdb", os.path.join(self.workdir, "turndb")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.listen, self.port, 10, self.proc, "turnserver")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.workdir, ignore_errors=True)


class Cluster:
    """Redis + N nodes (+ coturn) + a front. ``async with Cluster(2) as c: c.front.url``."""

    def __init__(self, nodes: int = 2, *, host: str = "127.0.0.1", front_port: int = 0,
                 turn: bool = False, turn_listen: str | None = None,
                 node_args: Sequence[str] = ("--ice-server", "none"),
                 log_dir: str | None = None) -> None:
        self.redis = RedisServer()
        self.log_dir = log_dir
        turn_listen = turn_listen or primary_address()
        self.turn = Coturn(secrets.token_hex(16), turn_listen) if turn else None
        extra = list(node_args)
        if self.turn is not None:
            turn_url = f"turn:{turn_listen}:{self.turn.port}"
            extra = ["--ice-server", f"stun:{turn_listen}:{self.turn.port}", "--turn",
                     turn_url, "--turn-secret-file", self.turn.secret_file]
        self.nodes = [Node(self.redis.url, f"node{i + 1}", host=host, extra=extra,
                           log_path=os.path.join(log_dir, f"node{i + 1}.log")
                           if log_dir else None)
                      for i in range(nodes)]
        self.front = Front([("127.0.0.1", n.port) for n in self.nodes], host, front_port)

    async def __aenter__(self) -> Cluster:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.redis.start)
        if self.turn is not None:
            await loop.run_in_executor(None, self.turn.start)
        await asyncio.gather(*(loop.run_in_executor(None, n.start) for n in self.nodes))
        await self.front.start()

    async def stop(self) -> None:
        await self.front.stop()
        loop = asyncio.get_running_loop()
        for node in self.nodes:
            await loop.run_in_executor(None, node.kill, signal.SIGTERM)
        if self.turn is not None:
            await loop.run_in_executor(None, self.turn.stop)
        await loop.run_in_executor(None, self.redis.cleanup)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=2, help="hub nodes (default 2)")
    parser.add_argument("--host", default="127.0.0.1", help="front address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="front port (default 8080)")
    parser.add_argument("--no-turn", action="store_true", help="do not start coturn")
    parser.add_argument("--turn-listen", default=primary_address(),
                        help="coturn's address, handed out by /ice-servers (default: this "
                             "machine's address on its default route)")
    parser.add_argument("--log-dir", help="write each node's log here")
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    async def run() -> None:
        cluster = Cluster(args.nodes, host="127.0.0.1", front_port=args.port,
                          turn=not args.no_turn, turn_listen=args.turn_listen,
                          log_dir=args.log_dir)
        cluster.front.host = args.host
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # (HUP: terminal closed)
            loop.add_signal_handler(sig, stop.set)
        try:
            await cluster.start()
            print(f"redis {cluster.redis.url}")
            for node in cluster.nodes:
                print(f"{node.node_id} {node.url}")
            if cluster.turn is not None:
                print(f"coturn {cluster.turn.listen}:{cluster.turn.port}")
            print(f"front http://{args.host}:{cluster.front.port} (Ctrl-C to stop)",
                  flush=True)
            await stop.wait()
        finally:
            await cluster.stop()

    try:
        asyncio.run(run())
    except (RuntimeError, OSError) as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
