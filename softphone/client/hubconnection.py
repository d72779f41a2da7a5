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


#: A connection made again while the hub was turning us away (full) is taken as
#: kept once it is open this long (ours refuses at once, with the handshake's answer)
#: or a message other than the refusal comes on it: then "reconnected" is said.
KEPT_AFTER: Final = 1.0


class RefusalWatch:
    """One hub connection at a time: :meth:`error` for each hub error on it (or
    :meth:`works` for each message), :meth:`closed` with its close code at its end.

    It also follows a hub that turns the phone away because it is full (in total,
    or for our address once a connection worked: tried again): the first time is
    said (:meth:`loss`), the next ones only logged; the backoff is not reset by
    the hub's refusal (:meth:`works`), so it keeps growing while the hub is full;
    and "reconnected" waits until a connection is kept (:meth:`opened`,
    :meth:`kept`), not said for each one the hub takes and closes at once."""

    def __init__(self) -> None:
        self.first = True  # the phone's first connection (none before it worked)
        self._last: HubError | None = None
        self._full = False  # the hub said it is full on this connection
        #: Connections the hub turned away (full), one after the other (0: the last
        #: one was not turned away).
        self.turned_away = 0
        #: This connection was made after some were turned away: "reconnected" is
        #: said when it is kept (:meth:`kept`).
        self.unconfirmed = False

    def error(self, error: HubError) -> None:
        if error.code == FULL:
            self._full = True
        if error.code in REFUSALS or (self.first and error.code == FULL
                                      and error.message == FULL_FOR_US):
            self._last = error

    def works(self, item: object) -> bool:
        """A message came on the connection: True if it shows the connection works
        (the backoff is back to its first pause), False for the hub's "full"."""
        if isinstance(item, HubError):
            self.error(item)
            if item.code == FULL:
                return False
        return True

    def opened(self) -> bool:
        """A reconnect attempt's handshake went through: True to say "reconnected"
        now; False while the hub has been turning us away (see :meth:`kept`)."""
        self.unconfirmed = self.turned_away > 0
        return not self.unconfirmed

    def kept(self) -> bool:
        """The connection is kept (open :data:`KEPT_AFTER`, or a message that
        :meth:`works` came): True if "reconnected" is to be said now (once)."""
        if not self.unconfirmed or self._full:
            return False
        self.unconfirmed = False
        self.turned_away = 0
        return True

    def closed(self, code: int | None) -> HubError | None:
        """The refusal this connection ended with (None: it was lost, try again);
        the next connection is watched afresh."""
        last, self._last = self._last, None
        full, self._full = self._full and code == FULL_CLOSE, False
        self.first = False
        self.unconfirmed = False
        if last is not None and (code == POLICY_CLOSE
                                 or (last.code == FULL and code == FULL_CLOSE)):
            return last
        self.turned_away = self.turned_away + 1 if full else 0
        return None

    def loss(self, code: int | None, reconnecting: bool) -> tuple[bool, str]:
        """What to say of a connection that ended without a refusal (after
        :meth:`closed`): (said, text): ``said`` False when only for the log (the
        hub is still full, as already said)."""
        if self.turned_away == 1 and reconnecting:
            return True, (f"the hub is full (code {code}): trying again, "
                          "less often while it stays full")
        if self.turned_away > 1 and reconnecting:
            return False, f"the hub is still full (code {code}): trying again"
        return True, (f"lost the hub connection (code {code}), "
                      + ("reconnecting" if reconnecting else "not reconnecting"))
