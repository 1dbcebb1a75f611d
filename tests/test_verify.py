"""Tape verification: intact tapes pass; each kind of tampering is named at the exact segment and line."""

from __future__ import annotations

import base64
import hashlib
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from failcore.cli import main as cli_main
from failcore.tape import list_segments
from failcore.tape.keys import load_or_create_signing_key, public_key_id
from failcore.tape.verify import local_identities, verify_tape
from failcore.tape.writer import TapeWriter, encode_line

SEG1 = "seg-000001.jsonl"


@pytest.fixture
def signing_key(tmp_path: Path) -> Ed25519PrivateKey:
    return load_or_create_signing_key(tmp_path / "conf")


@pytest.fixture
def tape_dir(tmp_path: Path) -> Path:
    return tmp_path / "tape"


def write_tape(tape_dir: Path, key: Ed25519PrivateKey, events: int = 20, **kwargs: Any) -> None:
    kwargs.setdefault("checkpoint_every", 1000)
    with TapeWriter(tape_dir, signing_key=key, run_id="run-v", **kwargs) as writer:
        for i in range(events):
            writer.submit({"kind": "network", "run": "run-v", "i": i, "body": f"payload-{i:04d}-abcdef"})


def read_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def reseal(line: bytes) -> bytes:
    """Recompute a line's own hash after editing it, as a careful forger would."""
    raw = line.rstrip(b"\n")
    core = raw[:-72] + b"}"
    digest = hashlib.sha256(core).hexdigest().encode()
    return core[:-1] + b',"h":"' + digest + b'"}\n'


def test_intact_tape_verifies(tape_dir: Path, signing_key: Ed25519PrivateKey) -> None:
    write_tape(tape_dir, signing_key, events=50, checkpoint_every=10, segment_bytes=2048)
    progress: list[int] = []
    report = verify_tape(tape_dir, on_progress=progress.append)
    assert report.ok
    assert report.first_break is None
    assert report.segments == len(list_segments(tape_dir)) > 1
    assert report.lines == sum(len(read_lines(p)) for p in list_segments(tape_dir))
    assert report.checkpoints == report.signatures_ok > 5
    assert report.unsigned_tail == 0
    assert report.truncated == []
    assert report.key_source == "tape"
    assert report.key_id == public_key_id(signing_key.public_key())
    assert progress[-1] == report.lines
    as_dict = report.to_dict()
    assert as_dict["ok"] is True
    assert as_dict["key_source"] == "tape"
    orjson.dumps(as_dict)


def test_wrong_public_key_breaks_at_first_checkpoint(tape_dir: Path, signing_key: Ed25519PrivateKey) -> None:
    write_tape(tape_dir, signing_key, events=15, checkpoint_every=10)
    report = verify_tape(tape_dir, public_key=Ed25519PrivateKey.generate().public_key())
    assert not report.ok
    assert report.first_break is not None
    assert (report.first_break.segment, report.first_break.line, report.first_break.kind) == (
        SEG1,
        11,
        "signature",
    )
    assert report.key_source == "given"


def test_forged_checkpoint_signature_is_caught(tape_dir: Path, signing_key: Ed25519PrivateKey) -> None:
    write_tape(tape_dir, signing_key, events=15, checkpoint_every=10)
    path = tape_dir / SEG1
    lines = read_lines(path)
    checkpoint = orjson.loads(lines[10])
    forged_sig = Ed25519PrivateKey.generate().sign(b"failcore-checkpoint-v1:whatever")
    old_sig = checkpoint["sig"].encode()
    lines[10] = reseal(lines[10].replace(old_sig, base64.b64encode(forged_sig)))
    # Keep the chain intact after the forged line so only the signature can give it away.
    prev = lines[10].rstrip(b"\n")[-66:-2]
    for index in range(11, len(lines)):
        raw = lines[index].rstrip(b"\n")
        lines[index] = reseal(raw[:9] + prev + raw[73:])
        prev = lines[index].rstrip(b"\n")[-66:-2]
    write_lines(path, lines)
    (tape_dir / "manifest.json").unlink()
    report = verify_tape(tape_dir)
    assert report.first_break is not None
    assert (report.first_break.line, report.first_break.kind) == (11, "signature")


def test_edited_byte_is_named_at_its_line(tape_dir: Path, signing_key: Ed25519PrivateKey) -> None:
    write_tape(tape_dir, signing_key)
    path = tape_dir / SEG1
    lines = read_lines(path)
    assert b"payload-0004" in lines[4]
    lines[4] = lines[4].replace(b"payload-0004", b"payload-0005")
    write_lines(path, lines)
    report = verify_tape(tape_dir)
    assert not report.ok
    brk = report.first_break
    assert brk is not None
    assert (brk.segment, brk.line, brk.kind) == (SEG1, 5, "edited")
    assert "line 5" in brk.message
    assert report.lines == 4


def test_edited_line_with_recomputed_hash_breaks_chain_at_next_line(
    tape_dir: Path, signing_key: Ed25519PrivateKey
) -> None:
    write_tape(tape_dir, signing_key)
    path = tape_dir / SEG1
    lines = read_lines(path)
    lines[4] = reseal(lines[4].replace(b"payload-0004", b"payload-HACK"))
    write_lines(path, lines)
    brk = verify_tape(tape_dir).first_break
    assert brk is not None
    assert (brk.segment, brk.line, brk.kind) == (SEG1, 6, "chain")


def test_deleted_line_is_a_chain_break(tape_dir: Path, signing_key: Ed25519PrivateKey) -> None:
    write_tape(tape_dir, signing_key)
    path = tape_dir / SEG1
    lines = read_lines(path)
    del lines[4]
    write_lines(path, lines)
    brk = verify_tape(tape_dir).first_break
    assert brk is not None
    assert (brk.segment, brk.line, brk.kind) == (SEG1, 5, "chain")
    assert "line 5 does not follow line 4" in brk.message
    assert "deleted, inserted or reordered" in brk.message


def test_swapped_lines_break(tape_dir: Path, signing_key: Ed25519PrivateKey) -> None:
    write_tape(tape_dir, signing_key)
    path = tape_dir / SEG1
    lines = read_lines(path)
    lines[4], lines[5] = lines[5], lines[4]
    write_lines(path, lines)
    brk = verify_tape(tape_dir).first_break
    assert brk is not None
    assert (brk.segment, brk.line, brk.kind) == (SEG1, 5, "chain")


def test_wrong_seq_with_valid_hash_and_chain(tape_dir: Path, signing_key: Ed25519PrivateKey) -> None:
    write_tape(tape_dir, signing_key)
    path = tape_dir / SEG1
    lines = read_lines(path)
    lines[4] = reseal(lines[4].replace(b'"seq":5,', b'"seq":50,'))
    write_lines(path, lines)
    brk = verify_tape(tape_dir).first_break
    assert brk is not None
    assert (brk.segment, brk.line, brk.kind) == (SEG1, 5, "seq")
    assert "seq 50, expected 5" in brk.message


def test_torn_line_mid_segment_is_malformed(tape_dir: Path, signing_key: Ed25519PrivateKey) -> None:
    write_tape(tape_dir, signing_key)
    path = tape_dir / SEG1
    lines = read_lines(path)
    lines[2] = lines[2][:120]  # no newline: the next record continues on the same line
    write_lines(path, lines)
    brk = verify_tape(tape_dir).first_break
    assert brk is not None
    assert (brk.segment, brk.line, brk.kind) == (SEG1, 3, "malformed")


def test_garbage_line_is_malformed(tape_dir: Path, signing_key: Ed25519PrivateKey) -> None:
    write_tape(tape_dir, signing_key)
    path = tape_dir / SEG1
    lines = read_lines(path)
    lines.insert(7, b"\n")
    write_lines(path, lines)
    brk = verify_tape(tape_dir).first_break
    assert brk is not None
    assert (brk.segment, brk.line, brk.kind) == (SEG1, 8, "malformed")


def test_truncated_segment_end_is_reported_but_ok_when_next_segment_chains(
    tape_dir: Path, signing_key: Ed25519PrivateKey
) -> None:
    write_tape(tape_dir, signing_key, events=5)
    path = tape_dir / SEG1
    complete = len(read_lines(path))
    with open(path, "ab") as f:
        f.write(b'{"prev":"' + b"a" * 40)  # a crash mid-write
    write_tape(tape_dir, signing_key, events=5)
    report = verify_tape(tape_dir)
    assert report.ok, report.first_break
    assert report.truncated == [(SEG1, complete + 1)]
    assert report.segments == 2


def test_truncation_before_a_segment_that_does_not_chain_is_a_break(
    tape_dir: Path, signing_key: Ed25519PrivateKey
) -> None:
    write_tape(tape_dir, signing_key, events=5)
    write_tape(tape_dir, signing_key, events=5)
    path = tape_dir / SEG1
    lines = read_lines(path)
    write_lines(path, [*lines[:-2], lines[-2][:50]])  # last complete line lost too, not only a torn one
    (tape_dir / "manifest.json").unlink()
    report = verify_tape(tape_dir)
    assert not report.ok
    brk = report.first_break
    assert brk is not None
    assert (brk.segment, brk.line, brk.kind) == ("seg-000002.jsonl", 1, "chain")
    assert SEG1 in brk.message


def test_missing_segment_listed_in_manifest(tape_dir: Path, signing_key: Ed25519PrivateKey) -> None:
    write_tape(tape_dir, signing_key, events=60, segment_bytes=1500)
    assert len(list_segments(tape_dir)) >= 3
    (tape_dir / "seg-000002.jsonl").unlink()
    brk = verify_tape(tape_dir).first_break
    assert brk is not None
    assert (brk.segment, brk.kind) == ("seg-000002.jsonl", "missing_segment")


def test_last_segment_removed_with_manifest_is_detected(
    tape_dir: Path, signing_key: Ed25519PrivateKey
) -> None:
    write_tape(tape_dir, signing_key, events=60, segment_bytes=1500)
    last = list_segments(tape_dir)[-1]
    last.unlink()
    brk = verify_tape(tape_dir).first_break
    assert brk is not None
    assert (brk.segment, brk.kind) == (last.name, "missing_segment")


def test_lines_cut_from_end_of_closed_segment_are_detected(
    tape_dir: Path, signing_key: Ed25519PrivateKey
) -> None:
    write_tape(tape_dir, signing_key)
    path = tape_dir / SEG1
    lines = read_lines(path)
    write_lines(path, lines[:-3])
    report = verify_tape(tape_dir)
    assert not report.ok
    brk = report.first_break
    assert brk is not None
    assert (brk.segment, brk.kind) == (SEG1, "chain")
    assert "removed" in brk.message


def test_unsigned_tail_counts_lines_after_last_checkpoint(tape_dir: Path) -> None:
    tape_dir.mkdir()
    prev = b"0" * 64
    lines = []
    for seq in range(1, 8):
        line, prev = encode_line(prev, seq, b'{"kind":"network","run":"x","i":%d}' % seq)
        lines.append(line)
    write_lines(tape_dir / SEG1, lines)
    report = verify_tape(tape_dir)
    assert report.ok
    assert report.unsigned_tail == 7
    assert report.checkpoints == 0
    assert report.key_source is None
    assert any("no public key" in w for w in report.warnings)


def test_old_checkpoints_still_verify_after_key_change(tmp_path: Path, tape_dir: Path) -> None:
    first_key = load_or_create_signing_key(tmp_path / "conf-a")
    second_key = load_or_create_signing_key(tmp_path / "conf-b")
    write_tape(tape_dir, first_key, events=5)
    write_tape(tape_dir, second_key, events=5)
    report = verify_tape(tape_dir)
    assert report.ok, report.first_break
    assert report.signatures_ok == 2
    assert report.key_id == public_key_id(second_key.public_key())
    given = verify_tape(tape_dir, public_key=second_key.public_key())
    assert given.first_break is not None
    assert given.first_break.kind == "signature"
    assert given.first_break.segment == SEG1


# ---------------------------------------------------------------- status: final, unsigned, dropped, keys


def rechain_from(lines: list[bytes], index: int) -> None:
    prev = lines[index - 1].rstrip(b"\n")[-66:-2] if index else b"0" * 64
    for i in range(index, len(lines)):
        raw = lines[i].rstrip(b"\n")
        lines[i] = reseal(raw[:9] + prev + raw[73:])
        prev = lines[i].rstrip(b"\n")[-66:-2]


def test_a_checkpoint_cannot_be_made_final_without_the_key(
    tape_dir: Path, signing_key: Ed25519PrivateKey
) -> None:
    write_tape(tape_dir, signing_key, events=15, checkpoint_every=10)
    path = tape_dir / SEG1
    lines = read_lines(path)
    assert b'"final":false' in lines[10]
    write_lines(path, lines[:11])
    lines = lines[:11]
    lines[10] = lines[10].replace(b'"final":false', b'"final":true ')
    rechain_from(lines, 10)
    write_lines(path, lines)
    (tape_dir / "manifest.json").unlink()
    report = verify_tape(tape_dir, public_key=signing_key.public_key())
    assert report.status == "broken"
    assert report.first_break is not None and (report.first_break.line, report.first_break.kind) == (
        11,
        "signature",
    )


def test_statuses_unsigned_incomplete_dropped(tape_dir: Path, signing_key: Ed25519PrivateKey) -> None:
    tape_dir.mkdir()
    prev, lines = b"0" * 64, []
    for seq in range(1, 4):
        line, prev = encode_line(prev, seq, b'{"kind":"network","run":"x","i":%d}' % seq)
        lines.append(line)
    write_lines(tape_dir / SEG1, lines)
    assert verify_tape(tape_dir, public_key=signing_key.public_key()).status == "unsigned"

    # A checkpoint as older versions wrote it (no `final`): signed, but the end is not vouched for.
    sig = base64.b64encode(signing_key.sign(b"failcore-checkpoint-v1:" + prev + b":4")).decode()
    key_id = public_key_id(signing_key.public_key())
    body = orjson.dumps(
        {"kind": "checkpoint", "v": 1, "ts": 1.0, "run": "x", "key_id": key_id, "count": 3, "sig": sig}
    )
    line, prev = encode_line(prev, 4, body)
    write_lines(tape_dir / SEG1, [*lines, line])
    report = verify_tape(tape_dir, public_key=signing_key.public_key())
    assert (report.status, report.signatures_ok, report.final) == ("incomplete", 1, False)

    shutil.rmtree(tape_dir)
    with TapeWriter(tape_dir, signing_key=signing_key, run_id="run-v") as writer:
        writer.submit({"kind": "network", "run": "run-v", "i": 0})
        writer._submit_drops = 7  # as a full queue leaves it
        writer.submit({"kind": "network", "run": "run-v", "i": 1})
    report = verify_tape(tape_dir, public_key=signing_key.public_key())
    assert (report.status, report.dropped, report.final) == ("dropped", 7, True)


def test_an_edited_signed_manifest_is_a_break(tape_dir: Path, signing_key: Ed25519PrivateKey) -> None:
    write_tape(tape_dir, signing_key, events=5)
    path = tape_dir / "manifest.json"
    manifest = orjson.loads(path.read_bytes())
    manifest["head"]["seq"] -= 1
    path.write_bytes(orjson.dumps(manifest))
    report = verify_tape(tape_dir, public_key=signing_key.public_key())
    assert report.status == "broken"
    assert report.first_break is not None and report.first_break.kind == "manifest"


def test_local_identities_cover_failcore_home_and_mitmproxy_confdir(tmp_path: Path) -> None:
    home, mitm, empty = tmp_path / "home", tmp_path / "mitm", tmp_path / "empty"
    first = load_or_create_signing_key(home)
    second = load_or_create_signing_key(mitm)
    (mitm / "failcore-signing.key").unlink()  # only its .pub is left
    empty.mkdir()
    found = local_identities([home, mitm, empty, home])
    assert [(t.key_id, Path(t.source).parent) for t in found] == [
        (public_key_id(first.public_key()), home),
        (public_key_id(second.public_key()), mitm),
    ]


def test_verify_help_says_what_each_exit_code_proves(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["verify", "--help"])
    text = capsys.readouterr().out
    for code, word in (
        (0, "OK"),
        (1, "BROKEN"),
        (3, "INCOMPLETE"),
        (4, "UNSIGNED"),
        (5, "UNKNOWN KEY"),
        (6, "DROPPED"),
    ):
        assert f"  {code} {word}" in text
