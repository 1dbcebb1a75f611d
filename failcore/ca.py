"""failcore's certificate authority: mitmproxy's CA files, generated on first use in failcore's home.

mitmproxy looks for `mitmproxy-ca.pem` in its confdir; failcore points confdir at its home, so the
files keep mitmproxy's names and any mitmproxy documentation about them applies.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import certifi
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from mitmproxy import certs

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


def ensure_ca(confdir: Path | None = None) -> CaInfo:
    confdir = ensure_private_dir(confdir or failcore_home())
    certs.CertStore.from_store(confdir, CA_BASENAME, KEY_SIZE)
    cert_path = confdir / f"{CA_BASENAME}-ca-cert.pem"
    key_path = confdir / f"{CA_BASENAME}-ca.pem"
    for private in (key_path, confdir / f"{CA_BASENAME}-ca.p12"):
        if private.exists():
            os.chmod(private, 0o600)
    cert_pem = cert_path.read_bytes()
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
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
