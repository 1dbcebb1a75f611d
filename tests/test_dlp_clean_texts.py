"""An event's DLP scan remembers the short texts it found clean (DlpScanner.clean_texts: a URL, header
names, a header block, a host, a reason) and the engine answers at once for a text its main Hyperscan
pass reports nothing in. Neither may change a result: every event here is scanned twice, by one
long-lived scanner (the memo filling up over the stream, the fast path) and as before (every text
scanned by the engine, the plain pipeline: `fast_paths=False`, no memo), and the masked events must be
byte for byte the same.

The data is nobody's here: 546 real LLM exchanges (tests/data/conformance/llm, Apache-2.0, see its
NOTICE) and gitleaks' own rule fixtures (tests/data/conformance/dlp, MIT, see its LICENSE), placed in
the places an event holds texts (header values after the same header was seen clean, a header block
whose secret is keyed by another header, the URL, the host, the reason), on the Hyperscan engine, the
interim RE2 engine that serves while it compiles, and the RE2 and Python backends.
"""

from __future__ import annotations

import copy
import functools
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
import pytest

from failcore.dlp import DlpEngine, builtin_rules, import_gitleaks
from failcore.dlp import regex_backend as rx
from failcore.dlp.engine import DlpEngine as EngineClass
from failcore.dlp.pending import PendingEngine
from failcore.dlp.scanner import CLEAN_TEXT_CHARS, CleanTexts, DlpScanner
from failcore.evidence.dlp import scan_event
from failcore.policy.model import DlpSettings
from failcore.shipped import BUNDLED_GITLEAKS
from tests.dlp_corpus import Sample, load_samples
from tests.llm_replay import load_exchanges

SALT = b"clean-texts"
SETTINGS = DlpSettings(rule_actions={"generic-api-key": "ALLOW"})
# gitleaks' airtable rule is keyed by a word that may be anywhere in the scanned text: its token alone
# on a header line is clean, beside an `airtable` header it is a secret (checked below, not assumed).
AIRTABLE = "airtable-personnal-access-token"
# Headers an SDK sends on every call (the values of a recent OpenAI Python client).
SDK_HEADERS = [
    ("accept", "application/json"),
    ("content-type", "application/json"),
    ("user-agent", "OpenAI/Python 1.54.4"),
    ("x-stainless-lang", "python"),
    ("x-stainless-package-version", "1.54.4"),
    ("x-stainless-os", "Linux"),
    ("x-stainless-runtime", "CPython"),
]


@functools.cache
def rules() -> tuple:
    return tuple(builtin_rules() + import_gitleaks(BUNDLED_GITLEAKS).rules)


@functools.cache
def engines() -> tuple[DlpEngine, DlpEngine]:
    """(the engine as it scans now, the plain pipeline as it scanned before)."""
    return DlpEngine(rules(), salt=SALT), DlpEngine(rules(), salt=SALT, fast_paths=False)


def old_scanner(engine: DlpEngine) -> DlpScanner:
    """The old semantics: every text of the event scanned by the engine itself."""
    scanner = DlpScanner(engine, SETTINGS, False)
    object.__setattr__(scanner, "clean_texts", engine)
    return scanner


def event(
    url: str,
    request_headers: list[tuple[str, str]],
    request_body: str | None,
    response_headers: list[tuple[str, str]],
    response_body: str | None,
    *,
    method: str = "POST",
    reason: str = "no rule matched; default action ALLOW",
) -> dict[str, Any]:
    """A network event as the proxy builds it before its DLP pass."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return {
        "kind": "network",
        "v": 2,
        "target": {
            "host": parts.hostname,
            "port": parts.port or (443 if parts.scheme == "https" else 80),
            "scheme": parts.scheme,
        },
        "method": method,
        "path": path,
        "summary": f"{method} {parts.path}",
        "decision": "ALLOW",
        "reason": reason,
        "request": {
            "http_version": "HTTP/1.1",
            "headers": [[k, v] for k, v in request_headers],
            "body": None if request_body is None else {"text": request_body, "size": len(request_body)},
        },
        "response": {
            "http_version": "HTTP/1.1",
            "headers": [[k, v] for k, v in response_headers],
            "body": None if response_body is None else {"text": response_body, "size": len(response_body)},
        },
        "warnings": [],
    }


def cassette_events() -> Iterator[dict[str, Any]]:
    """Every recorded exchange, with the SDK's headers (its Host and Content-Length as sent) and the
    provider's recorded framing headers."""
    for exchange in load_exchanges():
        body = exchange["request_body"] or ""
        host = urlsplit(exchange["uri"]).netloc
        headers = [("host", host), *SDK_HEADERS, ("content-length", str(len(body.encode())))]
        response = [(k, v) for k, v in exchange["response_headers"].items() if v is not None]
        yield event(exchange["uri"], headers, body, response, exchange["response_body"] or "")


def sample_events(samples: list[Sample]) -> Iterator[dict[str, Any]]:
    """Each fixture (true and false positives) where an event holds short texts, between events with
    the same headers clean, so the memo is warm when the sample arrives in a header seen before."""
    base = "https://api.example.test/v1/chat/completions"
    clean = [("host", "api.example.test"), *SDK_HEADERS, ("x-note", "hello")]
    for number, sample in enumerate(samples):
        text = sample.text if len(sample.text) <= 2000 else sample.text[:2000]
        value = text.replace("\r", " ").replace("\n", " ")
        yield event(base, clean, "{}", [("content-type", "application/json")], "{}")
        # The same header name, now with the sample as its value.
        yield event(base, [*clean[:-1], ("x-note", value)], "{}", [("x-request-id", value)], "{}")
        secret = sample.secret or value
        if number % 3 == 0:
            yield event(f"{base}?q={quote(secret)}", clean, None, [], None, method="GET")
        elif number % 3 == 1:
            yield event(base, [*clean, (f"x-{secret[:40]}", "1")], None, [], None, reason=f"host {secret}")
        elif secret.replace("-", "").replace("_", "").isalnum():
            label = secret.lower()[:60]
            yield event(f"https://{label}.example.test/", clean, None, [], None, method="GET")


def assert_same_stream(new: DlpScanner, old: DlpScanner, events: Iterator[dict[str, Any]]) -> int:
    """Scan every event with both; returns how many events had a DLP block."""
    flagged = 0
    for number, original in enumerate(events):
        mine, theirs = copy.deepcopy(original), copy.deepcopy(original)
        scan_event(new, mine)
        scan_event(old, theirs)
        assert orjson.dumps(mine) == orjson.dumps(theirs), (number, original.get("path"), theirs.get("dlp"))
        flagged += "dlp" in theirs
    return flagged


@pytest.mark.skipif(not rx.hyperscan_available(), reason="hyperscan not installed")
def test_recorded_llm_traffic_is_masked_as_before() -> None:
    fast, plain = engines()
    new = DlpScanner(fast, SETTINGS, False)
    events = list(cassette_events())
    assert len(events) == 546
    # Twice over: the second pass finds the memo full of the first pass's clean texts.
    assert_same_stream(new, old_scanner(plain), iter(events + events))


@pytest.mark.skipif(not rx.hyperscan_available(), reason="hyperscan not installed")
def test_gitleaks_fixtures_in_headers_urls_hosts_and_reasons_are_masked_as_before() -> None:
    fast, plain = engines()
    samples = load_samples()[::4]  # every 4th of the 6,819: ~1 minute on a shared core
    true_positives = sum(s.kind == "tp" for s in samples)
    new, old = DlpScanner(fast, SETTINGS, False), old_scanner(plain)
    flagged = assert_same_stream(new, old, sample_events(samples))
    assert flagged >= true_positives  # the fixtures' secrets are there, and found


def test_a_header_clean_alone_is_a_secret_beside_its_keyword() -> None:
    """The header block is scanned whole, as before: a token whose rule is keyed by another header
    (`x-service: airtable`) is masked even though the same line alone was found clean just before."""
    fast, plain = engines()
    token = next(s.secret for s in load_samples() if s.rule == AIRTABLE and s.kind == "tp" and s.secret)
    assert not fast.scan(f"x-b: {token}\n")  # clean alone (so a per-line memo would have kept it)
    url = "https://api.example.test/v1/x"
    alone = event(url, [("x-b", token)], None, [], None)
    beside = event(url, [("x-service", "airtable"), ("x-b", token)], None, [], None)
    new = DlpScanner(fast, SETTINGS, False)
    assert_same_stream(new, old_scanner(plain), iter([alone, alone, beside, alone]))
    scan_event(new, alone)
    scan_event(new, beside)
    assert alone["request"]["headers"] == [["x-b", token]]
    assert beside["request"]["headers"][1][1].startswith("[redacted ")
    assert [h["rule"] for h in beside["dlp"]["hits"]] == [AIRTABLE]
    assert beside["dlp"]["hits"][0]["location"] == "request.header:x-b"


def test_a_secret_in_a_header_seen_clean_before_is_masked_every_time() -> None:
    fast, _ = engines()
    token = "ghp_" + "8xQ2mZ7rT4vK9pL3nW6yB1cD5fG0hJ2sA4eU"
    url = "https://api.example.test/v1/x"
    clean = event(url, [*SDK_HEADERS, ("x-note", "hello")], "{}", [], None)
    secret = event(url, [*SDK_HEADERS, ("x-note", f"token {token}")], "{}", [], None)
    scanner = DlpScanner(fast, SETTINGS, False)
    for _ in range(3):
        scan_event(scanner, copy.deepcopy(clean))
    for _ in range(3):
        masked = copy.deepcopy(secret)
        scan_event(scanner, masked)
        assert token not in orjson.dumps(masked).decode()
        assert [h["rule"] for h in masked["dlp"]["hits"]] == ["github-pat"]


@pytest.mark.parametrize("backend", ["re2", "python"])
def test_other_backends_with_the_memo_mask_as_before(backend: str) -> None:
    """No Hyperscan: the memo alone (the engine's early answer is Hyperscan's)."""
    if backend == "re2" and not rx.re2_available():
        pytest.skip("google-re2 not installed")
    engine = DlpEngine(builtin_rules(), backend=backend, salt=SALT)
    samples = [s for s in load_samples() if s.rule in {r.id for r in builtin_rules()} or s.kind == "fp"]
    events = [*list(cassette_events())[:120], *sample_events(samples[:: 4 if backend == "re2" else 24])]
    flagged = assert_same_stream(DlpScanner(engine, SETTINGS, False), old_scanner(engine), iter(events))
    assert flagged > 20


@pytest.mark.skipif(not rx.hyperscan_available(), reason="hyperscan not installed")
def test_the_interim_engine_with_the_memo_masks_as_before_and_the_full_engine_starts_afresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()

    def build() -> DlpEngine:
        pending.compiling()
        assert release.wait(120)
        return DlpEngine(builtin_rules(), backend="hyperscan", salt=SALT)

    pending = PendingEngine(
        build, interim=lambda: DlpEngine(builtin_rules(), backend="re2", salt=SALT), start=False
    )
    pending.start()
    events = list(cassette_events())[:60]
    samples = [s for s in load_samples() if s.rule in {r.id for r in builtin_rules()}][:200]
    events += list(sample_events(samples))
    new = DlpScanner(pending, SETTINGS, False)  # type: ignore[arg-type]
    old = old_scanner(pending)  # type: ignore[arg-type]
    try:
        assert assert_same_stream(new, old, iter(events)) > 50
        assert pending.interim and pending.backend == "re2"
    finally:
        release.set()
    full = pending.result(timeout=300)
    # A text the interim engine found clean is scanned again by the full one, once.
    scanned: list[bytes | str] = []
    real = EngineClass.scan

    def spy(self: DlpEngine, data: bytes | str) -> list:
        if self is full:
            scanned.append(data)
        return real(self, data)

    monkeypatch.setattr(EngineClass, "scan", spy)
    url = "https://api.example.test:443/v1/chat/completions"
    for _ in range(3):
        scan_event(new, copy.deepcopy(events[-1]))
    assert scanned.count(url) == 1
    assert assert_same_stream(new, old, iter(events)) > 50


def test_the_memo_is_bounded_and_keeps_no_text_with_a_hit() -> None:
    fast, _ = engines()
    memo = CleanTexts(fast)
    token = "ghp_" + "8xQ2mZ7rT4vK9pL3nW6yB1cD5fG0hJ2sA4eU"
    calls: list[bytes | str] = []

    class Counting:
        def scan(self, data: bytes | str) -> list:
            calls.append(data)
            return fast.scan(data)

    memo.engine = Counting()  # type: ignore[assignment]
    for _ in range(3):
        assert [h.rule_id for h in memo.scan(f"x: {token}")] == ["github-pat"]
        assert memo.scan("x: hello") == []
    assert calls.count(f"x: {token}") == 3 and calls.count("x: hello") == 1
    long = "a " * (CLEAN_TEXT_CHARS // 2 + 1)
    memo.scan(long)
    memo.scan(long)
    assert calls.count(long) == 2  # too long to keep
    for number in range(2000):  # 2000 distinct texts of ~1 KB: more than the memo holds
        memo.scan(f"{number:04d} " + "b " * 500)
    _, clean, size = memo._state
    assert size[0] <= 1 << 20 and len(clean) < 2000
    # Many tiny texts are charged for their entries too: the memo's real memory stays near its bound.
    for number in range(40_000):
        memo.scan(f"{number:05d}")
    _, clean, size = memo._state
    assert size[0] <= 1 << 20 and len(clean) <= (1 << 20) // 80
