"""Tape verification: every line's hash, the chain between lines and segments, seq, and checkpoint
signatures. Only checkpoint lines are parsed as JSON; everything else is byte slicing and sha256, so a
tape verifies at disk speed. The first break stops verification and is named by segment and line.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from failcore.tape import keys
from failcore.tape.reader import (
    CHECKPOINT_MARK,
    GENESIS_PREV,
    HASH_MARK,
    LINE_PREFIX,
    SEQ_MARK,
    TAPE_PUBLIC_KEY_FILE,
    compute_line_hash,
    is_well_formed,
    line_hash,
    line_seq,
    list_segments,
    read_manifest,
    segment_name,
    segment_number,
)

BreakKind = Literal["edited", "chain", "seq", "malformed", "signature", "missing_segment"]
KeySource = Literal["tape", "given"]

_READ_BUFFER = 1 << 20
_PROGRESS_EVERY = 1 << 16


@dataclass(frozen=True, slots=True)
class Break:
    segment: str
    line: int
    kind: BreakKind
    message: str


@dataclass(slots=True)
class VerifyReport:
    ok: bool = True
    segments: int = 0
    lines: int = 0
    checkpoints: int = 0
    signatures_ok: int = 0
    first_break: Break | None = None
    truncated: list[tuple[str, int]] = field(default_factory=list)
    unsigned_tail: int = 0
    key_id: str | None = None
    key_source: KeySource | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def lines_per_second(self) -> float:
        return self.lines / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        brk = self.first_break
        return {
            "ok": self.ok,
            "segments": self.segments,
            "lines": self.lines,
            "checkpoints": self.checkpoints,
            "signatures_ok": self.signatures_ok,
            "first_break": (
                {"segment": brk.segment, "line": brk.line, "kind": brk.kind, "message": brk.message}
                if brk
                else None
            ),
            "truncated": [{"segment": segment, "line": line} for segment, line in self.truncated],
            "unsigned_tail": self.unsigned_tail,
            "key_id": self.key_id,
            "key_source": self.key_source,
            "seconds": round(self.seconds, 6),
            "lines_per_second": round(self.lines_per_second),
            "warnings": list(self.warnings),
        }


@dataclass(slots=True)
class _Keyring:
    by_id: dict[str, Ed25519PublicKey]
    source: KeySource | None
    primary_id: str | None


def verify_tape(
    tape_dir: Path,
    *,
    public_key: Ed25519PublicKey | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Check a whole tape. Without `public_key`, the key stored in the tape itself is used (and the
    report says so: such a check proves consistency, not authorship)."""
    started = time.perf_counter()
    tape_dir = Path(tape_dir)
    report = VerifyReport()
    keyring = _load_keyring(tape_dir, public_key, report.warnings)
    report.key_id = keyring.primary_id
    report.key_source = keyring.source
    if not keyring.by_id:
        report.warnings.append("no public key: checkpoint signatures were not checked")
    manifest_records = _manifest_records(tape_dir, report.warnings)
    verifier = _ChainVerifier(report, keyring, on_progress)
    verifier.run(tape_dir, manifest_records)
    report.ok = report.first_break is None
    report.seconds = time.perf_counter() - started
    if on_progress is not None:
        on_progress(report.lines)
    return report


class _ChainVerifier:
    def __init__(
        self, report: VerifyReport, keyring: _Keyring, on_progress: Callable[[int], None] | None
    ) -> None:
        self._report = report
        self._keyring = keyring
        self._on_progress = on_progress
        self._prev = GENESIS_PREV
        self._next_seq = 1
        self._last_line: tuple[str, int] | None = None  # where the last complete line was

    def run(self, tape_dir: Path, manifest_records: dict[int, dict[str, Any]]) -> None:
        on_disk = {segment_number(p.name) or 0: p for p in list_segments(tape_dir)}
        numbers = sorted(set(on_disk) | set(manifest_records))
        for index, number in enumerate(numbers):
            if index and number != numbers[index - 1] + 1:
                missing = segment_name(numbers[index - 1] + 1)
                self._break(missing, 0, "missing_segment", f"{missing} is missing: segment numbers skip it")
                return
            path = on_disk.get(number)
            if path is None:
                name = segment_name(number)
                self._break(name, 0, "missing_segment", f"{name} is in the manifest but missing on disk")
                return
            self._report.segments += 1
            if not self._verify_segment(path):
                return
            record = manifest_records.get(number)
            if record is not None and not self._matches_closed_record(path.name, record):
                return

    def _verify_segment(self, path: Path) -> bool:
        """Check one segment; False when a break was found (and recorded)."""
        report = self._report
        name = path.name
        prev = self._prev
        seq = self._next_seq
        unsigned = report.unsigned_tail
        complete = 0
        sha256 = hashlib.sha256
        progress = self._on_progress
        with open(path, "rb", buffering=_READ_BUFFER) as f:
            for raw in f:
                line_no = complete + 1
                if raw[-1:] != b"\n":
                    # Only a file's last piece can lack a newline: a write cut short at the segment end.
                    report.truncated.append((name, line_no))
                    break
                if not (
                    raw.startswith(LINE_PREFIX)
                    and raw[73:81] == SEQ_MARK
                    and raw[-73:-67] == HASH_MARK
                    and raw.endswith(b'"}\n')
                    and len(raw) > 155
                ):
                    return self._break(name, line_no, "malformed", f"line {line_no} is not a tape line")
                digest = raw[-67:-3]
                if sha256(raw[:-73] + b"}").hexdigest().encode("ascii") != digest:
                    return self._content_break(name, line_no, raw[:-1])
                if raw[9:73] != prev:
                    return self._chain_break(name, line_no)
                seq_text = b"%d," % seq
                if not raw.startswith(seq_text, 81):
                    return self._seq_break(name, line_no, raw[:-1], seq)
                if raw.startswith(CHECKPOINT_MARK, 81 + len(seq_text)):
                    if not self._verify_checkpoint(name, line_no, raw[:-1], prev, seq):
                        return False
                    unsigned = 0
                else:
                    unsigned += 1
                prev = digest
                seq += 1
                complete = line_no
                report.lines += 1
                if progress is not None and report.lines % _PROGRESS_EVERY == 0:
                    progress(report.lines)
        self._prev = prev
        self._next_seq = seq
        report.unsigned_tail = unsigned
        if complete:
            self._last_line = (name, complete)
        return True

    def _verify_checkpoint(self, name: str, line_no: int, raw: bytes, prev: bytes, seq: int) -> bool:
        self._report.checkpoints += 1
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self._break(name, line_no, "malformed", f"checkpoint line {line_no} is not valid JSON: {exc}")
            return False
        if not self._keyring.by_id:
            return True
        key_id = event.get("key_id")
        signature = event.get("sig")
        public_key = self._keyring.by_id.get(key_id) if isinstance(key_id, str) else None
        if public_key is None:
            self._break(
                name,
                line_no,
                "signature",
                f"checkpoint at line {line_no} names key {str(key_id)[:16]}…, which is not a verifying key",
            )
            return False
        valid = isinstance(signature, str) and keys.checkpoint_signature_valid(
            public_key, prev, seq, signature
        )
        if not valid:
            self._break(name, line_no, "signature", f"checkpoint at line {line_no} has an invalid signature")
            return False
        self._report.signatures_ok += 1
        return True

    def _content_break(self, name: str, line_no: int, raw: bytes) -> bool:
        if _ends_with_complete_line(raw):
            return self._break(
                name,
                line_no,
                "malformed",
                f"line {line_no} is a record cut short and followed by another: a write was interrupted",
            )
        message = f"line {line_no} was edited: its content does not match its hash"
        return self._break(name, line_no, "edited", message)

    def _chain_break(self, name: str, line_no: int) -> bool:
        if line_no > 1:
            message = (
                f"line {line_no} does not follow line {line_no - 1}: "
                "a line was deleted, inserted or reordered before it"
            )
        elif self._last_line is None:
            message = "line 1 does not start the chain: lines before it are missing"
        else:
            last_segment, last_line = self._last_line
            message = (
                f"line 1 does not follow {last_segment} line {last_line}: "
                "a line or segment was deleted, inserted or reordered before it"
            )
        return self._break(name, line_no, "chain", message)

    def _seq_break(self, name: str, line_no: int, raw: bytes, expected: int) -> bool:
        try:
            found: int | str = line_seq(raw)
        except ValueError:
            found = "no number"
        return self._break(name, line_no, "seq", f"line {line_no} has seq {found}, expected {expected}")

    def _matches_closed_record(self, name: str, record: dict[str, Any]) -> bool:
        """A segment the manifest records as closed must still end where it ended when it was closed."""
        if record.get("closed") is None or record.get("last_h") is None:
            return True
        if self._last_line is not None and self._last_line[0] == name:
            actual_h = self._prev.decode("ascii")
            actual_seq: int | None = self._next_seq - 1
            line_no = self._last_line[1]
        else:
            actual_h, actual_seq, line_no = None, None, 0
        if actual_h == record["last_h"]:
            return True
        self._break(
            name,
            line_no,
            "chain",
            f"{name} ends at seq {actual_seq} but the manifest records it closed at seq "
            f"{record.get('last_seq')}: lines were removed from or added to its end",
        )
        return False

    def _break(self, segment: str, line: int, kind: BreakKind, message: str) -> bool:
        """Record the first break; returns False so callers can `return self._break(...)`."""
        self._report.first_break = Break(segment, line, kind, message)
        return False


def _ends_with_complete_line(raw: bytes) -> bool:
    """Whether a line whose hash fails is really a torn record followed by an intact one."""
    start = raw.find(LINE_PREFIX, 1)
    while start > 0:
        tail = raw[start:]
        if is_well_formed(tail) and compute_line_hash(tail) == line_hash(tail):
            return True
        start = raw.find(LINE_PREFIX, start + 1)
    return False


def _load_keyring(tape_dir: Path, given: Ed25519PublicKey | None, warnings: list[str]) -> _Keyring:
    if given is not None:
        key_id = keys.public_key_id(given)
        return _Keyring({key_id: given}, "given", key_id)
    by_id: dict[str, Ed25519PublicKey] = {}
    primary: str | None = None
    candidates = [tape_dir / TAPE_PUBLIC_KEY_FILE, *sorted(tape_dir.glob("signing-key-*.pub"))]
    for path in candidates:
        if not path.is_file():
            continue
        try:
            public_key = keys.load_public_key(path)
        except (ValueError, OSError) as exc:
            warnings.append(f"ignoring key file {path.name}: {exc}")
            continue
        key_id = keys.public_key_id(public_key)
        by_id[key_id] = public_key
        primary = primary or key_id
    if by_id:
        warnings.append("checkpoint signatures checked with the key stored in the tape itself")
    return _Keyring(by_id, "tape" if by_id else None, primary)


def _manifest_records(tape_dir: Path, warnings: list[str]) -> dict[int, dict[str, Any]]:
    try:
        manifest = read_manifest(tape_dir)
    except ValueError as exc:
        warnings.append(f"manifest ignored: {exc}")
        return {}
    if manifest is None:
        warnings.append("no manifest: missing segments can only be detected through the chain")
        return {}
    records: dict[int, dict[str, Any]] = {}
    for entry in manifest["segments"]:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            number = segment_number(entry["name"])
            if number is not None:
                records[number] = entry
    return records
