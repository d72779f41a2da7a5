"""The command line in-process (click's CliRunner): help, bad input, clear errors."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from softphone import EXIT_CODES, ExitCode, Outcome, __version__
from softphone.cli.main import main

README = Path(__file__).resolve().parents[2] / "README.md"


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        result.exc_info
    return result.exit_code, result.output


def test_help_lists_commands_and_exit_codes() -> None:
    from softphone.cli.runtime import OWN_CODES

    code, out = run("--help")
    assert code == 0
    for command in ("serve", "call", "listen", "demo", "doctor", "config", "completion",
                    "token", "devices"):
        assert f"\n  {command} " in out, command
    for command in ("call", "listen"):
        code, out = run(command, "--help")
        assert code == 0
        assert "Exit codes" in out and "no-answer" in out and "media-failed" in out
        listed = {int(n) for n in re.findall(r"^ +(\d+)  [a-z-]+: ", out, re.MULTILINE)}
        assert listed == {int(c) for c in ExitCode if c not in OWN_CODES}, out
    code, out = run("serve", "--help")
    assert "12  redis-unavailable" in out
    code, out = run("doctor", "--help")
    assert "13  a check a call needs failed" in out and "0  a call can be made" in out


def test_exit_codes_are_one_enum() -> None:
    """ExitCode holds every code; EXIT_CODES (outcome -> code) is made from it."""
    assert set(EXIT_CODES) == set(Outcome)
    for outcome, code in EXIT_CODES.items():
        assert code is ExitCode.for_outcome(outcome)
        assert code.name.lower().replace("_", "-") == outcome.value
    assert (ExitCode.ERROR, ExitCode.USAGE, ExitCode.REFUSED) == (1, 2, 11)
    assert (ExitCode.REDIS_UNAVAILABLE, ExitCode.DOCTOR_FAILED, ExitCode.INTERRUPTED) == \
        (12, 13, 130)
    assert all(code.meaning for code in ExitCode)


def test_readme_lists_the_same_exit_codes() -> None:
    table = README.read_text().split("### Exit codes", 1)[1].split("\n### ", 1)[0]
    documented = {int(n) for n in re.findall(r"^\| (\d+) \|", table, re.MULTILINE)}
    assert documented == {int(c) for c in ExitCode}


def test_version() -> None:
    assert run("--version") == (0, f"softphone, version {__version__}\n")


def test_serve_says_its_version_when_it_starts() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "softphone", "serve", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert re.match(rf"softphone hub {re.escape(__version__)} listening on "
                    r"http://127\.0\.0\.1:\d+ \(Ctrl-C to stop\)$", line), line + err
    assert proc.returncode == 0 and "hub stopped" in out


def served_ice_urls(serve_args: tuple[str, ...], *, config: Path | None = None,
                    env: dict[str, str] | None = None) -> list[str]:
    """``softphone serve --port 0 SERVE_ARGS`` in a process of its own (with
    ``--config CONFIG``): the URLs its /ice-servers hands out."""
    import json
    import os
    import urllib.request

    environ = {k: v for k, v in os.environ.items() if not k.startswith("SOFTPHONE_")}
    before = ("--config", str(config)) if config is not None else ()
    proc = subprocess.Popen([sys.executable, "-m", "softphone", *before, "serve", "--port",
                             "0", *serve_args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**environ, **(env or {})})
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        found = re.search(r"listening on http://127\.0\.0\.1:(\d+) ", line)
        if not found:
            proc.kill()
            raise AssertionError(line + proc.communicate(timeout=20)[1])
        with urllib.request.urlopen(f"http://127.0.0.1:{found.group(1)}/ice-servers?id=a",
                                    timeout=10) as resp:
            body = json.load(resp)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=20)
    return [entry["urls"] for entry in body["iceServers"]]


GOOGLE_STUN = "stun:stun.l.google.com:19302"
TURN_SECRET_ENV = {"SOFTPHONE_TURN_SECRET": "coturn-secret"}


@pytest.mark.parametrize(("args", "expected"), [
    ((), [GOOGLE_STUN]),  # nothing configured: the original's default
    (("--ice-server", "stun:192.0.2.1:3478"), ["stun:192.0.2.1:3478"]),
    (("--turn", "turn:192.0.2.1:3478"), ["turn:192.0.2.1:3478"]),  # no Google STUN
    (("--ice-server", "stun:192.0.2.1:3478", "--turn", "turn:192.0.2.1:3478"),
     ["stun:192.0.2.1:3478", "turn:192.0.2.1:3478"]),
], ids=["neither", "stun-only", "turn-only", "both"])
def test_serve_hands_out_exactly_the_ice_servers_given(args: tuple[str, ...],
                                                       expected: list[str]) -> None:
    """The hub process: Google's STUN only when no ICE server is configured at all."""
    assert served_ice_urls(args, env=TURN_SECRET_ENV if "--turn" in args else None) \
        == expected


@pytest.mark.parametrize(("table", "expected"), [
    ('turn_urls = ["turn:192.0.2.1:3478"]\n', ["turn:192.0.2.1:3478"]),
    ('ice_servers = ["stun:192.0.2.1:3478"]\nturn_urls = ["turn:192.0.2.1:3478"]\n',
     ["stun:192.0.2.1:3478", "turn:192.0.2.1:3478"]),
    ('ice_servers = ["none"]\n', []),
], ids=["turn-only", "both", "none"])
def test_serve_ice_servers_from_the_config_file(tmp_path: Path, table: str,
                                                expected: list[str]) -> None:
    """The [serve] table's turn_urls / ice_servers act like --turn / --ice-server."""
    config = tmp_path / "hub.toml"
    config.write_text('[serve]\nhost = "127.0.0.1"\n' + table)
    assert served_ice_urls((), config=config, env=TURN_SECRET_ENV if "turn" in table
                           else None) == expected


def test_python_dash_m() -> None:
    out = subprocess.run([sys.executable, "-m", "softphone", "--version"],
                         capture_output=True, text=True, check=True)
    assert __version__ in out.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["call", "b"], "Missing option '--as'. Give it, or set it once: softphone config set "
                    "id VALUE"),
    (["token", "--as", "a"], "Missing option '--secret'. Give it, or --secret-file FILE"),
    (["call", "b", "--as", "bad id"], "use 1 to 64 characters"),
    (["call", "b c", "--as", "a"], "use 1 to 64 characters"),
    (["call", "a", "--as", "a"], "cannot call yourself"),
    (["call", "b", "--as", "a", "--play", "/tmp/sp-same.wav", "--record", "/tmp/sp-same.wav"],
     "is the --play file"),
    (["call", "b", "--as", "a", "--server", "ftp://x"], "invalid hub URL"),
    (["call", "b", "--as", "a", "--server", "http://h:99999"], "invalid port"),
    (["call", "b", "--as", "a", "--tone", "30000"], "use 0 < HZ < 24000"),
    (["call", "b", "--as", "a", "--tone", "440", "--play", "x.wav"], "either --play or --tone"),
    (["call", "b", "--as", "a", "--duration", "0"], "greater than 0"),
    (["call", "b", "--as", "a", "--ring-timeout", "-1"], "greater than 0"),
    (["call", "b", "--as", "a", "--ice-server", "http://x"], "not a stun: or turn: URL"),
    (["listen"], "Missing option '--as'"),
    (["serve", "--port", "70000"], "70000"),
    # options that go together, or exclude each other (checked by the option groups)
    (["call", "b", "--as", "a", "--ca-file", "x.pem", "--insecure"],
     "either --ca-file or --insecure"),
    (["call", "b", "--as", "a", "--input", "x", "--no-audio"], "either --input or --no-audio"),
    (["call", "b", "--as", "a", "--output", "x", "--no-audio"],
     "either --output or --no-audio"),
    (["listen", "--as", "b", "--echo", "--tone", "440"], "not with --play/--tone"),
    (["serve", "--cert", "c.pem"], "--cert and --key go together"),
    (["serve", "--self-signed", "--cert", "c.pem", "--key", "k.pem"],
     "either --self-signed or --cert/--key"),
    (["serve", "--tls-dir", "/tmp"], "--tls-dir goes with --self-signed"),
    (["serve", "--turn-secret", "x"], "needs at least one --turn URL"),
    (["serve", "--node-id", "n1"], "--node-id goes with --redis"),
    (["serve", "--loop", "tokio"], "'tokio' is not one of"),
    # the config layer's checks of what was typed: usage errors too
    (["token", "--as", "a", "--secret", "x" * 40, "--secret-file", "/f"],
     "serve.secret: use either --secret or --secret-file, not both"),
])
def test_bad_input_is_a_usage_error(args: list[str], message: str) -> None:
    code, out = run(*args)
    assert code == ExitCode.USAGE
    assert message in out
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], out  # one line says what is wrong
    assert "Traceback" not in out


@pytest.mark.parametrize(("args", "message"), [
    (["call", "b", "--as", "a", "--play", "/nonexistent.wav"],
     "--play: /nonexistent.wav: no such file"),
    (["listen", "--as", "b", "--play", "/nonexistent.wav"],
     "--play: /nonexistent.wav: no such file"),
    (["call", "b", "--as", "a", "--ca-file", "/nonexistent.pem"],
     "--ca-file: cannot read /nonexistent.pem: no such file"),
    (["call", "b", "--as", "a", "--token-file", "/nonexistent/tok"],
     "--token-file: cannot read /nonexistent/tok: No such file or directory"),
    (["serve", "--turn-secret-file", "/nonexistent/t", "--turn", "turn:h"],
     "--turn-secret-file: cannot read /nonexistent/t"),
])
def test_a_file_that_cannot_be_read_is_an_error(args: list[str], message: str) -> None:
    """README's exit codes: 1 for a file that cannot be read (2: a malformed value)."""
    code, out = run(*args)
    assert code == ExitCode.ERROR, out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("softphone: "), out
    assert message in lines[0] and "Traceback" not in out


def test_play_a_file_that_is_not_audio(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    code, out = run("call", "b", "--as", "a", "--play", str(bad))
    assert code == ExitCode.ERROR  # (a file that cannot be read as audio)
    assert "cannot decode audio" in out or "no audio" in out


def test_record_to_an_unwritable_path(tmp_path: Path) -> None:
    code, out = run("call", "b", "--as", "a", "--record", str(tmp_path / "no" / "dir.wav"),
                    "--server", "http://127.0.0.1:9")
    assert code == 1
    assert "cannot record to" in out


def test_serve_on_a_busy_port() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, out = run("serve", "--port", str(port))
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in out


def test_serve_takes_its_options_from_the_config_file(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        config = tmp_path / "hub.toml"
        config.write_text(f'[serve]\nhost = "127.0.0.1"\nport = {port}\nloop = "asyncio"\n')
        code, out = run("--config", str(config), "serve")
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in out


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_serve_on_a_busy_port_with_either_loop(loop: str) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, out = run("serve", "--loop", loop, "--port", str(port))
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in out


def test_serve_loop_choice() -> None:
    import uvloop

    from softphone.cli.main import event_loop_factory

    assert event_loop_factory("asyncio") is None
    assert event_loop_factory("auto") is uvloop.new_event_loop
    assert event_loop_factory("uvloop") is uvloop.new_event_loop


def test_serve_without_uvloop_falls_back_to_asyncio() -> None:
    code = ("import sys; sys.modules['uvloop'] = None; "
            "from softphone.cli.main import event_loop_factory; "
            "assert event_loop_factory('auto') is None; "
            "event_loop_factory('uvloop')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "uvloop is not installed" in out.stderr


def test_missing_opus_library_is_one_clear_line() -> None:
    code = ("import sys; sys.modules['opuslib_next'] = None; "
            "from softphone.cli.main import main; main(['demo', '--seconds', '1'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == \
        "softphone: opuslib-next is not installed: pip install opuslib-next"
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(("command", "verbose", "plain"), [
    ("call", 0, True), ("listen", 0, True), ("serve", 0, False), ("call", 1, False)])
def test_a_library_warning_reads_as_the_cli_s_own_line(command: str, verbose: int,
                                                      plain: bool) -> None:
    """At a phone command's terminal a warning is ``softphone: warning: ...`` (no
    timestamp, no module); the hub's log and -v keep the full format."""
    import subprocess
    import sys

    code = ("import logging\nfrom softphone.cli.main import setup_logging\n"
            f"setup_logging({verbose}, {command!r})\n"
            "logging.getLogger('softphone.client.phone').warning('the hub is far away')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    if plain:
        assert done.stderr == "softphone: warning: the hub is far away\n"
    else:
        assert done.stderr.endswith(
            " WARNING softphone.client.phone: the hub is far away\n"), done.stderr
