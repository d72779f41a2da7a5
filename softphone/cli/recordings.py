"""The --record file of each call of ``call`` and ``listen``: its template checked
at start (not at the first call), its path filled in so that a peer's id cannot
take it out of its folder, and a file an earlier call of the command recorded
to never replaced (call N gets ``FILE-N``)."""

from __future__ import annotations

import re
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Final

import click

from softphone.cli.runtime import fail

#: What a peer id may not carry into a file name as it is (our hub's ids never do).
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]+")

#: The fields of a --record template, with values to try it with at start.
RECORD_SAMPLE: Final = {"peer": "peer", "n": 1, "time": "20240101-000000"}


def check_record(record: str | None, play: str | None = None) -> None:
    """At start, not at the first call: a --record template that cannot be filled
    in, or a file that is the --play file, is a usage error (exit 2), a folder that
    cannot be written an error (exit 1)."""
    if not record:
        return
    if play and "{" not in record and Path(record).resolve() == Path(play).resolve():
        raise click.BadParameter(f"{record!r} is the --play file: recording would "
                                 "overwrite what is sent", param_hint="--record")
    if "{" in record:
        try:
            record.format(**RECORD_SAMPLE)
        except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
            why = f"no field {{{exc.args[0]}}}" if isinstance(exc, KeyError) else str(exc)
            raise click.BadParameter(f"{record!r}: {why}; the fields are {{peer}}, {{n}} "
                                     "and {time} ({{ and }} for a brace)",
                                     param_hint="--record") from exc
    folder = Path(record).parent
    if "{" in record:  # its folders are made at each call: writable if the first that is
        while "{" in str(folder) or not folder.exists():
            if folder == folder.parent:
                break
            folder = folder.parent
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        fail(f"cannot record to {record}: cannot write in {str(folder) or '.'} "
             f"({exc.strerror or exc})")


def file_safe(peer: str) -> str:
    """``peer`` as part of a path. Our hub's ids are ``A-Z a-z 0-9 . _ -``, but the
    original hub forwards any id: every other character is written ``%XX`` (its UTF-8
    bytes), so no ``/`` or ``\\`` leaves the folder and no escape reaches a name; and
    ``.`` or ``..`` (all dots) would name a folder: their dots are written ``%2E``."""
    if not peer.strip("."):
        return peer.replace(".", "%2E")
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), peer)


def record_path(record: str, peer: str, n: int, used: set[str]) -> str:
    """Call ``n``'s --record file: the template filled in (``peer`` kept in its
    folder), with ``-N`` (N: the call's number, or the next unused) before the
    extension when an earlier call of this command recorded to that file."""
    path = record.format(peer=file_safe(peer), n=n,
                         time=datetime.now().strftime("%Y%m%d-%H%M%S")) \
        if "{" in record else record
    base, k = Path(path), n
    while path in used:
        path = str(base.with_name(f"{base.stem}-{k}{base.suffix}"))
        k += 1
    return path
