"""The ``softphone`` command line (click): the group and its commands.

Commands: ``serve`` and ``token`` (:mod:`.serve`), ``call`` and ``listen``
(:mod:`.calls`), ``devices`` and ``demo`` (:mod:`.checks`). Their options come
in typed groups (:mod:`.options`); call and listen share one phone set-up
(:mod:`.phone_setup`); output, failing and Ctrl-C are in :mod:`.runtime`.
Human-readable lines go to stdout, or to stderr with ``--json`` (stdout is
then JSON lines only). Each call outcome has its own exit code
(:class:`softphone.core.callstate.ExitCode`; see ``softphone call --help``).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from softphone import __version__
from softphone.cli.calls import call, listen
from softphone.cli.checks import demo, devices
from softphone.cli.options import ice_list
from softphone.cli.runtime import fail
from softphone.cli.serve import event_loop_factory, serve, token

__all__ = ["event_loop_factory", "ice_list", "main"]


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if verbose < 2:
        # aiortc/aioice log expected network noise (failed pairs, mDNS) at WARNING.
        for name in ("aiortc", "aioice"):
            logging.getLogger(name).setLevel(logging.ERROR)


class SoftphoneGroup(click.Group):
    """Turns a missing system dependency into one clear line, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from softphone.core.errors import MissingDependency

        try:
            return super().invoke(ctx)
        except MissingDependency as exc:
            fail(str(exc))


@click.group(cls=SoftphoneGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="softphone")
@click.option("-v", "--verbose", count=True, help="More logging (-v, -vv).")
def main(verbose: int) -> None:
    """A WebRTC softphone for the terminal, with its own signaling hub.

    \b
    Try it:   softphone demo
    Hub:      softphone serve --port 8080
    Answer:   softphone listen --as bob --auto-accept
    Call:     softphone call bob --as alice --tone 440
    """
    setup_logging(verbose)


for _command in (serve, token, call, listen, devices, demo):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
