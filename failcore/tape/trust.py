"""Which keys a tape's signatures are checked with: keys given on the command line, this user's own
signing identities, and (only when asked) the key the tape carries itself. Verification (verify.py)
asks this module whom to trust and never decides it on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from failcore.tape import keys
from failcore.tape.layout import is_old_key_file
from failcore.tape.reader import TAPE_PUBLIC_KEY_FILE

KeySource = Literal["tape", "given", "local"]


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A key signatures are checked with, and where it came from (a file path, or "tape")."""

    key: Ed25519PublicKey
    source: str

    @property
    def key_id(self) -> str:
        return keys.public_key_id(self.key)


@dataclass(slots=True)
class Keyring:
    """The keys a verification checks checkpoints with, and the keys the tape carries but nobody trusted."""

    by_id: dict[str, Ed25519PublicKey]  # trusted
    source: KeySource | None
    primary_id: str | None
    in_tape: dict[str, Ed25519PublicKey] = field(default_factory=dict)  # found in the tape, not trusted
    # One key was given explicitly: a checkpoint signed by any other is a break, not an unknown signer.
    pinned: bool = False


def load_keyring(tape_dir: Path, given: list[TrustedKey], trust_tape: bool, warnings: list[str]) -> Keyring:
    in_tape = tape_keys(tape_dir, warnings)
    trusted = {t.key_id: t.key for t in given}
    if trust_tape:
        for key_id, key in in_tape.items():
            trusted.setdefault(key_id, key)
        warnings.append("checkpoint signatures checked with the key stored in the tape itself")
    source: KeySource | None = "local" if given else None
    if trust_tape and in_tape:
        source = "tape"
    primary = next(iter(trusted), None)
    return Keyring(trusted, source if trusted else None, primary, in_tape)


def tape_keys(tape_dir: Path, warnings: list[str]) -> dict[str, Ed25519PublicKey]:
    by_id: dict[str, Ed25519PublicKey] = {}
    # Only the names the writer gives earlier keys (tape/layout.py): `failcore verify` names any other.
    old = sorted(p for p in tape_dir.glob("signing-key-*.pub") if is_old_key_file(p.name))
    candidates = [tape_dir / TAPE_PUBLIC_KEY_FILE, *old]
    for path in candidates:
        if not path.is_file():
            continue
        try:
            public_key = keys.load_public_key(path)
        except (ValueError, OSError) as exc:
            warnings.append(f"ignoring key file {path.name}: {exc}")
            continue
        by_id[keys.public_key_id(public_key)] = public_key
    return by_id


def local_identities(homes: list[Path]) -> list[TrustedKey]:
    """This user's signing identities: the public half of `failcore-signing.key` (or its `.pub`) in
    each home that has one. failcore signs with the key in its home (FAILCORE_HOME or ~/.failcore);
    older versions started as `mitmdump -s addons/failcore_addon.py` signed with one in mitmproxy's
    confdir (~/.mitmproxy), which is why that home is listed too."""
    found: list[TrustedKey] = []
    seen: set[str] = set()
    for home in homes:
        pub_path = home / keys.PUBLIC_KEY_FILE
        key_path = home / keys.SIGNING_KEY_FILE
        for path, load in ((key_path, keys.public_key_from_private_file), (pub_path, keys.load_public_key)):
            try:
                if not path.is_file():
                    continue
                public_key = load(path)
            except (ValueError, OSError):
                continue
            trusted = TrustedKey(public_key, str(path))
            if trusted.key_id not in seen:
                seen.add(trusted.key_id)
                found.append(trusted)
            break
    return found
