"""Ed25519 keys that sign tape checkpoints, and the exact message a checkpoint signature covers.

The private key lives in the failcore home (never in the tape); the tape carries only the public key,
so anyone holding a copy of the tape can check it, but only the recorder can extend it convincingly.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path
from typing import Final

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from failcore.paths import ensure_private_dir

SIGNING_KEY_FILE: Final = "failcore-signing.key"
PUBLIC_KEY_FILE: Final = "failcore-signing.pub"
CHECKPOINT_DOMAIN: Final = b"failcore-checkpoint-v1:"
# Checkpoints that carry a `final` field sign it too: a writer's last checkpoint says it is the last,
# and a non-final one cannot be turned into a final one (nor the reverse) without the private key.
CHECKPOINT_DOMAIN_V2: Final = b"failcore-checkpoint-v2:"
MANIFEST_DOMAIN: Final = b"failcore-manifest-v1:"


class KeyFileError(ValueError):
    """A key file exists but does not hold a usable Ed25519 key."""


def load_or_create_signing_key(confdir: Path) -> Ed25519PrivateKey:
    """Load `confdir/failcore-signing.key`, creating it (and its `.pub`) on first use."""
    confdir = Path(confdir)
    key_path = confdir / SIGNING_KEY_FILE
    if not key_path.exists():
        _ensure_private_dir(confdir)
        _create_key_file(key_path)
    key = _load_private_key(key_path)
    pub_path = confdir / PUBLIC_KEY_FILE
    expected_pub = public_key_text(key.public_key()).encode() + b"\n"
    if not pub_path.exists() or pub_path.read_bytes() != expected_pub:
        write_private_file(pub_path, expected_pub)
    return key


def public_key_raw(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_id(pub: Ed25519PublicKey) -> str:
    """Stable identifier of a key: sha256 hex of its raw 32 bytes."""
    return hashlib.sha256(public_key_raw(pub)).hexdigest()


def public_key_text(pub: Ed25519PublicKey) -> str:
    """The `.pub` file form: base64 of the raw 32-byte key."""
    return base64.b64encode(public_key_raw(pub)).decode("ascii")


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read a public key written as base64 raw bytes (our `.pub` files) or as a PEM SubjectPublicKeyInfo."""
    data = Path(path).read_bytes().strip()
    if data.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise KeyFileError(f"{path}: not a PEM public key: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{path}: PEM key is {type(key).__name__}, expected Ed25519")
        return key
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFileError(f"{path}: neither PEM nor base64: {exc}") from exc
    if len(raw) != 32:
        raise KeyFileError(f"{path}: base64 key decodes to {len(raw)} bytes, expected 32")
    return Ed25519PublicKey.from_public_bytes(raw)


def checkpoint_message(prev_hex: bytes, seq: int, final: bool | None = None) -> bytes:
    """What a checkpoint signs: its own prev (the hash of everything before it), its seq and, for
    checkpoints that carry one (`final` not None), whether it is the writer's last."""
    if final is None:
        return CHECKPOINT_DOMAIN + prev_hex + b":" + str(seq).encode("ascii")
    flag = b"final" if final else b"open"
    return CHECKPOINT_DOMAIN_V2 + prev_hex + b":" + str(seq).encode("ascii") + b":" + flag


def sign_checkpoint(key: Ed25519PrivateKey, prev_hex: bytes, seq: int, final: bool | None = None) -> str:
    return base64.b64encode(key.sign(checkpoint_message(prev_hex, seq, final))).decode("ascii")


def checkpoint_signature_valid(
    pub: Ed25519PublicKey, prev_hex: bytes, seq: int, sig_b64: str, final: bool | None = None
) -> bool:
    return _signature_valid(pub, checkpoint_message(prev_hex, seq, final), sig_b64)


def manifest_message(manifest: dict[str, object]) -> bytes:
    """What a manifest signature covers: the manifest without its `sig`, as sorted compact JSON."""
    body = {k: v for k, v in manifest.items() if k != "sig"}
    return MANIFEST_DOMAIN + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def sign_manifest(key: Ed25519PrivateKey, manifest: dict[str, object]) -> str:
    return base64.b64encode(key.sign(manifest_message(manifest))).decode("ascii")


def manifest_signature_valid(pub: Ed25519PublicKey, manifest: dict[str, object]) -> bool:
    sig = manifest.get("sig")
    return isinstance(sig, str) and _signature_valid(pub, manifest_message(manifest), sig)


def _signature_valid(pub: Ed25519PublicKey, message: bytes, sig_b64: str) -> bool:
    try:
        signature = base64.b64decode(sig_b64, validate=True)
        pub.verify(signature, message)
    except (InvalidSignature, binascii.Error, ValueError, TypeError):
        return False
    return True


def public_key_from_private_file(key_path: Path) -> Ed25519PublicKey:
    """The public half of a signing key file (for a `.pub` that is missing or stale)."""
    return _load_private_key_readonly(key_path).public_key()


def write_private_file(path: Path, data: bytes) -> None:
    """Atomically create or replace a file readable by its owner only (no world-readable window)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _ensure_private_dir(path: Path) -> None:
    if path.is_dir():
        return
    ensure_private_dir(path)  # with any parent it creates: 0700 whatever the umask


def _create_key_file(key_path: Path) -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = key_path.with_name(f".{key_path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        _write_all(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    # link() refuses to replace: if another process created the key meanwhile, theirs wins and we load it.
    try:
        os.link(tmp, key_path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


def _load_private_key(key_path: Path) -> Ed25519PrivateKey:
    if os.stat(key_path).st_mode & 0o077:
        os.chmod(key_path, 0o600)
    return _load_private_key_readonly(key_path)


def _load_private_key_readonly(key_path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{key_path}: not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{key_path}: key is {type(key).__name__}, expected Ed25519")
    return key


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
