"""How a call ended (:class:`Outcome`) and every exit code of the command (:class:`ExitCode`)."""

from __future__ import annotations

import enum
from typing import Final


class Outcome(enum.StrEnum):
    """How a call ended. Each has its own exit code (:meth:`ExitCode.for_outcome`)."""

    COMPLETED = "completed"  # media connected, then someone hung up
    REJECTED = "rejected"  # the callee declined (or we declined, as callee)
    BUSY = "busy"  # the callee is in another call
    NO_ANSWER = "no-answer"  # ring timeout; the callee's prompt was withdrawn
    OFFLINE = "offline"  # no client with that id on the hub
    HUB_UNREACHABLE = "hub-unreachable"  # could not reach or lost the hub before media
    MEDIA_FAILED = "media-failed"  # ICE/DTLS failed or the setup timed out
    MISSED = "missed"  # callee: the caller hung up before we answered
    CANCELLED = "cancelled"  # hung up before media connected (either side)
    MEDIA_LOST = "media-lost"  # media died mid-call and no restart brought it back


class ExitCode(enum.IntEnum):
    """Every exit code of the ``softphone`` command, in one place.

    A call outcome's code has the outcome's name (:meth:`for_outcome`); the
    others are the command's own. README's "Exit codes" table lists the same.
    """

    COMPLETED = 0
    ERROR = 1  # not a call outcome: a bad file, a port in use, an internal error
    USAGE = 2  # click's code for a bad option or value
    REJECTED = 3
    BUSY = 4
    NO_ANSWER = 5
    OFFLINE = 6
    HUB_UNREACHABLE = 7
    MEDIA_FAILED = 8
    MISSED = 9
    CANCELLED = 10
    REFUSED = 11  # the hub refused us for good: bad token, or replaced by a newer login
    REDIS_UNAVAILABLE = 12  # serve --redis: Redis cannot be reached at start
    DOCTOR_FAILED = 13  # softphone doctor: a check a call needs failed
    MEDIA_LOST = 14
    INTERRUPTED = 130  # Ctrl-C while not in a call (like a shell: 128 + SIGINT)

    @classmethod
    def for_outcome(cls, outcome: Outcome) -> ExitCode:
        return cls[outcome.name]

    @property
    def meaning(self) -> str:
        """One line for ``--help``."""
        return _EXIT_MEANINGS[self]


_EXIT_MEANINGS: Final[dict[ExitCode, str]] = {
    ExitCode.COMPLETED: "audio connected, then someone hung up",
    ExitCode.ERROR: "a file that cannot be read or written, a port in use",
    ExitCode.USAGE: "a bad option or value",
    ExitCode.REJECTED: "the callee declined",
    ExitCode.BUSY: "the callee is in another call",
    ExitCode.NO_ANSWER: "nobody answered within --ring-timeout",
    ExitCode.OFFLINE: "nobody with that id is connected to the hub",
    ExitCode.HUB_UNREACHABLE: "could not reach the hub, or lost it before audio",
    ExitCode.MEDIA_FAILED: "ICE/DTLS did not connect within --setup-timeout",
    ExitCode.MISSED: "(callee) the caller hung up before we answered",
    ExitCode.CANCELLED: "hung up before audio connected",
    ExitCode.REFUSED: "bad --token, replaced by a newer connection, or too many "
                      "connections from this address (when first connecting)",
    ExitCode.REDIS_UNAVAILABLE: "serve --redis: Redis not reachable at start",
    ExitCode.DOCTOR_FAILED: "doctor: a check a call needs failed (no call possible)",
    ExitCode.MEDIA_LOST: "audio died mid-call and did not come back within --give-up",
    ExitCode.INTERRUPTED: "Ctrl-C while waiting for calls (listen --once), or before a "
                          "command got going",
}

#: The exit code of each call outcome (``softphone call`` / ``listen --once``);
#: kept for compatibility, see :meth:`ExitCode.for_outcome`.
EXIT_CODES: Final[dict[Outcome, ExitCode]] = {o: ExitCode.for_outcome(o) for o in Outcome}
