"""softphone: a pure-Python WebRTC softphone for the terminal, with its own hub.

The Python API in a nutshell::

    from softphone import Phone, ToneSource

    async with Phone("alice", server="http://127.0.0.1:8080") as phone:
        call = await phone.dial("bob", source=ToneSource(440))
        result = await call.ended()

See ``examples/`` for bots built on it.
"""

from .callstate import EXIT_CODES, CallState, CallTimeouts, Outcome, Role
from .hub import Hub, HubConfig
from .phone import Call, CallEnded, CallResult, Phone
from .signaling import HubUnreachable
from .tracks import (
    AudioReceiver,
    CaptureSink,
    EchoSource,
    FileSource,
    RecorderSink,
    SilenceSource,
    ToneSource,
)

__version__ = "0.1.0"

__all__ = [
    "EXIT_CODES",
    "AudioReceiver",
    "Call",
    "CallEnded",
    "CallResult",
    "CallState",
    "CallTimeouts",
    "CaptureSink",
    "EchoSource",
    "FileSource",
    "Hub",
    "HubConfig",
    "HubUnreachable",
    "Outcome",
    "Phone",
    "RecorderSink",
    "Role",
    "SilenceSource",
    "ToneSource",
    "__version__",
]
