"""The config file, wired into every command: values for the options not typed.

:func:`configured` wraps a click command (``softphone.cli.main`` registers
only wrapped commands). Before the command's own code and its typed option
groups (:mod:`softphone.cli.options`) run, the wrapper

1. finds and reads the config file (``--config FILE`` on the group, else
   ``SOFTPHONE_CONFIG``, else ``$XDG_CONFIG_HOME/softphone/config.toml``);
2. takes the options typed on the command line (click's
   ``ParameterSource.COMMANDLINE``) as the flag layer, and resolves each of
   the command's settings: flag > environment > file > default, the same
   rule for every option (:func:`softphone.cli.config_resolve.resolve`);
3. puts each value that came from the environment or the file in place of
   click's default, reads the secrets given as files (``--token-file``,
   ``SOFTPHONE_SECRET_FILE``, ``token_file = ...``) and drops those options,
   then checks the options the command needs (``--as``), which the file
   may have supplied.

A bad file, variable or secret file is one line (``softphone: FILE:LINE: KEY:
...``) and exit 2 (a bad flag: a click usage error, exit 2); warnings (a
token that others can read) go to stderr. With
``softphone --show-settings COMMAND ...`` a command prints the settings it
would run with, and where each came from (secrets masked), instead of running
(``--show-settings-json``: also the values its code would get, by parameter).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shlex
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

import click
from click.core import ParameterSource

from softphone.cli.config import (
    OPTIONS,
    ConfigError,
    ConfigFileError,
    Kind,
    Loaded,
    Option,
    SecretFileError,
    find_option,
    load,
    locate,
)
from softphone.cli.config_resolve import (
    MASK,
    FlagError,
    Settings,
    Source,
    as_json,
    describe,
    resolve,
)
from softphone.cli.runtime import fail
from softphone.core.callstate import ExitCode

__all__ = ["Binding", "CliState", "bindings", "configure", "configured", "current_settings",
           "file_header", "named_device", "settings_of", "warn"]

ShowMode = Literal["text", "json"]
#: Where :func:`configure` leaves the command's settings (click's ``ctx.meta``).
_SETTINGS_META = "softphone.settings"


@dataclass(frozen=True)
class CliState:
    """The group's own options, for every command (click's ``ctx.obj``)."""

    #: ``--config FILE`` (None: SOFTPHONE_CONFIG, else the XDG default).
    config: str | None = None
    #: ``--show-settings``: print the command's settings instead of running it.
    show_settings: ShowMode | None = None


@dataclass(frozen=True)
class Binding:
    """One setting and the click parameters of a command that carry it."""

    option: Option
    #: ``--server``, ``--as`` ...
    param: click.Parameter
    #: ``--token-file`` ... (secrets only, where the command has one).
    file_param: click.Parameter | None = None


def _opts(param: click.Parameter) -> list[str]:
    return [*param.opts, *param.secondary_opts]


def bindings(command: click.Command, name: str,
             options: Iterable[Option] = OPTIONS) -> list[Binding]:
    """The settings of ``command`` (called ``name``) bound to its parameters.

    A setting listed for a command that has no such flag is left out
    (``tests/cli/test_config.py`` checks that there is none).
    """
    by_flag = {opt: p for p in command.params for opt in _opts(p)}
    out: list[Binding] = []
    for option in options:
        if name not in option.commands or option.flag not in by_flag:
            continue
        file_param = by_flag.get(option.file_flag) if option.secret else None
        out.append(Binding(option, by_flag[option.flag], file_param))
    return out


def warn(lines: Iterable[str]) -> None:
    for line in dict.fromkeys(lines):
        click.echo(f"softphone: warning: {line}", err=True)


def _typed(ctx: click.Context, param: click.Parameter) -> bool:
    assert param.name is not None
    return ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE


def _flags(ctx: click.Context, bound: Iterable[Binding],
           params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The flag layer: only what was typed, by setting key (a secret's file as
    ``*_file``), and the flags as typed where one is not the setting's own flag."""
    flags: dict[str, Any] = {}
    names: dict[str, str] = {}
    for b in bound:
        if _typed(ctx, b.param):
            value = flags[b.option.key] = params[b.param.name or ""]
            name = _flag_typed(b.param, value)
            if name != b.option.flag:
                names[b.option.key] = name
        if b.file_param is not None and _typed(ctx, b.file_param):
            flags[b.option.file_key] = params[b.file_param.name or ""]
    return flags, names


def _flag_typed(param: click.Parameter, value: Any) -> str:
    """The flag that gave ``param`` ``value``: a boolean's ``--no-`` form when off."""
    if isinstance(param, click.Option) and param.is_bool_flag and param.secondary_opts:
        return param.opts[0] if value else param.secondary_opts[0]
    return param.opts[0]


def _shown_arg(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return shlex.quote(str(value))


def _other_flags(ctx: click.Context, command: click.Command, bound: Iterable[Binding],
                 params: Mapping[str, Any]) -> list[str]:
    """The options typed that no setting stands for (``--tone 440``), with the values
    the command gets (``--show-settings`` shows them after the settings)."""
    carried = {p for b in bound for p in (b.param, b.file_param) if p is not None}
    out: list[str] = []
    for param in command.params:
        if (not isinstance(param, click.Option) or param in carried
                or param.name not in params or not _typed(ctx, param)):
            continue
        value = params[param.name]
        flag = _flag_typed(param, value)
        if param.is_flag:
            out.append(flag)
        elif param.count:
            out.append(" ".join([flag] * int(value)))
        elif param.multiple or (param.nargs != 1 and isinstance(value, tuple)):
            items = value if param.multiple else (value,)
            out += [f"{flag} {' '.join(_shown_arg(v) for v in _as_tuple(item))}"
                    for item in items]
        else:
            out.append(f"{flag} {_shown_arg(value)}")
    return out


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, tuple | list) else (value,)


def _click_value(option: Option, value: Any) -> Any:
    """A resolved value as click would have given it (a repeatable option: a tuple)."""
    return tuple(value) if option.kind is Kind.LIST and value is not None else value


def file_header(loaded: Loaded) -> str:
    """Which config file, and why that one (a comment line for ``softphone config``)."""
    located = loaded.located
    state = "" if loaded.file is not None else ", not there"
    return f"# config file: {located.path} (from {located.reason}{state})"


def _arguments(bound: Iterable[Binding], params: Mapping[str, Any]) -> dict[str, Any]:
    """The values the command's code gets, by parameter (secrets masked; for JSON)."""
    options = {b.param.name: b.option for b in bound}
    out: dict[str, Any] = {}
    for name, value in params.items():
        option = options.get(name)
        if value is not None and option is not None and option.secret:
            value = MASK
        elif value is not None and option is not None and option.mask is not None:
            value = option.mask(value)
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


def _show(settings: Settings, loaded: Loaded, name: str, mode: ShowMode,
          arguments: dict[str, Any], others: list[str]) -> None:
    if mode == "json":
        click.echo(json.dumps({"command": name, "config_file": str(loaded.located.path),
                               "config_file_exists": loaded.file is not None,
                               "settings": as_json(settings), "arguments": arguments},
                              indent=2))
        return
    click.echo(file_header(loaded))
    for line in describe(settings):
        click.echo(line)
    if others:
        click.echo(f"other options given: {', '.join(others)}")


def _load(state: CliState, env: Mapping[str, str]) -> Loaded:
    loaded = load(locate(state.config, env))
    warn(loaded.warnings)
    return loaded


def current_settings(state: CliState, env: Mapping[str, str] | None = None,
                     options: Iterable[Option] = OPTIONS) -> tuple[Loaded, Settings]:
    """The config file and every setting from the environment and the file (no flags).

    Raises :class:`ConfigError` (one line) for a bad file or variable; a secret
    whose file cannot be read is kept, marked (:attr:`Resolved.error`), to be shown.
    """
    env = os.environ if env is None else env
    loaded = _load(state, env)
    settings = resolve({}, env, loaded.file, tuple(options), unreadable_ok=True)
    warn(settings.warnings)
    return loaded, settings


def configure(ctx: click.Context, command: click.Command,
              params: MutableMapping[str, Any], *, unreadable_ok: bool = False) -> Settings:
    """Fill ``params`` (the command's, as click parsed them) from the environment and
    the config file, in place; the settings they came from.

    Raises :class:`ConfigError` for a bad file, variable or secret file
    (:class:`SecretFileError` for one that cannot be read, unless
    ``unreadable_ok``: that setting is then unset and marked), and click's
    MissingParameter for a needed option that nothing supplied.
    """
    name = ctx.info_name or command.name or ""
    state = ctx.find_object(CliState) or CliState()
    bound = bindings(command, name)
    loaded = _load(state, os.environ)
    showing = state.show_settings is not None  # (an unreadable secret file: shown, as config does)
    flags, typed = _flags(ctx, bound, params)
    settings = resolve(flags, os.environ, loaded.file, tuple(b.option for b in bound),
                       unreadable_ok=unreadable_ok or showing, typed=typed)
    warn(settings.warnings)
    ctx.meta[_SETTINGS_META] = settings
    for b in bound:
        got = settings[b.option.key]
        if got.source is not Source.DEFAULT and not _typed(ctx, b.param):
            params[b.param.name or ""] = _click_value(b.option, got.value)
    for param in command.params:
        if getattr(param, "secret_file", False):
            params.pop(param.name or "", None)
    if state.show_settings is not None:
        others = _other_flags(ctx, command, bound, params)
        _show(settings, loaded, name, state.show_settings, _arguments(bound, params), others)
        ctx.exit(0)
    for param in command.params:
        if getattr(param, "needed", False) and params.get(param.name or "") is None:
            raise click.MissingParameter(_set_it_once(bound, param), ctx=ctx, param=param)
    return settings


def settings_of(ctx: click.Context | None) -> Settings | None:
    """The settings :func:`configure` resolved for the command running in ``ctx``."""
    while ctx is not None:
        got = ctx.meta.get(_SETTINGS_META)
        if isinstance(got, Settings):
            return got
        ctx = ctx.parent
    return None


def named_device(kind: str, spec: str, settings: Settings | None) -> str:
    """Where the device ``spec`` came from, as the user gave it: ``--input '7'``,
    ``SOFTPHONE_INPUT='7'`` or ``FILE:LINE: audio.input '7'`` (a config file's
    errors name the file, line and key)."""
    got = settings[f"audio.{kind}"] if settings is not None else None
    if got is None or got.source is Source.FLAG or not got.origin:
        return f"--{kind} {spec!r}"
    if got.source is Source.ENV:
        return f"{got.origin}={spec!r}"
    return f"{got.origin}: audio.{kind} {spec!r}"


def _set_it_once(bound: Iterable[Binding], param: click.Parameter) -> str | None:
    """How to give a needed option once and for all (the line after click's own)."""
    option = next((b.option for b in bound if b.param is param), None)
    if option is None:
        return None
    if option.secret:
        return (f"Give it, or {option.file_flag} FILE, or once: softphone config set "
                f"{option.file_key} FILE")
    return f"Give it, or set it once: softphone config set {option.key} VALUE"


def _with_negative_flag(param: click.Parameter, name: str) -> click.Parameter:
    """A boolean flag the config file can set gets its ``--no-`` form, so that the
    command line can turn it off again (``--auto-accept`` -> ``--no-auto-accept``)."""
    if not isinstance(param, click.Option) or not param.is_bool_flag or param.secondary_opts:
        return param
    option = find_option(name, param.opts[0])
    if option is None or option.kind is not Kind.BOOL:
        return param
    negative = copy.copy(param)
    negative.secondary_opts = ["--no-" + param.opts[0].lstrip("-")]
    return negative


def configured(command: click.Command, *, pass_settings: bool = False,
               unreadable_ok: bool = False) -> click.Command:
    """A copy of ``command`` that takes what was not typed from the environment and
    the config file (:func:`configure`); with ``pass_settings`` its callback also
    gets the resolved :class:`Settings` as ``settings``. A secret's file that
    cannot be read is exit 1 (as any file an option names), or with
    ``unreadable_ok`` left to the command (``doctor``: ``Settings.unreadable``)."""
    name = command.name
    inner = command.callback
    assert name is not None and inner is not None
    wrapped = copy.copy(command)
    wrapped.params = [_with_negative_flag(p, name) for p in command.params]

    @functools.wraps(inner)
    def callback(**params: Any) -> Any:
        ctx = click.get_current_context()
        try:
            settings = configure(ctx, wrapped, params, unreadable_ok=unreadable_ok)
        except (SecretFileError, ConfigFileError) as exc:  # (a file: exit 1)
            fail(str(exc), ExitCode.ERROR)
        except FlagError as exc:
            raise click.UsageError(str(exc), ctx) from None
        except ConfigError as exc:
            fail(str(exc), ExitCode.USAGE)
        if pass_settings:
            params["settings"] = settings
        return inner(**params)

    wrapped.callback = callback
    return wrapped
