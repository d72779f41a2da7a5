"""``softphone config``: the effective settings and where each came from;
``config set KEY VALUE...``, ``config unset KEY``, ``config path``.

The file, the keys and the rule (flag > environment > file > default) are in
:mod:`softphone.cli.config`; this is only the command. ``config --help``
lists every key (:func:`keys_help`); ``docs/config.md`` is the same table
(:func:`keys_markdown`; a test keeps the two in step).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable

import click
from click.shell_completion import CompletionItem

from softphone.cli.config import (
    OPTIONS,
    ConfigError,
    ConfigFileError,
    Located,
    Option,
    by_key,
    load,
    locate,
)
from softphone.cli.config_resolve import MASK, as_json, describe, shown
from softphone.cli.config_wiring import CliState, current_settings, file_header, warn
from softphone.cli.config_write import unknown_setting, write_setting
from softphone.cli.runtime import fail
from softphone.core.callstate import ExitCode

__all__ = ["config", "keys_help", "keys_markdown"]


def _table(option: Option) -> str:
    return option.key.rsplit(".", 1)[0] if "." in option.key else ""


def _default(option: Option) -> str:
    return "" if option.default in (None, ()) else shown(option, option.default)


def keys_help(options: Iterable[Option] = OPTIONS) -> str:
    """Every key, by table, with its flag and variable (``config --help``'s epilog)."""
    lines = ["\b", "Keys (the flag they stand for; its variable):"]
    table = None
    for option in options:
        if _table(option) != table:
            table = _table(option)
            lines.append(f"  [{table}]" if table else "  (top level)")
        extra = f", or {option.file_key} = FILE" if option.secret else ""
        lines.append(f"    {option.key.rsplit('.', 1)[-1]:<18} {option.flag} "
                     f"({option.env}{extra})")
    return "\n".join(lines)


def keys_markdown(options: Iterable[Option] = OPTIONS) -> str:
    """The table of keys for ``docs/config.md``."""
    rows = ["| key | flag | variable | default | commands | what |",
            "|---|---|---|---|---|---|"]
    for o in options:
        key = f"`{o.key}`" + (f" or `{o.file_key}`" if o.secret else "")
        env = f"`{o.env}`" + (f" or `{o.file_env}`" if o.secret else "")
        default = f"`{_default(o)}`" if _default(o) else ""
        rows.append(f"| {key} | `{o.flag}` | {env} | {default} | {', '.join(o.commands)} "
                    f"| {o.help.replace('|', '/')} |")
    return "\n".join(rows) + "\n"


def _complete_key(ctx: click.Context, param: click.Parameter, incomplete: str
                  ) -> list[CompletionItem]:
    keys = [*(o.key for o in OPTIONS), *(o.file_key for o in OPTIONS if o.secret)]
    return [CompletionItem(k) for k in keys if k.startswith(incomplete)]


def _located(ctx: click.Context) -> Located:
    import os

    state = ctx.find_object(CliState) or CliState()
    return locate(state.config, os.environ)


@click.group(invoke_without_command=True, epilog=keys_help())
@click.option("--json", "json_mode", is_flag=True,
              help="Print the settings as JSON: key -> value, source, origin.")
@click.pass_context
def config(ctx: click.Context, json_mode: bool) -> None:
    """Show the effective settings and where each came from (secrets masked).

    Every option that has a key (listed below) comes from, first found: its
    flag, its environment variable, the config file, its default; the others
    (--tone, --play, --record, --duration, --json, --dtmf, --max-calls, ...)
    are flags only. The file is
    --config FILE (on softphone, before the command), else SOFTPHONE_CONFIG,
    else $XDG_CONFIG_HOME/softphone/config.toml (~/.config/softphone/).
    A secret (token, TURN password, the hub's secret) may be a file instead:
    token_file = "..." (SOFTPHONE_TOKEN_FILE, --token-file).

    \b
    softphone config set server https://hub.example.org:8443
    softphone config set id alice
    softphone config set token_file ~/.config/softphone/token
    softphone config unset audio.input
    softphone --show-settings call bob     # what call would use, and why
    """
    if ctx.invoked_subcommand is not None:
        return
    state = ctx.find_object(CliState) or CliState()
    try:
        loaded, settings = current_settings(state)
    except ConfigError as exc:
        fail(str(exc), _code(exc))
    if json_mode:
        click.echo(json.dumps({"config_file": str(loaded.located.path),
                               "config_file_exists": loaded.file is not None,
                               "settings": as_json(settings)}, indent=2))
        return
    click.echo(file_header(loaded))
    for line in describe(settings):
        click.echo(line)


@config.command("set", context_settings={"ignore_unknown_options": True})  # (a value -3)
@click.argument("key", shell_complete=_complete_key)
@click.argument("values", nargs=-1, required=True)
@click.pass_context
def set_(ctx: click.Context, key: str, values: tuple[str, ...]) -> None:
    """Set KEY in the config file (made if missing, readable only by you).

    A list takes several VALUES (softphone config set ice.servers stun:a:3478
    turn:b:3478). For a secret, '-' reads the value from stdin instead of the
    command line (softphone token --as alice | softphone config set token -).
    """
    option = by_key().get(key)
    if values == ("-",) and option is not None and option.secret:
        values = (sys.stdin.readline().strip(),)
    try:
        written = write_setting(_located(ctx).path, key, values)
    except ConfigError as exc:
        fail(str(exc), _code(exc))
    value = MASK if option is not None and option.secret else (
        shown(option, written.value) if option is not None else f'"{written.value}"')
    made = " (made it, readable only by you)" if written.created else ""
    click.echo(f"{key} = {value} in {written.path}{made}")
    if option is not None and option.secret and written.path.is_symlink():
        # (a dotfiles setup: the secret lands in the file the link points to)
        click.echo(f"softphone: note: {written.path} is a link: the secret is written to "
                   f"{written.path.resolve()} (keep it out of shared dotfiles; or set "
                   f"{option.file_key} to a file of its own)", err=True)
    warn(written.warnings)


@config.command()
@click.argument("key", shell_complete=_complete_key)
@click.pass_context
def unset(ctx: click.Context, key: str) -> None:
    """Remove KEY from the config file (its default, or the environment, then applies)."""
    located = _located(ctx)
    if key not in by_key() and key not in {o.file_key for o in OPTIONS if o.secret}:
        fail(str(unknown_setting(key)), ExitCode.USAGE)
    try:
        loaded = load(located)
        if loaded.file is None or key not in loaded.file.values:
            click.echo(f"{key} is not set in {located.path}")
            return
        write_setting(located.path, key, None)
    except ConfigError as exc:
        fail(str(exc), _code(exc))
    click.echo(f"{key} removed from {located.path}")


@config.command()
@click.pass_context
def path(ctx: click.Context) -> None:
    """Print the config file's path (which may not exist yet)."""
    click.echo(str(_located(ctx).path))


def _code(exc: ConfigError) -> ExitCode:
    """A file that cannot be read or written is exit 1, a bad value 2 (README)."""
    return ExitCode.ERROR if isinstance(exc, ConfigFileError) else ExitCode.USAGE
