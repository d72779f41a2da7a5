"""Option values checked when they are given: one clear line and exit 2, not a
failure later (a call that cannot start, a hub handing out what no phone can use).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from softphone.cli.doctor import report_lines
from softphone.cli.doctor_ice import ice_checks
from softphone.cli.main import main
from softphone.core.callstate import ExitCode
from softphone.core.iceurl import check_ice_url, parse_ice_url


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        result.exc_info
    return result


def usage_error(result: Result) -> str:
    """The one line of a usage error (exit 2, no traceback)."""
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "Traceback" not in result.output
    return result.output


# --------------------------------------------------------- ICE URLs ---

BAD_ICE = ["stun:", "stun:x:99999", "stun:host:abc", "stun:h:0", "stun:h:+5", "turn:",
           "stuns:h?transport=udp", "turn:h?transport=sctp", "turn:h?foo=bar",
           "stun:[::1]:3478", "stun:user@host", "stun:h:1:2", "garbage", "http://h"]
GOOD_ICE = ["stun:stun.l.google.com:19302", "stun:h", "stuns:h:5349", "turn:h",
            "turn:10.0.0.1:3478?transport=tcp", "turns:h:443?transport=tcp"]


@pytest.mark.parametrize("url", BAD_ICE)
def test_bad_ice_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"^'"):
        check_ice_url(url)


@pytest.mark.parametrize("url", GOOD_ICE)
def test_good_ice_url_is_taken(url: str) -> None:
    assert check_ice_url(url) == parse_ice_url(url)


def test_ice_url_parts() -> None:
    ice = check_ice_url("turns:h")
    assert (ice.scheme, ice.host, ice.port, ice.transport) == ("turns", "h", 5349, "tcp")
    assert check_ice_url("stun:h:1").port == 1
    with pytest.raises(ValueError, match="turn: or turns:"):
        check_ice_url("stun:h", turn_only=True)


@pytest.mark.parametrize("url", ["stun:", "stun:x:99999", "stun:host:abc"])
@pytest.mark.parametrize("command", [["call", "bob", "--as", "a"], ["listen", "--as", "b"],
                                     ["serve"], ["doctor"]])
def test_bad_ice_server_option_is_a_usage_error(command: list[str], url: str) -> None:
    out = usage_error(run(*command, "--ice-server", url, "--server", "http://127.0.0.1:1")
                      if command[0] != "serve" else run(*command, "--ice-server", url))
    assert f"--ice-server: {url!r}" in out


def test_bad_turn_ice_server_with_credentials_is_a_usage_error() -> None:
    out = usage_error(run("call", "bob", "--as", "a", "--ice-server", "turn:",
                          "--ice-username", "u", "--ice-credential", "p"))
    assert "'turn:': no host" in out


def test_bad_serve_turn_is_a_usage_error() -> None:
    out = usage_error(run("serve", "--turn", "turn:h:99999", "--turn-secret", "s" * 40))
    assert "'turn:h:99999': the port must be a number from 1 to 65535" in out


@pytest.mark.parametrize(("text", "key"), [
    ('[ice]\nservers = ["stun:"]\n', "ice.servers"),
    ('[serve]\nice_servers = ["stun:x:99999"]\n', "serve.ice_servers"),
    ('[serve]\nturn_urls = ["turn:h:abc"]\n', "serve.turn_urls"),
])
def test_bad_ice_url_in_the_config_file(tmp_path: Path, text: str, key: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    command = ["serve"] if key.startswith("serve") else ["call", "bob", "--as", "a"]
    result = run("--config", str(config), *command)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert f"{config}:2: {key}: '" in result.stderr


async def test_doctor_fails_a_malformed_url_from_the_hub() -> None:
    """aiortc refuses a whole list with one malformed URL: no call can be made."""
    results = await ice_checks([{"urls": "stun:"}], relay_only=False, wait=0.5)
    bad = results[0]
    assert bad.status == "fail" and "'stun:': no host" in bad.detail
    assert report_lines(results)[-1].startswith("a call cannot be made: ice-servers")


# ---------------------------------------------------------- libopus ---

# A machine without Debian's libopus0: PyAV's bundled copy is still there.
_NO_SYSTEM_OPUS = """
import ctypes.util, json, os
_f = ctypes.util.find_library
ctypes.util.find_library = lambda n: None if n == "opus" else _f(n)
_e = os.path.exists
os.path.exists = lambda p: False if "libopus.so" in str(p) and "av.libs" not in str(p) \\
    else _e(p)
from softphone.cli.doctor import check_libopus
r = check_libopus()
print(json.dumps({"ok": r.ok, "detail": r.detail, "data": dict(r.data)}))
"""


def test_doctor_reports_the_libopus_calls_use() -> None:
    from softphone.cli.doctor import check_libopus
    from softphone.media import libopus

    result = check_libopus()
    lib = libopus.load()
    assert result.ok and result.detail.startswith(f"{lib.version} loads")
    assert result.data["path"] == lib.path


def test_doctor_without_the_system_libopus() -> None:
    import json
    import subprocess
    import sys

    from softphone.media.libopus import bundled_path

    if bundled_path() is None:
        pytest.skip("PyAV bundles no libopus here")
    out = subprocess.run([sys.executable, "-c", _NO_SYSTEM_OPUS], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    got = json.loads(out.stdout)
    assert got["ok"] and got["data"]["bundled"], got


# ------------------------------------------------- serve and [serve] ---


def test_every_serve_option_has_its_config_key() -> None:
    """``serve --help``: every option may be set in [serve]; so each has a key there,
    with the same default."""
    import click

    from softphone.cli.config_options import OPTIONS
    from softphone.cli.serve import serve

    for param in serve.params:
        if not isinstance(param, click.Option) or param.name == "help":
            continue
        flag = param.opts[0]
        if getattr(param, "secret_file", False):
            found = [o for o in OPTIONS if o.secret and o.file_flag == flag
                     and "serve" in o.commands]
        else:
            found = [o for o in OPTIONS if o.flag == flag and "serve" in o.commands]
        assert found, f"serve {flag} has no [serve] key"
        if isinstance(param.default, (bool, int, float, str)):
            assert found[0].default == param.default, flag


def test_head_timeout_in_the_config_file(tmp_path: Path) -> None:
    import json

    config = tmp_path / "config.toml"
    config.write_text("[serve]\nhead_timeout = 5\n")
    result = run("--config", str(config), "--show-settings-json", "serve")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["settings"]["serve.head_timeout"]["value"] == 5.0
    assert shown["arguments"]["head_timeout"] == 5.0


# ------------------------------------------------------ help defaults ---


def test_bitrate_and_redundancy_defaults_are_the_code_ones() -> None:
    """What --help and the config table say is what a call does without them."""
    from softphone.cli.config_options import OPTIONS
    from softphone.core.adapt_config import OPUS_MAX_BITRATE
    from softphone.media.opus import EncoderSettings

    encoder = EncoderSettings()
    assert encoder.bitrate is None  # the adaptation's ceiling: Opus's maximum
    defaults = {"audio.bitrate": OPUS_MAX_BITRATE // 1000,
                "audio.redundancy": encoder.redundancy}
    assert {o.key: o.default for o in OPTIONS if o.key in defaults} == defaults
    for command in ("call", "listen"):
        out = " ".join(run(command, "--help").stdout.split())
        assert f"(default {OPUS_MAX_BITRATE // 1000}, Opus's maximum)" in out
        assert f"(default {encoder.redundancy})" in out
        assert "(default 128)" not in out


def test_serve_port_has_help() -> None:
    from softphone.cli.serve import serve

    for param in serve.params:
        if param.param_type_name == "option" and param.name != "help":
            assert getattr(param, "help", None), param.name


# ------------------------------------------------------------ token ---


@pytest.mark.parametrize("ttl", ["inf", "nan", "-inf", "1e400"])
def test_token_ttl_must_be_finite(ttl: str) -> None:
    out = usage_error(run("token", "--as", "a", "--secret", "s" * 40, "--ttl", ttl))
    assert "must be a finite number of seconds" in out


def test_a_ttl_is_at_least_a_second_and_turns_at_most_ten_years(tmp_path: Path) -> None:
    """A token's expiry is in whole seconds: under 1 s it was printed already expired;
    --turn-ttl 1e300 made a TURN username of 300 digits (the operator review)."""
    assert "at least 1 s" in usage_error(
        run("token", "--as", "a", "--secret", "s" * 40, "--ttl", "0.5"))
    assert run("token", "--as", "a", "--secret", "s" * 40, "--ttl", "1").exit_code == 0
    assert "at most 315360000 s (ten years)" in usage_error(run("serve", "--turn-ttl", "1e300"))
    config = tmp_path / "c.toml"
    config.write_text("[serve]\nturn_ttl = 1e300\n")
    result = run("--config", str(config), "--show-settings", "serve")
    assert result.exit_code == ExitCode.USAGE and result.stderr == (
        f"softphone: {config}:2: serve.turn_ttl: 1e+300 must be at most 3.1536e+08\n")


def test_token_ttl_zero() -> None:
    assert "'0': at least 1 s" in usage_error(
        run("token", "--as", "a", "--secret", "s" * 40, "--ttl", "0"))


@pytest.mark.parametrize(("ttl", "ok"), [("1e300", False), ("3651d", False),
                                         ("3650d", True), ("7d", True)])
def test_token_ttl_is_at_most_ten_years(ttl: str, ok: bool) -> None:
    result = run("token", "--as", "a", "--secret", "s" * 40, "--ttl", ttl)
    if ok:
        assert result.exit_code == 0, result.output
    else:
        assert "at most 3650d (ten years)" in usage_error(result)


# ----------------------------------------------------------- server ---


@pytest.mark.parametrize("server", ["not a url", "http://a b", "ws://a,b:1"])
def test_a_server_that_is_not_a_url_is_a_usage_error(server: str) -> None:
    out = usage_error(run("call", "bob", "--as", "a", "--server", server))
    assert f"{server!r} is not a hub URL: use http(s)://host:port or ws(s)://host:port" \
        in out


def test_a_server_that_is_not_a_url_in_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('server = "not a url"\n')
    result = run("--config", str(config), "call", "bob", "--as", "a")
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr == (f"softphone: {config}:1: server: 'not a url' is not a hub "
                             "URL: use http(s)://host:port or ws(s)://host:port\n")


@pytest.mark.parametrize("server", ["hub.example.org", "localhost:8080", "http://[::1]:80",
                                    "https://hub.example.org:8443/ws", "ws://10.0.0.1:1"])
def test_good_servers_are_taken(server: str) -> None:
    from softphone.cli.config_options import check_server_url

    check_server_url(server)


# ---------------------------------------------------------- devices ---


def test_audio_device_index_in_the_config_file(tmp_path: Path) -> None:
    import json

    config = tmp_path / "config.toml"
    config.write_text("[audio]\ninput = 3\noutput = \"USB\"\n")
    result = run("--config", str(config), "--show-settings-json", "call", "bob", "--as", "a")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["settings"]["audio.input"]["value"] == "3"
    assert shown["arguments"]["input"] == "3"
    config.write_text("[audio]\noutput = 1.5\n")
    result = run("--config", str(config), "call", "bob", "--as", "a")
    assert result.exit_code == ExitCode.USAGE
    assert "audio.output: expected a string or an integer (an index), got a number" \
        in result.stderr


@pytest.mark.usefixtures("two_devices")
def test_devices_naming_no_device_is_a_usage_error() -> None:
    result = run("devices", "--input", "nomatch")
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "> *   0  Mic" not in result.stdout and "Speaker" in result.stdout
    assert result.stderr == ("softphone: --input 'nomatch': no single device matches "
                             "(call and listen would refuse it)\n")
    assert run("devices").exit_code == 0


# ------------------------------------------- files an option names ---


@pytest.mark.parametrize("args", [
    ["call", "b", "--as", "a", "--play", "/nonexistent.wav"],
    ["listen", "--as", "b", "--play", "/nonexistent.wav"],
    ["call", "b", "--as", "a", "--ca-file", "/nonexistent.pem"],
    ["call", "b", "--as", "a", "--token-file", "/nonexistent/tok"],
    ["serve", "--turn-secret-file", "/nonexistent/t", "--turn", "turn:h"],
    ["token", "--as", "a", "--secret-file", "/nonexistent/s"],
    ["serve", "--cert", "/nonexistent.pem", "--key", "/nonexistent.pem", "--port", "0"],
])
def test_a_file_that_cannot_be_read_is_exit_1(args: list[str]) -> None:
    """README's exit codes: 1 for a file that cannot be read or written, as --cert and
    --record always were; one line, no usage text."""
    result = run(*args)
    assert result.exit_code == ExitCode.ERROR, result.output
    assert result.stderr.count("\n") == 1 and "/nonexistent" in result.stderr
    assert "Usage:" not in result.output and "Traceback" not in result.output


def test_a_token_file_in_the_config_that_cannot_be_read(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('id = "alice"\ntoken_file = "/nonexistent/token"\n')
    result = run("--config", str(config), "call", "bob")
    assert result.exit_code == ExitCode.ERROR
    assert result.stderr == (f"softphone: {config}:2: cannot read /nonexistent/token: "
                             "No such file or directory\n")


def test_config_shows_a_secret_file_that_cannot_be_read(tmp_path: Path) -> None:
    import json

    config = tmp_path / "config.toml"
    config.write_text('server = "http://hub:1"\nid = "alice"\n'
                      'token_file = "/nonexistent/token"\n')
    result = run("--config", str(config), "config")
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert '"alice"' in lines["id"] and '"http://hub:1"' in lines["server"]
    assert "(unreadable)" in lines["token"]
    assert "cannot read /nonexistent/token: No such file or directory" in lines["token"]
    shown = json.loads(run("--config", str(config), "config", "--json").stdout)
    assert shown["settings"]["token"]["value"] is None
    assert shown["settings"]["token"]["error"].startswith("cannot read /nonexistent/token")
    assert "error" not in shown["settings"]["id"]


@pytest.mark.parametrize("mode", ["--show-settings", "--show-settings-json"])
def test_show_settings_shows_a_secret_file_that_cannot_be_read(tmp_path: Path,
                                                              mode: str) -> None:
    """``--show-settings call`` shows what call would run with, as ``config`` does,
    the unreadable file included (it stopped at it: exit 1 and no settings)."""
    import json

    config = tmp_path / "config.toml"
    config.write_text('id = "alice"\ntoken_file = "/nonexistent/token"\n')
    result = run("--config", str(config), mode, "call", "bob")
    assert result.exit_code == 0, result.output
    if mode == "--show-settings":
        lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
        assert "(unreadable)" in lines["token"] and '"alice"' in lines["id"]
        assert "cannot read /nonexistent/token" in lines["token"]
    else:
        token = json.loads(result.stdout)["settings"]["token"]
        assert token["value"] is None and token["error"].startswith("cannot read")


def test_doctor_fails_a_secret_file_that_cannot_be_read(tmp_path: Path) -> None:
    from softphone.hub.server import HubConfig
    from tests.cli.conftest import ThreadHub

    hub = ThreadHub(HubConfig(ice_servers=[])).start()
    try:
        config = tmp_path / "config.toml"
        config.write_text(f'server = "{hub.url}"\nid = "alice"\n'
                          'token_file = "/nonexistent/token"\n[audio]\nno_audio = true\n')
        result = run("--config", str(config), "doctor", "--timeout", "2")
    finally:
        hub.stop()
    assert result.exit_code == ExitCode.DOCTOR_FAILED, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split(None, 2) == [
        "FAIL", "token_file",
        f"cannot read /nonexistent/token: No such file or directory (file: {config}:3)"]
    assert any(line.startswith("ok    hub") for line in lines)  # and it goes on
    assert lines[-1].startswith("a call cannot be made: token_file")


def test_words_from_a_peer_or_a_hub_reach_the_terminal_and_the_log_as_text() -> None:
    """Control characters are written out: no escape sequence, no forged line (a
    security review); letters of any script are kept."""
    import logging

    from softphone.cli.main import PlainFormatter, PrintableFormatter
    from softphone.cli.runtime import printable

    assert printable("bob") == "bob" and printable("Zoë 東京") == "Zoë 東京"
    assert printable("a\x1b[2Jb\nc\x07\x9b\x7f") == "a\\x1b[2Jb\\nc\\x07\\x9b\\x7f"
    record = logging.LogRecord("softphone.x", logging.WARNING, __file__, 1,
                               "from %s: %s", ("m\x1b]0;T\x07", "r\nforged"), None)
    for formatter in (PlainFormatter(), PrintableFormatter("%(levelname)s %(message)s")):
        text = formatter.format(record)
        assert "\x1b" not in text and "\n" not in text and "\\x1b]0;T\\x07" in text, text
