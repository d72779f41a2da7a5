"""The verification code on the browser page (``softphone/hub/web/sas.js``), in real Chromium.

The page's WebCrypto port must give exactly :mod:`softphone.core.sas`'s code:
checked on fixed fingerprints (the known answer, mixed case, either order,
other iteration counts), the word lists, the SDP parsing and its refusals;
then in a call, where the page shows the code the CLI phone at the other
end prints, derived from the certificates its DTLS handshake used (Chromium
keeps and checks only one of a remote SDP's fingerprints, not the sha-256 one).
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from softphone.core.sas import (
    PGP_EVEN_WORDS,
    PGP_ODD_WORDS,
    SAS_DOMAIN,
    SAS_ITERATIONS,
    Fingerprint,
    FingerprintError,
    derive_sas,
    fingerprints_in_sdp,
    sas_from_sdp,
    sdp_fingerprint,
)
from softphone.hub.server import Hub

from ..conftest import Proc, hub_url
from ..support.browser import connect_as, dial, snapshot, wait_call_state, wait_js
from .conftest import SESSION_LOOP, Launch

pytestmark = [pytest.mark.e2e, SESSION_LOOP]


async def sas_module(page: Any, script: str, arg: Any) -> Any:
    """Run ``script`` (a function body with ``sas``, the module, and ``arg``) in the page."""
    return await page.evaluate(
        "async ([script, arg]) => { const sas = await import('./static/sas.js');"
        " return await (new Function('sas', 'arg', 'return (async () => {' + script + '})()'))"
        "(sas, arg); }", [script, arg])


def hexed(digest: bytes, upper: bool = True) -> str:
    text = ":".join(f"{b:02X}" for b in digest)
    return text if upper else text.lower()


def sdp_with(*lines: str) -> str:
    return "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n" + "".join(
        f"{line}\r\n" for line in lines)


async def test_the_page_derives_the_code_as_python_does(hub: Hub, chromium: Launch) -> None:
    browser = await chromium(tone=None)
    page = await browser.open(hub_url(hub) + "/")
    # The same constants and word lists.
    consts = await sas_module(page, "return [sas.SAS_DOMAIN, sas.SAS_ITERATIONS,"
                                    " sas.PGP_EVEN_WORDS, sas.PGP_ODD_WORDS]", None)
    assert consts == [SAS_DOMAIN, SAS_ITERATIONS, list(PGP_EVEN_WORDS), list(PGP_ODD_WORDS)]
    # The known answer at the default iterations (tests/core/test_sas.py pins it).
    ab, cd = bytes([0xAB]) * 32, bytes([0xCD]) * 32
    known = await sas_module(page, "return await sas.deriveSas(arg[0], arg[1])",
                             [f"sha-256 {hexed(ab)}", f"sha-256 {hexed(cd, upper=False)}"])
    assert known == {"code": "1bb996f6", "words": ["beeswax", "proximate", "prefer", "vocalist"],
                     "text": "beeswax proximate prefer vocalist"}
    # Random fingerprints, spelled as a peer might (case), either order, a few iteration
    # counts: the page's code is Python's.
    rng = random.Random(18)
    cases = []
    for i in range(12):
        a, b = rng.randbytes(32), rng.randbytes(32)
        iterations = [1, 2, 1000, SAS_ITERATIONS][i % 4]
        cases.append([f"{'SHA-256' if i % 3 == 0 else 'sha-256'} {hexed(a, upper=i % 2 == 0)}",
                      f"sha-256 {hexed(b, upper=i % 5 != 0)}", iterations])
    got = await sas_module(page, "const out = []; for (const [a, b, n] of arg) {"
                                 " out.push([(await sas.deriveSas(a, b, n)).text,"
                                 " (await sas.deriveSas(b, a, n)).text]); } return out", cases)
    for (a, b, n), (forward, backward) in zip(cases, got, strict=True):
        expected = str(derive_sas(Fingerprint.parse(a), Fingerprint.parse(b), iterations=n))
        assert forward == backward == expected, (a, b, n)
    assert len({text for text, _ in got}) == len(got)  # (the cases are not all one code)
    # The SDP parsing: session and media level, repeated and other algorithms ignored.
    one, two = rng.randbytes(32), rng.randbytes(32)
    local = sdp_with(f"a=fingerprint:sha-256 {hexed(one)}", "m=audio 9 UDP/TLS/RTP/SAVPF 111",
                     f"a=fingerprint:SHA-256 {hexed(one, upper=False)}",
                     "a=fingerprint:sha-1 " + hexed(rng.randbytes(20)))
    remote = sdp_with("m=audio 9 UDP/TLS/RTP/SAVPF 111", f"  a=Fingerprint:sha-256 {hexed(two)}",
                      "a=fingerprint:sha-512 " + hexed(rng.randbytes(64)))
    from_sdp = await sas_module(page, "return [sas.sdpFingerprint(arg[0]),"
                                      " (await sas.sasFromSdp(arg[0], arg[1])).text]",
                                [local, remote])
    assert from_sdp == [str(sdp_fingerprint(local)), str(sas_from_sdp(local, remote))]
    # What Python refuses, the page refuses (a FingerprintError, not a wrong code).
    bad = {
        "no fingerprint": sdp_with("m=audio 9 UDP/TLS/RTP/SAVPF 111"),
        "only sha-1": sdp_with("a=fingerprint:sha-1 " + hexed(rng.randbytes(20))),
        "two sha-256": sdp_with(f"a=fingerprint:sha-256 {hexed(one)}",
                                f"a=fingerprint:sha-256 {hexed(two)}"),
        "short digest": sdp_with("a=fingerprint:sha-256 " + hexed(rng.randbytes(31))),
        "not hex": sdp_with("a=fingerprint:sha-256 " + hexed(one).replace("A", "G")),
        "three parts": sdp_with(f"a=fingerprint:sha-256 {hexed(one)} extra"),
    }
    refused = await sas_module(page, "const out = {}; for (const [k, v] of Object.entries(arg)) {"
                                     " try { await sas.sasFromSdp(v, v); out[k] = null; }"
                                     " catch (e) { out[k] = [e.name, e.message]; } } return out",
                               bad)
    for name, sdp in bad.items():
        with pytest.raises(FingerprintError):
            sas_from_sdp(sdp, sdp)
        assert refused[name] is not None and refused[name][0] == "FingerprintError", \
            (name, refused[name])


async def test_a_page_shows_the_code_the_cli_phone_prints(hub: Hub, chromium: Launch,
                                                          procs: list[Proc]) -> None:
    bob = Proc("listen", "--as", "bob", "--server", hub_url(hub), "--auto-accept", "--once",
               "--json", "--tone", "660", "--no-audio")
    procs.append(bob)
    await bob.wait_for_output('"listening"', within=30)
    browser = await chromium()
    page = await browser.open(hub_url(hub) + "/")
    await connect_as(page, "alice")
    assert await page.is_hidden("#sas-line")  # no call, no code
    await dial(page, "bob")
    await wait_call_state(page, "connected")
    await wait_js(page, "window.phone.sas !== null")
    await bob.wait_for_output('"event":"media"', within=10)
    media = [json.loads(line) for line in bob.stdout.splitlines()
             if line.startswith("{") and '"event":"media"' in line]
    cli_code = media[0]["sas"]
    # The page shows the code the CLI printed.
    page_code = (await snapshot(page))["sas"]
    assert page_code == cli_code, (page_code, cli_code)
    assert await page.is_visible("#sas-line")
    assert await page.text_content("#sas") == cli_code
    # (said once connected() returns: a loop turn or more after the media event)
    await bob.wait_for_output(f"verification code: {cli_code}", within=10, stderr=True)
    # The page took it from the certificates its DTLS handshake used: their sha-256
    # fingerprints are its own SDP's and the one the CLI sent in its answer.
    assert (await snapshot(page))["sasSource"] == "dtls"
    used = await page.evaluate("import('./static/sas.js').then("
                               "(sas) => sas.dtlsFingerprints(window.phone.media.pc))")
    local_sdp, remote_sdp = await page.evaluate(
        "[window.phone.media.pc.localDescription.sdp,"
        " window.phone.media.pc.remoteDescription.sdp]")
    assert used["local"] == str(sdp_fingerprint(local_sdp))
    assert str(derive_sas(Fingerprint.parse(used["local"]), Fingerprint.parse(used["remote"]))
               ) == cli_code
    # (Why not its remoteDescription: Chromium keeps one of the CLI's three fingerprints,
    # and not the sha-256 one. If that changes, the SDP path gives the same code.)
    kept = {fp.algorithm for fp in fingerprints_in_sdp(remote_sdp)}
    if "sha-256" in kept:
        assert str(sas_from_sdp(local_sdp, remote_sdp)) == cli_code
    await page.click("#hangup")
    assert await bob.wait(15) == 0, bob.stderr
    assert (await snapshot(page))["errors"] == []


# The page's verify() against connections that cannot give a code: `media` stands in for
# the phone's current CallMedia (window.phone.media), `scenario` does something while the
# phone verifies; the result is what the phone showed (errors, code), how long it took,
# and how many times it asked the connection for its stats (of `attempts`, the page's
# VERIFY_ATTEMPTS).
VERIFY_SCENARIO = """async ([scenario, sdp512]) => {
  const {VERIFY_ATTEMPTS} = await import("./static/phone.js");
  const phone = window.phone;
  const call = {peer: "bob"};
  const pc = new RTCPeerConnection();
  pc.addTransceiver("audio");
  let asked = 0;
  const getStats = pc.getStats.bind(pc);
  pc.getStats = (...args) => { asked += 1; return getStats(...args); };
  if (scenario === "sha-512 only") {
    // Chromium keeps one of a peer's fingerprints: here only a sha-512 one.
    const other = new RTCPeerConnection();
    other.addTransceiver("audio");
    await other.setLocalDescription(await other.createOffer());
    const sdp = other.localDescription.sdp.replace(/^a=fingerprint:.*$/gm, sdp512);
    other.close();
    await pc.setRemoteDescription({type: "offer", sdp});
    await pc.setLocalDescription(await pc.createAnswer());
  } else {
    await pc.setLocalDescription(await pc.createOffer());
  }
  let media = {call, pc, closed: false};
  Object.defineProperty(phone, "media", {get: () => media, configurable: true});
  phone.errors.length = 0;
  phone.sas = null;
  if (scenario === "closed") { media.closed = true; pc.close(); }
  const started = performance.now();
  const verified = phone.verify(call);
  await new Promise((resolve) => setTimeout(resolve, 300));
  if (scenario === "closed while waiting") { media.closed = true; pc.close(); }
  if (scenario === "changed while waiting") {
    media = {call, pc: new RTCPeerConnection(), closed: false};
  }
  await verified;
  const ms = performance.now() - started;
  pc.close();
  if (media.pc !== pc) media.pc.close();
  delete phone.media; // (the class's getter again)
  return {errors: phone.errors.map((e) => [e.code, e.message]), sas: phone.sas, ms, asked,
    attempts: VERIFY_ATTEMPTS};
}"""


async def test_the_page_verifies_only_a_live_connection(hub: Hub, chromium: Launch) -> None:
    """A code asked for as the call ends, or before the certificate stats exist, is no
    error: the page waits for the certificates (getStats has them a moment after
    "connected") and drops the result of a connection closed or replaced meanwhile. Only a
    connection that stays open without them, whose SDP has no sha-256 fingerprint
    (Chromium's remote description can keep only the sha-512 one), is an error."""
    browser = await chromium(tone=None)
    page = await browser.open(hub_url(hub) + "/")
    await wait_js(page, "window.phone !== undefined")
    sdp512 = "a=fingerprint:sha-512 " + hexed(random.Random(5).randbytes(64))

    async def verify(scenario: str) -> dict[str, Any]:
        result: dict[str, Any] = await page.evaluate(VERIFY_SCENARIO, [scenario, sdp512])
        return result

    # A connection closed (the call ended) before verify() asked: nothing to say.
    closed = await verify("closed")
    assert closed["errors"] == [] and closed["sas"] is None, closed
    # Closed, or replaced by another (a media restart), while verify() waited for the
    # certificate stats of an unconnected connection: dropped, before the retries ran out
    # (counted in getStats calls, not in time: a loaded browser stretches the time).
    for scenario in ("closed while waiting", "changed while waiting"):
        dropped = await verify(scenario)
        assert dropped["errors"] == [] and dropped["sas"] is None, (scenario, dropped)
        assert 1 <= dropped["asked"] < dropped["attempts"], (scenario, dropped)
    # Open, but no certificates in its stats after the retries, and only a sha-512
    # fingerprint from the peer: an error (the code is defined on sha-256 fingerprints).
    stuck = await verify("sha-512 only")
    assert stuck["sas"] is None
    assert [code for code, _ in stuck["errors"]] == ["no-verification-code"], stuck
    assert "no sha-256 fingerprint (only sha-512)" in stuck["errors"][0][1], stuck
    assert stuck["attempts"] > 1 and stuck["asked"] == stuck["attempts"], stuck  # every retry
    # (and spread out: the VERIFY_ATTEMPTS - 1 sleeps of VERIFY_RETRY_MS between them
    # alone take 1.8 s; a lower bound, which load only makes safer)
    assert stuck["ms"] >= 1500, stuck
