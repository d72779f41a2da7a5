#!/usr/bin/env python3
"""Delay and jitter for packets sent to an NFQUEUE: a tiny stand-in for ``tc netem``.

This kernel has no netem, so the network lab (tests/netlab.py) sends the
packets of one direction of a router to an NFQUEUE with iptables and runs
this program in that router's network namespace::

    iptables -t raw -A PREROUTING -i lan -j NFQUEUE --queue-num 1
    python3 server/netem_delay.py --queue 1 --delay-ms 50 --jitter-ms 10

Each packet is held for ``delay +- jitter`` milliseconds (uniform), then
accepted; packets may overtake each other, as with netem's jitter. Loss is
not done here: ``iptables -m statistic --mode random -j DROP`` does it.

Uses NetfilterQueue (PyPI; builds against libnetfilter-queue-dev). Prints
``ready`` on stdout once the queue is bound. SIGTERM/SIGINT release every
held packet and exit 0. Needs root (CAP_NET_ADMIN) in the namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import signal
import sys
from typing import Any

log = logging.getLogger("netem_delay")


async def run(queue_num: int, delay_ms: float, jitter_ms: float, seed: int | None) -> int:
    try:
        from netfilterqueue import NetfilterQueue
    except ImportError:
        print("netem_delay: the Python module netfilterqueue is missing: "
              "pip install NetfilterQueue (needs libnetfilter-queue-dev)", file=sys.stderr)
        return 3
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    held: dict[int, tuple[Any, asyncio.TimerHandle]] = {}
    counter = 0

    def release(key: int) -> None:
        packet, _ = held.pop(key)
        try:
            packet.accept()
        except Exception as exc:  # the queue went away under us
            log.debug("accept failed: %s", exc)

    def on_packet(packet: Any) -> None:
        nonlocal counter
        counter += 1
        wait = max(0.0, delay_ms + rng.uniform(-jitter_ms, jitter_ms)) / 1000.0
        held[counter] = (packet, loop.call_later(wait, release, counter))

    nfq = NetfilterQueue()
    try:
        nfq.bind(queue_num, on_packet, max_len=8192)
    except OSError as exc:
        print(f"netem_delay: cannot bind NFQUEUE {queue_num}: {exc} (root? another binder?)",
              file=sys.stderr)
        return 1
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    fd = nfq.get_fd()
    loop.add_reader(fd, nfq.run, False)
    print(f"ready queue={queue_num} delay={delay_ms}ms jitter={jitter_ms}ms", flush=True)
    try:
        await stop.wait()
    finally:
        loop.remove_reader(fd)
        for key in list(held):
            held[key][1].cancel()
            release(key)
        nfq.unbind()
    log.info("released %d packets", counter)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queue", type=int, required=True, help="NFQUEUE number")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="mean delay")
    parser.add_argument("--jitter-ms", type=float, default=0.0,
                        help="the delay is uniform in delay +- jitter")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    if args.delay_ms < 0 or args.jitter_ms < 0:
        parser.error("delay and jitter must be >= 0")
    logging.basicConfig(level=logging.WARNING, format="netem_delay: %(message)s")
    return asyncio.run(run(args.queue, args.delay_ms, args.jitter_ms, args.seed))


if __name__ == "__main__":
    sys.exit(main())
