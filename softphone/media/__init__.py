"""Media: one aiortc peer connection per call and our voice pipeline.

The aiortc seams, Opus, RED, the jitter buffer and playout, sources and
sinks, sound devices and recording. Imports :mod:`softphone.core`, never
the hub or the CLI.
"""
