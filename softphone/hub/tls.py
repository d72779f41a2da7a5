"""TLS for the hub and its clients.

Browsers give ``getUserMedia`` only to secure pages (https, or http on
localhost), so a phone on the LAN needs the hub over https.
``softphone serve --self-signed`` makes a key and a certificate for
``localhost`` and this machine's addresses with :mod:`cryptography`;
``--cert``/``--key`` use real ones. Clients trust a hub's certificate with
``--ca-file`` (the self-signed certificate is its own CA) or skip the check
with an explicit ``--insecure``.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import ifaddr

if TYPE_CHECKING:
    from cryptography import x509

log = logging.getLogger(__name__)

CERT_NAME = "softphone-cert.pem"
KEY_NAME = "softphone-key.pem"
#: How long a generated certificate is valid.
VALID_DAYS = 365


class TLSConfigError(ValueError):
    """A certificate, key or CA file that cannot be used (one-line message)."""


@dataclass(frozen=True)
class SelfSigned:
    cert: Path
    key: Path
    names: tuple[str, ...]  # DNS names and IP addresses it is valid for
    fingerprint: str  # SHA-256, hex with colons
    reused: bool


def local_addresses() -> list[str]:
    """This machine's IP addresses (loopback included, IPv6 link-local left out)."""
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                addr = ipaddress.ip_address(text)
            except ValueError:
                continue
            if addr.is_link_local:
                continue  # needs a %zone in URLs; browsers do not use them
            if text not in found:
                found.append(text)
    return found


def default_names(extra: Iterable[str] = ()) -> list[str]:
    """``localhost``, the host name, this machine's addresses and ``extra``."""
    host = socket.gethostname()
    names = ["localhost", host if host.isascii() else "", *local_addresses(), *extra]
    out: list[str] = []
    for name in names:
        if name and name not in out and name not in ("0.0.0.0", "::"):
            out.append(name)
    return out


def _fingerprint(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives import hashes

    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _covers(cert: x509.Certificate, names: Iterable[str]) -> bool:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have = {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    have |= set(san.get_values_for_type(x509.DNSName))
    return all(str(_san_value(n)) in have for n in names)


def _san_value(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | str:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return name


def self_signed(directory: str | Path, names: Iterable[str]) -> SelfSigned:
    """A certificate and key for ``names`` in ``directory``.

    Reused if ``directory`` already holds one that is valid for another day
    and covers every name (so a phone that trusted it keeps trusting it);
    made otherwise: an ECDSA P-256 key, a self-signed certificate with the
    names as subject alternative names, valid for :data:`VALID_DAYS` days.
    """
    # (cryptography: only here, not for the clients' context or the hub's --cert/--key.)
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / CERT_NAME, folder / KEY_NAME
    wanted = list(dict.fromkeys(names))
    now = datetime.datetime.now(datetime.UTC)
    if cert_path.exists() and key_path.exists():
        try:
            old = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if old.not_valid_after_utc > now + datetime.timedelta(days=1) \
                    and _covers(old, wanted):
                return SelfSigned(cert_path, key_path, tuple(wanted), _fingerprint(old), True)
        except ValueError:
            log.warning("%s is not a certificate: making a new one", cert_path)

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, wanted[0] if wanted else "localhost"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "softphone (self-signed)"),
    ])
    alt: list[x509.GeneralName] = []
    for name in wanted:
        value = _san_value(name)
        alt.append(x509.DNSName(value) if isinstance(value, str) else x509.IPAddress(value))
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        # Its own CA, so clients can trust it with --ca-file.
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     crl_sign=False, encipher_only=False,
                                     decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path.touch(mode=0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.info("made a self-signed certificate for %s in %s", ", ".join(wanted), folder)
    return SelfSigned(cert_path, key_path, tuple(wanted), _fingerprint(cert), False)


def server_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """The hub's TLS context; raises :class:`TLSConfigError` with a one-line reason."""
    for path in (cert, key):
        if not Path(path).is_file():
            raise TLSConfigError(f"cannot read {path}: no such file")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:  # (a subclass of OSError)
        raise TLSConfigError(f"{cert} and {key} are not a matching PEM certificate and key "
                             f"({exc.reason or exc})") from exc
    except OSError as exc:
        raise TLSConfigError(f"cannot read {cert} or {key}: {exc.strerror or exc}") from exc
    return ctx


def client_context(ca_file: str | Path | None = None,
                   insecure: bool = False) -> ssl.SSLContext | None:
    """The client's TLS context: None (system CAs), ``ca_file``'s CAs, or no checks."""
    if insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if ca_file is None:
        return None
    if not Path(ca_file).is_file():
        raise TLSConfigError(f"cannot read {ca_file}: no such file")
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except ssl.SSLError as exc:  # (a subclass of OSError)
        raise TLSConfigError(f"{ca_file} holds no PEM certificate ({exc.reason or exc})"
                             ) from exc
    except OSError as exc:
        raise TLSConfigError(f"cannot read {ca_file}: {exc.strerror or exc}") from exc
