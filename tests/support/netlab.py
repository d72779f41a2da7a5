"""A network lab in Linux network namespaces: two homes behind NAT, and the internet.

::

      [a] 10.1.0.2 ── lan [ra] wan 203.0.113.11 ─┐
                                                 ├─ br0 [pub] 203.0.113.1: hub :8080, coturn :3478
      [b] 10.2.0.2 ── lan [rb] wan 203.0.113.12 ─┘

- ``pub`` is the public segment (TEST-NET-3): the hub and coturn (STUN,
  TURN over UDP and TCP, REST shared secret). Its default route points at a
  gateway that does not exist (coturn cannot send otherwise).
- ``ra`` / ``rb`` are home routers: NAT that is endpoint-independent
  (``MASQUERADE``: the same public port for every destination, so STUN
  works) or symmetric (``MASQUERADE --random``: a new port per destination,
  so only TURN works). They drop unsolicited inbound packets. They can block
  all UDP, and impair each direction: loss with ``iptables -m statistic``,
  delay and jitter with ``server/netem_delay.py`` on an NFQUEUE (this kernel
  has no ``tc netem``). ``up`` is home -> internet, ``down`` the reverse.
- ``a`` / ``b`` are the private hosts where the softphones run.

Network events in the middle of a call (issue 16): :meth:`NetLab.switch_network`
moves a host to a second home (``ra2``/``rb2``: a new private address behind a
new NAT with a new public address, as a laptop going from Wi-Fi to a phone
tether); :meth:`NetLab.rebind_nat` makes a router forget its mappings and give
the flows new external ports; :meth:`NetLab.start_outage` /
:meth:`NetLab.end_outage` cut a home off entirely and bring it back.
:meth:`NetLab.stun_binding` and :meth:`NetLab.nat_mappings` show what the
internet sees of a host.

Nothing is touched outside the lab's namespaces: links are created inside
them, every rule lives in them, and traffic cannot leave them. The
namespaces are named ``splab<pid>-<node>``; :meth:`NetLab.close` kills every
process in them and deletes them, and :func:`remove_stale_labs` removes
those of labs whose process is gone (a killed test run). The one file outside
is each namespace's ``/etc/netns/<namespace>/resolv.conf`` (which ``ip netns
exec`` mounts over ``/etc/resolv.conf``), deleted with the namespace: the lab
has no DNS, and a name lookup in it fails at once rather than after the
resolver's timeouts against the host's nameserver, which the lab cannot reach
(aioice resolves the hub's default STUN server in a thread that the phone's
exit waits for: 7 s more per call on a host with an unreachable nameserver).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softphone.hub.auth import turn_credentials

from .coturn import turnserver_command

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
DELAYER = ROOT / "server" / "netem_delay.py"

PREFIX = "splab"
PUBLIC_IP = "203.0.113.1"
MISSING_GATEWAY = "203.0.113.254"
HUB_PORT = 8080
TURN_PORT = 3478
ROUTER_WAN = {"a": "203.0.113.11", "b": "203.0.113.12"}
ROUTER_LAN = {"a": "10.1.0.1", "b": "10.2.0.1"}
HOST_IP = {"a": "10.1.0.2", "b": "10.2.0.2"}

NAT_KINDS = ("eim", "symmetric")

#: The second home of each side (:meth:`NetLab.switch_network`).
SECOND_ROUTER_WAN = {"a": "203.0.113.21", "b": "203.0.113.22"}
SECOND_ROUTER_LAN = {"a": "10.3.0.1", "b": "10.4.0.1"}
SECOND_HOST_IP = {"a": "10.3.0.2", "b": "10.4.0.2"}
#: External ports a rebound NAT gives the flows it forgot (outside Linux's
#: ephemeral range, so never the port a flow had before).
REBIND_PORTS = (20000, 29999)
_OUTAGE_TAG = "splab-outage"

#: A STUN Binding request from ``node`` (argv[1]: server, argv[2]: port, argv[3]:
#: local port); prints the XOR-MAPPED-ADDRESS as "address port".
_STUN_CLIENT = """
import os, socket, struct, sys
server, port, local = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tid = os.urandom(12)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", local))
s.settimeout(0.5)
for _ in range(4):
    s.sendto(struct.pack("!HHI", 1, 0, 0x2112A442) + tid, (server, port))
    try:
        data = s.recv(2048)
    except socket.timeout:
        continue
    if data[8:20] != tid:
        continue
    pos = 20
    while pos + 4 <= len(data):
        kind, size = struct.unpack("!HH", data[pos:pos + 4])
        value = data[pos + 4:pos + 4 + size]
        if kind == 0x0020:
            xport = struct.unpack("!H", value[2:4])[0] ^ 0x2112
            xaddr = struct.unpack("!I", value[4:8])[0] ^ 0x2112A442
            print(socket.inet_ntoa(struct.pack("!I", xaddr)), xport)
            sys.exit(0)
        pos += 4 + size + (-size % 4)
sys.exit("no STUN answer")
"""


@dataclass(frozen=True)
class Impairment:
    """What one direction of one router does to packets."""

    loss: float = 0.0  # probability, 0..1
    delay_ms: float = 0.0
    jitter_ms: float = 0.0  # delay is uniform in delay +- jitter

    @property
    def delays(self) -> bool:
        return self.delay_ms > 0 or self.jitter_ms > 0

    def __str__(self) -> str:
        parts = []
        if self.loss:
            parts.append(f"{self.loss:.0%} loss")
        if self.delays:
            parts.append(f"{self.delay_ms:g} +- {self.jitter_ms:g} ms")
        return ", ".join(parts) or "clean"


NO_IMPAIRMENT = Impairment()


@dataclass
class RouterConfig:
    nat: str = "eim"
    block_udp: bool = False
    up: Impairment = NO_IMPAIRMENT
    down: Impairment = NO_IMPAIRMENT


class LabError(RuntimeError):
    """The lab could not be built or a command in it failed."""


@dataclass(frozen=True)
class NatMapping:
    """One flow through a router's NAT, from ``conntrack``."""

    protocol: str  # "udp" | "tcp"
    host: str  # the private host's address and port
    host_port: int
    remote: str  # where the flow goes
    remote_port: int
    public: str  # the address and port the remote sees
    public_port: int


def turn_rest_credentials(secret: str, user: str, expires: float) -> tuple[str, str]:
    """coturn's time-limited credentials expiring at ``expires`` (the hub's own code)."""
    creds = turn_credentials(secret, user, now=expires, ttl=0)
    return creds.username, creds.credential


def _run(*argv: str, input: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({proc.returncode}): "
                       f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def missing_requirements(delay: bool = False) -> list[str]:
    """Why the lab cannot run here (empty if it can)."""
    problems = []
    if sys.platform != "linux":
        return ["network namespaces need Linux"]
    if os.geteuid() != 0:
        problems.append("network namespaces need root (run the lab tests as root)")
    for command, package in (("ip", "iproute2"), ("iptables-restore", "iptables"),
                             ("turnserver", "coturn")):
        if shutil.which(command) is None:
            problems.append(f"the command {command!r} (apt-get install {package})")
    if delay:
        try:
            import netfilterqueue  # noqa: F401
        except ImportError:
            problems.append("the Python module netfilterqueue (apt-get install "
                            "libnetfilter-queue-dev; pip install NetfilterQueue)")
    return problems


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lab_namespaces() -> list[str]:
    out = _run("ip", "netns", "list", check=False)
    return [line.split()[0] for line in out.splitlines()
            if line.split() and line.split()[0].startswith(PREFIX)]


#: Per-namespace files that ``ip netns exec`` mounts over those in /etc (ip-netns(8)).
NETNS_ETC = Path("/etc/netns")
#: No DNS in the lab: nothing answers on port 53 of the namespace's own loopback.
_RESOLV_CONF = "# the network lab (tests/support/netlab.py): no DNS here\n" \
    "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"


def _add_namespace(ns: str) -> None:
    _run("ip", "netns", "add", ns)
    etc = NETNS_ETC / ns
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text(_RESOLV_CONF)


def _kill_namespace_processes(ns: str) -> None:
    """SIGTERM, then SIGKILL, every process inside the lab namespace ``ns``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [int(p) for p in _run("ip", "netns", "pids", ns, check=False).split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
            time.sleep(0.05)


def _delete_namespace(ns: str) -> None:
    _kill_namespace_processes(ns)
    _run("ip", "netns", "delete", ns, check=False)
    shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)


def remove_stale_labs() -> list[str]:
    """Delete the namespaces of labs whose owning process no longer runs."""
    removed = []
    for ns in _lab_namespaces():
        match = re.match(rf"{PREFIX}(\d+)-", ns)
        if match and not _pid_alive(int(match.group(1))):
            _delete_namespace(ns)
            removed.append(ns)
    with contextlib.suppress(OSError):  # a namespace's files left without it
        for etc in NETNS_ETC.glob(f"{PREFIX}*-*"):
            match = re.match(rf"{PREFIX}(\d+)-", etc.name)
            if match and not _pid_alive(int(match.group(1))):
                shutil.rmtree(etc, ignore_errors=True)
    if removed:
        log.warning("removed stale lab namespaces: %s", ", ".join(removed))
    return removed


@dataclass
class LabProcess:
    """A process started in one of the lab's namespaces."""

    name: str
    popen: subprocess.Popen[str]
    out_path: Path
    err_path: Path

    def stdout(self) -> str:
        with contextlib.suppress(OSError):
            return self.out_path.read_text(errors="replace")
        return ""

    def stderr(self) -> str:
        with contextlib.suppress(OSError):
            return self.err_path.read_text(errors="replace")
        return ""

    def output(self) -> str:
        return self.stdout() + self.stderr()

    def stop(self, timeout: float = 3.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)


@dataclass
class NetLab:
    """The lab; build it with :meth:`build`, always :meth:`close` it (or use :func:`lab`)."""

    workdir: Path
    turn_secret: str = "lab-turn-secret"
    realm: str = "softphone.lab"
    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}")
    processes: list[LabProcess] = field(default_factory=list)
    routers: dict[str, RouterConfig] = field(default_factory=dict)
    _delayers: dict[str, list[LabProcess]] = field(default_factory=dict)
    _namespaces: list[str] = field(default_factory=list)
    _second: set[str] = field(default_factory=set)  # sides with a second home built
    _moved: set[str] = field(default_factory=set)  # sides that switched to it
    _hubs_started: int = 0

    # -- names --------------------------------------------------------------

    def ns(self, node: str) -> str:
        """Namespace of ``node``: pub, ra, rb, a or b."""
        return f"{self.tag}-{node}"

    @property
    def hub_url(self) -> str:
        return f"http://{PUBLIC_IP}:{HUB_PORT}"

    def stun_url(self) -> str:
        return f"stun:{PUBLIC_IP}:{TURN_PORT}"

    def turn_url(self, transport: str = "udp") -> str:
        url = f"turn:{PUBLIC_IP}:{TURN_PORT}"
        return url if transport == "udp" else f"{url}?transport={transport}"

    def turn_credentials(self, user: str = "lab", ttl: float = 3600.0,
                         secret: str | None = None) -> tuple[str, str]:
        """REST credentials; a negative ``ttl`` makes expired ones."""
        return turn_rest_credentials(secret or self.turn_secret, user, time.time() + ttl)

    # -- building -------------------------------------------------------------

    def _ip(self, node: str, *args: str) -> None:
        _run("ip", "-n", self.ns(node), *args)

    def _sysctl(self, node: str, *settings: str) -> None:
        _run("ip", "netns", "exec", self.ns(node), "sysctl", "-q", "-w", *settings)

    def build(self) -> NetLab:
        """Create namespaces, links, addresses, routes and router rules (EIM NAT)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for node in ("pub", "ra", "rb", "a", "b"):
            # Drop a leftover of our own pid (a previous lab in this process).
            if self.ns(node) in _lab_namespaces():
                _delete_namespace(self.ns(node))
            _add_namespace(self.ns(node))
            self._namespaces.append(self.ns(node))
            self._ip(node, "link", "set", "lo", "up")
            self._sysctl(node, "net.ipv6.conf.all.disable_ipv6=1",
                         "net.ipv6.conf.default.disable_ipv6=1")
        self._ip("pub", "link", "add", "br0", "type", "bridge")
        self._ip("pub", "addr", "add", f"{PUBLIC_IP}/24", "dev", "br0")
        self._ip("pub", "link", "set", "br0", "up")
        self._ip("pub", "route", "add", "default", "via", MISSING_GATEWAY)
        for side in ("a", "b"):
            router = f"r{side}"
            # wan <-> pub:br0, lan <-> host:eth0; made inside the namespaces.
            self._wire_router(router, side, "eth0", ROUTER_WAN[side], ROUTER_LAN[side])
            self._sysctl(router, "net.ipv4.ip_forward=1")
            self._ip(side, "addr", "add", f"{HOST_IP[side]}/24", "dev", "eth0")
            self._ip(side, "link", "set", "eth0", "up")
            self._ip(side, "route", "add", "default", "via", ROUTER_LAN[side])
            self.configure(side, RouterConfig())
        return self

    def _ruleset(self, config: RouterConfig) -> str:
        raw = []
        for iface, impairment, queue in (("lan", config.up, 1), ("wan", config.down, 2)):
            if impairment.loss > 0:
                raw.append(f"-A PREROUTING -i {iface} -m statistic --mode random "
                           f"--probability {impairment.loss:.4f} -j DROP")
            if impairment.delays:
                raw.append(f"-A PREROUTING -i {iface} -j NFQUEUE --queue-num {queue}")
        masquerade = "-A POSTROUTING -o wan -j MASQUERADE" + (
            " --random" if config.nat == "symmetric" else "")
        filt = []
        if config.block_udp:
            filt += ["-A FORWARD -p udp -j DROP", "-A INPUT -i wan -p udp -j DROP"]
        filt += [
            # Unsolicited inbound packets are dropped. Without this, a STUN
            # check that arrives before our own outgoing one would create a
            # conntrack entry on the router and shift our NAT mapping.
            "-A INPUT -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            "-A INPUT -i wan -j DROP",
            "-A FORWARD -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            "-A FORWARD -i wan -j DROP",
        ]
        return "\n".join([
            "*raw", ":PREROUTING ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", *raw, "COMMIT",
            "*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
            ":POSTROUTING ACCEPT [0:0]", masquerade, "COMMIT",
            "*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
            *filt, "COMMIT", "",
        ])

    def configure(self, side: str, config: RouterConfig) -> None:
        """(Re)configure router ``side`` ("a" or "b") atomically."""
        if config.nat not in NAT_KINDS:
            raise ValueError(f"nat must be one of {NAT_KINDS}")
        router = f"r{side}"
        for proc in self._delayers.pop(side, []):
            proc.stop()
        delayers = []
        for direction, impairment, queue in (("up", config.up, 1), ("down", config.down, 2)):
            if impairment.delays:
                delayers.append(self._start_delayer(router, direction, queue, impairment))
        self._delayers[side] = delayers
        _run("ip", "netns", "exec", self.ns(router), "iptables-restore",
             input=self._ruleset(config))
        self.routers[side] = config

    def configure_both(self, config: RouterConfig) -> None:
        for side in ("a", "b"):
            self.configure(side, config)

    # -- processes ------------------------------------------------------------

    def spawn(self, node: str, name: str, argv: Sequence[str],
              env: dict[str, str] | None = None) -> LabProcess:
        """Start ``argv`` in ``node``'s namespace; stdout and stderr go to files."""
        out_path = self.workdir / f"{name}.out"
        err_path = self.workdir / f"{name}.err"
        with open(out_path, "w") as out, open(err_path, "w") as err:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(node), *argv], stdout=out, stderr=err,
                stdin=subprocess.DEVNULL, text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        proc = LabProcess(name, popen, out_path, err_path)
        self.processes.append(proc)
        return proc

    def _wait_for(self, proc: LabProcess, pattern: str, within: float = 15.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if re.search(pattern, proc.output()):
                return
            if proc.popen.poll() is not None:
                raise LabError(f"{proc.name} exited ({proc.popen.returncode}) before "
                               f"{pattern!r}:\n{proc.output()[-2000:]}")
            time.sleep(0.05)
        raise LabError(f"{proc.name}: {pattern!r} not seen in {within} s:\n"
                       f"{proc.output()[-2000:]}")

    def _start_delayer(self, router: str, direction: str, queue: int,
                       impairment: Impairment) -> LabProcess:
        proc = self.spawn(router, f"delay-{router}-{direction}-{len(self.processes)}", [
            sys.executable, str(DELAYER), "--queue", str(queue),
            "--delay-ms", str(impairment.delay_ms), "--jitter-ms", str(impairment.jitter_ms)])
        self._wait_for(proc, r"^ready", 10.0)
        return proc

    def _listening(self, node: str, port: int, udp: bool = False) -> bool:
        out = _run("ip", "netns", "exec", self.ns(node), "ss", "-Hln" + ("u" if udp else "t"),
                   check=False)
        return any(f":{port} " in line + " " for line in out.splitlines())

    def _wait_listening(self, proc: LabProcess, port: int, within: float = 15.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self._listening("pub", port):
                return
            if proc.popen.poll() is not None:
                raise LabError(f"{proc.name} exited ({proc.popen.returncode}):\n"
                               f"{proc.output()[-3000:]}")
            time.sleep(0.05)
        raise LabError(f"{proc.name} is not listening on {port} after {within} s:\n"
                       f"{proc.output()[-3000:]}")

    def start_coturn(self, *extra: str) -> LabProcess:
        """coturn on the public address with ``server/coturn.conf`` and the lab's secret
        (and ``extra`` turnserver options, e.g. ``--no-stun``)."""
        proc = self.spawn("pub", "coturn", turnserver_command(
            ip=PUBLIC_IP, secret=self.turn_secret, realm=self.realm, workdir=self.workdir,
            # The lab's private hosts use 10.x: let the relay reach them.
            extra=["--allowed-peer-ip", "10.0.0.0-10.255.255.255", "--no-software-attribute",
                   *extra]))
        self._wait_listening(proc, TURN_PORT)
        return proc

    def start_hub(self, *, stun: bool = True, turn: Sequence[str] = ("udp",),
                  turn_ttl: float = 3600.0) -> LabProcess:
        """``softphone serve`` on the public address, handing out the lab's STUN/TURN.

        TURN credentials: ``--turn URL --turn-secret S`` (time-limited, signed
        with coturn's static-auth-secret) when this softphone has it, otherwise
        static REST credentials through ``--ice-username/--ice-credential``.
        """
        argv = [*softphone_argv("serve"), "--host", PUBLIC_IP, "--port", str(HUB_PORT)]
        if stun:
            argv += ["--ice-server", self.stun_url()]
        if turn and serve_has_turn_secret():
            for transport in turn:
                argv += ["--turn", self.turn_url(transport)]
            argv += ["--turn-secret", self.turn_secret, "--turn-ttl", str(turn_ttl)]
        elif turn:
            username, credential = self.turn_credentials("hub", turn_ttl)
            argv += [arg for t in turn for arg in ("--ice-server", self.turn_url(t))]
            argv += ["--ice-username", username, "--ice-credential", credential]
        if not stun and not turn:
            argv += ["--ice-server", "none"]
        return self._hub(argv)

    def start_hub_with(self, *options: str) -> LabProcess:
        """``softphone serve`` on the public address with exactly ``options`` (a hub
        :meth:`start_hub` does not make: another TURN secret, static credentials ...)."""
        return self._hub([*softphone_argv("serve"), "--host", PUBLIC_IP, "--port",
                          str(HUB_PORT), *options])

    def _hub(self, argv: list[str]) -> LabProcess:
        """The hub ``argv`` runs: the one running already if it was started so (a lab that
        tests share, :meth:`reset`), else a new one, in place of any other."""
        for proc in self.processes:
            if (proc.name.startswith("hub-") and proc.popen.poll() is None
                    and proc.popen.args == self.exec_argv("pub", argv)):
                return proc
        self.stop_hubs()
        self._hubs_started += 1
        proc = self.spawn("pub", f"hub-{self._hubs_started}", argv)
        self._wait_listening(proc, HUB_PORT)
        return proc

    def stop_hubs(self) -> None:
        running = [p for p in self.processes
                   if p.name.startswith("hub-") and p.popen.poll() is None]
        for proc in running:
            proc.stop()
        deadline = time.monotonic() + 5.0
        while running and self._listening("pub", HUB_PORT) and time.monotonic() < deadline:
            time.sleep(0.05)

    def reset(self) -> None:
        """Back to as built, for the next of the tests that share this lab: both routers
        plain endpoint-independent NAT, unimpaired (:meth:`configure` replaces every rule,
        so no outage or rebinding is left either), the routers' connection tracking
        flushed (no NAT mapping of an earlier call is left), and every process stopped
        but coturn and the hub. A host that switched networks cannot go back: a
        :class:`LabError`."""
        if self._moved or self._second:
            raise LabError(f"{sorted(self._second)} have a second network: build a new lab")
        kept = []
        for proc in self.processes:
            if proc.popen.poll() is not None:
                continue
            if proc.name == "coturn" or proc.name.startswith("hub-"):
                kept.append(proc)
            else:
                proc.stop()
        self.processes[:] = kept
        if not any(p.name == "coturn" for p in kept):
            raise LabError("coturn is not running")
        self.configure_both(RouterConfig())
        if shutil.which("conntrack"):
            for side in ("a", "b"):
                _run("ip", "netns", "exec", self.ns(self.router_of(side)), "conntrack", "-F",
                     check=False)

    def exec_argv(self, node: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside ``node``'s namespace (for callers that spawn it themselves)."""
        return ["ip", "netns", "exec", self.ns(node), *argv]

    # -- network events in the middle of a call ------------------------------------

    def router_of(self, side: str) -> str:
        """The router ``side``'s host goes through now: ``ra`` or, once moved, ``ra2``."""
        return f"r{side}2" if side in self._moved else f"r{side}"

    def host_ip(self, side: str) -> str:
        """``side``'s current private address."""
        return SECOND_HOST_IP[side] if side in self._moved else HOST_IP[side]

    def public_ip(self, side: str) -> str:
        """The address the internet sees ``side`` at now."""
        return SECOND_ROUTER_WAN[side] if side in self._moved else ROUTER_WAN[side]

    def _wire_router(self, router: str, side: str, host_dev: str, wan: str, lan: str) -> None:
        """Router ``router``'s ``wan`` on the public bridge and ``lan`` to ``side``'s
        ``host_dev``, with their addresses, up, and a default route."""
        self._ip(router, "link", "add", "wan", "type", "veth", "peer", "name",
                 f"to-{router}", "netns", self.ns("pub"))
        self._ip("pub", "link", "set", f"to-{router}", "master", "br0")
        self._ip("pub", "link", "set", f"to-{router}", "up")
        self._ip(router, "link", "add", "lan", "type", "veth", "peer", "name", host_dev,
                 "netns", self.ns(side))
        self._ip(router, "addr", "add", f"{wan}/24", "dev", "wan")
        self._ip(router, "addr", "add", f"{lan}/24", "dev", "lan")
        self._ip(router, "link", "set", "wan", "up")
        self._ip(router, "link", "set", "lan", "up")
        self._ip(router, "route", "add", "default", "via", MISSING_GATEWAY)

    def add_second_network(self, side: str, config: RouterConfig | None = None) -> None:
        """Build ``side``'s second home: router ``r<side>2`` (NAT as ``config``, no
        impairments) with its own public address, and a link ``eth1`` to the host,
        still down and without an address (:meth:`switch_network` brings it up)."""
        if side in self._second:
            return
        config = config or RouterConfig()
        if config.nat not in NAT_KINDS:
            raise ValueError(f"nat must be one of {NAT_KINDS}")
        router = f"r{side}2"
        if self.ns(router) in _lab_namespaces():
            _delete_namespace(self.ns(router))
        _add_namespace(self.ns(router))
        self._namespaces.append(self.ns(router))
        self._ip(router, "link", "set", "lo", "up")
        self._sysctl(router, "net.ipv6.conf.all.disable_ipv6=1",
                     "net.ipv6.conf.default.disable_ipv6=1", "net.ipv4.ip_forward=1")
        self._wire_router(router, side, "eth1", SECOND_ROUTER_WAN[side],
                          SECOND_ROUTER_LAN[side])
        _run("ip", "netns", "exec", self.ns(router), "iptables-restore",
             input=self._ruleset(RouterConfig(nat=config.nat, block_udp=config.block_udp)))
        self._second.add(side)

    def switch_network(self, side: str) -> str:
        """Move ``side``'s host to its second home, as a laptop does from Wi-Fi to a
        tether: the new link comes up with a new address and the default route,
        then the old address goes and its link goes down. Returns the new address."""
        if side in self._moved:
            raise LabError(f"{side} has already switched networks")
        self.add_second_network(side)
        _run("ip", "-n", self.ns(side), "-batch", "-", input="\n".join([
            "link set eth1 up",
            f"addr add {SECOND_HOST_IP[side]}/24 dev eth1",
            f"route replace default via {SECOND_ROUTER_LAN[side]} dev eth1",
            f"addr del {HOST_IP[side]}/24 dev eth0",
            "link set eth0 down", ""]))
        self._moved.add(side)
        log.info("%s moved from %s to %s", side, HOST_IP[side], SECOND_HOST_IP[side])
        return SECOND_HOST_IP[side]

    def nat_mappings(self, side: str, protocol: str = "udp") -> list[NatMapping]:
        """The flows of ``side``'s host through its router's NAT (``conntrack -L``)."""
        out = _run("ip", "netns", "exec", self.ns(self.router_of(side)), "conntrack", "-L",
                   "-p", protocol, check=False)
        mappings = []
        for line in out.splitlines():
            fields = re.findall(r"(src|dst|sport|dport)=(\S+)", line)
            if len(fields) < 8:
                continue
            orig = dict(fields[:4])
            reply = dict(fields[4:8])
            if orig["src"] != self.host_ip(side):
                continue
            mappings.append(NatMapping(protocol, orig["src"], int(orig["sport"]),
                                       orig["dst"], int(orig["dport"]), reply["dst"],
                                       int(reply["dport"])))
        return mappings

    def rebind_nat(self, side: str, tcp: bool = False) -> list[NatMapping]:
        """``side``'s router forgets its UDP mappings (and TCP ones with ``tcp``): the
        next packet of each flow gets a new external port (from :data:`REBIND_PORTS`),
        and what the far end sends to the old one is dropped. New flows are mapped
        as before. Returns the mappings that were forgotten."""
        router = self.router_of(side)
        protocols = ("udp", "tcp") if tcp else ("udp",)
        old = [m for p in protocols for m in self.nat_mappings(side, p)]
        lo, hi = REBIND_PORTS
        rules = []
        for protocol in protocols:
            ports = sorted({m.host_port for m in old if m.protocol == protocol})
            for i in range(0, len(ports), 15):  # multiport takes 15 ports a rule
                rules.append(f"-I POSTROUTING 1 -o wan -p {protocol} -m multiport --sports "
                             f"{','.join(map(str, ports[i:i + 15]))} -m comment --comment "
                             f"splab-rebind -j MASQUERADE --to-ports {lo}-{hi}")
        if rules:
            _run("ip", "netns", "exec", self.ns(router), "iptables-restore", "--noflush",
                 input="\n".join(["*nat", *rules, "COMMIT", ""]))
        for protocol in protocols:
            _run("ip", "netns", "exec", self.ns(router), "conntrack", "-D", "-p", protocol,
                 "-s", self.host_ip(side), check=False)  # exit 1 when there was none
        log.info("%s forgot %d mappings of %s", router, len(old), side)
        return old

    def start_outage(self, side: str) -> None:
        """``side``'s home loses its connection: its router passes nothing either
        way (dropped before connection tracking, so nothing on the router changes,
        as when the link itself is down). Undo with :meth:`end_outage`."""
        _run("ip", "netns", "exec", self.ns(self.router_of(side)), "iptables", "-t", "raw",
             "-I", "PREROUTING", "1", "-m", "comment", "--comment", _OUTAGE_TAG, "-j", "DROP")

    def end_outage(self, side: str) -> None:
        _run("ip", "netns", "exec", self.ns(self.router_of(side)), "iptables", "-t", "raw",
             "-D", "PREROUTING", "-m", "comment", "--comment", _OUTAGE_TAG, "-j", "DROP")

    def stun_binding(self, node: str, local_port: int = 0,
                     timeout: float = 5.0) -> tuple[str, int]:
        """(address, port) the lab's coturn sees a STUN request from ``node`` come from."""
        try:
            proc = subprocess.run(self.exec_argv(node, [
                sys.executable, "-c", _STUN_CLIENT, PUBLIC_IP, str(TURN_PORT),
                str(local_port)]), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"STUN from {node}: no answer in {timeout} s") from exc
        if proc.returncode != 0:
            raise LabError(f"STUN from {node} failed: {proc.stderr.strip()}")
        address, port = proc.stdout.split()
        return address, int(port)

    def hub_reachable(self, node: str, timeout: float = 3.0) -> bool:
        """Whether ``node`` gets an answer from the hub's ``/healthz``."""
        code = ("import sys, urllib.request; "
                f"urllib.request.urlopen(sys.argv[1], timeout={timeout}).read()")
        proc = subprocess.run(self.exec_argv(node, [
            sys.executable, "-c", code, f"{self.hub_url}/healthz"]),
            capture_output=True, timeout=timeout + 5)
        return proc.returncode == 0

    # -- teardown ---------------------------------------------------------------

    def close(self) -> None:
        """Stop every process and delete every namespace of this lab. Idempotent."""
        for proc in reversed(self.processes):
            with contextlib.suppress(Exception):
                proc.stop(2.0)
        self.processes.clear()
        self._delayers.clear()
        for ns in reversed(self._namespaces):
            _delete_namespace(ns)
        self._namespaces.clear()
        for ns in _lab_namespaces():  # a build that failed half-way
            if ns.startswith(f"{self.tag}-"):
                _delete_namespace(ns)


@contextlib.contextmanager
def lab(workdir: Path, **kwargs: object) -> Iterator[NetLab]:
    """A built lab, torn down on the way out whatever happens (also on Ctrl-C)."""
    remove_stale_labs()
    the_lab = NetLab(workdir, **kwargs)  # type: ignore[arg-type]
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwind through the finally below

    in_main = _is_main_thread()
    if in_main:
        signal.signal(signal.SIGTERM, on_term)
    try:
        the_lab.build()
        yield the_lab
    finally:
        the_lab.close()
        if in_main:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def started_lab(workdir: Path, *, hub: bool = False) -> Iterator[NetLab]:
    """The lab of a test (for its ``netlab`` fixture): skipped, or failed in CI, when a
    requirement is missing; coturn running; with ``hub``, a hub that hands out STUN only
    (cone NAT + STUN: the common case)."""
    from ..conftest import need  # (here: the benchmarks use this module too)

    problems = missing_requirements()
    need(not problems, "a requirement of the network lab", "; ".join(problems))
    with lab(workdir) as the_lab:
        the_lab.start_coturn()
        if hub:
            the_lab.start_hub(turn=())
        yield the_lab


@contextlib.contextmanager
def shared_lab(workdir: Path, *, hub: bool = False) -> Iterator[Callable[[], NetLab]]:
    """One lab for several tests (a module-scoped fixture): yields a function that gives
    each test the lab :meth:`NetLab.reset` (as :func:`started_lab` makes it; the first
    call builds it), or a new one where a reset cannot undo what a test did."""
    with contextlib.ExitStack() as stack:
        current: list[NetLab] = []

        def get() -> NetLab:
            if current:
                try:
                    current[0].reset()
                    return current[0]
                except LabError as exc:
                    log.warning("building the shared lab again: %s", exc)
                    current.clear()
                    stack.close()
            built = len(list(workdir.glob("lab*")))
            current.append(stack.enter_context(started_lab(workdir / f"lab{built}", hub=hub)))
            return current[0]

        yield get


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def softphone_argv(*args: str) -> list[str]:
    """The venv's ``softphone`` (next to this interpreter), or ``python -m softphone``."""
    script = Path(sys.executable).with_name("softphone")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), *args]
    return [sys.executable, "-m", "softphone", *args]


_serve_help: str | None = None


def serve_has_turn_secret() -> bool:
    """Whether ``softphone serve`` can hand out time-limited TURN credentials."""
    global _serve_help
    if _serve_help is None:
        _serve_help = _run(*softphone_argv("serve", "--help"), check=False)
    return "--turn-secret" in _serve_help


# -- calls through the lab ------------------------------------------------------------

CALLER_TONE = 440.0
CALLEE_TONE = 660.0


@dataclass
class Party:
    """One softphone of a call through the lab, after it exited."""

    role: str
    exit_code: int | None
    events: list[dict[str, object]]
    stdout: str
    stderr: str
    recording: Path

    @property
    def ended(self) -> dict[str, object]:
        return next((e for e in reversed(self.events) if e.get("event") == "ended"), {})

    @property
    def candidate_pairs(self) -> list[dict[str, Any]]:
        """Every candidate pair the call's media used, in order: the first connection's
        (the ``media`` event), then each new connection's (``media-restart`` events: a
        media restart may connect through another pair)."""
        pairs = [e.get("candidate_pair") for e in self.events
                 if e.get("event") in ("media", "media-restart")]
        return [p for p in pairs if isinstance(p, dict)]

    @property
    def candidate_pair(self) -> dict[str, Any] | None:
        """The pair in force at the end: the last of :attr:`candidate_pairs` (the
        ``ended`` event's when the media never connected)."""
        pairs = self.candidate_pairs
        if pairs:
            return pairs[-1]
        if any(e.get("event") == "media" for e in self.events):
            return None  # (connected, yet said no pair)
        pair = self.ended.get("candidate_pair")
        return pair if isinstance(pair, dict) else None

    def pair_text(self, pair: dict[str, Any] | None = None) -> str:
        """``pair`` (default: the one in force at the end) as the status line says it."""
        pair = self.candidate_pair if pair is None else pair
        if pair is None:
            return "-"

        def end(c: dict[str, Any]) -> str:
            via = f" (TURN/{c['relay_protocol']})" if c.get("relay_protocol") else ""
            return f"{c['type']}/{c['protocol']}{via}"
        return f"{end(pair['local'])} <-> {end(pair['remote'])}"


@dataclass
class CallRun:
    caller: Party
    callee: Party
    wall_seconds: float  # caller started -> caller exited

    def describe(self) -> str:
        return "\n".join(f"--- {p.role}: exit {p.exit_code}\nstdout:\n{p.stdout[-3000:]}\n"
                         f"stderr:\n{p.stderr[-3000:]}" for p in (self.caller, self.callee))


def _events(text: str) -> list[dict[str, object]]:
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                out.append(event)
    return out


def run_call(the_lab: NetLab, name: str, *, caller_args: Sequence[str] = (),
             callee_args: Sequence[str] = (), duration: float = 2.0,
             setup_timeout: float = 10.0, within: float = 60.0,
             callee_node: str = "b") -> CallRun:
    """``a`` calls ``b`` through the lab's hub; both send tones, record, and print JSON.

    ``duration``: talk time; the default, 2 s, leaves each recording twice the second
    of tone after its first half second that the tests check. ``callee_node``: where
    ``b`` runs (``pub``: on the public segment, beside the hub and coturn)."""
    rec_a = the_lab.workdir / f"{name}-heard-by-a.wav"
    rec_b = the_lab.workdir / f"{name}-heard-by-b.wav"
    common = ["--server", the_lab.hub_url, "--json", "--setup-timeout", str(setup_timeout)]
    callee = the_lab.spawn(callee_node, f"{name}-callee", softphone_argv(
        "listen", "--as", "b", "--auto-accept", "--once", "--tone", str(CALLEE_TONE),
        "--record", str(rec_b), *common, *callee_args))
    try:
        the_lab._wait_for(callee, r'"event":\s*"listening"', 20.0)
        started = time.monotonic()
        caller = the_lab.spawn("a", f"{name}-caller", softphone_argv(
            "call", "b", "--as", "a", "--tone", str(CALLER_TONE), "--record", str(rec_a),
            "--duration", str(duration), *common, *caller_args))
        try:
            caller.popen.wait(within)
        except subprocess.TimeoutExpired:
            caller.stop()
        wall = time.monotonic() - started
        try:
            callee.popen.wait(15.0)
        except subprocess.TimeoutExpired:
            callee.stop()
    finally:
        callee.stop()
    parties = [Party(role, proc.popen.returncode, _events(proc.stdout()), proc.stdout(),
                     proc.stderr(), rec)
               for role, proc, rec in (("caller", caller, rec_a), ("callee", callee, rec_b))]
    return CallRun(parties[0], parties[1], wall)


@dataclass
class TimedEvent:
    """Something done to the lab during a call, ``at`` seconds after media connected."""

    at: float
    name: str
    action: Callable[[], object]  # (what it returns is not used)


def run_call_with_events(the_lab: NetLab, name: str, events: Sequence[TimedEvent], *,
                         caller_args: Sequence[str] = (), callee_args: Sequence[str] = (),
                         duration: float = 10.0, setup_timeout: float = 10.0,
                         within: float | None = None) -> CallRun:
    """As :func:`run_call`, doing ``events`` while the call is up (in this thread).

    Times are counted from the caller's ``media`` event (ICE and DTLS connected):
    about where its recording starts.
    """
    within = duration + setup_timeout + 40.0 if within is None else within
    rec_a = the_lab.workdir / f"{name}-heard-by-a.wav"
    rec_b = the_lab.workdir / f"{name}-heard-by-b.wav"
    common = ["--server", the_lab.hub_url, "--json", "--setup-timeout", str(setup_timeout)]
    callee = the_lab.spawn("b", f"{name}-callee", softphone_argv(
        "listen", "--as", "b", "--auto-accept", "--once", "--tone", str(CALLEE_TONE),
        "--record", str(rec_b), *common, *callee_args))
    caller: LabProcess | None = None
    try:
        the_lab._wait_for(callee, r'"event":\s*"listening"', 20.0)
        started = time.monotonic()
        caller = the_lab.spawn("a", f"{name}-caller", softphone_argv(
            "call", "b", "--as", "a", "--tone", str(CALLER_TONE), "--record", str(rec_a),
            "--duration", str(duration), *common, *caller_args))
        the_lab._wait_for(caller, r'"event":\s*"media"', setup_timeout + 10.0)
        media_at = time.monotonic()
        for event in sorted(events, key=lambda e: e.at):
            wait = media_at + event.at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            log.info("%s: %s at %.2f s", name, event.name, time.monotonic() - media_at)
            event.action()
        try:
            caller.popen.wait(max(1.0, started + within - time.monotonic()))
        except subprocess.TimeoutExpired:
            caller.stop()
        wall = time.monotonic() - started
        try:
            callee.popen.wait(15.0)
        except subprocess.TimeoutExpired:
            callee.stop()
    finally:
        callee.stop()
        if caller is not None:
            caller.stop()
    assert caller is not None
    parties = [Party(role, proc.popen.returncode, _events(proc.stdout()), proc.stdout(),
                     proc.stderr(), rec)
               for role, proc, rec in (("caller", caller, rec_a), ("callee", callee, rec_b))]
    return CallRun(parties[0], parties[1], wall)
