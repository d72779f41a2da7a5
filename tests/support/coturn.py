"""A real coturn for tests: the shipped ``server/coturn.conf`` plus the test's
address, port, secret and realm; state files in the test's own directory.

- :func:`turnserver_command` is the command line (tests/support/netlab.py runs
  it inside a network namespace under its own process bookkeeping);
- :class:`Coturn` runs it on this host, waits until it answers over TCP and
  (unless ``--no-udp``) a STUN binding over UDP, and stops it. The
  ``coturn`` fixture in tests/conftest.py starts them on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

COTURN_CONF = Path(__file__).resolve().parents[2] / "server" / "coturn.conf"
#: The ``static-auth-secret`` (TURN REST credentials) unless a test picks another.
TURN_SECRET = "coturn-secret"
REALM = "softphone.test"


def turnserver_command(*, ip: str, secret: str, realm: str, workdir: Path,
                       port: int | None = None, turnserver: str = "turnserver",
                       extra: Sequence[str] = ()) -> list[str]:
    """``turnserver`` with ``server/coturn.conf``, listening and relaying on ``ip``
    (``port``, else the configuration's), its user database and pid file in
    ``workdir``, logging to stdout."""
    return [turnserver, "-c", str(COTURN_CONF), "--listening-ip", ip, "--relay-ip", ip,
            *(["--listening-port", str(port)] if port is not None else []),
            "--static-auth-secret", secret, "--realm", realm,
            "--userdb", str(workdir / "turndb"), "--pidfile", str(workdir / "turnserver.pid"),
            "--log-file", "stdout", "--simple-log", *extra]


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def stun_binding_answered(ip: str, port: int, within: float = 0.2) -> bool:
    """Does a STUN binding request to ``ip:port`` over UDP get a success response?"""
    transaction = os.urandom(12)
    request = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + transaction
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(within)
        try:
            s.sendto(request, (ip, port))
            reply = s.recv(2048)
        except OSError:  # timeout, or ICMP port unreachable
            return False
    return reply[:2] == b"\x01\x01" and reply[8:20] == transaction


class Coturn:
    """One ``turnserver`` on this host: :meth:`start`, :meth:`stop` (or ``with``)."""

    def __init__(self, workdir: Path, *, turnserver: str = "turnserver",
                 ip: str = "127.0.0.1", secret: str = TURN_SECRET, realm: str = REALM,
                 extra: Sequence[str] = ()) -> None:
        self.workdir = workdir
        self.ip = ip
        self.secret = secret
        self.udp = "--no-udp" not in extra
        self.port = free_port(ip)
        self.command = turnserver_command(ip=ip, port=self.port, secret=secret, realm=realm,
                                          workdir=workdir, turnserver=turnserver, extra=extra)
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, transport: str = "udp") -> str:
        return f"turn:{self.ip}:{self.port}?transport={transport}"

    def _listening(self) -> bool:
        with socket.socket() as s:
            if s.connect_ex((self.ip, self.port)) != 0:
                return False
        return not self.udp or stun_binding_answered(self.ip, self.port)

    def start(self, within: float = 10.0) -> Coturn:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.command, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + within
        while not self._listening():
            if self.proc.poll() is not None:
                self.stop()
                raise AssertionError(f"coturn exited ({self.proc.returncode}): "
                                     f"{' '.join(self.command)}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"coturn is not listening on {self.ip}:{self.port} "
                                     f"after {within} s")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """Terminate and reap it (kill if it lingers). Idempotent."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> Coturn:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def rest_credentials(secret: str, client_id: str = "a", ttl: int = 3600) -> tuple[str, str]:
    """coturn's REST credentials signed with ``secret``, made here (not by softphone's
    code): username ``"<expiry>:<id>"``, password base64(HMAC-SHA1(secret, username))."""
    username = f"{int(time.time()) + ttl}:{client_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


async def allocates(ip: str, port: int, secret: str, transport: str = "tcp") -> bool:
    """Does the coturn at ``ip:port`` grant a relay allocation to credentials signed
    with ``secret``? False when it refuses them (401 Unauthorized)."""
    import aioice.stun
    import aioice.turn

    username, password = rest_credentials(secret)
    try:
        relay, _ = await asyncio.wait_for(aioice.turn.create_turn_endpoint(
            asyncio.DatagramProtocol, (ip, port), username, password,
            transport=transport), 10)
    except aioice.stun.TransactionFailed as exc:
        if exc.response.attributes.get("ERROR-CODE", (0,))[0] == 401:
            return False
        raise
    relay.close()
    return True


#: The ``coturn`` fixture: ``coturn(*extra_turnserver_options)`` -> a running Coturn.
StartCoturn = Callable[..., Coturn]
