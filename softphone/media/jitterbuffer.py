"""An adaptive audio jitter buffer, sans I/O.

Packets go in with :meth:`JitterBuffer.push` (RTP timestamp, payload and the
arrival time ``now``); every 20 ms the player asks :meth:`JitterBuffer.pull`
(with its own ``now``) what to play next, and gets a small decision:

- :class:`Play` a packet (possibly after skipping some to cut the delay),
- :class:`Recover` a lost frame from the in-band FEC of the next packet,
- :class:`Conceal` a missing frame (the decoder's loss concealment),
- :class:`Silence` (nothing received yet, or a long outage).

How it keeps the delay low, in the manner of WebRTC's NetEQ:

- The *target* is a high quantile of the recent transit-time spread
  (arrival time minus send time, relative to the fastest recent packet):
  zero on a clean network, growing with jitter, shrinking back once the
  jitter has left the window. While packets are being lost it is one
  frame more (two after a pair was lost, or while RED copies come), so
  the next packet is there in time to rebuild a lost one from its copy
  (RED) or its in-band FEC.
- It starts playing with the first packet; a RED stream (``copies_expected``)
  two frames later, the reserve a call's first losses need while the sender
  probes the path with copies and the jitter is not measured yet. Once they
  stop with nothing lost (or after ``start_hold`` seconds without a loss, for
  a peer that always sends copies), those frames are dropped, each with a
  quiet frame in a real pause (``pause_pulls`` quiet frames in a row; both
  in one pause if the packets wait both), if the packets wait them over the
  target, else left to the rules below. A packet that is not there when
  its turn comes is concealed *without* moving on (it may just be late):
  the delay grows by one frame, which is how the buffer grows on jitter.
- When later packets show the missing one is lost, frames already covered
  by concealment are skipped, so a loss burst leaves no backlog behind.
- When at least one whole frame more than the target has been buffered for
  a while, one frame is skipped, at a moment the player says is quiet (a
  pause in speech, where a missing 20 ms is not heard); far too much is cut
  at once, quiet or not. With ``stretch`` (a player that time-stretches,
  :class:`softphone.media.playout.StretchPlayout`) nothing is skipped for
  a surplus: the frame is played with ``accelerate`` set, and the player
  takes a pitch period out of it; when less than the target is buffered,
  ``expand`` asks for one more.
- Copies of earlier frames (RED) say how far back repair reaches: the
  reserve kept while losses recur is the wait the recent runs of lost
  packets need to be rebuilt (a copy 6 frames back rebuilds a burst of 6,
  if the buffer holds 6 frames).

It never waits on a hole: every pull returns a decision at once.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Final

# The decisions and counts live beside: re-exported, this is where callers look.
from softphone.media.jb_decisions import Conceal, Decision, JitterStats, Play, Recover, Silence
from softphone.media.jb_estimates import LossMemory, TransitWindow
from softphone.media.jb_settings import TRIM_MARGIN
from softphone.media.jb_store import PacketStore
from softphone.media.jb_target import JitterTarget

__all__ = ["Conceal", "Decision", "JitterBuffer", "JitterStats", "Play", "Recover", "Silence"]

#: The frame held at the start is dropped only if every packet waits it and this much
#: more (seconds): cut from a wait just over a frame, the next packets come late.
START_SPARE: Final = 0.002
#: (``trim``) The smallest cut worth making (seconds).
TRIM_SMALLEST: Final = 0.002


@dataclass
class JitterBuffer(JitterTarget):
    stats: JitterStats = field(default_factory=JitterStats)
    _store: PacketStore = field(default_factory=PacketStore)
    _next: int | None = None  # unwrapped timestamp to play next
    _transit: TransitWindow = field(default_factory=TransitWindow)
    _underruns: int = 0
    _min_wait: float = math.inf
    _waits: int = 0
    #: (``trim``) How long the last second's packets waited, since the last time warp.
    _recent_waits: deque[float] = field(default_factory=lambda: deque(maxlen=50))
    _quiet: bool = True
    _quiet_run: int = 0  # pulls in a row with quiet audio
    _short_since: float | None = None  # (stretch) short of the reserve for bursts since
    _losses: LossMemory = field(default_factory=LossMemory)
    _now: float = 0.0
    _undo: tuple[int, bytes, float] | None = None  # what keep_skipped() puts back
    _newest: int | None = None  # newest timestamp pushed
    _newest_at: float = 0.0  # when it arrived
    _surplus_since: float | None = None  # (stretch) a surplus waiting for a cut since
    _lost_once: bool = False  # a loss was seen (or a frame repaired) in this stream
    _start_held: int = 0  # frames start_wait put in hand that are still held
    _start_at: float = 0.0  # when the first packet was played
    _undo_start: bool = False  # the skip keep_skipped() takes back dropped that frame
    _start_spare: float = 0.0  # after a start frame's drop: how long packets wait over it

    def renewed(self) -> JitterBuffer:
        """An empty buffer with this one's settings and counts (a new stream)."""
        settings = {f.name: getattr(self, f.name) for f in fields(self)
                    if f.init and not f.name.startswith("_") and f.name != "stats"}
        return JitterBuffer(**settings, stats=self.stats)

    # -- input ---------------------------------------------------------------

    def push(self, timestamp: int, payload: bytes, now: float) -> bool:
        """Add a packet that arrived at ``now``. False if it came too late or twice."""
        store = self._store
        ts = store.unwrap(timestamp & 0xFFFFFFFF)
        frame = self.frame_samples
        if self._next is not None and abs(ts - self._next) > self.max_jump * self.clock_rate:
            self._restart()
            store.ref = ts
        self.stats.received += 1
        newest = self._newest
        if newest is None or ts > newest:
            if newest is not None and ts > newest + frame:
                self._losses.gap(now, (ts - newest) // frame - 1)
            self._newest = ts
            self._newest_at = now
        if self._next is not None and ts < self._next:
            self.stats.late += 1
            self._note_transit(ts, now)
            return False
        if ts in store:
            if store.original_came(ts):  # its copy came first: it was late, not lost
                self._note_transit(ts, now)
            else:
                self.stats.duplicates += 1
            return False
        store.add(ts, payload, now)
        self._note_transit(ts, now)
        if len(store) > 4 * self.max_target * self.clock_rate / frame + 50:
            store.drop_oldest()
        return True

    def push_redundant(self, timestamp: int, payload: bytes, now: float) -> bool:
        """Add an earlier frame repeated in a later packet (RED). True if it filled a hole.

        It only fills a frame still to be played whose own packet is missing:
        it says nothing of the network's jitter (it arrived a packet late by
        design), and a hole it fills counts as a loss, so the buffer keeps
        the reserve that lets the next loss be filled in time.
        """
        store = self._store
        if store.ref is None:
            return False
        ts = store.unwrap(timestamp & 0xFFFFFFFF)
        if self._newest is not None and ts < self._newest:  # how far back copies reach
            self._losses.copy((self._newest - ts) // self.frame_samples, now)
        if ts in store or (self._next is not None and ts < self._next) or \
                (store and ts < store.oldest and self._next is None):
            return False
        if self._newest is None or ts >= self._newest:
            return False  # nothing newer has come: not a hole
        store.add(ts, payload, now, repaired=True)
        self._note_loss(now)
        self.stats.repaired += 1
        return True

    def _note_loss(self, now: float) -> None:
        self._lost_once = True
        self._start_held = 0  # the frames in hand are the loss reserve now
        self._losses.loss(now, 2 * self.frame_samples / self.clock_rate)

    def _note_transit(self, ts: int, now: float) -> None:
        self._transit.add(now - ts / self.clock_rate, now, self.window)

    def _restart(self) -> None:
        self._store.clear()
        self._next = None
        self._newest = None
        self._losses.forget_copies()
        self._lost_once = self._undo_start = False
        self._start_spare = 0.0
        self._start_held = 0
        self._short_since = None
        self._undo = None
        self._transit.clear()
        self._underruns = 0
        self._min_wait = math.inf
        self._waits = 0
        self._recent_waits.clear()
        self.stats.resets += 1

    # -- output --------------------------------------------------------------

    def pull(self, now: float, quiet: bool = True) -> Decision:
        """What to play for the next frame. Call every ``frame_samples`` of playout.

        ``quiet``: the audio being played is a pause, so a frame may be skipped
        unheard to cut the delay.
        """
        self._quiet = quiet
        self._quiet_run = self._quiet_run + 1 if quiet else 0
        self._now = now
        frame = self.frame_samples
        store = self._store
        if self._next is None:
            if not store:
                return Silence()
            if self.copies_expected and not self._lost_once:
                arrived = store.arrival(store.oldest)
                if now - (now if arrived is None else arrived) < self.start_wait - 1e-6:
                    return Silence()
                self._start_held = max(1, round(self.start_wait * self.clock_rate / frame))
                self._start_at = now
            self._next = store.oldest
        nxt = self._next
        if nxt in store:
            return self._play(now)
        later = store.after(nxt)
        if later is None:
            # Nothing after the hole: the packet may be late. Conceal, keep our place.
            self._min_wait, self._waits = math.inf, 0  # an underrun: no surplus
            self._recent_waits.clear()
            self._underruns += 1
            if self._underruns > self.max_conceal:
                return Silence()
            self.stats.concealed += 1
            return Conceal(nxt & 0xFFFFFFFF)
        if self._copy_coming(nxt):
            # Its copy further back (RED spread against bursts) is still on its way
            # and the target asks for that much delay: wait for it, as for a late
            # packet. The first burst repaired this way grows the delay to it.
            self._underruns += 1
            self.stats.concealed += 1
            return Conceal(nxt & 0xFFFFFFFF)
        # Later packets are here: the frames from nxt up to `later` are lost.
        self._note_loss(now)  # one event, however many frames it lost
        missing = (later - nxt) // frame
        covered = min(missing, self._underruns)  # already concealed while we waited
        self._underruns = 0
        if covered:
            # Skipping what was concealed takes back the delay the wait added;
            # keep enough of it for the target (after a loss: one frame, so the
            # next loss can be rebuilt from FEC instead of concealed).
            seconds = frame / self.clock_rate
            spare = store.reach(nxt, frame) / self.clock_rate - seconds
            keep = min(covered, max(0, math.floor((spare - self.target) / seconds + 1e-9)))
            # Growing the delay here means concealing once more right after the wait's
            # concealment: only if a real frame (played or rebuilt from FEC) comes next.
            covered = keep if missing - keep <= 1 else max(keep, min(covered, missing - 1))
        nxt += covered * frame
        missing -= covered
        if missing:
            # Filling the rest of the gap frame by frame keeps the audio whole,
            # unless it would play `later` far behind the target: then skip.
            seconds = frame / self.clock_rate
            sent = later / self.clock_rate
            fastest = self._transit.fastest
            base = now - sent if fastest is None else fastest
            target = self.target
            if now + missing * seconds - sent - base > target + 2 * seconds:
                keep = min(missing, max(0, math.ceil((target + base + sent - now) / seconds)))
                self.stats.skipped += missing - keep
                nxt += (missing - keep) * frame
                missing = keep
        self._next = nxt
        if not missing:
            return self._play(now)
        self._next = nxt + frame
        if missing == 1:
            self.stats.recovered += 1
            return Recover(store.payload(later), nxt & 0xFFFFFFFF)
        self.stats.concealed += 1
        return Conceal(nxt & 0xFFFFFFFF)

    def _play(self, now: float) -> Play:
        frame = self.frame_samples
        seconds = frame / self.clock_rate
        store = self._store
        assert self._next is not None
        self._underruns = 0
        targets = self._targets()  # (nothing _play changes before it reads them again)
        target = targets[0]
        skipped: list[bytes] = []
        cut_from = -1  # the first frame a cut skipped
        # How long the packets played lately waited here: if even the shortest
        # wait exceeded the target by a whole frame, that frame is surplus delay.
        arrived = store.arrival(self._next)
        if arrived is not None:
            self._min_wait = min(self._min_wait, now - arrived)
            self._recent_waits.append(now - arrived)
        self._waits += 1
        surplus = 0
        if self._waits >= self.surplus_pulls:
            surplus = math.floor((self._min_wait - target) / seconds + 1e-6)
        backlog = math.floor((self.level - seconds - target) / seconds + 1e-6)
        ahead = self._next + frame in store  # something to play after a skip
        accelerate = expand = voiced = start_cut = False
        trim = 0
        cut_at_once = 10 if self.stretch else 5  # frames of backlog
        spare = 0.0  # how long the packets wait over the target, for a held frame's drop
        if self._start_held:
            spare = self._start_spare or (
                self._min_wait - target if self._waits >= self.surplus_pulls else 0.0)
        self._start_spare = 0.0
        if self._start_held and ahead and backlog < cut_at_once \
                and spare >= seconds + START_SPARE \
                and self._quiet_run >= self.pause_pulls and not self._start_copies():
            # A frame held for the probe's copies, which stopped with nothing lost,
            # and every packet still waits it and a little more: dropped whole with a
            # quiet frame in a real pause, which takes back exactly what it added (the
            # player plays it instead if it is not quiet after all; then it goes with
            # a later one).
            # The next one goes at the next pull if the packets waited both (one
            # pause takes both: a second cut a window later, in another pause, cost
            # PESQ-WB 0.04 in calls), else the same way a measuring window later. If
            # the packets wait less, the surplus rule below takes what they do wait
            # over a frame (all of a quiet frame but 2.5 ms), or nothing.
            self._start_held -= 1
            self._start_spare = spare - seconds if self._start_held else 0.0
            start_cut = True
            cut_from = self._next
            skipped.append(store.take(self._next))
            self._next += frame
            self.stats.skipped += 1
        elif self.stretch and backlog < cut_at_once:
            # No whole-frame cut: the player takes a pause out of this frame (or,
            # when the surplus has found no pause for a while, a pitch period).
            # Every time warp costs (PESQ-WB hears even one a second), so only a
            # surplus is cut, and only a certain underrun on a path without loss
            # is stretched the other way (a loss grows the delay by concealing).
            # While losses recur the delay moves at every burst: a cushion of up to
            # three frames over the target is kept rather than cut and grown again
            # (not after one burst: its delay goes as soon as it is surplus).
            accelerate = surplus >= (3 if len(self._losses.events) >= 2 else 1) and ahead
            if accelerate:
                if self._surplus_since is None:
                    self._surplus_since = now
                voiced = now - self._surplus_since >= self.voiced_after
                # Until then only in a real pause (`pause_pulls` quiet frames): a quiet
                # frame between two words is part of the utterance, and a cut there is
                # heard (PESQ-WB 4.48 -> 4.35 for one, offline; in clean calls too).
                accelerate = voiced or self._quiet_run >= self.pause_pulls
            elif self._waits >= self.surplus_pulls:  # measured, and no surplus left
                self._surplus_since = None
            # How far behind its fastest recent arrival this frame plays: under the
            # jitter's spread (less half a frame), the next ones will come late.
            fastest = self._transit.fastest
            margin = 0.0 if fastest is None else now - self._next / self.clock_rate - fastest
            # (While losses recur: in a quiet frame as soon as it is short at all, in
            # speech only a whole frame short: the reserve that lets copies and FEC
            # repair a loss, grown before the loss that needs it. Unlike a cut, this
            # does not wait for a real pause: the loss it is for may come first; over
            # 16 offline seeds, waiting for 3 quiet pulls: 5 % 4.219 -> 4.209, 10 %
            # 4.117 -> 4.097.)
            short = (0.0 if self._quiet else seconds) if self._losses.events else seconds / 2
            # The reserve for bursts that copies further back rebuild (6 back: 120 ms)
            # is not grown by stretching speech: a period added to frame after frame
            # is heard (and costs PESQ-WB more than the burst it is for). It is grown
            # in a real pause (`pause_pulls` quiet frames in a row), a whole frame of
            # the pause at a time, so all of it goes into one pause; or else at the
            # next burst, by waiting for its copies (_copy_coming) while the lost
            # frames would be concealed anyway.
            if not accelerate and len(self._transit) >= 2:
                grow_to = targets[0 if self._quiet_run >= self.pause_pulls else 1]
                expand = margin < grow_to - short
                if margin >= targets[0] - seconds:
                    self._short_since = None
                elif self._short_since is None:
                    self._short_since = now
            recent = self._recent_waits
            if self.trim and self._quiet_run >= self.pause_pulls and surplus < 1 \
                    and len(recent) >= self.surplus_pulls and not (
                        accelerate or expand or self._losses.events
                        or (self._start_held and self._start_copies())):
                # Less than a frame over the target (the frame phase): cut to the
                # sample in a real pause. (The last second's waits, apart from the
                # surplus window: that one is reset when it finds no whole frame.)
                spare = min(recent) - target - max(TRIM_MARGIN, self.trim_margin)
                if spare >= TRIM_SMALLEST:
                    trim = min(int(spare * self.clock_rate + 1e-6), frame - frame // 8)
        elif backlog >= cut_at_once or (surplus >= 1 and self._quiet and ahead):
            # Cut the delay: one frame in a pause, or down to the target at once
            # when far too much is buffered.
            cut = backlog if backlog >= cut_at_once else 1
            cut_from = self._next
            for _ in range(cut):
                if self._next in store:
                    skipped.append(store.take(self._next))
                self._next += frame
                self.stats.skipped += 1
            while self._next not in store and self._next <= store.newest:
                self._next += frame
                self.stats.skipped += 1
        if backlog >= cut_at_once or surplus >= 1 or self._waits >= self.surplus_pulls:
            if surplus < 1 or skipped:  # start a new window (keep it open for a pause)
                self._min_wait = math.inf
                self._waits = 0
        ts = self._next
        arrived = store.arrival(ts)
        payload = store.take(ts)
        self._next = ts + frame
        self.stats.played += 1
        optional = backlog < cut_at_once and len(skipped) == 1 and ts == cut_from + frame
        self._undo = (ts, payload, arrived if arrived is not None else now) if optional else None
        self._undo_start = start_cut and optional
        return Play(payload, ts & 0xFFFFFFFF, tuple(skipped[-1:]), optional, accelerate, voiced,
                    expand, trim, 0.0 if arrived is None else now - arrived)

    def stretched(self, samples: int) -> None:
        """(``stretch`` mode) The player played the last frame ``samples`` longer (or
        shorter, < 0): the surplus is measured again from here."""
        if samples:
            if samples < 0:
                self._start_held = max(0, self._start_held - 1)  # the delay came down
            self._min_wait = math.inf
            self._waits = 0
            self._recent_waits.clear()

    def keep_skipped(self) -> None:
        """The frame the last :class:`Play` skipped is being played instead: take the skip back.

        Only for a Play with ``optional_skip``; its own packet goes back to be played next.
        """
        if self._undo is None:
            return
        ts, payload, arrived = self._undo
        self._undo = None
        if self._undo_start:
            self._start_held += 1
            self._start_spare = 0.0
            self._undo_start = False
        self._store.add(ts, payload, arrived)
        self._next = ts
        self.stats.skipped -= 1
