"""On-disk cache of compiled Hyperscan databases, so a proxy starts in milliseconds instead of seconds.

Compiling the DLP rule set is most of failcore's start-up: one probe compile per rule (to learn which
rules Hyperscan accepts) and one compile of the combined database. Both results are kept under
failcore's home (``hscache/``, 0700, files 0600) and reused while nothing that shapes them changed,
and so is the analysis of the rules' patterns (JSON; keyed by the patterns, the analysing module's
source and the Python version), which was most of a build once the databases were cached.

An entry's name is the hash of everything that determines its content: the expressions, flags and ids,
the mode, the Hyperscan library and binding versions, the platform and CPU features Hyperscan reports,
and this module's format version. Its header repeats that key and carries the payload's length and
SHA-256: a truncated, corrupt or foreign file is detected, deleted and rebuilt, never loaded. No pickle:
the payload is Hyperscan's own serialisation (which Hyperscan checks again when loading it) or a plain
byte string. Writes are atomic (a temporary file renamed into place) and the directory is bounded
(least recently used entries are pruned). A cache that cannot be read or written only costs a compile.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import platform
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from failcore.dlp import regex_backend as rx
from failcore.paths import ensure_private_dir, failcore_home

logger = logging.getLogger("failcore")

FORMAT_VERSION = 1
CACHE_DIR_NAME = "hscache"
# Bounded: the default policy's database is well under 1 MiB, gitleaks' whole rule set a few MiB.
MAX_ENTRIES = 32
MAX_BYTES = 256 << 20
# A temporary file older than this was left by a process that died while writing it.
STALE_TMP_SECONDS = 3600
# Set to "0" or "off" to neither read nor write the cache.
ENV_SWITCH = "FAILCORE_HS_CACHE"

_MAGIC = b"FCHSC\x00\x00\x01"
# magic, key (32 bytes), payload length, payload sha256
_HEADER = struct.Struct(">8s32sQ32s")
_SUFFIX = ".hsc"


def cache_dir() -> Path:
    return failcore_home() / CACHE_DIR_NAME


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "off", "no", "false")


@functools.cache
def platform_tag() -> bytes:
    """What makes a compiled database host-specific, as Hyperscan reports it ("Version: 5.4.2
    Features: AVX2 Mode: BLOCK" for a database compiled here), plus the binding and machine."""
    hs = rx.hyperscan_module()
    probe = hs.Database()
    probe.compile(expressions=[b"failcore"], ids=[0], flags=[0])
    info = probe.info()
    parts = [
        info if isinstance(info, bytes) else str(info).encode(),
        str(getattr(hs, "__version__", "?")).encode(),
        platform.machine().encode(),
        platform.system().encode(),
    ]
    return b"\x00".join(parts)


def cache_key(kind: str, *parts: Sequence[bytes | int | str] | bytes | int | str) -> bytes:
    """SHA-256 over a length-prefixed encoding of the parts: no two different inputs share a key."""
    return _digest(kind, platform_tag(), parts)


def _digest(kind: str, tag: bytes, parts: Sequence[Sequence[bytes | int | str] | bytes | int | str]) -> bytes:
    digest = hashlib.sha256()

    def feed(value: bytes | int | str) -> None:
        raw = value if isinstance(value, bytes) else str(value).encode()
        digest.update(len(raw).to_bytes(8, "big"))
        digest.update(raw)

    for value in (f"failcore-hscache/{FORMAT_VERSION}", kind, tag):
        feed(value)
    for part in parts:
        if isinstance(part, bytes | int | str):
            feed(b"s")
            feed(part)
        else:
            feed(b"l")
            feed(len(part))
            for item in part:
                feed(item)
    return digest.digest()


def entry_key(
    kind: str, code: bytes, parts: Sequence[Sequence[bytes | int | str] | bytes | int | str]
) -> bytes:
    """The key of an entry that holds no compiled database (nothing host-specific): `code` stands for
    what produced it (see failcore.dlp.gitleaks)."""
    return _digest(kind, code, parts)


def discard_entry(key: bytes) -> None:
    _discard(_path(key))


def _path(key: bytes) -> Path:
    return cache_dir() / f"{key.hex()}{_SUFFIX}"


def read_entry(key: bytes) -> bytes | None:
    """The payload stored under `key`, or None (missing, unreadable, or failing any check: then the
    file is deleted so the next write replaces it)."""
    if not enabled():
        return None
    path = _path(key)
    try:
        with open(path, "rb") as f:
            stat = os.fstat(f.fileno())
            if stat.st_uid != os.getuid() or stat.st_mode & 0o077:
                raise ValueError("not a private file of this user")
            data = f.read(MAX_BYTES + _HEADER.size + 1)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.debug("failcore: hyperscan cache %s unusable: %s", path, exc)
        _discard(path)
        return None
    payload = _unwrap(key, data)
    if payload is None:
        logger.debug("failcore: hyperscan cache %s failed its checks; rebuilding it", path)
        _discard(path)
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used: kept when pruning
    return payload


def _unwrap(key: bytes, data: bytes) -> bytes | None:
    if len(data) < _HEADER.size:
        return None
    magic, stored_key, length, digest = _HEADER.unpack_from(data)
    payload = data[_HEADER.size :]
    if magic != _MAGIC or stored_key != key or length != len(payload):
        return None
    if hashlib.sha256(payload).digest() != digest:
        return None
    return payload


def write_entry(key: bytes, payload: bytes) -> None:
    """Store `payload` under `key` atomically; failures are logged, never raised."""
    if not enabled() or len(payload) > MAX_BYTES:
        return
    directory = cache_dir()
    tmp: str | None = None
    try:
        ensure_private_dir(directory.parent)
        ensure_private_dir(directory)
        header = _HEADER.pack(_MAGIC, key, len(payload), hashlib.sha256(payload).digest())
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=_SUFFIX, dir=directory)  # created 0600
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            f.write(payload)
        os.replace(tmp, _path(key))
        tmp = None
        prune(directory)
    except OSError as exc:
        logger.debug("failcore: could not write the hyperscan cache in %s: %s", directory, exc)
    finally:
        if tmp is not None:
            _discard(Path(tmp))


def prune(directory: Path, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> list[Path]:
    """Delete the least recently used entries beyond `max_entries` or `max_bytes` in total, and
    temporary files abandoned by a writer that died."""
    removed: list[Path] = []
    entries: list[tuple[float, int, Path]] = []
    now = time.time()
    try:
        children = list(directory.iterdir())
    except OSError:
        return removed
    for path in children:
        try:
            st = path.lstat()
        except OSError:
            continue
        if path.name.startswith(".tmp-"):
            if now - st.st_mtime > STALE_TMP_SECONDS:
                _discard(path)
                removed.append(path)
            continue
        if path.suffix == _SUFFIX:
            entries.append((st.st_mtime, st.st_size, path))
    entries.sort(reverse=True)  # newest first
    total = 0
    for index, (_, size, path) in enumerate(entries):
        total += size
        if index >= max_entries or total > max_bytes:
            _discard(path)
            removed.append(path)
    return removed


def _discard(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


# --- Hyperscan ---------------------------------------------------------------------------------------


def accepted_expressions(
    expressions: Sequence[bytes],
    flags: int = 0,
    mode: int | None = None,
    on_compile: Callable[[], None] | None = None,
) -> list[bool]:
    """Which expressions Hyperscan compiles on its own (each probed alone), cached as one entry.
    `on_compile` is called first when they have to be probed (not cached)."""
    hs = rx.hyperscan_module()
    mode = hs.HS_MODE_BLOCK if mode is None else mode
    key = cache_key("probe", list(expressions), flags, mode)
    cached = read_entry(key)
    if cached is not None and len(cached) == len(expressions) and set(cached) <= {0x30, 0x31}:
        return [byte == 0x31 for byte in cached]
    if on_compile is not None:
        on_compile()
    result = [_compiles(hs, expression, flags, mode) for expression in expressions]
    write_entry(key, bytes(0x31 if ok else 0x30 for ok in result))
    return result


def _compiles(hs: Any, expression: bytes, flags: int, mode: int) -> bool:
    probe = hs.Database(mode=mode)
    try:
        probe.compile(expressions=[expression], ids=[0], flags=[flags])
    except hs.error:
        return False
    return True


_MODE_NAMES = {"HS_MODE_BLOCK": b"BLOCK", "HS_MODE_STREAM": b"STREAM", "HS_MODE_VECTORED": b"VECTORED"}


def compile_database(
    expressions: Sequence[bytes],
    ids: Sequence[int],
    flags: Sequence[int],
    mode: int | None = None,
    on_compile: Callable[[], None] | None = None,
) -> Any:
    """A compiled `hyperscan.Database` of these expressions: loaded from the cache when an entry for
    exactly these inputs on this host exists, else compiled (errors propagate as from Hyperscan) and
    stored; `on_compile` is called first when it has to be compiled."""
    hs = rx.hyperscan_module()
    mode = hs.HS_MODE_BLOCK if mode is None else mode
    key = cache_key("db", list(expressions), list(ids), list(flags), mode)
    payload = read_entry(key)
    if payload is not None:
        database = _load(hs, payload, mode)
        if database is not None:
            return database
        _discard(_path(key))
    if on_compile is not None:
        on_compile()
    database = hs.Database(mode=mode)
    database.compile(expressions=list(expressions), ids=list(ids), flags=list(flags))
    try:
        write_entry(key, hs.dumpb(database))
    except hs.error as exc:  # pragma: no cover - serialising a database Hyperscan just built
        logger.debug("failcore: could not serialise a hyperscan database: %s", exc)
    return database


def _load(hs: Any, payload: bytes, mode: int) -> Any:
    try:
        database = hs.loadb(payload, mode)
        info = database.info()
        wanted = next((name for attr, name in _MODE_NAMES.items() if getattr(hs, attr, None) == mode), None)
        if wanted is not None and not info.rstrip().endswith(b"Mode: " + wanted):
            return None
        # A deserialised database has no scratch space until one is allocated for it.
        database.scratch = hs.Scratch(database)
    except (hs.error, TypeError, ValueError) as exc:
        logger.debug("failcore: cached hyperscan database rejected: %s", exc)
        return None
    return database


# --- pattern analysis ----------------------------------------------------------------------------------


@functools.cache
def _analysis_code() -> bytes:
    """What the analysis results depend on besides the patterns: the analysing module's source and the
    Python whose `re` parser it walks."""
    try:
        source = Path(rx.__file__).read_bytes()
    except OSError:  # no source to key by: a key no other process shares, so no entry is reused
        source = os.urandom(32)
    return hashlib.sha256(source).digest() + f"{sys.version}\x00{sys.implementation.cache_tag}".encode()


def analysis_key(patterns: Sequence[str]) -> bytes:
    """The entry holding the pattern analysis of a rule set with these regexes."""
    return _digest("analysis", _analysis_code(), [list(patterns)])


def preload_analysis(key: bytes) -> bool:
    """Memoize the pattern analysis stored under `key` (failcore.dlp.regex_backend); False when there
    is none (or it is unusable: then the analysis is computed as without a cache)."""
    payload = read_entry(key)
    if payload is None:
        return False
    try:
        snapshot = orjson.loads(payload)
    except orjson.JSONDecodeError:
        _discard(_path(key))
        return False
    if not rx.preload_analysis(snapshot):
        _discard(_path(key))
        return False
    return True


def save_analysis(key: bytes, use: rx.AnalysisUse) -> None:
    """Store the analysis results a build used under `key` (no pickle: JSON)."""
    if not enabled():
        return
    write_entry(key, orjson.dumps(rx.analysis_snapshot(use)))
