"""``softphone doctor``'s STUN and TURN checks, and its verdict on the media path.

Real requests, with aioice's STUN messages and TURN client (the ones a call
uses): a binding request to each ``stun:`` URL over UDP (the address it saw
is ours as the internet sees it), and an allocation at each TURN server
with the call's credentials over UDP and over TCP (``turns:``: TLS over
TCP), deleted at once. Then one line naming what it means for a call: a
relay that works, UDP blocked here (only TURN over TCP answers), TURN
credentials refused, or no way beyond this network.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from softphone.cli.doctor import Result

__all__ = ["IceUrl", "ice_checks", "parse_ice_url", "stun_binding", "turn_allocation"]

Transport = Literal["udp", "tcp"]


@dataclass(frozen=True)
class IceUrl:
    """A ``stun:``/``stuns:``/``turn:``/``turns:`` URL taken apart."""

    url: str
    scheme: str
    host: str
    port: int
    #: The transport a call uses with it (``?transport=``; ``turns:`` is TLS over TCP).
    transport: Transport

    @property
    def is_turn(self) -> bool:
        return self.scheme in ("turn", "turns")


def parse_ice_url(url: str) -> IceUrl:
    """``turn:host:3478?transport=tcp`` -> its parts (ValueError if it is not one)."""
    scheme, _, rest = url.partition(":")
    if scheme not in ("stun", "stuns", "turn", "turns") or not rest:
        raise ValueError(f"{url!r} is not a stun: or turn: URL")
    rest, _, query = rest.partition("?")
    params = dict(p.partition("=")[::2] for p in query.split("&") if p)
    if rest.startswith("["):  # [IPv6]:port
        host, _, tail = rest[1:].partition("]")
        port_text = tail.removeprefix(":")
    else:
        host, _, port_text = rest.partition(":")
    default = 5349 if scheme in ("stuns", "turns") else 3478
    try:
        port = int(port_text) if port_text else default
    except ValueError:
        raise ValueError(f"{url!r}: bad port {port_text!r}") from None
    if not host or not 0 < port < 65536:
        raise ValueError(f"{url!r}: no host, or a bad port")
    transport = params.get("transport", "tcp" if scheme == "turns" else "udp")
    if transport not in ("udp", "tcp"):
        raise ValueError(f"{url!r}: transport must be udp or tcp")
    return IceUrl(url, scheme, host, port, transport)  # type: ignore[arg-type]


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


@dataclass(frozen=True)
class _Outcome:
    kind: Literal["stun", "turn"]
    transport: Transport
    #: A call would use this one (its URL's transport).
    used: bool
    ok: bool
    #: "", "timeout", "refused", "credentials" or "error".
    why: str
    result: Result


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


async def _check_stun(ice: IceUrl, wait: float, used: bool = True) -> _Outcome:
    name = "stun"
    if ice.scheme == "stuns":
        return _Outcome("stun", "tcp", used, True, "", Result(
            name, True, f"{ice.url}: not checked (STUN over TLS)", needed=False))
    unused = "" if used else " (unused: a call takes the first STUN URL only)"
    try:
        mapped, server = await stun_binding(ice.host, ice.port, wait)
    except (TimeoutError, OSError, ValueError, Exception) as exc:  # aioice raises its own
        why = _classify(exc)
        text = f"no answer over UDP in {wait:g} s" if why == "timeout" else _reason(exc)
        return _Outcome("stun", "udp", used, False, why, Result(
            name, False, f"{ice.url}: {text}{unused}",
            "is the STUN server up, and is UDP to it allowed here? (a firewall dropping "
            "UDP shows as no answer)", needed=False))
    return _Outcome("stun", "udp", used, True, "", Result(
        name, True, f"{ice.url}: answered from {server[0]}:{server[1]}; "
        f"it sees us as {mapped[0]}:{mapped[1]}{unused}",
        data={"url": ice.url, "mapped": f"{mapped[0]}:{mapped[1]}"}))


async def _check_turn(ice: IceUrl, username: str | None, credential: str | None,
                      transport: Transport, used: bool, wait: float) -> _Outcome:
    name = f"turn {transport}" if ice.scheme == "turn" else "turn tls"
    where = f"{ice.scheme}:{ice.host}:{ice.port} over {transport}" + \
        ("" if used else " (unused: a call takes the first TURN URL only)")
    if username is None or credential is None:
        return _Outcome("turn", transport, used, False, "credentials", Result(
            name, False, f"{where}: no username/credential to try",
            "TURN URLs need credentials: the hub's --turn/--turn-secret hand them out, "
            "or set ice.username and ice.credential", needed=False))
    try:
        relayed, mapped = await turn_allocation(ice, username, credential, transport, wait)
    except Exception as exc:  # aioice's TransactionFailed/-Timeout, OSError, TimeoutError
        why = _classify(exc)
        text = f"no answer in {wait:g} s" if why == "timeout" else _reason(exc)
        fixes = {
            "credentials": "the hub's --turn-secret must be coturn's static-auth-secret "
                           "(or ice.username/ice.credential are wrong or expired)",
            "timeout": f"is the TURN server up, and is {transport.upper()} to port "
                       f"{ice.port} allowed here?",
            "refused": "is the TURN server running, on this port?",
        }
        return _Outcome("turn", transport, used, False, why, Result(
            name, False, f"{where}: {text}", fixes.get(why, ""), needed=False))
    return _Outcome("turn", transport, used, True, "", Result(
        name, True, f"{where}: relay {relayed[0]}:{relayed[1]}, "
        f"it sees us as {mapped[0]}:{mapped[1]}",
        data={"url": ice.url, "transport": transport, "relayed": f"{relayed[0]}:{relayed[1]}",
              "mapped": f"{mapped[0]}:{mapped[1]}"}))


def _verdict(outcomes: Sequence[_Outcome], relay_only: bool, first_turn: IceUrl | None
             ) -> Result:
    """What the STUN/TURN answers mean for a call's media."""
    name = "media path"
    stun = [o for o in outcomes if o.kind == "stun"]
    turns = [o for o in outcomes if o.kind == "turn"]
    relay_used = sorted({o.transport for o in turns if o.ok and o.used})
    relay_any = sorted({o.transport for o in turns if o.ok})
    udp_failed = [o for o in outcomes if o.transport == "udp" and not o.ok
                  and o.why in ("timeout", "refused")]
    udp_all_failed = bool(udp_failed) and all(
        not o.ok for o in outcomes if o.transport == "udp" and o.why != "credentials")
    if relay_used:
        direct = " and directly through NAT (STUN answered)" if any(o.ok for o in stun) else ""
        return Result(name, True, f"calls can go through the TURN relay "
                      f"({'/'.join(relay_used)}){direct}")
    first = f"{first_turn.scheme}:{first_turn.host}:{first_turn.port}" if first_turn \
        else "turn:HOST:PORT"
    if relay_any and udp_all_failed:
        return Result(name, False, "UDP seems blocked here: STUN and TURN over UDP do not "
                      "answer, TURN over TCP does, and a call uses the first TURN URL, "
                      "over UDP", f"use TURN over TCP: put \"{first}?transport=tcp\" "
                      "first (ice.servers with ice.username/ice.credential, or ask the "
                      "hub's operator to hand it out first)")
    if relay_any:
        return Result(name, False, f"the TURN server answers over {'/'.join(relay_any)}, "
                      "but not over the transport of the first TURN URL, the one a call "
                      f"uses", f"put \"{first}?transport={relay_any[0]}\" first",
                      needed=relay_only)
    if any(o.why == "credentials" for o in turns):
        return Result(name, False, "the TURN server refused the credentials: calls that "
                      "need a relay (symmetric NAT, UDP blocked) will fail",
                      "see the turn lines above", needed=relay_only)
    if turns:
        return Result(name, False, "no TURN server answered: calls that need a relay will "
                      "fail", "see the turn lines above", needed=relay_only)
    if relay_only:
        return Result(name, False, "relay-only (ice.relay) but no TURN server is configured",
                      "add a turn: URL with credentials, or drop --relay")
    if any(o.ok for o in stun):
        return Result(name, True, "calls go directly through NAT (STUN answered); there "
                      "is no TURN relay for networks that need one")
    if stun:
        return Result(name, False, "no STUN server answered: only calls within this "
                      "network will connect", "see the stun lines above", needed=False)
    return Result(name, True, "no STUN/TURN servers: calls connect within one network only")


def _urls(servers: Sequence[dict[str, Any]]) -> list[tuple[IceUrl | str, dict[str, Any]]]:
    """Each URL of ``servers`` parsed (or the text of the error), with its entry."""
    out: list[tuple[IceUrl | str, dict[str, Any]]] = []
    for entry in servers:
        urls = entry.get("urls")
        for url in urls if isinstance(urls, list) else [urls]:
            if isinstance(url, str):
                try:
                    out.append((parse_ice_url(url), entry))
                except ValueError as exc:
                    out.append((str(exc), entry))
    return out


async def ice_checks(servers: Sequence[dict[str, Any]], relay_only: bool,
                     wait: float) -> list[Result]:
    """Check every STUN URL and every TURN server (UDP and TCP) of ``servers``, at once.

    A call (aiortc) uses only the first STUN URL and the first TURN URL; the
    others are checked too, and said to be unused.
    """
    parsed = _urls(servers)
    results = [Result("ice-servers", False, bad, "fix the URL (ice.servers, or the hub's "
                      "list)", needed=False) for bad, _ in parsed if isinstance(bad, str)]
    good = [(ice, entry) for ice, entry in parsed if isinstance(ice, IceUrl)]
    first_stun = next((ice for ice, _ in good if not ice.is_turn), None)
    first_turn = next((ice for ice, _ in good if ice.is_turn), None)
    jobs: list[asyncio.Future[_Outcome]] = []
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
                ice, username, credential, transport, used, wait)))
    outcomes = list(await asyncio.gather(*jobs)) if jobs else []
    results += [o.result for o in outcomes]
    results.append(_verdict(outcomes, relay_only, first_turn))
    return results
