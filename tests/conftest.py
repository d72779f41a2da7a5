"""Shared fixtures: a real hub on a real socket, softphone subprocesses, coturn, PulseAudio.

What tests share besides fixtures lives in tests/support/ (helpers.py: Proc,
read_wav, assert_tone; coturn.py). ``Proc`` and ``read_wav`` are importable
from here too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from softphone.hub.server import Hub, HubConfig

from .support.coturn import Coturn, StartCoturn
from .support.helpers import Proc, read_wav, stop_all

__all__ = ["IN_CI", "Proc", "hub_url", "need", "need_command", "read_wav"]

if TYPE_CHECKING:
    from .support.pulse import PulseLab

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(condition: bool, what: str, how: str) -> None:
    """Skip (outside CI) or fail (in CI) when a test dependency is missing."""
    if condition:
        return
    message = f"{what} is missing; {how}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


# The test command runs the suite on two pytest-xdist workers with
# ``--dist loadgroup``: tests of one group run one after another on one worker.
# The network lab's calls (root, namespaces, iptables, conntrack) and the wheel
# build each keep to one worker; so do the real-time calls and threads that
# count late frames as lost (CPU-bound: two of them side by side on two cores
# starve each other). Everything else binds free ports and private
# directories, so it may run beside anything. A key is a folder or file name,
# or ``file::test`` for one test of a file.
_GROUPS = {"netlab": "netlab", "test_packaging.py": "packaging",
           "test_voice_call.py": "realtime", "test_echo_call.py": "realtime",
           "test_apm.py::test_two_threads_in_real_time": "realtime"}


def _group(nodeid: str) -> str | None:
    """The group of a test (``tests/media/test_apm.py::test_x[7]``), or None."""
    path, _, name = nodeid.partition("::")
    parts = path.split("/")
    test = f"{parts[-1]}::{name.rpartition('::')[2].partition('[')[0]}"
    return next((group for key, group in _GROUPS.items() if key in parts or key == test),
                None)


@pytest.hookimpl(tryfirst=True)  # (before xdist's worker reads the marks)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    grouped: list[pytest.Item] = []
    for item in items:
        group = _group(item.nodeid)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
            grouped.append(item)
    # The groups first: each is long and runs on one worker, so it starts at once
    # while the other workers share the rest (it would otherwise be the run's tail).
    chosen = set(grouped)
    items[:] = grouped + [item for item in items if item not in chosen]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup`` that groups by :func:`_group` itself.

    xdist 3.8 passes a test's group on by appending ``@group`` to its node id,
    which pytest 9.2's structured node ids no longer take: the marks alone
    grouped nothing, and every group was spread over both workers
    (pytest-dev/pytest-xdist#1386).
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class Grouping(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid) or super()._split_scope(nodeid)

    return Grouping(config, log)


def need_command(name: str, package: str) -> str:
    path = shutil.which(name)
    need(path is not None, f"the command {name!r}", f"install it: apt-get install {package}")
    assert path is not None
    return path


@pytest.fixture(autouse=True)
def no_user_settings(tmp_path_factory: pytest.TempPathFactory,
                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test without this user's config file or SOFTPHONE_* variables: an
    empty XDG_CONFIG_HOME of its own (subprocesses inherit it)."""
    for name in [n for n in os.environ if n.startswith("SOFTPHONE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg")))


@contextlib.asynccontextmanager
async def running_hub() -> AsyncIterator[Hub]:
    """Our hub, in-process, on 127.0.0.1 and a free port; no STUN handed out."""
    h = Hub(HubConfig(ice_servers=[]))
    await h.start("127.0.0.1", 0)
    try:
        yield h
    finally:
        await h.stop()


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    """Our hub, in-process, on 127.0.0.1 and a free port; no STUN handed out."""
    async with running_hub() as h:
        yield h


def hub_url(h: Hub) -> str:
    return f"http://127.0.0.1:{h.port}"


@contextlib.asynccontextmanager
async def phone_pair(h: Hub, **b_settings: Any) -> AsyncIterator[tuple[Any, Any]]:
    """Phones ``a`` and ``b`` (``b_settings``: e.g. ``max_calls``) connected to ``h``,
    closed after."""
    from softphone.client.phone import Phone

    a, b = Phone("a", hub_url(h)), Phone("b", hub_url(h), **b_settings)
    await a.connect()
    await b.connect()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Collects subprocesses; every one still running is killed at the end."""
    started: list[Proc] = []
    yield started
    stop_all(started)


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[StartCoturn]:
    """Starts real coturns on 127.0.0.1 (``server/coturn.conf``, secret
    TURN_SECRET): ``coturn(*extra_turnserver_options)`` -> a running Coturn."""
    turnserver = need_command("turnserver", "coturn")
    started: list[Coturn] = []

    def start(*extra: str) -> Coturn:
        server = Coturn(tmp_path / f"coturn{len(started)}", turnserver=turnserver, extra=extra)
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def pulse() -> Iterator[PulseLab]:
    """A private PulseAudio server with virtual devices for clients ``a`` and ``b``."""
    from .support.pulse import PulseLab, need_pulse  # (pulse imports this module)

    need_pulse()
    lab = PulseLab(("a", "b"), client_shm=False).start()  # (PulseAudio 16's SHM abort)
    try:
        yield lab
    finally:
        lab.stop()
