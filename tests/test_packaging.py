"""What gets shipped: the wheel and the hub's systemd unit.

- The wheel is built (``python -m build --wheel``) from a copy of only what a
  clean clone has (pyproject, README, LICENSE, ``softphone/``), so nothing left
  over in this tree (``build/``, caches) can slip in. It must hold every file
  of the package (the browser phone, ``py.typed``, every subpackage), carry
  complete metadata that ``twine check`` accepts, and, installed into a fresh
  venv, pass ``softphone demo`` from an empty folder with no source tree.
- ``server/softphone-hub.service`` must pass ``systemd-analyze verify`` and
  score well in ``systemd-analyze security``; and the hub must run under the
  unit's MemoryDenyWriteExecute and RestrictAddressFamilies, which this test
  applies itself with the same seccomp rules systemd 252 installs for them.
"""

from __future__ import annotations

import asyncio
import email
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from softphone import __version__
from softphone.core.callstate import ExitCode

from .conftest import IN_CI, need, need_command

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "server" / "softphone-hub.service"


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of what a clean clone holds."""
    need(_has_module("build"), "the 'build' module", "pip install -e '.[test]'")
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "softphone", src / "softphone",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir",
                          str(work / "dist"), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (built,) = (work / "dist").glob("softphone-*.whl")
    return built


def _package_files() -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / "softphone").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def test_wheel_holds_the_whole_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = z.read(f"softphone-{__version__}.dist-info/entry_points.txt").decode()
    assert wheel.name == f"softphone-{__version__}-py3-none-any.whl"
    missing = _package_files() - names
    assert not missing, f"not in the wheel: {sorted(missing)}"
    assert "softphone/py.typed" in names
    assert any(n.startswith("softphone/hub/web/") and n.endswith(".html") for n in names)
    for package in ("core", "media", "client", "hub", "cli"):
        assert f"softphone/{package}/__init__.py" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "server/"))]
    assert "softphone = softphone.cli.entry:run" in entry_points


def test_wheel_metadata_is_complete(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        meta = email.message_from_bytes(z.read(f"softphone-{__version__}.dist-info/METADATA"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["Name"] == "softphone" and meta["Version"] == __version__
    assert meta["License-Expression"] == "MIT"
    assert meta["Requires-Python"] == ">=3.11"
    assert meta["Description-Content-Type"] == "text/markdown"
    assert meta["Summary"] and meta["Author"] and meta["Keywords"]
    assert "A pure-Python WebRTC softphone" in str(meta.get_payload())
    classifiers = meta.get_all("Classifier") or []
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert "Typing :: Typed" in classifiers and "Topic :: Communications :: Telephony" in \
        classifiers
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert {"Homepage", "Source", "Issues", "Documentation"} <= set(urls)
    required = [r.replace(" ", "") for r in meta.get_all("Requires-Dist") or []]
    for dependency in project["dependencies"]:
        name = re.split(r"[<>=!;\[ ]", dependency, maxsplit=1)[0]
        assert any(r.lower().startswith(name.lower()) for r in required), name


def test_twine_check(wheel: Path) -> None:
    need(_has_module("twine"), "the 'twine' module", "pip install -e '.[test]'")
    out = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(wheel)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "PASSED" in out.stdout, out.stdout + out.stderr


@pytest.mark.packaging
@pytest.mark.timeout(900)
def test_wheel_installs_into_a_clean_venv_and_runs_the_demo(wheel: Path,
                                                            tmp_path: Path) -> None:
    """pip install the wheel into a fresh venv (no system site-packages; dependencies from
    the package index, or pip's cache), then ``softphone demo`` from an empty folder."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    started = time.monotonic()
    # (--no-compile: not the ~5 s of byte-compiling every dependency; what the demo
    # imports is compiled as it runs, and pip only warns if compiling fails anyway.)
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                              "--disable-pip-version-check", "--no-compile", str(wheel)],
                             capture_output=True, text=True, env=env, timeout=800)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    installed_in = time.monotonic() - started
    empty = tmp_path / "empty"
    empty.mkdir()
    where = subprocess.run([str(python), "-c", "import softphone, sys; print(softphone.__file__);"
                            "print(any('site-packages' not in p and p.endswith('main') "
                            "for p in sys.path))"],
                           cwd=empty, env=env, capture_output=True, text=True, check=True)
    module_file, source_on_path = where.stdout.split()
    assert Path(module_file).is_relative_to(venv), module_file
    assert source_on_path == "False"
    softphone = venv / "bin" / "softphone"
    version = subprocess.run([str(softphone), "--version"], cwd=empty, env=env,
                             capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == f"softphone, version {__version__}"
    demo = subprocess.run([str(softphone), "demo"], cwd=empty, env=env, capture_output=True,
                          text=True, timeout=120)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "demo passed" in demo.stdout
    assert list(empty.iterdir()) == []  # it left nothing behind
    print(f"wheel install took {installed_in:.0f} s")


@pytest.mark.packaging
@pytest.mark.timeout(600)
def test_wheel_installs_with_pipx(wheel: Path, tmp_path: Path) -> None:
    """``pipx install`` the wheel into a PIPX_HOME and PIPX_BIN_DIR of the test's own
    (pipx makes the venv with its own Python; dependencies from the package index, or
    pip's cache); the ``softphone`` it puts in the bin folder runs from an empty folder."""
    pipx = need_command("pipx", "pipx")
    home, bin_dir = tmp_path / "pipx-home", tmp_path / "pipx-bin"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
           and not k.startswith("PIPX_")}
    env.update(PIPX_HOME=str(home), PIPX_BIN_DIR=str(bin_dir),
               PIPX_MAN_DIR=str(tmp_path / "pipx-man"))
    empty = tmp_path / "empty"
    empty.mkdir()
    started = time.monotonic()
    install = subprocess.run([pipx, "install", "--pip-args=--no-compile", str(wheel)],
                             cwd=empty, env=env, capture_output=True, text=True, timeout=500)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    installed_in = time.monotonic() - started
    softphone = bin_dir / "softphone"
    assert softphone.resolve().is_relative_to(home), softphone.resolve()
    version = subprocess.run([str(softphone), "--version"], cwd=empty, env=env,
                             capture_output=True, text=True, timeout=60)
    assert version.returncode == 0, version.stdout + version.stderr
    assert version.stdout.strip() == f"softphone, version {__version__}"
    python = home / "venvs" / "softphone" / "bin" / "python"
    where = subprocess.run([str(python), "-c", "import softphone; print(softphone.__file__)"],
                           cwd=empty, env=env, capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()).is_relative_to(home), where.stdout
    assert list(empty.iterdir()) == []
    print(f"pipx install took {installed_in:.0f} s")


# -------------------------------------------------------- the service ---


def _unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's softphone (verify checks it exists)."""
    softphone = Path(sys.executable).parent / "softphone"
    assert softphone.exists(), softphone
    text = UNIT.read_text().replace("/opt/softphone/bin/softphone", str(softphone))
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    return copy


def test_unit_reads_its_secret_from_a_credential() -> None:
    text = UNIT.read_text()
    settings = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert "LoadCredential=secret:/etc/softphone/secret" in settings
    assert "Environment=SOFTPHONE_SECRET_FILE=%d/secret" in settings
    exec_start = next(line for line in settings if line.startswith("ExecStart="))
    assert "--secret" not in exec_start and "secret" not in exec_start
    assert not any(line.startswith("Environment=SOFTPHONE_SECRET=") for line in settings)
    for directive in ("DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict",
                      "ProtectHome=yes", "PrivateTmp=yes", "PrivateDevices=yes",
                      "CapabilityBoundingSet=", "MemoryDenyWriteExecute=yes",
                      "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
                      "SystemCallFilter=@system-service", "LockPersonality=yes",
                      "RestrictNamespaces=yes", "RestrictRealtime=yes",
                      "ProtectKernelTunables=yes", "ProtectKernelModules=yes",
                      "ProtectKernelLogs=yes", "ProtectControlGroups=yes", "UMask=0077",
                      "LimitNOFILE=65536"):
        assert directive in settings, directive


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = need_command("systemd-analyze", "systemd")
    unit = _unit_for_this_machine(tmp_path)
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                         timeout=60)
    ours = [line for line in (out.stdout + out.stderr).splitlines() if UNIT.name in line]
    assert out.returncode == 0 and not ours, out.stdout + out.stderr


def test_unit_exposure_is_low(tmp_path: Path) -> None:
    analyze = need_command("systemd-analyze", "systemd")
    unit = _unit_for_this_machine(tmp_path)
    out = subprocess.run([analyze, "security", "--offline=yes", str(unit)],
                         capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", out.stdout)
    assert found, out.stdout + out.stderr
    assert float(found.group(1)) <= 2.0, out.stdout  # systemd calls <= 2.0 "OK"


# Applies what MemoryDenyWriteExecute=yes and RestrictAddressFamilies=AF_INET AF_INET6
# AF_UNIX make systemd 252 install (src/shared/seccomp-util.c): a seccomp filter
# refusing mmap with PROT_WRITE|PROT_EXEC, mprotect/pkey_mprotect with PROT_EXEC,
# shmat with SHM_EXEC (EPERM), and socket() of any other family (EAFNOSUPPORT).
# It checks that it holds, then execs the command.
SANDBOX = textwrap.dedent("""\
    import ctypes, errno, mmap, os, socket, struct, sys
    LD, JEQ, JSET, AND, RET = 0x20, 0x15, 0x45, 0x54, 0x06
    ALLOW, ERRNO = 0x7FFF0000, 0x00050000
    def op(code, k, jt=0, jf=0):
        return struct.pack("HBBI", code, jt, jf, k)
    deny_perm = op(RET, ERRNO | errno.EPERM)
    deny_af = op(RET, ERRNO | errno.EAFNOSUPPORT)
    allow = op(RET, ALLOW)
    prog = [
        op(LD, 4), op(JEQ, 0xC000003E, 1, 0), allow,   # x86_64 only
        op(LD, 0),
        op(JEQ, 9, 0, 5),                               # mmap: W and X
        op(LD, 32), op(AND, 6), op(JEQ, 6, 0, 1), deny_perm, allow,
        op(JEQ, 10, 1, 0), op(JEQ, 329, 0, 4),          # mprotect, pkey_mprotect: X
        op(LD, 32), op(JSET, 4, 0, 1), deny_perm, allow,
        op(JEQ, 30, 0, 4),                              # shmat: SHM_EXEC
        op(LD, 32), op(JSET, 0o100000, 0, 1), deny_perm, allow,
        op(JEQ, 41, 0, 6),                              # socket: the family
        op(LD, 16), op(JEQ, 1, 2, 0), op(JEQ, 2, 1, 0), op(JEQ, 10, 0, 1), allow, deny_af,
        allow,
    ]
    code = b"".join(prog)
    buf = ctypes.create_string_buffer(code)
    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fprog = Fprog(len(prog), ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(38, 1, 0, 0, 0) == 0           # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0, ctypes.get_errno()
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC)
        sys.exit("W+X mmap was allowed")
    except PermissionError:
        pass
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)
        sys.exit("AF_NETLINK was allowed")
    except OSError as exc:
        assert exc.errno == errno.EAFNOSUPPORT, exc
    print("sandbox: W+X memory and other socket families refused", flush=True)
    os.execv(sys.argv[1], sys.argv[1:])
""")


def _unit_environment(credentials: Path) -> dict[str, str]:
    """The unit's Environment= lines, with %d (its credentials folder) as ``credentials``."""
    env: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        if line.startswith("Environment="):
            name, value = line.removeprefix("Environment=").split("=", 1)
            env[name] = value.replace("%d", str(credentials))
    assert env["SOFTPHONE_SECRET_FILE"] == f"{credentials}/secret", env
    return env


def test_unit_environment_gives_serve_its_secret_from_the_credential(tmp_path: Path) -> None:
    """What serve takes from the unit's environment: the secret read from the credential
    file, the options from /etc/softphone/hub.toml (here a copy)."""
    from click.testing import CliRunner

    from softphone.cli.main import main

    (tmp_path / "secret").write_text("c" * 40 + "\n")
    (tmp_path / "secret").chmod(0o400)
    env = _unit_environment(tmp_path)
    config = tmp_path / "hub.toml"
    config.write_text('[serve]\nhost = "0.0.0.0"\nport = 8443\n')
    env["SOFTPHONE_CONFIG"] = str(config)
    result = CliRunner().invoke(main, ["--show-settings-json", "serve"], env=env)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["settings"]["serve.secret"] == {
        "value": "****", "source": "environment",
        "origin": f"SOFTPHONE_SECRET_FILE ({tmp_path}/secret)"}
    assert shown["settings"]["serve.port"]["source"] == "file"
    assert (shown["arguments"]["host"], shown["arguments"]["port"]) == ("0.0.0.0", 8443)
    assert result.stderr == ""  # the credential is private: no warning


def _unit_value(key: str) -> str | None:
    """The unit's last ``key=`` line's value."""
    found = [line.split("=", 1)[1].strip() for line in UNIT.read_text().splitlines()
             if line.startswith(f"{key}=")]
    return found[-1] if found else None


def _restart_prevented() -> set[int]:
    """The exit codes after which the unit's ``Restart=on-failure`` does not restart
    (every ``RestartPreventExitStatus=`` line adds to the list; an empty one clears it)."""
    codes: set[int] = set()
    for line in UNIT.read_text().splitlines():
        if line.startswith("RestartPreventExitStatus="):
            values = line.split("=", 1)[1].split()
            if not values:
                codes.clear()
            codes.update(int(value) for value in values)
    return codes


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("problem, code", [
    ("no config file", 1), ("no secret file", 1), ("a bad config file", 2),
    ("a malformed redis URL", 2), ("redis unreachable", 12)])
def test_unit_stops_on_configuration_errors_and_retries_an_outage(
        tmp_path: Path, problem: str, code: int) -> None:
    """``softphone serve`` as the unit runs it, with a configuration mistake: it exits
    at once with one line. A bad configuration (2) is in RestartPreventExitStatus
    ("the service stops at once", server/README.md); a file that cannot be read (1,
    also a crash's code) and an unreachable Redis (12) are restarted, within the
    unit's start limit."""
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    if problem != "no secret file":
        (credentials / "secret").write_text("s" * 40 + "\n")
        (credentials / "secret").chmod(0o400)
    config = tmp_path / "hub.toml"
    serve = {"no config file": None, "no secret file": "port = 0\n",
             "a bad config file": 'port = "eighty"\n',
             "a malformed redis URL": 'port = 0\nredis = "redis://127.0.0.1:6379/abc"\n',
             "redis unreachable": f'port = 0\nredis = "redis://127.0.0.1:{_free_port()}/0"\n',
             }[problem]
    if serve is not None:
        config.write_text("[serve]\n" + serve)
    if "redis" in problem:
        need(_has_module("redis"), "the redis package", "pip install 'softphone[redis]'")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOFTPHONE_")}
    env.update(_unit_environment(credentials), SOFTPHONE_CONFIG=str(config))
    softphone = Path(sys.executable).parent / "softphone"
    out = subprocess.run([str(softphone), "serve"], capture_output=True, text=True,
                         env=env, timeout=30)
    assert out.returncode == code, out.stdout + out.stderr
    assert out.stdout == "" and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith("softphone: "), out.stderr
    # A bad configuration (2) stops the unit at once; a file that cannot be read (1:
    # also a crash's code) and an outage (12) are retried, until its start limit.
    restarted = code not in _restart_prevented()
    assert restarted == (code != ExitCode.USAGE), (problem, _restart_prevented())
    assert _unit_value("StartLimitBurst") == "5", "a failing hub must not restart forever"


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from softphone.hub.tls import self_signed

    made = self_signed(folder, ["127.0.0.1"])
    return made.cert, made.key


@pytest.fixture
def sandboxed_hub(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    if platform.machine() != "x86_64" or not sys.platform.startswith("linux"):
        need(not IN_CI, "an x86_64 Linux machine", "the sandbox's seccomp filter is written "
             "for x86_64 system call numbers")
        pytest.skip("the sandbox's seccomp filter is written for x86_64 Linux")
    cert, key = _self_signed(tmp_path / "tls")
    softphone = Path(sys.executable).parent / "softphone"
    # As the unit runs it: `softphone serve` alone, its options from the config file
    # (SOFTPHONE_CONFIG), its secret from a credential file (SOFTPHONE_SECRET_FILE).
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    (credentials / "secret").write_text("s" * 40 + "\n")
    (credentials / "secret").chmod(0o400)
    config = tmp_path / "hub.toml"
    config.write_text(f'[serve]\nport = 0\nloop = "uvloop"\ncert = "{cert}"\n'
                      f'key = "{key}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOFTPHONE_")}
    env.update(_unit_environment(credentials), SOFTPHONE_CONFIG=str(config))
    proc = subprocess.Popen(
        [sys.executable, "-c", SANDBOX, str(softphone), "serve"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    def failed(seen: str) -> str:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        return seen + err

    try:
        first = proc.stdout.readline()
        assert first.startswith("sandbox: W+X memory"), failed(first)
        line = proc.stdout.readline()
        found = re.search(rf"softphone hub {re.escape(__version__)} listening on "
                          r"(https://\S+)", line)
        assert found, failed(line)
        yield proc, found.group(1), cert
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_hub_runs_under_the_units_memory_and_socket_rules(
        sandboxed_hub: tuple[subprocess.Popen[str], str, Path]) -> None:
    """uvloop, TLS (OpenSSL), aiohttp's and websockets' C code, JWT and /metrics: all work
    with no writable+executable memory and only AF_INET/AF_INET6/AF_UNIX sockets."""
    import ssl

    from softphone.hub.auth import mint_token

    proc, base, cert = sandboxed_hub
    context = ssl.create_default_context(cafile=str(cert))

    async def exercise() -> None:
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.get(f"{base}/healthz", ssl=context) as resp:
                assert (await resp.json())["status"] == "ok"
            async with session.get(f"{base}/metrics", ssl=context) as resp:
                assert "softphone_hub_connections" in await resp.text()
            token = mint_token("s" * 40, "alice", time.time())
            ws_url = base.replace("https", "wss") + f"/ws?id=alice&token={token}"
            async with session.ws_connect(ws_url, ssl=context) as ws:
                await ws.send_str(json.dumps({"type": "hangup", "to": "bob"}))
                answer = await ws.receive_json(timeout=10)
                assert answer["data"]["code"] == "offline"
            async with session.get(f"{base}/", ssl=context) as resp:
                assert resp.status == 200
        await asyncio.sleep(0.25)  # TLS transports finish closing (aiohttp's advice)

    asyncio.run(exercise())
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, out + err
    assert "hub stopped" in out
    assert "Traceback" not in err and "Operation not permitted" not in err, err
