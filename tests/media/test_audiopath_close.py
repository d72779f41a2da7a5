"""A call's audio path lets go of what outlives it (a phone's microphone) when it closes."""

from __future__ import annotations

import gc
import weakref

from softphone.media.audiopath import CallAudio
from softphone.media.tracks import SilenceSource


async def test_a_source_that_outlives_the_call_lets_go_of_its_audio_path() -> None:
    source = SilenceSource()  # stands for a microphone shared by a phone's calls
    told: list[str] = []
    first = CallAudio(source, on_device_lost=told.append)
    second = CallAudio(source)
    first.source._tell_lost("microphone unplugged")  # both calls hear of it
    assert first.lost == second.lost == ["microphone unplugged"] and told == first.lost
    gone = weakref.ref(first)
    await first.close()
    del first
    gc.disable()  # freed at once, not left to the cyclic collector
    try:
        assert gone() is None
    finally:
        gc.enable()
    source._tell_lost("microphone gone again")  # the call still open still hears
    assert second.lost[-1] == "microphone gone again" and len(told) == 1
    await second.close()
