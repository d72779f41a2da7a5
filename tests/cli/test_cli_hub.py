"""The command line in-process (click's CliRunner) against a real hub in a thread.

Outcomes that need a hub but not a second process: offline, hub unreachable,
tokens, and calls whose other end is a :class:`Phone` on the hub's loop
(real aiortc peers, real sockets; the audio is checked, not only the codes).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

from softphone import CallResult, ExitCode, Outcome, Phone, RecorderSink, ToneSource
from softphone.hub.auth import mint_token
from softphone.hub.server import HubConfig

from ..support.helpers import assert_wav_tone
from .conftest import ThreadHub, invoke

SECRET = "s" * 32


#: Host candidates only. With the hub's (empty) list instead, a call that ends
#: at once (offline) may leave its ICE gathering's UDP socket open, which warns
#: here, in-process (a client bug, reported; a process exiting hides it).
NO_STUN = ("--ice-server", "none")


def test_call_to_an_offline_id(thread_hub: ThreadHub) -> None:
    result = invoke("call", "ghost", "--as", "a", "--server", thread_hub.url, "--json",
                    "--no-audio", *NO_STUN)
    assert result.exit_code == 6, result.output  # ExitCode.OFFLINE
    end = json.loads(result.stdout.splitlines()[-1])
    assert end["event"] == "ended" and end["outcome"] == "offline" and end["exit_code"] == 6
    assert "ghost is offline" in result.stderr  # with --json the human lines go to stderr


def test_call_with_the_id_and_hub_from_the_environment(thread_hub: ThreadHub) -> None:
    result = invoke("call", "ghost", "--no-audio", *NO_STUN,
                    env={"SOFTPHONE_SERVER": thread_hub.url, "SOFTPHONE_ID": "envy"})
    assert result.exit_code == ExitCode.OFFLINE, result.output
    assert f"calling ghost as envy via {thread_hub.url}" in result.stdout


def test_call_an_unreachable_hub() -> None:
    result = invoke("call", "b", "--as", "a", "--server", "http://127.0.0.1:9", "--json",
                    "--no-audio")
    assert result.exit_code == 7, result.output  # ExitCode.HUB_UNREACHABLE
    assert "cannot reach the hub" in result.stderr
    end = json.loads(result.stdout.splitlines()[-1])
    assert end["outcome"] == "hub-unreachable" and end["exit_code"] == 7
    assert "Traceback" not in result.output


def test_listen_to_an_unreachable_hub() -> None:
    result = invoke("listen", "--as", "b", "--server", "http://127.0.0.1:9", "--no-audio")
    assert result.exit_code == ExitCode.HUB_UNREACHABLE, result.output
    # (the reason, not aiohttp's internals: "Cannot connect to host ... ssl:default [...]")
    assert "cannot reach the hub at http://127.0.0.1:9: connection refused" in result.stdout


def test_token_lets_its_id_in_and_no_other() -> None:
    hub = ThreadHub(HubConfig(ice_servers=[], secret=SECRET)).start()
    try:
        minted = invoke("token", "--as", "a", "--secret", SECRET, "--ttl", "5m")
        assert minted.exit_code == 0, minted.output
        token = minted.stdout.strip()
        args = ("call", "ghost", "--as", "a", "--server", hub.url, "--no-audio", *NO_STUN)
        # Let in: the call reaches the hub, which says ghost is not there.
        assert invoke(*args, "--token", token).exit_code == ExitCode.OFFLINE
        assert invoke(*args, env={"SOFTPHONE_TOKEN": token}).exit_code == ExitCode.OFFLINE
        for bad in (mint_token(SECRET, "b", time.time()),  # another id's
                    mint_token(SECRET, "a", time.time() - 7200, 60)):  # expired
            refused = invoke(*args, "--token", bad)
            assert refused.exit_code == 11, refused.output  # ExitCode.REFUSED
            assert "the hub refused us: unauthorized" in refused.stdout
        no_token = invoke(*args)
        assert no_token.exit_code == ExitCode.REFUSED, no_token.output
    finally:
        hub.stop()


def test_call_a_phone_and_hear_each_other(thread_hub: ThreadHub, tmp_path: Path) -> None:
    """`softphone call` (this thread) with a Phone answering on the hub's loop."""
    heard_by_cli, heard_by_phone = tmp_path / "cli.wav", tmp_path / "phone.wav"

    async def answer() -> CallResult:
        async with Phone("b", thread_hub.url, ice_servers=[]) as phone:
            answered.set_result(None)
            incoming = await phone.next_call()
            await incoming.accept(ToneSource(660), [RecorderSink(heard_by_phone)])
            return await incoming.ended()

    answered: asyncio.Future[None] = thread_hub.loop.create_future()
    phone_side = thread_hub.submit(answer())
    thread_hub.run(asyncio.wait_for(answered, 10))
    result = invoke("call", "b", "--as", "a", "--server", thread_hub.url, "--tone", "440",
                    "--record", str(heard_by_cli), "--duration", "2.5", "--no-audio",
                    "--bitrate", "32", "--json")
    assert result.exit_code == ExitCode.COMPLETED, result.output
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["state"] for e in events if e["event"] == "state"] == \
        ["dialing", "connecting", "connected", "ended"]
    assert events[-1]["outcome"] == "completed" and events[-1]["reason"] == "duration"
    assert "connected to b" in result.stderr and "call completed with b" in result.stderr
    assert phone_side.result(10).outcome is Outcome.COMPLETED
    assert_wav_tone(heard_by_cli, 660, what="the CLI heard")
    assert_wav_tone(heard_by_phone, 440, what="the phone heard")


def test_listen_echo_sends_the_callers_audio_back(thread_hub: ThreadHub,
                                                  tmp_path: Path) -> None:
    """`softphone listen --echo --once` (this thread) called by a Phone on the hub's loop."""
    echoed = tmp_path / "echoed.wav"

    async def call_the_echo() -> CallResult:
        try:
            registry = thread_hub.hub.registry
            for _ in range(200):  # until `listen` is on the hub
                if registry.holder("echo") is not None:  # type: ignore[attr-defined]
                    break
                await asyncio.sleep(0.05)
            async with Phone("me", thread_hub.url, ice_servers=[]) as phone:
                call = await phone.dial("echo", ToneSource(523), [RecorderSink(echoed)])
                await asyncio.wait_for(call.connected(), 15)
                await asyncio.sleep(3)
                await call.hangup()
                return await call.ended()
        except BaseException:
            os.kill(os.getpid(), signal.SIGINT)  # `listen` hangs up and exits: no hang
            raise

    caller = thread_hub.submit(call_the_echo())
    result = invoke("listen", "--as", "echo", "--server", thread_hub.url, "--auto-accept",
                    "--once", "--echo", "--no-audio")
    assert caller.result(10).outcome is Outcome.COMPLETED
    assert result.exit_code == ExitCode.COMPLETED, result.output
    assert "incoming call from me: accepting" in result.stdout
    assert_wav_tone(echoed, 523, skip=1.0, what="the echo")


# ------------------------------------------------------- the config file ---


def test_call_with_everything_from_the_config_file(tmp_path: Path) -> None:
    """`softphone call ghost` and nothing else: hub, id, token (a file), ICE and audio
    from the config file; a flag still beats the file."""
    hub = ThreadHub(HubConfig(ice_servers=[], secret=SECRET)).start()
    try:
        token = tmp_path / "alice.token"
        token.write_text(mint_token(SECRET, "alice", time.time()) + "\n")
        token.chmod(0o600)
        config = tmp_path / "config.toml"
        config.write_text(f'server = "{hub.url}"\nid = "alice"\ntoken_file = "alice.token"\n'
                          '[ice]\nservers = ["none"]\n[audio]\nno_audio = true\n')
        env = {"SOFTPHONE_CONFIG": str(config)}
        result = invoke("call", "ghost", env=env)
        assert result.exit_code == ExitCode.OFFLINE, result.output
        assert f"calling ghost as alice via {hub.url}" in result.stdout
        assert result.stderr == ""  # no warning: the token file is private
        # the token in the file is alice's: as bob, the hub refuses it ...
        refused = invoke("call", "ghost", "--as", "bob", env=env)
        assert refused.exit_code == ExitCode.REFUSED, refused.output
        # ... unless a token typed on the command line replaces it
        bobs = mint_token(SECRET, "bob", time.time())
        let_in = invoke("call", "ghost", "--as", "bob", "--token", bobs, env=env)
        assert let_in.exit_code == ExitCode.OFFLINE, let_in.output
    finally:
        hub.stop()


def test_token_from_a_secret_file(tmp_path: Path) -> None:
    from softphone.hub.auth import verify_token

    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    config = tmp_path / "hub.toml"
    config.write_text(f'[serve]\nsecret_file = "{secret}"\n')
    for args, env in ((["--secret-file", str(secret)], {}),
                      ([], {"SOFTPHONE_SECRET_FILE": str(secret)}),
                      ([], {"SOFTPHONE_CONFIG": str(config)})):
        minted = invoke("token", "--as", "alice", *args, env=env)
        assert minted.exit_code == 0, minted.output
        verify_token(SECRET, minted.stdout.strip(), "alice", time.time())  # or AuthError
