"""Commands that check this machine or a setup: ``softphone devices`` (what
PortAudio sees), ``softphone demo`` (a whole call inside this process) and
``softphone doctor`` (the hub, TLS, the token, STUN/TURN and the sound devices
a call would use, each with a fix; :mod:`softphone.cli.doctor`).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any

import click

from softphone.cli.config_wiring import named_device
from softphone.cli.options import (
    AudioDeviceOptions,
    HubClientOptions,
    IceOptions,
    as_option,
    audio_device_options,
    hub_client_options,
    option_group,
    phone_ice_options,
    positive,
)
from softphone.cli.runtime import Interrupts, fail, first_done, printable
from softphone.core.callstate import ExitCode

if TYPE_CHECKING:
    from softphone.cli.config_resolve import Settings
    from softphone.cli.demo import DemoReport
    from softphone.media.sounddev import DeviceInfo


def _chosen(spec: str | None, kind: str) -> DeviceInfo | None:
    """The device a call would take for ``spec`` (None: none, or it cannot be found)."""
    from softphone.core.errors import MissingDependency
    from softphone.media.sounddev import DeviceError, find_device

    try:
        return find_device(spec, kind)  # type: ignore[arg-type]
    except (DeviceError, MissingDependency):
        return None


def _pick(input: str | None, output: str | None) -> tuple[str | None, str | None]:
    return input, output


@click.command()
@option_group("picked", _pick, [
    click.option("--input", envvar="SOFTPHONE_INPUT", metavar="DEVICE",
                 help="Mark the microphone this names, as call would pick it "
                      "(env SOFTPHONE_INPUT; config: audio.input)."),
    click.option("--output", envvar="SOFTPHONE_OUTPUT", metavar="DEVICE",
                 help="Mark the speaker this names (env SOFTPHONE_OUTPUT; config: "
                      "audio.output)."),
])
def devices(picked: tuple[str | None, str | None], settings: Settings | None = None) -> None:
    """List the microphones and speakers PortAudio sees (for --input/--output).

    '*' marks the system's defaults, '>' the ones a call would use (with
    --input/--output, SOFTPHONE_INPUT/OUTPUT or audio.input/output in the
    config file; else the defaults). Exit 2 when --input or --output names
    no single device (a call would refuse it too).
    """
    from softphone.media.sounddev import DeviceError, list_devices

    try:
        found = list_devices()
    except DeviceError as exc:
        fail(str(exc))
    if not any(d.inputs or d.outputs for d in found):
        none = ("no audio devices (no sound card, or no audio server; with PulseAudio check "
                "PULSE_SERVER); use --tone/--play, --record or --no-audio")
        named = [named_device(kind, spec, settings)
                 for kind, spec in zip(("input", "output"), picked, strict=True) if spec]
        if named:  # (a device named where there is none: as call and listen, exit 2)
            fail(f"{' and '.join(named)}: no such device: {none}", ExitCode.USAGE)
        fail(none)
    unmatched: list[str] = []
    for kind, label, spec in (("input", "microphones (--input)", picked[0]),
                              ("output", "speakers (--output)", picked[1])):
        click.echo(f"{label}:")
        chosen = _chosen(spec, kind)
        for d in found:
            if d.has(kind):  # type: ignore[arg-type]
                default = d.default_input if kind == "input" else d.default_output
                channels = d.inputs if kind == "input" else d.outputs
                mark = ">" if chosen is not None and chosen.index == d.index else " "
                click.echo(f"{mark} {'*' if default else ' '} {d.index:>3}  {d.name} "
                           f"({d.hostapi}, {channels} ch, {d.default_rate:.0f} Hz)")
        if spec and chosen is None:
            click.echo(f"  (no single {kind} device matches {spec!r}: a call would fail)")
            unmatched.append(named_device(kind, spec, settings))
    click.echo("* default   > what a call would use")
    if unmatched:  # as call and listen refuse it: a bad option value
        fail(f"{' and '.join(unmatched)}: no single device matches (call and listen "
             "would refuse it)", ExitCode.USAGE)


@click.command()
@click.option("--seconds", type=float, default=3.0, show_default=True, callback=positive,
              help="How long the two phones talk.")
def demo(seconds: float) -> None:
    """Call between two phones through an embedded hub, and check the audio.

    Nothing else is needed: the hub and both phones run in this process.
    Exit 0 only if each side received the other's tone.
    """
    from softphone.cli.demo import run_demo

    async def run() -> DemoReport | None:
        interrupts = Interrupts()
        interrupts.install()
        task = asyncio.ensure_future(run_demo(seconds, progress=click.echo))
        await first_done(task, interrupts.event.wait())
        if not task.done():
            return None
        return task.result()

    report = asyncio.run(run())
    if report is None:
        fail("interrupted", ExitCode.INTERRUPTED)
    for line in report.lines():
        click.echo(printable(line))
    sys.exit(ExitCode.COMPLETED if report.ok else ExitCode.ERROR)


def unreadable_results(settings: Settings) -> list[Any]:
    """A FAIL line for each secret whose file cannot be read (a call would exit 1)."""
    from softphone.cli.doctor import Result

    return [Result(option.file_key, False,
                   f"{got.error} ({got.source.value}: {got.origin.rsplit(' (', 1)[0]})",
                   f"make the file readable by you, or point {option.file_key} / "
                   f"{option.file_flag} at the right one",
                   data={"key": option.file_key, "error": got.error})
            for option, got in settings.unreadable()]


_DOCTOR_EXIT = (
    "\b\nExit codes:\n"
    f"  {ExitCode.COMPLETED.value:>3}  a call can be made (maybe with warnings: WARN lines)\n"
    f"  {ExitCode.USAGE.value:>3}  a bad option, variable or config file\n"
    f"  {ExitCode.DOCTOR_FAILED.value:>3}  a check a call needs failed (FAIL lines): "
    "no call possible"
)


@click.command(epilog=_DOCTOR_EXIT)
@as_option(required=False)
@hub_client_options
@phone_ice_options
@audio_device_options
@click.option("--register/--no-register", default=False,
              help="Check the token by signing in with it as ID. That disconnects a "
                   "phone listening as ID (it exits 11), so the default is not to: "
                   "the token's expiry and id are read from it, and a hub that hands "
                   "out TURN credentials judges it through /ice-servers.")
@click.option("--timeout", type=float, default=4.0, show_default=True, callback=positive,
              metavar="S", help="Wait this long for each answer (HTTP, WebSocket, STUN, "
                                "TURN).")
@click.option("--json", "json_mode", is_flag=True,
              help="Print the checks as one JSON object (for scripts).")
def doctor(client_id: str | None, hub: HubClientOptions, ice: IceOptions,
           audio: AudioDeviceOptions, register: bool, timeout: float, json_mode: bool,
           settings: Settings) -> None:
    """What is wrong with my setup? Checks what a call needs, each with a fix.

    \b
    The hub:       reachable (/healthz), its TLS certificate, its version,
                   whether it needs a token and whether ours is good
    ICE:           /ice-servers (or ice.servers), a STUN binding request to
                   each STUN server, a TURN allocation (UDP and TCP) with the
                   credentials, and what that means for the media path
    This machine:  libopus, PortAudio, the microphone and speaker at 48 kHz
                   (not with --no-audio)

    It uses the same settings as call (flags, environment, config file).
    """
    from softphone.cli.doctor import DoctorTarget, exit_code, report_json, report_lines, run_doctor

    target = DoctorTarget.from_settings(settings, register=register, audio=not audio.no_audio,
                                        timeout=timeout)

    async def run() -> list[Any] | None:
        interrupts = Interrupts()
        interrupts.install()
        task = asyncio.ensure_future(run_doctor(target))
        await first_done(task, interrupts.event.wait())
        return task.result() if task.done() and not task.cancelled() else None

    results = asyncio.run(run())
    if results is None:
        fail("interrupted", ExitCode.INTERRUPTED)
    results = [*unreadable_results(settings), *results]
    if json_mode:
        click.echo(json.dumps(report_json(results), indent=2))
    else:
        for line in report_lines(results):  # (they quote what the hub answered)
            click.echo(printable(line))
    sys.exit(exit_code(results))
