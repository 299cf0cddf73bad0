"""The federation's private PKI: a CA, the SuperLink's TLS certificate, and one authentication key per site.

Layout of ``out`` (directory 0700, every private key 0600)::

    ca.pem, ca.key                 the private CA (the hospitals receive ca.pem only)
    server.pem, server.key         the SuperLink's TLS certificate (SANs: localhost, 127.0.0.1, ::1 and
                                   the hosts given) and key
    sites/<site>/supernode.key     the site's SuperNode authentication key (EC P-384, OpenSSH format;
                                   stays at the hospital)
    sites/<site>/supernode.pub     its public key, registered at the SuperLink (``flwr supernode register``)

Existing files are never overwritten: run the command again with one more ``--sites`` name to add a
hospital (its key pair is created, the CA and the other keys are kept). All cryptography comes from the
``cryptography`` package.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


class PkiError(ValueError):
    """A certificate or key that cannot be used (expired, issued by another CA, unreadable, bad name)."""


@dataclass(frozen=True)
class Pki:
    """Paths of a PKI directory written by :func:`create_pki`."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    def site_key(self, site: str) -> Path:
        """The site's SuperNode authentication private key (OpenSSH format)."""
        return self.root / "sites" / site / "supernode.key"

    def site_public_key(self, site: str) -> Path:
        """The site's public key (OpenSSH ``ecdsa-sha2-nistp384`` line)."""
        return self.root / "sites" / site / "supernode.pub"


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file created with mode 0600 (never readable by others, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_bytes(data)
    path.chmod(0o644)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mri-service federation"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _create_ca(pki: Pki, days: int) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name("mri-service federation CA")).issuer_name(_name(
            "mri-service federation CA")).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    _write_private(pki.ca_key, _pem_key(key))
    _write_public(pki.ca_cert, cert.public_bytes(serialization.Encoding.PEM))


def issue_server_certificate(pki: Pki, hosts: list[str], days: int, *, not_before: dt.datetime | None = None,
                             out_cert: Path | None = None, out_key: Path | None = None) -> None:
    """Issue the SuperLink's TLS certificate, signed by the CA, valid for ``hosts`` (DNS names or IPs)
    from ``not_before`` (default: now) for ``days`` days."""
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP384R1())
    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write_private(out_key or pki.server_key, _pem_key(key))
    _write_public(out_cert or pki.server_cert, cert.public_bytes(serialization.Encoding.PEM))


def create_site_key(pki: Pki, site: str) -> None:
    """Create ``site``'s SuperNode authentication key pair (EC P-384, OpenSSH format, as Flower reads it)."""
    check_site_name(site)
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(pki.site_key(site), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    _write_public(pki.site_public_key(site), key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + f" {site}\n".encode())


def check_site_name(site: str) -> None:
    """PkiError unless ``site`` is a usable site name (letters, digits, ``.``, ``_``, ``-``)."""
    if not SITE_NAME.match(site):
        raise PkiError(f"site name {site!r} must be 1-64 letters, digits, '.', '_' or '-' (starting with a letter"
                       " or digit)")


def create_pki(out: Path, sites: list[str], hosts: list[str] = (), days: int = 365) -> Pki:
    """Create (or complete) the PKI directory ``out`` for ``sites``; returns its paths.

    ``hosts``: names or addresses the SuperLink is reached at, besides localhost/127.0.0.1/::1."""
    if not sites:
        raise PkiError("name at least one site (--sites hospital-a hospital-b ...)")
    if days < 1:
        raise PkiError(f"days must be >= 1, got {days}")
    for site in sites:
        check_site_name(site)
    if len(set(sites)) != len(sites):
        raise PkiError(f"site names repeat: {sites}")
    pki = Pki(Path(out))
    pki.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    pki.root.chmod(0o700)
    if not pki.ca_key.exists():
        _create_ca(pki, days)
    if not pki.server_key.exists():
        all_hosts = list(DEFAULT_HOSTS) + [h for h in hosts if h not in DEFAULT_HOSTS]
        issue_server_certificate(pki, all_hosts, days)
    for site in sites:
        if not pki.site_key(site).exists():
            create_site_key(pki, site)
    return pki


def public_key_fingerprint(public_key_file: Path) -> str:
    """``SHA256:<base64>`` of an OpenSSH public key file, as ``ssh-keygen -l`` prints it."""
    blob = base64.b64decode(Path(public_key_file).read_text().split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def check_server_certificate(cert_file: Path, ca_file: Path, host: str) -> None:
    """PkiError (naming the file) unless ``cert_file`` is valid now, was signed by ``ca_file``'s CA and
    names ``host`` in its subject alternative names."""
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
        ca = x509.load_pem_x509_certificate(Path(ca_file).read_bytes())
    except (OSError, ValueError) as exc:
        raise PkiError(f"cannot read certificate {cert_file} or CA {ca_file}: {exc}") from exc
    now = dt.datetime.now(dt.UTC)
    if now > cert.not_valid_after_utc:
        raise PkiError(f"certificate {cert_file} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if now < cert.not_valid_before_utc:
        raise PkiError(f"certificate {cert_file} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise PkiError(f"certificate {cert_file} ({cert.subject.rfc4514_string()}) was not issued by the CA in "
                       f"{ca_file} ({ca.subject.rfc4514_string()})") from exc
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = [str(n) for n in sans.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    if host not in names:
        raise PkiError(f"certificate {cert_file} does not name host {host!r} (it names {names})")
