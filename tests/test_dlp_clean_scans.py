"""The blocking request scan skips what it already found clean (dlpguard.CleanScans): same hits, in the
same order, as scanning everything every time, over gitleaks' own fixtures placed in every part of a
request, repeated; and nothing found clean under one policy is trusted under the next."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from mitmproxy.http import Headers
from mitmproxy.test import tflow

from failcore.dlp.pending import wait_until_built
from failcore.dlp.scanner import DlpScanner
from failcore.policy.load import load_policy
from failcore.proxy.dlpguard import CleanScans, DlpGuard, scan_request_for_block
from failcore.proxy.gate import PolicyGate
from failcore.proxy.requesturl import header_value, request_url
from tests.addon_harness import concerns
from tests.dlp_corpus import chat_body, load_samples

POLICY = (
    "version: 1\nmode: enforce\ndefault: ALLOW\ndlp:\n  severity_actions: {critical: BLOCK, high: BLOCK}\n"
)


@pytest.fixture(scope="module")
def scanner(tmp_path_factory: pytest.TempPathFactory) -> DlpScanner:
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(POLICY)
    built = DlpScanner.for_policy(load_policy(path), b"clean-scans")
    assert built is not None
    wait_until_built(built.engine)
    return built


def _requests(seed: int, count: int) -> list[tuple[str, list[tuple[str, str]], list[tuple[str, str]]]]:
    """Requests an agent could send: mostly the same few URLs and headers again and again, with
    gitleaks' true- and false-positive fixtures in URLs, header values, header names, cookies,
    appended to a bearer token and in trailers, some of them repeated too."""
    rng = random.Random(seed)
    texts = [sample.text for sample in load_samples()]
    rng.shuffle(texts)
    texts = texts[:150]
    urls = ["http://127.0.0.1:8080/v1/chat/completions", "https://api.openai.com/v1/responses"]
    plain = [
        ("Host", "api.openai.com"),
        ("Content-Type", "application/json"),
        ("Accept", "*/*"),
        ("User-Agent", "OpenAI/Python 1.54.0"),
        ("authorization", "Bearer sk-" + "a1B2c3D4" * 6),
    ]
    made = []
    for _ in range(count):
        url = rng.choice(urls)
        headers = list(rng.sample(plain, rng.randint(1, len(plain))))
        trailers: list[tuple[str, str]] = []
        roll = rng.random()
        text = rng.choice(texts[:20]) if rng.random() < 0.5 else rng.choice(texts)
        one_line = text.replace("\r", " ").replace("\n", " ")[:600]
        if roll < 0.15:
            url += "?q=" + one_line.replace(" ", "+").replace("&", "%26").replace("#", "%23")
        elif roll < 0.45:
            headers.append((rng.choice(["X-Debug", "X-Note", "Referer"]), one_line))
        elif roll < 0.55:
            headers.append(("Cookie", f"session={one_line[:200]}"))
        elif roll < 0.65:
            headers.append(("Authorization", f"Bearer sk-{'x1Y2' * 12} {one_line[:200]}"))
        elif roll < 0.75:
            name = "".join(c for c in one_line if c.isalnum() or c in "-_")[:80] or "X-Empty"
            headers.append((name, "1"))
        elif roll < 0.85:
            trailers.append(("X-Checksum", one_line))
        rng.shuffle(headers)
        made.append((url, headers, trailers))
    return made


def test_cached_scan_finds_exactly_what_a_full_scan_finds(scanner: DlpScanner) -> None:
    clean = CleanScans(scanner)
    body = chat_body("Summarise this file for me.")
    requests = _requests(seed=12, count=1200)
    found_any = 0
    for url, headers, trailers in requests * 2:  # every request again, with everything clean cached
        full = scan_request_for_block(scanner, url, headers, body, trailers)
        cached = scan_request_for_block(scanner, url, headers, body, trailers, clean)
        assert cached == full, (url, headers, trailers)
        found_any += bool(full)
    assert found_any > 200  # the corpus's secrets were really in the traffic


def test_a_secret_is_found_every_time_it_is_sent(scanner: DlpScanner) -> None:
    """What gitleaks' fixtures say fires still fires the second and tenth time (hits are never cached)."""
    clean = CleanScans(scanner)
    body = chat_body("hello")
    token = "ghp_" + "8xQ2mZ7rT4vK9pL3nW6yB1cD5fG0hJ2sA4eU"  # GitHub's documented PAT shape
    for header in [("X-Debug", f"token {token}"), ("Cookie", f"a=1; gh={token}")]:
        for _ in range(10):
            hits = scan_request_for_block(scanner, "http://example.test/", [header], body, (), clean)
            assert "github-pat" in {hit.rule_id for hit in hits}


def test_the_clean_set_is_bounded(scanner: DlpScanner) -> None:
    clean = CleanScans(scanner, limit=50)
    for n in range(500):
        scan_request_for_block(scanner, f"http://example.test/{n}", [("X-N", str(n))], b"", (), clean)
    assert len(clean._clean) <= 50


def test_long_clean_texts_are_not_kept(scanner: DlpScanner) -> None:
    """Every request may carry new megabyte headers: keeping them would hold gigabytes for the proxy's
    life. A long text is scanned each time instead; the short ones are still kept."""
    clean = CleanScans(scanner)
    for n in range(20):
        pad = f"{n:04d}" + "a" * (1 << 20)
        scan_request_for_block(scanner, "http://example.test/", [("X-Pad", pad)], b"", (), clean)
    kept = sum(len(part) for key in clean._clean for part in key if isinstance(part, str))
    assert kept < 64 * 1024
    assert ("url", "http://example.test/") in clean._clean


@pytest.mark.parametrize(
    ("http_version", "host_header", "scheme", "host", "port", "path"),
    [
        ("HTTP/1.1", "api.openai.com", "https", "api.openai.com", 443, "/v1/chat/completions?x=1"),
        ("HTTP/1.1", "127.0.0.1:8080", "http", "127.0.0.1", 8080, "/echo"),
        ("HTTP/1.1", "127.0.0.1:80", "http", "127.0.0.1", 80, "/"),
        ("HTTP/1.1", "[::1]:8443", "https", "::1", 8443, "/a"),
        ("HTTP/1.1", "other.example:444", "https", "10.0.0.1", 443, "/claimed"),
        ("HTTP/1.1", "EXAMPLE.test", "http", "example.test", 80, "*"),
        ("HTTP/1.1", None, "http", "example.test", 8080, "/no-host-header"),
        ("HTTP/2.0", None, "https", "api.anthropic.com", 443, "/v1/messages"),
    ],
)
def test_request_url_is_mitmproxys_pretty_url(http_version, host_header, scheme, host, port, path) -> None:
    flow = tflow.tflow()
    req = flow.request
    req.http_version = http_version
    req.scheme, req.host, req.port, req.path = scheme, host, port, path
    req.headers.pop("Host", None)
    if http_version.startswith("HTTP/2"):
        req.authority = f"{host}:{port}"
    elif host_header is not None:
        req.headers["Host"] = host_header
    for _ in range(2):  # the second time from the cached origin
        assert request_url(req) == req.pretty_url
        assert request_url(req, list(req.headers.items(multi=True))) == req.pretty_url


@pytest.mark.parametrize(
    "fields",
    [
        [(b"Host", b"a.test"), (b"Content-Encoding", b"gzip")],
        [
            (b"HOST", b"a.test:81"),
            (b"host", b"b.test"),
            (b"content-encoding", b"gzip"),
            (b"CONTENT-encoding", b"br"),
        ],
        [(b"X-Host", b"no"), (b"Host ", b"no"), ("Ho\u017ft".encode(), b"no"), ("\u212aost".encode(), b"no")],
        [("H\u00f6st".encode(), b"x"), (b"Ho\xffst", b"y"), (b"Content-Encoding", "\u00e9".encode())],
        [],
    ],
)
def test_header_value_is_mitmproxys_headers_get(fields) -> None:
    headers = Headers(fields)
    items = list(headers.items(multi=True))
    for name in ("host", "content-encoding"):
        assert header_value(items, name) == headers.get(name)


def test_a_policy_reload_forgets_what_was_clean(tmp_path: Path) -> None:
    """A header value the old policy found nothing in is blocked once the new policy has a rule for it."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    value = "acme_" + "k3y" * 8

    def send(h) -> int | None:
        flow = tflow.tflow()
        flow.request.headers["X-Internal"] = value
        flow.client_conn.sni = None
        h.hooks(flow, "requestheaders", "request")
        return flow.response.status_code if flow.response is not None else None

    with concerns(PolicyGate, DlpGuard, confdir=tmp_path, failcore_policy=str(policy)) as h:
        wait_until_built(h.session.dlp.engine)
        assert send(h) is None and send(h) is None
        policy.write_text(
            POLICY + "  custom:\n    - id: acme-internal-token\n      regex: 'acme_[a-z0-9]{24}'\n"
            "      keywords: [acme_]\n      severity: high\n"
        )
        gate = h.get(PolicyGate)
        gate._stamp = None  # the edit may land within the same mtime tick
        assert h.tctx.master.event_loop.run_until_complete(gate.reload_if_changed())
        assert send(h) == 403
