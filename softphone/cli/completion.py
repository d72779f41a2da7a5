"""``softphone completion bash|zsh|fish``: the shell completion script.

Click's own completion (``click.shell_completion``): the script calls
``softphone`` back with ``_SOFTPHONE_COMPLETE=<shell>_complete``, and click
answers with the commands, options and values that fit (config keys for
``config set``, files for ``--play``). How to install it: :data:`INSTALL`.
"""

from __future__ import annotations

from typing import Final

import click

#: The variable click's completion scripts set when they call ``softphone`` back.
COMPLETE_VAR: Final = "_SOFTPHONE_COMPLETE"
SHELLS: Final = ("bash", "zsh", "fish")
#: One line per shell (``completion --help``; README's "Shell completion").
INSTALL: Final = (
    "\b\nInstall it (one line per shell):\n"
    "  bash:  echo 'eval \"$(softphone completion bash)\"' >> ~/.bashrc\n"
    "  zsh:   echo 'eval \"$(softphone completion zsh)\"' >> ~/.zshrc   (after compinit)\n"
    "  fish:  softphone completion fish > ~/.config/fish/completions/softphone.fish"
)


def completion_script(cli: click.Command, shell: str, prog_name: str = "softphone") -> str:
    """The completion script of ``cli`` for ``shell`` (one of :data:`SHELLS`)."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    if cls is None:  # (click.Choice keeps other names out)
        raise click.BadParameter(f"no completion for {shell!r}")
    return cls(cli, {}, prog_name, COMPLETE_VAR).source()


@click.command(epilog=INSTALL)
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL (bash, zsh or fish)."""
    click.echo(completion_script(ctx.find_root().command, shell), nl=False)
