"""``softphone doctor``'s checks against real parts: our hub in-process on a free
port (open, with tokens, with TLS), a real coturn (use-auth-secret; TCP only
for "UDP blocked"), PulseAudio's virtual devices, the real libopus.

Each diagnosis the issue names is made to happen for real and the doctor must
name it: hub down, STUN dead, TURN credentials refused, UDP blocked (TURN over
TCP still works), a token refused or expired, an untrusted certificate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from softphone.cli.config import parse
from softphone.cli.config_resolve import resolve
from softphone.cli.doctor import (
    EXIT_CALL_POSSIBLE,
    EXIT_NO_CALL,
    DoctorTarget,
    Result,
    check_libopus,
    exit_code,
    report_json,
    report_lines,
    run_doctor,
)
from softphone.cli.doctor_ice import _refused_credentials, parse_ice_url
from softphone.cli.doctor_net import check_certificate, check_version, token_claims
from softphone.cli.doctor_verdict import Outcome, explain, verdict
from softphone.hub.auth import mint_token, turn_credentials
from softphone.hub.server import Hub, HubConfig
from softphone.hub.tls import self_signed, server_context

from ..support.coturn import TURN_SECRET, StartCoturn
from .conftest import ThreadHub, invoke

HUB_SECRET = "h" * 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_udp_port() -> int:
    """A UDP port nobody listens on (ICMP port unreachable comes back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


HubMaker = Callable[..., Any]


@pytest.fixture
async def hubs() -> AsyncIterator[HubMaker]:
    """Starts our hub in-process on free ports with the given HubConfig fields."""
    running: list[Hub] = []

    async def start(ssl_context: Any = None, **config: Any) -> Hub:
        config.setdefault("ice_servers", [])
        hub = Hub(HubConfig(**config))
        await hub.start("127.0.0.1", 0, ssl_context=ssl_context)
        running.append(hub)
        return hub

    yield start
    for hub in running:
        await hub.stop()


def url(hub: Hub, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{hub.port}"


async def doctor(server: str, **fields: Any) -> list[Result]:
    """The checks, signing in as our id (``register``) unless told otherwise."""
    fields.setdefault("client_id", "alice")
    fields.setdefault("register", True)
    fields.setdefault("audio", False)
    fields.setdefault("timeout", 2.0)
    return await run_doctor(DoctorTarget(server=server, **fields))


def by_name(results: list[Result]) -> dict[str, Result]:
    out: dict[str, Result] = {}
    for r in results:
        out.setdefault(r.name, r)
    return out


def show(results: list[Result]) -> str:
    return "\n".join(report_lines(results))


# ----------------------------------------------------------- the hub ---


async def test_all_good_with_stun_and_turn(hubs: HubMaker, coturn: StartCoturn) -> None:
    port = coturn().port
    hub = await hubs(ice_servers=[{"urls": f"stun:127.0.0.1:{port}"}],
                     turn_urls=[f"turn:127.0.0.1:{port}",
                                f"turn:127.0.0.1:{port}?transport=tcp"],
                     turn_secret=TURN_SECRET)
    results = await doctor(url(hub))
    got = by_name(results)
    assert exit_code(results) == EXIT_CALL_POSSIBLE, show(results)
    assert all(r.status == "ok" for r in results), show(results)
    assert "status ok" in got["hub"].detail
    assert got["auth"].detail == "the hub is open: no token needed"
    assert "answered 'offline'" in got["signaling"].detail
    # An hour from when the hub made them, a moment after the doctor started.
    assert re.search(r"TURN credentials for (59 min|1 h 0 min)\)", got["ice-servers"].detail)
    assert f"answered from 127.0.0.1:{port}; it sees us as 127.0.0.1:" in got["stun"].detail
    assert "relay 127.0.0.1:" in got["turn udp"].detail
    assert "relay 127.0.0.1:" in got["turn tcp"].detail
    assert got["media path"].detail == ("calls can go through the TURN relay (udp) and "
                                        "directly through NAT (STUN answered)")
    assert got["libopus"].ok
    assert report_lines(results)[-1] == "a call can be made"


async def test_hub_down() -> None:
    results = await doctor(f"http://127.0.0.1:{free_port()}")
    got = by_name(results)
    assert got["hub"].status == "fail"
    assert "Connection refused" in got["hub"].detail and "softphone serve" in got["hub"].fix
    assert "stun" not in got and "media path" not in got  # unknown without the hub
    assert exit_code(results) == EXIT_NO_CALL
    assert report_lines(results)[-1] == f"a call cannot be made: hub (exit {EXIT_NO_CALL})"


async def test_stun_dead(hubs: HubMaker) -> None:
    dead = closed_udp_port()
    hub = await hubs(ice_servers=[{"urls": f"stun:127.0.0.1:{dead}"}])
    results = await doctor(url(hub))
    got = by_name(results)
    assert got["stun"].status == "warn"
    assert got["stun"].detail == f"stun:127.0.0.1:{dead}: connection refused (nothing listens " \
        "there)"
    assert got["media path"].detail.startswith("no STUN server answered")
    assert exit_code(results) == EXIT_CALL_POSSIBLE  # calls within the network still work


async def test_turn_credentials_refused(hubs: HubMaker, coturn: StartCoturn) -> None:
    port = coturn().port
    hub = await hubs(turn_urls=[f"turn:127.0.0.1:{port}"], turn_secret="not-coturns-secret")
    results = await doctor(url(hub))
    got = by_name(results)
    for name in ("turn udp", "turn tcp"):
        assert "credentials refused (401 Unauthorized)" in got[name].detail, show(results)
        assert "static-auth-secret" in got[name].fix
    assert got["media path"].detail.startswith("the TURN server refused the credentials")
    assert exit_code(results) == EXIT_CALL_POSSIBLE
    relay_only = await doctor(url(hub), relay_only=True)
    assert by_name(relay_only)["media path"].status == "fail"
    assert exit_code(relay_only) == EXIT_NO_CALL


async def test_udp_blocked_turn_over_tcp_works(hubs: HubMaker,
                                               coturn: StartCoturn) -> None:
    port = coturn("--no-udp").port  # no UDP at all there: as a firewall dropping UDP to it
    hub = await hubs(ice_servers=[{"urls": f"stun:127.0.0.1:{port}"}],
                     turn_urls=[f"turn:127.0.0.1:{port}"], turn_secret=TURN_SECRET)
    results = await doctor(url(hub))
    got = by_name(results)
    assert not got["stun"].ok and not got["turn udp"].ok, show(results)
    assert got["turn tcp"].ok and "(unused: a call takes the first TURN URL only)" in \
        got["turn tcp"].detail
    media = got["media path"]
    assert media.status == "fail" and media.detail.startswith("UDP seems blocked here")
    assert f'"turn:127.0.0.1:{port}?transport=tcp" first' in media.fix
    assert exit_code(results) == EXIT_NO_CALL
    # With the TCP URL first, as the fix says, a call can be made.
    tcp_first = await doctor(url(hub), ice_servers=(f"turn:127.0.0.1:{port}?transport=tcp",),
                             ice_username="1:alice", ice_credential="wrong")
    assert "credentials refused" in by_name(tcp_first)["turn tcp"].detail
    creds = turn_credentials(TURN_SECRET, "alice", time.time(), 600)
    tcp_first = await doctor(url(hub), ice_servers=(f"turn:127.0.0.1:{port}?transport=tcp",),
                             ice_username=creds.username, ice_credential=creds.credential)
    media = by_name(tcp_first)["media path"]
    assert media.detail == ("UDP seems blocked here: STUN and TURN over UDP do not answer; "
                            "calls go through the TURN relay over TCP"), show(tcp_first)
    assert media.status == "warn" and "--relay" in media.fix
    assert exit_code(tcp_first) == EXIT_CALL_POSSIBLE, show(tcp_first)


@contextlib.asynccontextmanager
async def web_server(app: web.Application) -> AsyncIterator[str]:
    """``app`` served on 127.0.0.1: its URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def doctor_on_a_web_server(**fields: Any) -> list[Result]:
    """The checks against a web server that is no hub (404 for everything)."""
    async with web_server(web.Application()) as url:
        return await doctor(url, **fields)


async def test_not_a_softphone_hub() -> None:
    got = by_name(results := await doctor_on_a_web_server())
    assert got["hub"].ok and "HTTP 404" in got["hub"].detail
    assert got["signaling"].status == "fail" and "answers HTTP 404" in got["signaling"].detail
    assert exit_code(results) == EXIT_NO_CALL


async def test_ice_servers_at_a_wrong_path_is_the_http_status(hubs: HubMaker) -> None:
    """`--server http://host:port/x`: the hub's 404 page is no JSON; the doctor says
    HTTP 404 and where, not what the JSON parser made of the page."""
    hub = await hubs()
    wrong = f"http://localhost:{hub.port}/x"
    got = by_name(results := await doctor(wrong))
    assert got["ice-servers"].status == "fail", show(results)
    assert got["ice-servers"].detail == f"HTTP 404 from {wrong}/ice-servers"
    assert got["ice-servers"].fix.startswith("is the server URL right?")
    assert exit_code(results) == EXIT_NO_CALL


async def test_with_a_token_the_websocket_is_still_checked() -> None:
    """Without --register, doctor signs nobody in, but still opens a WebSocket (with no
    id): a server that is no hub (or a proxy not passing upgrades on) is a FAIL line."""
    from softphone.hub.auth import mint_token

    got = by_name(await doctor_on_a_web_server(
        register=False, token=mint_token("h" * 40, "alice", time.time())))
    assert got["signaling"].status == "fail", got["signaling"]
    assert "not a WebSocket" in got["signaling"].detail, got["signaling"]


# ------------------------------------------------------------- tokens ---


async def test_token_needed_accepted_refused_expired(hubs: HubMaker) -> None:
    hub = await hubs(secret=HUB_SECRET)
    now = time.time()
    none = by_name(await doctor(url(hub)))
    assert none["auth"].detail == "the hub needs a token"
    assert none["token"].status == "fail" and "softphone token --as alice" in none["token"].fix

    good = await doctor(url(hub), token=mint_token(HUB_SECRET, "alice", now, 3 * 3600))
    assert by_name(good)["token"].status == "ok", show(good)
    assert by_name(good)["token"].detail.startswith("accepted: signed in as alice; expires ")
    assert "(2 h 59 min left)" in by_name(good)["token"].detail
    assert exit_code(good) == EXIT_CALL_POSSIBLE

    soon = by_name(await doctor(url(hub), token=mint_token(HUB_SECRET, "alice", now, 600)))
    assert soon["token"].status == "warn" and "expires soon" in soon["token"].fix

    forged = by_name(await doctor(url(hub), token=mint_token("f" * 40, "alice", now)))
    assert forged["token"].status == "fail"
    assert "refused by the hub: unauthorized: token not signed by this hub" in \
        forged["token"].detail

    expired = by_name(await doctor(url(hub),
                                   token=mint_token(HUB_SECRET, "alice", now - 7200, 60)))
    assert "token expired" in expired["token"].detail and "ago" in expired["token"].detail

    other = by_name(await doctor(url(hub), token=mint_token(HUB_SECRET, "bob", now)))
    assert "the token is for 'bob', not 'alice'" in other["token"].detail


async def test_ice_servers_need_the_token_for_turn(hubs: HubMaker) -> None:
    hub = await hubs(secret=HUB_SECRET, turn_urls=["turn:127.0.0.1:9"],
                     turn_secret=TURN_SECRET)
    results = by_name(await doctor(url(hub), token=mint_token("f" * 40, "alice", time.time())))
    assert results["ice-servers"].status == "fail"
    assert "valid token" in results["ice-servers"].detail


async def test_register_off_leaves_a_listening_phone_alone(hubs: HubMaker) -> None:
    """Signing in as our id replaces a phone listening with it; register=False does not."""
    hub = await hubs(secret=HUB_SECRET)
    token = mint_token(HUB_SECRET, "alice", time.time())
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"ws://127.0.0.1:{hub.port}/ws?id=alice&token={token}")
        results = by_name(await doctor(url(hub), token=token, register=False))
        assert results["token"].ok and "not tried on the hub" in results["token"].detail
        await ws.send_str(json.dumps({"type": "hangup", "to": "nobody"}))
        answer = await ws.receive_json(timeout=5)
        assert answer["data"]["code"] == "offline"  # still connected
        results = by_name(await doctor(url(hub), token=token))
        assert results["token"].ok
        answer = await ws.receive_json(timeout=5)
        assert answer["data"]["code"] == "replaced"
        await ws.close()


async def test_without_signing_in_the_hub_judges_the_token_through_ice_servers(
        hubs: HubMaker) -> None:
    """The default (no sign-in): a hub that hands out TURN credentials checks the token
    on /ice-servers, so a forged one is still caught and a phone listening is left alone."""
    hub = await hubs(secret=HUB_SECRET, turn_urls=["turn:127.0.0.1:9"],
                     turn_secret=TURN_SECRET)
    good = mint_token(HUB_SECRET, "alice", time.time())
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"ws://127.0.0.1:{hub.port}/ws?id=alice&token={good}")
        target = DoctorTarget(server=url(hub), client_id="alice", token=good, audio=False,
                              timeout=2.0)
        assert target.register is False  # the default
        results = by_name(await run_doctor(target))
        assert results["token"].status == "ok", results["token"]
        assert results["token"].detail.startswith("accepted by the hub (/ice-servers gave "
                                                  "TURN credentials for it, without signing "
                                                  "in); expires ")
        forged = mint_token("f" * 40, "alice", time.time())
        results = by_name(await run_doctor(dataclasses.replace(target, token=forged)))
        assert results["token"].status == "fail"
        assert "refused by the hub (/ice-servers): token not signed by this hub" in \
            results["token"].detail
        await ws.send_str(json.dumps({"type": "hangup", "to": "nobody"}))
        answer = await ws.receive_json(timeout=5)
        assert answer["data"]["code"] == "offline"  # still connected: never replaced
        await ws.close()
    plain = await hubs(secret=HUB_SECRET)  # no TURN: nothing judges it without a sign-in
    results = by_name(await doctor(url(plain), token=good, register=False))
    assert results["token"].ok and "not tried on the hub (signing in as alice would " \
        "disconnect a phone listening as alice: --register tries it)" in results["token"].detail


# ---------------------------------------------------------------- TLS ---


def expired_certificate(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(past - datetime.timedelta(days=60)).not_valid_after(past)
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "expired.pem", folder / "expired.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_tls_untrusted_trusted_insecure_expired(hubs: HubMaker, tmp_path: Path) -> None:
    made = self_signed(tmp_path / "tls", ["127.0.0.1", "localhost"])
    hub = await hubs(ssl_context=server_context(made.cert, made.key))
    untrusted = by_name(await doctor(url(hub, "https")))
    assert untrusted["hub"].status == "fail"
    assert "certificate is not trusted (self-signed certificate)" in untrusted["hub"].detail
    assert "--ca-file" in untrusted["hub"].fix
    assert untrusted["tls"].status == "fail" and "not trusted" in untrusted["tls"].detail
    assert "127.0.0.1" in untrusted["tls"].data["names"]

    trusted = await doctor(url(hub, "https"), ca_file=str(made.cert))
    assert by_name(trusted)["tls"].status == "ok", show(trusted)
    assert "self-signed, valid until" in by_name(trusted)["tls"].detail
    assert by_name(trusted)["tls"].detail.endswith(", trusted")
    assert exit_code(trusted) == EXIT_CALL_POSSIBLE

    insecure = by_name(await doctor(url(hub, "https"), insecure=True))
    assert insecure["tls"].detail.endswith("not checked (--insecure)")

    later = await check_certificate("127.0.0.1", hub.port or 0, None, 2.0,
                                    time.time() + 3 * 365 * 86400)
    assert later.status == "fail" and "expired" in later.detail

    cert, key = expired_certificate(tmp_path)
    old = await hubs(ssl_context=server_context(cert, key))
    expired = by_name(await doctor(url(old, "https"), ca_file=str(cert)))
    assert "certificate has expired" in expired["hub"].detail
    assert "expired 30 days ago" in expired["tls"].detail and expired["tls"].status == "fail"


async def test_https_to_a_plain_hub(hubs: HubMaker) -> None:
    hub = await hubs()
    results = by_name(await doctor(url(hub, "https")))
    assert results["hub"].status == "fail" and "no answer" in results["hub"].detail
    assert "a hub without TLS is http://" in results["hub"].fix
    assert results["tls"].status == "fail" and "is it an https hub?" in results["tls"].fix


# --------------------------------------------------------- this machine ---


def test_libopus() -> None:
    result = check_libopus()
    assert result.ok and result.detail.startswith("libopus 1.") and result.needed


def _device_check_in(env: dict[str, str], *args: str) -> dict[str, Any]:
    """check_device in a process of its own (PortAudio reads PULSE_SERVER at start)."""
    code = ("import json, sys; from dataclasses import asdict; "
            "from softphone.cli.doctor import check_device; "
            "r = check_device(sys.argv[1], sys.argv[2] or None); "
            "print(json.dumps({**asdict(r), 'status': r.status}))")
    out = subprocess.run([sys.executable, "-c", code, *args], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=60, check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_default_devices_open_at_48k(pulse: Any) -> None:
    for kind, name in (("input", "microphone"), ("output", "speaker")):
        got = _device_check_in(pulse.env_for("a"), kind, "")
        assert got["status"] == "ok", got
        assert got["name"] == name and got["detail"].endswith("opens at 48 kHz")
        assert got["data"]["rate"] == 48000
    named = _device_check_in(pulse.env_for("a"), "input", "no-such-device")
    assert named["status"] == "fail"
    assert "no microphone (input) device named like 'no-such-device'" in named["detail"]
    assert "softphone config set audio.input" in named["fix"]


# ---------------------------------------------------------------- pure ---


def outcome(kind: str, transport: str, ok: bool, why: str = "", host: str = "h",
            used: bool = True, **data: Any) -> Outcome:
    return Outcome(kind, host, 3478, "stun" if kind == "stun" else "turn",  # type: ignore[arg-type]
                   transport, used, ok, why,  # type: ignore[arg-type]
                   Result(kind if kind == "stun" else f"turn {transport}", ok,
                          "answered" if ok else "no answer", "", needed=False, data=data))


def test_explain_tells_stun_off_from_udp_blocked() -> None:
    """A STUN server that does not answer, explained by the TURN checks of its host."""
    stun_off = explain([outcome("stun", "udp", False, "timeout"),
                        outcome("turn", "udp", True), outcome("turn", "tcp", True)])
    assert stun_off[0].result.detail == ("no answer; yet TURN over UDP to the same server "
                                         "answers: UDP gets there, its STUN does not answer")
    assert "STUN service is off" in stun_off[0].result.fix
    assert stun_off[1:] == [outcome("turn", "udp", True), outcome("turn", "tcp", True)]
    blocked = explain([outcome("stun", "udp", False, "timeout"),
                       outcome("turn", "udp", False, "timeout"), outcome("turn", "tcp", True)])
    for o in blocked[:2]:
        assert o.result.detail.endswith("; the same server answers TURN over TCP: UDP to it "
                                        "seems blocked here"), o
        assert o.result.fix == "allow outgoing UDP (to port 3478) in this network's firewall"
    # Another host's TURN says nothing about this STUN server; a refusal (ICMP) is no block.
    for alone in ([outcome("stun", "udp", False, "timeout", host="other"),
                   outcome("turn", "udp", True)],
                  [outcome("stun", "udp", False, "refused"),
                   outcome("turn", "udp", False, "timeout"), outcome("turn", "tcp", True)]):
        assert explain(alone)[0] == alone[0]


def test_verdict_udp_blocked() -> None:
    udp_dead = [outcome("stun", "udp", False, "timeout"),
                outcome("turn", "udp", False, "timeout", used=False),
                outcome("turn", "tcp", True)]
    tcp_first = verdict(udp_dead, False, "turn:h:3478", True, True)
    assert tcp_first.status == "warn" and tcp_first.ok
    assert tcp_first.detail == ("UDP seems blocked here: STUN and TURN over UDP do not answer; "
                                "calls go through the TURN relay over TCP")
    assert "--relay (ice.relay = true) sets calls up sooner" in tcp_first.fix
    assert "--relay" not in verdict(udp_dead, True, "turn:h:3478", True, True).fix
    udp_first = [outcome("stun", "udp", False, "timeout"),
                 outcome("turn", "udp", False, "timeout"),
                 outcome("turn", "tcp", True, used=False)]
    fixes = {(listed, hub): verdict(udp_first, False, "turn:h:3478", listed, hub)
             for listed in (True, False) for hub in (True, False)}
    assert all(r.status == "fail" and '"turn:h:3478?transport=tcp" first' in r.fix
               for r in fixes.values())
    assert "the hub hands it out, after the UDP one" in fixes[True, True].fix
    assert 'serve --turn "turn:h:3478?transport=tcp" before the others' in \
        fixes[False, True].fix
    assert "in ice.servers (--ice-server)" in fixes[False, False].fix
    assert "credentials of your own (ice.username, ice.credential)" in fixes[True, True].fix


def test_verdict_stun_dead() -> None:
    relayed = verdict([outcome("stun", "udp", False, "timeout"), outcome("turn", "udp", True)],
                      False, "turn:h:3478", False, True)
    assert relayed.status == "ok" and relayed.detail == (
        "calls can go through the TURN relay (udp), not directly: STUN does not answer, so "
        "every call is relayed")
    behind_nat = verdict([outcome("stun", "udp", False, "refused", local="192.168.1.20")],
                         False, None, False, True)
    assert behind_nat.status == "warn" and "this host's address (192.168.1.20) is private, " \
        "so only phones on its own network (or at a public address)" in behind_nat.detail
    here = verdict([outcome("stun", "udp", False, "refused", local="127.0.0.1")],
                   False, None, False, True)
    assert here.detail.endswith("only calls within this network will connect")
    refused = verdict([outcome("stun", "udp", False, "timeout"),
                       outcome("turn", "udp", False, "credentials")], False, "turn:h:3478",
                      False, True)
    assert refused.status == "warn" and refused.detail.endswith(
        "; without STUN, calls to other networks fail too")


def test_refused_credentials_are_dated() -> None:
    now = 1_700_000_000.0
    expired = turn_credentials(TURN_SECRET, "a", now - 7200, 3600).username
    detail, fix = _refused_credentials(expired, now, from_hub=True)
    assert detail == ": they expired 1 h 0 min ago (2023-11-14 21:13 UTC), as the hub " \
        "handed them out"
    assert "renew the static --ice-username/--ice-credential" in fix
    detail, fix = _refused_credentials(expired, now, from_hub=False)
    assert detail.startswith(": they expired 1 h 0 min ago") and "ice.username" in fix
    valid = turn_credentials(TURN_SECRET, "a", now, 600).username
    detail, fix = _refused_credentials(valid, now, from_hub=True)
    assert detail == ": they are not expired (10 min left), so their signature is not accepted"
    assert "static-auth-secret" in fix
    assert _refused_credentials("alice", now, from_hub=True)[0] == ""  # not REST ones


async def test_hub_handing_out_expired_turn_credentials(hubs: HubMaker) -> None:
    old = turn_credentials(TURN_SECRET, "hub", time.time() - 600, 60)
    hub = await hubs(ice_servers=[{"urls": f"turn:127.0.0.1:{closed_udp_port()}",
                                   "username": old.username, "credential": old.credential}])
    got = by_name(await doctor(url(hub)))
    assert got["ice-servers"].status == "warn", got["ice-servers"]
    assert "(the TURN credentials it hands out expired 9 min ago" in got["ice-servers"].detail
    assert "--turn with --turn-secret hands out fresh ones" in got["ice-servers"].fix



def test_exit_code_and_report() -> None:
    results = [Result("hub", True, "fine"), Result("stun", False, "dead", "fix it", False),
               Result("tls", True, "expires soon", "renew")]
    assert [r.status for r in results] == ["ok", "warn", "warn"]
    assert exit_code(results) == EXIT_CALL_POSSIBLE
    lines = report_lines(results)
    assert lines[0] == "ok    hub   fine"
    assert lines[1] == "WARN  stun  dead" and lines[2] == "            fix: fix it"
    assert lines[-1] == "a call can be made (2 warnings)"
    failed = [*results, Result("token", False, "refused", "new token")]
    assert exit_code(failed) == EXIT_NO_CALL
    as_json = report_json(failed)
    assert as_json["call_possible"] is False and as_json["exit_code"] == EXIT_NO_CALL
    assert as_json["checks"][3] == {"name": "token", "ok": False, "detail": "refused",
                                    "fix": "new token", "needed": True, "data": {},
                                    "status": "fail"}
    json.dumps(as_json)


def test_version_check() -> None:
    from softphone import __version__

    assert "does not report" in check_version({"status": "ok"}).detail
    same = check_version({"version": __version__})
    assert same.status == "ok" and __version__ in same.detail
    assert check_version({"version": "99.0.0"}).status == "warn"


@pytest.mark.parametrize(("url", "parts"), [
    ("stun:stun.l.google.com:19302", ("stun", "stun.l.google.com", 19302, "udp")),
    ("turn:h:3478?transport=tcp", ("turn", "h", 3478, "tcp")),
    ("turn:h", ("turn", "h", 3478, "udp")),
    ("turns:h", ("turns", "h", 5349, "tcp")),
    ("stun:[2001:db8::1]:3478", ("stun", "2001:db8::1", 3478, "udp")),
])
def test_parse_ice_url(url: str, parts: tuple[str, str, int, str]) -> None:
    ice = parse_ice_url(url)
    assert (ice.scheme, ice.host, ice.port, ice.transport) == parts


@pytest.mark.parametrize("url", ["http://h", "turn:", "turn:h:x", "turn:h?transport=sctp",
                                 "stun:h:70000"])
def test_parse_ice_url_refuses(url: str) -> None:
    with pytest.raises(ValueError):
        parse_ice_url(url)


def test_token_claims() -> None:
    claims = token_claims(mint_token(HUB_SECRET, "alice", 1000.0, 60))
    assert claims is not None and claims["sub"] == "alice" and claims["exp"] == 1060
    assert token_claims("not.a.token") is None


def test_target_from_settings(tmp_path: Path) -> None:
    config = parse('server = "http://hub:1"\nid = "alice"\n[ice]\nservers = ["stun:s:1"]\n'
                   'relay = true\n[audio]\ninput = "USB"\n', tmp_path / "c.toml")
    target = DoctorTarget.from_settings(resolve({}, {"SOFTPHONE_TOKEN": "t"}, config),
                                        register=False)
    assert target == DoctorTarget(server="http://hub:1", client_id="alice", token="t",
                                  ice_servers=("stun:s:1",), relay_only=True,
                                  audio_input="USB", register=False)


# ------------------------------------------------------- the command ---


def test_doctor_command_takes_the_config_file(thread_hub: ThreadHub, tmp_path: Path) -> None:
    """`softphone doctor` alone, with the hub and `no_audio` from the config file."""
    config = tmp_path / "config.toml"
    config.write_text(f'server = "{thread_hub.url}"\nid = "alice"\n[audio]\nno_audio = true\n')
    env = {"SOFTPHONE_CONFIG": str(config)}
    result = invoke("doctor", env=env)
    assert result.exit_code == EXIT_CALL_POSSIBLE, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"ok    hub          {thread_hub.url} answers: status ok")
    assert not [ln for ln in lines if ln.split()[1:2] in (["microphone"], ["portaudio"])]
    assert lines[-1] == "a call can be made (1 warning)"  # the hub hands out no STUN
    as_json = json.loads(invoke("doctor", "--json", env=env).stdout)
    assert as_json["call_possible"] is True and as_json["exit_code"] == 0
    assert [c["name"] for c in as_json["checks"]][:4] == ["hub", "version", "signaling", "auth"]


def test_doctor_command_exit_code_when_no_call_can_be_made() -> None:
    down = f"http://127.0.0.1:{free_port()}"
    result = invoke("doctor", "--server", down, "--as", "alice", "--no-audio", "--timeout",
                    "2")
    assert result.exit_code == EXIT_NO_CALL == 13, result.output
    assert result.stdout.splitlines()[-1] == "a call cannot be made: hub (exit 13)"
    as_json = json.loads(invoke("doctor", "--server", down, "--no-audio", "--json").stdout)
    assert as_json["exit_code"] == 13 and as_json["checks"][0]["status"] == "fail"


def test_doctor_command_signs_in_only_when_asked() -> None:
    hub = ThreadHub(HubConfig(ice_servers=[], secret=HUB_SECRET)).start()
    try:
        token = mint_token(HUB_SECRET, "alice", time.time())
        args = ("doctor", "--server", hub.url, "--as", "alice", "--token", token, "--no-audio")
        default = invoke(*args)
        assert default.exit_code == EXIT_CALL_POSSIBLE, default.output
        assert "not tried on the hub (signing in as alice would disconnect" in default.stdout
        signed_in = invoke(*args, "--register")
        assert "accepted: signed in as alice" in signed_in.stdout, signed_in.output
    finally:
        hub.stop()


def test_doctor_command_fails_without_an_id(thread_hub: ThreadHub) -> None:
    """`call bob` cannot run without an id (Missing option '--as'): a FAIL line with the
    fix, exit 13; the hub is still checked (as a throw-away id)."""
    args = ("doctor", "--server", thread_hub.url, "--no-audio", "--timeout", "2")
    result = invoke(*args)
    assert result.exit_code == EXIT_NO_CALL, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split(None, 2) == ["FAIL", "id", "no id set: call and listen need your "
                                       "id on the hub"]
    assert lines[1].split("fix: ")[1] == "softphone config set id NAME (or --as NAME)"
    assert any(ln.startswith("ok    signaling    signed in as doctor-") for ln in lines)
    assert lines[-1] == "a call cannot be made: id (exit 13)"
    as_json = json.loads(invoke(*args, "--json").stdout)
    assert as_json["exit_code"] == EXIT_NO_CALL
    first = as_json["checks"][0]
    assert (first["name"], first["status"]) == ("id", "fail")
    assert invoke(*args, "--as", "alice").exit_code == EXIT_CALL_POSSIBLE


async def test_what_a_hostile_hub_says_reaches_the_terminal_as_text() -> None:
    """The doctor quotes the hub (its version, a refusal's code and message): control
    characters are written out, as in the CLI's other lines (the whole-diff review)."""
    from ..support.helpers import Proc

    evil = "\x1b]0;pwn\x07\x1b[2J"

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": evil, "clients": 0})

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        await sock.send_str(json.dumps({"type": "error", "data": {
            "code": "bad-id" + evil, "message": "no" + evil}}))
        await sock.close(code=1008)
        return sock

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/ws", ws)])
    async with web_server(app) as url:
        proc = Proc("doctor", "--server", url, "--as", "x", "--ice-server", "none",
                    "--no-audio")
        await proc.wait(30)
    assert "\x1b" not in proc.stdout + proc.stderr, proc.describe()
    assert "refused a connection: bad-id\\x1b]0;pwn\\x07\\x1b[2J: no\\x1b]0;pwn" in proc.stdout
