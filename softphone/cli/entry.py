"""The ``softphone`` command's entry point: Ctrl-C at any moment is a clean exit.

A command's event loop takes Ctrl-C itself (:class:`softphone.cli.runtime.Interrupts`:
a call is cancelled, a listener stops). Around it, :func:`run` makes sure no
Ctrl-C ends in a traceback, click's "Aborted!" or death by the signal:

- while the CLI's modules load (before click runs): the exit code of a Ctrl-C
  before anything happened (:func:`interrupted_code`: as the command's own
  Ctrl-C before the hub answered);
- while click parses the options and a command gets going, or a loop that is
  closing hands Ctrl-C back to Python: the same code, said by no traceback;
- once the command has returned its exit code: Ctrl-C is ignored while the
  process ends.

Only the ``softphone`` script and ``python -m softphone`` run this: a program
that imports the CLI (a test) keeps its own Ctrl-C.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Final, NoReturn

#: The group's options that take a value (to find the command's name in argv).
GROUP_VALUE_OPTIONS: Final = frozenset({"--config"})
#: Exit codes (softphone.core.callstate.ExitCode, not imported: this runs before).
COMPLETED, CANCELLED, INTERRUPTED = 0, 10, 130


def command_of(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """The command named in ``args`` (what follows ``softphone``) and its arguments."""
    rest = iter(args)
    for arg in rest:
        if arg in GROUP_VALUE_OPTIONS:
            next(rest, None)
        elif arg == "--":
            return next(rest, None), list(rest)
        elif not arg.startswith("-"):
            return arg, list(rest)
    return None, []


def interrupted_code(args: Sequence[str]) -> int:
    """The exit code of a Ctrl-C before the command got going (README, exit codes), as
    the command's own Ctrl-C before the hub answered: ``call`` cancelled (10);
    ``listen`` 130 with ``--once``, else 0; any other command 130."""
    command, rest = command_of(args)
    if command == "call":
        return CANCELLED
    if command == "listen":
        return INTERRUPTED if "--once" in rest else COMPLETED
    return INTERRUPTED


def run(args: Sequence[str] | None = None) -> NoReturn:
    """Run the CLI with ``args`` (default: the command line) and exit with its code."""
    args = sys.argv[1:] if args is None else list(args)
    code = interrupted_code(args)

    def while_loading(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(code)

    # (a Ctrl-C ignored from the start, a background job of a script, stays ignored)
    ours = signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
    if ours:
        signal.signal(signal.SIGINT, while_loading)
    import click

    from softphone.cli.main import main

    if ours:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # (the commands take it)
    try:
        try:
            returned = main.main(args=args, prog_name="softphone", standalone_mode=False)
            result = returned if isinstance(returned, int) else COMPLETED
        except click.Abort as exc:  # Ctrl-C (KeyboardInterrupt) outside a command's own
            if isinstance(exc.__context__, KeyboardInterrupt):
                result = code
            else:  # (an end of input, or a command's own abort: as click says it)
                print("Aborted!", file=sys.stderr)
                result = 1
        except click.ClickException as exc:
            exc.show()
            result = exc.exit_code
        except SystemExit as exc:
            result = exc.code if isinstance(exc.code, int) else \
                COMPLETED if exc.code is None else 1
            if not isinstance(exc.code, int | None):
                print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:  # (one that came while the above was handled)
        result = code
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the outcome is decided: ignored from now
    sys.exit(result)
