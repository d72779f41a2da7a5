"""softphone's version: the one place it is written (``pyproject.toml`` reads it).

In the core so that every layer may import it, the hub included (its
``/healthz``, ``/metrics`` and start-up line show it).
"""

from __future__ import annotations

__version__ = "0.1.0"
