"""Media: one aiortc peer connection per call and our voice pipeline.

Each call has one audio path (:class:`softphone.media.audiopath.CallAudio`:
its source, playout, output device, sinks and settings) and one peer
connection (:class:`softphone.media.rtc.MediaSession`). Beneath them: the
aiortc seams, Opus, RED, the jitter buffer and playout, sources and sinks,
sound devices, recording, and the PCM plumbing they share
(:mod:`softphone.media.pcm`). Imports :mod:`softphone.core`, never the hub,
the client or the CLI.
"""
