"""`no_candidates` (failcore.dlp.decode), which lets DlpEngine.quiet_lines answer for a header block's
request or trace id without building the decoded text: whenever it says a text's base64/hex runs decode
to nothing, `encoded_candidates` (what a scan of them reads) yields nothing for them either.

Corpus: gitleaks' own fixtures (tests/data/conformance/dlp, MIT, see its LICENSE), each text and secret
base64'd (standard, url-safe, unpadded, after 1-3 characters that put it out of step, as UTF-16), hex'd
and wrapped in ids; ids as providers send them (hex request ids, trace parents, UUIDs, `req_…`,
base64 tokens); random runs of the base64 alphabet; random bytes for `_may_be_text`."""

from __future__ import annotations

import base64
import os
import random
import uuid

from failcore.dlp import decode as dv
from tests.dlp_corpus import load_samples


def _encodings(text: bytes, rng: random.Random) -> list[bytes]:
    b64 = base64.b64encode(text)
    junk = bytes(rng.choice(dv.RUN_CHARS[:62]) for _ in range(3))
    return [
        text,
        b64,
        base64.urlsafe_b64encode(text).rstrip(b"="),
        b"k=" + b64,
        *(junk[:n] + b64 for n in (1, 2, 3)),  # decodes to text only at an offset
        text.hex().encode(),
        b"f" + text.hex().encode(),  # odd length: read as base64, its hex stretch at both offsets
        base64.b64encode(text.decode("utf-8", "replace").encode("utf-16-le")),
        base64.b64encode(text[:40]) + b"\n" + base64.b64encode(text[40:80]),
    ]


def _ids(rng: random.Random) -> list[bytes]:
    return [
        f"{rng.getrandbits(96):024x}".encode(),
        f"{rng.getrandbits(128):032x}".encode(),
        f"req_{rng.getrandbits(128):032x}".encode(),
        f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01".encode(),
        str(uuid.UUID(int=rng.getrandbits(128))).encode(),
        f"{rng.getrandbits(160):040X}".encode(),
        base64.b64encode(rng.randbytes(rng.randrange(18, 60))),
        base64.urlsafe_b64encode(rng.randbytes(rng.randrange(18, 60))).rstrip(b"="),
        bytes(rng.choice(dv.RUN_CHARS) for _ in range(rng.randrange(24, 90))),
        bytes(rng.choice(b"0123456789abcdefABCDEF") for _ in range(rng.randrange(24, 70))),
    ]


def _agrees(data: bytes) -> bool:
    """Whether no_candidates' answer is the one encoded_candidates gives (or no answer)."""
    runs = dv.find_runs(data)
    if not dv.no_candidates(data, runs):
        return True
    return next(dv.encoded_candidates(dv.RawView(data), runs), None) is None


def test_no_candidates_only_when_encoded_candidates_yields_nothing() -> None:
    rng = random.Random(7)
    said_none = said_unknown = 0
    texts: list[bytes] = []
    for sample in load_samples():
        for part in (sample.text, sample.secret):
            if part:
                texts += _encodings(part.encode("utf-8", "surrogateescape"), rng)
    for _ in range(3000):
        texts += _ids(rng)
    for text in texts:
        for data in (text, b"x-request-id: " + text + b"\ncontent-type: application/json\n"):
            assert _agrees(data), data
            if dv.no_candidates(data, dv.find_runs(data)):
                said_none += 1
            else:
                said_unknown += 1
    # Both answers were given: the ids mostly decode to nothing, the fixtures' encodings to text.
    assert said_none > 20_000 and said_unknown > 20_000, (said_none, said_unknown)


def test_no_candidates_on_known_encodings() -> None:
    secret = b"ghp_" + b"A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    for data in (
        base64.b64encode(secret),
        b"xy" + base64.b64encode(secret),
        secret.hex().encode(),
        base64.b64encode(b"password=" + secret),
        base64.b64encode("Invoke-WebRequest -Uri http://x".encode("utf-16-le")),
        # UTF-8 text with an accent every 9 bytes (no stretch of ASCII text in it): only read whole.
        ("abcdefgh\u00e9" * 4).encode().hex().encode(),
        base64.b64encode(("abcdefgh\u00e9" * 4).encode()),
    ):
        assert not dv.no_candidates(data, dv.find_runs(data)), data
    for data in (b"x-request-id: 3cf7de1878e889a3f13dffbb\n", os.urandom(16).hex().encode(), b"short"):
        assert dv.no_candidates(data, dv.find_runs(data)) == _agrees(data)


def test_may_be_text_whenever_is_text() -> None:
    rng = random.Random(3)
    pieces = [b"\xef\xbf\xbd", "é".encode(), "字".encode(), b"\xff", b"\x00", b"\x80", b"a", b" ", b"\n"]
    for _ in range(40_000):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 24)))
        if rng.random() < 0.5:
            data = rng.randbytes(rng.randrange(0, 24))
        mapped = data.translate(dv._TEXT_TABLE)
        if dv._is_text(data, mapped):
            assert dv._may_be_text(data, mapped), data
