"""Tape verification: every line's hash, the chain between lines and segments, seq, checkpoint
signatures, the signed manifest's head and the writer's final checkpoint. Only checkpoint and `dropped`
lines are parsed as JSON; everything else is byte slicing and sha256, so a tape verifies at disk speed.
The first break stops verification and is named by segment and line.

The outcome is one `status`, from worst to best:

* ``broken``: a line was edited, deleted, inserted or reordered, a segment is missing, a signature or
  the signed manifest does not match, lines were removed from the end the signed manifest names, or a
  file shaped like a segment that failcore did not write lies beside them (tape/layout.py).
* ``unknown_key``: intact, but signed by a key that is not trusted (not given, not a local identity):
  anyone can sign a forged tape with a key of their own and put it in the tape.
* ``unsigned``: intact, but no checkpoint signature could be checked (no checkpoint, or no key).
* ``incomplete``: everything up to the last checkpoint is signed, but the tape does not end with its
  writer's final checkpoint: the writer is still running, was killed (SIGKILL, power loss) or the
  tape's end was cut off. Lines after the last checkpoint are not signed and could be forged.
* ``dropped``: complete and signed, but the writer recorded that it lost events (`dropped` lines).
* ``ok``: complete, signed by a trusted key to its final checkpoint, nothing dropped.

Size: a little over 500 lines because `_ChainVerifier` is one state machine over the lines of every
segment (chain, seq, checkpoints, torn tails, manifest head); whom to trust lives in `trust.py`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from failcore.tape import keys
from failcore.tape.layout import Strays, stray_files
from failcore.tape.reader import (
    CHECKPOINT_MARK,
    GENESIS_PREV,
    HASH_MARK,
    LINE_PREFIX,
    SEQ_MARK,
    compute_line_hash,
    is_well_formed,
    line_hash,
    line_seq,
    list_segments,
    read_manifest,
    segment_name,
    segment_number,
)
from failcore.tape.trust import Keyring, KeySource, TrustedKey, load_keyring
from failcore.tape.trust import local_identities as local_identities  # re-exported: `failcore verify` uses it

BreakKind = Literal[
    "edited", "chain", "seq", "malformed", "signature", "missing_segment", "manifest", "stray_file"
]
Status = Literal["ok", "dropped", "incomplete", "unsigned", "unknown_key", "broken"]

DROPPED_MARK: Final = b'"kind":"dropped",'

_READ_BUFFER = 1 << 20
_PROGRESS_EVERY = 1 << 16


@dataclass(frozen=True, slots=True)
class Break:
    segment: str
    line: int
    kind: BreakKind
    message: str


@dataclass(slots=True)
class UnknownSigner:
    """The first checkpoint signed by a key that is not trusted."""

    key_id: str
    segment: str
    line: int
    in_tape: bool  # the tape carries this public key (and the signature is valid with it)


@dataclass(slots=True)
class VerifyReport:
    # The chain is intact: nothing was edited, removed or inserted (see `status` for the whole verdict).
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
    status: Status = "ok"
    # The last line is a checkpoint, signed by a trusted key, that names itself its writer's last.
    final: bool = False
    last_checkpoint_final: bool = False
    dropped: int = 0
    unknown_signer: UnknownSigner | None = None
    trusted_keys: list[tuple[str, str]] = field(default_factory=list)  # (key id, source)
    manifest_signed: bool = False
    head_seq: int = 0
    head_h: str | None = None
    writer_pid: str | None = None  # a writer holds the tape's lock right now
    unexpected_files: list[str] = field(default_factory=list)  # in the tape directory; nothing reads them

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
            "status": self.status,
            "final": self.final,
            "dropped": self.dropped,
            "unknown_signer": (
                {
                    "key_id": self.unknown_signer.key_id,
                    "segment": self.unknown_signer.segment,
                    "line": self.unknown_signer.line,
                    "in_tape": self.unknown_signer.in_tape,
                }
                if self.unknown_signer
                else None
            ),
            "trusted_keys": [{"key_id": key_id, "source": source} for key_id, source in self.trusted_keys],
            "manifest_signed": self.manifest_signed,
            "head": {"seq": self.head_seq, "h": self.head_h},
            "writer_pid": self.writer_pid,
            "unexpected_files": list(self.unexpected_files),
        }


def verify_tape(
    tape_dir: Path,
    *,
    public_key: Ed25519PublicKey | None = None,
    trusted_keys: list[TrustedKey] | None = None,
    trust_tape_keys: bool | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Check a whole tape against the keys it should be signed with.

    `public_key` pins one key; `trusted_keys` (e.g. `local_identities()`) names every key to trust. A
    checkpoint signed by any other key makes the status `unknown_key`, even when the tape carries that
    key. `trust_tape_keys` also trusts the keys stored in the tape (a check of consistency, not of
    authorship); it defaults to True only when no key at all is given, as in older versions."""
    started = time.perf_counter()
    tape_dir = Path(tape_dir)
    report = VerifyReport()
    given = list(trusted_keys or [])
    if public_key is not None:
        given.insert(0, TrustedKey(public_key, "given"))
    if trust_tape_keys is None:
        trust_tape_keys = public_key is None and trusted_keys is None
    keyring = load_keyring(tape_dir, given, trust_tape_keys, report.warnings)
    keyring.pinned = public_key is not None
    if not keyring.by_id:
        report.warnings.append("no public key: checkpoint signatures were not checked")
    report.key_id = keyring.primary_id
    report.key_source = "given" if public_key is not None else keyring.source
    report.trusted_keys = [(t.key_id, t.source) for t in given]
    manifest = _read_manifest(tape_dir, report.warnings)
    manifest_records = _manifest_records(manifest)
    verifier = _ChainVerifier(report, keyring, on_progress)
    head = _signed_head(manifest, keyring, report) if manifest is not None else None
    strays = stray_files(tape_dir)
    if report.first_break is None and not strays.not_files:
        verifier.run(tape_dir, manifest_records, head)
    _report_strays(strays, report)
    report.ok = report.first_break is None
    report.writer_pid = _lock_holder(tape_dir)
    report.status = _status(report)
    report.seconds = time.perf_counter() - started
    if on_progress is not None:
        on_progress(report.lines)
    return report


def _report_strays(strays: Strays, report: VerifyReport) -> None:
    """Files that are not the tape's: one shaped like a segment breaks it (readers skip it, so what it
    says is shown nowhere, but someone put it there); any other is named in a warning."""
    report.unexpected_files = strays.other
    odd = strays.not_files or strays.segment_like
    if report.first_break is None and odd:
        what = "not a regular file" if strays.not_files else "not a segment name failcore writes"
        report.first_break = Break(
            odd[0],
            0,
            "stray_file",
            f"{_names(odd)}: {what}; a file was added to the tape directory (no command shows it)",
        )


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _status(report: VerifyReport) -> Status:
    if report.first_break is not None:
        return "broken"
    if report.unknown_signer is not None:
        return "unknown_key"
    if report.signatures_ok == 0:
        return "unsigned"
    if not report.final:
        return "incomplete"
    if report.dropped:
        return "dropped"
    return "ok"


def _lock_holder(tape_dir: Path) -> str | None:
    """The pid of a writer holding the tape's lock right now, or None."""
    path = tape_dir / ".lock"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _signed_head(
    manifest: dict[str, Any], keyring: Keyring, report: VerifyReport
) -> tuple[int, bytes] | None:
    """The chain head a trusted manifest signature vouches for; a changed manifest is a break."""
    sig = manifest.get("sig")
    if sig is None:
        report.warnings.append(
            "manifest.json is not signed (an older failcore wrote it, or its signature was removed)"
        )
        return None
    key_id = manifest.get("key_id")
    key = keyring.by_id.get(key_id) if isinstance(key_id, str) else None
    if key is None:
        key = keyring.in_tape.get(key_id) if isinstance(key_id, str) else None
        if key is not None and not keys.manifest_signature_valid(key, manifest):
            report.first_break = Break(
                "manifest.json", 0, "manifest", "manifest.json was changed after it was signed"
            )
        report.warnings.append("manifest.json is signed by a key that is not trusted; its head was not used")
        return None
    if not keys.manifest_signature_valid(key, manifest):
        report.first_break = Break(
            "manifest.json", 0, "manifest", "manifest.json was changed after failcore signed it"
        )
        return None
    report.manifest_signed = True
    head = manifest.get("head")
    if (
        not isinstance(head, dict)
        or not isinstance(head.get("seq"), int)
        or not isinstance(head.get("h"), str)
    ):
        return None
    return head["seq"], head["h"].encode("ascii", "replace")


class _ChainVerifier:
    def __init__(
        self, report: VerifyReport, keyring: Keyring, on_progress: Callable[[int], None] | None
    ) -> None:
        self._report = report
        self._keyring = keyring
        self._on_progress = on_progress
        self._prev = GENESIS_PREV
        self._next_seq = 1
        self._last_line: tuple[str, int] | None = None  # where the last complete line was
        self._head_seq = -1
        self._head_h = b""
        self._head_found: bytes | None = None
        self._last_is_final = False

    def run(
        self, tape_dir: Path, manifest_records: dict[int, dict[str, Any]], head: tuple[int, bytes] | None
    ) -> None:
        if head is not None:
            self._head_seq, self._head_h = head
            if self._head_seq == 0:
                self._head_found = GENESIS_PREV  # a manifest written before the first line
        self._run(tape_dir, manifest_records)
        report = self._report
        report.head_seq = self._next_seq - 1
        report.head_h = self._prev.decode("ascii") if report.head_seq else None
        report.final = self._last_is_final and report.unsigned_tail == 0 and not report.truncated
        if report.first_break is not None or head is None:
            return
        name, line_no = self._last_line or ("manifest.json", 0)
        if self._head_found is None:
            self._break(
                name,
                line_no,
                "chain",
                f"the tape ends at seq {report.head_seq}, but its signed manifest records it up to seq "
                f"{self._head_seq}: lines or segments were removed from its end",
            )
        elif self._head_found != self._head_h:
            self._break(
                name,
                line_no,
                "chain",
                f"line seq {self._head_seq} is not the one the signed manifest names as the tape's head",
            )

    def _run(self, tape_dir: Path, manifest_records: dict[int, dict[str, Any]]) -> None:
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
        head_seq = self._head_seq
        last_final = self._last_is_final
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
                    final = self._verify_checkpoint(name, line_no, raw[:-1], prev, seq)
                    if final is None:
                        return False
                    last_final = final
                    unsigned = 0
                else:
                    if raw.startswith(DROPPED_MARK, 81 + len(seq_text)):
                        self._count_dropped(raw[:-1])
                    last_final = False
                    unsigned += 1
                if seq == head_seq:
                    self._head_found = digest
                prev = digest
                seq += 1
                complete = line_no
                report.lines += 1
                if progress is not None and report.lines % _PROGRESS_EVERY == 0:
                    progress(report.lines)
        self._prev = prev
        self._next_seq = seq
        self._last_is_final = last_final
        report.unsigned_tail = unsigned
        if complete:
            self._last_line = (name, complete)
        return True

    def _count_dropped(self, raw: bytes) -> None:
        try:
            count = orjson.loads(raw).get("count")
        except orjson.JSONDecodeError:
            count = None
        self._report.dropped += count if isinstance(count, int) and count > 0 else 1

    def _verify_checkpoint(self, name: str, line_no: int, raw: bytes, prev: bytes, seq: int) -> bool | None:
        """Whether the checkpoint is a trusted final one; None when it breaks the tape (recorded)."""
        report = self._report
        report.checkpoints += 1
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self._break(name, line_no, "malformed", f"checkpoint line {line_no} is not valid JSON: {exc}")
            return None
        final = event.get("final")
        if final is not None and not isinstance(final, bool):
            self._break(name, line_no, "malformed", f"checkpoint line {line_no} has a non-boolean `final`")
            return None
        key_id = event.get("key_id")
        signature = event.get("sig")
        key_id = key_id if isinstance(key_id, str) else ""
        trusted = self._keyring.by_id.get(key_id)
        public_key = trusted or self._keyring.in_tape.get(key_id)
        if public_key is not None and not (
            isinstance(signature, str)
            and keys.checkpoint_signature_valid(public_key, prev, seq, signature, final)
        ):
            where = "" if trusted is not None else " (checked with the key stored in the tape)"
            self._break(
                name,
                line_no,
                "signature",
                f"checkpoint at line {line_no} has an invalid signature for key {key_id[:16]}…{where}",
            )
            return None
        if trusted is None and self._keyring.pinned:
            given = self._keyring.primary_id or ""
            self._break(
                name,
                line_no,
                "signature",
                f"checkpoint at line {line_no} was signed by key {key_id[:16]}…, not by the given key "
                f"{given[:16]}…",
            )
            return None
        if trusted is None:
            if report.unknown_signer is None:
                report.unknown_signer = UnknownSigner(key_id, name, line_no, public_key is not None)
            return False
        report.signatures_ok += 1
        return bool(final)

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


def _read_manifest(tape_dir: Path, warnings: list[str]) -> dict[str, Any] | None:
    try:
        manifest = read_manifest(tape_dir)
    except ValueError as exc:
        warnings.append(f"manifest ignored: {exc}")
        return None
    if manifest is None:
        warnings.append("no manifest: missing segments can only be detected through the chain")
    return manifest


def _manifest_records(manifest: dict[str, Any] | None) -> dict[int, dict[str, Any]]:
    if manifest is None:
        return {}
    records: dict[int, dict[str, Any]] = {}
    for entry in manifest["segments"]:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            number = segment_number(entry["name"])
            if number is not None:
                records[number] = entry
    return records
