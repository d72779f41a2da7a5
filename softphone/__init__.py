"""softphone: a pure-Python WebRTC softphone for the terminal, with its own hub.

The Python API in a nutshell::

    from softphone import Phone, ToneSource

    async with Phone("alice", server="http://127.0.0.1:8080") as phone:
        call = await phone.dial("bob", source=ToneSource(440))
        result = await call.ended()

A call sends one source, hands what it hears to its sinks, and plays it on
its ``output`` (``SpeakerDriver()``); ``media=MediaConfig(...)`` gives one call
its own settings (bitrate, redundancy). See ``examples/`` for bots built on it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from softphone.core.version import __version__

if TYPE_CHECKING:  # the names below are imported on first use (PEP 562)
    from softphone.client.call import Call, CallEnded, CallResult
    from softphone.client.hubaddress import HubUnreachable
    from softphone.client.phone import Phone, PhoneClosed
    from softphone.core.callstate import (
        EXIT_CODES,
        CallState,
        CallStateError,
        CallTimeouts,
        ExitCode,
        Outcome,
        Role,
    )
    from softphone.core.dtmf import DtmfEvent
    from softphone.core.line import LineBusy
    from softphone.hub.server import Hub, HubConfig
    from softphone.media.audio import ToneGenerator
    from softphone.media.audiopath import CallAudio, MediaConfig
    from softphone.media.devices import MicSource, SpeakerDriver
    from softphone.media.dtmf_rtp import DtmfUnavailable
    from softphone.media.encoded import PromptSource, SharedPrompt
    from softphone.media.opus import EncoderSettings
    from softphone.media.recording import RecordingThread
    from softphone.media.sinks import CaptureSink, RecorderSink
    from softphone.media.tracks import (
        AudioFileError,
        AudioReceiver,
        EchoSource,
        FileSource,
        SilenceSource,
        ToneSource,
        load_audio_file,
    )

#: Where each lazily imported name lives. Lazy so that `softphone serve` (the
#: hub) does not load aiortc, PyAV and numpy, which only calls need, and so
#: that the `softphone` command's entry point (softphone.cli.entry) takes
#: Ctrl-C from its first milliseconds: importing it loads nothing else.
_LAZY = {
    "EXIT_CODES": "core.callstate", "CallState": "core.callstate",
    "CallStateError": "core.callstate", "CallTimeouts": "core.callstate",
    "ExitCode": "core.callstate", "Outcome": "core.callstate", "Role": "core.callstate",
    "DtmfEvent": "core.dtmf", "LineBusy": "core.line",
    "Hub": "hub.server", "HubConfig": "hub.server",
    "Call": "client.call", "CallEnded": "client.call", "CallResult": "client.call",
    "Phone": "client.phone", "PhoneClosed": "client.phone",
    "HubUnreachable": "client.hubaddress",
    "CallAudio": "media.audiopath", "MediaConfig": "media.audiopath",
    "EncoderSettings": "media.opus",
    "MicSource": "media.devices", "SpeakerDriver": "media.devices",
    "AudioReceiver": "media.tracks", "CaptureSink": "media.sinks",
    "EchoSource": "media.tracks", "FileSource": "media.tracks",
    "RecorderSink": "media.sinks", "SilenceSource": "media.tracks",
    "ToneSource": "media.tracks",
    "AudioFileError": "media.tracks", "load_audio_file": "media.tracks",
    "ToneGenerator": "media.audio", "DtmfUnavailable": "media.dtmf_rtp",
    "PromptSource": "media.encoded", "SharedPrompt": "media.encoded",
    "RecordingThread": "media.recording",
}

if not TYPE_CHECKING:  # (type checkers see the imports above: a typo is an error)
    def __getattr__(name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'softphone' has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value
        return value


__all__ = [
    "EXIT_CODES",
    "AudioFileError",
    "AudioReceiver",
    "Call",
    "CallAudio",
    "CallEnded",
    "CallResult",
    "CallState",
    "CallStateError",
    "CallTimeouts",
    "CaptureSink",
    "DtmfEvent",
    "DtmfUnavailable",
    "EchoSource",
    "EncoderSettings",
    "ExitCode",
    "FileSource",
    "Hub",
    "HubConfig",
    "HubUnreachable",
    "LineBusy",
    "MediaConfig",
    "MicSource",
    "Outcome",
    "Phone",
    "PhoneClosed",
    "PromptSource",
    "RecorderSink",
    "RecordingThread",
    "Role",
    "SharedPrompt",
    "SilenceSource",
    "SpeakerDriver",
    "ToneGenerator",
    "ToneSource",
    "__version__",
    "load_audio_file",
]
