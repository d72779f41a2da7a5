"""TLS for the hub: self-signed certificates, ssl contexts, the CLI's options and their errors.

A real hub on a real socket over https/wss; a real client checking its
certificate. (The browser over https is in tests/test_browser.py.)
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner
from cryptography import x509

from softphone.cli.main import main
from softphone.client.phone import Phone
from softphone.client.signaling import HubUnreachable
from softphone.hub.server import Hub, HubConfig
from softphone.hub.tls import (
    TLSConfigError,
    client_context,
    default_names,
    local_addresses,
    self_signed,
    server_context,
)


def test_self_signed_covers_names_and_is_reused(tmp_path: Path) -> None:
    names = default_names(["phone.example"])
    assert "localhost" in names and "127.0.0.1" in names and "phone.example" in names
    assert all(not ipaddress.ip_address(a).is_link_local for a in local_addresses())
    made = self_signed(tmp_path, names)
    assert not made.reused and made.key.stat().st_mode & 0o077 == 0
    cert = x509.load_pem_x509_certificate(made.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    again = self_signed(tmp_path, names)
    assert again.reused and again.fingerprint == made.fingerprint
    more = self_signed(tmp_path, [*names, "other.example"])  # a new name: a new certificate
    assert not more.reused and more.fingerprint != made.fingerprint


async def test_hub_over_https_and_wss(tmp_path: Path) -> None:
    made = self_signed(tmp_path, ["localhost", "127.0.0.1"])
    hub = Hub(HubConfig(ice_servers=[]))
    port = await hub.start("127.0.0.1", 0, ssl_context=server_context(made.cert, made.key))
    server = f"https://127.0.0.1:{port}"
    try:
        trusted = client_context(made.cert)
        assert trusted is not None
        async with aiohttp.ClientSession() as session:
            async with session.get(server + "/healthz", ssl=trusted) as resp:
                assert resp.status == 200
            for origin, cors in [(server, server), (f"http://127.0.0.1:{port}", None)]:
                async with session.get(server + "/ice-servers", ssl=trusted,
                                       headers={"Origin": origin}) as resp:
                    # (an http:// page does not get at a TLS hub, as for the WebSocket)
                    assert resp.headers.get("Access-Control-Allow-Origin") == cors, origin
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(server + "/healthz")  # the system CAs do not know it
        async with Phone("alice", server, ssl_context=trusted) as phone:
            assert phone.hub.address.ws.startswith("wss://")
            assert await phone.hub.ice_servers() == []
        async with Phone("bob", server, ssl_context=client_context(insecure=True)):
            pass
        untrusting = Phone("carol", server, reconnect=False)  # the system CAs
        try:
            with pytest.raises(HubUnreachable, match="certificate"):
                await untrusting.connect()
        finally:
            await untrusting.close()
        plain = Phone("dave", f"http://127.0.0.1:{port}", reconnect=False)  # (http://)
        try:
            with pytest.raises(HubUnreachable, match=r"\(is it an https:// hub\?\)"):
                await plain.connect()
        finally:
            await plain.close()
    finally:
        await hub.stop()


def test_bad_files_give_one_line_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(TLSConfigError, match="no such file"):
        server_context(tmp_path / "nope.pem", junk)
    with pytest.raises(TLSConfigError, match="not a matching PEM"):
        server_context(junk, junk)
    with pytest.raises(TLSConfigError, match="no PEM certificate"):
        client_context(junk)
    assert isinstance(client_context(insecure=True), ssl.SSLContext)
    assert client_context() is None


@pytest.mark.parametrize(("args", "code", "text"), [
    (["serve", "--cert", "c.pem"], 2, "--cert and --key go together"),
    (["serve", "--self-signed", "--cert", "c.pem", "--key", "k.pem"], 2, "not both"),
    (["serve", "--tls-dir", "d"], 2, "--tls-dir goes with --self-signed"),
    (["serve", "--cert", "nope.pem", "--key", "nope.pem"], 1, "cannot read nope.pem"),
    (["call", "b", "--as", "a", "--ca-file", "c.pem", "--insecure"], 2, "not both"),
    # (a file that cannot be read: 1, as --cert's, README's exit codes)
    (["call", "b", "--as", "a", "--ca-file", "nope.pem"], 1, "cannot read nope.pem"),
    (["listen", "--as", "a", "--ca-file", "nope.pem"], 1, "cannot read nope.pem"),
])
def test_cli_tls_usage_errors(args: list[str], code: int, text: str, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == code, result.output
    assert text in result.output
    assert "Traceback" not in result.output
