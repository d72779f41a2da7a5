"""The bookkeeping around a voice processor, whatever library does the processing.

- :class:`ReferenceQueue`: the speaker's frames handed from the output
  thread to the input thread without a lock, paired sample for sample with
  the microphone's (for bindings that take both in one call).
- :class:`EchoMeter`: echo level, ERLE and echo delay estimated from the
  signals alone (for bindings that report none).
- :class:`GainStage`: applies a gain controller's wish without clipping a
  loud first word or pumping the noise in pauses.

All run 50 times a second per call: numpy on whole frames, no Python loop
over samples. Used by :mod:`softphone.media.apm`.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import numpy.typing as npt

from softphone.media.audio import Int16Array

FloatArray32 = npt.NDArray[np.float32]


class ReferenceQueue:
    """Speaker frames handed from the output thread to the input thread, paired by sample.

    One producer (:meth:`push`) and one consumer (:meth:`take`); no lock.
    The consumer pairs each captured sample with the oldest unpaired
    reference sample, so on one device clock the pairing (the canceller's
    view of the echo delay) stays fixed. When the reference is short (the
    speaker's callback came late) the missing part is silence; if it comes
    by the next frame, together with that frame's own, it is dropped and the
    pairing does not move; if not, the callbacks' order has changed and the
    pairing takes the shift (one frame later). The first reference is held
    back one frame, so that callbacks up to a frame late move nothing; a lag
    that stood above ``keep`` (20 ms) for two seconds is cut back, and the
    lag never exceeds ``cap`` samples, the device latencies less 5 ms: a
    longer one would hand the canceller the reference after its echo.
    """

    def __init__(self, rate: int, max_frames: int = 50) -> None:
        self._frames: deque[Int16Array] = deque(maxlen=max_frames)  # producer -> consumer
        self._carry = np.zeros(0, dtype=np.int16)  # consumer only from here on
        self.keep = rate // 50
        self.cap = rate * 40 // 1000
        self.started = False
        self.underruns = 0
        self.dropped = 0
        self._debt = 0  # reference samples owed: paired with silence, drop when they come
        self._window_min = 1 << 30
        self._takes = 0

    def push(self, frame: Int16Array) -> None:
        self._frames.append(frame.copy())

    @property
    def lag(self) -> int:
        """Reference samples waiting after the last :meth:`take` (consumer thread)."""
        return self._carry.size

    def take(self, n: int) -> Int16Array:
        parts = [self._carry]
        while True:
            try:
                parts.append(self._frames.popleft())
            except IndexError:
                break
        carry = np.concatenate(parts) if len(parts) > 1 else self._carry
        if not self.started:
            if carry.size:  # the first reference: hold it back one frame (jitter margin)
                self.started = True
                self._carry = carry
            return np.zeros(n, dtype=np.int16)
        if self._debt:
            if carry.size >= self._debt + n:  # the late part came, and this frame's too
                carry = carry[self._debt:]
                self.dropped += self._debt
            self._debt = 0  # else the callbacks' order changed for good: take the shift
        if carry.size - n > self.cap:
            cut = carry.size - n - self.cap
            carry = carry[cut:]
            self.dropped += cut
        if carry.size < n:
            if self.started:
                self.underruns += 1
                self._debt = n - carry.size
            far = np.concatenate((carry, np.zeros(n - carry.size, dtype=np.int16)))
            self._carry = np.zeros(0, dtype=np.int16)
        else:
            far, self._carry = carry[:n], carry[n:]
        self._trim_standing_lag()
        return far

    def _trim_standing_lag(self) -> None:
        self._window_min = min(self._window_min, self._carry.size)
        self._takes += 1
        if self._takes < 100:
            return
        excess = self._window_min - self.keep
        if excess > 0:
            self._carry = self._carry[excess:]
            self.dropped += excess
        self._window_min = 1 << 30
        self._takes = 0

class EchoMeter:
    """Echo level, ERLE and echo delay estimated from the signals alone.

    Per frame: the far-end reference, the microphone before processing,
    after the echo canceller and at the end. Energies are smoothed (about
    1 s) over frames where the far end plays and the near end is quiet
    (speech probability under 0.5, and, with ``hangover`` frames, not for
    that many frames after it was over: the ends of words are quieter than
    their middles). With the echo cancelled, the speech probability of what
    is left is the near end's; without, it is the echo's too, so there is
    no hangover (``hangover=0``). The delay is the lag of the best
    correlation between the log-energy envelopes (5 ms steps) over the last
    two seconds, once a second.
    """

    WINDOW = 400  # envelope steps kept (2 s of 5 ms)
    MAX_LAG = 100  # 500 ms

    def __init__(self, rate: int, hangover: int = 0) -> None:
        self.step = rate // 200
        self.hangover = hangover
        self._quiet_for = 1 << 30  # frames since the near end last talked
        self.rate = rate
        self._env_ref = np.full(self.WINDOW, -10.0, dtype=np.float32)
        self._env_mic = np.full(self.WINDOW, -10.0, dtype=np.float32)
        self._pos = 0
        self._steps = 0
        self._acc = np.zeros(3)  # smoothed energies: reference, mic in, canceller out
        self._final = 0.0
        self.active_frames = 0
        self.delay_ms: float | None = None

    def add(self, ref: Int16Array, mic: Int16Array, cancelled: Int16Array,
            out: Int16Array, speech: float | None) -> None:
        r = ref.astype(np.float32)
        m = mic.astype(np.float32)
        n = r.size
        e_ref = float(np.dot(r, r)) / n
        if n % self.step == 0:
            self._envelope(r, m)
        self._quiet_for = 0 if speech is not None and speech >= 0.5 else self._quiet_for + 1
        if e_ref < 1e-5 * 32768.0**2 or self._quiet_for <= self.hangover:
            return  # far end below -50 dBFS, or the near end talks (or just did)
        c = cancelled.astype(np.float32)
        o = out.astype(np.float32)
        now = np.array((e_ref, float(np.dot(m, m)) / n, float(np.dot(c, c)) / n))
        a = 0.02 if self.active_frames >= 50 else 1.0 / (self.active_frames + 1)
        self._acc += a * (now - self._acc)
        self._final += a * (float(np.dot(o, o)) / n - self._final)
        self.active_frames += 1

    def _envelope(self, r: FloatArray32, m: FloatArray32) -> None:
        k = r.size // self.step
        er = np.log10((r * r).reshape(k, self.step).mean(axis=1) + 1.0)
        em = np.log10((m * m).reshape(k, self.step).mean(axis=1) + 1.0)
        idx = (self._pos + np.arange(k)) % self.WINDOW
        self._env_ref[idx] = er
        self._env_mic[idx] = em
        self._pos = int((self._pos + k) % self.WINDOW)
        self._steps += k
        if self._steps >= 200:
            self._steps = 0
            self._find_delay()

    def _find_delay(self) -> None:
        order = (self._pos + np.arange(self.WINDOW)) % self.WINDOW
        ref = self._env_ref[order]
        mic = self._env_mic[order]
        span = self.WINDOW - self.MAX_LAG
        x = ref[:span] - ref[:span].mean()
        if float(np.std(x)) < 0.3 or float(ref.max()) < 3.0:  # the far end was (nearly)
            return  # silent: never above -60 dBFS (a log10 energy of 3)
        windows = np.lib.stride_tricks.sliding_window_view(mic, span)[: self.MAX_LAG + 1]
        y = windows - windows.mean(axis=1, keepdims=True)
        corr = (y @ x) / (np.linalg.norm(y, axis=1) * np.linalg.norm(x) + 1e-9)
        best = int(np.argmax(corr))
        if corr[best] > 0.5:
            self.delay_ms = best * 1000.0 * self.step / self.rate

    def erle_db(self) -> float | None:
        if self.active_frames == 0:
            return None
        return _db(self._acc[1] / max(self._acc[2], 1e-3))

    def mic_db(self) -> float | None:
        """The microphone before any processing, relative to the far end (dB)."""
        if self.active_frames == 0:
            return None
        return _db(self._acc[1] / max(self._acc[0], 1e-3))

    def echo_db(self) -> float | None:
        if self.active_frames == 0:
            return None
        return _db(self._final / max(self._acc[0], 1e-3))


def _db(ratio: float) -> float:
    """Power ratio in dB, floored at -120 (stats go out as JSON: no infinities)."""
    return 10.0 * float(np.log10(max(ratio, 1e-12)))


class GainStage:
    """Applies the gain a gain controller asks for, without clipping the first loud words.

    The controller (AGC2) measures the speech level slowly and starts high:
    a talker who is already loud would be raised into its limiter for the
    first seconds. So its gain is only the wish; what is applied also stays
    under ``max_gain_db`` and under what would lift the recent peak (held,
    falling ``peak_fall_db_per_s``) above ``peak_dbfs``. It falls at once
    (the whole frame: where it falls, the frame is louder than the one
    before, so the step is masked) and rises at most ``rise_db_per_s``,
    in a ramp across the frame. The controller's own output (after its
    limiter) is not used. Between words (``speech`` under 0.5) nothing
    rises, neither the gain nor the room under the held peak: a pause does
    not pump the room's noise up.
    """

    def __init__(self, rate: int, max_gain_db: float, peak_dbfs: float = -6.0,
                 rise_db_per_s: float = 6.0, peak_fall_db_per_s: float = 10.0) -> None:
        self.rate = rate
        self.max_gain_db = max_gain_db
        self.peak_dbfs = peak_dbfs
        self.rise_db_per_s = rise_db_per_s
        self.peak_fall_db_per_s = peak_fall_db_per_s
        #: The gain applied at the end of the last frame (dB).
        self.db = 0.0
        self._held = -120.0  # recent input peak, dBFS

    def apply(self, frame: Int16Array, wanted_db: float, speech: float | None = None
              ) -> Int16Array:
        seconds = frame.size / self.rate
        talking = speech is None or speech >= 0.5
        peak = float(np.abs(frame.astype(np.int32)).max()) if frame.size else 0.0
        peak_db = 20.0 * float(np.log10(max(peak, 1.0) / 32768.0))
        fall = self.peak_fall_db_per_s * seconds if talking else 0.0
        self._held = max(peak_db, self._held - fall)
        target = max(0.0, min(wanted_db, self.max_gain_db, self.peak_dbfs - self._held))
        old = self.db
        if target <= old:
            new = target
        else:
            new = min(target, old + self.rise_db_per_s * seconds) if talking else old
        self.db = new
        if new == 0.0 and old == 0.0:
            return frame
        if new <= old:
            gain: float | FloatArray32 = 10.0 ** (new / 20.0)
        else:
            ramp = np.linspace(old, new, frame.size, endpoint=False, dtype=np.float32)
            gain = np.power(np.float32(10.0), ramp / np.float32(20.0))
        out: Int16Array = np.clip(frame.astype(np.float32) * gain, -32768.0, 32767.0
                                  ).astype(np.int16)
        return out
