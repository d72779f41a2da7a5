"""``softphone doctor``: what is wrong with my setup?

Each check is a function returning :class:`Result` (a line, and a fix when
something is off). The network ones are in :mod:`softphone.cli.doctor_net`
(the hub, TLS, the token, ``/ice-servers``) and :mod:`softphone.cli.doctor_ice`
(STUN, TURN), with what their answers mean for a call's media in
:mod:`softphone.cli.doctor_verdict`; this machine's (PortAudio, the default
microphone and speaker at 48 kHz, libopus) are here, with the runner
(:func:`run_doctor`), the report (:func:`report_lines`, :func:`report_json`)
and the exit code (:func:`exit_code`).

Exit codes: 0 (:data:`EXIT_CALL_POSSIBLE`) when a call can be made, maybe
with warnings (no STUN, only TURN over TCP, TURN credentials refused where
STUN works, no microphone, a token expiring soon); 13 (:data:`EXIT_NO_CALL`,
``ExitCode.DOCTOR_FAILED``) when a check a call needs failed (no id set, the
hub unreachable, its certificate not trusted, the token refused, no
``/ice-servers``, libopus missing, a named device that cannot be opened, UDP
blocked with the first TURN URL over UDP, or relay-only with no TURN server
working).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

from softphone.core.callstate import ExitCode

EXIT_CALL_POSSIBLE: Final = int(ExitCode.COMPLETED)
EXIT_NO_CALL: Final = int(ExitCode.DOCTOR_FAILED)

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Result:
    """One check: passed or not, what was seen, and what to do about it."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    #: A call needs this: when it fails, no call can be made.
    needed: bool = True
    #: Facts for ``--json`` (addresses, expiry times ...).
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> Status:
        """``fail``: a call is not possible; ``warn``: it is, with something to fix."""
        if not self.ok:
            return "fail" if self.needed else "warn"
        return "warn" if self.fix else "ok"


@dataclass(frozen=True)
class DoctorTarget:
    """What to check: the settings a call would use."""

    server: str
    client_id: str | None = None
    token: str | None = None
    ca_file: str | None = None
    insecure: bool = False
    #: ``ice.servers`` (empty: the hub's /ice-servers), with their TURN credentials.
    ice_servers: tuple[str, ...] = ()
    ice_username: str | None = None
    ice_credential: str | None = None
    relay_only: bool = False
    audio_input: str | None = None
    audio_output: str | None = None
    #: Check the sound devices (off for a headless box that only uses --tone).
    audio: bool = True
    #: Sign in with our own id to check the token for real. The hub then gives
    #: our id to this connection: a phone listening with the same id elsewhere
    #: is replaced (exit 11), so it is off unless asked for (``--register``).
    #: Without it the token's claims are read, and a hub that hands out TURN
    #: credentials judges the token through ``/ice-servers``, signing nobody in.
    register: bool = False
    #: Seconds to wait for each answer (HTTP, WebSocket, STUN, TURN).
    timeout: float = 4.0

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> DoctorTarget:
        """From resolved settings (:func:`softphone.cli.config_resolve.resolve`)."""
        fields: dict[str, Any] = {
            "server": settings.value("server"), "client_id": settings.value("id"),
            "token": settings.value("token"), "ca_file": settings.value("ca_file"),
            "insecure": bool(settings.value("insecure")),
            "ice_servers": tuple(settings.value("ice.servers") or ()),
            "ice_username": settings.value("ice.username"),
            "ice_credential": settings.value("ice.credential"),
            "relay_only": bool(settings.value("ice.relay")),
            "audio_input": settings.value("audio.input"),
            "audio_output": settings.value("audio.output"),
        }
        return cls(**{**fields, **overrides})


def span(seconds: float) -> str:
    """``3 h 5 min``, ``12 min``, ``40 s``, ``2 days`` (of ``abs(seconds)``)."""
    seconds = abs(seconds)
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.0f} days"
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    if seconds >= 60:
        return f"{int(seconds // 60)} min"
    return f"{int(seconds)} s"


def when(timestamp: float) -> str:
    """``2025-01-31 14:05 UTC``."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def turn_expiry(username: str) -> float | None:
    """When TURN REST credentials (username ``EXPIRY:user``) expire; None: not REST ones."""
    head = username.split(":", 1)[0]
    return float(head) if head.isdigit() else None


# ------------------------------------------------------ this machine ---


def check_libopus() -> Result:
    """The libopus calls encode and decode with loads (PyAV's copy, else the system's:
    :func:`softphone.media.libopus.load`), and which one it is."""
    from softphone.core.errors import MissingDependency
    from softphone.media import libopus
    from softphone.media.opus import require_libopus

    try:
        require_libopus()
        lib = libopus.load()
    except MissingDependency as exc:
        return Result("libopus", False, str(exc), "apt-get install libopus0")
    except Exception as exc:  # a library that is there but does not load: a line, no trace
        return Result("libopus", False, f"does not load: {exc}", "apt-get install libopus0")
    which = "PyAV's copy" if lib.bundled else "the system's"
    return Result("libopus", True, f"{lib.version} loads ({which})",
                  data={"version": lib.version, "path": lib.path, "bundled": lib.bundled})


def check_portaudio() -> Result:
    """The PortAudio library that microphone and speaker go through."""
    from softphone.core.errors import MissingDependency
    from softphone.media.sounddev import load_sounddevice

    try:
        sd = load_sounddevice()
    except MissingDependency as exc:
        return Result("portaudio", False, str(exc).split(": apt-get")[0],
                      "apt-get install libportaudio2 (or call with --tone/--play, "
                      "--record, --no-audio)", needed=False)
    version = str(sd.get_portaudio_version()[1]).split(",")[0]
    return Result("portaudio", True, version, data={"version": version})


def check_device(kind: Literal["input", "output"], spec: str | None,
                 seconds: float = 0.1) -> Result:
    """The microphone (``input``) or speaker a call would use opens at 48 kHz mono.

    Opened for ``seconds`` and closed: nothing is kept or played.
    """
    from softphone.core.errors import MissingDependency
    from softphone.media.audioformat import SAMPLE_RATE
    from softphone.media.sounddev import DeviceError, find_device, load_sounddevice

    name = "microphone" if kind == "input" else "speaker"
    setting = f"audio.{kind}"
    try:
        sd = load_sounddevice()
        device = find_device(spec, kind)
    except MissingDependency as exc:
        return Result(name, False, str(exc).split("; use ")[0],
                      f"check the sound card or audio server (softphone devices), or call "
                      f"with {'--tone/--play' if kind == 'input' else '--record'} or "
                      "--no-audio", needed=bool(spec))
    except DeviceError as exc:
        return Result(name, False, str(exc),
                      f"pick one that softphone devices lists: softphone config set "
                      f"{setting} INDEX", needed=True)
    stream_class = sd.InputStream if kind == "input" else sd.OutputStream
    which = f"{'the default ' + name if not spec else name} {device.name!r}"
    rates = [SAMPLE_RATE] + ([int(device.default_rate)]
                             if int(device.default_rate) != SAMPLE_RATE else [])
    errors = []
    for rate in rates:
        try:
            stream = stream_class(device=device.index, channels=1, dtype="int16",
                                  samplerate=rate)
            try:
                stream.start()
                time.sleep(seconds)
                stream.stop()
            finally:
                stream.close()
        except (sd.PortAudioError, ValueError) as exc:
            errors.append(f"{rate} Hz: {exc}")
            continue
        data = {"device": device.name, "index": device.index, "rate": rate}
        if rate == SAMPLE_RATE:
            return Result(name, True, f"{which} opens at 48 kHz", data=data)
        return Result(name, True, f"{which} opens only at {rate} Hz (resampled to 48 kHz)",
                      "a device that takes 48 kHz saves a resampling step", data=data)
    return Result(name, False, f"{which} does not open: {'; '.join(errors)}",
                  f"is it in use or gone? softphone devices lists them; softphone config "
                  f"set {setting} INDEX", needed=bool(spec))


def local_checks(target: DoctorTarget) -> list[Result]:
    """libopus, and (unless ``target.audio`` is off) PortAudio and both devices."""
    results = [check_libopus()]
    if target.audio:
        portaudio = check_portaudio()
        results.append(portaudio)
        if portaudio.ok:
            results.append(check_device("input", target.audio_input))
            results.append(check_device("output", target.audio_output))
    return results


# ------------------------------------------------------------ runner ---


def check_id(target: DoctorTarget) -> list[Result]:
    """A FAIL line when no id is set: ``call`` and ``listen`` cannot run without one
    (the network checks still run, as a throw-away ``doctor-...`` id)."""
    if target.client_id is not None:
        return []
    return [Result("id", False, "no id set: call and listen need your id on the hub",
                   "softphone config set id NAME (or --as NAME)")]


async def run_doctor(target: DoctorTarget, now: float | None = None) -> list[Result]:
    """Every check, network and local, in the order they are reported."""
    from softphone.cli import doctor_net

    local = asyncio.ensure_future(asyncio.to_thread(local_checks, target))
    try:
        network = await doctor_net.network_checks(target, time.time() if now is None else now)
    finally:
        results = await local
    return [*check_id(target), *network, *results]


def exit_code(results: Sequence[Result]) -> int:
    """0 when a call can be made, :data:`EXIT_NO_CALL` when a needed check failed."""
    return EXIT_NO_CALL if any(r.status == "fail" for r in results) else EXIT_CALL_POSSIBLE


_LABEL: Final = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


def report_lines(results: Sequence[Result]) -> list[str]:
    """One line per check (and one for its fix), then the verdict."""
    width = max((len(r.name) for r in results), default=0)
    lines = []
    for r in results:
        lines.append(f"{_LABEL[r.status]}  {r.name:<{width}}  {r.detail}")
        if r.fix:
            lines.append(f"      {'':<{width}}  fix: {r.fix}")
    failed = [r.name for r in results if r.status == "fail"]
    warned = sum(r.status == "warn" for r in results)
    if failed:
        lines.append(f"a call cannot be made: {', '.join(dict.fromkeys(failed))} "
                     f"(exit {EXIT_NO_CALL})")
    else:
        lines.append("a call can be made" + (f" ({warned} warning{'s' * (warned != 1)})"
                                             if warned else ""))
    return lines


def report_json(results: Sequence[Result]) -> dict[str, Any]:
    """``--json``: every check with its status, and the verdict and exit code."""
    code = exit_code(results)
    return {"call_possible": code == EXIT_CALL_POSSIBLE, "exit_code": code,
            "checks": [{**asdict(r), "data": dict(r.data), "status": r.status}
                       for r in results]}
