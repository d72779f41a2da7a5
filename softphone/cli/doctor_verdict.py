"""What ``softphone doctor``'s STUN and TURN answers mean, as plain logic.

:mod:`softphone.cli.doctor_ice` asks the servers and hands each answer here
as an :class:`Outcome`. Two things are decided from all of them together:

- :func:`explain`: why a STUN server (or TURN over UDP) did not answer, from
  what the other checks of the same server saw. TURN over UDP answers: UDP
  gets there, the STUN service itself is off. Only TURN over TCP answers:
  UDP is blocked on the way.
- :func:`verdict`: the ``media path`` line. A call (aiortc) uses the first
  STUN URL and the first TURN URL only, so a relay that answers over another
  transport does not help it; which fix fits depends on whether the URLs
  came from the hub (its operator orders them) or from the settings.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from softphone.cli.doctor import Result
from softphone.core.iceurl import Transport

__all__ = ["Outcome", "explain", "verdict"]


@dataclass(frozen=True)
class Outcome:
    """One STUN or TURN check: what was asked, and what came of it."""

    kind: Literal["stun", "turn"]
    #: The server's host as its URL names it, its port, and the URL's scheme.
    host: str
    port: int
    scheme: str
    transport: Transport
    #: A call would use this one (the first STUN URL, the first TURN URL's transport).
    used: bool
    ok: bool
    #: "", "timeout", "refused", "credentials" or "error".
    why: str
    result: Result


def _private(address: object) -> bool:
    """A private (RFC 1918, ULA ...) address, one that is behind NAT to reach the internet."""
    try:
        ip = ipaddress.ip_address(str(address))
    except ValueError:
        return False
    return ip.is_private and not ip.is_loopback and not ip.is_link_local


def explain(outcomes: Sequence[Outcome]) -> list[Outcome]:
    """``outcomes`` with each STUN or TURN-over-UDP line that got no answer saying why,
    from what the other checks of the same server saw."""
    out = []
    for o in outcomes:
        if o.ok or o.transport != "udp" or o.why not in ("timeout", "refused"):
            out.append(o)
            continue
        same = [t for t in outcomes if t.kind == "turn" and t.host == o.host and t is not o]
        udp_answers = any(t.ok and t.transport == "udp" for t in same)
        tcp_only = any(t.ok and t.transport == "tcp" for t in same) and all(
            not t.ok and t.why == "timeout" for t in outcomes
            if t.host == o.host and t.transport == "udp")
        if o.kind == "stun" and udp_answers:
            detail = (f"{o.result.detail}; yet TURN over UDP to the same server answers: UDP "
                      "gets there, its STUN does not answer")
            fix = ("the STUN service is off or broken (coturn: no-stun set?): tell its "
                   "operator; calls still go through the TURN relay, but none directly")
        elif tcp_only:
            detail = (f"{o.result.detail}; the same server answers TURN over TCP: UDP to it "
                      "seems blocked here")
            fix = f"allow outgoing UDP (to port {o.port}) in this network's firewall"
        else:
            out.append(o)
            continue
        out.append(replace(o, result=replace(o.result, detail=detail, fix=fix)))
    return out


def verdict(outcomes: Sequence[Outcome], relay_only: bool, first_turn: str | None,
            tcp_listed: bool, from_hub: bool) -> Result:
    """The ``media path`` line: what the STUN/TURN answers mean for a call's media.

    ``first_turn`` is the first TURN URL without its query (``turn:HOST:PORT``),
    ``tcp_listed`` whether its ``?transport=tcp`` form is among the URLs too,
    ``from_hub`` whether the URLs are the hub's (else the settings').
    """
    name = "media path"
    stun = [o for o in outcomes if o.kind == "stun"]
    turns = [o for o in outcomes if o.kind == "turn"]
    relay_used = sorted({o.transport for o in turns if o.ok and o.used})
    relay_any = sorted({o.transport for o in turns if o.ok})
    udp_failed = [o for o in outcomes if o.transport == "udp" and not o.ok
                  and o.why in ("timeout", "refused")]
    udp_all_failed = bool(udp_failed) and all(
        not o.ok for o in outcomes if o.transport == "udp" and o.why != "credentials")
    stun_ok = any(o.ok for o in stun)
    if relay_used == ["tcp"] and udp_all_failed:
        fix = "allow outgoing UDP if you can (audio over TCP stalls when packets are lost)"
        if not relay_only:
            fix += ("; meanwhile --relay (ice.relay = true) sets calls up sooner: no "
                    "waiting for STUN and UDP, which cannot pass here")
        return Result(name, True, "UDP seems blocked here: STUN and TURN over UDP do not "
                      "answer; calls go through the TURN relay over TCP", fix)
    if relay_used:
        direct = (" and directly through NAT (STUN answered)" if stun_ok else
                  ", not directly: STUN does not answer, so every call is relayed" if stun
                  else "")
        return Result(name, True, f"calls can go through the TURN relay "
                      f"({'/'.join(relay_used)}){direct}")
    first = first_turn or "turn:HOST:PORT"
    tcp_url = f'"{first}?transport=tcp"'
    if relay_any and udp_all_failed:
        if not from_hub:
            fix = f"list {tcp_url} first in ice.servers (--ice-server)"
        else:
            fix = (f"ask the hub's operator to list {tcp_url} first " + (
                "(the hub hands it out, after the UDP one; serve gives --turn URLs in "
                "their order)" if tcp_listed else
                f"(serve --turn {tcp_url} before the others)") + ", or list it first in "
                "ice.servers with TURN credentials of your own (ice.username, "
                "ice.credential)")
        return Result(name, False, "UDP seems blocked here: STUN and TURN over UDP do not "
                      "answer, TURN over TCP does, but a call uses the first TURN URL, "
                      "over UDP", f"use TURN over TCP: {fix}; or allow outgoing UDP here")
    if relay_any:
        return Result(name, False, f"the TURN server answers over {'/'.join(relay_any)}, "
                      "but not over the transport of the first TURN URL, the one a call "
                      f"uses", f"put \"{first}?transport={relay_any[0]}\" first",
                      needed=relay_only)
    if any(o.why == "credentials" for o in turns):
        return Result(name, False, "the TURN server refused the credentials: calls that "
                      "need a relay (symmetric NAT, UDP blocked) will fail"
                      + ("" if stun_ok or relay_only else "; without STUN, calls to "
                         "other networks fail too"),
                      "see the turn lines above", needed=relay_only)
    if turns:
        return Result(name, False, "no TURN server answered: calls that need a relay will "
                      "fail", "see the turn lines above", needed=relay_only)
    if relay_only:
        return Result(name, False, "relay-only (ice.relay) but no TURN server is configured",
                      "add a turn: URL with credentials, or drop --relay")
    if stun_ok:
        return Result(name, True, "calls go directly through NAT (STUN answered); there "
                      "is no TURN relay for networks that need one")
    if stun:
        local = next((o.result.data.get("local") for o in stun
                      if o.result.data.get("local")), None)
        where = (f"this host's address ({local}) is private, so only phones on its own "
                 "network (or at a public address) can be reached" if _private(local) else
                 "only calls within this network will connect")
        return Result(name, False, f"no STUN server answered and there is no TURN relay: "
                      f"{where}", "see the stun lines above", needed=False)
    return Result(name, True, "no STUN/TURN servers: calls connect within one network only")
