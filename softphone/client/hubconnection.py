"""What a phone needs of its hub connection, and how it reads the hub's refusals.

:class:`HubConnection` is the interface a :class:`~softphone.client.phone.Phone`
is given (a :class:`~softphone.client.signaling.HubClient` by default, fakes in
the adapter tests). :class:`RefusalWatch` is the plain decision of whether a
closed connection was a refusal (stop, say why) or a loss (reconnect): fed
the hub's errors as they come and the close code at the end, no I/O.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final, Protocol

from softphone.client.hubaddress import HubAddress
from softphone.core.protocol import ErrorCode, HubError, Message

#: Hub errors that come with closing the connection for good (close code 1008).
REFUSALS: Final = frozenset({ErrorCode.UNAUTHORIZED, ErrorCode.REPLACED})
#: A hub with too many connections from our address closes with 1013 ("try again
#: later"): a refusal when it turns away the phone's first connection (nothing ever
#: worked: say why, do not retry); later, while reconnecting, the phone keeps trying.
#: A hub full in total (the same code, "the hub is full") is tried again always.
FULL, FULL_CLOSE = ErrorCode.TOO_MANY_CONNECTIONS, 1013
FULL_FOR_US: Final = "too many connections from this address"  # (the hub's words)
#: Hub errors said otherwise (a refusal, an outcome): logged at info, not warning.
SAID_ELSEWHERE: Final = frozenset({*REFUSALS, ErrorCode.TOO_MANY_CONNECTIONS,
                                   ErrorCode.OFFLINE})
#: The close code of a refusal for good (policy violation).
POLICY_CLOSE: Final = 1008


class HubConnection(Protocol):
    """What a phone needs of its hub (:class:`~softphone.client.signaling.HubClient`)."""

    address: HubAddress

    @property
    def close_code(self) -> int | None: ...

    async def connect(self) -> None: ...

    async def ice_servers(self) -> list[dict[str, Any]]: ...

    async def send(self, message: Message) -> None: ...

    def messages(self) -> AsyncIterator[Message | HubError]: ...

    async def close(self) -> None: ...


class RefusalWatch:
    """One hub connection at a time: :meth:`error` for each hub error on it,
    :meth:`closed` with its close code at its end."""

    def __init__(self) -> None:
        self.first = True  # the phone's first connection (none before it worked)
        self._last: HubError | None = None

    def error(self, error: HubError) -> None:
        if error.code in REFUSALS or (self.first and error.code == FULL
                                      and error.message == FULL_FOR_US):
            self._last = error

    def closed(self, code: int | None) -> HubError | None:
        """The refusal this connection ended with (None: it was lost, try again);
        the next connection is watched afresh."""
        last, self._last = self._last, None
        self.first = False
        if last is not None and (code == POLICY_CLOSE
                                 or (last.code == FULL and code == FULL_CLOSE)):
            return last
        return None
