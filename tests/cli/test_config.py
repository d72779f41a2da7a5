"""The config file: where it is, what a bad one says, precedence, masking, editing.

Pure functions (softphone.cli.config, config_resolve, config_write) on real
files in a temporary folder; no fakes.
"""

from __future__ import annotations

import itertools
import stat
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from softphone.cli.config import (
    OPTIONS,
    ConfigError,
    Kind,
    Located,
    Option,
    by_key,
    find_option,
    load,
    locate,
    parse,
    permission_warning,
)
from softphone.cli.config_resolve import MASK, Source, as_json, describe, resolve
from softphone.cli.config_write import set_in_text, toml_value, unset_in_text, write_setting

SECRET = "s" * 40  # long enough for serve.secret (32 bytes)


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


# ------------------------------------------------------------- locate ---


def test_locate_order(tmp_path: Path) -> None:
    env = {"SOFTPHONE_CONFIG": "/etc/a.toml", "XDG_CONFIG_HOME": "/xdg", "HOME": "/home/u"}
    assert locate("/flag.toml", env) == Located(Path("/flag.toml"), "--config")
    assert locate(None, env) == Located(Path("/etc/a.toml"), "SOFTPHONE_CONFIG")
    del env["SOFTPHONE_CONFIG"]
    assert locate(None, env) == Located(Path("/xdg/softphone/config.toml"), "XDG_CONFIG_HOME")
    env["XDG_CONFIG_HOME"] = "relative/dir"  # the XDG spec: ignored
    assert locate(None, env).path == Path("/home/u/.config/softphone/config.toml")
    assert locate(None, {}, home=str(tmp_path)).path == \
        tmp_path / ".config" / "softphone" / "config.toml"
    assert locate("~/x.toml", {}).path == Path("~/x.toml").expanduser()


def test_missing_file_is_no_config_unless_named(tmp_path: Path) -> None:
    missing = tmp_path / "none.toml"
    assert load(Located(missing, "default")).file is None
    with pytest.raises(ConfigError, match=r"none\.toml: no such config file \(from --config\)"):
        load(Located(missing, "--config"))
    with pytest.raises(ConfigError, match="is a folder"):
        load(Located(tmp_path, "SOFTPHONE_CONFIG"))
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'id = "\xe9"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(Located(bad, "--config"))


# --------------------------------------------------------- bad files ---


BAD_FILES = [
    ('server = 3\n', r"c\.toml:1: server: expected a string, got an integer"),
    ('id = "alice"\n\n[ice]\nsevers = ["stun:a"]\n',
     r"c\.toml:4: unknown key 'ice\.severs' \(did you mean 'ice\.servers'\?\)"),
    ('[audo]\ninput = "x"\n', r"c\.toml:1: unknown table \[audo\] \(did you mean 'audio'\?\)"),
    ('\n[audio]\nbitrate = 600\n', r"c\.toml:3: audio\.bitrate: 600 is not in 6\.\.510"),
    ('[audio]\nbitrate = 1.5\n', r"c\.toml:2: audio\.bitrate: expected an integer, got a number"),
    ('[call]\nring_timeout = true\n',
     r"c\.toml:2: call\.ring_timeout: expected a number, got a boolean"),
    ('[call]\nring_timeout = -1\n', r"c\.toml:2: call\.ring_timeout: -1\.0 must be greater"),
    ('[ice]\nservers = "stun:a"\n', r"c\.toml:2: ice\.servers: expected a list of strings"),
    ('[ice]\nservers = ["http://a"]\n', r"c\.toml:2: ice\.servers: 'http://a' is not a stun:"),
    ('id = "bad id!"\n', r"c\.toml:1: id: 'bad id!' is not an id"),
    ('server = "ftp://x"\n', r"c\.toml:1: server: invalid hub URL"),
    ('token = "a"\ntoken_file = "t"\n', r"c\.toml:2: token_file: use either token or"),
    ('token_file = 3\n', r"c\.toml:1: token_file: expected a file name, got an integer"),
    ('ice = 1\n', r"c\.toml:1: ice: expected a table \(\[ice\]\), got an integer"),
    ('[serve]\nsecret = "short"\n', r"c\.toml:2: serve\.secret: the secret must be at least"),
    ('[serve]\nloop = "fast"\n', r"c\.toml:2: serve\.loop: 'fast': use auto, uvloop"),
    ('[serve.tls]\ncert = "x"\n', r"c\.toml:1: unknown table \[serve\.tls\]"),
    ('x = \n', r"c\.toml:1: x: not valid TOML: Invalid value \(column 5\)"),
    ('id = "a"\n[ice]\nservers = ["a" "b"]\n',
     r"c\.toml:3: ice\.servers: not valid TOML: Unclosed array"),
    ('[ice\n', r"c\.toml:1: not valid TOML"),
    ('[serve]\nport = 1\nx = "',  # (tomllib: "at end of document", no line: it was 0)
     r"c\.toml:3: serve\.x: not valid TOML: Unterminated string \(at the end\)$"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_bad_file_is_one_line_naming_file_line_and_key(
        tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError, match=message) as caught:
        load(Located(path, "--config"))
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith(str(path))


def test_good_file(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    path = write(tmp_path / "c.toml", """\
# a comment
server = "https://hub.example.org"
id = "alice"
ca_file = "certs/hub.pem"      # relative to this file
listen.auto_accept = true      # a dotted key instead of a table

[ice]
servers = [
    "stun:turn.example.org:3478",
    "turn:turn.example.org:3478?transport=tcp",
]

[call]
ring_timeout = 10              # an integer where a number goes

[serve]
port = 9000
tls_dir = "~/tls"
""")
    loaded = load(Located(path, "--config"))
    assert loaded.warnings == ()
    assert loaded.file is not None
    values = loaded.file.values
    assert values["server"] == "https://hub.example.org"
    assert values["ca_file"] == str(tmp_path / "certs" / "hub.pem")
    assert values["listen.auto_accept"] is True
    assert values["ice.servers"] == ("stun:turn.example.org:3478",
                                     "turn:turn.example.org:3478?transport=tcp")
    assert values["call.ring_timeout"] == 10.0 and isinstance(values["call.ring_timeout"], float)
    assert values["serve.tls_dir"] == str(Path("~/tls").expanduser())
    assert loaded.file.lines["ice.servers"] == 8
    assert loaded.file.where("serve.port") == f"{path}:17"


# -------------------------------------------------------- permissions ---


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_token_readable_by_others_warns(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "c.toml", 'token = "t"\n', mode)
    warnings = load(Located(path, "--config")).warnings
    assert len(warnings) == 1
    assert "holds a token" in warnings[0] and f"chmod 600 {path}" in warnings[0]


def test_no_warning_when_private_or_without_secrets(tmp_path: Path) -> None:
    private = write(tmp_path / "a.toml", 'token = "t"\n[serve]\nturn_secret = "x"\n', 0o600)
    assert load(Located(private, "--config")).warnings == ()
    public = write(tmp_path / "b.toml", 'server = "http://h:1"\ntoken_file = "tok"\n', 0o644)
    assert load(Located(public, "--config")).warnings == ()
    several = write(tmp_path / "c.toml", '[serve]\nsecret = "' + SECRET + '"\n'
                    'turn_secret = "x"\n', 0o644)
    (warning,) = load(Located(several, "--config")).warnings
    assert "secrets (serve.secret, serve.turn_secret)" in warning


def test_token_file_readable_by_others_warns(tmp_path: Path) -> None:
    token = write(tmp_path / "token", "tok-from-file\n", 0o644)
    config = parse(f'token_file = "{token}"\n', tmp_path / "c.toml")
    settings = resolve({}, {}, config)
    assert settings.value("token") == "tok-from-file"
    (warning,) = settings.warnings
    assert str(token) in warning and "mode 0644" in warning
    token.chmod(0o400)
    assert resolve({}, {}, config).warnings == ()


def test_permission_warning_is_pure() -> None:
    assert permission_warning(Path("/x"), stat.S_IFREG | 0o600, "a token") is None
    assert "mode 0660" in (permission_warning(Path("/x"), stat.S_IFREG | 0o660, "a token") or "")


# --------------------------------------------------------- precedence ---

_CANDIDATES: dict[Kind, list[Any]] = {
    Kind.STR: ["alpha-1", "bravo-2", "charlie-3", "auto", "uvloop", "asyncio",
               "a" * 40, "b" * 40, "c" * 40],
    Kind.INT: [1, 2, 3, 300, 301, 302, 7, 8, 9],
    Kind.FLOAT: [1.5, 2.5, 3.5],
    Kind.LIST: [("turn:a.example:3478",), ("turn:b.example:3478",), ("turns:c.example:5349",),
                ("https://a.example",), ("https://b.example",), ("https://c.example",),
                ("10.0.0.1",), ("10.0.0.0/8",), ("::1",)],
    Kind.PATH: ["/flag/file", "/env/file", "/file/file"],
}


def samples(option: Option) -> tuple[Any, Any, Any]:
    """Three valid values of ``option`` (flag, env, file): distinct except for booleans."""
    if option.kind is Kind.BOOL:
        return True, False, True
    good = []
    for value in _CANDIDATES[option.kind]:
        try:
            if option.check is not None:
                option.check(value)
        except ValueError:
            continue
        good.append(value)
    assert len(good) >= 3, option.key
    return good[0], good[1], good[2]


def env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return " ".join(value)
    return str(value)


COMBOS = list(itertools.product([False, True], repeat=3))


def expected(option: Option, flag: bool, env: bool, file: bool,
             values: tuple[Any, Any, Any]) -> tuple[Any, Source]:
    for present, value, source in zip((flag, env, file), values,
                                      (Source.FLAG, Source.ENV, Source.FILE), strict=True):
        if present:
            return value, source
    return option.default, Source.DEFAULT


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "+".join(
    n for n, on in zip(("flag", "env", "file"), c, strict=True) if on) or "none")
@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.key)
def test_precedence_every_option(tmp_path: Path, option: Option,
                                 combo: tuple[bool, bool, bool]) -> None:
    """flag > environment > file > default, for every option and every set of sources."""
    flag_on, env_on, file_on = combo
    values = samples(option)
    flags = {option.key: values[0]} if flag_on else {}
    env = {option.env: env_text(values[1])} if env_on else {}
    text = set_in_text("", option.key, values[2]) if file_on else ""
    config = parse(text, tmp_path / "c.toml")
    got = resolve(flags, env, config)[option.key]
    value, source = expected(option, flag_on, env_on, file_on, values)
    assert (got.value, got.source) == (value, source)
    assert got.origin == {Source.FLAG: option.flag, Source.ENV: option.env,
                          Source.FILE: f"{tmp_path / 'c.toml'}:{len(text.splitlines())}",
                          Source.DEFAULT: ""}[source]


SECRETS = [o for o in OPTIONS if o.secret]


@pytest.mark.parametrize("combo", COMBOS, ids=str)
@pytest.mark.parametrize("option", SECRETS, ids=lambda o: o.key)
def test_precedence_of_secrets_given_as_files(tmp_path: Path, option: Option,
                                              combo: tuple[bool, bool, bool]) -> None:
    """``--token-file`` / ``SOFTPHONE_TOKEN_FILE`` / ``token_file``: the same ranks."""
    flag_on, env_on, file_on = combo
    values = samples(option)
    paths = []
    for layer, value in zip(("flag", "env", "file"), values, strict=True):
        paths.append(write(tmp_path / f"{layer}.secret", f"{value}\n", 0o600))
    flags = {option.file_key: str(paths[0])} if flag_on else {}
    env = {option.file_env: str(paths[1])} if env_on else {}
    text = set_in_text("", option.file_key, str(paths[2])) if file_on else ""
    got = resolve(flags, env, parse(text, tmp_path / "c.toml"))[option.key]
    value, source = expected(option, flag_on, env_on, file_on, values)
    assert (got.value, got.source) == (value, source)
    if source is not Source.DEFAULT:
        assert str(paths[[Source.FLAG, Source.ENV, Source.FILE].index(source)]) in got.origin


def test_secret_file_of_a_higher_layer_beats_a_value_below(tmp_path: Path) -> None:
    token = write(tmp_path / "tok", "from-flag-file", 0o600)
    got = resolve({"token_file": str(token)}, {"SOFTPHONE_TOKEN": "from-env"}, None)["token"]
    assert (got.value, got.source) == ("from-flag-file", Source.FLAG)
    got = resolve({}, {"SOFTPHONE_TOKEN_FILE": str(token)},
                  parse('token = "from-file"\n', tmp_path / "c.toml"))["token"]
    assert (got.value, got.source) == ("from-flag-file", Source.ENV)


def test_value_and_file_in_one_layer_is_an_error(tmp_path: Path) -> None:
    token = write(tmp_path / "tok", "t", 0o600)
    with pytest.raises(ConfigError, match="use either --token or --token-file"):
        resolve({"token": "a", "token_file": str(token)}, {}, None)
    with pytest.raises(ConfigError, match="use either SOFTPHONE_SECRET or SOFTPHONE_SECRET_FILE"):
        resolve({}, {"SOFTPHONE_SECRET": SECRET, "SOFTPHONE_SECRET_FILE": str(token)}, None)


def test_unreadable_or_empty_secret_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"SOFTPHONE_SECRET_FILE: cannot read .*/nope"):
        resolve({}, {"SOFTPHONE_SECRET_FILE": str(tmp_path / "nope")}, None)
    empty = write(tmp_path / "empty", "\n")
    with pytest.raises(ConfigError, match=r"--token-file: .*empty is empty"):
        resolve({"token_file": str(empty)}, {}, None)


@pytest.mark.parametrize(("env", "message"), [
    ({"SOFTPHONE_AUDIO_BITRATE": "fast"}, "SOFTPHONE_AUDIO_BITRATE: 'fast' is not an integer"),
    ({"SOFTPHONE_AUDIO_BITRATE": "5"}, "SOFTPHONE_AUDIO_BITRATE: 5 is not in 6..510"),
    ({"SOFTPHONE_INSECURE": "maybe"}, "SOFTPHONE_INSECURE: 'maybe' is not a boolean"),
    ({"SOFTPHONE_SERVE_TURN_URLS": "stun:x"}, "'stun:x' is not a turn: or turns: URL"),
    ({"SOFTPHONE_ID": "no spaces"}, "SOFTPHONE_ID: 'no spaces' is not an id"),
])
def test_bad_environment_is_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve({}, env, None)


def test_empty_variable_is_no_value() -> None:
    got = resolve({}, {"SOFTPHONE_SERVER": ""}, None)["server"]
    assert got.source is Source.DEFAULT


def test_list_from_environment_splits_on_whitespace() -> None:
    got = resolve({}, {"SOFTPHONE_ICE_SERVERS": "stun:a:1  turn:b:2?transport=tcp"}, None)
    assert got.value("ice.servers") == ("stun:a:1", "turn:b:2?transport=tcp")


def test_a_repeatable_flag_not_given_does_not_hide_the_file(tmp_path: Path) -> None:
    config = parse('[ice]\nservers = ["stun:f:1"]\n', tmp_path / "c.toml")
    assert resolve({"ice.servers": ()}, {}, config).value("ice.servers") == ("stun:f:1",)


# ------------------------------------------------------------ showing ---


def test_describe_masks_secrets_and_names_sources(tmp_path: Path) -> None:
    config = parse('server = "http://hub:1"\ntoken = "tok-in-file"\n[serve]\n'
                   'redis = "redis://:hunter2@db:6379/0"\nturn_secret = "coturn-pw"\n',
                   tmp_path / "c.toml")
    settings = resolve({"ice.credential": "pw-from-flag"}, {"SOFTPHONE_SECRET": SECRET}, config)
    lines = describe(settings)
    text = "\n".join(lines)
    for secret in ("tok-in-file", "hunter2", "coturn-pw", "pw-from-flag", SECRET):
        assert secret not in text
    line = {ln.split()[0]: ln for ln in lines}
    assert MASK in line["token"] and f"(file: {tmp_path / 'c.toml'}:2)" in line["token"]
    assert MASK in line["serve.secret"] and "(environment: SOFTPHONE_SECRET)" in \
        line["serve.secret"]
    assert MASK in line["ice.credential"] and "(flag: --ice-credential)" in line["ice.credential"]
    assert '"redis://:****@db:6379/0"' in line["serve.redis"]
    assert '"http://hub:1"' in line["server"]
    assert "(not set)" in line["ca_file"] and "(default)" in line["ca_file"]
    assert [ln.split()[0] for ln in describe(settings, "token")] == ["id", "serve.secret"]
    as_dict = as_json(settings)
    assert as_dict["token"] == {"value": MASK, "source": "file",
                                "origin": f"{tmp_path / 'c.toml'}:2"}
    assert "hunter2" not in str(as_dict) and as_dict["ice.servers"]["value"] == []


# ----------------------------------------------------- the CLI's flags ---


def _cli_commands() -> dict[str, click.Command]:
    from softphone.cli.main import main

    assert isinstance(main, click.Group)
    return dict(main.commands)


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.key)
def test_every_option_is_a_flag_of_its_commands(option: Option) -> None:
    """Keys are named after the CLI's flags: each one exists on each command it is for
    (commands not in the CLI yet are skipped), with the same environment variable."""
    commands = _cli_commands()
    for name in option.commands:
        if name not in commands:
            continue
        params = {opt: p for p in commands[name].params for opt in p.opts}
        assert option.flag in params, f"{name} has no {option.flag}"
        envvar = getattr(params[option.flag], "envvar", None)
        if envvar:
            assert envvar == option.env, f"{name} {option.flag}: env {envvar}"
        assert find_option(name, option.flag) == option


def test_keys_are_unique_and_named_after_flags() -> None:
    keys = [o.key for o in OPTIONS]
    assert len(keys) == len(set(keys)) == len(by_key())
    for option in OPTIONS:
        assert option.env.startswith("SOFTPHONE_")
        if option.flag not in ("--as", "--ice-server", "--turn", "--allow-origin", "--relay",
                               "--trusted-proxy"):
            assert option.name.replace("_", "-") in option.flag, option.key


# ------------------------------------------------------------ writing ---


@given(st.text())
def test_toml_strings_round_trip(text: str) -> None:
    assert tomllib.loads(f"k = {toml_value(text)}\n")["k"] == text


@given(st.one_of(st.integers(-2**63, 2**63 - 1), st.booleans(),
                 st.floats(allow_nan=False, allow_infinity=False),
                 st.lists(st.text(), max_size=4)))
def test_toml_values_round_trip(value: Any) -> None:
    assert tomllib.loads(f"k = {toml_value(value)}\n")["k"] == value


ORIGINAL = """\
# my settings
server = "http://old:1"   # the hub

[ice]
servers = [
    "stun:a:1",   # first
    "stun:b:2",
]   # end of list
username = "u"

[audio]
# the USB headset
input = "USB"
"""


def test_set_replaces_in_place_and_keeps_comments() -> None:
    text = set_in_text(ORIGINAL, "server", "http://new:2")
    assert text == ORIGINAL.replace('"http://old:1"', '"http://new:2"')
    text = set_in_text(ORIGINAL, "ice.servers", ("turn:c:3",))
    assert 'servers = ["turn:c:3"]   # end of list\nusername = "u"\n' in text
    assert "# the USB headset" in text and "# my settings" in text
    assert tomllib.loads(text)["ice"]["servers"] == ["turn:c:3"]


def test_set_adds_keys_where_they_belong() -> None:
    text = set_in_text(ORIGINAL, "id", "alice")  # top level: before the first table
    assert text.index('id = "alice"') < text.index("[ice]")
    text = set_in_text(text, "audio.bitrate", 64)  # at the end of its table
    assert text.endswith('input = "USB"\nbitrate = 64\n')
    text = set_in_text(text, "ice.relay", True)
    assert 'username = "u"\nrelay = true\n' in text
    text = set_in_text(text, "serve.port", 9000)  # a new table at the end
    assert text.endswith('bitrate = 64\n\n[serve]\nport = 9000\n')
    data = tomllib.loads(text)
    assert data["id"] == "alice" and data["serve"] == {"port": 9000}
    assert set_in_text("", "id", "a") == 'id = "a"\n'
    assert set_in_text("[serve]\nport = 1\n", "id", "a") == 'id = "a"\n\n[serve]\nport = 1\n'
    dotted = set_in_text('ice.relay = true\n', "ice.username", "u")
    assert tomllib.loads(dotted) == {"ice": {"relay": True, "username": "u"}}


def test_set_keeps_crlf_line_endings() -> None:
    text = set_in_text('id = "a"\r\n[audio]\r\ninput = "x"\r\n', "audio.bitrate", 64)
    assert text == 'id = "a"\r\n[audio]\r\ninput = "x"\r\nbitrate = 64\r\n'


def test_unset() -> None:
    text = unset_in_text(ORIGINAL, "ice.servers")
    assert "stun:a:1" not in text and 'username = "u"' in text
    assert tomllib.loads(text)["ice"] == {"username": "u"}
    assert unset_in_text(ORIGINAL, "token") == ORIGINAL


def test_write_setting_creates_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "new" / "softphone" / "config.toml"
    done = write_setting(path, "token", ["tok"])
    assert done.created and done.value == "tok" and done.warnings == ()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    write_setting(path, "ice.servers", ["stun:a:1", "turn:b:2"])
    write_setting(path, "call.ring_timeout", ["12"])
    write_setting(path, "ice.relay", ["yes"])
    config = parse(path.read_text(), path)
    assert config.values == {"token": "tok", "ice.servers": ("stun:a:1", "turn:b:2"),
                             "call.ring_timeout": 12.0, "ice.relay": True}
    # A token file instead of the token: the token goes.
    done = write_setting(path, "token_file", ["tok.txt"])
    assert done.value == str(Path("tok.txt").absolute())
    assert "token" not in parse(path.read_text(), path).values
    write_setting(path, "ice.relay", None)
    assert "ice.relay" not in parse(path.read_text(), path).values


def test_write_setting_keeps_mode_and_warns(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", ORIGINAL, 0o644)
    done = write_setting(path, "token", ["tok"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    (warning,) = done.warnings
    assert "chmod 600" in warning
    assert not write_setting(path, "id", ["alice"]).warnings


@pytest.mark.parametrize(("key", "args", "message"), [
    ("audio.bitrate", ["9999"], "audio.bitrate: 9999 is not in 6..510"),
    ("audio.bitrate", ["1", "2"], "give one value"),
    ("nope", ["1"], "unknown setting 'nope'"),
    ("id", ["not valid"], "'not valid' is not an id"),
])
def test_write_setting_refuses_bad_values_and_leaves_the_file(
        tmp_path: Path, key: str, args: list[str], message: str) -> None:
    path = write(tmp_path / "c.toml", ORIGINAL)
    with pytest.raises(ConfigError, match=message):
        write_setting(path, key, args)
    assert path.read_text() == ORIGINAL
    assert [p.name for p in tmp_path.iterdir()] == ["c.toml"]


def test_write_setting_does_not_edit_a_broken_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[audio]\nbitrate = 9999\n")
    with pytest.raises(ConfigError, match=r"c\.toml:2: audio\.bitrate"):
        write_setting(path, "id", ["alice"])


def test_write_setting_reports_what_it_cannot_do(tmp_path: Path) -> None:
    blocker = write(tmp_path / "file", "")  # a file where the folder should be
    with pytest.raises(ConfigError, match=r"file/softphone/config\.toml: cannot read it: Not a"):
        write_setting(blocker / "softphone" / "config.toml", "id", ["alice"])
    with pytest.raises(ConfigError, match="cannot write it"):  # (even as root)
        write_setting(Path("/proc/self/softphone/config.toml"), "id", ["alice"])


def test_write_setting_writes_through_a_symbolic_link(tmp_path: Path) -> None:
    """A dotfiles setup: the config file is a link; set and unset change the file it
    points to (its mode kept) and the link stays a link."""
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    target = write(dotfiles / "softphone.toml", ORIGINAL, 0o640)
    link = tmp_path / "config" / "config.toml"
    link.parent.mkdir()
    link.symlink_to(target)
    write_setting(link, "id", ["alice"])
    assert link.is_symlink() and link.resolve() == target
    assert parse(target.read_text(), target).values["id"] == "alice"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    write_setting(link, "ice.servers", None)
    assert link.is_symlink() and "ice.servers" not in parse(target.read_text(), target).values
    assert sorted(p.name for p in dotfiles.iterdir()) == ["softphone.toml"]  # no temp file
    assert sorted(p.name for p in link.parent.iterdir()) == ["config.toml"]


def test_write_setting_suggests_a_close_key(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", ORIGINAL)
    with pytest.raises(ConfigError) as bitrate:
        write_setting(path, "audio.bitrat", ["64"])
    assert str(bitrate.value) == "unknown setting 'audio.bitrat' (did you mean 'audio.bitrate'?)"
    with pytest.raises(ConfigError, match=r"\(did you mean 'token_file'\?\)"):
        write_setting(path, "token_fil", ["/t"])
    with pytest.raises(ConfigError, match=r"^unknown setting 'nope' \(softphone config lists"):
        write_setting(path, "nope", ["1"])
    assert path.read_text() == ORIGINAL
