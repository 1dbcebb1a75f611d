"""Differential: whatever the evidence scan records as a BLOCK-action hit in a request, the blocking
scan found before the request left (failcore.proxy.dlpguard vs failcore.evidence.dlp.scan_event).

Corpus: the header sets of recorded real traffic (tests/data/conformance/llm, openllmetry's cassettes,
Apache-2.0) with gitleaks' own fixtures (tests/data/conformance/dlp, MIT) placed in headers next to
their rules' keywords: in another header's value, in a header's name, in the Host header, after the
secret, as a header's name, in the name of a `redact_headers` header recorded as `Bearer [redacted …]`,
and the fixture's own text as one header's value (a text of several lines one line per header); each
set twice (the second time with what
the first found clean remembered), after the same set without the keyword (the token alone, clean);
and the same sets sent as a request's trailers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from mitmproxy.test import tflow

from failcore.dlp.pending import wait_until_built
from failcore.dlp.scanner import DlpScanner
from failcore.evidence import DecodedBody
from failcore.evidence.dlp import scan_event
from failcore.evidence.redact import redact_headers
from failcore.policy.load import load_policy
from failcore.proxy.dlpguard import DlpGuard, judge_request
from failcore.proxy.gate import PolicyGate
from failcore.proxy.requesturl import request_url
from tests.addon_harness import concerns
from tests.dlp_corpus import load_samples

POLICY = (
    "version: 1\nmode: enforce\ndefault: ALLOW\nredact_headers: [x-internal-note{more}]\n"
    "dlp:\n  import_gitleaks: bundled\n  default_action: BLOCK\n"
)
# A header name: what a fixture may be sent as.
_TOKEN_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
CASSETTES = Path(__file__).parent / "data" / "conformance" / "llm" / "openllmetry-cassettes.jsonl"
SALT = b"header-parity"
PER_RULE = 2


def _recorded_header_sets() -> list[tuple[str, list[tuple[str, str]]]]:
    """(host, headers) of recorded real exchanges: their Host and the headers the cassettes kept."""
    seen: dict[tuple[object, ...], tuple[str, list[tuple[str, str]]]] = {}
    for line in CASSETTES.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        host = record["host"].rsplit(":", 1)[0]
        headers = [("Host", host)] + [(k, v) for k, v in record["response_headers"].items() if v is not None]
        seen.setdefault(tuple(headers), (host, headers))
    return list(seen.values())


def _corpus(policy_path: Path) -> list[tuple[str, list[tuple[str, str]], list[tuple[str, str]]]]:
    """(host, headers with the keyword, the same headers without it)."""
    keywords = {rule.id: rule.keywords for rule in load_policy(policy_path).dlp.gitleaks_rules}
    recorded = _recorded_header_sets()
    per_rule: dict[str, int] = {}
    out = []
    for n, sample in enumerate(load_samples()):
        one_line = "\r" not in sample.text and "\n" not in sample.text
        if sample.kind != "tp" or per_rule.get(sample.rule, 0) >= PER_RULE:
            continue
        per_rule[sample.rule] = per_rule.get(sample.rule, 0) + 1
        host, base = recorded[n % len(recorded)]
        if one_line:
            out.append((host, [*base, ("X-Note", sample.text)], base))
        else:  # a fixture of several lines, one line per header (a key split over headers)
            lines = [line for line in sample.text.splitlines() if line.strip()][:40]
            out.append((host, [*base, *((f"X-Part-{i}", line) for i, line in enumerate(lines))], base))
        secret = sample.secret
        if not secret or "\n" in secret or "\r" in secret:
            continue
        alone = [*base, ("X-B", secret)]
        for keyword in keywords.get(sample.rule, ())[:2]:
            name = re.sub(r"[^A-Za-z0-9-]", "-", keyword)
            if _TOKEN_NAME.fullmatch(secret):
                out.append((host, [*base, ("X-Service", keyword), (secret, "1")], alone))
            out += [
                (host, [(f"X-{name}-Authorization", "Bearer abc"), *base, ("X-B", secret)], alone),
                (host, [*base, ("X-Service", keyword), ("X-B", secret)], alone),
                (host, [(f"X-{name}", "1"), *base, ("X-B", secret)], alone),
                (host, [("X-B", secret), *base, ("X-Vendor", f"{keyword}.com")], alone),
                (host, [("Host", f"{name}.{host}"), *base[1:], ("Referer", secret)], alone),
                (host, [*base, ("X-Internal-Note", keyword), ("X-Service", keyword), ("X-B", secret)], alone),
            ]
    return out


@pytest.fixture(scope="module")
def policy_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(POLICY.format(more=""))
    # Each keyword's `X-<keyword>-Authorization` is a `redact_headers` header too.
    names = {
        f"x-{re.sub(r'[^A-Za-z0-9-]', '-', keyword)}-authorization".lower()
        for rule in load_policy(path).dlp.gitleaks_rules
        for keyword in rule.keywords
    }
    path.write_text(POLICY.format(more="".join(f", {json.dumps(name)}" for name in sorted(names))))
    return path


def _evidence_block_hits(
    scanner: DlpScanner, host: str, headers: list[tuple[str, str]], redacted: frozenset[str]
) -> set[tuple[str, str]]:
    """(rule, fingerprint) of the BLOCK-action hits the tape records of this request."""
    fields = tuple((name.encode(), value.encode()) for name, value in headers)
    event = {
        "kind": "network",
        "target": {"host": host, "port": 443, "scheme": "https"},
        "path": "/v1/chat/completions",
        "method": "POST",
        "request": {"headers": redact_headers(fields, redacted, SALT), "body": None},
    }
    scan_event(scanner, event)
    hits = (event.get("dlp") or {}).get("hits", [])
    return {(h["rule"], h["fingerprint"]) for h in hits if h["action"] == "BLOCK"}


def _flow(host: str, headers: list[tuple[str, str]]) -> object:
    flow = tflow.tflow()
    req = flow.request
    req.scheme, req.host, req.port, req.path = "https", host, 443, "/v1/chat/completions"
    req.headers.clear()
    for name, value in headers:
        req.headers.add(name, value)
    req.content = b""
    flow.client_conn.sni = None
    return flow


def test_every_block_hit_the_tape_records_was_blocked_before_it_left(
    policy_path: Path, tmp_path: Path
) -> None:
    corpus = _corpus(policy_path)
    assert len(corpus) > 1000
    recorded = 0
    with concerns(PolicyGate, DlpGuard, confdir=tmp_path, failcore_policy=str(policy_path)) as h:
        scanner = h.session.dlp
        redacted = h.session.policy.redact_headers
        assert "x-internal-note" in redacted and len(redacted) > 100
        wait_until_built(scanner.engine)
        missed = []
        for host, headers, alone in corpus:
            evidence = _evidence_block_hits(scanner, host, headers, redacted)
            if not evidence:
                continue
            recorded += 1
            for sent in (alone, headers, headers):  # the second time with what was clean remembered
                flow = _flow(host, sent)
                h.hooks(flow, "requestheaders", "request")
                if sent is headers and (flow.response is None or flow.response.status_code != 403):
                    missed.append(("forwarded", headers, sorted(evidence)))
            # Every hit, not only the worst: the blocking scan's hits as the hook computes them.
            flow = _flow(host, headers)
            req = flow.request
            fields = list(req.headers.items(multi=True))
            hits, _ = judge_request(
                scanner,
                request_url(req, fields),
                fields,
                [],
                b"",
                DecodedBody(b""),
                None,
                req.host,
                redacted,
                f"https://{host}:443/v1/chat/completions",
            )
            found = {(hit.rule_id, hit.fingerprint) for hit in hits if scanner.action(hit) == "BLOCK"}
            if evidence - found:
                missed.append(("not found", headers, sorted(evidence - found)))
    assert recorded > 500  # the corpus's secrets were really recorded as hits
    assert not missed, f"{len(missed)} of {recorded}: {missed[:5]}"


def test_every_block_hit_the_tape_records_in_trailers_was_found_before_the_request_left(
    policy_path: Path, tmp_path: Path
) -> None:
    """The same corpus with what was added to the recorded headers sent as the request's trailers
    (HTTP/2, gRPC): the evidence reads a message's trailers as a block of their own, the blocking scan
    read them one by one (a rule's keyword in one trailer, the token in another was forwarded)."""
    corpus = _corpus(policy_path)
    recorded = 0
    with concerns(PolicyGate, DlpGuard, confdir=tmp_path, failcore_policy=str(policy_path)) as h:
        scanner = h.session.dlp
        redacted = h.session.policy.redact_headers
        wait_until_built(scanner.engine)
        missed = []
        for host, headers, _alone in corpus:
            base = [pair for pair in headers if pair[0] in ("Host",)]
            trailers = [pair for pair in headers if pair not in base]
            if any(name.lower() == "host" for name, _ in trailers):
                continue
            fields = tuple((n.encode(), v.encode()) for n, v in trailers)
            event = {
                "kind": "network",
                "target": {"host": host, "port": 443, "scheme": "https"},
                "path": "/v1/chat/completions",
                "method": "POST",
                "request": {
                    "headers": [["Host", host]],
                    "trailers": redact_headers(fields, redacted, SALT),
                    "body": None,
                },
            }
            scan_event(scanner, event)
            evidence = {
                (x["rule"], x["fingerprint"])
                for x in (event.get("dlp") or {}).get("hits", [])
                if x["action"] == "BLOCK" and x["location"].startswith("request.trailer")
            }
            if not evidence:
                continue
            recorded += 1
            hits, _ = judge_request(
                scanner,
                f"https://{host}:443/v1/chat/completions",
                base,
                trailers,
                b"",
                DecodedBody(b""),
                None,
                host,
                redacted,
                f"https://{host}:443/v1/chat/completions",
            )
            found = {(hit.rule_id, hit.fingerprint) for hit in hits if scanner.action(hit) == "BLOCK"}
            if evidence - found:
                missed.append((trailers, sorted(evidence - found)))
    assert recorded > 500
    assert not missed, f"{len(missed)} of {recorded}: {missed[:3]}"
