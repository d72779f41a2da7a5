"""``softphone doctor``'s STUN and TURN checks.

Real requests, with aioice's STUN messages and TURN client (the ones a call
uses): a binding request to each ``stun:`` URL over UDP (the address it saw
is ours as the internet sees it), and an allocation at each TURN server
with the call's credentials over UDP and over TCP (``turns:``: TLS over
TCP), deleted at once. A refused allocation (401) is dated from its REST
username: expired, or not accepted though still valid (another secret).
Then :mod:`softphone.cli.doctor_verdict` names what it means for a call: a
relay that works, UDP blocked here (only TURN over TCP answers), the STUN
service off, TURN credentials refused, or no way beyond this network.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Sequence
from typing import Any

from softphone.cli.doctor import Result, span, turn_expiry, when
from softphone.cli.doctor_verdict import Outcome, explain, verdict
from softphone.core.iceurl import IceUrl, Transport, check_ice_url, parse_ice_url

__all__ = ["IceUrl", "ice_checks", "parse_ice_url", "stun_binding", "turn_allocation"]


def _reason(exc: BaseException) -> str:
    from softphone.media.aiortc_seams import describe_turn_error

    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the name ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if type(exc).__name__ == "TransactionTimeout":
        return "no answer"
    return describe_turn_error(exc)


async def _resolve(host: str, port: int, kind: int) -> tuple[str, int]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=kind)
    infos.sort(key=lambda info: info[0] != socket.AF_INET)  # IPv4 first, as aioice
    address = infos[0][4]
    return str(address[0]), int(address[1])


class _StunClient(asyncio.DatagramProtocol):
    """Sends STUN requests on a connected UDP socket and hands answers to transactions."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.transactions: dict[bytes, Any] = {}
        self.failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        from aioice import stun

        try:
            message = stun.parse_message(data)
        except ValueError:
            return
        transaction = self.transactions.get(message.transaction_id)
        if transaction is not None:
            transaction.response_received(message, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP: port unreachable ...
        if not self.failed.done():
            self.failed.set_exception(exc)

    def send_stun(self, message: Any, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(bytes(message))


async def stun_binding(host: str, port: int, wait: float
                       ) -> tuple[tuple[str, int], tuple[str, int]]:
    """A STUN binding request over UDP: (our address as the server saw it, the server's)."""
    from aioice import stun

    server = await _resolve(host, port, socket.SOCK_DGRAM)
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(_StunClient, remote_addr=server)
    try:
        request = stun.Message(message_method=stun.Method.BINDING,
                               message_class=stun.Class.REQUEST)
        transaction = stun.Transaction(request, server, client, retransmissions=3)
        client.transactions[request.transaction_id] = transaction
        run: asyncio.Future[Any] = asyncio.ensure_future(transaction.run())
        try:
            async with asyncio.timeout(wait):
                done, _ = await asyncio.wait({run, client.failed},
                                             return_when=asyncio.FIRST_COMPLETED)
            finished = done.pop()
            if finished is client.failed:
                finished.result()  # raises what ICMP said
            response, _ = run.result()
        finally:
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run
            if client.failed.done() and not client.failed.cancelled():
                client.failed.exception()  # (retrieved)
            else:
                client.failed.cancel()
        mapped = response.attributes.get("XOR-MAPPED-ADDRESS") or \
            response.attributes.get("MAPPED-ADDRESS")
        if mapped is None:
            raise ValueError("the answer carries no mapped address")
        return (str(mapped[0]), int(mapped[1])), server
    finally:
        transport.close()


class _Relay(asyncio.DatagramProtocol):
    """The allocation's receiver: only notes when it is gone."""

    def __init__(self) -> None:
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.gone.done():
            self.gone.set_result(None)


async def turn_allocation(ice: IceUrl, username: str, credential: str, transport: Transport,
                          wait: float) -> tuple[tuple[str, int], tuple[str, int]]:
    """A TURN allocation (deleted again): (the relayed address, ours as the server saw it)."""
    from aioice import turn

    tls: ssl.SSLContext | None = None
    if ice.scheme == "turns":
        tls = ssl.create_default_context()
        server = (ice.host, ice.port)  # the name, for the certificate
    else:
        server = await _resolve(ice.host, ice.port,
                                socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM)
    async with asyncio.timeout(wait):
        relay, receiver = await turn.create_turn_endpoint(
            _Relay, server, username, credential, transport=transport, ssl=tls)
    relayed = relay.get_extra_info("sockname")
    mapped = relay.get_extra_info("related_address")
    relay.close()  # deletes the allocation, then closes
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait):
            await receiver.gone
    return (str(relayed[0]), int(relayed[1])), (str(mapped[0]), int(mapped[1]))


# ----------------------------------------------------------- checks ---


def _classify(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    code = (getattr(response, "attributes", None) or {}).get("ERROR-CODE", (0, ""))[0]
    if code == 401:
        return "credentials"
    if isinstance(exc, TimeoutError) or type(exc).__name__ == "TransactionTimeout":
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    return "error"


async def _local_toward(host: str, port: int) -> str | None:
    """Our address that packets to ``host`` leave from (a connected UDP socket; nothing
    is sent), or None when there is no route or no such host."""
    try:
        server = await _resolve(host, port, socket.SOCK_DGRAM)
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(server)
            return str(s.getsockname()[0])
    except OSError:
        return None


async def _check_stun(ice: IceUrl, wait: float, used: bool = True) -> Outcome:
    name = "stun"
    if ice.scheme == "stuns":
        return Outcome("stun", ice.host, ice.port, ice.scheme, "tcp", used, True, "", Result(
            name, True, f"{ice.url}: not checked (STUN over TLS)", needed=False))
    unused = "" if used else " (unused: a call takes the first STUN URL only)"
    local = await _local_toward(ice.host, ice.port)
    try:
        mapped, server = await stun_binding(ice.host, ice.port, wait)
    except (TimeoutError, OSError, ValueError, Exception) as exc:  # aioice raises its own
        why = _classify(exc)
        text = f"no answer over UDP in {wait:g} s" if why == "timeout" else _reason(exc)
        return Outcome("stun", ice.host, ice.port, ice.scheme, "udp", used, False, why,
                       Result(name, False, f"{ice.url}: {text}{unused}",
                              "is the STUN server up, and is UDP to it allowed here? (a "
                              "firewall dropping UDP shows as no answer)", needed=False,
                              data={"url": ice.url, "local": local}))
    behind = f" (we are {local} here: behind NAT)" if local and local != mapped[0] else ""
    return Outcome("stun", ice.host, ice.port, ice.scheme, "udp", used, True, "", Result(
        name, True, f"{ice.url}: answered from {server[0]}:{server[1]}; "
        f"it sees us as {mapped[0]}:{mapped[1]}{behind}{unused}",
        data={"url": ice.url, "mapped": f"{mapped[0]}:{mapped[1]}", "local": local}))


def _refused_credentials(username: str, now: float, from_hub: bool) -> tuple[str, str]:
    """Why TURN credentials were refused (401), from their expiry: (detail, fix); the
    detail is "" when the username says nothing (not REST credentials)."""
    expiry = turn_expiry(username)
    if expiry is not None and expiry <= now:
        if from_hub:
            return (f": they expired {span(now - expiry)} ago ({when(expiry)}), as the hub "
                    "handed them out", "the hub hands out expired TURN credentials: its "
                    "operator should renew the static --ice-username/--ice-credential, or "
                    "hand out fresh ones with --turn and --turn-secret (or the hub's clock "
                    "is wrong)")
        return (f": they expired {span(now - expiry)} ago ({when(expiry)})",
                "ice.username/ice.credential have expired: get new ones")
    valid = (f": they are not expired ({span(expiry - now)} left), so their signature is "
             "not accepted" if expiry is not None else "")
    if from_hub:
        return valid, ("the hub signs them with its --turn-secret, which must be the TURN "
                       "server's secret (coturn: static-auth-secret); or the hub's static "
                       "--ice-username/--ice-credential are wrong")
    return valid, ("ice.credential is not what the TURN server expects for ice.username "
                   "(REST credentials: signed with coturn's static-auth-secret)")


async def _check_turn(ice: IceUrl, username: str | None, credential: str | None,
                      transport: Transport, used: bool, wait: float, now: float,
                      from_hub: bool) -> Outcome:
    name = f"turn {transport}" if ice.scheme == "turn" else "turn tls"
    where = f"{ice.scheme}:{ice.host}:{ice.port} over {transport}" + \
        ("" if used else " (unused: a call takes the first TURN URL only)")

    def outcome(ok: bool, why: str, result: Result) -> Outcome:
        return Outcome("turn", ice.host, ice.port, ice.scheme, transport, used, ok, why,
                       result)

    if username is None or credential is None:
        return outcome(False, "credentials", Result(
            name, False, f"{where}: no username/credential to try",
            "TURN URLs need credentials: the hub's --turn/--turn-secret hand them out, "
            "or set ice.username and ice.credential", needed=False))
    try:
        relayed, mapped = await turn_allocation(ice, username, credential, transport, wait)
    except Exception as exc:  # aioice's TransactionFailed/-Timeout, OSError, TimeoutError
        why = _classify(exc)
        text = f"no answer in {wait:g} s" if why == "timeout" else _reason(exc)
        fixes = {
            "timeout": f"is the TURN server up, and is {transport.upper()} to port "
                       f"{ice.port} allowed here?",
            "refused": "is the TURN server running, on this port?",
        }
        fix = fixes.get(why, "")
        if why == "credentials":
            more, fix = _refused_credentials(username, now, from_hub)
            if more:
                text = f"credentials refused (401 Unauthorized){more}"
        return outcome(False, why, Result(name, False, f"{where}: {text}", fix, needed=False,
                                          data={"url": ice.url, "transport": transport}))
    return outcome(True, "", Result(
        name, True, f"{where}: relay {relayed[0]}:{relayed[1]}, "
        f"it sees us as {mapped[0]}:{mapped[1]}",
        data={"url": ice.url, "transport": transport, "relayed": f"{relayed[0]}:{relayed[1]}",
              "mapped": f"{mapped[0]}:{mapped[1]}"}))


def _urls(servers: Sequence[dict[str, Any]]) -> list[tuple[IceUrl | str, dict[str, Any]]]:
    """Each URL of ``servers`` parsed (or the text of the error: one a call cannot use),
    with its entry."""
    out: list[tuple[IceUrl | str, dict[str, Any]]] = []
    for entry in servers:
        urls = entry.get("urls")
        for url in urls if isinstance(urls, list) else [urls]:
            if isinstance(url, str):
                try:
                    out.append((check_ice_url(url), entry))
                except ValueError as exc:
                    out.append((str(exc), entry))
    return out


async def ice_checks(servers: Sequence[dict[str, Any]], relay_only: bool, wait: float, *,
                     now: float | None = None, from_hub: bool = True) -> list[Result]:
    """Check every STUN URL and every TURN server (UDP and TCP) of ``servers``, at once,
    then say what it means for a call (:func:`softphone.cli.doctor_verdict.verdict`).

    A call (aiortc) uses only the first STUN URL and the first TURN URL; the
    others are checked too, and said to be unused. ``now`` dates TURN REST
    credentials; ``from_hub``: the servers are the hub's (else the settings').
    """
    now = time.time() if now is None else now
    parsed = _urls(servers)
    # aiortc refuses a whole list with one malformed URL in it: no call can be made.
    results = [Result("ice-servers", False, bad, "fix the URL (ice.servers, or the hub's "
                      "list)") for bad, _ in parsed if isinstance(bad, str)]
    good = [(ice, entry) for ice, entry in parsed if isinstance(ice, IceUrl)]
    first_stun = next((ice for ice, _ in good if not ice.is_turn), None)
    first_turn = next((ice for ice, _ in good if ice.is_turn), None)
    jobs: list[asyncio.Future[Outcome]] = []
    seen: set[tuple[Any, ...]] = set()
    for ice, entry in good:
        if not ice.is_turn:
            if (ice.host, ice.port) not in seen:
                seen.add((ice.host, ice.port))
                jobs.append(asyncio.ensure_future(_check_stun(ice, wait, ice == first_stun)))
            continue
        username, credential = entry.get("username"), entry.get("credential")
        transports: tuple[Transport, ...] = ("tcp",) if ice.scheme == "turns" \
            else ("udp", "tcp")
        for transport in transports:
            key = (ice.scheme, ice.host, ice.port, transport, username)
            if key in seen:
                continue
            seen.add(key)
            used = first_turn is not None and (first_turn.scheme, first_turn.host,
                                               first_turn.port, first_turn.transport) == \
                (ice.scheme, ice.host, ice.port, transport)
            jobs.append(asyncio.ensure_future(_check_turn(
                ice, username, credential, transport, used, wait, now, from_hub)))
    outcomes = explain(list(await asyncio.gather(*jobs)) if jobs else [])
    results += [o.result for o in outcomes]
    first = f"{first_turn.scheme}:{first_turn.host}:{first_turn.port}" if first_turn \
        else None
    tcp_listed = first_turn is not None and any(
        (ice.scheme, ice.host, ice.port, ice.transport) ==
        (first_turn.scheme, first_turn.host, first_turn.port, "tcp") for ice, _ in good)
    results.append(verdict(outcomes, relay_only, first, tcp_listed, from_hub))
    return results
