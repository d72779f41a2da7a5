"""Calls through real networks: NAT, TURN, loss and jitter, in a network lab.

Each test builds the lab of ``tests/netlab.py`` (network namespaces: two
homes behind NAT routers, a public segment with the hub and a real coturn),
runs ``softphone listen`` in one home and ``softphone call`` in the other,
and checks the outcome, the candidate pair both report, and the audio each
side recorded (by frequency, and for continuity under loss and jitter).

They need root, iproute2, iptables and coturn (and NetfilterQueue for
delay): outside CI they skip with the reason, in CI they fail.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from softphone import Phone, ToneSource
from softphone.cli.main import ice_list, main
from softphone.core.callstate import Outcome
from softphone.hub.server import Hub
from softphone.media.audio import silent_gaps
from softphone.media.rtc import candidate_pair_from_seam

from ..conftest import hub_url, need, read_wav
from ..support.helpers import assert_wav_tone
from ..support.netlab import (
    CALLEE_TONE,
    CALLER_TONE,
    PREFIX,
    CallRun,
    Impairment,
    NetLab,
    Party,
    RouterConfig,
    missing_requirements,
    run_call,
    shared_lab,
    softphone_argv,
    turn_rest_credentials,
)


@pytest.fixture(scope="module")
def lab_of_this_module(tmp_path_factory: pytest.TempPathFactory
                       ) -> Iterator[Callable[[], NetLab]]:
    with shared_lab(tmp_path_factory.mktemp("netlab")) as get:
        yield get


@pytest.fixture
def netlab(lab_of_this_module: Callable[[], NetLab]) -> NetLab:
    """The module's lab, as built (:meth:`NetLab.reset`): each test configures its
    routers and starts its hub (the one running is kept when it is the same)."""
    return lab_of_this_module()


def assert_heard(party: Party, expected: float, min_seconds: float = 1.5) -> None:
    assert_wav_tone(party.recording, expected, min_seconds=min_seconds - 0.5, what=party.role)


def assert_completed(run: CallRun) -> None:
    for party in (run.caller, run.callee):
        assert party.exit_code == 0, run.describe()
        assert party.ended.get("outcome") == "completed", run.describe()
        assert "Traceback" not in party.stderr, run.describe()
    assert_heard(run.caller, CALLEE_TONE)
    assert_heard(run.callee, CALLER_TONE)


def pairs(party: Party) -> list[tuple[str, str]]:
    """(local type, remote type) of every candidate pair ``party``'s call used: the first
    connection's, then that of each media restart (under load a call may restart its
    media, and the new connection has a pair of its own)."""
    used = party.candidate_pairs
    assert used, f"{party.role} reported no candidate pair:\n{party.stdout}"
    # The first pair is in the "media" event and the status line; the one in force at
    # the end (the last "media" or "media-restart" event's) in the "ended" event.
    first = next((e for e in party.events if e.get("event") == "media"), {})
    assert first.get("candidate_pair") == used[0], party.stdout
    assert f"via {used[0]['local']['type']}/" in party.stderr
    assert party.ended.get("candidate_pair") == used[-1] == party.candidate_pair, party.stdout
    return [(p["local"]["type"], p["remote"]["type"]) for p in used]


@pytest.mark.netlab
def test_eim_nat_with_stun_connects_via_srflx(netlab: NetLab) -> None:
    netlab.start_hub(turn=())  # /ice-servers: STUN only
    run = run_call(netlab, "eim-stun")
    assert_completed(run)
    assert set(pairs(run.caller)) == {("srflx", "srflx")}, run.describe()
    assert set(pairs(run.callee)) == {("srflx", "srflx")}, run.describe()
    for used in run.caller.candidate_pairs:
        local = used["local"]
        assert local["address"] == "203.0.113.11" and local["protocol"] == "udp", used


@pytest.mark.netlab
def test_symmetric_nat_with_stun_only_fails_cleanly_and_quickly(netlab: NetLab) -> None:
    netlab.configure_both(RouterConfig(nat="symmetric"))
    netlab.start_hub(turn=())
    run = run_call(netlab, "sym-stun", setup_timeout=4.0, within=30.0)
    for party in (run.caller, run.callee):
        assert party.exit_code == 8, run.describe()
        assert party.ended.get("outcome") == "media-failed"
        assert party.candidate_pair is None and party.candidate_pairs == []
        assert "media failed" in party.stderr
        assert "Traceback" not in party.stderr
    # Gave up at the setup timeout (its reason), not after aioice's minute of retries
    # (``within``, 30 s, is a hang guard: the caller is stopped then). Both sides time
    # out at about the same moment: the one that tells the other first ends with
    # "setup-timeout", the other may end with the "media-failed" it was told.
    reasons = {run.caller.ended.get("reason"), run.callee.ended.get("reason")}
    assert "setup-timeout" in reasons, run.describe()
    assert reasons <= {"setup-timeout", "media-failed"}, run.describe()


@pytest.mark.netlab
def test_symmetric_nat_with_turn_from_the_hub_connects_via_relay(netlab: NetLab) -> None:
    netlab.configure_both(RouterConfig(nat="symmetric"))
    netlab.start_hub()  # STUN + TURN with time-limited credentials
    run = run_call(netlab, "sym-turn")
    assert_completed(run)
    for party in (run.caller, run.callee):
        for used in pairs(party):
            assert "relay" in used, run.describe()


@pytest.mark.netlab
def test_relay_only_policy(netlab: NetLab) -> None:
    netlab.start_hub()  # STUN + TURN: the caller could go direct, but says --relay
    run = run_call(netlab, "relay-only", caller_args=["--relay"])
    assert_completed(run)
    # A clean path: no media restart. (aioice nominates aggressively, so just after
    # connecting the peer may switch to another of its candidates; that is no move:
    # it restarted the media at 0.3 s in every such call.)
    for party in (run.caller, run.callee):
        lost = [e for e in party.events if e.get("event") == "media-lost"]
        assert lost == [], run.describe()
    # Every pair the call used (a media restart connects again, through a new one).
    assert {local for local, _ in pairs(run.caller)} == {"relay"}, run.describe()
    assert {remote for _, remote in pairs(run.callee)} == {"relay"}, run.describe()
    # The relayed address is coturn's, on the public segment.
    for used in run.caller.candidate_pairs:
        assert used["local"]["address"] == "203.0.113.1", run.describe()


@pytest.mark.netlab
def test_relay_caller_and_a_callee_its_relay_reaches_directly_do_not_restart(
        netlab: NetLab) -> None:
    """The callee on the public segment, beside coturn: its host candidate and its relay
    one both answer the caller's relay, so aioice's aggressive nomination may switch
    pairs just after connecting, on either side. The peer's media then comes from its
    other candidate: no move, and no media restart (it restarted at 0.3 s in each call)."""
    netlab.start_hub()
    run = run_call(netlab, "relay-direct", caller_args=["--relay"], callee_node="pub",
                   duration=1.5)  # (before the fix, each of 3 such calls restarted)
    assert_completed(run)
    for party in (run.caller, run.callee):
        lost = [e for e in party.events if e.get("event") == "media-lost"]
        assert lost == [], run.describe()


@pytest.mark.netlab
def test_turn_over_tcp_when_routers_block_all_udp(netlab: NetLab) -> None:
    netlab.configure_both(RouterConfig(block_udp=True))
    netlab.start_hub(stun=False, turn=("tcp",))
    run = run_call(netlab, "tcp-only", setup_timeout=15.0)
    assert_completed(run)
    for party in (run.caller, run.callee):
        assert party.candidate_pairs, run.describe()
        for used in party.candidate_pairs:
            local = used["local"]
            assert (local["type"], local.get("relay_protocol")) == ("relay", "tcp"), \
                run.describe()


@pytest.mark.netlab
def test_five_percent_loss_and_50ms_jitter_each_way(netlab: NetLab) -> None:
    problems = missing_requirements(delay=True)
    need(not problems, "a requirement of the lab's delay", "; ".join(problems))
    bad = Impairment(loss=0.05, delay_ms=50.0, jitter_ms=10.0)
    # Both directions of router a: each way, the media crosses one impaired hop.
    netlab.configure("a", RouterConfig(up=bad, down=bad))
    netlab.start_hub(turn=())
    run = run_call(netlab, "lossy", duration=5.0, setup_timeout=15.0)
    assert_completed(run)
    assert set(pairs(run.caller)) == {("srflx", "srflx")}, run.describe()
    for party in (run.caller, run.callee):
        samples, rate = read_wav(party.recording)
        body = samples[rate // 2:]
        gaps = silent_gaps(body, rate)
        # Continuous: ~5% of the packets (about 12 frames of 20 ms) were lost
        # each way, yet the losses are concealed. Typically the longest hole is
        # 0-20 ms; the bounds leave room for a loaded machine.
        assert max(gaps, default=0.0) < 0.12, f"{party.role}: silent gaps {gaps}"
        assert sum(gaps) < 0.2, f"{party.role}: silent gaps {gaps}"
        rtt = party.ended["stats"]["rtt_ms"]  # type: ignore[index]
        assert rtt is None or rtt > 60.0, f"the delay did not apply: rtt {rtt} ms"


@pytest.mark.netlab
@pytest.mark.parametrize("problem", ["expired", "wrongly-signed"])
def test_bad_turn_credentials_give_a_clear_error_not_a_hang(netlab: NetLab,
                                                            problem: str) -> None:
    netlab.start_hub(turn=())
    if problem == "expired":
        username, credential = netlab.turn_credentials("a", ttl=-60.0)
    else:
        username, credential = turn_rest_credentials("not-the-secret", "a", 2e9)
    run = run_call(netlab, f"creds-{problem}", caller_args=[
        "--relay", "--ice-server", netlab.turn_url(), "--ice-username", username,
        "--ice-credential", credential], setup_timeout=60.0, within=40.0)
    caller = run.caller
    assert caller.exit_code == 8, run.describe()
    assert caller.ended.get("outcome") == "media-failed"
    assert "401" in str(caller.ended.get("reason")), caller.ended
    assert "credentials refused (401 Unauthorized)" in caller.stderr
    assert "Traceback" not in caller.stderr
    # It failed as soon as the TURN server said no (the reason is the 401), not at the
    # 60 s setup timeout ("setup-timeout"); ``within`` (40 s) is a hang guard.


@pytest.mark.netlab
def test_bad_turn_credentials_without_relay_only_are_named_when_media_fails(
        netlab: NetLab) -> None:
    """Behind symmetric NAT only a relay works: the timeout says the TURN server said no."""
    netlab.configure_both(RouterConfig(nat="symmetric"))
    netlab.start_hub(turn=())
    username, credential = netlab.turn_credentials("a", ttl=-60.0)
    run = run_call(netlab, "creds-norelay", caller_args=[
        "--ice-server", netlab.turn_url(), "--ice-username", username,
        "--ice-credential", credential], setup_timeout=4.0, within=30.0)
    caller = run.caller
    assert caller.exit_code == 8, run.describe()
    # (setup-timeout, or media-failed if the callee's timeout came first)
    reason = str(caller.ended.get("reason"))
    assert "; TURN server" in reason and "credentials refused (401" in reason, caller.ended
    assert "Traceback" not in caller.stderr


# -- the lab's own pieces (no root needed) ------------------------------------------


def test_turn_rest_credentials_are_coturns_format() -> None:
    username, credential = turn_rest_credentials("secret", "alice", 1700000000.5)
    assert username == "1700000000:alice"
    # base64(HMAC-SHA1("secret", username)), as coturn's use-auth-secret computes it.
    assert credential == "d8soP47RbdIKLDUOpnJPVQyq5Ts="


def test_router_ruleset(tmp_path: Path) -> None:
    the_lab = NetLab(tmp_path)
    bad = Impairment(loss=0.05, delay_ms=50, jitter_ms=10)
    rules = the_lab._ruleset(RouterConfig(nat="symmetric", block_udp=True, up=bad))
    assert "-A POSTROUTING -o wan -j MASQUERADE --random" in rules
    assert "-A PREROUTING -i lan -m statistic --mode random --probability 0.0500 -j DROP" \
        in rules
    assert "-A PREROUTING -i lan -j NFQUEUE --queue-num 1" in rules
    assert "-i wan -j NFQUEUE" not in rules  # down is clean
    assert rules.index("-A FORWARD -p udp -j DROP") < rules.index("-A FORWARD -i wan -j DROP")
    eim = the_lab._ruleset(RouterConfig())
    assert "MASQUERADE\n" in eim and "NFQUEUE" not in eim and "statistic" not in eim
    assert the_lab.ns("pub").startswith(PREFIX)
    with pytest.raises(ValueError):
        the_lab.configure("a", RouterConfig(nat="full-cone"))


def test_party_reads_the_json_events(tmp_path: Path) -> None:
    cp = {"local": {"type": "relay", "protocol": "udp", "address": "203.0.113.1", "port": 5,
                    "relay_protocol": "tcp"},
          "remote": {"type": "srflx", "protocol": "udp", "address": "203.0.113.12", "port": 6}}
    events = [{"event": "media", "candidate_pair": cp},
              {"event": "ended", "outcome": "completed", "candidate_pair": cp}]
    party = Party("caller", 0, events, "\n".join(json.dumps(e) for e in events), "",
                  tmp_path / "x.wav")
    assert party.ended["outcome"] == "completed"
    assert party.pair_text() == "relay/udp (TURN/tcp) <-> srflx/udp"
    assert party.candidate_pairs == [cp] and party.candidate_pair == cp
    # A media restart connects through a new pair: the one in force at the end is the
    # last one, and every pair used is listed.
    again = {"local": {**cp["local"], "port": 7}, "remote": {**cp["remote"], "port": 8}}
    restarted = [events[0], {"event": "media-lost", "reason": "path-dead"},
                 {"event": "media-restart", "candidate_pair": again},
                 {"event": "stats"}, {**events[1], "candidate_pair": again}]
    party = Party("caller", 0, restarted, "", "", tmp_path / "x.wav")
    assert party.candidate_pairs == [cp, again] and party.candidate_pair == again
    assert party.pair_text(cp) == party.pair_text()
    # Never connected: no pair at all.
    failed = Party("caller", 8, [{"event": "ended", "candidate_pair": None}], "", "",
                   tmp_path / "x.wav")
    assert failed.candidate_pairs == [] and failed.candidate_pair is None


# -- what the lab tests rely on, checked without a lab ------------------------------------


async def test_phone_reports_the_candidate_pair(hub: Hub) -> None:
    """On one machine, host <-> host: the media event, the result and the JSON agree."""
    events: list[dict[str, Any]] = []
    async with Phone("b", hub_url(hub), ice_servers=[]) as pb, \
            Phone("a", hub_url(hub), ice_servers=[]) as pa:
        call = await pa.dial("b", ToneSource(440), on_event=events.append)
        incoming = await asyncio.wait_for(pb.next_call(), 10)
        await incoming.accept(ToneSource(660))
        await asyncio.wait_for(call.connected(), 20)
        media = [e for e in events if e["event"] == "media"]
        assert len(media) == 1
        await call.hangup()
        result = await call.ended()
    got = media[0]["candidate_pair"]
    assert got["local"]["type"] == "host" and got["local"]["protocol"] == "udp"
    assert got["remote"]["type"] in ("host", "prflx")
    assert result.candidate_pair is not None
    assert result.to_json()["candidate_pair"] == got
    assert events[-1]["event"] == "ended" and events[-1]["candidate_pair"] == got


async def test_relay_only_without_a_turn_server_fails_at_once(hub: Hub) -> None:
    async with Phone("b", hub_url(hub), ice_servers=[]) as pb, \
            Phone("a", hub_url(hub), ice_servers=[], relay_only=True) as pa:
        call = await pa.dial("b", ToneSource(440))
        incoming = await asyncio.wait_for(pb.next_call(), 10)
        await incoming.accept()
        result = await asyncio.wait_for(call.ended(), 10)  # not the 15 s setup timeout
    assert result.outcome is Outcome.MEDIA_FAILED and result.exit_code == 8
    assert result.reason == "no relay candidate: relay only, but no TURN server is set"
    assert result.candidate_pair is None and result.to_json()["candidate_pair"] is None


def test_candidate_pair_from_seam() -> None:
    def c(kind: str, address: str, port: int, related: str | None = None,
          related_port: int | None = None) -> dict[str, Any]:
        return {"type": kind, "protocol": "udp", "address": address, "port": port,
                "related_address": related, "related_port": related_port}

    host = c("host", "10.1.0.2", 5000)
    srflx = c("srflx", "203.0.113.11", 6000, "10.1.0.2", 5000)
    gathered = [host, srflx]
    # Through our NAT to a reflexive peer: reported as srflx, at the mapped address.
    nat = candidate_pair_from_seam({"local": host, "remote": c("srflx", "203.0.113.12", 7),
                                    "relay_protocol": None, "local_candidates": gathered})
    assert (nat.local.type, nat.local.address, nat.local.port) == ("srflx", "203.0.113.11", 6000)
    assert str(nat) == "srflx/udp <-> srflx/udp"
    # To a peer on our own network: host.
    lan = candidate_pair_from_seam({"local": host, "remote": c("host", "10.1.0.3", 8),
                                    "relay_protocol": None, "local_candidates": gathered})
    assert lan.local.type == "host"
    # No NAT (the mapped address is our own): host.
    public = c("host", "198.51.100.2", 5000)
    same = c("srflx", "198.51.100.2", 5000, "198.51.100.2", 5000)
    direct = candidate_pair_from_seam({"local": public, "remote": c("prflx", "203.0.113.9", 9),
                                       "relay_protocol": None,
                                       "local_candidates": [public, same]})
    assert direct.local.type == "host"
    # Relay over TCP.
    relay = candidate_pair_from_seam({"local": c("relay", "203.0.113.1", 50000, "0.0.0.0", 9),
                                      "remote": c("srflx", "203.0.113.12", 7),
                                      "relay_protocol": "tcp", "local_candidates": []})
    assert relay.to_json()["local"] == {"type": "relay", "protocol": "udp",
                                        "address": "203.0.113.1", "port": 50000,
                                        "relay_protocol": "tcp"}
    assert str(relay) == "relay/udp (TURN over tcp) <-> srflx/udp"


def test_ice_server_credentials_on_the_command_line() -> None:
    assert ice_list(("stun:h:3478", "turn:h:3478?transport=tcp"), "u", "p") == [
        {"urls": "stun:h:3478"},
        {"urls": "turn:h:3478?transport=tcp", "username": "u", "credential": "p"}]
    runner = CliRunner()
    for args, message in [
        (["--ice-server", "turn:h:3478"], "needs --ice-username and --ice-credential"),
        (["--ice-server", "turn:h:3478", "--ice-username", "u"], "go together"),
        (["--ice-username", "u", "--ice-credential", "p"], "need a turn: --ice-server"),
    ]:
        for command in (["call", "b", "--as", "a"], ["listen", "--as", "b"], ["serve"]):
            result = runner.invoke(main, [*command, *args])
            assert result.exit_code == 2, (command, args, result.output)
            assert message in result.output
    result = runner.invoke(main, ["call", "--help"])
    assert "--relay" in result.output and "--ice-credential" in result.output


# -- call setup through NAT (issue 16; how fast: benchmarks/netlab_table.py) -----------

#: A plain aiortc phone on the hub protocol (``stock-call``), nothing of softphone's media.
STOCK_PHONE = Path(__file__).resolve().parents[2] / "benchmarks" / "netlab_table.py"


@pytest.mark.netlab
def test_cone_nat_with_stun_sets_up_and_says_when(netlab: NetLab) -> None:
    """Through cone NAT with STUN: the callee's first check is dropped by the caller's
    NAT (no mapping yet) and the caller's check makes it send it again; the caller,
    done with ICE first, is the DTLS client. Both say when media connected and when
    they first heard the other."""
    netlab.start_hub(turn=())
    run = run_call(netlab, "setup", duration=2.0)
    assert_completed(run)
    assert set(pairs(run.caller)) == {("srflx", "srflx")}, run.describe()
    for party in (run.caller, run.callee):
        setup, heard = party.ended.get("setup_seconds"), party.ended.get("first_audio_seconds")
        assert isinstance(setup, float) and setup > 0, run.describe()
        assert isinstance(heard, float) and heard > 0, run.describe()


@pytest.mark.netlab
def test_a_stock_aiortc_caller_reaches_softphone_through_cone_nat(netlab: NetLab) -> None:
    """A peer without our setup seams: plain aiortc (its checks paced and timed as
    aioice's, its offer leaving the DTLS role to us) calls ``softphone listen``
    through both NATs, and each hears the other."""
    netlab.start_hub(turn=())
    rec = netlab.workdir / "stock-heard-by-b.wav"
    common = ["--server", netlab.hub_url, "--setup-timeout", "15"]
    callee = netlab.spawn("b", "stock-callee", softphone_argv(
        "listen", "--as", "b", "--auto-accept", "--once", "--tone", str(CALLEE_TONE),
        "--record", str(rec), "--json", *common))
    try:
        netlab._wait_for(callee, r'"event":\s*"listening"', 20.0)
        caller = netlab.spawn("a", "stock-caller", [
            sys.executable, str(STOCK_PHONE), "stock-call", "b", "--as", "a",
            "--tone", str(CALLER_TONE), "--duration", "2", *common])
        assert caller.popen.wait(60.0) == 0, caller.output()
        callee.popen.wait(15.0)
    finally:
        callee.stop()
    heard = json.loads(caller.stdout().splitlines()[-1])
    assert heard["event"] == "ended" and heard["first_audio_seconds"] > 0, caller.output()
    ended = [e for e in (json.loads(line) for line in callee.stdout().splitlines()
                         if line.startswith("{")) if e.get("event") == "ended"]
    assert ended and ended[-1]["outcome"] == "completed", callee.output()
    assert_wav_tone(rec, CALLER_TONE, min_seconds=1.0, what="callee")
