"""One Hyperscan pass over a request's header block stands for the scans of the block and of each header
in it alone (DlpEngine.quiet_lines, used by the blocking scan, failcore.proxy.dlpguard): whenever it
says so, the engine finds nothing in the block nor in any of its lines, checked here by scanning them
all with the plain pipeline (`fast_paths=False`, which has no such pass).

Corpus: the header sets of recorded real traffic (tests/data/conformance/llm, openllmetry's cassettes,
Apache-2.0) with a request id and a trace header of their own, and gitleaks' own fixtures
(tests/data/conformance/dlp, MIT, see its LICENSE) placed in them as a header (first, in the middle,
last), split one line per header, base64'd; and rules anchored on a line's start or end (`^`, `$`),
which read a header alone and inside the block differently."""

from __future__ import annotations

import base64
import functools
import random
import tempfile
from pathlib import Path

import pytest

from failcore.dlp import DlpEngine, builtin_rules, import_gitleaks
from failcore.dlp.locations import header_block
from failcore.dlp.model import DlpRule
from failcore.dlp.scanner import DlpScanner
from failcore.evidence import decode_body
from failcore.policy.load import load_policy
from failcore.proxy.dlpguard import CleanScans, block_pairs, judge_request, scan_request_for_block
from failcore.shipped import BUNDLED_GITLEAKS
from tests.dlp_corpus import chat_body, load_samples
from tests.llm_replay import load_exchanges

SALT = b"quiet-lines"
# Every how-many-th fixture is placed (the whole corpus takes minutes; the slice covers every rule kind).
EVERY = 5


@functools.cache
def engines() -> tuple[DlpEngine, DlpEngine]:
    """(the engine with its line database, the plain pipeline that scans every text itself)."""
    rules = tuple(builtin_rules() + import_gitleaks(BUNDLED_GITLEAKS).rules)
    return DlpEngine(rules, salt=SALT), DlpEngine(rules, salt=SALT, fast_paths=False)


def _header_sets() -> list[list[tuple[str, str]]]:
    rng = random.Random(12)
    sets = []
    for exchange in load_exchanges()[:120]:
        headers = [(str(k), str(v)) for k, v in exchange["response_headers"].items() if v is not None]
        sets.append(
            [
                ("Host", exchange["host"].rsplit(":", 1)[0]),
                ("content-type", "application/json"),
                ("x-request-id", f"{rng.getrandbits(96):024x}"),
                ("traceparent", f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01"),
                *headers,
            ]
        )
    return sets


def _blocks() -> list[list[tuple[str, str]]]:
    sets = _header_sets()
    out = list(sets)
    for n, sample in enumerate(load_samples()):
        if n % EVERY:
            continue
        base = sets[n % len(sets)]
        one = sample.text.replace("\r", " ").replace("\n", " ")[:1000]
        mid = len(base) // 2
        out += [
            [*base, ("X-Note", one)],
            [("X-Note", one), *base],
            [*base[:mid], ("X-Note", one), *base[mid:]],
        ]
        lines = [line for line in sample.text.splitlines() if line.strip()][:20]
        out.append([*base, *((f"X-Part-{i}", line) for i, line in enumerate(lines))])
        if sample.secret and "\n" not in sample.secret:
            out.append([*base, ("X-B64", base64.b64encode(sample.secret.encode()).decode())])
            out.append([*base[:mid], ("X-B", sample.secret), *base[mid:]])
    return out


def test_a_quiet_block_has_no_hit_in_it_nor_in_any_line_alone() -> None:
    fast, plain = engines()
    quiet = loud = 0
    for headers in _blocks():
        block = header_block(block_pairs(headers, frozenset()))[0]
        if not fast.quiet_lines(block):
            loud += 1
            continue
        quiet += 1
        assert plain.scan(block) == [], headers
        for line in block.split(b"\n"):
            assert plain.scan(line) == [], (line, headers)
    # Both answers were given: the recorded traffic alone is quiet, most fixtures are not.
    assert quiet >= 120
    assert loud >= 1000


def _adversarial_blocks() -> list[list[tuple[str, str]]]:
    """Fixtures placed where one pass over the block and a header read alone could part ways: a secret
    cut between two headers (a value and the next value, a value and the next name), its base64 cut
    between two headers at each base64 offset, its hex, upper case, with a tab or a CR inside a value."""
    base = [("Host", "api.openai.com"), ("content-type", "application/json"), ("accept", "*/*")]
    out = []
    for n, sample in enumerate(load_samples()):
        if n % EVERY or not sample.secret or "\n" in sample.secret:
            continue
        secret = sample.secret
        encoded = base64.b64encode(secret.encode()).decode()
        out += [
            [*base, ("X-Upper", secret.upper())],
            [*base, ("X-Hex", secret.encode().hex())],
            [*base, ("X-Tab", f"key\t{secret}")],
            [*base, ("X-Cr", f"key\r{secret}")],
        ]
        for cut in {1, len(secret) // 2, len(secret) - 1}:
            name = secret[cut:].replace(":", "-").replace(" ", "-")[:60] or "x"
            out.append([*base, ("X-A", secret[:cut]), ("X-B", secret[cut:])])
            out.append([*base, ("X-A", secret[:cut]), (name, "1")])
        for cut in {1, 2, 3, len(encoded) // 2}:
            out.append([*base, ("X-A", encoded[:cut]), ("X-B", encoded[cut:])])
    return out


def test_a_quiet_block_stands_for_its_headers_in_adversarial_placements() -> None:
    fast, plain = engines()
    quiet = 0
    for headers in _adversarial_blocks():
        block = header_block(block_pairs(headers, frozenset()))[0]
        if not fast.quiet_lines(block):
            continue
        quiet += 1
        assert plain.scan(block) == [], headers
        for line in block.split(b"\n"):
            assert plain.scan(line) == [], (line, headers)
    assert quiet >= 100  # (most placements hold a match, a keyword or a run, and are scanned)


def _anchored_engine(*regexes: str) -> DlpEngine:
    rules = [
        DlpRule(id=f"anchored-{n}", severity="critical", category="secret", description="", regex=regex)
        for n, regex in enumerate(regexes)
    ]
    return DlpEngine([*builtin_rules(), *rules], salt=SALT)


@pytest.mark.parametrize(
    ("regex", "header"),
    [
        # `^`: a header alone starts the text; inside the block only the first header does.
        (r"^(zz_[A-Za-z0-9]{20})", ("zz_A1b2C3d4E5f6G7h8I9j0", "1")),
        # `$`: a header alone ends the text; inside the block only the last one (before its newline) does.
        (r"(yy_[A-Za-z0-9]{20})$", ("X-End", "yy_A1b2C3d4E5f6G7h8I9j0")),
        (r"^x-anchor: (tok_[a-z0-9]{16})$", ("x-anchor", "tok_a1b2c3d4e5f6a7b8")),
    ],
)
def test_a_rule_anchored_on_a_line_is_not_quiet_in_the_middle_of_the_block(
    regex: str, header: tuple[str, str]
) -> None:
    engine = _anchored_engine(regex)
    base = [("Host", "api.openai.com"), ("content-type", "application/json"), ("accept", "*/*")]
    name, value = header
    alone = f"{name}: {value}".encode()
    assert engine.scan(alone)  # what the header alone holds
    for at in range(len(base) + 1):
        headers = [*base[:at], header, *base[at:]]
        block = header_block(block_pairs(headers, frozenset()))[0]
        assert not engine.quiet_lines(block), (at, block)


def test_a_rule_anchored_on_the_whole_text_leaves_no_line_database() -> None:
    engine = _anchored_engine(r"\A(zz_[A-Za-z0-9]{20})")
    assert not engine.quiet_lines(b"host: example.test\nx-a: 1\n")


def test_texts_the_pass_cannot_stand_for_are_scanned() -> None:
    """A backslash or a percent sign (a JSON or percent view of the block is scanned too), or a base64
    run that decodes to text (a secret may be inside): not quiet, whatever the pass says."""
    fast, _ = engines()
    assert fast.quiet_lines(b"host: example.test\naccept: */*\n")
    assert not fast.quiet_lines(b"host: example.test\nx-a: 1\\n2\n")
    assert not fast.quiet_lines(b"host: example.test\nx-a: 100%25\n")
    encoded = base64.b64encode(b"nothing secret in this text at all").decode()
    assert not fast.quiet_lines(f"host: example.test\nx-a: {encoded}\n".encode())
    # A line that is UTF-16 to Python's JSON reader (a NUL in its first two bytes) is scanned narrowed.
    wide = "AKIA" + "QWERTYUIOPASDFGH"
    line = wide.encode("utf-16-le") + b": 1"
    assert fast.scan(line)
    assert not fast.quiet_lines(b"host: example.test\n" + line + b"\n")


POLICY = (
    "version: 1\nmode: enforce\ndefault: ALLOW\ndlp:\n  severity_actions: {critical: BLOCK, high: BLOCK}\n"
)


@pytest.fixture(scope="module")
def scanner() -> DlpScanner:
    path = Path(tempfile.mkdtemp()) / "policy.yaml"
    path.write_text(POLICY + "  custom:\n    - id: anchored-end\n      regex: '(yy_[A-Za-z0-9]{20})$'\n")
    built = DlpScanner.for_policy(load_policy(path), SALT, background=False)
    assert built is not None
    return built


def test_the_blocking_scan_finds_each_secret_where_it_is(scanner: DlpScanner) -> None:
    """Known secrets in a header, in the header block only (anchored on a header's end), in a trailer
    and in the body: found with the block's one pass as without it, in the same order."""
    token = "ghp_" + "8xQ2mZ7rT4vK9pL3nW6yB1cD5fG0hJ2sA4eU"  # GitHub's documented PAT shape
    base = [
        ("Host", "api.openai.com"),
        ("content-type", "application/json"),
        ("x-request-id", "9f86d081884c7d659a2feaa0"),
    ]
    url = "https://api.openai.com/v1/chat/completions"
    cases = [
        ([*base, ("x-debug", f"token {token}")], [], chat_body("hello")),
        ([base[0], ("X-End", "yy_A1b2C3d4E5f6G7h8I9j0"), *base[1:]], [], chat_body("hello")),
        (base, [("x-checksum", token)], chat_body("hello")),
        (base, [], chat_body(f"my token is {token}")),
    ]
    # Without them the block is quiet: only the secrets make it scanned.
    assert scanner.engine.quiet_lines(header_block(block_pairs(base, frozenset()))[0])
    clean = CleanScans(scanner)
    for headers, trailers, body in cases:
        for _ in range(2):
            alone = scan_request_for_block(scanner, url, headers, body, trailers)
            passed = scan_request_for_block(scanner, url, headers, body, trailers, clean)
            assert passed == alone and passed, (headers, trailers)
    # The ordinary request (its request id new each time) is answered by the one pass.
    ordinary = [*base[:2], ("x-request-id", "f" * 24)]
    block = header_block(block_pairs(ordinary, frozenset()))[0]
    assert scanner.clean_texts.lines_clean(block)
    decoded = decode_body(chat_body("hello"), None, 1 << 20)
    assert judge_request(scanner, url, ordinary, [], chat_body("hello"), decoded, clean) == ([], None)
