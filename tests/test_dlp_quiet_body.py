"""The blocking scan reads a request's body in the header block's one Hyperscan pass (the body, a
newline, the block: DlpEngine.quiet_lines over stretches of whole lines, CleanTexts.lines_clean with a
`lead`): whenever that pass says quiet, the body and the block have no hit, so the request's hits are
exactly those of scanning every part alone (`scan_request_for_block` without CleanScans).

Corpus: the request bodies and header sets of recorded real traffic (tests/data/conformance/llm,
openllmetry's cassettes, Apache-2.0) with a request id and a trace header of their own; gitleaks' own
fixtures (tests/data/conformance/dlp, MIT, see its LICENSE) in the body (in a chat request, raw, on
the body's last line, base64'd) beside a quiet block and in a header beside a quiet body; rules
anchored on a text's or a line's start or end (`^…$`, `…$`, `^…`), whose matches sit at the edges the
one pass joins; built-in rules and gitleaks' bundled set."""

from __future__ import annotations

import base64
import functools
import random
import tempfile
from pathlib import Path

from failcore.dlp.scanner import DlpScanner
from failcore.policy.load import load_policy
from failcore.proxy.dlpguard import CleanScans, scan_request_for_block
from tests.dlp_corpus import chat_body, load_samples
from tests.llm_replay import load_exchanges

SALT = b"quiet-body"
URL = "https://api.openai.com/v1/chat/completions"
POLICY = (
    "version: 1\nmode: enforce\ndefault: ALLOW\ndlp:\n  severity_actions: {critical: BLOCK, high: BLOCK}\n"
    "  import_gitleaks: bundled\n  custom:\n"
    "    - id: anchored-line\n      regex: '^(zz_[A-Za-z0-9]{20})$'\n      severity: critical\n"
    "    - id: anchored-end\n      regex: '(yy_[A-Za-z0-9]{20})$'\n      severity: critical\n"
    "    - id: anchored-start\n      regex: '^(xx_[A-Za-z0-9]{20})'\n      severity: critical\n"
)
ANCHORED = ["zz_A1b2C3d4E5f6G7h8I9j0", "yy_A1b2C3d4E5f6G7h8I9j0", "xx_A1b2C3d4E5f6G7h8I9j0"]
EVERY = 3  # every how-many-th fixture is placed (the slice covers every rule kind)


@functools.cache
def scanner() -> DlpScanner:
    path = Path(tempfile.mkdtemp()) / "policy.yaml"
    path.write_text(POLICY)
    built = DlpScanner.for_policy(load_policy(path), SALT, background=False)
    assert built is not None
    return built


def _headers(rng: random.Random, exchange: dict[str, object]) -> list[tuple[str, str]]:
    return [
        ("Host", str(exchange["host"]).rsplit(":", 1)[0]),
        ("content-type", "application/json"),
        ("user-agent", "OpenAI/Python 1.54.0"),
        ("x-request-id", f"{rng.getrandbits(96):024x}"),
        ("traceparent", f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01"),
    ]


def _cases() -> list[tuple[list[tuple[str, str]], bytes]]:
    rng = random.Random(21)
    exchanges = load_exchanges()
    cases = []
    for exchange in exchanges:
        body = exchange["request_body"]
        cases.append((_headers(rng, exchange), body.encode() if isinstance(body, str) else body or b""))
    quiet = [(h, b) for h, b in cases if b and b"\\" not in b and b"%" not in b][:40]
    for n, sample in enumerate(load_samples()):
        if n % EVERY:
            continue
        headers, body = quiet[n % len(quiet)]
        text = sample.text.encode("utf-8", "surrogateescape")
        cases += [
            (headers, chat_body(sample.text)),
            (headers, text),
            (headers, body + b"\n" + text.replace(b"\n", b" ")),
            (headers, base64.b64encode(text)),
            (
                [
                    *headers[:2],
                    ("X-Note", sample.text.replace("\n", " ").replace("\r", " ")[:800]),
                    *headers[2:],
                ],
                body,
            ),
        ]
    for secret in ANCHORED:
        headers, body = quiet[0]
        for placed in (
            secret.encode(),
            b"a\n" + secret.encode(),
            secret.encode() + b"\nb",
            body + b"\n" + secret.encode(),
        ):
            cases.append((headers, placed))
        cases += [([*headers, ("X-A", secret)], body), ([("X-A", secret), *headers], body)]
    return cases


def test_the_one_pass_over_body_and_block_loses_no_hit() -> None:
    scan = scanner()
    clean = CleanScans(scan)
    joined = 0
    lines_clean = scan.clean_texts.lines_clean

    def counting(text: bytes, lead: bytes = b"") -> bool:
        nonlocal joined
        quiet = lines_clean(text, lead) if lead else lines_clean(text)
        joined += bool(lead) and quiet
        return quiet

    scan.clean_texts.lines_clean = counting  # type: ignore[method-assign]
    found = 0
    for headers, body in _cases():
        alone = scan_request_for_block(scan, URL, headers, body)
        passed = scan_request_for_block(scan, URL, headers, body, (), clean)
        assert passed == alone, (headers, body[:200])
        found += bool(alone)
    # Both sides were exercised: many bodies answered by the one pass, many requests with hits.
    assert joined > 400 and found > 2000, (joined, found)
