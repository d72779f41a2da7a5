"""``python -m softphone``: the same as the ``softphone`` command."""

from softphone.cli.main import main

main()
