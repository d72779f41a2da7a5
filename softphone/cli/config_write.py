"""``softphone config set KEY VALUE`` / ``unset KEY``: edit the config file in place.

A line edit, not a rewrite: the line holding the key (or the lines of a
multi-line value) is replaced and everything else, comments included, stays
as it was; a new key goes at the end of its table (a new table at the end of
the file). Values are written by a small TOML writer for the types the
settings have (string, integer, number, boolean, list of strings), so no
TOML-writing dependency is needed; the result is parsed again and checked
(:func:`softphone.cli.config.parse`) before it replaces the file.
"""

from __future__ import annotations

import os
import tempfile
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softphone.cli.config import (
    TOML_HEADER,
    TOML_KEY,
    ConfigError,
    ConfigFileError,
    by_key,
    dotted_key,
    parse,
    parse_text_value,
    permission_warning,
    suggest,
)
from softphone.cli.config_options import OPTIONS, Kind, Option

__all__ = ["Written", "set_in_text", "toml_value", "unknown_setting", "unset_in_text",
           "write_setting"]

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n",
            "\f": "\\f", "\r": "\\r"}


def toml_value(value: Any) -> str:
    """``value`` (str, int, float, bool, or a list/tuple of them) as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("cannot write a non-finite number")
        return repr(value)
    if isinstance(value, str):
        out = []
        for ch in value:
            if ch in _ESCAPES:
                out.append(_ESCAPES[ch])
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:
                out.append(f"\\u{ord(ch):04X}")
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


@dataclass(frozen=True)
class _Entry:
    key: str  # full dotted key
    table: str
    start: int  # first line index
    end: int  # last line index (multi-line values)
    prefix: str  # the line up to and including '='


def _scan(lines: list[str]) -> tuple[list[_Entry], list[tuple[str, int]]]:
    """The key/value entries (with their line spans) and table headers of a TOML text."""
    entries: list[_Entry] = []
    headers: list[tuple[str, int]] = []
    table = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        header = TOML_HEADER.match(line)
        if header:
            table = dotted_key(header.group(1))
            headers.append((table, i))
            i += 1
            continue
        key = TOML_KEY.match(line)
        if key is None:
            i += 1
            continue
        end = i
        while end < len(lines):  # the value may span lines: up to where it parses
            try:
                tomllib.loads("".join(lines[i:end + 1]))
                break
            except tomllib.TOMLDecodeError:
                end += 1
        end = min(end, len(lines) - 1)
        local = dotted_key(key.group(1))
        entries.append(_Entry(f"{table}.{local}" if table else local, table, i, end,
                              line[:key.end()]))
        i = end + 1
    return entries, headers


def _comment(line: str) -> str:
    """The trailing ``# comment`` of a line (outside strings) and the blanks before it."""
    quote: str | None = None
    escaped = False
    for n, ch in enumerate(line):
        if quote is not None:
            if escaped:
                escaped = False
            elif ch == "\\" and quote == '"':
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in ('"', "'"):
            quote = ch
        elif ch == "#":
            start = len(line[:n].rstrip())
            return line[start:].rstrip("\r\n")
    return ""


def _ending(lines: list[str]) -> str:
    return "\r\n" if lines and lines[0].endswith("\r\n") else "\n"


def set_in_text(text: str, key: str, value: Any) -> str:
    """``text`` with ``key`` (dotted) set to ``value``; comments and order kept."""
    lines = text.splitlines(keepends=True)
    nl = _ending(lines)
    if lines and not lines[-1].endswith(("\n", "\r")):
        lines[-1] += nl
    entries, headers = _scan(lines)
    rendered = toml_value(value)
    for entry in entries:
        if entry.key == key:
            comment = _comment(lines[entry.end])
            new = f"{entry.prefix} {rendered}{comment}{nl}"
            lines[entry.start:entry.end + 1] = [new]
            return _checked("".join(lines), key, value)
    table, _, local = key.rpartition(".")
    top = [e for e in entries if e.table == ""]
    first_header = headers[0][1] if headers else len(lines)
    if table:
        in_table = [e for e in entries if e.table == table]
        header = next((i for t, i in headers if t == table), None)
        dotted = [e for e in top if e.key.startswith(table + ".")]
        if header is None and dotted:  # the table is made of dotted keys: add one more
            at = dotted[-1].end + 1
            lines[at:at] = [f"{key} = {rendered}{nl}"]
        elif header is None:
            if lines and lines[-1].strip():
                lines.append(nl)
            lines += [f"[{table}]{nl}", f"{local} = {rendered}{nl}"]
        else:
            at = in_table[-1].end + 1 if in_table else header + 1
            lines[at:at] = [f"{local} = {rendered}{nl}"]
    else:
        at = top[-1].end + 1 if top else first_header
        added = [f"{key} = {rendered}{nl}"]
        if not top and headers:
            added.append(nl)
        lines[at:at] = added
    return _checked("".join(lines), key, value)


def unset_in_text(text: str, key: str) -> str:
    """``text`` without ``key``'s line(s) (unchanged if it is not there)."""
    lines = text.splitlines(keepends=True)
    entries, _ = _scan(lines)
    for entry in entries:
        if entry.key == key:
            del lines[entry.start:entry.end + 1]
            return "".join(lines)
    return text


def _checked(text: str, key: str, value: Any) -> str:
    """``text`` if it parses and holds ``value`` at ``key``, else ConfigError."""
    try:
        node: Any = tomllib.loads(text)
        for part in key.split("."):
            node = node[part]
    except (tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot set {key} in this file by editing it ({exc}); "
                          "edit it by hand") from None
    expected = list(value) if isinstance(value, tuple) else value
    if node != expected:
        raise ConfigError(f"cannot set {key} in this file by editing it; edit it by hand")
    return text


@dataclass(frozen=True)
class Written:
    """What ``config set`` / ``config unset`` did."""

    path: Path
    key: str
    #: The value written (None: removed).
    value: Any
    created: bool
    warnings: tuple[str, ...] = ()


def _typed(option: Option | None, key: str, args: Sequence[str]) -> Any:
    """The value ``config set KEY ARGS...`` asks for, checked."""
    if option is None:  # a secret's file: a file name
        if len(args) != 1 or not args[0]:
            raise ConfigError(f"{key}: give one file name")
        return str(Path(args[0]).expanduser().absolute())
    if option.kind is Kind.LIST:
        text = " ".join(args)
    elif len(args) != 1:
        raise ConfigError(f"{key}: give one value (a list is only for list settings)")
    else:
        text = args[0]
    try:
        value = parse_text_value(option, text)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    if option.kind is Kind.PATH:
        value = str(Path(value).expanduser().absolute())
    return value


def unknown_setting(key: str, options: Iterable[Option] = OPTIONS) -> ConfigError:
    """The error for a key that is no setting, with the config file parser's
    suggestion (``unknown setting 'audio.bitrat' (did you mean 'audio.bitrate'?)``)."""
    options = tuple(options)
    keys = [*(o.key for o in options), *(o.file_key for o in options if o.secret)]
    return ConfigError(f"unknown setting {key!r}"
                       f"{suggest(key, keys) or ' (softphone config lists them)'}")


def write_setting(path: Path, key: str, args: Sequence[str] | None,
                  options: Iterable[Option] = OPTIONS) -> Written:
    """Set ``key`` to ``args`` (None: remove it) in the file at ``path``, creating it.

    A new file (and its folder) is made readable by its owner only, as it may
    hold a token. The file is replaced atomically, keeping its mode.
    """
    options = tuple(options)
    known = by_key(options)
    files = {o.file_key: o for o in options if o.secret}
    if key not in known and key not in files:
        raise unknown_setting(key, options)
    try:
        text = path.read_text(encoding="utf-8")
        mode: int | None = path.stat().st_mode
    except FileNotFoundError:
        text, mode = "", None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    parse(text, path, options)  # a broken file is reported, not edited
    if args is None:
        new = unset_in_text(text, key)
        value = None
    else:
        value = _typed(known.get(key), key, args)
        other = files[key].key if key in files else (
            known[key].file_key if known[key].secret else None)
        if other is not None:
            text = unset_in_text(text, other)
        new = set_in_text(text, key, value)
    parse(new, path, options)
    _replace(path, new, mode)
    warnings: list[str] = []
    option = known.get(key)
    if value is not None and option is not None and option.secret and mode is not None:
        warning = permission_warning(path, mode, "a secret")
        if warning:
            warnings.append(warning)
    return Written(path, key, value, mode is None, tuple(warnings))


def _replace(path: Path, text: str, mode: int | None) -> None:
    """Write ``text`` to the file at ``path`` atomically (a temporary file beside it,
    renamed onto it). A symbolic link (a dotfiles setup) is written through: the
    file it points to is replaced, and the link stays a link."""
    try:
        target = path.resolve()
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".toml", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
                out.write(text)
            os.chmod(tmp, 0o600 if mode is None else mode & 0o7777)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except RuntimeError as exc:  # (a loop of symbolic links, on Python 3.11/3.12)
        raise ConfigFileError(f"{path}: cannot write it: {exc}") from None
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot write it: {exc.strerror or exc}") from None
