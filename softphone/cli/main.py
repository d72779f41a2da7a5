"""The ``softphone`` command line (click): the group and its commands.

Commands: ``serve`` and ``token`` (:mod:`.serve`), ``call`` and ``listen``
(:mod:`.calls`), ``devices``, ``demo`` and ``doctor`` (:mod:`.checks`),
``config`` (:mod:`.config_command`) and ``completion`` (:mod:`.completion`).
Their options come in typed groups (:mod:`.options`); call and listen share
one phone set-up (:mod:`.phone_setup`); output, failing and Ctrl-C are in
:mod:`.runtime`.

The group registers copies of the commands that fill what was not typed
from the environment and the config file (:func:`.config_wiring.configured`;
``--config FILE`` / ``SOFTPHONE_CONFIG``): flag > environment > file >
default for every option.
Human-readable lines go to stdout, or to stderr with ``--json`` (stdout is
then JSON lines only). Each call outcome has its own exit code
(:class:`softphone.core.callstate.ExitCode`; see ``softphone call --help``).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Final

import click

from softphone import __version__
from softphone.cli.calls import call, listen
from softphone.cli.checks import demo, devices, doctor
from softphone.cli.completion import completion
from softphone.cli.config_command import config
from softphone.cli.config_wiring import CliState, configured
from softphone.cli.options import ice_list
from softphone.cli.runtime import fail, printable
from softphone.cli.serve import event_loop_factory, serve, token

__all__ = ["event_loop_factory", "ice_list", "main"]


#: The commands that open sound devices (their ALSA messages go to the log).
DEVICE_COMMANDS: Final = frozenset({"call", "listen", "devices", "doctor", "demo"})


class PrintableFormatter(logging.Formatter):
    """The log's lines with their control characters written out (:func:`printable`):
    a log line may quote what a peer, a client or a hub chose."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)


class PlainFormatter(logging.Formatter):
    """A warning at the terminal of a phone command, as the CLI's own lines read:
    ``softphone: warning: ...`` (no timestamp or module: -v gives those)."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"softphone: {record.levelname.lower()}: {printable(record.getMessage())}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(verbose: int, command: str | None = None) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    root = logging.getLogger()
    fresh = not root.handlers  # (else someone configured logging: left as it is)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if fresh and verbose == 0 and command != "serve":  # (a hub's log keeps its timestamps)
        root.handlers[0].setFormatter(PlainFormatter())
    elif fresh:
        root.handlers[0].setFormatter(PrintableFormatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if verbose < 2:
        # aiortc/aioice log expected network noise (failed pairs, mDNS) at WARNING.
        for name in ("aiortc", "aioice"):
            logging.getLogger(name).setLevel(logging.ERROR)
    if command in DEVICE_COMMANDS:
        # ALSA writes its own lines ("underrun occurred") to the terminal: to the log.
        from softphone.media.sounddev import alsa_messages_to_log

        alsa_messages_to_log()


class SoftphoneGroup(click.Group):
    """Turns a missing system dependency into one clear line, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from softphone.core.errors import MissingDependency

        try:
            return super().invoke(ctx)
        except MissingDependency as exc:
            fail(str(exc))


#: Commands that take no settings from the config file.
UNCONFIGURED = frozenset({"demo", "config", "completion"})


@click.group(cls=SoftphoneGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="softphone")
@click.option("-v", "--verbose", count=True, help="More logging (-v, -vv).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="The config file (env SOFTPHONE_CONFIG; default "
                   "$XDG_CONFIG_HOME/softphone/config.toml, i.e. "
                   "~/.config/softphone/config.toml). See softphone config --help.")
@click.option("--show-settings", "show_settings", flag_value="text",
              help="Print the settings the command would run with, and where each "
                   "came from (secrets masked), instead of running it.")
@click.option("--show-settings-json", "show_settings", flag_value="json",
              help="The same as JSON.")
@click.pass_context
def main(ctx: click.Context, verbose: int, config_file: str | None,
         show_settings: str | None) -> None:
    """A WebRTC softphone for the terminal, with its own signaling hub.

    \b
    Try it:   softphone demo
    Set up:   softphone config set server http://hub.example.org:8080
              softphone config set id alice
    Call:     softphone call bob
    Answer:   softphone listen --auto-accept
    Check:    softphone doctor
    Hub:      softphone serve --port 8080
    """
    setup_logging(verbose, ctx.invoked_subcommand)
    if show_settings is not None and ctx.invoked_subcommand in UNCONFIGURED:
        raise click.UsageError(f"--show-settings: {ctx.invoked_subcommand} takes no "
                               "settings")
    ctx.obj = CliState(config_file, "json" if show_settings == "json"
                       else "text" if show_settings else None)


for _command in (serve, token, call, listen):
    main.add_command(configured(_command))
main.add_command(configured(devices, pass_settings=True))  # (to name where --input came from)
main.add_command(configured(doctor, pass_settings=True, unreadable_ok=True))
for _command in (demo, config, completion):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
