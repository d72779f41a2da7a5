"""Every place where softphone relies on aiortc's or aioice's internals.

aiortc offers no public seam for these, so they are replaced here, in one
module, against the pinned versions in ``pyproject.toml``.
``tests/test_aiortc_seams.py`` fails loudly if the internals change.

1. ICE gathering timeout. aioice waits up to 5 s for a STUN/TURN server to
   answer while gathering (inside ``setLocalDescription``), so a dead STUN
   server (any public one, on a machine without internet) made each side of
   a call stall 5 s. We cap it at :data:`gather_timeout` (1 s by default).
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any, Final

import aioice
import aioice.ice
import aiortc

log = logging.getLogger(__name__)

#: The versions the seams below were written and tested against.
AIORTC_VERSION: Final = "1.16.0"
AIOICE_VERSION: Final = "0.13.0"

#: Seconds aioice may wait for STUN/TURN servers while gathering candidates.
gather_timeout: float = 1.0

_installed = False
_original_get_component_candidates: Any = None


class SeamMismatch(RuntimeError):
    """aiortc/aioice changed in a way these seams do not know."""


def check() -> None:
    """Raise :class:`SeamMismatch` if the internals we rely on are not as expected."""
    if aiortc.__version__ != AIORTC_VERSION or aioice.__version__ != AIOICE_VERSION:
        raise SeamMismatch(
            f"softphone is tested with aiortc {AIORTC_VERSION} / aioice {AIOICE_VERSION}, "
            f"found {aiortc.__version__} / {aioice.__version__}"
        )
    target = _original_get_component_candidates or \
        aioice.ice.Connection.get_component_candidates
    params = inspect.signature(target).parameters
    if list(params) != ["self", "component", "addresses", "timeout"] or \
            params["timeout"].default != 5:
        raise SeamMismatch("aioice Connection.get_component_candidates changed signature")


def install() -> None:
    """Apply the seams (idempotent). Called when :mod:`softphone.rtc` is imported."""
    global _installed, _original_get_component_candidates
    if _installed:
        return
    check()
    original = aioice.ice.Connection.get_component_candidates
    _original_get_component_candidates = original

    @functools.wraps(original)
    async def get_component_candidates(self: Any, component: int, addresses: list[str],
                                       timeout: int = 5) -> Any:  # noqa: ASYNC109
        return await original(self, component=component, addresses=addresses,
                              timeout=min(timeout, gather_timeout))  # type: ignore[arg-type]

    aioice.ice.Connection.get_component_candidates = get_component_candidates  # type: ignore[method-assign]
    _installed = True
    log.debug("aiortc seams installed (gather timeout %.1fs)", gather_timeout)
