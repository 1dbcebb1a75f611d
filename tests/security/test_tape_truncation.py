"""Attacks on the tape's end and on who signed it (issue 9 item 8, issue 9 "verify", issue 10 §4).

Each tape is recorded through the real proxy to a logging upstream, then tampered with as an attacker
with write access to the tape directory would, then checked with `failcore verify` as a user runs it.
Before the fix each of these said `OK`, exit 0."""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.helpers import ProxyThread, proxied_client, read_tape
from tests.security.tapetools import (
    fix_manifest,
    forged_checkpoint,
    forged_line,
    line_hash,
    read_lines,
    segments,
    verify,
    write_lines,
)
from tests.security.upstream import LoggingUpstream

POLICY = "version: 1\nmode: enforce\ndefault: ALLOW\n"
EXIT_OK, EXIT_BROKEN, EXIT_INCOMPLETE, EXIT_UNKNOWN_KEY = 0, 1, 3, 5


def wait_for_segments(tape: Path, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while len(segments(tape)) < count:
        assert time.monotonic() < deadline, f"the writer did not rotate to {count} segments"
        time.sleep(0.05)


@pytest.fixture
def recorded_tape(start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path) -> Path:
    """Three runs' worth of exchanges over at least three segments, the proxy stopped cleanly."""
    proxy: ProxyThread = start_proxy(
        policy_file(POLICY),
        upstream_ca=logging_upstream.ca_path,
        sets=["failcore_segment_seconds=1", "failcore_checkpoint_every=2"],
    )
    tape = tmp_path / "tape"
    with proxied_client(proxy) as client:
        for i in range(3):
            for j in range(3):
                reply = client.post(
                    f"{logging_upstream.url}/step/{i}/{j}", content=f"marker-{i}-{j}".encode()
                )
                assert reply.status_code == 200
            proxy.flush()
            wait_for_segments(tape, i + 2)
    proxy.stop()
    seen = logging_upstream.received_bytes()
    assert all(f"marker-{i}-{j}".encode() in seen for i in range(3) for j in range(3))
    kinds = [e["kind"] for e in read_tape(tape)]
    assert kinds[-2:] == ["run_end", "checkpoint"]
    return tape


@pytest.fixture
def real_key(confdir: Path) -> str:
    return str(confdir / "failcore-signing.pub")


def test_intact_tape_is_ok(recorded_tape: Path, real_key: str, capsys) -> None:
    code, report = verify(capsys, recorded_tape, "--key", real_key)
    assert code == EXIT_OK, report
    assert (report["status"], report["final"]) == ("ok", True)
    assert verify(capsys, recorded_tape)[0] == EXIT_OK  # this user's own key, without --key


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [("forged", EXIT_INCOMPLETE), ("edited-but-signed", EXIT_BROKEN), ("untouched", EXIT_BROKEN)],
)
def test_deleting_the_newest_segments_is_not_ok(
    recorded_tape: Path, real_key: str, capsys, manifest: str, expected: int
) -> None:
    *_, before_last, last = segments(recorded_tape)
    last.unlink()
    before_last.unlink()
    if manifest != "untouched":
        fix_manifest(recorded_tape, keep_signature=manifest == "edited-but-signed")
    assert not any(e["kind"] == "run_end" for e in read_tape(recorded_tape))
    code, report = verify(capsys, recorded_tape, "--key", real_key)
    assert code == expected, report
    assert report["status"] != "ok" and report["final"] is False


def test_cutting_the_tape_at_a_checkpoint_is_not_ok(recorded_tape: Path, real_key: str, capsys) -> None:
    """Cut right after a signed (but not final) checkpoint: everything left verifies, signature
    included; only the missing final checkpoint (and the manifest's signed head) give it away."""
    first, *later = segments(recorded_tape)
    lines = read_lines(first)
    cut = max(i for i, raw in enumerate(lines[:-1]) if b'"kind":"checkpoint"' in raw)
    write_lines(first, lines[: cut + 1])
    for path in later:
        path.unlink()
    fix_manifest(recorded_tape)
    code, report = verify(capsys, recorded_tape, "--key", real_key)
    assert code == EXIT_INCOMPLETE, report
    assert report["status"] == "incomplete"
    assert report["first_break"] is None and report["unsigned_tail"] == 0
    capsys.readouterr()
    assert failcore_text(recorded_tape, real_key, capsys).startswith("INCOMPLETE")


def failcore_text(tape: Path, key: str, capsys) -> str:
    from failcore.cli import main

    main(["verify", str(tape), "--key", key])
    return capsys.readouterr().out


def test_lines_signed_by_an_added_foreign_key_are_not_ok(
    recorded_tape: Path, capsys, monkeypatch, tmp_path: Path
) -> None:
    """Append forged events, sign them with a key of one's own and put its public key in the tape
    as `signing-key-*.pub`: without --key, verify used to trust every key it found in the tape."""
    evil = Ed25519PrivateKey.generate()
    raw_public = evil.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    evil_id = hashlib.sha256(raw_public).hexdigest()
    (recorded_tape / f"signing-key-{evil_id[:16]}.pub").write_text(
        base64.b64encode(raw_public).decode() + "\n"
    )
    last = segments(recorded_tape)[-1]
    lines = read_lines(last)
    seq = orjson.loads(lines[-1])["seq"] + 1
    event = forged_line(line_hash(lines[-1]), seq, {"kind": "network", "run": "forged", "path": "/nothing"})
    lines += [event, forged_checkpoint(evil, evil_id, line_hash(event), seq + 1, final=True)]
    write_lines(last, lines)
    fix_manifest(recorded_tape)

    # On this machine (its own key known) and on one with no failcore key at all.
    code, report = verify(capsys, recorded_tape)
    assert code == EXIT_UNKNOWN_KEY, report
    assert report["status"] == "unknown_key"
    assert report["unknown_signer"]["key_id"] == evil_id and report["unknown_signer"]["in_tape"] is True
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv("FAILCORE_HOME", str(elsewhere))
    monkeypatch.setenv("HOME", str(elsewhere))
    code, report = verify(capsys, recorded_tape)
    assert code == EXIT_UNKNOWN_KEY, report
    assert (report["status"], report["trusted_keys"]) == ("unknown_key", [])
    # Trusting the tape's own keys is still possible, and says what it proves.
    code, report = verify(capsys, recorded_tape, "--tape-key")
    assert (code, report["key_source"]) == (EXIT_OK, "tape")
