"""The config file, and where each setting comes from.

``softphone`` reads one TOML file (``--config FILE``, else ``$SOFTPHONE_CONFIG``,
else ``$XDG_CONFIG_HOME/softphone/config.toml``, by default
``~/.config/softphone/config.toml``) holding what a user would otherwise type
again and again::

    server = "https://hub.example.org"
    id = "alice"
    token_file = "~/.config/softphone/token"

    [ice]
    servers = ["stun:turn.example.org:3478"]

    [audio]
    input = "USB"
    bitrate = 64

    [serve]
    host = "0.0.0.0"
    secret_file = "/etc/softphone/secret"

Every setting is an :class:`Option` of :data:`OPTIONS`: its key in the file,
its flag, its environment variable. Each comes from, first found: the flag,
the environment, the file, the default (the same rule for every option). A
secret (``token``, the hub's ``secret``, TURN passwords) may instead name a
file holding it: ``token_file`` in the file, ``SOFTPHONE_TOKEN_FILE`` in the
environment, ``--token-file`` as a flag (same layer, same rank).

Parsing and checking are pure functions of text (:func:`parse`);
:func:`locate`, :func:`load` and :func:`read_secret_file` are the thin I/O
around them. Which value wins, and showing it (``softphone config``):
:mod:`softphone.cli.config_resolve`; writing the file (``softphone config
set``): :mod:`softphone.cli.config_write`; the settings themselves:
:mod:`softphone.cli.config_options`.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from softphone.cli.config_options import OPTIONS, Kind, Option

__all__ = [
    "OPTIONS",
    "ConfigError",
    "ConfigFile",
    "ConfigFileError",
    "Kind",
    "Loaded",
    "Located",
    "Option",
    "SecretFileError",
    "by_key",
    "check_value",
    "find_option",
    "key_lines",
    "load",
    "locate",
    "parse",
    "parse_text_value",
    "permission_warning",
    "read_secret_file",
    "suggest",
]


class ConfigError(ValueError):
    """A bad config file, environment variable or value: one line naming where and which."""


class ConfigFileError(ConfigError):
    """The config file cannot be read or written (missing where named, a folder, no
    permission): a file, not a bad value, so exit 1 (README's exit codes)."""


class SecretFileError(ConfigError):
    """A secret's file (``token_file``, ``--secret-file`` ...) that cannot be read: not
    a bad value but a file, so exit 1 (README's exit codes), as any file an option names."""


def by_key(options: Iterable[Option] = OPTIONS) -> dict[str, Option]:
    """Options by their key in the file (``"ice.servers"``)."""
    return {o.key: o for o in options}


def find_option(command: str, flag: str, options: Iterable[Option] = OPTIONS) -> Option | None:
    """The option behind ``flag`` (``"--ice-server"``) of ``command`` (``"serve"``), if any."""
    for option in options:
        if command in option.commands and flag in (option.flag, option.file_flag):
            return option
    return None


# ------------------------------------------------------------ values ---


#: How a message names the type of a value TOML gave (bool first: a bool is an int).
_TYPE_NAMES: Final = ((bool, "a boolean"), (int, "an integer"), (float, "a number"),
                      (str, "a string"), (list, "a list"), (dict, "a table"))


def _type_name(value: Any) -> str:
    return next((name for kind, name in _TYPE_NAMES if isinstance(value, kind)),
                type(value).__name__)


def check_value(option: Option, value: Any) -> Any:
    """``value`` (as TOML gives it) as the option's type, checked; ValueError says why."""
    kind = option.kind
    if kind is Kind.BOOL:
        ok = isinstance(value, bool)
    elif kind is Kind.INT:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is Kind.FLOAT:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok:
            value = float(value)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError("must be a finite number")
    elif kind is Kind.LIST:
        ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        if ok:
            value = tuple(value)
    elif option.index and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, str(value)  # a device index: as --input 3 gives it
    else:
        ok = isinstance(value, str)
    if not ok:
        what = "a string or an integer (an index)" if option.index else kind.describe()
        raise ValueError(f"expected {what}, got {_type_name(value)}")
    if option.check is not None:
        option.check(value)
    return value


_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})


def parse_text_value(option: Option, text: str) -> Any:
    """A value typed as text (environment variable, ``config set``) as the option's type.

    Lists are separated by whitespace (as click splits a repeatable option's
    environment variable); booleans are 1/true/yes/on or 0/false/no/off.
    """
    kind = option.kind
    raw: Any
    if kind is Kind.BOOL:
        word = text.strip().lower()
        if word not in _TRUE | _FALSE:
            raise ValueError(f"{text!r} is not a boolean (use true or false)")
        raw = word in _TRUE
    elif kind is Kind.INT:
        try:
            raw = int(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
    elif kind is Kind.FLOAT:
        try:
            raw = float(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
    elif kind is Kind.LIST:
        raw = text.split()
    else:
        raw = text
    return check_value(option, raw)


# -------------------------------------------------------------- file ---


@dataclass(frozen=True)
class ConfigFile:
    """A parsed, checked config file."""

    path: Path
    #: Option key (or a secret's ``<key>_file``) -> checked value; paths made absolute.
    values: Mapping[str, Any]
    #: The same keys -> their line in the file (1-based).
    lines: Mapping[str, int]

    def where(self, key: str) -> str:
        return f"{self.path}:{self.lines.get(key, 0)}"

    @property
    def secrets(self) -> list[str]:
        """Keys of the secrets written in the file itself (not ``*_file``)."""
        known = by_key()
        return [k for k in self.values if k in known and known[k].secret]


TOML_HEADER = re.compile(r"\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
TOML_KEY = re.compile(r"\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')"
                  r"(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*=")


def dotted_key(text: str) -> str:
    parts = re.findall(r"[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'", text)
    return ".".join(p.strip("\"'") for p in parts)


def key_lines(text: str) -> dict[str, int]:
    """Each table and key of a TOML text -> its first line (1-based), by scanning lines.

    Good enough to point at a line for an error: multi-line strings and arrays
    are not parsed (a line inside one that looks like ``key =`` is rare).
    """
    found: dict[str, int] = {}
    table = ""
    in_multiline: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if in_multiline is not None:
            if line.count(in_multiline) % 2 == 1:
                in_multiline = None
            continue
        header = TOML_HEADER.match(line)
        if header and not line.lstrip().startswith("#"):
            table = dotted_key(header.group(1))
            found.setdefault(table, number)
            continue
        key = TOML_KEY.match(line)
        if key:
            full = f"{table}.{dotted_key(key.group(1))}" if table else dotted_key(key.group(1))
            found.setdefault(full, number)
            rest = line[key.end():]
            for quote in ('"""', "'''"):
                if rest.count(quote) % 2 == 1:
                    in_multiline = quote
    return found


_TOML_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")
_TOML_END = re.compile(r"\(at end of document\)")


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for name, value in data.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            yield key, value
            yield from _flatten(value, key + ".")
        else:
            yield key, value


def suggest(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse(text: str, path: str | Path, options: Iterable[Option] = OPTIONS) -> ConfigFile:
    """Parse and check a config file's text; :class:`ConfigError` names file, line and key."""
    path = Path(path)
    options = tuple(options)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        where = _TOML_POSITION.search(message)
        if where:
            line, column = int(where.group(1)), where.group(2)
        else:  # "(at end of document)": on the file's last line
            line, column = max(1, len(text.splitlines())), "at the end"
        message = _TOML_END.sub("", _TOML_POSITION.sub("", message)).strip().rstrip(".")
        at_line = [k for k, n in key_lines(text).items() if n == line]
        about = f"{at_line[-1]}: " if at_line else ""
        place = column if not column.isdigit() else f"column {column}"
        raise ConfigError(f"{path}:{line}: {about}not valid TOML: {message} ({place})"
                          ) from None
    lines = key_lines(text)
    known = {o.key: o for o in options}
    file_keys = {o.file_key: o for o in options if o.secret}
    tables = {k.rsplit(".", 1)[0] for k in [*known, *file_keys] if "." in k}
    values: dict[str, Any] = {}
    for key, value in _flatten(data):
        at = f"{path}:{lines.get(key, lines.get(key.rsplit('.', 1)[0], '?'))}"
        if isinstance(value, dict):
            if key in tables:
                continue
            if key in known or key in file_keys:
                raise ConfigError(f"{at}: {key}: expected "
                                  f"{(known.get(key) or file_keys[key]).kind.describe()}, "
                                  "got a table")
            raise ConfigError(f"{at}: unknown table [{key}]"
                              f"{suggest(key, sorted(tables))}")
        if key in tables:
            raise ConfigError(f"{at}: {key}: expected a table ([{key}]), "
                              f"got {_type_name(value)}")
        option = known.get(key)
        if option is None and key in file_keys:
            if not isinstance(value, str) or not value:
                got = "an empty string" if value == "" else _type_name(value)
                raise ConfigError(f"{at}: {key}: expected a file name, got {got}")
            if _nested(data, file_keys[key].key) is not None:
                raise ConfigError(f"{at}: {key}: use either {file_keys[key].key} or "
                                  f"{key}, not both")
            values[key] = str(_file_path(value, path))
            continue
        if option is None:
            raise ConfigError(f"{at}: unknown key {key!r}"
                              f"{suggest(key, [*known, *file_keys])}")
        try:
            checked = check_value(option, value)
        except ValueError as exc:
            raise ConfigError(f"{at}: {key}: {exc}") from None
        if option.kind is Kind.PATH:
            checked = str(_file_path(checked, path))
        values[key] = checked
    return ConfigFile(path, values, {k: lines.get(k, 0) for k in values})


def _nested(data: Mapping[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _file_path(value: str, config_path: Path) -> Path:
    """A path written in the config file: ``~`` expanded, relative to the file's folder."""
    expanded = Path(value).expanduser()
    return expanded if expanded.is_absolute() else config_path.parent / expanded


# ---------------------------------------------------------- the file (I/O) ---


@dataclass(frozen=True)
class Located:
    """Which config file to read, and why that one."""

    path: Path
    #: "--config", "SOFTPHONE_CONFIG", "XDG_CONFIG_HOME" or "default".
    reason: str

    @property
    def explicit(self) -> bool:
        """Asked for by name: a missing file is then an error."""
        return self.reason in ("--config", "SOFTPHONE_CONFIG")


def locate(flag: str | None, env: Mapping[str, str], home: str | None = None) -> Located:
    """The config file for ``--config`` (``flag``), the environment and the home folder."""
    if flag:
        return Located(Path(flag).expanduser(), "--config")
    if env.get("SOFTPHONE_CONFIG"):
        return Located(Path(env["SOFTPHONE_CONFIG"]).expanduser(), "SOFTPHONE_CONFIG")
    xdg = env.get("XDG_CONFIG_HOME", "")
    if xdg and os.path.isabs(xdg):  # the XDG spec: a relative value is ignored
        return Located(Path(xdg) / "softphone" / "config.toml", "XDG_CONFIG_HOME")
    base = Path(home) if home is not None else Path(env.get("HOME") or Path.home())
    return Located(base / ".config" / "softphone" / "config.toml", "default")


def permission_warning(path: Path, mode: int, what: str) -> str | None:
    """A warning if a file holding ``what`` (a token, ...) may be read by others."""
    if mode & 0o077 == 0:
        return None
    return (f"{path} holds {what} and other users can read it "
            f"(mode {stat.S_IMODE(mode):04o}): chmod 600 {path}")


@dataclass(frozen=True)
class Loaded:
    """A config file read from disk (None: there is none) and warnings about it."""

    located: Located
    file: ConfigFile | None
    warnings: tuple[str, ...] = ()


def load(located: Located, options: Iterable[Option] = OPTIONS) -> Loaded:
    """Read and check the file ``located`` names; a missing default file is no file."""
    path = located.path
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except FileNotFoundError:
        if located.explicit:
            raise ConfigFileError(f"{path}: no such config file (from {located.reason})") from None
        return Loaded(located, None)
    except IsADirectoryError:
        raise ConfigFileError(f"{path}: is a folder, not a config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    parsed = parse(text, path, options)
    warnings: list[str] = []
    secrets = parsed.secrets
    if secrets:
        what = "a token" if secrets == ["token"] else "secrets (" + ", ".join(secrets) + ")"
        warning = permission_warning(path, mode, what)
        if warning:
            warnings.append(warning)
    return Loaded(located, parsed, tuple(warnings))


def read_secret_file(path: str) -> tuple[str, str | None]:
    """The secret in ``path`` (stripped) and a warning if others may read it."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8").strip()
        mode = file.stat().st_mode
    except UnicodeDecodeError:
        raise SecretFileError(f"{file}: not UTF-8 text") from None
    except OSError as exc:
        raise SecretFileError(f"cannot read {file}: {exc.strerror or exc}") from None
    if not text:
        raise SecretFileError(f"{file} is empty")
    return text, permission_warning(file, mode, "a secret")
