"""Where failcore keeps its state: one home directory, overridable by FAILCORE_HOME.

The home holds the CA (mitmproxy's files, so `failcore proxy` and the addon share one trust root),
the tape signing key, the fingerprint salt and the default tape directory.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

SALT_FILE = "failcore-salt.bin"


def failcore_home() -> Path:
    override = os.environ.get("FAILCORE_HOME")
    return Path(override).expanduser() if override else Path.home() / ".failcore"


def default_tape_dir() -> Path:
    return failcore_home() / "tape"


def ensure_private_dir(path: Path) -> Path:
    """`path` as a directory only its owner can use (0700). Every directory it creates on the way is
    0700 too, whatever the umask (`mkdir(parents=True)` would make the parents 0755); a parent that
    already exists is left as it is."""
    path = Path(path)
    missing = []
    probe = path
    while not probe.is_dir() and probe.parent != probe:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue  # made meanwhile by someone else: only `path` itself is made private below
        os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
    os.chmod(path, 0o700)
    return path


def write_private_file(path: Path, data: bytes) -> None:
    """Create or replace a file readable by its owner only, without a window where it is world-readable."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_or_create_salt(confdir: Path) -> bytes:
    """Per-installation secret used to fingerprint credentials: equal secrets stay comparable across
    events, but a fingerprint cannot be brute-forced without this file."""
    path = confdir / SALT_FILE
    try:
        data = path.read_bytes()
        if len(data) >= 32:
            return data
    except FileNotFoundError:
        pass
    ensure_private_dir(confdir)
    data = secrets.token_bytes(32)
    write_private_file(path, data)
    return data
