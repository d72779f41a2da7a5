"""How a :class:`~softphone.client.phone.Phone` reads its hub connection (its reading
task): messages go to its line; when the connection ends, a refusal, the loss (told to
``on_hub_state``) and the reconnecting."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from softphone.client.hubconnection import POLICY_CLOSE, RefusalWatch
from softphone.client.signaling import HubUnreachable
from softphone.core import callstate as cs
from softphone.core.protocol import ErrorCode, HubError

if TYPE_CHECKING:
    from softphone.client.phone import Phone

# (the phone's lines, under the name they have always had)
log = logging.getLogger("softphone.client.phone")


async def read_hub(phone: Phone) -> None:
    """Read ``phone``'s hub connection until the phone closes, or loses the hub for good."""
    delay = 0.5
    refusals = RefusalWatch()
    while True:
        async for item in phone.hub.messages():
            delay = 0.5
            if isinstance(item, HubError) and item.code == ErrorCode.REPLACED:
                phone._hub_problem(item)
            if isinstance(item, HubError):
                refusals.error(item)
            phone._run(phone.line.route(item, phone.loop_time))
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
            tell_hub_state(phone, False, f"lost the hub connection (code {code}), "
                           + ("not reconnecting" if ends else "reconnecting"))
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
            tell_hub_state(phone, True, "reconnected to the hub")
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
