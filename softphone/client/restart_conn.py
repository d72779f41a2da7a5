"""One peer connection of a restarting call, as :class:`~softphone.client.restart_link.RestartLink`
keeps it: its generation, its media operations one after the other, and the
verification code the ``media-restart`` event carries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from softphone._tasks import spawn
from softphone.core.sas import FingerprintError, sas_from_sdp
from softphone.media import pathcheck
from softphone.media.handover import Generation

if TYPE_CHECKING:
    from softphone.client.call import MediaLink

log = logging.getLogger(__name__)


@dataclass(eq=False)
class RestartConn:
    """One peer connection of the call, by generation."""

    generation: int
    session: MediaLink
    #: Our offer's SDP (sent again when our offer won a glare).
    offer: str | None = None
    reason: str = ""
    closed: bool = False
    seen: int = 0  # packets received at the last sample
    #: Whether the peer's packets come from the selected pair's address (when current).
    watch: pathcheck.RemoteAddressWatch | None = None
    #: Its media operations, one after the other.
    chain: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def share(self) -> Generation | None:
        """Its share of the call's audio (None: a media link that cannot say, a fake)."""
        share = getattr(self.session, "generation", None)
        return share if isinstance(share, Generation) else None

    def then(self, op: Callable[[], Coroutine[Any, Any, None]],
             failed: Callable[[str], None]) -> None:
        """Run ``op`` after the connection's earlier operations (not once it is closed);
        ``failed(reason)`` if it raises."""
        before = self.chain

        async def run() -> None:
            if before is not None:
                await asyncio.wait({before})
            if self.closed:
                return
            try:
                await op()
            except Exception as exc:
                log.warning("restart %d: %s", self.generation, exc,
                            exc_info=log.isEnabledFor(logging.DEBUG))
                failed(f"media-error: {exc}"[:120])

        self.chain = spawn(run(), name=f"restart-{self.generation}")


async def verification_code(session: MediaLink) -> str | None:
    """The verification code (:mod:`softphone.core.sas`) of ``session``'s descriptions.

    A call's connections share its first DTLS certificate
    (:func:`softphone.media.aiortc_seams.use_certificate`), so a restarted call's
    code is the one the users may have compared; a different one means something
    in between (a hub bridging two connections) changed the fingerprints.
    None: a description is missing or has no usable fingerprint (logged).
    """
    local, remote = session.descriptions()
    if local is None or remote is None:
        return None
    try:
        return str(await asyncio.to_thread(sas_from_sdp, local, remote))
    except FingerprintError as exc:
        log.warning("no verification code for the restarted media: %s", exc)
        return None
