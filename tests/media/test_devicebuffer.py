"""The device buffer's decisions (softphone/media/devicebuffer.py): pure, time passed in."""

from __future__ import annotations

import pytest

from softphone.media.devicebuffer import SPEAKER_LATENCIES, BufferSteps, DeviceBuffer


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
])
def test_bad_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError) as err:
        BufferSteps(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(err.value) and "not" in str(err.value)
