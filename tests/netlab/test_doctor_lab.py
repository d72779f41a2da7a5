"""``softphone doctor`` in the network lab: the causes issue 17 names, for real.

Each test builds the network lab (``tests/support/netlab.py``: two homes
behind NAT routers, the hub and a real coturn on the public segment), breaks
one thing as it breaks in the field, and runs ``softphone doctor --server
<the lab's hub> --json`` as a subprocess in home ``a`` (10.1.0.2 behind
router ``ra``, public 203.0.113.11), where the lab's phones run:

- a healthy setup: every check ok, STUN sees the NAT's public address;
- the hub down (its process stopped; or its port dropped by a firewall);
- STUN dead (coturn with ``--no-stun``, TURN still up; or the only STUN
  server gone and no TURN);
- TURN credentials refused (a hub signing them with another secret than
  coturn's, or handing out expired static ones);
- UDP blocked at ``a``'s router, TURN over TCP still working (the hub's
  first TURN URL over UDP, then over TCP).

The JSON must name the cause on the right line and the exit code must say
whether a call can be made (0) or not (13). Where that verdict is not plain,
a real call from ``a`` to ``b`` through the same lab shows it is right.

They need root, iproute2, iptables, conntrack and coturn: outside CI they
skip with the reason, in CI they fail.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..conftest import need, need_command
from ..support.netlab import (
    HOST_IP,
    HUB_PORT,
    PUBLIC_IP,
    ROUTER_WAN,
    TURN_PORT,
    CallRun,
    NetLab,
    RouterConfig,
    lab,
    missing_requirements,
    run_call,
    softphone_argv,
)

pytestmark = pytest.mark.netlab

#: The doctor's wait for each answer (--timeout): what "no answer" takes (an answer in
#: the lab takes milliseconds).
WAIT = 2.0
CALL_POSSIBLE, NO_CALL = 0, 13
TURN = f"turn:{PUBLIC_IP}:{TURN_PORT}"
#: The hub's TURN credentials last an hour from when it made them, a moment after
#: the doctor started: 59 min, or (the hub's clock past a whole second) 1 h 0 min.
AN_HOUR = "(59 min|1 h 0 min)"


@pytest.fixture
def netlab(tmp_path: Path) -> Iterator[NetLab]:
    """The lab, nothing started: each test starts coturn and the hub as it needs them."""
    problems = missing_requirements()
    need(not problems, "a requirement of the network lab", "; ".join(problems))
    with lab(tmp_path / "lab") as the_lab:
        yield the_lab


@dataclass
class Diagnosis:
    """What one ``softphone doctor --json`` run said."""

    exit_code: int
    report: dict[str, Any]
    stderr: str

    @property
    def names(self) -> list[str]:
        return [c["name"] for c in self.report["checks"]]

    def __getitem__(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] | None = next(
            (c for c in self.report["checks"] if c["name"] == name), None)
        assert found is not None, f"no {name!r} check:\n{self}"
        return found

    def __str__(self) -> str:
        lines = [f"exit {self.exit_code}"]
        for c in self.report["checks"]:
            lines.append(f"{c['status']:<4}  {c['name']:<11}  {c['detail']}")
            if c["fix"]:
                lines.append(f"{'':<17}  fix: {c['fix']}")
        return "\n".join(lines)


def doctor(the_lab: NetLab, *args: str, side: str = "a") -> Diagnosis:
    """``softphone doctor --server <hub> --json`` in ``side``'s home, as a user runs it."""
    argv = the_lab.exec_argv(side, softphone_argv(
        "doctor", "--server", the_lab.hub_url, "--as", side, "--json", "--no-audio",
        "--timeout", f"{WAIT:g}", *args))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=90)
    assert "Traceback" not in proc.stderr, proc.stderr
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"doctor printed no JSON (exit {proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}") from None
    got = Diagnosis(proc.returncode, report, proc.stderr)
    assert report["exit_code"] == proc.returncode, got
    assert report["call_possible"] is (proc.returncode == CALL_POSSIBLE), got
    return got


def assert_line(got: Diagnosis, name: str, status: str,
                *in_detail: str | re.Pattern[str]) -> dict[str, Any]:
    """The check ``name`` has ``status`` and its detail says each of ``in_detail``
    (a text, or a pattern to search for)."""
    check = got[name]
    assert check["status"] == status, f"{name}: {check['status']}, not {status}\n{got}"
    for text in in_detail:
        found = text.search(check["detail"]) if isinstance(text, re.Pattern) else \
            text in check["detail"]
        assert found, f"{name}: {text!r} not in the detail\n{got}"
    return check


def assert_call(run: CallRun, outcome: str, local_type: str | None = None,
                relay_protocol: str | None = None) -> None:
    caller = run.caller
    assert caller.ended.get("outcome") == outcome, run.describe()
    assert "Traceback" not in caller.stderr, run.describe()
    if local_type is not None:
        # Every pair the call used (a media restart connects through a new one).
        assert caller.candidate_pairs, run.describe()
        for pair in caller.candidate_pairs:
            assert pair["local"]["type"] == local_type, caller.pair_text(pair)
            assert pair["local"].get("relay_protocol") == relay_protocol, \
                caller.pair_text(pair)


# ------------------------------------------------------------- healthy ---


def test_healthy_setup_every_check_ok_and_stun_sees_the_nat(netlab: NetLab) -> None:
    need_command("conntrack", "conntrack")
    netlab.start_coturn()
    netlab.start_hub(turn=("udp", "tcp"))
    got = doctor(netlab)
    assert got.exit_code == CALL_POSSIBLE, got
    assert got.names == ["hub", "version", "signaling", "auth", "ice-servers", "stun",
                         "turn udp", "turn tcp", "media path", "libopus"], got
    assert [c["name"] for c in got.report["checks"] if c["status"] != "ok"] == [], got
    assert all(c["ok"] and not c["fix"] for c in got.report["checks"]), got
    assert_line(got, "hub", "ok", f"{netlab.hub_url} answers: status ok")
    assert_line(got, "ice-servers", "ok", f"stun:{PUBLIC_IP}:{TURN_PORT}", TURN,
                f"{TURN}?transport=tcp", re.compile(rf"\(TURN credentials for {AN_HOUR}\)$"))
    # STUN: answered by coturn, and the address it saw is the NAT's, not ours.
    stun = assert_line(got, "stun", "ok", f"answered from {PUBLIC_IP}:{TURN_PORT}",
                       f"it sees us as {ROUTER_WAN['a']}:", f"(we are {HOST_IP['a']} here: "
                       "behind NAT)")
    address, port = stun["data"]["mapped"].split(":")
    assert (address, stun["data"]["local"]) == (ROUTER_WAN["a"], HOST_IP["a"])
    # ... the very mapping router ra made for the doctor's binding request.
    assert any(m.public == ROUTER_WAN["a"] and m.public_port == int(port)
               and (m.remote, m.remote_port) == (PUBLIC_IP, TURN_PORT)
               for m in netlab.nat_mappings("a")), netlab.nat_mappings("a")
    for transport in ("udp", "tcp"):
        turn = assert_line(got, f"turn {transport}", "ok", f"relay {PUBLIC_IP}:")
        assert turn["data"]["mapped"].startswith(f"{ROUTER_WAN['a']}:"), got
    assert got["media path"]["detail"] == ("calls can go through the TURN relay (udp) and "
                                           "directly through NAT (STUN answered)"), got


# ------------------------------------------------------------ hub down ---


@pytest.mark.parametrize("how", ["stopped", "firewalled"])
def test_hub_down_names_the_hub(netlab: NetLab, how: str) -> None:
    netlab.start_coturn()
    netlab.start_hub()
    if how == "stopped":
        netlab.stop_hubs()
        why = "Connection refused"
    else:  # the hub's host drops what comes to its port: no answer at all
        subprocess.run(netlab.exec_argv("pub", [
            "iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(HUB_PORT), "-j", "DROP"]),
            check=True, capture_output=True, timeout=30)
        why = "no answer"
    assert not netlab.hub_reachable("a", timeout=1.0)
    got = doctor(netlab)
    assert got.exit_code == NO_CALL, got
    hub = assert_line(got, "hub", "fail", f"cannot reach {netlab.hub_url}: {why}")
    assert "is the hub running (softphone serve) and is --server right?" in hub["fix"]
    # Nothing more is claimed: which STUN/TURN servers a call would get is unknown.
    assert got.names == ["hub", "libopus"], got
    assert [c["name"] for c in got.report["checks"] if c["status"] == "fail"] == ["hub"]


# ----------------------------------------------------------- STUN dead ---


def test_stun_dead_turn_still_works_a_call_can_be_made(netlab: NetLab) -> None:
    netlab.start_coturn("--no-stun")  # coturn answers TURN, but no STUN binding
    netlab.start_hub()  # hands out its STUN and TURN over UDP
    got = doctor(netlab)
    assert got.exit_code == CALL_POSSIBLE, got
    stun = assert_line(got, "stun", "warn", f"no answer over UDP in {WAIT:g} s",
                       "yet TURN over UDP to the same server answers: UDP gets there, its "
                       "STUN does not answer")
    assert stun["ok"] is False and "STUN service is off" in stun["fix"]
    assert_line(got, "turn udp", "ok", f"relay {PUBLIC_IP}:")
    assert got["media path"]["detail"] == (
        "calls can go through the TURN relay (udp), not directly: STUN does not answer, "
        "so every call is relayed"), got
    assert got["media path"]["status"] == "ok"
    # As the doctor says: the call connects, through the relay.
    run = run_call(netlab, "stun-dead")
    assert_call(run, "completed", "relay", "udp")


def test_stun_dead_without_turn_warns_that_only_this_network_is_reachable(
        netlab: NetLab) -> None:
    coturn = netlab.start_coturn()
    netlab.start_hub(turn=())  # STUN only
    coturn.stop()  # the STUN server is gone: its host answers ICMP port unreachable
    got = doctor(netlab)
    stun = assert_line(got, "stun", "warn",
                       f"stun:{PUBLIC_IP}:{TURN_PORT}: connection refused (nothing listens "
                       "there)")
    assert stun["ok"] is False and stun["data"]["local"] == HOST_IP["a"]
    media = assert_line(got, "media path", "warn",
                        "no STUN server answered and there is no TURN relay",
                        f"this host's address ({HOST_IP['a']}) is private, so only phones on "
                        "its own network (or at a public address) can be reached")
    assert media["ok"] is False and media["needed"] is False
    # Calls within a network still work, so the exit code says a call can be made ...
    assert got.exit_code == CALL_POSSIBLE, got
    # ... and the warning is true: a call to b, behind another NAT, cannot connect.
    run = run_call(netlab, "stun-gone", setup_timeout=5.0, within=40.0)
    assert_call(run, "media-failed")


# ---------------------------------------------- TURN credentials refused ---


@pytest.mark.parametrize("problem", ["wrongly-signed", "expired"])
def test_turn_credentials_refused_names_the_401_and_why(netlab: NetLab, problem: str) -> None:
    netlab.start_coturn()
    stun = netlab.stun_url()
    why: list[str | re.Pattern[str]]
    if problem == "wrongly-signed":  # time-limited ones, signed with another secret
        netlab.start_hub_with("--ice-server", stun, "--turn", TURN,
                              "--turn-secret", "not-coturns-secret")
        why = [re.compile(rf"credentials refused \(401 Unauthorized\): they are not expired "
                          rf"\({AN_HOUR} left\), so their signature is not accepted")]
        fix = "--turn-secret, which must be the TURN server's secret (coturn: " \
            "static-auth-secret)"
    else:  # static REST credentials an operator forgot to renew
        username, credential = netlab.turn_credentials("hub", ttl=-150.0)
        netlab.start_hub_with("--ice-server", stun, "--ice-server", TURN,
                              "--ice-username", username, "--ice-credential", credential)
        why = ["credentials refused (401 Unauthorized): they expired 2 min ago (",
               "as the hub handed them out"]  # (150 s: 2 min, whatever the rounding)
        fix = "the hub hands out expired TURN credentials: its operator should renew the " \
            "static --ice-username/--ice-credential"
    got = doctor(netlab)
    if problem == "expired":
        listed = assert_line(got, "ice-servers", "warn",
                             "the TURN credentials it hands out expired 2 min ago")
        assert "--turn-secret hands out fresh ones" in listed["fix"]
    else:
        assert_line(got, "ice-servers", "ok", re.compile(rf"\(TURN credentials for {AN_HOUR}\)"))
    for transport in ("udp", "tcp"):
        turn = assert_line(got, f"turn {transport}", "warn", *why)
        assert turn["ok"] is False and fix in turn["fix"], got
    # STUN works through this (endpoint-independent) NAT: calls go direct, so a call
    # can be made; only those that need a relay would fail.
    assert_line(got, "stun", "ok", f"it sees us as {ROUTER_WAN['a']}:")
    assert_line(got, "media path", "warn", "the TURN server refused the credentials: calls "
                "that need a relay (symmetric NAT, UDP blocked) will fail")
    assert got.exit_code == CALL_POSSIBLE, got
    # Relay only: no relay, no call.
    relay = doctor(netlab, "--relay")
    assert_line(relay, "media path", "fail", "the TURN server refused the credentials")
    assert relay.exit_code == NO_CALL, relay
    assert [c["name"] for c in relay.report["checks"] if c["status"] == "fail"] == \
        ["media path"], relay


# --------------------------------------------------------- UDP blocked ---


def test_udp_blocked_with_the_udp_turn_url_first_no_call(netlab: NetLab) -> None:
    """The hub lists TURN over UDP first: a call uses only that one, so none connects,
    though the TURN server answers over TCP; the fix says to list the TCP URL first."""
    netlab.start_coturn()
    netlab.configure("a", RouterConfig(block_udp=True))
    netlab.start_hub(turn=("udp", "tcp"))
    got = doctor(netlab)
    assert got.exit_code == NO_CALL, got
    blocked = "the same server answers TURN over TCP: UDP to it seems blocked here"
    for name, silent in (("stun", f"no answer over UDP in {WAIT:g} s"),
                         ("turn udp", f"no answer in {WAIT:g} s")):
        check = assert_line(got, name, "warn", silent, blocked)
        assert check["fix"] == f"allow outgoing UDP (to port {TURN_PORT}) in this " \
            "network's firewall", got
    assert_line(got, "turn tcp", "ok", "(unused: a call takes the first TURN URL only)",
                f"relay {PUBLIC_IP}:")
    media = assert_line(got, "media path", "fail", "UDP seems blocked here",
                        "a call uses the first TURN URL, over UDP")
    assert f'list "{TURN}?transport=tcp" first (the hub hands it out, after the UDP one' \
        in media["fix"], got
    assert [c["name"] for c in got.report["checks"] if c["status"] == "fail"] == \
        ["media path"], got
    # As the doctor says: no call connects.
    run = run_call(netlab, "udp-first", setup_timeout=5.0, within=40.0)
    assert_call(run, "media-failed")


def test_udp_blocked_turn_over_tcp_first_a_call_can_be_made(netlab: NetLab) -> None:
    """The hub lists TURN over TCP first: calls connect through it; the doctor says UDP
    is blocked, exits 0, and suggests --relay, which sets calls up without waiting
    for UDP."""
    netlab.start_coturn()
    netlab.configure("a", RouterConfig(block_udp=True))
    netlab.start_hub(turn=("tcp", "udp"))
    got = doctor(netlab)
    assert got.exit_code == CALL_POSSIBLE, got
    assert_line(got, "stun", "warn", "UDP to it seems blocked here")
    assert_line(got, "turn udp", "warn", "(unused: a call takes the first TURN URL only)",
                "UDP to it seems blocked here")
    assert_line(got, "turn tcp", "ok", f"relay {PUBLIC_IP}:")
    media = assert_line(got, "media path", "warn",
                        "UDP seems blocked here: STUN and TURN over UDP do not answer; calls "
                        "go through the TURN relay over TCP")
    assert media["ok"] is True and "--relay (ice.relay = true)" in media["fix"], got
    relay = doctor(netlab, "--relay")
    assert relay.exit_code == CALL_POSSIBLE, relay
    assert "--relay" not in relay["media path"]["fix"]  # (already)
    # As the doctor says: the call connects, through the relay over TCP.
    run = run_call(netlab, "tcp-first", caller_args=["--relay"], setup_timeout=10.0)
    assert_call(run, "completed", "relay", "tcp")
