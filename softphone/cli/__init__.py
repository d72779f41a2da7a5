"""The ``softphone`` command: the click group and its commands, the terminal
phone and the demo. The one layer that may import every other.
"""
