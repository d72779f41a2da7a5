"""Commands that check this machine, with no hub needed: ``softphone devices``
(what PortAudio sees) and ``softphone demo`` (a whole call inside this process).
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

import click

from softphone.cli.options import positive
from softphone.cli.runtime import Interrupts, fail, first_done
from softphone.core.callstate import ExitCode

if TYPE_CHECKING:
    from softphone.cli.demo import DemoReport


@click.command()
def devices() -> None:
    """List the microphones and speakers PortAudio sees (for --input/--output)."""
    from softphone.media.devices import DeviceError, list_devices

    try:
        found = list_devices()
    except DeviceError as exc:
        fail(str(exc))
    if not any(d.inputs or d.outputs for d in found):
        fail("no audio devices (no sound card, or no audio server; with PulseAudio check "
             "PULSE_SERVER); use --tone/--play, --record or --no-audio")
    for kind, label in (("input", "microphones (--input)"), ("output", "speakers (--output)")):
        click.echo(f"{label}:")
        for d in found:
            if d.has(kind):  # type: ignore[arg-type]
                default = d.default_input if kind == "input" else d.default_output
                channels = d.inputs if kind == "input" else d.outputs
                click.echo(f"  {'*' if default else ' '} {d.index:>3}  {d.name} ({d.hostapi}, "
                           f"{channels} ch, {d.default_rate:.0f} Hz)")
    click.echo("* default")


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
        click.echo(line)
    sys.exit(ExitCode.COMPLETED if report.ok else ExitCode.ERROR)
