"""Limits of option values, start-up interruptions and where a bad value came from
(a terminal user's review): ``nan``/``inf`` refused by every float option, Ctrl-C at
any moment of start-up a clean exit, and ``softphone devices`` naming the config key.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import Result

from softphone.cli.main import main
from softphone.core.callstate import ExitCode
from softphone.hub.server import Hub

from ..conftest import hub_url
from ..support.helpers import Proc
from .test_option_checks import run

#: A hub nobody listens on: a phone that got through its checks fails at once (exit 7).
NO_HUB = "http://127.0.0.1:1"

#: What each command needs besides the option under test (no sound devices, no hub).
BASE_ARGS: dict[str, list[str]] = {
    "call": ["call", "bob", "--as", "a", "--server", NO_HUB, "--no-audio"],
    "listen": ["listen", "--as", "b", "--server", NO_HUB, "--no-audio", "--once"],
    "doctor": ["doctor", "--server", NO_HUB, "--no-audio", "--ice-server", "none"],
    "serve": ["serve", "--host", "127.0.0.1", "--port", "0"],
    "demo": ["demo"],
}


def float_options(command: click.Command = main, path: tuple[str, ...] = ()
                  ) -> Iterator[tuple[str, str]]:
    """Every option of every command (and subcommand) that takes a float."""
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from float_options(sub, (*path, name))
    for param in command.params:
        if isinstance(param, click.Option) and isinstance(param.type,
                                                          click.types.FloatParamType):
            yield " ".join(path), param.opts[0]


FLOAT_OPTIONS = sorted(set(float_options()))


def one_line_usage_error(result: Result) -> str:
    """Exit 2, no traceback, and a single error line (after click's usage lines)."""
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines()
              if line.startswith(("Error:", "softphone:"))]
    assert len(errors) == 1, result.output
    return errors[0]


def test_the_float_options_are_all_walked() -> None:
    """The walk below sees the options the review named (not an empty list)."""
    for expected in [("call", "--simulate-loss"), ("call", "--duration"), ("demo", "--seconds"),
                     ("doctor", "--timeout"), ("listen", "--give-up"), ("serve", "--rate")]:
        assert expected in FLOAT_OPTIONS
    assert {command for command, _ in FLOAT_OPTIONS} <= set(BASE_ARGS)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize(("command", "flag"), FLOAT_OPTIONS)
def test_no_float_option_takes_nan_or_infinity(command: str, flag: str, value: str) -> None:
    """No option means anything by infinity (no limit is left out instead): every float
    option of every command refuses nan and +-inf, in the words the config file's
    numbers get."""
    line = one_line_usage_error(run(*BASE_ARGS[command], f"{flag}={value}"))
    assert flag in line and "must be a finite number" in line, line


def test_simulate_loss_keeps_its_range() -> None:
    line = one_line_usage_error(run(*BASE_ARGS["call"], "--simulate-loss", "101"))
    assert "--simulate-loss" in line and "0<=x<=100" in line
    assert run(*BASE_ARGS["call"], "--simulate-loss", "100").exit_code \
        == ExitCode.HUB_UNREACHABLE


# ------------------------------------- where a device name came from ---


@pytest.mark.usefixtures("two_devices")
def test_devices_names_the_config_key_that_named_no_device(tmp_path: Path) -> None:
    """`audio.input = "7"` in the file: the error names the file, line and key, not an
    --input the user never typed."""
    config = tmp_path / "config.toml"
    config.write_text('id = "a"\n\n[audio]\ninput = "7"\n')
    result = run("--config", str(config), "devices")
    assert result.exit_code == ExitCode.USAGE, result.output
    assert result.stderr == (f"softphone: {config}:4: audio.input '7': no single device "
                             "matches (call and listen would refuse it)\n")
    from_env = run("devices", env={"SOFTPHONE_OUTPUT": "9"})
    assert from_env.exit_code == ExitCode.USAGE, from_env.output
    assert from_env.stderr.startswith("softphone: SOFTPHONE_OUTPUT='9': no single device")
    typed = run("--config", str(config), "devices", "--input", "8")
    assert typed.stderr.startswith("softphone: --input '8': no single device"), typed.output


# ------------------------------------------------ Ctrl-C at start-up ---

#: What ``call nobody`` prints once the hub has answered (exit 6 from then on).
OFFLINE = "nobody is offline"


def a_call(hub: Hub, *python: str) -> Proc:
    """``softphone call nobody`` through ``hub`` (``python``: interpreter options, to run
    it as ``python OPTIONS -m softphone``)."""
    args = ("call", "nobody", "--as", "ci", "--server", hub_url(hub), "--no-audio",
            "--ice-server", "none")
    return Proc(*args, argv=[sys.executable, *python, "-m", "softphone", *args]
                if python else None)


async def cleanly_ended(proc: Proc) -> int:
    """Its exit code, once it has ended without a traceback or click's "Aborted!"."""
    code = await proc.wait(30)
    for bad in ("Traceback", "KeyboardInterrupt", "Aborted!"):
        assert bad not in proc.stdout + proc.stderr, proc.describe()
    return code


def call_code(proc: Proc) -> int:
    """A Ctrl-C before the hub answered cancels the call (10); after it said the callee
    is offline, that is the outcome (6)."""
    return ExitCode.OFFLINE if OFFLINE in proc.stdout else ExitCode.CANCELLED


async def test_ctrl_c_while_the_cli_is_imported_cancels_the_call(hub: Hub,
                                                                  procs: list[Proc]) -> None:
    """SIGINT while the CLI's own modules load, just after the package's (``-X
    importtime`` says when): Python's default handler would end in a traceback. (The
    package's own imports, before softphone.cli.entry runs, are not covered.)"""
    proc = a_call(hub, "-X", "importtime")
    procs.append(proc)
    await proc.wait_for_output(" softphone.cli\n", stderr=True)
    await asyncio.sleep(0.03)  # (softphone.cli.entry is running: the CLI loads)
    proc.signal()
    code = await cleanly_ended(proc)
    assert code == call_code(proc), proc.describe()


def test_the_entry_point_loads_nothing_before_it_takes_ctrl_c() -> None:
    """The ``softphone`` script imports ``softphone.cli.entry`` and calls it; what Python
    imports on the way (the package, ``softphone.cli``) is all the time a Ctrl-C still
    gives Python's own traceback. It loads no other module of ours (it loaded the call
    machine: 60 ms)."""
    code = ("import sys, softphone.cli.entry; "
            "print(sorted(m for m in sys.modules if m.startswith('softphone')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == str(["softphone", "softphone.cli",
                               "softphone.cli.entry", "softphone.core",
                               "softphone.core.version"]), out


@pytest.mark.parametrize("delay", [0.3, 0.5])
async def test_ctrl_c_early_in_a_call_is_cancelled(hub: Hub, procs: list[Proc],
                                                   delay: float) -> None:
    """Options, config, devices, the event loop starting: exit 10, not "Aborted!" (1)."""
    proc = a_call(hub)
    procs.append(proc)
    await asyncio.sleep(delay)
    proc.signal()
    code = await cleanly_ended(proc)
    assert code == call_code(proc), proc.describe()


@pytest.mark.parametrize("after", [0.0, 0.05, 0.1, 0.2])
async def test_ctrl_c_after_the_outcome_keeps_its_code(hub: Hub, procs: list[Proc],
                                                       after: float) -> None:
    """Once "nobody is offline" is out, Ctrl-C while the command ends (its loop
    closing, Python finishing) leaves exit 6: not death by the signal."""
    proc = a_call(hub)
    procs.append(proc)
    await proc.wait_for_output(OFFLINE, within=30)
    await asyncio.sleep(after)
    proc.signal()
    assert await cleanly_ended(proc) == ExitCode.OFFLINE, proc.describe()


async def test_ctrl_c_while_listen_once_starts_is_130(hub: Hub, procs: list[Proc]) -> None:
    args = ("listen", "--as", "ci", "--once", "--server", hub_url(hub), "--no-audio")
    proc = Proc(*args, argv=[sys.executable, "-X", "importtime", "-m", "softphone", *args])
    procs.append(proc)
    await proc.wait_for_output(" softphone.cli\n", stderr=True)
    await asyncio.sleep(0.03)  # (softphone.cli.entry is running: the CLI loads)
    proc.signal()
    assert await cleanly_ended(proc) == ExitCode.INTERRUPTED


@pytest.mark.parametrize(("args", "code"), [
    (["call", "bob"], ExitCode.CANCELLED),
    (["-v", "--config", "call", "listen", "--once"], ExitCode.INTERRUPTED),
    (["listen", "--as", "b"], ExitCode.COMPLETED),
    (["serve"], ExitCode.INTERRUPTED),
    ([], ExitCode.INTERRUPTED),
])
def test_the_code_of_a_ctrl_c_before_anything_happened(args: list[str], code: int) -> None:
    from softphone.cli.entry import interrupted_code

    assert interrupted_code(args) == code
