"""Which value each setting takes, and where it came from (``softphone config``).

:func:`resolve` is a pure function of the flags given, the environment and
the parsed config file: for every option, the flag, else the environment
variable, else the file, else the default (the same rule for every option);
a secret named by a file (``--token-file``, ``SOFTPHONE_TOKEN_FILE``,
``token_file``) ranks as its layer's value. :func:`describe` /
:func:`as_json` show the result with secrets masked.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from softphone.cli.config import (
    ConfigError,
    ConfigFile,
    SecretFileError,
    check_value,
    parse_text_value,
    read_secret_file,
)
from softphone.cli.config_options import OPTIONS, Kind, Option

__all__ = ["MASK", "FlagError", "Resolved", "Settings", "Source", "as_json", "describe",
           "resolve", "shown"]

#: What ``softphone config`` shows instead of a secret.
MASK: Final = "****"


class FlagError(ConfigError):
    """A bad value on the command line (the CLI shows it as a usage error)."""


class Source(enum.StrEnum):
    """Where a setting's value came from (highest first)."""

    FLAG = "flag"
    ENV = "environment"
    FILE = "file"
    DEFAULT = "default"


@dataclass(frozen=True)
class Resolved:
    """One setting's effective value and where it came from."""

    value: Any
    source: Source
    #: The flag, variable or file:line it came from ("" for a default).
    origin: str = ""
    #: Why its secret's file could not be read (``resolve(unreadable_ok=True)``;
    #: the value is then None).
    error: str = ""


@dataclass(frozen=True)
class Settings:
    """Every option resolved: :meth:`value` for use, :func:`describe` for people."""

    resolved: Mapping[str, Resolved]
    options: tuple[Option, ...] = OPTIONS
    config: ConfigFile | None = None
    warnings: tuple[str, ...] = field(default=())

    def __getitem__(self, key: str) -> Resolved:
        return self.resolved[key]

    def value(self, key: str) -> Any:
        return self.resolved[key].value

    def unreadable(self) -> list[tuple[Option, Resolved]]:
        """The secrets whose file could not be read (only with ``unreadable_ok``)."""
        return [(o, self.resolved[o.key]) for o in self.options
                if self.resolved[o.key].error]


SecretReader = Callable[[str], tuple[str, str | None]]


def resolve(flags: Mapping[str, Any], env: Mapping[str, str], config: ConfigFile | None,
            options: Iterable[Option] = OPTIONS,
            read_secret: SecretReader = read_secret_file, *,
            unreadable_ok: bool = False, typed: Mapping[str, str] | None = None) -> Settings:
    """Each option's value: flag > environment > file > default, the same for all.

    ``flags``: only the options given on the command line, by option key (a
    secret's file as ``<key>_file``, e.g. ``"serve.secret_file"``), already
    typed as the option's kind (lists as sequences of strings). ``env``: the
    environment (``os.environ``). A secret named by a file is read with
    ``read_secret``. Raises :class:`ConfigError` for a bad environment value,
    :class:`SecretFileError` for a secret's file that cannot be read, unless
    ``unreadable_ok`` (for the commands that inspect a setup: ``config``,
    ``doctor``): that setting is then None with its :attr:`Resolved.error`.
    ``typed``: the flag as typed, by option key, where it is not the option's
    own (a boolean's negative, ``--no-auto-accept``): a flag's origin.
    """
    options = tuple(options)
    if unreadable_ok:
        read_secret = _tolerant(read_secret)
    warnings: list[str] = []
    out: dict[str, Resolved] = {}
    for option in options:
        found = (_from_flags(option, flags, read_secret, warnings, typed or {})
                 or _from_env(option, env, read_secret, warnings)
                 or _from_file(option, config, read_secret, warnings))
        out[option.key] = found or Resolved(option.default, Source.DEFAULT)
    return Settings(out, options, config, tuple(warnings))


class _Unreadable(str):
    """What a tolerant reader returns instead of a secret: why its file cannot be read."""


def _tolerant(read_secret: SecretReader) -> SecretReader:
    def read(path: str) -> tuple[str, str | None]:
        try:
            return read_secret(path)
        except SecretFileError as exc:
            return _Unreadable(str(exc)), None
    return read


def _secret_from(path: str, origin: str, source: Source, read_secret: SecretReader,
                 warnings: list[str]) -> Resolved:
    try:
        value, warning = read_secret(path)
    except SecretFileError as exc:
        raise SecretFileError(f"{origin}: {exc}") from None
    except ConfigError as exc:
        error = FlagError if source is Source.FLAG else ConfigError
        raise error(f"{origin}: {exc}") from None
    if isinstance(value, _Unreadable):
        return Resolved(None, source, f"{origin} ({path})", error=str(value))
    if warning:
        warnings.append(warning)
    return Resolved(value, source, f"{origin} ({path})")


def _both(option: Option, a: str, b: str) -> ConfigError:
    return ConfigError(f"{option.key}: use either {a} or {b}, not both")


def _from_flags(option: Option, flags: Mapping[str, Any], read_secret: SecretReader,
                warnings: list[str], typed: Mapping[str, str]) -> Resolved | None:
    has_value = option.key in flags and flags[option.key] is not None
    has_file = option.secret and flags.get(option.file_key) is not None
    if has_value and has_file:
        raise FlagError(str(_both(option, option.flag, option.file_flag)))
    if has_file:
        return _secret_from(str(flags[option.file_key]), option.file_flag, Source.FLAG,
                            read_secret, warnings)
    if not has_value:
        return None
    value = flags[option.key]
    if option.kind is Kind.LIST:
        value = tuple(value)
        if not value:  # a repeatable flag not given
            return None
    return _checked(option, check_value, value, Source.FLAG,
                    typed.get(option.key, option.flag))


def _from_env(option: Option, env: Mapping[str, str], read_secret: SecretReader,
              warnings: list[str]) -> Resolved | None:
    text = env.get(option.env)
    file_text = env.get(option.file_env) if option.secret else None
    if text and file_text:
        raise _both(option, option.env, option.file_env)
    if file_text:
        return _secret_from(file_text, option.file_env, Source.ENV, read_secret, warnings)
    if not text:  # unset or empty: as click, an empty variable is no value
        return None
    return _checked(option, parse_text_value, text, Source.ENV, option.env)


def _checked(option: Option, parse: Callable[[Option, Any], Any], raw: Any, source: Source,
             origin: str) -> Resolved:
    """``parse(option, raw)`` resolved from ``origin``; its ValueError names ``origin``
    (for a flag as a :class:`FlagError`)."""
    try:
        value = parse(option, raw)
    except ValueError as exc:
        error = FlagError if source is Source.FLAG else ConfigError
        raise error(f"{origin}: {exc}") from None
    return Resolved(_expand(option, value), source, origin)


def _from_file(option: Option, config: ConfigFile | None, read_secret: SecretReader,
               warnings: list[str]) -> Resolved | None:
    if config is None:
        return None
    if option.key in config.values:
        return Resolved(config.values[option.key], Source.FILE, config.where(option.key))
    if option.secret and option.file_key in config.values:
        return _secret_from(config.values[option.file_key], config.where(option.file_key),
                            Source.FILE, read_secret, warnings)
    return None


def _expand(option: Option, value: Any) -> Any:
    return str(Path(value).expanduser()) if option.kind is Kind.PATH else value


# ---------------------------------------------------------- showing ---


def shown(option: Option, value: Any) -> str:
    """A value as ``softphone config`` prints it (TOML-like; secrets masked)."""
    if value is None:
        return "(not set)"
    if option.secret:
        return MASK
    if option.mask is not None:
        return f'"{option.mask(value)}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def describe(settings: Settings, command: str | None = None) -> list[str]:
    """``softphone config``'s lines: each setting, its value (masked) and its source."""
    rows: list[tuple[str, str, str]] = []
    for option in settings.options:
        if command is not None and command not in option.commands:
            continue
        got = settings[option.key]
        where = got.source.value + (f": {got.origin}" if got.origin else "")
        value = "(unreadable)" if got.error else shown(option, got.value)
        rows.append((option.key, value, where + (f"; {got.error}" if got.error else "")))
    key_width = max((len(r[0]) for r in rows), default=0)
    value_width = min(max((len(r[1]) for r in rows), default=0), 40)
    return [f"{k:<{key_width}} = {v:<{value_width}}  ({w})" for k, v, w in rows]


def as_json(settings: Settings) -> dict[str, Any]:
    """The same as :func:`describe`, for ``softphone config --json``."""
    out: dict[str, Any] = {}
    for option in settings.options:
        got = settings[option.key]
        value: Any = got.value
        if value is not None and option.secret:
            value = MASK
        elif value is not None and option.mask is not None:
            value = option.mask(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[option.key] = {"value": value, "source": got.source.value, "origin": got.origin}
        if got.error:
            out[option.key]["error"] = got.error
    return out
