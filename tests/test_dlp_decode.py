"""Decoded views: hits found in what the reader decodes, with offsets exact in the raw bytes.

Expected spans are computed here from the encodings themselves (json.dumps, quote, b64encode), not
from failcore's mapping code.
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
from dataclasses import replace
from urllib.parse import quote

import pytest

from failcore.dlp import DlpEngine, builtin_rules, mask_bytes
from failcore.dlp import decode as dv
from failcore.dlp.regex_backend import hyperscan_available as rx_hyperscan

SALT = b"decode-test"
ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _pat(seed: int) -> str:
    rng = random.Random(seed)
    return "gh" + "p_" + "".join(rng.choice(ALNUM) for _ in range(36))


@pytest.fixture(scope="module", params=["hyperscan", "re2"])
def engine(request: pytest.FixtureRequest) -> DlpEngine:
    return DlpEngine(builtin_rules(), backend=request.param, salt=SALT)


def _pat_hits(engine: DlpEngine, data: bytes) -> list[tuple[int, int]]:
    return [(hit.start, hit.end) for hit in engine.scan(data) if hit.rule_id == "github-pat"]


@pytest.mark.parametrize("position", ["start", "middle", "end"])
def test_unicode_escaped_secret_maps_to_its_escaped_span(engine: DlpEngine, position: str) -> None:
    secret = _pat(1)
    index = {"start": 0, "middle": 17, "end": len(secret) - 1}[position]
    escaped = secret[:index] + f"\\u{ord(secret[index]):04x}" + secret[index + 1 :]
    prefix = '{"messages": [{"content": "a \\"quoted\\" line\\nnext \\u00e9 '
    body = (prefix + escaped + ' done"}]}').encode()
    assert json.loads(body)["messages"][0]["content"].endswith(secret + " done")
    start = len(prefix)
    assert _pat_hits(engine, body) == [(start, start + len(escaped))]
    masked = mask_bytes(body, engine.scan(body))
    assert escaped.encode() not in masked
    assert secret[:index].encode() not in masked or index < 8
    assert secret[index + 1 :].encode() not in masked or len(secret) - index - 1 < 8


def test_escapes_before_the_secret_shift_nothing(engine: DlpEngine) -> None:
    secret = _pat(2)
    text = 'a\\\\b "q" \t tab\n' * 500 + secret + "\n" + 'more "x"\n' * 500
    body = json.dumps({"content": text}).encode()
    start = body.index(secret.encode())
    assert _pat_hits(engine, body) == [(start, start + len(secret))]


def test_escaped_backslash_never_starts_an_escape(engine: DlpEngine) -> None:
    # `\\u0067hp_…` is a backslash followed by the text "u0067hp_…": no token to whoever parses it.
    secret = _pat(3)
    body = ('{"a": "\\\\u0067' + secret[1:] + '"}').encode()
    assert json.loads(body)["a"].startswith("\\u0067hp_")
    assert _pat_hits(engine, body) == []


def test_percent_encoded_secret_in_a_form_body(engine: DlpEngine) -> None:
    secret = _pat(4)
    encoded = quote(secret[:6], safe="") + "".join(f"%{ord(c):02x}" for c in secret[6:9]) + secret[9:]
    body = f"user=bob&token={encoded}&x=1".encode()
    start = body.index(b"token=") + len(b"token=")
    assert _pat_hits(engine, body) == [(start, start + len(encoded))]


@pytest.mark.parametrize("urlsafe", [False, True])
def test_base64_wrapped_secret_is_found_and_masked(engine: DlpEngine, urlsafe: bool) -> None:
    secret = _pat(5)
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    wrapped = encode(f"Authorization: token {secret}".encode()).decode()
    url = f"https://api.example.test/v1/share/{wrapped}/view?x=1"
    hits = [hit for hit in engine.scan(url) if hit.rule_id == "github-pat"]
    assert len(hits) == 1
    start = url.index(wrapped)
    assert start <= hits[0].start < hits[0].end <= start + len(wrapped)
    masked = mask_bytes(url.encode(), hits).decode()
    assert wrapped not in masked
    # What is left of the wrapped text no longer decodes to the secret.
    assert secret not in masked and not any(secret[4:20] in piece for piece in _decodings(masked))


def _decodings(text: str) -> list[str]:
    out = []
    for piece in text.replace("?", "/").split("/"):
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            with contextlib.suppress(ValueError):
                out.append(decode(piece + "=" * (-len(piece) % 4)).decode("latin-1"))
    return out


def test_hex_wrapped_secret_is_found(engine: DlpEngine) -> None:
    secret = _pat(6)
    wrapped = f"token={secret}".encode().hex()
    text = f"payload {wrapped} end"
    hits = [hit for hit in engine.scan(text) if hit.rule_id == "github-pat"]
    assert len(hits) == 1 and text.index(wrapped) <= hits[0].start < hits[0].end <= text.index(" end")


def test_binary_looking_base64_is_not_unwrapped() -> None:
    blob = base64.b64encode(random.Random(7).randbytes(600))
    runs = dv.find_runs(b"image " + blob + b" end")
    assert runs == [(6, 6 + len(blob))]
    assert list(dv.encoded_candidates(dv.RawView(b"image " + blob + b" end"), runs, [64, 1 << 20])) == []


def test_candidate_decoding_is_not_capped() -> None:
    """Every candidate is decoded (no count an agent can pad past), into one joined view; each copy's
    hit maps back to its own encoded run. (It was capped at MAX_CANDIDATES: the copies past it were
    never decoded.)"""
    secret = _pat(8)
    wrapped = base64.b64encode(f"token {secret}".encode()).decode()
    copies = dv.MAX_CANDIDATES + 20
    data = (" ".join([wrapped] * copies)).encode()
    runs = dv.find_runs(data)
    budget = [dv.MAX_CANDIDATES, dv.MAX_DECODED_BYTES]
    [view] = dv.encoded_candidates(dv.RawView(data), runs, budget)
    assert view.data.count(secret.encode()) == copies
    engine = DlpEngine(builtin_rules(), backend="re2", salt=SALT)
    spans = [(hit.start, hit.end) for hit in engine.scan(data) if hit.rule_id == "github-pat"]
    # ("token " is 6 bytes: two base64 groups, 8 characters, before the secret's first.)
    assert spans == [(start + 8, end) for start, end in runs]


def test_same_rule_on_the_same_span_keeps_the_stricter_severity() -> None:
    secret = _pat(9)
    rules = builtin_rules()
    weak = next(rule for rule in rules if rule.id == "github-pat")
    engine = DlpEngine([replace(weak, severity="low"), *rules], backend="re2", salt=SALT)
    hits = [hit for hit in engine.scan(f"x {secret} y") if hit.rule_id == "github-pat"]
    assert [hit.severity for hit in hits] == ["critical"]


def test_whole_body_json_view_maps_like_the_chunked_decoder() -> None:
    """The one-pass JSON view (only two-byte escapes) and its lazily counted anchors give the same
    text and the same raw spans as decoding chunk by chunk."""
    rng = random.Random(11)
    pieces = ["word ", "\n", "\t", '"', "\r", "\b", "\f", "/", "ghp_", "x" * 40]
    for _ in range(40):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 6000)))
        body = json.dumps({"content": text}).encode()
        view, anchors = dv.json_view(body)  # type: ignore[misc]
        assert not isinstance(anchors, list)  # the one-pass path
        chunked, chunk_anchors = dv._chunked(body, dv._json_decode, 6, b"\\")
        assert view == chunked
        fast = dv.JsonStringView(view, dv.RawView(body), anchors)
        slow = dv.JsonStringView(chunked, dv.RawView(body), chunk_anchors)
        for _ in range(100):
            start = rng.randint(0, len(view))
            end = rng.randint(start, len(view))
            assert fast.span(start, end) == slow.span(start, end)


@pytest.mark.skipif(not rx_hyperscan(), reason="hyperscan not installed")
def test_hyperscan_pass_finds_the_same_runs_as_find_runs() -> None:
    engine = DlpEngine(builtin_rules(), backend="hyperscan", salt=b"t")
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/_-="
    rng = random.Random(5)
    for _ in range(300):
        parts = []
        for _ in range(rng.randint(0, 30)):
            parts.append("".join(rng.choice(alphabet) for _ in range(rng.choice((1, 5, 23, 24, 25, 80)))))
            parts.append(rng.choice((" ", "\n", ".", "%", "é", '"')))
        buffer = "".join(parts).encode()
        assert engine._candidate_windows(buffer)[2] == dv.find_runs(buffer)
