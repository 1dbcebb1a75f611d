"""Attacks: a secret base64'd or hex'd past a limit of the run decoding that the agent controls.

The engine decoded base64/hex runs only within limits: a run of at most 16 KiB, decoding to at least
90 % printable *bytes*, the first 64 candidates (256 KB decoded) and the first 1,024 runs of a text.
Each limit let the key below out (200, ALLOW, no hit) and onto the tape, where decoding the recorded
body gave it back. Now every run is decoded whole, its text scanned (a run that does not decode to
text has its stretches of text scanned), at a cost linear in its bytes; an LLM vision call full of
base64 images still passes.

Each through the real proxy, asserting what reached a logging upstream and what the tape holds.
"""

from __future__ import annotations

import base64
import json
import random
import struct
import zlib
from pathlib import Path

import pytest

from tests.helpers import network_events, read_tape
from tests.security.coding_helpers import recoverable_from_tape
from tests.security.helpers import AWS_KEY_ID, DLP_BLOCK, plain_request, send_raw
from tests.security.upstream import LoggingUpstream

DOC = f"aws_access_key_id = {AWS_KEY_ID}\n"
PAD = ("lorem ipsum dolor sit amet " * 700)[:16500]  # past the old 16 KiB run limit once encoded


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


ATTACKS = {
    # a base64 run longer than 16 KiB, the key at its end and at its start
    "base64 run past 16 KiB": {"d": _b64(PAD + DOC)},
    "base64 run past 16 KiB, key first": {"d": _b64(DOC + PAD)},
    # text in another script around the key: its UTF-8 bytes are not printable ASCII
    "base64 of UTF-8 text": {"d": _b64("日本語のテキスト" * 4 + DOC)},
    # 70 harmless base64 texts first (the first 64 candidates / 256 KB decoded were all)
    "base64 after 70 decoys": {
        "x": [_b64(f"decoy number {i:04d} padding") for i in range(70)],
        "d": _b64(DOC),
    },
    # 1,100 runs that decode to nothing first (the first 1,024 runs were all)
    "base64 after 1,100 junk runs": {"x": ["Z" * 23 + "9" + f"{i:04d}" for i in range(1100)], "d": _b64(DOC)},
    # a hex run longer than 16 KiB
    "hex run past 16 KiB": {"d": (PAD[:9000] + DOC).encode().hex()},
    # a wrapped base64 text (`base64` wraps at 76 columns) with the key across a line break
    "wrapped base64, key across a line": {"d": base64.encodebytes(("x" * 27 + DOC).encode()).decode()},
    # the key's base64 out of step with its run's start (a one-character prefix)
    "base64 after a prefix": {"d": "x" + _b64(DOC)},
}


def _post(upstream: LoggingUpstream, body: bytes) -> bytes:
    return plain_request(upstream, "POST", "/upload", headers="Content-Type: application/json\r\n", body=body)


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_an_encoded_secret_past_a_decoding_limit_is_blocked(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path, attack: str
) -> None:
    body = json.dumps(ATTACKS[attack]).encode()
    assert AWS_KEY_ID.encode() not in body
    proxy = start_proxy(policy_file(DLP_BLOCK))
    answer = send_raw(proxy.port, _post(plain_logging_upstream, body))
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert b"x-failcore-rule: dlp:aws-access-key-id" in answer.lower()
    assert plain_logging_upstream.received_bytes() == b"", "nothing of the request reached the upstream"
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert (event["decision"], event["rule"], event["outcome"]) == (
        "BLOCK",
        "dlp:aws-access-key-id",
        "BLOCKED",
    )
    assert "aws-access-key-id" in [h["rule"] for h in event["dlp"]["hits"]]
    assert event["request"]["body"]["dlp_masked"] >= 1
    assert not recoverable_from_tape(tmp_path / "tape", AWS_KEY_ID.encode())


def _png(width: int, height: int, seed: int) -> bytes:
    """A real PNG of noise (its IDAT incompressible, as a photo's JPEG data is)."""
    rng = random.Random(seed)
    rows = b"".join(b"\x00" + rng.randbytes(width * 3) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_a_vision_call_full_of_base64_images_still_passes(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    """An OpenAI-style vision request of ~1.4 MiB: four images of 250-350 KB base64 each, data URLs in
    JSON, as an agent sends them. Every run is now decoded, and nothing in them is a secret: ALLOW."""
    images = [_png(width, 96, seed) for seed, width in enumerate((640, 720, 800, 900))]
    content = [{"type": "text", "text": "What is in these pictures?"}]
    for image in images:
        url = "data:image/png;base64," + base64.b64encode(image).decode()
        content.append({"type": "image_url", "image_url": {"url": url}})
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": content}]}).encode()
    assert len(body) > 1 << 20
    proxy = start_proxy(policy_file(DLP_BLOCK))
    answer = send_raw(proxy.port, _post(plain_logging_upstream, body))
    proxy.flush()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert body in plain_logging_upstream.received_bytes()
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert event["decision"] == "ALLOW" and not event.get("warnings")
    assert not (event.get("dlp") or {}).get("hits")
