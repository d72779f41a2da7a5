"""``python -m softphone``: the same as the ``softphone`` command."""

from softphone.cli.entry import run

run()
