"""The command line in-process (click's CliRunner): help, bad input, clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from softphone import __version__
from softphone.cli.main import main


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        result.exc_info
    return result.exit_code, result.output


def test_help_lists_commands_and_exit_codes() -> None:
    code, out = run("--help")
    assert code == 0
    for command in ("serve", "call", "listen", "demo"):
        assert command in out
    code, out = run("call", "--help")
    assert code == 0
    assert "Exit codes" in out and "no-answer" in out and "media-failed" in out


def test_version() -> None:
    assert run("--version") == (0, f"softphone, version {__version__}\n")


def test_python_dash_m() -> None:
    out = subprocess.run([sys.executable, "-m", "softphone", "--version"],
                         capture_output=True, text=True, check=True)
    assert __version__ in out.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["call", "b"], "Missing option '--as'"),
    (["call", "b", "--as", "bad id"], "use 1 to 64 characters"),
    (["call", "b c", "--as", "a"], "use 1 to 64 characters"),
    (["call", "a", "--as", "a"], "cannot call yourself"),
    (["call", "b", "--as", "a", "--server", "ftp://x"], "invalid hub URL"),
    (["call", "b", "--as", "a", "--server", "http://h:99999"], "invalid port"),
    (["call", "b", "--as", "a", "--play", "/nonexistent.wav"], "no such file"),
    (["call", "b", "--as", "a", "--tone", "5"], "outside 20.."),
    (["call", "b", "--as", "a", "--tone", "440", "--play", "x.wav"], "either --play or --tone"),
    (["call", "b", "--as", "a", "--duration", "0"], "greater than 0"),
    (["call", "b", "--as", "a", "--ring-timeout", "-1"], "greater than 0"),
    (["call", "b", "--as", "a", "--ice-server", "http://x"], "not a stun: or turn: URL"),
    (["listen"], "Missing option '--as'"),
    (["listen", "--as", "b", "--play", "/nonexistent.wav"], "no such file"),
    (["serve", "--port", "70000"], "70000"),
])
def test_bad_input_is_a_usage_error(args: list[str], message: str) -> None:
    code, out = run(*args)
    assert code == 2
    assert message in out
    assert "Traceback" not in out


def test_play_a_file_that_is_not_audio(tmp_path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    code, out = run("call", "b", "--as", "a", "--play", str(bad))
    assert code == 2
    assert "cannot decode audio" in out or "no audio" in out


def test_record_to_an_unwritable_path(tmp_path) -> None:
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
