"""``softphone doctor``'s network checks: the hub, its certificate, the token,
``/ice-servers``, each STUN server and each TURN server, for real.

- the hub: ``GET /healthz`` (status, clients, version when it reports one);
- TLS: the certificate as a phone checks it (``--ca-file`` / ``--insecure``),
  its names and expiry;
- signaling: a WebSocket to ``/ws`` as a throw-away id, which also tells
  whether the hub needs tokens; then, with a token, a real sign-in as our id
  (:attr:`DoctorTarget.register`), the hub's verdict on the token, and its
  expiry (read from the token, without its signature);
- ``/ice-servers`` with the token, as a call asks for it;
- each ``stun:`` URL: a binding request over UDP, and the address it saw;
- each ``turn:`` server: an allocation with the credentials, over UDP and over
  TCP (``turns:``: TLS), whichever transport its URL names;
- a verdict on the media path: a relay that works, UDP blocked (only TURN over
  TCP answers), credentials refused, nothing but host candidates.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from typing import Any

import aiohttp

from softphone import __version__
from softphone.cli.doctor import DoctorTarget, Result, span, turn_expiry, when
from softphone.cli.doctor_signaling import (
    Probe,
    check_signaling,
    probe_signaling,
    reason_of,
    token_claims,
    token_facts,
)

__all__ = ["Probe", "check_certificate", "check_hub", "check_ice_servers", "check_signaling",
           "check_version", "network_checks", "probe_signaling", "token_by_ice_servers",
           "token_claims"]

# ---------------------------------------------------------- helpers ---


#: How long before expiry a certificate is worth a warning (a token's: SOON).
CERT_SOON = 14 * 86400.0


# -------------------------------------------------------------- hub ---


async def check_hub(session: aiohttp.ClientSession, http: str, tls: ssl.SSLContext | bool,
                    wait: float) -> tuple[Result, dict[str, Any] | None]:
    """``GET /healthz``: the hub is there (and, for https, its certificate is trusted)."""
    url = f"{http}/healthz"
    try:
        async with asyncio.timeout(wait):
            async with session.get(url, ssl=tls) as resp:
                status = resp.status
                body = await resp.text()
    except aiohttp.ClientConnectorCertificateError as exc:
        why = getattr(exc.certificate_error, "verify_message", None) or str(exc.certificate_error)
        return Result("hub", False, f"{http}: its certificate is not trusted ({why})",
                      "--ca-file FILE with the hub's certificate or its CA (ca_file in the "
                      "config; for 'serve --self-signed' the certificate it printed), "
                      "or --insecure to skip the check (not on the internet)"), None
    except aiohttp.ClientSSLError as exc:
        return Result("hub", False, f"{http}: TLS failed ({reason_of(exc.os_error)})",
                      "is it an https hub? (http:// for a hub without --cert/--self-signed)"
                      ), None
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        why = reason_of(getattr(exc, "os_error", exc))
        fix = "is the hub running (softphone serve) and is --server right? (server in " \
            "the config; softphone config shows where it came from)"
        if isinstance(exc, TimeoutError) and http.startswith("https:"):
            fix += "; a hub without TLS is http://"
        return Result("hub", False, f"cannot reach {http}: {why}", fix), None
    if status != 200:
        return Result("hub", True, f"{http} answers, but /healthz gives HTTP {status} "
                      "(an original hub, without /healthz?)", needed=False), None
    try:
        health = json.loads(body)
    except ValueError:
        health = None
    if not isinstance(health, dict):
        return Result("hub", True, f"{http} answers; /healthz is not JSON (not a softphone "
                      "hub?)", needed=False), None
    clients = health.get("clients")
    detail = f"{http} answers: status {health.get('status')}" + (
        f", {clients} client{'s' * (clients != 1)} here" if isinstance(clients, int) else "")
    if health.get("status") == "degraded":
        return Result("hub", True, detail, "this node lost its Redis: clients on other nodes "
                      "are offline to us until it is back (docs/scale-out.md)",
                      data=health), health
    return Result("hub", True, detail, data=health), health


def check_version(health: dict[str, Any] | None) -> Result:
    """The hub's version, when its /healthz reports one, against ours."""
    theirs = (health or {}).get("version")
    if not isinstance(theirs, str):
        return Result("version", True, f"the hub does not report its version (ours: "
                      f"{__version__}); signaling below checks that it speaks the protocol",
                      needed=False)
    same = theirs.split(".")[:2] == __version__.split(".")[:2]
    detail = f"hub {theirs}, this softphone {__version__}"
    return Result("version", True, detail, "" if same else
                  "different releases: the protocol is kept compatible, but upgrade the "
                  "older side when you can", needed=False, data={"hub": theirs})


async def check_certificate(host: str, port: int, tls: ssl.SSLContext | None,
                            wait: float, now: float) -> Result:
    """The hub's certificate: trusted as a phone would trust it, its names and expiry."""
    from cryptography import x509

    relaxed = ssl.create_default_context()
    relaxed.check_hostname = False
    relaxed.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(wait):
            _, writer = await asyncio.open_connection(host, port, ssl=relaxed,
                                                      server_hostname=host)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    except (TimeoutError, OSError) as exc:
        return Result("tls", False, f"no TLS handshake with {host}:{port}: {reason_of(exc)}",
                      "is it an https hub? (http:// for a hub without --cert/--self-signed)")
    cert = x509.load_der_x509_certificate(der)
    expires = cert.not_valid_after_utc.timestamp()
    try:
        names = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
        shown = [str(n.value) for n in names][:4]
    except x509.ExtensionNotFound:
        shown = [cert.subject.rfc4514_string()]
    issuer = cert.issuer.rfc4514_string()
    self_signed = cert.issuer == cert.subject
    data = {"names": shown, "expires": int(expires), "issuer": issuer,
            "self_signed": self_signed}
    about = (f"certificate for {', '.join(shown)}, "
             f"{'self-signed' if self_signed else 'issued by ' + issuer}, ")
    if expires < now:
        return Result("tls", False, about + f"expired {span(now - expires)} ago "
                      f"({when(expires)})", "renew it on the hub (--cert/--key), or restart "
                      "'serve --self-signed'", data=data)
    about += f"valid until {when(expires)} ({span(expires - now)} left)"
    try:
        async with asyncio.timeout(wait):
            _, writer = await asyncio.open_connection(
                host, port, ssl=tls or ssl.create_default_context(), server_hostname=host)
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    except ssl.SSLCertVerificationError as exc:
        return Result("tls", False, f"{about}; not trusted: {exc.verify_message}",
                      "--ca-file FILE with this certificate or its CA (ca_file in the "
                      "config), or --insecure to skip the check (not on the internet)",
                      data=data)
    except (TimeoutError, OSError) as exc:
        return Result("tls", False, f"{about}; handshake failed: {reason_of(exc)}", data=data)
    checked = "not checked (--insecure)" if tls is not None and \
        tls.verify_mode == ssl.CERT_NONE else "trusted"
    if expires - now < CERT_SOON:
        return Result("tls", True, f"{about}, {checked}", "it expires soon: renew it",
                      data=data)
    return Result("tls", True, f"{about}, {checked}", data=data)


# -------------------------------------------------------- signaling ---


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


async def check_ice_servers(session: aiohttp.ClientSession, http: str, target: DoctorTarget,
                            tls: ssl.SSLContext | bool, now: float
                            ) -> tuple[Result, list[dict[str, Any]]]:
    """The STUN/TURN servers a call would use: the settings', else the hub's."""
    if target.ice_servers:
        servers: list[dict[str, Any]] = [{"urls": url} for url in target.ice_servers
                                         if url != "none"]
        for entry in servers:
            if entry["urls"].startswith("turn") and target.ice_username is not None:
                entry.update(username=target.ice_username, credential=target.ice_credential)
        listed = ", ".join(target.ice_servers)
        return Result("ice-servers", True, f"from the settings (ice.servers): {listed}",
                      needed=False), servers
    params = {"id": target.client_id or "doctor"}
    headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
    try:
        async with asyncio.timeout(target.timeout):
            async with session.get(f"{http}/ice-servers", params=params, headers=headers,
                                   ssl=tls) as resp:
                status = resp.status
                text = await resp.text()
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
        return Result("ice-servers", False, f"cannot get {http}/ice-servers: "
                      f"{reason_of(exc)}", "calls ask the hub for it: check the hub, or set "
                      "ice.servers"), []
    if status not in (200, 401):  # (the status first: an error page is no JSON)
        return Result("ice-servers", False, f"HTTP {status} from {http}/ice-servers",
                      "is the server URL right? (--server, server in the config: the "
                      "hub's base URL, e.g. http://host:8080); else set ice.servers",
                      data={"status": status}), []
    try:
        body: Any = json.loads(text)
    except ValueError:
        body = None
    if status == 200 and body is None:
        return Result("ice-servers", False, f"{http}/ice-servers answered HTTP 200 "
                      "with no JSON (not a softphone hub?)", "check --server, or set "
                      "ice.servers", data={"status": status}), []
    if status == 401:
        message = body.get("message", "") if isinstance(body, dict) else ""
        return Result("ice-servers", False, f"the hub gives TURN credentials only with a "
                      f"valid token: {message}", "set a valid token (see the token line)",
                      data={"status": 401, "message": message}), []
    raw = body.get("iceServers") if isinstance(body, dict) else None
    if status != 200 or not isinstance(raw, list):
        return Result("ice-servers", False, f"{http}/ice-servers answered HTTP {status} "
                      "without an iceServers list", "set ice.servers instead"), []
    servers = [s for s in raw if isinstance(s, dict)]
    urls = [u for entry in servers for u in _as_list(entry.get("urls")) if isinstance(u, str)]
    if not urls:
        return Result("ice-servers", True, "the hub hands out no STUN/TURN servers: calls "
                      "connect only within one network", "the hub's operator can add "
                      "them (serve --ice-server, --turn)"), servers
    detail = ", ".join(urls)
    expiries = [e for s in servers if isinstance(s.get("username"), str)
                for e in [turn_expiry(s["username"])] if e is not None]
    data = {"urls": urls, "turn_credentials": bool(expiries)}
    if expiries and min(expiries) <= now:
        return Result("ice-servers", False, f"{detail} (the TURN credentials it hands out "
                      f"expired {span(now - min(expiries))} ago, {when(min(expiries))})",
                      "the hub's operator: static --ice-username/--ice-credential expire; "
                      "--turn with --turn-secret hands out fresh ones (or the hub's clock is "
                      "wrong)", needed=False, data={**data, "expired": True}), servers
    if expiries:
        detail += f" (TURN credentials for {span(min(expiries) - now)})"
    return Result("ice-servers", True, detail, data=data), servers


def token_by_ice_servers(results: list[Result], listed: Result, target: DoctorTarget,
                         now: float) -> list[Result]:
    """``results`` with the token line judged by ``/ice-servers`` when it was not tried.

    Without a sign-in (:attr:`DoctorTarget.register` off) the hub may still
    have judged the token: one that hands out TURN credentials checks it
    first, with no effect on a phone signed in with our id.
    """
    at = next((i for i, r in enumerate(results)
               if r.name == "token" and r.data.get("checked") is False), None)
    if at is None or not target.token:
        return results
    facts, fix, unusable = token_facts(target.token, target.client_id, now)
    data = {"checked": True, "by": "/ice-servers"}
    if listed.data.get("status") == 401:
        results[at] = Result("token", False, f"refused by the hub (/ice-servers): "
                             f"{listed.data.get('message', '')}; the token: {facts}",
                             fix if unusable else f"get a new token for {target.client_id} "
                             "from the hub's operator (signed with the hub's secret)",
                             data=data)
    elif listed.data.get("turn_credentials") and target.client_id is not None:
        results[at] = Result("token", not unusable, "accepted by the hub (/ice-servers gave "
                             f"TURN credentials for it, without signing in); {facts}", fix,
                             data=data)
    return results


# ----------------------------------------------------------- verdict ---


async def network_checks(target: DoctorTarget, now: float) -> list[Result]:
    """Every network check, in order; later ones are skipped when the hub is not there."""
    from softphone.cli.doctor_ice import ice_checks
    from softphone.client.hubaddress import HubAddress
    from softphone.hub.tls import TLSConfigError, client_context

    try:
        address = HubAddress.parse(target.server)
    except ValueError as exc:
        return [Result("hub", False, str(exc), "softphone config set server URL")]
    try:
        context = client_context(target.ca_file, target.insecure)
    except TLSConfigError as exc:
        return [Result("tls", False, str(exc), "fix ca_file / --ca-file")]
    tls: ssl.SSLContext | bool = context if context is not None else True
    https = address.http.startswith("https")
    results: list[Result] = []
    limits = aiohttp.ClientTimeout(total=None, sock_connect=target.timeout)
    async with aiohttp.ClientSession(timeout=limits) as session:
        hub, health = await check_hub(session, address.http, tls, target.timeout)
        results.append(hub)
        if https:
            from urllib.parse import urlsplit

            parts = urlsplit(address.http)
            results.append(await check_certificate(parts.hostname or "", parts.port or 443,
                                                   context, target.timeout, now))
        servers: list[dict[str, Any]] = []
        if hub.ok:
            results.append(check_version(health))
            results += await check_signaling(session, address.ws, target, tls, now)
            listed, servers = await check_ice_servers(session, address.http, target, tls, now)
            results = token_by_ice_servers(results, listed, target, now)
            results.append(listed)
        elif target.ice_servers:
            listed, servers = await check_ice_servers(session, address.http, target, tls, now)
            results.append(listed)
    if hub.ok or target.ice_servers:  # (else: which servers a call would get is unknown)
        results += await ice_checks(servers, target.relay_only, target.timeout, now=now,
                                    from_hub=not target.ice_servers)
    return results
