"""A local certificate authority for the Flower SuperLink's TLS, generated on first run with ``cryptography``.

Layout under ``<secrets>/tls/`` (directory 0700, every file 0600, never in git):

| file         | what                                                                   | who reads it              |
|--------------|------------------------------------------------------------------------|---------------------------|
| ca.key       | the CA's private key (EC P-384); only used here, to sign server certs  | nobody else               |
| ca.crt       | the CA certificate: the trust anchor                                   | SuperNodes, `flwr` CLI    |
| server.key   | the SuperLink's TLS private key (EC P-256)                             | SuperLink                 |
| server.crt   | the SuperLink's certificate, SANs 127.0.0.1, localhost and extra names | SuperLink                 |

``ensure_tls`` is idempotent: it reuses what is there while it is valid, regenerates the server certificate when it
is missing, expires within ``RENEW_BEFORE``, is not signed by the current CA or does not name every wanted host,
and regenerates the whole authority (then the server certificate too) only when the CA itself is missing, broken or
about to expire. Writes are atomic and serialised by a lock file, so two ``mledge`` processes starting at once get
one authority.

Also here: the argv fragments and the ``flwr`` CLI connection that use these files.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from mledge.security.files import locked, private_dir, tighten, write_private

DEFAULT_HOSTNAMES = ("127.0.0.1", "localhost")
CA_VALIDITY = dt.timedelta(days=5 * 365)
SERVER_VALIDITY = dt.timedelta(days=397)  # the longest lifetime browsers accept; nothing here needs more
RENEW_BEFORE = dt.timedelta(days=30)
# Backdated a little: a SuperNode whose clock is slightly behind must not see a certificate "from the future".
CLOCK_SKEW = dt.timedelta(minutes=5)
ORGANISATION = "MLEDGE local stack"


class TlsError(RuntimeError):
    """A TLS file is unusable; the message names the file and what to do."""


@dataclass(frozen=True)
class TlsFiles:
    """Absolute paths of the local authority's files."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    ca_key: Path


def tls_dir(secrets_dir: Path) -> Path:
    return Path(secrets_dir) / "tls"


def tls_files(secrets_dir: Path) -> TlsFiles:
    """Where the files are (or will be), without creating anything."""
    base = tls_dir(secrets_dir).resolve()
    return TlsFiles(base / "ca.crt", base / "server.crt", base / "server.key", base / "ca.key")


def ensure_tls(
    secrets_dir: Path,
    hostnames: Iterable[str] = (),
    now: dt.datetime | None = None,
) -> TlsFiles:
    """Create or reuse the local CA and the SuperLink's server certificate under ``<secrets_dir>/tls``.

    ``hostnames``: names besides 127.0.0.1 and localhost the SuperLink is reached by (e.g. the compose service
    ``superlink``); IP addresses become IP SANs, anything else DNS SANs. ``now`` is for tests of expiry.
    """
    now = now or dt.datetime.now(dt.UTC)
    names = _unique([*DEFAULT_HOSTNAMES, *hostnames])
    files = tls_files(secrets_dir)
    directory = files.ca_cert.parent
    private_dir(Path(secrets_dir))
    private_dir(directory)
    with locked(directory / ".lock"):
        ca_key, ca_cert = _load_ca(files, now)
        if ca_key is None or ca_cert is None:
            ca_key, ca_cert = _new_ca(now)
            write_private(files.ca_key, _key_pem(ca_key))
            write_private(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
            # A new CA invalidates the old server certificate: drop it so it is reissued below.
            files.server_cert.unlink(missing_ok=True)
        if not _server_ok(files, ca_cert, names, now):
            server_key = ec.generate_private_key(ec.SECP256R1())
            server_cert = _new_server_cert(server_key, ca_key, ca_cert, names, now)
            write_private(files.server_key, _key_pem(server_key))
            write_private(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
        for path in (files.ca_key, files.ca_cert, files.server_key, files.server_cert):
            tighten(path)
    return files


def verify_server_cert(files: TlsFiles, hostname: str, now: dt.datetime | None = None) -> None:
    """Raise ``TlsError`` unless the CA vouches for the server certificate for ``hostname`` at ``now``.

    The same path validation a TLS client does (chain, validity period, SAN, key usage), by ``cryptography``.
    """
    ca_cert = _read_cert(files.ca_cert)
    server_cert = _read_cert(files.server_cert)
    verifier = (
        PolicyBuilder()
        .store(Store([ca_cert]))
        .time(now or dt.datetime.now(dt.UTC))
        .build_server_verifier(_san(hostname))
    )
    try:
        verifier.verify(server_cert, [])
    except VerificationError as exc:
        raise TlsError(f"{files.server_cert} is not valid for {hostname} under {files.ca_cert}: {exc}") from exc


# --- what the processes are started with -----------------------------------------------------------------


def superlink_tls_args(files: TlsFiles) -> list[str]:
    """``flower-superlink`` flags for TLS on its one HTTP port (Fleet, Control and Runtime APIs).

    The CA file is also handed to the SuperExec the SuperLink starts, so ServerApp processes verify it too.
    """
    return [
        "--ssl-ca-certfile",
        str(files.ca_cert),
        "--ssl-certfile",
        str(files.server_cert),
        "--ssl-keyfile",
        str(files.server_key),
    ]


def supernode_tls_args(files: TlsFiles) -> list[str]:
    """``flower-supernode`` flags: verify the SuperLink against our CA (TLS is on unless ``--insecure``)."""
    return ["--root-certificates", str(files.ca_cert)]


def flwr_connection_toml(name: str, address: str, files: TlsFiles) -> str:
    """``$FLWR_HOME/config.toml`` for the ``flwr`` CLI: one default connection that verifies our CA."""
    return (
        f'[superlink]\ndefault = "{name}"\n\n'
        f'[superlink.{name}]\naddress = "{address}"\nroot-certificates = "{files.ca_cert}"\n'
    )


# --- internals -------------------------------------------------------------------------------------------


def _unique(values: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for value in values:
        value = value.strip()
        if not value:
            raise ValueError("an empty host name cannot go into the SuperLink certificate")
        if value not in seen:
            seen.append(value)
    return seen


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Unencrypted PKCS#8: uvicorn reads the key at start-up without a passphrase; the file mode protects it.
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _read_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise TlsError(f"{path} does not exist; run `mledge up` (or ensure_tls) to create the local CA") from None
    except ValueError as exc:
        raise TlsError(f"{path} is not a PEM certificate: {exc}") from exc


def _load_ca(files: TlsFiles, now: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey | None, x509.Certificate | None]:
    """The existing CA if both files are there, readable, match, and stay valid beyond RENEW_BEFORE."""
    if not (files.ca_key.exists() and files.ca_cert.exists()):
        return None, None
    try:
        key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    except ValueError:
        key = cert = None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or cert is None or key.public_key() != cert.public_key():
        # Unreadable or mismatched: set aside (not deleted, someone may want to know why) and replaced.
        stamp = now.strftime("%Y%m%dT%H%M%S")
        for path in (files.ca_key, files.ca_cert):
            path.rename(path.with_name(f"{path.name}.invalid-{stamp}"))
        return None, None
    if cert.not_valid_after_utc - RENEW_BEFORE <= now:
        return None, None
    return key, cert


def _server_ok(files: TlsFiles, ca_cert: x509.Certificate, names: list[str], now: dt.datetime) -> bool:
    if not (files.server_cert.exists() and files.server_key.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
        key = serialization.load_pem_private_key(files.server_key.read_bytes(), password=None)
    except ValueError:
        return False
    if key.public_key() != cert.public_key() or cert.not_valid_after_utc - RENEW_BEFORE <= now:
        return False
    try:
        for name in names:
            verify_server_cert(files, name, now)
    except TlsError:
        return False
    return True


def _builder(subject: x509.Name, issuer: x509.Name, public_key, now: dt.datetime, validity: dt.timedelta):
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _new_ca(now: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANISATION),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{ORGANISATION} CA {now:%Y-%m-%d}"),
        ]
    )
    cert = (
        _builder(name, name, key.public_key(), now, CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA384())
    )
    return key, cert


def _new_server_cert(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    names: list[str],
    now: dt.datetime,
) -> x509.Certificate:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANISATION),
            x509.NameAttribute(NameOID.COMMON_NAME, "Flower SuperLink"),
        ]
    )
    not_after = min(now + SERVER_VALIDITY, ca_cert.not_valid_after_utc)  # never outlive the CA
    return (
        _builder(subject, ca_cert.subject, key.public_key(), now, not_after - now)
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
