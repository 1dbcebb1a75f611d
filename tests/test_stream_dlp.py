"""Strict stream DLP (StreamDlp) on encoded response streams: for every place the wire bytes can be
split, either the bytes forwarded before the cut decode to no secret, or the chunk is cut.

What a client can decode from the bytes it got is computed here with the codecs' own libraries,
independently of failcore's decoder."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest

from failcore.compat import zstd
from failcore.dlp import DlpEngine, builtin_rules
from failcore.dlp.scanner import DlpScanner
from failcore.policy.model import DlpSettings
from failcore.proxy.streamdlp import StreamDlp

GITHUB_PAT = b"ghp_" + b"Z9y8X7w6V5u4" * 3
BEFORE = b'data: {"text": "hello"}\n\n' * 40
SECRET_EVENT = b'data: {"text": "token ' + GITHUB_PAT + b' done"}\n\n'


@pytest.fixture(scope="module")
def engine() -> DlpEngine:
    return DlpEngine(builtin_rules(), salt=b"test-salt")


def scanner(engine: DlpEngine, unscannable: str = "BLOCK") -> DlpScanner:
    settings = DlpSettings(
        stream="strict",
        rule_actions={"github-pat": "BLOCK"},
        unscannable=unscannable,  # type: ignore[arg-type]
    )
    return DlpScanner(engine, settings, True)


def gunzip_prefix(data: bytes) -> bytes:
    out = b""
    while data:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out += inflater.decompress(data)
        if not inflater.eof:
            break
        data = inflater.unused_data
    return out


def inflate_raw_prefix(data: bytes) -> bytes:
    return zlib.decompressobj(-zlib.MAX_WBITS).decompress(data)


def unbrotli_prefix(data: bytes) -> bytes:
    return brotli.Decompressor().process(data)


def unzstd_prefix(data: bytes) -> bytes:
    return zstd.ZstdDecompressor().decompress(data)


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def gunzip_unbrotli_prefix(data: bytes) -> bytes:
    return gunzip_prefix(unbrotli_prefix(data))


def secret_across_members() -> bytes:
    """Two gzip members, the secret's first half ending the first, its second half starting the next."""
    cut = SECRET_EVENT.index(GITHUB_PAT) + len(GITHUB_PAT) // 2
    return gzip.compress(BEFORE + SECRET_EVENT[:cut]) + gzip.compress(SECRET_EVENT[cut:])


# name: (Content-Encoding, wire bytes, what a client decodes from a prefix of them)
ENCODINGS = {
    # the secret in the second gzip member of a multi-member body
    "gzip": ("gzip", lambda: gzip.compress(BEFORE) + gzip.compress(SECRET_EVENT), gunzip_prefix),
    "gzip, split across members": ("gzip", secret_across_members, gunzip_prefix),
    "deflate": ("deflate", lambda: raw_deflate(BEFORE + SECRET_EVENT), inflate_raw_prefix),
    "br": ("br", lambda: brotli.compress(BEFORE + SECRET_EVENT), unbrotli_prefix),
    "zstd": ("zstd", lambda: zstd.compress(BEFORE + SECRET_EVENT), unzstd_prefix),
    "gzip, then br": (
        "gzip, br",
        lambda: brotli.compress(gzip.compress(BEFORE + SECRET_EVENT)),
        gunzip_unbrotli_prefix,
    ),
}


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_a_compressed_secret_is_cut_before_the_client_can_decode_it_wherever_the_chunks_split(
    engine, name
) -> None:
    encoding, make, client_decodes = ENCODINGS[name]
    wire = make()
    assert GITHUB_PAT in client_decodes(wire)  # the check below can fail
    for split in range(1, len(wire)):
        guard = StreamDlp(scanner(engine), encoding=encoding)
        first = guard(wire[:split])
        if first is not None:
            assert first.keep == 0, split
            continue
        assert GITHUB_PAT not in client_decodes(wire[:split]), (name, split)
        second = guard(wire[split:])
        assert second is not None and second.keep == 0, (name, split)
        assert "github-pat" in (second.detail or "")


def test_a_stream_that_does_not_decode_is_cut_when_unscannable_blocks(engine) -> None:
    wire = gzip.compress(BEFORE)
    corrupt = wire[:20] + bytes(b ^ 0x55 for b in wire[20:40]) + wire[40:]
    verdict = StreamDlp(scanner(engine), encoding="gzip")(corrupt)
    assert verdict is not None and verdict.keep == 0
    assert "does not decode" in (verdict.detail or "")
    # ... and passes unscanned from there on when the policy says WARN.
    warnings: list[dict[str, str]] = []
    guard = StreamDlp(scanner(engine, unscannable="WARN"), encoding="gzip", warnings=warnings)
    assert guard(corrupt) is None
    assert guard(gzip.compress(SECRET_EVENT)) is None
    # ... and says so once, in the flow's warnings (the exchange's event on the tape).
    assert [w["reason"] for w in warnings] == ["dlp_unscannable"]
    assert "does not decode" in warnings[0]["message"]


def test_a_plain_stream_still_keeps_the_bytes_before_the_secret(engine) -> None:
    guard = StreamDlp(scanner(engine))
    assert guard(BEFORE) is None
    verdict = guard(SECRET_EVENT)
    assert verdict is not None
    assert verdict.keep == SECRET_EVENT.index(GITHUB_PAT)


def gzip_named(name: bytes, data: bytes) -> bytes:
    """A gzip member whose header carries a file name (FNAME, RFC 1952 2.3.1): a decoder skips it, a
    client that does not decode shows it."""
    body = gzip.compress(data)
    return body[:3] + bytes([body[3] | 0x08]) + body[4:10] + name + b"\x00" + body[10:]


def test_a_secret_in_the_gzip_header_is_cut_though_decoding_skips_it(engine) -> None:
    wire = gzip_named(b"token-" + GITHUB_PAT, BEFORE)
    assert GITHUB_PAT not in gunzip_prefix(wire) and GITHUB_PAT in wire
    verdict = StreamDlp(scanner(engine), encoding="gzip")(wire)
    assert verdict is not None and verdict.keep <= wire.index(GITHUB_PAT)


def test_a_body_that_is_not_what_its_encoding_says_is_still_scanned_as_sent(engine) -> None:
    # Content-Encoding: gzip over plain text: it does not decode; with dlp.unscannable WARN the stream
    # goes on, and its wire bytes (which a client shows as they are) are still scanned.
    guard = StreamDlp(scanner(engine, unscannable="WARN"), encoding="gzip")
    assert guard(BEFORE) is None
    verdict = guard(SECRET_EVENT)
    assert verdict is not None and verdict.keep == SECRET_EVENT.index(GITHUB_PAT)
