"""Who may open a WebSocket: softphone.hub.admission.admit, a pure decision (no sockets).

The hub applying it over real sockets is tested in test_hub.py and
test_hub_security.py (the same cases end to end).
"""

from __future__ import annotations

import pytest

from softphone.hub.admission import (
    CLOSE_BAD_ID,
    CLOSE_FULL,
    Admission,
    AdmissionRules,
    FullAlarm,
    Upgrade,
    Verdict,
    admit,
)
from softphone.hub.auth import mint_token
from softphone.hub.limits import ConnectionLimiter, OriginPolicy

SECRET = "s3cret-" + "x" * 40
NOW = 1_700_000_000.0
OPEN = AdmissionRules(OriginPolicy.from_list([]))
TOKENS = AdmissionRules(OriginPolicy.from_list([]), SECRET)


def upgrade(target: str = "/ws?id=alice", origin: str | None = None, host: str = "hub:8080",
            remote: str = "10.0.0.1", tls: bool = False) -> Upgrade:
    return Upgrade(target, origin, host, remote, tls)


def decide(up: Upgrade, rules: AdmissionRules = OPEN,
           limiter: ConnectionLimiter | None = None, now: float = NOW) -> Admission:
    return admit(up, rules, limiter or ConnectionLimiter(), now)


def test_a_valid_id_on_an_open_hub_is_accepted() -> None:
    decision = decide(upgrade("/ws?id=a.b_c-D&x=1"))
    assert decision == Admission(Verdict.ACCEPT, "a.b_c-D")
    assert decision.accepted and decision.counted and decision.error is None


@pytest.mark.parametrize(("origin", "host", "tls", "allowed"), [
    (None, "hub:8080", False, True),  # not a browser page
    ("http://10.0.0.5:8080", "10.0.0.5:8080", False, True),  # the hub's own page
    ("https://10.0.0.5:8080", "10.0.0.5:8080", True, True),
    ("http://10.0.0.5:8080", "10.0.0.5:8080", True, False),  # http page, https hub
    ("http://[::1]:8080", "[::1]:8080", False, True),
    ("http://localhost:8080", "localhost:8080", False, True),
    # a TLS proxy in front of a plain hub (server/README.md): the page is https://HOST
    ("https://10.0.0.5", "10.0.0.5", False, True),
    ("https://10.0.0.5:8443", "10.0.0.5:8443", False, True),
    ("https://evil.example", "10.0.0.5", False, False),
    ("http://evil.example", "hub:8080", False, False),
    ("null", "hub:8080", False, False),
    # a name the hub was not told of may be DNS rebinding: its "own" page is not
    ("http://hub:8080", "hub:8080", False, False),
    ("https://hub.example.org", "hub.example.org", False, False),
])
def test_origin(origin: str | None, host: str, tls: bool, allowed: bool) -> None:
    decision = decide(upgrade(origin=origin, host=host, tls=tls))
    assert decision.accepted is allowed
    if not allowed:
        assert decision.verdict is Verdict.ORIGIN and not decision.counted
        assert decision.error is None  # answered with HTTP 403, not a WebSocket


def test_a_declared_name_is_the_hubs_own() -> None:
    """--allow-origin https://hub.example.org declares the name: the hub's page
    served under it (a TLS proxy in front, or the plain hub's port) is its own."""
    rules = AdmissionRules(OriginPolicy.from_list(["https://hub.example.org"]))
    for origin, host in [("https://hub.example.org", "hub.example.org"),
                         ("http://hub.example.org:8080", "hub.example.org:8080")]:
        assert decide(upgrade(origin=origin, host=host), rules).accepted, origin
    assert not decide(upgrade(origin="http://evil.example:8080", host="evil.example:8080"),
                      rules).accepted


def test_origins_allowed_besides_the_hubs_own() -> None:
    rules = AdmissionRules(OriginPolicy.from_list(["https://app.example"]))
    assert decide(upgrade(origin="https://app.example"), rules).accepted
    assert not decide(upgrade(origin="https://other.example"), rules).accepted
    anyone = AdmissionRules(OriginPolicy.from_list(["*"]))
    assert decide(upgrade(origin="https://other.example"), anyone).accepted


def test_limits_refuse_without_counting() -> None:
    limiter = ConnectionLimiter(max_total=3, max_per_address=2)
    for _ in range(2):
        assert decide(upgrade(), limiter=limiter).counted
        limiter.open("10.0.0.1")  # what the hub does with a counted one
    refused = decide(upgrade(), limiter=limiter)
    assert refused.verdict is Verdict.LIMIT and not refused.counted
    assert refused.error is not None and refused.error.code == "too-many-connections"
    assert (refused.close_code, refused.close_reason) == (
        CLOSE_FULL, "too many connections from this address")
    assert limiter.total == 2 and limiter.count("10.0.0.1") == 2  # admit() counts nothing
    assert decide(upgrade(remote="10.0.0.2"), limiter=limiter).accepted
    limiter.open("10.0.0.2")
    full = decide(upgrade(remote="10.0.0.3"), limiter=limiter)
    assert full.verdict is Verdict.LIMIT and full.close_reason == "the hub is full"


@pytest.mark.parametrize(("target", "reason"), [
    ("/ws", "missing id"), ("/ws?id=", "missing id"), ("/ws?token=x", "missing id"),
    ("/ws?id=has%20space", "invalid id"), ("/ws?id=" + "x" * 65, "invalid id"),
    ("/ws?id=%C3%A9", "invalid id"),
])
def test_bad_ids_are_told_why_then_closed(target: str, reason: str) -> None:
    decision = decide(upgrade(target))
    assert decision.verdict is Verdict.BAD_ID and decision.counted
    assert decision.error is not None and decision.error.code == "bad-message"
    assert decision.error.message.startswith(f"{reason}: use ?id=")
    assert (decision.close_code, decision.close_reason) == (CLOSE_BAD_ID, reason)


def test_tokens() -> None:
    good = mint_token(SECRET, "alice", NOW)
    assert decide(upgrade(f"/ws?id=alice&token={good}"), TOKENS).accepted
    assert decide(upgrade(f"/ws?token={good}&id=alice"), TOKENS).accepted
    for target, why in [
        ("/ws?id=alice", "missing token"),
        ("/ws?id=alice&token=", "missing token"),
        (f"/ws?id=bob&token={good}", "for another id"),
        (f"/ws?id=alice&token={mint_token('y' * 40, 'alice', NOW)}", "not signed by this hub"),
        ("/ws?id=alice&token=garbage", "malformed token"),
    ]:
        decision = decide(upgrade(target), TOKENS)
        assert decision.verdict is Verdict.UNAUTHORIZED and decision.counted, target
        assert decision.error is not None and decision.error.code == "unauthorized"
        assert why in decision.why, (target, decision.why)
        assert decision.close_code == CLOSE_BAD_ID
        assert decision.close_reason == f"unauthorized: {decision.why}"
    expired = decide(upgrade(f"/ws?id=alice&token={good}"), TOKENS, now=NOW + 2 * 86400)
    assert expired.verdict is Verdict.UNAUTHORIZED and "expired" in expired.why


def test_the_first_reason_wins() -> None:
    """Origin, then limits, then id, then token: the order a refusal is reported in."""
    full = ConnectionLimiter(max_total=1)
    full.open("10.0.0.9")
    bad = upgrade("/ws?id=", origin="http://evil.example")
    assert decide(bad, TOKENS, full).verdict is Verdict.ORIGIN
    bad = upgrade("/ws?id=")
    assert decide(bad, TOKENS, full).verdict is Verdict.LIMIT
    assert decide(bad, TOKENS).verdict is Verdict.BAD_ID
    assert decide(upgrade(), TOKENS).verdict is Verdict.UNAUTHORIZED


def test_a_full_hub_is_warned_about_once_until_it_had_room() -> None:
    alarm = FullAlarm()
    limiter = ConnectionLimiter(max_total=1, max_per_address=1)
    assert not alarm.seen(decide(upgrade(), limiter=limiter))  # accepted: room
    limiter.open("10.0.0.1")
    full = decide(upgrade("/ws?id=bob", remote="10.0.0.2"), limiter=limiter)
    assert full.verdict is Verdict.LIMIT
    assert [alarm.seen(full) for _ in range(5)] == [True, False, False, False, False]
    # too many from one address: not the hub's being full
    per_address = ConnectionLimiter(max_per_address=1)
    per_address.open("10.0.0.1")
    assert not FullAlarm().seen(decide(upgrade(), limiter=per_address))
    limiter.close("10.0.0.1")  # room again, and a connection takes it
    assert not alarm.seen(decide(upgrade("/ws?id=bob", remote="10.0.0.2"), limiter=limiter))
    limiter.open("10.0.0.2")
    assert alarm.seen(decide(upgrade(), limiter=limiter))  # full again: said again
