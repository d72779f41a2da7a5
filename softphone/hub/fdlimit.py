"""The hub's open-file limit: one descriptor per connection, so raise it where allowed.

A process starts with the soft ``RLIMIT_NOFILE`` its parent gave it (often
1,024), while the hard limit is usually far higher (often 524,288 under
systemd); a process may raise its own soft limit up to the hard one. Beyond
that only root (or the service's ``LimitNOFILE=``) can help, and Linux also
caps every process at ``/proc/sys/fs/nr_open``.

:func:`raise_nofile` does what is allowed and says, in one line, what it
could not; it never raises. ``resource`` is passed in only by tests.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Final

try:
    import resource as _resource
except ImportError:  # pragma: no cover - not on Windows
    _resource = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: Open files a hub needs besides one per connection (its listening socket, Redis,
#: log files, HTTP requests being answered).
HEADROOM: Final = 256
#: What a hub with no connection limit asks for.
UNLIMITED: Final = 1 << 20

#: Linux's per-process ceiling for any descriptor limit.
NR_OPEN: Final = Path("/proc/sys/fs/nr_open")

_HOW: Final = ("raise the hard limit (ulimit -Hn as root, LimitNOFILE= in a systemd unit, "
               "nofile in /etc/security/limits.conf)")


def _nr_open() -> int | None:
    try:
        return int(NR_OPEN.read_text().strip())
    except (OSError, ValueError):
        return None


def raise_nofile(wanted: int, *, resource: ModuleType | None = None
                 ) -> tuple[int, str | None]:
    """Raise the soft open-file limit to ``min(wanted, hard limit)``.

    Returns the limit now in force and ``None``, or a one-line message when the
    system capped or refused it (the limit is then what it could be raised to,
    possibly unchanged). A soft limit already at or above ``wanted`` is left alone.
    """
    res = _resource if resource is None else resource
    if res is None:
        return wanted, None  # no such limit on this platform
    soft, hard = res.getrlimit(res.RLIMIT_NOFILE)
    infinity = res.RLIM_INFINITY
    if soft == infinity or soft >= wanted:
        return (wanted if soft == infinity else soft), None
    target = wanted if hard == infinity else min(wanted, hard)
    try:
        res.setrlimit(res.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        ceiling = _nr_open() if hard == infinity else None
        if ceiling is not None and soft < ceiling < target:
            try:  # an unlimited hard limit is still capped by the kernel's nr_open
                res.setrlimit(res.RLIMIT_NOFILE, (ceiling, hard))
            except (ValueError, OSError):
                pass
            else:
                return ceiling, (f"open files: limited to {ceiling} (the kernel's "
                                 f"fs.nr_open), wanted {wanted}")
        return soft, (f"open files: cannot raise the limit from {soft} to {target} "
                      f"({exc}); {_HOW}")
    if target < wanted:
        return target, (f"open files: limited to {target} by the hard limit, wanted "
                        f"{wanted}; {_HOW}")
    return target, None


def raise_for_connections(max_connections: int, *, pending: int = 0,
                          resource: ModuleType | None = None) -> int:
    """Raise the limit for a hub of ``max_connections`` (0: unlimited), one descriptor
    each, and ``pending`` more (connections whose request head may wait:
    softphone.hub.pending), and say in one line (logged) what the system refused.
    Returns the limit."""
    wanted = max_connections + pending + HEADROOM if max_connections else UNLIMITED
    limit, why = raise_nofile(wanted, resource=resource)
    if why is None:
        log.info("open files: limit %d", limit)
        return limit
    holds = max(0, limit - HEADROOM - pending)
    if max_connections and limit >= max_connections:  # short of headroom only
        log.info("%s; about %d connections fit", why, holds)
    else:
        log.warning("%s; the hub holds about %d connections, not %s", why, holds,
                    f"--max-connections {max_connections}" if max_connections
                    else "unlimited")
    return limit
