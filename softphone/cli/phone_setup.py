"""One phone set-up for ``call`` and ``listen``: the hub connection (URL,
token, TLS), the ICE servers, the media settings, and each call's source,
sinks and audio devices.

Everything here is built from the typed option groups of
:mod:`softphone.cli.options`; nothing is read from the click context except
that bad values are reported as click errors (exit 2, one line).
The media-wiring functions (:func:`media_config`, :func:`audio_device`,
:func:`make_source`, :func:`make_sinks`) are all in this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from softphone.cli.config_wiring import named_device, settings_of
from softphone.cli.options import (
    AudioDeviceOptions,
    HubClientOptions,
    IceOptions,
    MediaOptions,
    ProcessingOptions,
    RestartOptions,
    TlsClientOptions,
    VoiceOptions,
)
from softphone.cli.recordings import check_record, record_path
from softphone.cli.runtime import fail
from softphone.core.callstate import CallTimeouts, ExitCode

if TYPE_CHECKING:
    import ssl

    from softphone.client.phone import Phone
    from softphone.media.encoded import SharedPrompt
    from softphone.media.recording import RecordingThread
    from softphone.media.rtc import MediaConfig


def client_tls(tls: TlsClientOptions) -> ssl.SSLContext | None:
    """The ssl context for Phone(ssl_context=...) (None: the system's CAs)."""
    from softphone.hub.tls import TLSConfigError, client_context

    try:
        return client_context(tls.ca_file, tls.insecure)
    except TLSConfigError as exc:  # a file an option names: exit 1 (README's exit codes)
        fail(f"--ca-file: {exc}")


def media_config(voice: VoiceOptions, processing: ProcessingOptions | None = None,
                 restart: RestartOptions | None = None) -> MediaConfig:
    """The MediaConfig asked for by --bitrate / --redundancy / --simulate-loss,
    --no-aec / --no-ns / --no-agc and the media restart options."""
    from softphone.core.restart_events import RestartSettings
    from softphone.media.apm import VoiceSettings
    from softphone.media.netsim import Impairment
    from softphone.media.opus import EncoderSettings
    from softphone.media.rtc import MediaConfig

    settings: dict[str, Any] = {}
    if voice.bitrate_kbps is not None:
        settings["bitrate"] = voice.bitrate_kbps * 1000
    if voice.redundancy is not None:
        settings["redundancy"] = voice.redundancy
    loss = voice.simulate_loss
    p = processing or ProcessingOptions()
    r = restart or RestartOptions()
    return MediaConfig(encoder=EncoderSettings(**settings),
                       impairment=Impairment(loss=loss / 100, seed=0) if loss else None,
                       voice_processing=VoiceSettings(aec=p.aec, ns=p.ns, agc=p.agc),
                       restart=RestartSettings(silence=r.silence, probe_after=r.probe,
                                               retry_interval=r.retry, give_up=r.give_up),
                       restart_enabled=r.enabled)


def voice_notice(media: MediaOptions, noticed: set[str]) -> None:
    """With a microphone: say once if the processing asked for cannot run (package missing)."""
    from softphone.core.errors import MissingDependency
    from softphone.media.apm import load_binding

    p = media.processing
    if "voice" in noticed or not (p.aec or p.ns or p.agc):
        return
    noticed.add("voice")
    try:
        load_binding()
    except MissingDependency as exc:
        click.echo(f"softphone: {exc}", err=True)


def audio_device(kind: str, audio: AudioDeviceOptions, noticed: set[str]) -> Any:
    """The microphone ("input") or speaker ("output") the options ask for, or None.

    A device that is missing but was not asked for by name is a notice, said
    once per ``noticed`` (one set per command), not an error.
    """
    from softphone.cli.tui import open_mic, open_speaker
    from softphone.core.errors import MissingDependency
    from softphone.media.devices import DeviceError

    spec = audio.input if kind == "input" else audio.output
    if audio.no_audio:
        if spec:
            raise click.UsageError(f"use either --{kind} or --no-audio, not both")
        return None
    opener = open_mic if kind == "input" else open_speaker
    try:
        device, notice = opener(spec, required=bool(spec))
    except DeviceError as exc:  # (named where it came from: a flag, a variable, the file)
        fail(f"{_named(kind, spec)}: {exc}", ExitCode.USAGE)
    except MissingDependency as exc:  # a device named where there is none: a usage error
        if spec and has_no_devices(kind):
            fail(f"{_named(kind, spec)}: no such device: {exc}", ExitCode.USAGE)
        raise  # (PortAudio missing: said as such, exit 1)
    if notice and kind not in noticed:
        noticed.add(kind)
        click.echo(f"softphone: {notice} (see softphone devices, or --no-audio)", err=True)
    return device


def _named(kind: str, spec: str | None) -> str:
    return named_device(kind, spec or "", settings_of(click.get_current_context(silent=True)))


def has_no_devices(kind: str) -> bool:
    """Whether PortAudio works and sees no ``kind`` ("input", "output") device at all."""
    from softphone.core.errors import MissingDependency
    from softphone.media.devices import DeviceError, list_devices, load_sounddevice

    try:
        load_sounddevice()
        return not any(d.has("input" if kind == "input" else "output")
                       for d in list_devices())
    except (MissingDependency, DeviceError):
        return False


def make_prompt(media: MediaOptions, config: MediaConfig) -> SharedPrompt | None:
    """What --play or --tone sends, encoded once for every call (None: neither)."""
    from softphone.media.encoded import SharedPrompt
    from softphone.media.tracks import AudioFileError

    if media.play:
        try:
            return SharedPrompt.from_file(media.play, config.encoder)
        except AudioFileError as exc:  # a file an option names: exit 1 (README's exit codes)
            fail(f"--play: {exc}")
    if media.tone is not None:
        if not 0 < media.tone < 24_000:
            raise click.BadParameter(f"{media.tone} Hz: use 0 < HZ < 24000", param_hint="--tone")
        return SharedPrompt.tone(media.tone, settings=config.encoder)
    return None


def make_source(media: MediaOptions, noticed: set[str], *, echo: bool = False,
                prompt: SharedPrompt | None = None) -> Any:
    """The track to send (--play, --tone, --echo, else the microphone or silence).

    --play and --tone come from ``prompt`` (:func:`make_prompt`): encoded once,
    sent to every call (a tone looped); --echo sends each caller's packets back.
    """
    from softphone.media.encoded import PacketEcho, PromptSource
    from softphone.media.tracks import SilenceSource

    if prompt is not None:
        return PromptSource(prompt, loop=media.play is None)
    if echo:
        return PacketEcho()
    mic = audio_device("input", media.audio, noticed)
    if mic is not None:
        voice_notice(media, noticed)
    return mic if mic is not None else SilenceSource()


def make_output(media: MediaOptions, noticed: set[str], *, echo: bool = False) -> Any:
    """The speaker that plays what we hear (a call's output), or None (not with
    --echo unless --output names one)."""
    if echo and not media.audio.output:
        return None
    return audio_device("output", media.audio, noticed)


def make_sinks(path: str | None, *, new_folder: bool = False,
               thread: RecordingThread | None = None) -> list[Any]:
    """Where what we hear goes besides the speaker: the --record file ``path`` (its
    folder made if ``new_folder``: a template's, one per call; written on ``thread``,
    a :class:`~softphone.media.recording.RecordingThread`, if given)."""
    from softphone.media.sinks import RecorderSink

    if not path:
        return []
    try:
        if new_folder:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return [RecorderSink(path, thread=thread)]
    except OSError as exc:
        fail(f"cannot record to {path}: {exc.strerror or exc}")


class PhoneSetup:
    """What ``call`` and ``listen`` build the same way: the :class:`Phone`, and
    the source and sinks of each call. ``echo``: send each caller's audio back."""

    def __init__(self, client_id: str, hub: HubClientOptions, ice: IceOptions,
                 media: MediaOptions, *, echo: bool = False) -> None:
        self.client_id = client_id
        self.hub = hub
        self.ice = ice
        self.media = media
        self.echo = echo
        check_record(media.record, media.play)  # (now, not at the first call)
        #: The --record files of this command's calls so far: none replaced.
        self._recorded: set[str] = set()
        self.ssl_context = client_tls(hub.tls)
        self.media_config = media_config(media.voice, media.processing, media.restart)
        #: Device notices already said ("input", "output"): once per command.
        self._noticed: set[str] = set()
        self._prompt: SharedPrompt | None = None
        #: Every call's --record file is written on this one thread (made when first needed).
        self._recordings: RecordingThread | None = None

    def phone(self, timeouts: CallTimeouts, max_calls: int = 1) -> Phone:
        from softphone.client.phone import Phone

        return Phone(self.client_id, self.hub.server, ice_servers=self.ice.servers,
                     timeouts=timeouts, media=self.media_config, reconnect=True,
                     relay_only=self.ice.relay_only, token=self.hub.token,
                     ssl_context=self.ssl_context, max_calls=max_calls)

    def prompt(self) -> SharedPrompt | None:
        """--play / --tone, decoded and encoded once for every call of this command."""
        if self._prompt is None:
            self._prompt = make_prompt(self.media, self.media_config)
            if self._prompt is not None:  # encoded now, not as the first call starts sending
                self._prompt.payloads  # noqa: B018
        return self._prompt

    def source(self) -> Any:
        """The track to send; raises a click error for a bad --play/--tone/--input."""
        return make_source(self.media, self._noticed, echo=self.echo, prompt=self.prompt())

    def sinks(self, peer: str, n: int = 1) -> list[Any]:
        """The sinks of call ``n`` with ``peer``; exits (1) if --record cannot be written."""
        record = self.media.record
        if not record:
            return []
        if self._recordings is None:
            from softphone.media.recording import RecordingThread

            self._recordings = RecordingThread()
        path = record_path(record, peer, n, self._recorded)
        self._recorded.add(path)
        return make_sinks(path, new_folder="{" in record, thread=self._recordings)

    def close(self) -> None:
        """At the command's end: the recording thread writes what it was handed and ends
        (each file was complete when its call ended: this only ends the thread)."""
        if self._recordings is not None:
            self._recordings.close()

    def output(self) -> Any:
        """The speaker of a call (its output), or None."""
        return make_output(self.media, self._noticed, echo=self.echo)

    def call_media(self, peer: str, n: int = 1) -> tuple[Any, list[Any], Any]:
        """Source, sinks and output of call ``n`` (each call its own; --echo: the
        source is given the call's packets by the call itself)."""
        return self.source(), self.sinks(peer, n), self.output()
