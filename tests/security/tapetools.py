"""What an attacker with write access to a tape directory does to it, and `failcore verify` as a user
runs it. Independent of failcore's writer: lines are re-hashed and checkpoints re-signed here from the
documented line format (sha256 over the line without its `"h"` field) and signature messages."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from failcore.cli import main as failcore_main


def reseal(raw: bytes) -> bytes:
    """A line (no newline) with its own hash recomputed after an edit."""
    core = raw[:-72] + b"}"
    return core[:-1] + b',"h":"' + hashlib.sha256(core).hexdigest().encode() + b'"}'


def line_hash(raw: bytes) -> bytes:
    return raw[-66:-2]


def rechain(lines: list[bytes], prev: bytes) -> list[bytes]:
    """Lines (no newlines) re-linked after `prev`, each resealed: a forger's fixed-up chain."""
    out = []
    for raw in lines:
        raw = reseal(raw[:9] + prev + raw[73:])
        out.append(raw)
        prev = line_hash(raw)
    return out


def forged_line(prev: bytes, seq: int, fields: dict[str, Any]) -> bytes:
    core = b'{"prev":"' + prev + b'","seq":' + str(seq).encode() + b"," + orjson.dumps(fields)[1:-1] + b"}"
    return core[:-1] + b',"h":"' + hashlib.sha256(core).hexdigest().encode() + b'"}'


def forged_checkpoint(key: Ed25519PrivateKey, key_id: str, prev: bytes, seq: int, *, final: bool) -> bytes:
    """A checkpoint line signed by `key` as failcore signs its own (v2 message, `final` covered)."""
    message = (
        b"failcore-checkpoint-v2:" + prev + b":" + str(seq).encode() + b":" + (b"final" if final else b"open")
    )
    body = {
        "kind": "checkpoint",
        "v": 1,
        "ts": 1.0,
        "run": "forged",
        "key_id": key_id,
        "count": 1,
        "final": final,
        "sig": base64.b64encode(key.sign(message)).decode(),
    }
    return forged_line(prev, seq, body)


def segments(tape: Path) -> list[Path]:
    return sorted(tape.glob("seg-*.jsonl"))


def read_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def fix_manifest(tape: Path, *, keep_signature: bool = False) -> None:
    """Make manifest.json agree with the segments left on disk, as a forger would: drop the entries of
    deleted segments, rewrite the last one's end, and (unless told otherwise) drop the signature and
    head a forger cannot recompute."""
    path = tape / "manifest.json"
    manifest = orjson.loads(path.read_bytes())
    on_disk = {p.name: p for p in segments(tape)}
    manifest["segments"] = [s for s in manifest["segments"] if s["name"] in on_disk]
    last = manifest["segments"][-1]
    tail = read_lines(on_disk[last["name"]])[-1]
    last["last_seq"] = orjson.loads(tail)["seq"]
    last["last_h"] = line_hash(tail).decode()
    if not keep_signature:
        manifest.pop("sig", None)
        manifest.pop("head", None)
    path.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))


def verify(capsys: pytest.CaptureFixture[str], tape: Path, *args: str) -> tuple[int, dict[str, Any]]:
    """`failcore verify TAPE ARGS --json` in-process: (exit code, its JSON report)."""
    capsys.readouterr()
    code = failcore_main(["verify", str(tape), *args, "--json"])
    return code, orjson.loads(capsys.readouterr().out)
