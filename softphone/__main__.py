"""``python -m softphone``: the same as the ``softphone`` command."""

from .cli import main

main()
