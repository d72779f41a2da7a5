"""``softphone doctor``'s signaling checks: a WebSocket to the hub's ``/ws``, whether
the hub needs tokens, and (with a token) what the hub and the token itself say.

Without a token, a sign-in as a throw-away id (what a phone would do: an open hub
lets it in, one with tokens refuses it). With a token, never a sign-in without it
(the hub would count a refused login each run): a sign-in as our id with it when
asked (:attr:`DoctorTarget.register`), else a handshake with no id, which the hub
answers before it looks at tokens.

That handshake is still one refused connection on the hub's ``/metrics``
(``connections_refused{reason="bad-id"}``, not logged): every upgrade the hub
answers with 101 either signs an id in or is refused and counted, and one it
answers otherwise (a bad version or key: 400) would not show that upgrades get
through to the hub and back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from softphone.cli.doctor import DoctorTarget, Result, span, when
from softphone.client.signaling import without_token

__all__ = ["SOON", "Probe", "check_signaling", "probe_signaling", "reason_of", "token_claims",
           "token_facts"]

#: How long before expiry a token (24 h by default) is worth a warning.
SOON = 3600.0


def reason_of(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)  # (asyncio's own text is "Connect call failed ...")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc) or type(exc).__name__
    return without_token(text.splitlines()[0])[:200]  # (aiohttp's texts quote the URL)


@dataclass(frozen=True)
class Probe:
    """What one WebSocket sign-in got."""

    #: Signed in (the hub answered our message, or said nothing).
    accepted: bool
    #: The hub's error code (``unauthorized`` ...) or "" and its message.
    code: str = ""
    message: str = ""
    #: The message to an offline id was answered with ``offline``.
    routed: bool = False
    #: The upgrade was refused with this HTTP status.
    http_status: int | None = None
    #: The connection failed before that.
    failure: str = ""


async def probe_signaling(session: aiohttp.ClientSession, ws_base: str, client_id: str,
                          token: str | None, tls: ssl.SSLContext | bool,
                          wait: float) -> Probe:
    """Sign in as ``client_id``, send a ``hangup`` to a made-up id, see what comes back."""
    url = f"{ws_base}/ws?id={quote(client_id, safe='')}"
    if token:
        url += f"&token={quote(token, safe='')}"
    try:
        async with asyncio.timeout(wait):
            ws = await session.ws_connect(url, ssl=tls, autoping=True)
    except aiohttp.WSServerHandshakeError as exc:
        return Probe(False, http_status=exc.status, failure=f"HTTP {exc.status}")
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return Probe(False, failure=reason_of(getattr(exc, "os_error", exc)))
    nobody = f"doctor-{secrets.token_hex(6)}"
    try:
        with contextlib.suppress(ConnectionError, RuntimeError, aiohttp.ClientError):
            await ws.send_str(json.dumps({"type": "hangup", "to": nobody,
                                          "data": {"reason": "doctor"}}))
        try:
            async with asyncio.timeout(wait):
                async for frame in ws:
                    if frame.type != aiohttp.WSMsgType.TEXT:
                        continue
                    try:
                        message = json.loads(frame.data)
                        data = message.get("data") or {}
                        code, text = str(data.get("code", "")), str(data.get("message", ""))
                    except (ValueError, AttributeError):
                        continue
                    if message.get("type") != "error":
                        continue
                    if code == "offline":
                        return Probe(True, routed=True)
                    return Probe(False, code, text)
        except TimeoutError:
            return Probe(True)  # signed in; a hub that drops messages to offline ids
        return Probe(False, "closed", f"the hub closed the connection (code {ws.close_code})")
    finally:
        await ws.close()


def token_claims(token: str) -> dict[str, Any] | None:
    """The token's claims, read without checking its signature (None: not a JWT)."""
    import jwt

    try:
        claims = jwt.decode(token, options={"verify_signature": False, "verify_exp": False})
    except jwt.InvalidTokenError:
        return None
    return claims if isinstance(claims, dict) else None


def token_facts(token: str, client_id: str | None, now: float) -> tuple[str, str, bool]:
    """What the token says (detail), a fix, and whether it is unusable."""
    claims = token_claims(token)
    if claims is None:
        return "the token is not a JWT", "copy the whole token (softphone token prints one)", \
            True
    sub, exp = claims.get("sub"), claims.get("exp")
    if client_id is not None and sub != client_id:
        return f"the token is for {sub!r}, not {client_id!r}", \
            f"get a token for {client_id} (softphone token --as {client_id})", True
    if not isinstance(exp, int | float):
        return "the token has no expiry", "", False
    if exp < now:
        return f"the token expired {span(now - exp)} ago ({when(exp)})", \
            f"get a new one: softphone token --as {sub} on the hub", True
    fix = "it expires soon: get a new one" if exp - now < SOON else ""
    return f"expires {when(exp)} ({span(exp - now)} left)", fix, False


async def _check_with_token(session: aiohttp.ClientSession, ws_base: str,
                            target: DoctorTarget, token: str, client_id: str,
                            tls: ssl.SSLContext | bool, now: float) -> list[Result]:
    """The signaling and token lines when a token is set: signed in as our id with
    it (--register), or the token read, and no WebSocket tried."""
    facts, fix, unusable = token_facts(token, client_id, now)
    if not target.register:
        # The WebSocket without signing in: no id, which the hub answers after the
        # handshake ("missing id"), before it looks at tokens: no refused login.
        upgrade = await probe_signaling(session, ws_base, "", None, tls, target.timeout)
        broken = _no_websocket(upgrade, ws_base)
        return broken or [
            Result("signaling", True, "the WebSocket handshake works (checked without "
                   "signing in)", data={"checked": False}),
            Result("token", not unusable, f"{facts}; not tried on the hub (signing in "
                   f"as {client_id} would disconnect a phone listening as {client_id}: "
                   "--register tries it)", fix, data={"checked": False})]
    signed_in = await probe_signaling(session, ws_base, client_id, token, tls,
                                      target.timeout)
    broken = _no_websocket(signed_in, ws_base)
    if broken:
        return broken
    if signed_in.accepted:
        return [Result("signaling", True, f"signed in as {client_id}: {_routed(signed_in)}"),
                Result("token", True, f"accepted: signed in as {client_id}; {facts}", fix,
                       data={"checked": True})]
    if signed_in.code != "unauthorized":
        return [Result("signaling", False, f"the hub refused a connection: {signed_in.code}: "
                       f"{signed_in.message}", "try again later; if it stays, tell the "
                       "hub's operator")]
    why = signed_in.message or signed_in.code
    return [Result("signaling", True, "the WebSocket handshake works"),
            Result("auth", True, "the hub needs a token", data={"auth": "token"}),
            Result("token", False, f"refused by the hub: {why}; the token: {facts}",
                   fix if unusable else f"get a new token for {client_id} from the hub's "
                   "operator (signed with the hub's secret)")]


def _routed(probe: Probe) -> str:
    return ("a message to an offline id was answered 'offline'" if probe.routed
            else "no answer to a message for an offline id (an original hub?)")


def _no_websocket(probe: Probe, ws_base: str) -> list[Result]:
    """The FAIL line of a probe that got no WebSocket at all (else nothing)."""
    if probe.http_status is not None:
        return [Result("signaling", False, f"{ws_base}/ws answers HTTP "
                       f"{probe.http_status}, not a WebSocket: not a softphone hub?",
                       "check --server: the hub's base URL, e.g. http://host:8080")]
    if probe.failure:
        return [Result("signaling", False, f"WebSocket to {ws_base}/ws failed: "
                       f"{probe.failure}", "is a proxy in front of the hub passing "
                       "WebSocket upgrades on?")]
    return []


async def check_signaling(session: aiohttp.ClientSession, ws_base: str,
                          target: DoctorTarget, tls: ssl.SSLContext | bool,
                          now: float) -> list[Result]:
    """Whether the hub needs a token, and whether ours is accepted.

    With a token set, no sign-in without it: on a hub with tokens that is a refused
    login (its log and ``connections_refused{reason="unauthorized"}``) every run.
    Without a token, that sign-in is the point: it is what the phone would do.
    """
    if target.token and target.client_id is not None:
        return await _check_with_token(session, ws_base, target, target.token,
                                       target.client_id, tls, now)
    probe_id = f"doctor-{secrets.token_hex(4)}"
    anonymous = await probe_signaling(session, ws_base, probe_id, None, tls, target.timeout)
    token = target.token
    broken = _no_websocket(anonymous, ws_base)
    if broken:
        return broken
    if anonymous.accepted:
        results = [Result("signaling", True, f"signed in as {probe_id}: {_routed(anonymous)}"),
                   Result("auth", True, "the hub is open: no token needed",
                          data={"auth": "open"})]
        if token:
            results.append(Result("token", True, "not needed by this hub", needed=False))
        return results
    if anonymous.code != "unauthorized":
        return [Result("signaling", False, f"the hub refused a connection: {anonymous.code}: "
                       f"{anonymous.message}", "try again later; if it stays, tell the "
                       "hub's operator")]
    results = [Result("signaling", True, "the WebSocket handshake works"),
               Result("auth", True, "the hub needs a token", data={"auth": "token"})]
    if target.client_id is None:
        results.append(Result("token", False, "no id set: the hub needs an id and its token",
                              "softphone config set id NAME (or --as NAME)"))
        return results
    if not token:
        results.append(Result("token", False, "no token set, and this hub needs one (it "
                              "refused a sign-in without one: its log shows it as "
                              f"reason=unauthorized id={probe_id})",
                              f"ask the hub's operator for one (softphone token --as "
                              f"{target.client_id}), then softphone config set token_file "
                              "FILE (or --token)"))
        return results
    facts, fix, unusable = token_facts(token, target.client_id, now)
    if not target.register:
        who = target.client_id
        return [*results, Result("token", not unusable, f"{facts}; not tried on the hub "
                                 f"(signing in as {who} would disconnect a phone listening "
                                 f"as {who}: --register tries it)", fix,
                                 data={"checked": False})]
    signed_in = await probe_signaling(session, ws_base, target.client_id, token, tls,
                                      target.timeout)
    if signed_in.accepted:
        return [*results, Result("token", True, f"accepted: signed in as {target.client_id}; "
                                 f"{facts}", fix, data={"checked": True})]
    why = signed_in.message or signed_in.failure or signed_in.code
    return [*results, Result("token", False, f"refused by the hub: {why}; the token: {facts}",
                             fix if unusable else f"get a new token for {target.client_id} "
                             "from the hub's operator (signed with the hub's secret)")]


# ----------------------------------------------------- /ice-servers ---
