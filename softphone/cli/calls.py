"""``softphone call`` and ``softphone listen``: dial or answer, then talk until
someone hangs up. Both build their phone with :class:`PhoneSetup`; each call
outcome has its own exit code (:class:`~softphone.core.callstate.ExitCode`).

``call --dtmf "12#"`` presses keys once audio is connected; ``listen
--max-calls N`` answers up to N calls at once (a bot), each with its own
media, and Ctrl-C hangs every one up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import TYPE_CHECKING, Any

import click

from softphone._tasks import spawn
from softphone.cli.options import (
    HubClientOptions,
    IceOptions,
    MediaOptions,
    TalkOptions,
    as_option,
    check_id,
    phone_options,
    positive,
)
from softphone.cli.phone_setup import PhoneSetup
from softphone.cli.prompt import LineReader, ask
from softphone.cli.runtime import Interrupts, Output, exit_codes_help, first_done, run_to_exit
from softphone.client.hubaddress import HubUnreachable
from softphone.core.callstate import CallState, CallTimeouts, ExitCode, Outcome

if TYPE_CHECKING:
    from softphone.client.phone import Call, CallResult, Phone

OUTCOME_TEXT: dict[Outcome, str] = {
    Outcome.COMPLETED: "call completed",
    Outcome.REJECTED: "{peer} rejected the call",
    Outcome.BUSY: "{peer} is busy (in another call)",
    Outcome.NO_ANSWER: "no answer from {peer}",
    Outcome.OFFLINE: "{peer} is offline (not connected to the hub)",
    Outcome.HUB_UNREACHABLE: "lost the hub before the call was set up",
    Outcome.MEDIA_FAILED: "media failed: could not connect audio with {peer}",
    Outcome.MISSED: "missed call from {peer} (the caller hung up)",
    Outcome.CANCELLED: "call cancelled before audio connected",
    Outcome.MEDIA_LOST: "media lost: the audio with {peer} died and did not come back",
}


def describe(result: CallResult) -> str:
    """How the call ended, in one line for a person."""
    if result.outcome is Outcome.REJECTED and result.ended_by == "local":
        return f"declined the call from {result.peer}"  # our answer, not theirs
    text = OUTCOME_TEXT[result.outcome].format(peer=result.peer)
    if result.outcome is Outcome.COMPLETED:
        who = "we" if result.ended_by == "local" else "they"
        text += f" with {result.peer}, talked {result.talk_seconds:.1f} s ({who} hung up)"
    elif result.reason and result.outcome in (Outcome.MEDIA_FAILED, Outcome.REJECTED):
        text += f" ({result.reason})"
    return text


async def press_keys(call: Call, out: Output, tones: str) -> None:
    """Send ``tones`` as DTMF on ``call`` (connected); say what happened."""
    from softphone.client.phone import CallEnded
    from softphone.media.dtmf_rtp import DtmfUnavailable

    try:
        await call.send_dtmf(tones)
    except DtmfUnavailable as exc:
        out.say(f"cannot send DTMF to {call.peer}: {exc}")
        out.event({"event": "dtmf-failed", "peer": call.peer, "reason": str(exc)})
    except CallEnded:
        return
    else:
        out.say(f"sent DTMF {tones} to {call.peer}")


async def connected_then_timer(call: Call, out: Output, duration: float | None,
                               dtmf: str | None = None) -> None:
    """Once audio is up: say so, press ``dtmf``, hang up after ``duration``."""
    from softphone.client.phone import CallEnded

    try:
        await call.connected()
    except CallEnded:
        return
    pair = call.candidate_pair
    out.say(f"connected to {call.peer}"
            f" ({call.setup_seconds or 0.0:.2f} s)"
            + (f" via {pair}" if pair is not None else "")
            + (f"; verification code: {call.sas}" if call.sas else ""))
    if dtmf:
        spawn(press_keys(call, out, dtmf), name="dtmf")
    if duration is not None:
        await asyncio.sleep(duration)
        await call.hangup("duration")
        return
    await asyncio.Event().wait()


def say_dtmf(call: Call, out: Output) -> None:
    """Say each key the peer presses (the JSON event is the call's own)."""
    def on_event(event: dict[str, object]) -> None:
        if event.get("event") == "dtmf":
            out.say(f"DTMF {event['digit']} from {call.peer} ({event['duration_ms']} ms)")

    call.on_event(on_event)


async def talk_until_end(call: Call, out: Output, interrupts: Interrupts,
                         duration: float | None, dtmf: str | None = None) -> CallResult:
    """Wait for the call to end, hanging up on Ctrl-C or after ``duration``.

    ``dtmf``: keys to press once audio is connected.
    """

    from softphone.cli.tui import CallScreen

    timer = asyncio.create_task(connected_then_timer(call, out, duration, dtmf))
    screen = out.screen = CallScreen(call, out, out.human)
    screen.start()
    try:
        await first_done(call.ended(), interrupts.event.wait(), timer)
        if not call.is_ended:
            await call.hangup("interrupted" if interrupts.event.is_set() else "hangup")
        result = await call.ended()
    finally:
        out.screen = None
        screen.stop()
    timer.cancel()
    return result


def say_hub_state(out: Output, connected: bool, description: str) -> None:
    """The hub connection lost (the phone tries again) or back: one line, and a
    ``hub`` event (``connected``, ``message``) with --json."""
    out.say(description)
    out.event({"event": "hub", "connected": connected, "message": description})


async def connect(setup: PhoneSetup, timeouts: CallTimeouts, out: Output,
                  interrupts: Interrupts, max_calls: int = 1) -> Phone | HubUnreachable | None:
    """The phone, connected to the hub; or why the hub cannot be reached (said);
    or None on Ctrl-C while connecting (a hub that never answers is left at once)."""
    phone = setup.phone(timeouts, max_calls)
    phone.on_hub_state = functools.partial(say_hub_state, out)
    connecting = asyncio.ensure_future(phone.connect())
    await first_done(connecting, interrupts.event.wait())
    if interrupts.event.is_set():
        # (cancelled by first_done unless it was done: it closes what it opened)
        await asyncio.wait({connecting})  # (its end: a cancel of ours still comes through)
        if not connecting.cancelled() and connecting.exception() is None:
            await phone.close()  # it connected just as Ctrl-C came
        return None
    try:
        connecting.result()
    except HubUnreachable as exc:
        out.say(str(exc))
        return exc
    return phone


# ------------------------------------------------------------------- call ---


def unplaced_result(callee: str, outcome: Outcome, reason: str) -> CallResult:
    """The result of a call to ``callee`` that never reached the hub (Ctrl-C while
    connecting: ended by us; the hub unreachable: by the network)."""
    from softphone.client.calltypes import CallResult
    from softphone.core.callstate import Role

    return CallResult(peer=callee, role=Role.CALLER, outcome=outcome, reason=reason,
                      ended_by="local" if outcome is Outcome.CANCELLED else "network",
                      setup_seconds=None, first_audio_seconds=None, talk_seconds=0.0)


def check_dtmf(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from softphone.core.dtmf import check_tones

    try:
        return check_tones(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command(epilog=exit_codes_help())
@click.argument("callee", callback=check_id)
@as_option()
@phone_options
@click.option("--ring-timeout", type=float, default=30.0, show_default=True,
              callback=positive, metavar="S", help="Give up if nobody answers in time.")
@click.option("--dtmf", metavar="KEYS", callback=check_dtmf,
              help="Press these keys (0-9 * # A-D; ',' waits 2 s) once audio is connected, "
                   "as RTP telephone events.")
def call(callee: str, client_id: str, hub: HubClientOptions, ice: IceOptions,
         media: MediaOptions, talk: TalkOptions, ring_timeout: float,
         dtmf: str | None) -> None:
    """Call CALLEE through the hub and talk until someone hangs up.

    Sends --play or --tone (else the microphone, or silence), records with
    --record, presses --dtmf keys. On a terminal, keys 0-9 * # press keys
    during the call. Ctrl-C hangs up cleanly.
    """
    if callee == client_id:
        raise click.BadParameter("you cannot call yourself", param_hint="CALLEE")
    setup = PhoneSetup(client_id, hub, ice, media)
    out = Output(talk.json_mode)
    source = setup.source()
    timeouts = CallTimeouts(ring=ring_timeout, setup=talk.setup_timeout)
    sinks = setup.sinks(callee)
    output = setup.output()

    async def run() -> int:
        interrupts = Interrupts()
        interrupts.install()
        phone = await connect(setup, timeouts, out, interrupts)
        if phone is None or isinstance(phone, HubUnreachable):
            # Ctrl-C before the hub answered: cancelled, as Ctrl-C while ringing is.
            outcome = Outcome.CANCELLED if phone is None else Outcome.HUB_UNREACHABLE
            if phone is None:
                out.say(OUTCOME_TEXT[outcome])
            result = unplaced_result(callee, outcome, "interrupted" if phone is None
                                     else str(phone))
            out.event({"event": "ended", **result.to_json()})  # (the keys of every call's)
            code = result.exit_code
            for sink in sinks:
                sink.close()
            if output is not None:
                output.stop()
            return code
        try:
            out.say(f"calling {callee} as {client_id} via {phone.hub.address.http}")
            the_call = await phone.dial(callee, source, sinks, on_event=out.event,
                                        output=output)
            say_dtmf(the_call, out)
            result = await talk_until_end(the_call, out, interrupts, talk.duration, dtmf)
        finally:
            await phone.close()
        if said_refusal(phone, out):
            return ExitCode.REFUSED
        out.say(describe(result))
        say_recorded(out, sinks, result)
        return result.exit_code

    run_to_exit(run(), setup.close)


# ----------------------------------------------------------------- listen ---


@click.command(epilog=exit_codes_help(note="(--once exits with the call's code.)"))
@as_option()
@phone_options
@click.option("--auto-accept", is_flag=True, help="Answer every call without asking.")
@click.option("--once", is_flag=True, help="Handle one call, then exit with its outcome.")
@click.option("--echo", is_flag=True,
              help="Send each caller's audio back to them (the echo test).")
@click.option("--max-calls", type=click.IntRange(1, 10_000), default=1, show_default=True,
              metavar="N", help="Answer up to N calls at once, each with its own media "
                                "(with --auto-accept); caller N+1 is told busy.")
def listen(client_id: str, hub: HubClientOptions, ice: IceOptions, media: MediaOptions,
           talk: TalkOptions, auto_accept: bool, once: bool, echo: bool,
           max_calls: int) -> None:
    """Wait for calls and answer them (asks y/n unless --auto-accept).

    A caller beyond --max-calls (default 1) gets 'busy'. Each call has its
    own media: --tone/--play to each caller, --echo each caller hears
    itself, --record 'calls/{peer}-{n}.wav' one file per call (a file an
    earlier call recorded to is not replaced: call N gets FILE-N, e.g.
    calls.wav, calls-2.wav). Keys the
    callers press are said (and --json events). Ctrl-C hangs up every call
    and exits.
    """
    if echo and (media.play or media.tone is not None):
        raise click.UsageError("--echo sends the caller's audio: not with --play/--tone")
    if max_calls > 1 and not auto_accept:
        raise click.UsageError("--max-calls above 1 needs --auto-accept (a bot answers "
                               "without asking)")
    if max_calls > 1 and once:
        raise click.UsageError("--once handles one call: not with --max-calls above 1")
    setup = PhoneSetup(client_id, hub, ice, media, echo=echo)
    out = Output(talk.json_mode)
    setup.source().stop()  # check the file/tone/microphone now, before anyone calls
    speaker = setup.output()  # and the speaker (a bad --output: exit 2, not at a call)
    if speaker is not None:
        speaker.stop()
    if not media.audio.no_audio:  # PortAudio loads in ~80 ms: now, not when a call rings
        from softphone.media.devices import load_sounddevice

        with contextlib.suppress(Exception):  # missing: said when a call opens the speaker
            load_sounddevice()
    timeouts = CallTimeouts(setup=talk.setup_timeout)

    async def run() -> int:
        interrupts = Interrupts()
        interrupts.install()
        phone = await connect(setup, timeouts, out, interrupts, max_calls)
        if phone is None:  # Ctrl-C before the hub answered: as Ctrl-C while waiting
            return ExitCode.INTERRUPTED if once else ExitCode.COMPLETED
        if isinstance(phone, HubUnreachable):
            return ExitCode.HUB_UNREACHABLE
        out.say(f"listening as {client_id} on {phone.hub.address.http} (Ctrl-C to stop)")
        out.event({"event": "listening", "id": client_id, "max_calls": max_calls})
        try:
            if max_calls == 1:
                return await answer_one_by_one(phone, setup, out, interrupts, talk,
                                               auto_accept, once)
            return await answer_many(phone, setup, out, interrupts, talk)
        finally:
            await phone.close()

    run_to_exit(run(), setup.close)


def said_refusal(phone: Phone, out: Output) -> bool:
    """Whether the hub refused us (closed our connection saying why); if so, say it."""
    if phone.refusal is None:
        return False
    out.say(f"the hub refused us: {phone.refusal.message}")
    return True


async def accept_call(incoming: Call, setup: PhoneSetup, n: int) -> list[Any] | None:
    """Accept ``incoming`` with call ``n``'s media: its sinks (the --record file);
    None if the caller gave up first (the call is then over: ``ended()`` says how)."""
    from softphone.client.call import CallEnded

    if incoming.is_ended:
        return None
    source, sinks, output = setup.call_media(incoming.peer, n)
    try:
        await incoming.accept(source, sinks, output=output)  # (refused: it closes them)
    except CallEnded:
        return None
    return sinks


def say_recorded(out: Output, sinks: list[Any], result: CallResult) -> None:
    """After a call with --record that recorded something: where what we heard went,
    how long, and why the recording stopped if it did (a full disk)."""
    if not sinks:
        return
    writer = sinks[0].writer
    if writer.seconds > 0 or writer.error is not None:
        stopped = f"; it stopped early: {writer.error}" if writer.error is not None else ""
        out.say(f"recorded to {writer.path} ({writer.seconds:.1f} s){stopped}")


async def next_incoming(phone: Phone, interrupts: Interrupts, out: Output) -> Call | None:
    """The next call, or None on Ctrl-C, when the hub refused us, or the phone is closed
    for good (said)."""
    waiting = asyncio.ensure_future(phone.next_call())
    await first_done(waiting, interrupts.event.wait(), phone.refused.wait())
    if not waiting.done() or waiting.cancelled():
        return None
    from softphone.client.phone import PhoneClosed

    try:
        call = waiting.result()
    except PhoneClosed as exc:  # (a refusal is said by the caller of this; else say why)
        if phone.refusal is None:
            out.say(str(exc))
        return None
    return None if phone.refusal is not None else call


async def answer_one_by_one(phone: Phone, setup: PhoneSetup, out: Output,
                            interrupts: Interrupts, talk: TalkOptions, auto_accept: bool,
                            once: bool) -> int:
    """One call at a time, with the terminal phone (asking y/n unless ``auto_accept``)."""
    from softphone.cli.tui import ask_key, is_terminal

    reader = LineReader()
    keys = not auto_accept and is_terminal(out.human)
    if not auto_accept and not keys:
        reader.start()
    n = 0
    while True:
        incoming = await next_incoming(phone, interrupts, out)
        if said_refusal(phone, out):
            return ExitCode.REFUSED
        if incoming is None:
            return ExitCode.INTERRUPTED if once else ExitCode.COMPLETED
        n += 1
        incoming.on_event(out.event)
        out.event({"event": "incoming", "peer": incoming.peer})
        say_dtmf(incoming, out)
        if auto_accept:
            accept: bool | None = True
            out.say(f"incoming call from {incoming.peer}: accepting")
        else:
            asking = asyncio.ensure_future(ask_key(incoming, out, interrupts.interrupt)
                                           if keys else ask(incoming, out, reader))
            await first_done(asking, interrupts.event.wait())
            accept = asking.result() if asking.done() and not asking.cancelled() \
                else False
        # Ctrl-C at the prompt declines the call, then exits as Ctrl-C while waiting.
        asked_away = not accept and interrupts.event.is_set()
        sinks: list[Any] = []
        if accept:  # (a caller who gave up: said below)
            sinks = await accept_call(incoming, setup, n) or []
        elif accept is False and incoming.state is CallState.RINGING:
            await incoming.reject("interrupted" if asked_away else "declined")
        result = await talk_until_end(incoming, out, interrupts, talk.duration)
        out.say(describe(result))
        say_recorded(out, sinks, result)
        if asked_away:
            return ExitCode.INTERRUPTED if once else ExitCode.COMPLETED
        if once or interrupts.event.is_set():
            return result.exit_code


async def answer_many(phone: Phone, setup: PhoneSetup, out: Output, interrupts: Interrupts,
                      talk: TalkOptions) -> int:
    """Up to ``phone.max_calls`` calls at once, each answered at once; Ctrl-C ends them all."""
    serving: set[asyncio.Task[None]] = set()
    n = 0

    async def serve(call: Call, sinks: list[Any]) -> None:
        timer = asyncio.create_task(connected_then_timer(call, out, talk.duration))
        try:
            result = await call.ended()
        finally:
            timer.cancel()
        out.say(describe(result))
        say_recorded(out, sinks, result)

    try:
        while True:
            incoming = await next_incoming(phone, interrupts, out)
            if said_refusal(phone, out):
                return ExitCode.REFUSED
            if incoming is None:
                return ExitCode.COMPLETED
            n += 1
            incoming.on_event(out.event)
            out.event({"event": "incoming", "peer": incoming.peer, "n": n})
            say_dtmf(incoming, out)
            if incoming.is_ended:  # the caller gave up while the call waited in line
                out.say(describe(await incoming.ended()))
                continue
            out.say(f"incoming call from {incoming.peer} ({len(phone.calls)} of "
                    f"{phone.max_calls} lines): accepting")
            sinks = await accept_call(incoming, setup, n)
            if sinks is None:
                out.say(describe(await incoming.ended()))
                continue
            task = asyncio.create_task(serve(incoming, sinks), name=f"call-{n}")
            serving.add(task)
            task.add_done_callback(serving.discard)
    finally:
        for call in phone.calls:
            await call.hangup("interrupted" if interrupts.event.is_set() else "closing")
        if serving:
            await asyncio.wait(serving, timeout=5.0)
