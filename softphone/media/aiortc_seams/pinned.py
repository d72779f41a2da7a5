"""The aiortc and aioice versions the seams were written against, and the error
raised when those libraries (or the internals a seam relies on) are not as expected.

Every other module of :mod:`softphone.media.aiortc_seams` checks its own
internals and raises :class:`SeamMismatch`; :func:`check_versions` is the
first of those checks.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Final

import aioice
import aiortc

#: The versions the seams were written and tested against (pinned in pyproject.toml).
AIORTC_VERSION: Final = "1.16.0"
AIOICE_VERSION: Final = "0.13.0"


class SeamMismatch(RuntimeError):
    """aiortc/aioice changed in a way these seams do not know."""


@functools.cache
def getsource(obj: Any) -> str:
    """``inspect.getsource(obj)``, read once a process: the seams' checks read the
    same aiortc and aioice classes several times (half of their ~0.2 s)."""
    return inspect.getsource(obj)


def check_versions() -> None:
    """Raise :class:`SeamMismatch` unless aiortc and aioice are the pinned versions."""
    if aiortc.__version__ != AIORTC_VERSION or aioice.__version__ != AIOICE_VERSION:
        raise SeamMismatch(
            f"softphone is tested with aiortc {AIORTC_VERSION} / aioice {AIOICE_VERSION}, "
            f"found {aiortc.__version__} / {aioice.__version__}"
        )
