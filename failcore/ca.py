"""failcore's certificate authority: mitmproxy's CA files, generated on first use in failcore's home.

mitmproxy looks for `mitmproxy-ca.pem` in its confdir; failcore points confdir at its home, so the
files keep mitmproxy's names and any mitmproxy documentation about them applies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import certifi

from failcore.paths import ensure_private_dir, failcore_home

CA_BASENAME = "mitmproxy"
KEY_SIZE = 2048


@dataclass(frozen=True, slots=True)
class CaInfo:
    confdir: Path
    cert_path: Path
    key_path: Path
    bundle_path: Path
    sha256: str

    def env(self, proxy_url: str, no_proxy: str = "") -> dict[str, str]:
        """Environment for a child process: proxy variables plus CA trust for common runtimes."""
        bundle = str(self.bundle_path)
        return {
            "HTTPS_PROXY": proxy_url,
            "HTTP_PROXY": proxy_url,
            "https_proxy": proxy_url,
            "http_proxy": proxy_url,
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
            "SSL_CERT_FILE": bundle,
            "REQUESTS_CA_BUNDLE": bundle,
            "CURL_CA_BUNDLE": bundle,
            "GIT_SSL_CAINFO": bundle,
            "NODE_EXTRA_CA_CERTS": str(self.cert_path),
            "NODE_USE_ENV_PROXY": "1",
        }


# One PEM certificate: its base64 body is the DER encoding (RFC 7468), whose SHA-256 is the fingerprint.
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\s+([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----")


def _cert_der(cert_pem: bytes) -> bytes | None:
    found = _PEM_CERT.search(cert_pem)
    if found is None:
        return None
    try:
        return base64.b64decode(b"".join(found[1].split()), validate=True)
    except binascii.Error:
        return None


def ensure_ca(confdir: Path | None = None, *, check: bool = True) -> CaInfo:
    """The CA's files, created on first use. `check=False` (`failcore run`'s quick start) trusts CA files
    that exist and skips parsing the private key: mitmproxy loads and checks it when the proxy starts,
    on the thread that loads mitmproxy, and a command without traffic never needs it."""
    confdir = ensure_private_dir(confdir or failcore_home())
    cert_path = confdir / f"{CA_BASENAME}-ca-cert.pem"
    key_path = confdir / f"{CA_BASENAME}-ca.pem"
    der = None
    if not check and key_path.is_file() and cert_path.is_file():
        cert_pem = cert_path.read_bytes()
        der = _cert_der(cert_pem)
    if der is None:
        from mitmproxy import certs

        certs.CertStore.from_store(confdir, CA_BASENAME, KEY_SIZE)
        cert_pem = cert_path.read_bytes()
        der = _checked_der(cert_pem)
    for private in (key_path, confdir / f"{CA_BASENAME}-ca.p12"):
        if private.exists():
            os.chmod(private, 0o600)
    bundle_path = confdir / "ca-bundle.pem"
    bundle = Path(certifi.where()).read_bytes().rstrip(b"\n") + b"\n" + cert_pem
    if not bundle_path.exists() or bundle_path.read_bytes() != bundle:
        tmp = bundle_path.with_suffix(".tmp")
        tmp.write_bytes(bundle)
        os.replace(tmp, bundle_path)
    return CaInfo(
        confdir=confdir,
        cert_path=cert_path,
        key_path=key_path,
        bundle_path=bundle_path,
        sha256=hashlib.sha256(der).hexdigest(),
    )


def _checked_der(cert_pem: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    return x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
