"""The device buffer's decisions (softphone/media/devicebuffer.py): pure, time passed in."""

from __future__ import annotations

import numpy as np
import pytest

from softphone.media.devicebuffer import SPEAKER_LATENCIES, BufferSteps, DeviceBuffer, PauseWatch


def run(buffer: DeviceBuffer, underruns_at: list[float], until: float,
        step: float = 0.25, start: float = 0.0) -> list[tuple[float, float]]:
    """Ask ``buffer`` every ``step`` s from ``start`` (as the speaker does) with underruns
    at those times; the changes it asked for, as (when, buffer)."""
    changes = []
    count = buffer._counted
    t = start
    pending = sorted(underruns_at)
    while t <= until:
        while pending and pending[0] <= t:
            pending.pop(0)
            count += 1
        latency = buffer.update(count, t)
        if latency is not None:
            changes.append((t, latency))
        t = round(t + step, 6)
    return changes


def test_starts_small_and_keeps_it_without_underruns() -> None:
    buffer = DeviceBuffer()
    assert buffer.latency == SPEAKER_LATENCIES[0] == 0.01
    assert run(buffer, [], 300.0) == []
    assert (buffer.grown, buffer.shrunk) == (0, 0)


def test_one_underrun_is_not_enough_two_within_the_window_grow_a_step() -> None:
    buffer = DeviceBuffer(BufferSteps(calm=1000.0, max_calm=1000.0))
    assert run(buffer, [1.0, 12.0], 20.0) == []  # 11 s apart: never two in 10 s
    assert run(DeviceBuffer(BufferSteps(calm=1000.0, max_calm=1000.0)),
               [1.0, 9.0], 20.0) == [(9.0, 0.02)]


def test_grows_step_by_step_to_the_last_and_no_further() -> None:
    buffer = DeviceBuffer(BufferSteps(calm=1000.0, max_calm=1000.0))
    underruns = [1.0, 1.1, 3.0, 3.1, 5.0, 5.1, 7.0, 7.1]
    assert run(buffer, underruns, 10.0) == [(1.25, 0.02), (3.25, 0.04)]
    assert buffer.grown == 2 and buffer.latency == 0.04


def test_after_a_calm_spell_it_shrinks_back_a_step_at_a_time() -> None:
    """A moment of load grew it twice; then calm: it comes back to 10 ms."""
    buffer = DeviceBuffer(BufferSteps(calm=30.0))
    changes = run(buffer, [1.0, 1.1, 3.0, 3.1], 100.0)
    assert changes == [(1.25, 0.02), (3.25, 0.04), (33.25, 0.02), (63.25, 0.01)]
    assert (buffer.grown, buffer.shrunk, buffer.latency) == (2, 2, 0.01)


def test_an_underrun_after_a_change_restarts_the_calm() -> None:
    buffer = DeviceBuffer(BufferSteps(calm=30.0))
    # Grown at 1.25; single underruns at 20 and at 45 (never two in 10 s): each one
    # restarts the calm, long after the window has forgotten it.
    changes = run(buffer, [1.0, 1.1, 20.0, 45.0], 100.0)
    assert changes == [(1.25, 0.02), (75.0, 0.01)]


def test_underrunning_again_soon_after_shrinking_doubles_the_calm_it_needs() -> None:
    """A device at its real limit does not see-saw every 30 s."""
    buffer = DeviceBuffer(BufferSteps(calm=30.0, max_calm=100.0))
    underruns = [1.0, 1.1,          # grow at 1.25; shrink at 31.25
                 35.0, 35.1,        # soon after: grow at 35.25, calm 60
                 96.0, 96.1,        # shrink at 95.25, underruns: grow at 96.25, calm 100
                 ]
    changes = run(buffer, underruns, 250.0)
    assert changes == [(1.25, 0.02), (31.25, 0.01), (35.25, 0.02), (95.25, 0.01),
                       (96.25, 0.02), (196.25, 0.01)]
    assert buffer.calm == 100.0  # (at most max_calm)
    # That last shrink holds for 100 s: the device is fine at 10 ms again, and the
    # next moment of load is followed by the first calm again.
    assert run(buffer, [], 296.0, start=250.25) == [] and buffer.calm == 100.0
    assert buffer.update(6, 296.25) is None and buffer.calm == 30.0


def test_underruns_long_after_a_shrink_do_not_lengthen_the_calm() -> None:
    buffer = DeviceBuffer(BufferSteps(calm=30.0))
    changes = run(buffer, [1.0, 1.1, 100.0, 100.1], 200.0)
    assert changes == [(1.25, 0.02), (31.25, 0.01), (100.25, 0.02), (130.25, 0.01)]
    assert buffer.calm == 30.0


def test_a_step_back_waits_for_a_pause() -> None:
    buffer = DeviceBuffer(BufferSteps(calm=30.0))
    assert not buffer.may_shrink
    assert buffer.update(2, 1.0) == 0.02 and buffer.may_shrink
    assert buffer.update(2, 40.0, quiet=False) is None  # calm, but someone talks
    assert buffer.update(2, 40.25, quiet=False) is None
    assert buffer.update(2, 40.5, quiet=True) == 0.01 and not buffer.may_shrink


def test_one_step_never_changes() -> None:
    buffer = DeviceBuffer(BufferSteps(steps=(0.03,)))
    assert run(buffer, [float(t) for t in range(50)], 100.0) == []
    assert buffer.latency == 0.03


@pytest.mark.parametrize("kwargs", [
    {"steps": ()}, {"steps": (0.02, 0.01)}, {"steps": (0.0, 0.01)}, {"steps": (0.01, 0.01)},
    {"underruns_to_grow": 0}, {"window": 0.0}, {"calm": 0.0}, {"calm": 10.0, "max_calm": 5.0},
    {"quiet_peak": 0}, {"quiet_peak": 40000}, {"quiet_stretches": 0}, {"pause_patience": -1.0},
])
def test_bad_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError) as err:
        BufferSteps(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(err.value) and "not" in str(err.value)


# The pause a step back waits for (PauseWatch): each stretch's peak, 50 a second.

def watch(peaks: list[int], patience: float = 10.0, start: float = 0.0) -> list[bool]:
    """Whether the watch says "a pause" after each of ``peaks`` (20 ms apart)."""
    pause = PauseWatch(BufferSteps(pause_patience=patience))
    pause.start(start)
    said = []
    for i, peak in enumerate(peaks):
        pause.feed(peak, start + i * 0.02)
        said.append(pause.quiet)
    return said


def noise(seconds: float, peak: int, seed: int = 1) -> list[int]:
    """Peaks of a steady noise: within 2 dB under ``peak``, at random."""
    rng = np.random.default_rng(seed)
    return [int(peak * 10 ** (-2 * rng.random() / 20)) for _ in range(int(seconds * 50))]


def test_a_pause_is_three_quiet_stretches_in_a_row() -> None:
    said = watch([0, 100, 327, 0, 5000, 0, 0, 0])
    assert said == [False, False, True, True, False, False, False, True]


def test_nothing_is_a_pause_while_not_watching() -> None:
    pause = PauseWatch()
    for i in range(10):
        pause.feed(0, i * 0.02)
    assert not pause.watching and not pause.quiet
    pause.start(1.0)
    for i in range(3):
        pause.feed(0, 1.0 + i * 0.02)
    assert pause.quiet
    pause.stop()
    assert not pause.watching and not pause.quiet


def test_a_word_or_a_tone_is_no_pause_before_the_patience() -> None:
    """A steady tone (-12 dBFS) for 2.5 s: its own quietest, but not a pause yet; the
    silence after it is."""
    said = watch([8000] * 125 + [0] * 5)
    assert not any(said[:125]) and said[-1]


def test_a_far_end_that_is_never_under_40_dbfs_gets_a_pause_after_the_patience() -> None:
    """Steady noise at -30 dBFS: the old rule (under -40 dBFS) never saw a pause. After
    10 s of it, its quietest stretches are as quiet as this far end gets."""
    said = watch(noise(20.0, 1000))
    assert not any(said[:500])  # (the first 10 s)
    assert sum(said[500:]) > 100


def test_speech_with_noisy_pauses_gets_its_step_back_in_the_pauses_only() -> None:
    """Words (-12 dBFS, 0.6 s) between pauses carrying noise (-30 dBFS, 0.4 s): after
    the patience, the pauses are pauses and the words never are."""
    peaks: list[int] = []
    for i in range(20):
        peaks += noise(0.6, 8000, seed=i) + noise(0.4, 1000, seed=100 + i)
    said = watch(peaks)
    words = [i for i in range(len(peaks)) if i % 50 < 30]
    pauses_after = [i for i in range(500, len(peaks)) if i % 50 >= 33]
    assert not any(said[i] for i in words)
    assert sum(said[i] for i in pauses_after) > len(pauses_after) // 2


def test_the_quietest_follows_a_noise_that_grows() -> None:
    """Silence, then a noise 10 dB over -40 dBFS for good: the quietest remembered (never
    under -40 dBFS) rises 1 dB a second, so the noise (its peaks 0-2 dB under that)
    counts after 5-10 s."""
    said = watch([0] * 600 + noise(15.0, 1037))
    assert said.index(True) == 2  # (the silence: a pause at once)
    noisy = said[600:]
    assert True in noisy and 5 * 50 <= noisy.index(True) <= 10 * 50, noisy.index(True)


def test_a_new_start_forgets_what_was_fed() -> None:
    pause = PauseWatch(BufferSteps(pause_patience=1.0))
    pause.start(0.0)
    for i in range(100):
        pause.feed(1000, i * 0.02)  # (2 s of steady noise: a pause by now)
    assert pause.quiet
    pause.start(2.0)
    assert not pause.quiet
    pause.feed(1000, 2.02)
    assert not pause.quiet  # (the patience starts again)


def test_a_feed_under_way_when_the_watch_starts_again_writes_nothing_back() -> None:
    """feed() runs on the audio thread, start() on the event loop: a stretch fed across
    a start() (here: the start made while it is computing) leaves the new wait clean."""
    pause = PauseWatch(BufferSteps(pause_patience=0.0))
    pause.start(0.0)
    for i in range(5):
        pause.feed(0, i * 0.02)
    assert pause.quiet

    class Restarting(float):  # (the audio thread is between its read and its write)
        def __mul__(self, other: object) -> float:
            pause.start(1.0)
            return float(self) * float(other)  # type: ignore[arg-type]

    pause._floor = Restarting(328.0)
    pause.feed(0, 0.2)
    assert pause.run == 0 and pause._floor == float("inf") and not pause.quiet
