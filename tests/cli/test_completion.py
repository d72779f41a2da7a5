"""Shell completion: ``softphone completion bash|zsh|fish`` prints click's script, and
click answers the script's call-back (``_SOFTPHONE_COMPLETE``, ``COMP_WORDS``,
``COMP_CWORD``) with what fits: commands, options, config keys.

In-process through click's CliRunner, and once through a real bash sourcing
the script (with this venv's ``softphone`` on PATH).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from softphone.cli.main import main

from ..conftest import need_command


def complete(line: str) -> list[str]:
    """What click offers for the last word of ``line`` (as bash asks: COMP_WORDS/CWORD)."""
    words = line.split(" ")
    env = {"_SOFTPHONE_COMPLETE": "bash_complete", "COMP_WORDS": line,
           "COMP_CWORD": str(len(words) - 1)}
    result = CliRunner().invoke(main, [], prog_name="softphone", env=env)
    assert result.exit_code == 0, result.output
    return [entry.split(",", 1)[1] for entry in result.stdout.splitlines()
            if entry.startswith("plain,")]


@pytest.mark.parametrize(("shell", "marker"), [
    ("bash", "_SOFTPHONE_COMPLETE=bash_complete $1"),
    ("zsh", "#compdef softphone"),
    ("fish", "_SOFTPHONE_COMPLETE=fish_complete"),
])
def test_completion_prints_the_script(shell: str, marker: str) -> None:
    result = CliRunner().invoke(main, ["completion", shell])
    assert result.exit_code == 0, result.output
    assert marker in result.stdout
    assert "softphone" in result.stdout


def test_completion_refuses_other_shells() -> None:
    result = CliRunner().invoke(main, ["completion", "tcsh"])
    assert result.exit_code == 2 and "'tcsh' is not one of 'bash', 'zsh', 'fish'" in \
        result.output


def test_completion_help_says_how_to_install_it() -> None:
    out = CliRunner().invoke(main, ["completion", "--help"]).stdout
    for line in ("echo 'eval \"$(softphone completion bash)\"' >> ~/.bashrc",
                 "echo 'eval \"$(softphone completion zsh)\"' >> ~/.zshrc",
                 "softphone completion fish > ~/.config/fish/completions/softphone.fish"):
        assert line in out


def test_commands_options_and_keys_complete() -> None:
    assert complete("softphone ca") == ["call"]
    assert set(complete("softphone c")) == {"call", "completion", "config"}
    assert complete("softphone call --ring") == ["--ring-timeout"]
    assert "--no-auto-accept" in complete("softphone listen --no-")
    assert complete("softphone doctor --no-reg") == ["--no-register"]
    assert set(complete("softphone config set ice.")) == {
        "ice.servers", "ice.username", "ice.credential", "ice.credential_file", "ice.relay"}
    assert complete("softphone completion ") == ["bash", "zsh", "fish"]


def test_a_real_bash_completes_softphone_ca() -> None:
    """The script, sourced by bash, calls softphone back and fills COMPREPLY."""
    bash = need_command("bash", "bash")
    softphone = Path(sys.executable).parent / "softphone"
    assert softphone.exists(), softphone
    script = subprocess.run([str(softphone), "completion", "bash"], capture_output=True,
                            text=True, check=True, timeout=60).stdout
    probe = ('source /dev/stdin; COMP_WORDS=(softphone ca); COMP_CWORD=1; '
             '_softphone_completion softphone; printf "%s\\n" "${COMPREPLY[@]}"')
    env = {**os.environ, "PATH": f"{softphone.parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run([bash, "--norc", "-c", probe], input=script, capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["call"], out.stdout + out.stderr
    assert shutil.which("softphone", path=env["PATH"]) == str(softphone)
