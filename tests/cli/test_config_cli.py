"""The config file wired into the real commands (click's CliRunner, in-process).

- precedence as a matrix, through each command that has the option: flag >
  environment > file > default, read back from ``--show-settings-json`` (the
  settings and the values the command's code would get);
- a value from the file or the environment reaches the command exactly as
  the same value typed as its flag does (type included), secrets given as
  files too;
- booleans set in the file can be turned off on the command line;
- ``softphone config`` (show, ``--json``, ``set``, ``unset``, ``path``), a bad
  file (one line naming file, line and key; exit 2), warnings.

Calls, the hub and the doctor driven by settings from a file:
``test_cli_hub.py``, ``test_doctor.py``, ``test_cli.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from softphone.cli.config import OPTIONS, Kind, Option, by_key, parse
from softphone.cli.config_command import keys_markdown
from softphone.cli.config_resolve import MASK, Source
from softphone.cli.config_wiring import CliState, configure
from softphone.cli.config_write import set_in_text
from softphone.cli.main import main
from softphone.core.callstate import ExitCode

from .test_config import COMBOS, SECRET, env_text, expected, samples

ROOT = Path(__file__).resolve().parents[2]
assert isinstance(main, click.Group)
COMMANDS: dict[str, click.Command] = dict(main.commands)
#: What each command needs before its options.
POSITIONAL: dict[str, list[str]] = {"call": ["bob"]}
CASES = [(o, c) for o in OPTIONS for c in o.commands]


def case_id(case: Any) -> str:
    return case.key if isinstance(case, Option) else str(case)


def param_of(command: str, flag: str) -> click.Parameter:
    return next(p for p in COMMANDS[command].params if flag in (*p.opts, *p.secondary_opts))


def param_of_or_none(command: str, flag: str) -> click.Parameter | None:
    return next((p for p in COMMANDS[command].params if flag in p.opts), None)


def flag_args(option: Option, command: str, value: Any) -> list[str]:
    """``value`` typed on the command line."""
    if option.kind is Kind.BOOL:
        return [option.flag] if value else [param_of(command, option.flag).secondary_opts[0]]
    if option.kind is Kind.LIST:
        return [arg for v in value for arg in (option.flag, v)]
    return [option.flag, str(value)]


def config_file(tmp_path: Path, text: str, mode: int = 0o600,
                name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


def run(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Result:
    result = CliRunner().invoke(main, list(args), env=env, input=input)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        result.exc_info
    return result


def shown_settings(config: Path, command: str, *args: str,
                   env: dict[str, str] | None = None) -> dict[str, Any]:
    result = run("--config", str(config), "--show-settings-json", command,
                 *POSITIONAL.get(command, []), *args, env=env)
    assert result.exit_code == 0, result.output
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def as_shown(option: Option, value: Any) -> Any:
    """A value as the JSON shows it."""
    if value is not None and option.secret:
        return MASK
    return list(value) if isinstance(value, tuple) else value


# ----------------------------------------------------------- the matrix ---


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "+".join(
    n for n, on in zip(("flag", "env", "file"), c, strict=True) if on) or "none")
@pytest.mark.parametrize(("option", "command"), CASES, ids=case_id)
def test_precedence_through_each_command(tmp_path: Path, option: Option, command: str,
                                         combo: tuple[bool, bool, bool]) -> None:
    """flag > environment > file > default, for every option of every command, as the
    real command parses it: the setting, its source, and what the command's code gets."""
    flag_on, env_on, file_on = combo
    values = samples(option)
    config = config_file(tmp_path, set_in_text("", option.key, values[2]) if file_on else "")
    env = {option.env: env_text(values[1])} if env_on else {}
    args = flag_args(option, command, values[0]) if flag_on else []
    shown = shown_settings(config, command, *args, env=env)
    value, source = expected(option, flag_on, env_on, file_on, values)
    got = shown["settings"][option.key]
    assert (got["value"], got["source"]) == (as_shown(option, value), source.value)
    argument = shown["arguments"][param_of(command, option.flag).name or ""]
    if source is Source.DEFAULT:  # click's own default: the documented one, or None (unset)
        assert argument in (None, as_shown(option, option.default)), argument
    else:
        assert argument == as_shown(option, value)


@pytest.mark.parametrize(("option", "command"), CASES, ids=case_id)
def test_the_file_and_the_environment_give_what_the_flag_gives(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: Option, command: str) -> None:
    """The command's code cannot tell a value typed as a flag from the same value in
    the environment or the file: same parameter, same value, same type."""
    value = samples(option)[0]
    name = param_of(command, option.flag).name or ""
    empty = config_file(tmp_path, "")
    by_flag = arguments(monkeypatch, command, flag_args(option, command, value), empty)
    from_file = config_file(tmp_path, set_in_text("", option.key, value), name="full.toml")
    by_file = arguments(monkeypatch, command, [], from_file)
    by_env = arguments(monkeypatch, command, [], empty, {option.env: env_text(value)})
    for got in (by_file, by_env):
        assert got[name] == by_flag[name]
        assert type(got[name]) is type(by_flag[name]), (got[name], by_flag[name])
        assert got.keys() == by_flag.keys()


SECRET_CASES = [(o, c) for o, c in CASES if o.secret]


@pytest.mark.parametrize(("option", "command"), SECRET_CASES, ids=case_id)
def test_secrets_as_files_reach_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            option: Option, command: str) -> None:
    """``--X-file``, ``SOFTPHONE_X_FILE`` and ``x_file = ...``: the secret, read; the
    file option itself never reaches the command."""
    value = samples(option)[0]
    secret = tmp_path / "secret"
    secret.write_text(f"{value}\n")
    secret.chmod(0o600)
    name = param_of(command, option.flag).name or ""
    empty = config_file(tmp_path, "")
    by_flag = arguments(monkeypatch, command, [option.file_flag, str(secret)], empty)
    by_env = arguments(monkeypatch, command, [], empty, {option.file_env: str(secret)})
    in_file = config_file(tmp_path, set_in_text("", option.file_key, str(secret)),
                          name="full.toml")
    by_file = arguments(monkeypatch, command, [], in_file)
    file_param = param_of(command, option.file_flag).name
    for got in (by_flag, by_env, by_file):
        assert got[name] == value
        assert file_param not in got


#: What the commands need (typed), unless that option is the one being tested.
NEEDED = {"id": ["--as", "zulu"], "serve.secret": ["--secret", "z" * 40]}


def arguments(monkeypatch: pytest.MonkeyPatch, command: str, args: list[str], config: Path,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    """What ``command``'s code gets for ``args``, with ``env`` and the ``config`` file."""
    cmd = COMMANDS[command]
    tested = {o.key for o in OPTIONS if o.flag in args or o.env in (env or {})
              or (o.secret and (o.file_flag in args or o.file_env in (env or {})))}
    tested |= set(parse(config.read_text(), config).values)
    tested |= {k.removesuffix("_file") for k in tested}
    for key, needed in NEEDED.items():
        if key not in tested and getattr(param_of_or_none(command, needed[0]), "needed", False):
            args = [*needed, *args]
    with monkeypatch.context() as patch:
        for name, value in (env or {}).items():
            patch.setenv(name, value)
        with cmd.make_context(command, [*POSITIONAL.get(command, []), *args],
                              obj=CliState(str(config))) as ctx:
            params = dict(ctx.params)
            configure(ctx, cmd, params)
    return params


BOOLS = [(o, c) for o, c in CASES if o.kind is Kind.BOOL]


@pytest.mark.parametrize(("option", "command"), BOOLS, ids=case_id)
def test_a_boolean_on_in_the_file_is_turned_off_by_its_negative_flag(
        tmp_path: Path, option: Option, command: str) -> None:
    config = config_file(tmp_path, set_in_text("", option.key, True))
    on = shown_settings(config, command)["settings"][option.key]
    assert (on["value"], on["source"]) == (True, "file")
    negative = param_of(command, option.flag).secondary_opts
    assert negative, f"{command} {option.flag} has no negative form"
    shown = shown_settings(config, command, negative[0])
    assert (shown["settings"][option.key]["value"], shown["settings"][option.key]["source"]) \
        == (False, "flag")
    assert shown["arguments"][param_of(command, option.flag).name or ""] is False


# ----------------------------------------------------- needed options ---


def test_id_from_the_file_is_the_needed_id(tmp_path: Path) -> None:
    config = config_file(tmp_path, 'id = "alice"\n')
    missing = run("call", "bob")
    assert missing.exit_code == ExitCode.USAGE
    assert "Missing option '--as'. Give it, or set it once: softphone config set id VALUE" \
        in missing.output
    given = shown_settings(config, "call")
    assert given["arguments"]["client_id"] == "alice"
    assert shown_settings(config, "call", "--as", "carol")["arguments"]["client_id"] == "carol"


# ------------------------------------------------------------ bad files ---


@pytest.mark.parametrize("command", [["call", "bob"], ["listen"], ["serve"], ["doctor"],
                                     ["token", "--as", "a"], ["devices"], ["config"]])
def test_a_bad_file_is_one_line_naming_file_line_and_key(tmp_path: Path,
                                                         command: list[str]) -> None:
    config = config_file(tmp_path, 'id = "alice"\n\n[audio]\nbitrate = "fast"\n')
    for args in (["--config", str(config), *command], command):
        env = None if args[0] == "--config" else {"SOFTPHONE_CONFIG": str(config)}
        result = run(*args, env=env)
        assert result.exit_code == ExitCode.USAGE, result.output
        assert result.stderr == (f"softphone: {config}:4: audio.bitrate: expected an "
                                 "integer, got a string\n")
        assert result.stdout == ""


def test_a_bad_variable_is_one_line() -> None:
    result = run("call", "bob", "--as", "a", env={"SOFTPHONE_AUDIO_BITRATE": "fast"})
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr == "softphone: SOFTPHONE_AUDIO_BITRATE: 'fast' is not an integer\n"
    # a variable of another command's option does not stop this one
    assert run("--show-settings", "call", "bob",
               env={"SOFTPHONE_SERVE_PORT": "x"}).exit_code == 0


def test_a_token_others_can_read_is_a_warning(tmp_path: Path) -> None:
    config = config_file(tmp_path, 'token = "tok"\n', 0o644)
    result = run("--config", str(config), "--show-settings", "call", "bob")
    assert result.exit_code == 0
    assert result.stderr == (f"softphone: warning: {config} holds a token and other users "
                             f"can read it (mode 0644): chmod 600 {config}\n")
    token = tmp_path / "token"
    token.write_text("tok\n")
    token.chmod(0o640)
    result = run("--show-settings", "call", "bob", "--token-file", str(token))
    assert f"softphone: warning: {token} holds a secret and other users can read it " \
        "(mode 0640)" in result.stderr


# ---------------------------------------------------- softphone config ---


def test_config_shows_every_setting_and_its_source(tmp_path: Path) -> None:
    config = config_file(tmp_path, 'server = "http://hub:1"\ntoken = "tok-in-file"\n'
                         '[serve]\nport = 9000\n')
    env = {"SOFTPHONE_CONFIG": str(config), "SOFTPHONE_ID": "alice",
           "SOFTPHONE_SECRET": SECRET}
    result = run("config", env=env)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"# config file: {config} (from SOFTPHONE_CONFIG)"
    row = {line.split()[0]: line for line in lines[1:]}
    assert set(row) == set(by_key())
    assert re.fullmatch(rf'server +=  ?"http://hub:1" +\(file: {config}:1\)', row["server"])
    assert '"alice"' in row["id"] and "(environment: SOFTPHONE_ID)" in row["id"]
    assert MASK in row["token"] and "tok-in-file" not in result.stdout
    assert MASK in row["serve.secret"] and SECRET not in result.stdout
    assert "9000" in row["serve.port"] and f"(file: {config}:4)" in row["serve.port"]
    assert "(default)" in row["serve.host"]
    as_json = json.loads(run("config", "--json", env=env).stdout)
    assert as_json["config_file"] == str(config) and as_json["config_file_exists"] is True
    assert as_json["settings"]["token"] == {"value": MASK, "source": "file",
                                            "origin": f"{config}:2"}
    assert as_json["settings"]["id"]["source"] == "environment"


def test_config_set_unset_and_path(tmp_path: Path) -> None:
    config = tmp_path / "sub" / "config.toml"
    env = {"SOFTPHONE_CONFIG": str(config)}
    assert run("config", "path", env=env).stdout == f"{config}\n"
    made = run("config", "set", "server", "http://hub:8080", env=env)
    assert made.exit_code == 0, made.output
    assert made.stdout == f'server = "http://hub:8080" in {config} (made it, readable only ' \
        "by you)\n"
    assert config.stat().st_mode & 0o777 == 0o600
    assert run("config", "set", "id", "alice", env=env).exit_code == 0
    assert run("config", "set", "ice.servers", "stun:a:3478", "turn:b:3478",
               env=env).exit_code == 0
    secret = run("config", "set", "token", "-", env=env, input="tok-from-stdin\n")
    assert secret.stdout == f"token = {MASK} in {config}\n"
    assert config.read_text() == ('server = "http://hub:8080"\nid = "alice"\n'
                                  'token = "tok-from-stdin"\n\n[ice]\n'
                                  'servers = ["stun:a:3478", "turn:b:3478"]\n')
    shown = shown_settings(config, "call")["settings"]
    assert shown["ice.servers"]["value"] == ["stun:a:3478", "turn:b:3478"]
    gone = run("config", "unset", "ice.servers", env=env)
    assert gone.stdout == f"ice.servers removed from {config}\n"
    assert run("config", "unset", "ice.servers", env=env).stdout == \
        f"ice.servers is not set in {config}\n"
    for args, message in ((["set", "audio.bitrate", "fast"], "'fast' is not an integer"),
                          (["set", "nope", "1"], "unknown setting 'nope'"),
                          (["unset", "nope"], "unknown setting 'nope'"),
                          (["set", "id", "a", "b"], "give one value"),
                          # (a negative value is a value, not an unknown option)
                          (["set", "call.ring_timeout", "-3"], "-3.0 must be greater than 0")):
        bad = run("config", *args, env=env)
        assert bad.exit_code == ExitCode.USAGE and message in bad.stderr, bad.output
        assert len(bad.stderr.splitlines()) == 1


def test_config_set_then_the_command_uses_it(tmp_path: Path) -> None:
    """The README's quick start: what `config set` wrote is what `call` runs with."""
    env = {"SOFTPHONE_CONFIG": str(tmp_path / "c.toml")}
    token = tmp_path / "alice.token"
    token.write_text("tok\n")
    token.chmod(0o600)
    for args in (["server", "http://hub.example.org:8080"], ["id", "alice"],
                 ["token_file", str(token)]):
        assert run("config", "set", *args, env=env).exit_code == 0
    result = run("--show-settings-json", "call", "bob", env=env)
    arguments = json.loads(result.stdout)["arguments"]
    assert (arguments["server"], arguments["client_id"], arguments["hub_token"]) == \
        ("http://hub.example.org:8080", "alice", MASK)


def test_show_settings_is_not_for_every_command() -> None:
    result = run("--show-settings", "demo")
    assert result.exit_code == ExitCode.USAGE
    assert "--show-settings: demo takes no settings" in result.output


def test_every_key_is_documented() -> None:
    """``config --help`` lists every key; docs/config.md holds the same table."""
    out = run("config", "--help").stdout
    for option in OPTIONS:
        assert f" {option.name} " in out and option.flag in out and option.env in out, \
            option.key
    docs = (ROOT / "docs" / "config.md").read_text()
    assert keys_markdown() in docs, "docs/config.md: paste keys_markdown() output again"


def test_the_documented_example_is_a_good_file(tmp_path: Path) -> None:
    docs = (ROOT / "docs" / "config.md").read_text()
    example = docs.split("```toml\n", 1)[1].split("```", 1)[0]
    parsed = parse(example, tmp_path / "config.toml")
    assert parsed.values["server"] == "https://hub.example.org:8443"
    assert parsed.values["token_file"] == str(Path("~/.config/softphone/token").expanduser())


def test_devices_marks_the_microphone_the_config_file_names(pulse: Any,
                                                            tmp_path: Path) -> None:
    """`softphone devices` with `[audio] input` from the file: '>' on the device a call
    would open (a process of its own: PortAudio reads PULSE_SERVER at start)."""
    import os
    import subprocess
    import sys

    config = config_file(tmp_path, '[audio]\ninput = "pulse"\n')
    env = {**os.environ, **pulse.env_for("a"), "SOFTPHONE_CONFIG": str(config)}
    out = subprocess.run([sys.executable, "-m", "softphone", "devices"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    microphones, speakers = out.stdout.split("speakers (--output):")
    assert re.search(r"^>  +\d+  pulse \(", microphones, re.MULTILINE), out.stdout
    assert re.search(r"^> \* +\d+  default \(", speakers, re.MULTILINE), out.stdout
    typed = subprocess.run([sys.executable, "-m", "softphone", "devices", "--input", "nope"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert "(no single input device matches 'nope': a call would fail)" in typed.stdout


# ------------------------------------------------------- user review ---


def test_config_set_and_unset_write_through_a_symbolic_link(tmp_path: Path) -> None:
    """`ln -s ~/dotfiles/softphone.toml ~/.config/softphone/config.toml`: the link stays,
    the dotfiles file changes."""
    target = config_file(tmp_path, 'id = "alice"\n', mode=0o640, name="softphone.toml")
    link = tmp_path / "softphone" / "config.toml"
    link.parent.mkdir()
    link.symlink_to(target)
    env = {"SOFTPHONE_CONFIG": str(link)}
    done = run("config", "set", "server", "http://hub:8080", env=env)
    assert done.exit_code == 0, done.output
    assert link.is_symlink() and link.resolve() == target
    assert target.read_text() == 'id = "alice"\nserver = "http://hub:8080"\n'
    assert target.stat().st_mode & 0o777 == 0o640
    assert "is a link" not in done.stderr  # (not a secret: nothing to say)
    assert run("config", "unset", "id", env=env).exit_code == 0
    assert link.is_symlink() and target.read_text() == 'server = "http://hub:8080"\n'
    secret = run("config", "set", "token", "-", env=env, input="abc.def.ghi\n")
    assert secret.exit_code == 0, secret.output
    assert f"{link} is a link: the secret is written to {target}" in secret.stderr
    assert "abc.def" not in secret.output


@pytest.mark.parametrize("args", [["set", "audio.bitrat", "64"], ["unset", "audio.bitrat"]])
def test_config_set_and_unset_suggest_the_key_meant(tmp_path: Path, args: list[str]) -> None:
    env = {"SOFTPHONE_CONFIG": str(tmp_path / "c.toml")}
    bad = run("config", *args, env=env)
    assert bad.exit_code == ExitCode.USAGE
    assert bad.stderr == "softphone: unknown setting 'audio.bitrat' (did you mean " \
        "'audio.bitrate'?)\n"


@pytest.mark.parametrize(("command", "flag", "key"), [
    (["listen"], "--no-auto-accept", "listen.auto_accept"),
    (["call", "bob"], "--audio", "audio.no_audio"),
    (["call", "bob"], "--no-aec", "audio.aec"),
    (["listen"], "--auto-accept", "listen.auto_accept"),
])
def test_show_settings_names_the_flag_as_typed(tmp_path: Path, command: list[str], flag: str,
                                               key: str) -> None:
    config = config_file(tmp_path, "")
    text = run("--config", str(config), "--show-settings", *command, flag)
    assert text.exit_code == 0, text.output
    (line,) = [ln for ln in text.stdout.splitlines() if ln.startswith(key + " ")]
    assert line.endswith(f"(flag: {flag})")
    shown = shown_settings(config, command[0], flag)["settings"][key]
    assert (shown["source"], shown["origin"]) == ("flag", flag)


def test_show_settings_shows_the_other_options_given(tmp_path: Path) -> None:
    """The README: "prints what that command would run with, flags included"."""
    config = config_file(tmp_path, "")
    args = ["--config", str(config), "--show-settings", "call", "bob"]
    plain = run(*args).stdout.splitlines()
    assert not [ln for ln in plain if ln.startswith("other options")]
    typed = run(*args, "--tone", "440", "--duration", "5", "--bitrate", "64",
                "--record", "/tmp/a b.wav").stdout.splitlines()
    assert len(typed) == len(plain) + 1
    assert typed[-1] == "other options given: --tone 440, --record '/tmp/a b.wav', " \
        "--duration 5"  # (--bitrate has a key: its own line says flag: --bitrate)
    (bitrate,) = [ln for ln in typed if ln.startswith("audio.bitrate ")]
    assert bitrate.endswith("(flag: --bitrate)")
    listen = run("--config", str(config), "--show-settings", "listen", "--once",
                 "--max-calls", "2", "--auto-accept").stdout.splitlines()
    assert listen[-1] == "other options given: --once, --max-calls 2"


@pytest.mark.parametrize("args", [["token", "--as", "a", "--secret-file", "{dir}"],
                                  ["serve", "--secret-file", "{dir}"],
                                  ["call", "bob", "--as", "a", "--token-file", "{dir}"]])
def test_a_secret_file_that_is_a_folder_is_exit_1(tmp_path: Path, args: list[str]) -> None:
    """As any file an option names that cannot be read (README: exit 1), one line."""
    result = run(*(a.format(dir=tmp_path) for a in args))
    assert result.exit_code == ExitCode.ERROR, result.output
    flag = args[-2]
    assert result.stderr == f"softphone: {flag}: cannot read {tmp_path}: Is a directory\n"


@pytest.mark.parametrize("args", [
    ("--config", "/dev/null/config.toml", "config", "set", "id", "alice"),  # cannot write
    ("--config", "/dev/null/config.toml", "config"),  # cannot read
    ("--config", "/nonexistent/config.toml", "call", "bob", "--as", "alice"),  # named, missing
], ids=["set", "show", "call"])
def test_a_config_file_that_cannot_be_read_or_written_is_exit_1(args: tuple[str, ...]) -> None:
    """README's exit codes: 1 for a file an option names that cannot be read or
    written (--config names it); 2 stays for what is in it (below)."""
    result = run(*args)
    assert result.exit_code == ExitCode.ERROR, result.output
    assert result.stderr.count("\n") == 1 and "config.toml" in result.stderr


def test_a_config_file_with_a_bad_value_is_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("id = 3\n")
    assert run("--config", str(config), "call", "bob").exit_code == ExitCode.USAGE
