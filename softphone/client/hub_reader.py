"""How a :class:`~softphone.client.phone.Phone` reads its hub connection (its reading
task): messages go to its line; when the connection ends, a refusal, the loss (told to
``on_hub_state``) and the reconnecting."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from softphone.client.hubcheck import FIRST_BACKOFF
from softphone.client.hubconnection import KEPT_AFTER, POLICY_CLOSE, RefusalWatch
from softphone.client.signaling import HubUnreachable
from softphone.core import callstate as cs
from softphone.core.protocol import ErrorCode, HubError

if TYPE_CHECKING:
    from softphone.client.phone import Phone

# (the phone's lines, under the name they have always had)
log = logging.getLogger("softphone.client.phone")


async def read_hub(phone: Phone) -> None:
    """Read ``phone``'s hub connection until the phone closes, or loses the hub for good."""
    delay = FIRST_BACKOFF
    refusals = RefusalWatch()
    keeping: asyncio.TimerHandle | None = None  # (a connection after the hub was full)

    def kept() -> None:
        nonlocal delay, keeping
        if keeping is not None:  # (a message came first: the timer is not needed)
            keeping.cancel()
        keeping = None
        if refusals.kept():
            delay = FIRST_BACKOFF
            tell_hub_state(phone, True, "reconnected to the hub")

    while True:
        try:
            async for item in phone.hub.messages():
                if refusals.works(item):  # (not the hub's "full": that keeps the backoff)
                    delay = FIRST_BACKOFF
                    if refusals.unconfirmed:
                        kept()
                if isinstance(item, HubError) and item.code == ErrorCode.REPLACED:
                    phone._hub_problem(item)
                phone._run(phone.line.route(item, phone.loop_time))
        finally:
            if keeping is not None:
                keeping.cancel()
                keeping = None
        phone.hub_connected.clear()
        phone.hub_check.changed(False)
        if phone._closing:
            return
        code = phone.hub.close_code
        refusal = refusals.closed(code)
        if refusal is not None:
            phone.refusal = refusal
            phone.refused.set()
            phone._shut.set()
        ends = not phone.reconnect or code == POLICY_CLOSE or phone.refused.is_set()
        if phone.refused.is_set():
            # (a refusal is said by whoever waits on ``refused``: the CLI prints it)
            log.info("lost the hub connection (code %s)", code)
        else:
            said, text = refusals.loss(code, not ends)
            if said:
                tell_hub_state(phone, False, text)
            else:
                log.info("%s in about %g s", text, delay)
        phone._run(phone.line.hub_lost(phone.loop_time))
        if ends:
            phone._gone = f"lost the hub connection (code {code}) and does not reconnect"
            phone._shut.set()
            if refusal is not None:  # (our id is someone else's now, or not ours)
                for call in phone.calls:  # no message of theirs can reach us: end them
                    phone._feed(call, cs.HubGone(str(refusal.code)))
            return
        while not phone._closing:
            await phone.hub_check.pause(delay)  # (at most 1 s while media restarts)
            delay = phone.hub_check.next_backoff(delay)
            try:
                await phone.hub_check.connect()
            except HubUnreachable as exc:
                log.info("reconnect failed: %s", exc)
                continue
            phone.hub_connected.set()
            phone.hub_check.changed(True)
            if refusals.opened():
                tell_hub_state(phone, True, "reconnected to the hub")
            else:  # said once the hub keeps it (it turned the last ones away: full)
                log.info("connected to the hub again; it was full: is it kept?")
                keeping = asyncio.get_running_loop().call_later(KEPT_AFTER, kept)
            break

def tell_hub_state(phone: Phone, connected: bool, description: str) -> None:
    """The hub connection was lost or is back: tell :attr:`on_hub_state` (then the
    log says it at info only), else log it (a loss as a warning)."""
    hook = phone.on_hub_state
    quiet = hook is not None or connected
    log.log(logging.INFO if quiet else logging.WARNING, "%s", description)
    if hook is not None:
        try:
            hook(connected, description)
        except Exception:
            log.exception("on_hub_state failed")
