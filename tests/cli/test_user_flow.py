"""What a person meets at the edges of ``call`` and ``listen``: Ctrl-C while the
hub has not answered yet, declining a call (with ``n`` or Ctrl-C), answers piped
in or no stdin at all, a hub that turns us away, and --record files (a bad
template, a folder that cannot be written, later calls, odd peer ids).

Real hubs on real sockets; the calls are ``softphone`` subprocesses.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import aiohttp
import pytest

from softphone import ExitCode
from softphone.cli.recordings import file_safe, record_path
from softphone.hub.server import Hub, HubConfig

from ..conftest import hub_url
from ..support.helpers import Proc
from .conftest import ThreadHub, invoke, silent_server

NO_STUN = ("--ice-server", "none")


async def listening(procs: list[Proc], hub: Hub, client_id: str, *extra: str,
                    stdin: bool = False) -> Proc:
    p = Proc("listen", "--as", client_id, "--server", hub_url(hub), "--no-audio", *NO_STUN,
             *extra, stdin=stdin)
    procs.append(p)
    await p.wait_for_output("listening as")
    return p


def calling(procs: list[Proc], hub: Hub, callee: str, caller: str, *extra: str) -> Proc:
    p = Proc("call", callee, "--as", caller, "--server", hub_url(hub), "--no-audio",
             *NO_STUN, *extra)
    procs.append(p)
    return p


# ---------------------------------------------------- Ctrl-C while connecting ---

@pytest.mark.parametrize(("command", "code", "said"), [
    (("call", "b"), ExitCode.CANCELLED, "call cancelled before audio connected"),
    (("listen",), ExitCode.COMPLETED, ""),
    (("listen", "--once"), ExitCode.INTERRUPTED, ""),
], ids=["call", "listen", "listen-once"])
async def test_ctrl_c_while_the_hub_does_not_answer(procs: list[Proc], command: tuple[str, ...],
                                                   code: int, said: str) -> None:
    """A hub that takes the connection and never answers: Ctrl-C ends the wait at
    once, with the code Ctrl-C has at that stage (not 7 some 15 s later)."""
    async with silent_server() as (port, accepted):
        p = Proc(*command, "--as", "a", "--server", f"http://127.0.0.1:{port}", "--no-audio",
                 *NO_STUN)
        procs.append(p)
        await asyncio.wait_for(accepted.wait(), 15)
        await asyncio.sleep(0.3)
        p.signal(signal.SIGINT)
        assert await p.wait(within=3) == code, p.describe()
        if said:  # (listen says nothing more: it just ends)
            assert said in p.stdout, p.describe()
        assert "cannot reach the hub" not in p.stdout
        assert "Traceback" not in p.stderr


# ------------------------------------------------------------ declining ---

async def test_declining_is_said_as_ours(hub: Hub, procs: list[Proc]) -> None:
    b = await listening(procs, hub, "b", "--once", stdin=True)
    a = calling(procs, hub, "b", "a")
    await b.wait_for_output("accept? [y/n]")
    b.send("n\n")
    assert await a.wait() == ExitCode.REJECTED
    assert "b rejected the call (declined)" in a.stdout
    assert await b.wait() == ExitCode.REJECTED
    assert "declined the call from a" in b.stdout
    assert "a rejected the call" not in b.stdout


async def test_ctrl_c_at_the_prompt_declines_and_exits_as_ctrl_c(hub: Hub,
                                                                procs: list[Proc]) -> None:
    b = await listening(procs, hub, "b", "--once", stdin=True)
    a = calling(procs, hub, "b", "a")
    await b.wait_for_output("accept? [y/n]")
    b.signal(signal.SIGINT)
    assert await b.wait() == ExitCode.INTERRUPTED, b.describe()
    assert "declined the call from a" in b.stdout
    assert await a.wait() == ExitCode.REJECTED
    assert "b rejected the call (interrupted)" in a.stdout


# ------------------------------------------------------------ stdin ---

async def test_closed_stdin_is_said_and_the_call_rings_out(hub: Hub,
                                                          procs: list[Proc]) -> None:
    b = await listening(procs, hub, "b", "--once")  # stdin: /dev/null
    a = calling(procs, hub, "b", "a", "--ring-timeout", "2")
    await b.wait_for_output("stdin closed: cannot ask; use --auto-accept")
    assert await a.wait() == ExitCode.NO_ANSWER
    assert await b.wait() == ExitCode.MISSED


async def test_an_answer_piped_before_the_call_is_used(hub: Hub, procs: list[Proc]) -> None:
    b = await listening(procs, hub, "b", "--once", stdin=True)
    b.send("y\n")  # piped ahead, before anyone calls
    await asyncio.sleep(0.5)
    a = calling(procs, hub, "b", "a", "--duration", "1")
    assert await a.wait() == ExitCode.COMPLETED, a.describe()
    assert await b.wait() == ExitCode.COMPLETED, b.describe()
    assert "please answer" not in b.stdout


async def test_a_late_answer_to_a_caller_who_gave_up_does_not_answer_the_next(
        hub: Hub, procs: list[Proc]) -> None:
    """The "y" written after the first caller gave up was meant for that call: the
    next caller is asked again, not answered with it."""
    b = await listening(procs, hub, "b", stdin=True)
    a = calling(procs, hub, "b", "a", "--ring-timeout", "1")
    await b.wait_for_output("incoming call from a: accept? [y/n]")
    assert await a.wait() == ExitCode.NO_ANSWER, a.describe()
    await b.wait_for_output("missed")
    b.send("y\n")  # too late for a
    await asyncio.sleep(0.5)
    c = calling(procs, hub, "b", "c", "--ring-timeout", "3")
    await b.wait_for_output("incoming call from c: accept? [y/n]")
    assert "ignored 'y': it came after the call from a had ended" in b.stdout, b.describe()
    b.send("n\n")
    assert await c.wait() == ExitCode.REJECTED, c.describe()
    assert "b rejected the call (declined)" in c.stdout


# ------------------------------------------------------------ refusal ---

@pytest.mark.parametrize("full", ["address", "total"])
def test_a_hub_full_for_our_address_is_a_refusal(full: str) -> None:
    """Too many connections from our address: said, no retrying (exit 11). A hub full
    in total (same error code, "the hub is full") is not ours to fix: as before, the
    phone tries again and the call reports the hub lost (exit 7)."""
    hub = ThreadHub(HubConfig(ice_servers=[], max_per_address=1) if full == "address"
                    else HubConfig(ice_servers=[], max_connections=1)).start()

    async def occupy() -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
        session = aiohttp.ClientSession()
        return session, await session.ws_connect(f"{hub.url}/ws?id=q1")

    session, ws = hub.run(occupy())
    try:
        result = invoke("call", "q1", "--as", "q2", "--server", hub.url, "--no-audio",
                        *NO_STUN)
        if full == "total":
            assert result.exit_code == ExitCode.HUB_UNREACHABLE, result.output
            assert "refused" not in result.stdout, result.output
            return
        assert result.exit_code == ExitCode.REFUSED, result.output
        assert "the hub refused us: too many connections from this address" in result.stdout
        assert "lost the hub" not in result.stdout
        listened = invoke("listen", "--as", "q3", "--server", hub.url, "--no-audio")
        assert listened.exit_code == ExitCode.REFUSED, listened.output
        assert "the hub refused us: too many connections from this address" in listened.stdout
    finally:
        hub.run(ws.close())
        hub.run(session.close())
        hub.stop()


# ------------------------------------------------------------ --record ---

@pytest.mark.parametrize("template", ["{bogus}.wav", "{peer", "x}{peer}.wav", "{0}.wav"])
def test_a_bad_record_template_is_a_usage_error_at_start(template: str) -> None:
    for command in (("listen", "--auto-accept"), ("call", "b")):
        result = invoke(*command, "--as", "x", "--server", "http://127.0.0.1:9",
                        "--no-audio", "--record", template)
        assert result.exit_code == 2, result.output
        assert "--record" in result.output and "{peer}, {n} and {time}" in result.output
        assert "Traceback" not in result.output


@pytest.mark.parametrize("record", ["/proc/nodir/{peer}.wav", "/proc/nodir/x.wav"])
def test_an_unwritable_record_folder_fails_at_start(record: str) -> None:
    result = invoke("listen", "--as", "x", "--server", "http://127.0.0.1:9", "--no-audio",
                    "--auto-accept", "--record", record)
    assert result.exit_code == ExitCode.ERROR, result.output
    assert f"softphone: cannot record to {record}: cannot write in /proc" in result.output
    assert "listening" not in result.output and "cannot reach" not in result.output


def test_record_paths_keep_every_call_and_stay_in_their_folder(tmp_path: Path) -> None:
    used: set[str] = set()
    names = []
    for n, (record, peer) in enumerate([("calls.wav", "a"), ("calls.wav", "b"),
                                        ("calls.wav", "c"), ("rec/{peer}.wav", "a"),
                                        ("rec/{peer}.wav", "a"), ("noext", "a"),
                                        ("noext", "a")], 1):
        names.append(record_path(record, peer, n, used))
        used.add(names[-1])
    assert names == ["calls.wav", "calls-2.wav", "calls-3.wav", "rec/a.wav", "rec/a-5.wav",
                     "noext", "noext-7"]
    assert file_safe(".") == "%2E" and file_safe("..") == "%2E%2E"
    assert file_safe("...x") == "...x" and file_safe("a.b") == "a.b"
    assert record_path("rec/{peer}/msg-{n}.wav", "..", 1, set()) == "rec/%2E%2E/msg-1.wav"
    # The original hub forwards any id: no separator or escape reaches the file name.
    assert file_safe("../x") == "..%2Fx" and file_safe("a\\b") == "a%5Cb"
    assert file_safe("x\x1b[31mRED") == "x%1B%5B31mRED" and file_safe("é") == "%C3%A9"
    assert record_path("rec/{peer}.wav", "../../etc/x", 1, set()) == "rec/..%2F..%2Fetc%2Fx.wav"


async def test_listen_records_each_call_and_keeps_peers_in_the_folder(
        hub: Hub, procs: list[Proc], tmp_path: Path) -> None:
    template = str(tmp_path / "rec" / "{peer}" / "msg.wav")
    b = await listening(procs, hub, "b", "--auto-accept", "--record", template)
    for _ in range(2):
        a = calling(procs, hub, "b", "..", "--duration", "1", "--tone", "440")
        assert await a.wait() == ExitCode.COMPLETED, a.describe()
        await b.wait_for_output("call completed with ..")
    b.signal(signal.SIGINT)
    assert await b.wait() == 0, b.describe()
    folder = tmp_path / "rec" / "%2E%2E"
    assert sorted(p.name for p in folder.iterdir()) == ["msg-2.wav", "msg.wav"]
    assert not (tmp_path / "msg.wav").exists()
    assert all((folder / name).stat().st_size > 10_000 for name in ("msg.wav", "msg-2.wav"))


# ------------------------------------------------------------ the hub goes ---

async def test_a_hub_restart_is_said_in_two_plain_lines(procs: list[Proc]) -> None:
    """The hub stops and comes back on its port: listen says it lost the hub and is
    back, each once, in its own words (no timestamped log line), and --json has the
    ``hub`` events."""
    hub = Hub(HubConfig(ice_servers=[]))
    await hub.start("127.0.0.1", 0)
    port = hub.port
    try:
        plain = await listening(procs, hub, "b")
        scripted = Proc("listen", "--as", "c", "--server", hub_url(hub), "--no-audio",
                        *NO_STUN, "--json")
        procs.append(scripted)
        await scripted.wait_for_output('"event":"listening"')
        await hub.stop()
        await plain.wait_for_output("lost the hub connection (code")
        hub = Hub(HubConfig(ice_servers=[]))
        await hub.start("127.0.0.1", port)
        await plain.wait_for_output("reconnected to the hub", within=15)
        await scripted.wait_for_output('"event":"hub","connected":true', within=15)
        lines = plain.stdout.splitlines()  # (before the hub stops again)
    finally:
        await hub.stop()
    assert sum(line.startswith("lost the hub connection (code") and
               line.endswith("), reconnecting") for line in lines) == 1, plain.describe()
    assert lines.count("reconnected to the hub") == 1, plain.describe()
    assert "WARNING" not in plain.stderr and "Traceback" not in plain.stderr, plain.describe()
    hub_events = [json.loads(line) for line in scripted.stdout.splitlines()
                  if '"event":"hub"' in line]
    assert [e["connected"] for e in hub_events][:2] == [False, True], scripted.describe()
