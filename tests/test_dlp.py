"""DLP engine tests. Secret-shaped values are assembled at runtime so the repo trips no scanner."""

from __future__ import annotations

import json
import random

import pytest

from failcore.dlp import (
    DlpEngine,
    DlpRule,
    StreamScanner,
    builtin_rules,
    mask_text,
    parse_custom_rules,
    scan_headers,
    scan_json_body,
    scan_url,
    taint_source,
    unescape_ascii_json,
)
from failcore.dlp.masking import mask_preview
from failcore.dlp.model import CATEGORIES, RULE_ID_PATTERN, SEVERITIES
from failcore.dlp.validators import credit_card_ok, iban_ok, luhn_ok, shannon_entropy, ssn_ok

SALT = b"test-salt"
BACKENDS = ["hyperscan", "re2"]
HEX16 = "0123456789abcdef"
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_UPPER_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_B64_ALPHABET = _ALNUM + "+/"


def _rand(length: int, alphabet: str, seed: int = 8) -> str:
    rng = random.Random(f"{seed}-{length}-{alphabet}")
    return "".join(rng.choice(alphabet) for _ in range(length))


B64 = "A1b2"
AWS_ID = "AKIA" + "QWERTYUIOPASDFGH"
# Not AWS's documented example key (wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY): that one must not fire.
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "Q8vRzT2pLm"

# (rule id, text before, secret, text after, negative example)
CASES: list[tuple[str, str, str, str, str]] = [
    ("openai-project-key", "key=", "sk-" + "proj-" + "Ab1_" * 12, "\n", "sk-" + "proj-" + "short"),
    (
        "openai-service-account-key",
        "k ",
        "sk-" + "svcacct-" + "Ab1x" * 12,
        " ",
        "sk-" + "svcacct-" + "x" * 10,
    ),
    ("openai-admin-key", "k ", "sk-" + "admin-" + "Ab1x" * 12, "", "sk-" + "admin-" + "abc"),
    (
        "openai-legacy-api-key",
        "k ",
        "sk-" + B64 * 5 + "T3Blbk" + "FJ" + "C3d4" * 5,
        "",
        "sk-" + B64 * 5 + "XXXXXXXX" + "C3d4" * 5,
    ),
    (
        "anthropic-api-key",
        "x-api-key: ",
        "sk-" + "ant-api03-" + "Ab3_" * 23 + "x" + "AA",
        "",
        "sk-" + "ant-api03-" + "Ab3_" * 23 + "x" + "AB",
    ),
    (
        "anthropic-admin-key",
        "",
        "sk-" + "ant-admin01-" + "Ab3_" * 23 + "x" + "AA",
        "",
        "sk-" + "ant-admin01-" + "short" + "AA",
    ),
    ("google-api-key", "key=", "AIza" + "Sy" + "B1c2" * 8 + "d", "&q=1", "AIza" + "short"),
    ("google-oauth-client-secret", "", "GOCSPX-" + "a1B2" * 7, "", "GOCSPX-" + "a1B2" * 3),
    ("aws-access-key-id", "id ", AWS_ID, " ", "AKIA" + "qwertyuiopasdfgh"),
    (
        "aws-secret-access-key",
        "aws_secret_access_key = ",
        AWS_SECRET,
        "\n",
        "aws_secret_access_key = " + "a" * 40,
    ),
    ("aws-secret-key-near-key-id", AWS_ID + ", ", AWS_SECRET, "", AWS_ID + ", " + "A" * 40),
    (
        "azure-storage-account-key",
        "Protocol=https;AccountName=x;AccountKey=",
        "Ab1+" * 21 + "xy==",
        ";EndpointSuffix=core",
        "AccountKey=" + "short==",
    ),
    (
        "azure-shared-access-key",
        "Endpoint=sb://x/;SharedAccessKey=",
        "Ab1+" * 10 + "xyz=",
        "",
        "SharedAccessKey=" + "abc=",
    ),
    (
        "azure-sas-token",
        "https://a.blob.core.windows.net/c?sv=2021-08-06&ss=b&sig=",
        "Ab1%2B" * 8,
        "",
        "?sv=2021-08-06&sig=" + "short",
    ),
    ("azure-ad-client-secret", 'secret "', "abc" + "1Q~" + "Ab1_" * 8, '"', 'secret "abc1Q~short"'),
    ("github-pat", "token ", "ghp_" + B64 * 9, "", "ghp_" + B64 * 8),
    ("github-oauth-token", "", "gho_" + B64 * 9, "", "gho_" + B64 * 8),
    ("github-user-to-server-token", "", "ghu_" + B64 * 9, "", "ghu_" + B64 * 8),
    ("github-app-token", "", "ghs_" + B64 * 9, "", "ghs_" + B64 * 8),
    ("github-refresh-token", "", "ghr_" + B64 * 9, "", "ghr_" + B64 * 8),
    (
        "github-fine-grained-pat",
        "",
        "github_pat_" + B64 * 5 + "C3" + "_" + "D4e5" * 14 + "F6g",
        "",
        "github_pat_" + "abc",
    ),
    ("gitlab-pat", "", "glpat-" + B64 * 5, " ", "glpat-" + "short"),
    ("gitlab-deploy-token", "", "gldt-" + B64 * 5, "", "gldt-" + "abc"),
    ("gitlab-runner-token", "", "glrt-" + B64 * 5, "", "glrt-" + "abc"),
    ("gitlab-pipeline-trigger-token", "", "glptt-" + "a1b2" * 10, "", "glptt-" + "zz" * 20),
    ("gitlab-scim-token", "", "glsoat-" + B64 * 5, "", "glsoat-" + "abc"),
    ("gitlab-feed-token", "", "glft-" + B64 * 5, "", "glft-" + "abc"),
    (
        "slack-bot-token",
        "",
        "xoxb-" + "1234567890" + "-" + "1234567890123" + "-" + B64 * 6,
        "",
        "xoxb-" + "123-abc",
    ),
    ("slack-user-token", "", "xoxp-" + "1234567890-" * 3 + "a1b2" * 7, "", "xoxp-" + "123"),
    ("slack-app-token", "", "xapp-" + "1-A0B1C2D3E4-1234567890-" + "a1b2" * 8, "", "xapp-" + "abc"),
    (
        "slack-webhook-url",
        "",
        "https://hooks.slack.com/services/" + "T01ABCDEF/B02GHIJKL/" + "a1B2" * 6,
        "",
        "https://hooks.slack.com/services/" + "short",
    ),
    ("stripe-live-secret-key", "", "sk_" + "live_" + B64 * 6, "", "sk_" + "live_" + "short"),
    ("stripe-test-secret-key", "", "rk_" + "test_" + B64 * 6, "", "sk_" + "test_" + "abc"),
    ("stripe-webhook-secret", "", "whsec_" + B64 * 8, "", "whsec_" + "abc"),
    ("twilio-api-key", "", "SK" + HEX16 * 2, "", "SK" + "0123456789abcdeg" * 2),
    ("sendgrid-api-key", "", "SG." + B64 * 5 + "c3" + "." + "D4e5" * 10 + "f6g", "", "SG." + "abc.def"),
    ("npm-access-token", "", "npm_" + B64 * 9, "", "npm_" + "abc"),
    (
        "pypi-upload-token",
        "",
        "pypi-" + "AgEIcHlwaS5vcmc" + B64 * 15,
        "",
        "pypi-" + "AgEIcHlwaS5vcmc" + "short",
    ),
    ("huggingface-access-token", "", "hf_" + "AbCd" * 8 + "Ef", "", "hf_" + "1234" * 8 + "56"),
    ("huggingface-org-token", "", "api_org_" + "AbCd" * 8 + "Ef", "", "api_org_" + "short"),
    ("mailgun-api-key", "", "key-" + HEX16 * 2, "", "key-" + "0123456789abcdeX" * 2),
    ("mailchimp-api-key", "", HEX16 * 2 + "-us" + "12", "", HEX16 * 2 + "-uk12"),
    ("shopify-token", "", "shpat_" + HEX16 * 2, "", "shpat_" + "xyz" * 5),
    ("datadog-api-key", "DD_API_KEY=", HEX16 * 2, "", "DD_API_KEY=" + "nothex" * 6),
    ("digitalocean-pat", "", "dop_v1_" + HEX16 * 4, "", "dop_v1_" + "abc"),
    ("digitalocean-oauth-token", "", "doo_v1_" + HEX16 * 4, "", "doo_v1_" + "abc"),
    ("digitalocean-refresh-token", "", "dor_v1_" + HEX16 * 4, "", "dor_v1_" + "abc"),
    (
        "discord-bot-token",
        "Bot ",
        "M" + "TAxMjM0NTY3ODkwMTIzNDU2" + "." + "GaBcDe" + "." + "A1b2C3d4E5f6G7h8I9j0K1l2M3n",
        "",
        "M" + "a" * 23 + ".abcdef." + "a" * 30,
    ),
    (
        "discord-webhook-url",
        "https://",
        "discord.com/api/webhooks/" + "123456789012345678" + "/" + "A1b2_" * 13,
        "",
        "https://discord.com/api/webhooks/" + "123/abc",
    ),
    (
        "telegram-bot-token",
        "bot",
        "123456789" + ":AA" + "A1b2_" * 6 + "C3d",
        "/getMe",
        "123456789" + ":AB" + "x" * 33,
    ),
    ("doppler-token", "", "dp." + "pt." + B64 * 10 + "C3d", "", "dp." + "pt." + "short"),
    ("databricks-api-token", "", "dapi" + HEX16 * 2, "", "dapi" + "xyz"),
    ("linear-api-key", "", "lin_api_" + B64 * 10, "", "lin_api_" + "abc"),
    ("notion-api-token", "", "ntn_" + "12345678901" + B64 * 8 + "C3d", "", "ntn_" + "123"),
    ("postman-api-key", "", "PMAK-" + HEX16 + "01234567" + "-" + HEX16 * 2 + "01", "", "PMAK-" + "abc"),
    ("vault-service-token", "", "hvs." + "A1b2_" * 20, "", "hvs." + "short"),
    ("vault-batch-token", "", "hvb." + "A1b2_" * 30, "", "hvb." + "short"),
    ("atlassian-api-token", "", "ATATT3" + "xFfGF0" + "A1b2_" * 36, "", "ATATT3" + "short"),
    (
        "age-secret-key",
        "",
        "AGE-SECRET-KEY-1" + ("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L" * 2)[:58],
        "",
        "AGE-SECRET-KEY-1" + "B" * 58,
    ),
    (
        "grafana-service-account-token",
        "",
        "glsa_" + B64 * 8 + "_" + "0a1b2c3d",
        "",
        "glsa_" + "short_0a1b2c3d",
    ),
    ("grafana-cloud-token", "", "glc_" + B64 * 10, "", "glc_" + "short"),
    ("new-relic-user-api-key", "", "NRAK-" + "A1B2C3D4E5F6G7H8I9J0K1L2M3N", "", "NRAK-" + "abc"),
    ("new-relic-insert-key", "", "NRII-" + B64 * 8, "", "NRII-" + "abc"),
    ("sentry-org-token", "", "sntrys_" + "eyJpYXQiO" + B64 * 25, "", "sntrys_" + "eyJpYXQiO" + "short"),
    ("sentry-user-token", "", "sntryu_" + HEX16 * 4, "", "sntryu_" + "abc"),
    ("square-access-token", "", "sq0atp-" + B64 * 5 + "C3", "", "sq0atp-" + "abc"),
    ("square-oauth-secret", "", "sq0csp-" + B64 * 10 + "C3d", "", "sq0csp-" + "abc"),
    ("heroku-api-key", "", "HRKU-AA" + B64 * 14 + "C3", "", "HRKU-AA" + "short"),
    ("pulumi-access-token", "", "pul-" + HEX16 * 2 + "01234567", "", "pul-" + "xyz"),
    ("rubygems-api-key", "", "rubygems_" + HEX16 * 3, "", "rubygems_" + "abc"),
    ("flyio-token", "", "fo1_" + "A1b2_" * 8 + "C3d", "", "fo1_" + "abc"),
    ("perplexity-api-key", "", "pplx-" + B64 * 12, "", "pplx-" + "abc"),
    ("groq-api-key", "", "gsk_" + B64 * 13, "", "gsk_" + "abc"),
    ("xai-api-key", "", "xai-" + B64 * 20, "", "xai-" + "abc"),
    ("replicate-api-token", "", "r8_" + B64 * 9 + "C", "", "r8_" + "abc"),
    (
        "private-key",
        "key:\n",
        "-----BEGIN "
        + "RSA PRIVATE KEY-----\n"
        + "MIIEow"
        + B64 * 20
        + "\n-----END RSA "
        + "PRIVATE KEY-----",
        "\n",
        "-----BEGIN PUBLIC KEY-----\nMIIB" + B64 * 20 + "\n-----END PUBLIC KEY-----",
    ),
    (
        "jwt",
        "Bearer ",
        "eyJ"
        + "hbGciOiJIUzI1NiJ9"
        + "."
        + "eyJ"
        + "zdWIiOiIxMjM0NTY3ODkwIn0"
        + "."
        + "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "",
        "eyJ" + "hbGciOiJIUzI1NiJ9",
    ),
    (
        "url-credentials",
        "postgres://admin:",
        "S3cr3tPa55",
        "@db.internal:5432/app",
        "postgres://admin:${DB_PASSWORD}@db.internal/app",
    ),
    ("generic-password-assignment", 'password = "', "Xk9#mQ2$vL7p", '"', 'password = "changeme"'),
    ("generic-secret-assignment", "client_secret: ", "a8F3kQ9zL2mN7pR4", "", "secret: " + "a" * 20),
    ("generic-api-key-assignment", 'api_key="', "Zk29fLq81MxnT7Rw", '"', 'api_key="${API_KEY}"'),
    ("email-address", "contact ", "bob.smith@corp-mail.example.org", " please", "host: bob@localhost"),
    ("phone-number-e164", "call ", "+14155552671", " now", "version +1234 build"),
    ("phone-number-nanp", "call ", "(415) 555-2671", " today", "id 115-555-2671"),
    ("credit-card-number", "card ", "4111 1111 1111 1111", " exp", "card 4111 1111 1111 1112"),
    ("iban", "IBAN ", "GB82 WEST 1234 5698 7654 32", "", "IBAN GB82 WEST 1234 5698 7654 33"),
    ("us-ssn", "ssn ", "123-45-6789", ".", "ssn 666-45-6789"),
    # Formats added for issue 8 (realistic shapes, random bodies from a seeded generator).
    (
        "aws-bedrock-api-key",
        "AWS_BEARER_TOKEN_BEDROCK=",
        "ABSK" + _rand(120, _B64_ALPHABET),
        "\n",
        "ABSK" + "QmVkcm9ja0FQSUtleS1EXAMPLE",
    ),
    ("slack-legacy-token", "token: ", "xox" + "s-" + "12-34-56-" + _rand(40, HEX16), "", "xoxs-1-2"),
    (
        "slack-config-token",
        "",
        "xox" + "e.xoxp-1-" + _rand(164, _UPPER_DIGITS),
        " ",
        "xox" + "e.xoxp-1-" + "A" * 20,
    ),
    ("gitlab-other-token", "", "gl" + "imt-" + _rand(25, _ALNUM), "", "gl" + "imt-" + "x" * 25),
    (
        "npm-registry-auth",
        "//registry.npmjs.org/:_auth" + "Token=",
        _rand(8, HEX16) + "-cd03-11ec-9d64-" + _rand(12, HEX16),
        "\n",
        "//registry.npmjs.org/:_auth" + "Token=${NPM_TOKEN}",
    ),
    (
        "vault-legacy-token",
        "VAULT_TOKEN=",
        "s." + "Ga5jyNq6kNfRMVQk2LY1j9iu",
        "",
        "s." + "abcdefghijklmnopqrstuvwx",
    ),
    (
        "terraform-cloud-token",
        'token = "',
        _rand(14, _ALNUM) + ".atlas" + "v1." + _rand(67, _ALNUM),
        '"',
        "abc.atlas" + "v1.short",
    ),
    ("grafana-api-key", "", "eyJr" + "Ijoi" + _rand(80, _ALNUM) + "==", "", "eyJr" + "Ijoi" + "short"),
    (
        "jwt-base64",
        "auth ",
        "ZXlK"
        + "aGJHY2lPaUpJVXpJMU5pSjk"
        + "uZXlK"
        + "emRXSWlPaUl4TWpNME5UWTNPRGt3SW4w"
        + "LmFiY2RlZmdoaWprbG1ub3A",
        " ",
        "ZXlK" + "aGJHY2lPaUpJVXpJMU5pSjk",
    ),
]


@pytest.fixture(scope="module", params=BACKENDS)
def engine(request: pytest.FixtureRequest) -> DlpEngine:
    return DlpEngine(builtin_rules(), backend=request.param, salt=SALT)


def test_builtin_rule_table_is_complete_and_well_formed() -> None:
    rules = builtin_rules()
    ids = [rule.id for rule in rules]
    assert len(rules) >= 60
    assert len(set(ids)) == len(ids)
    assert sorted(ids) == sorted(case[0] for case in CASES)
    for rule in rules:
        assert RULE_ID_PATTERN.match(rule.id), rule.id
        assert rule.severity in SEVERITIES and rule.category in CATEGORIES and rule.description
        assert all(keyword == keyword.lower() for keyword in rule.keywords), rule.id


@pytest.mark.parametrize(
    ("rule_id", "before", "secret", "after", "negative"), CASES, ids=[c[0] for c in CASES]
)
def test_builtin_rule_positive_and_negative(
    engine: DlpEngine, rule_id: str, before: str, secret: str, after: str, negative: str
) -> None:
    text = before + secret + after
    spans = [(hit.start, hit.end) for hit in engine.scan(text) if hit.rule_id == rule_id]
    start = len(before.encode())
    assert spans == [(start, start + len(secret.encode()))]
    assert rule_id not in {hit.rule_id for hit in engine.scan(negative)}


@pytest.mark.parametrize(
    ("rule_id", "before", "secret", "after", "negative"), CASES[:20], ids=[c[0] for c in CASES[:20]]
)
def test_secret_found_inside_json_escaped_text(
    engine: DlpEngine, rule_id: str, before: str, secret: str, after: str, negative: str
) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "see below:\n" + before + secret + after}]})
    hits = [hit for hit in scan_json_body(engine, body.encode()) if hit.rule_id == rule_id]
    assert hits and all(hit.location == "/messages/0/content" for hit in hits)


def test_backends_agree_on_mixed_text() -> None:
    text = "\n".join(case[1] + case[2] + case[3] + " | " + case[4] for case in CASES)
    results = {
        backend: [
            (h.rule_id, h.start, h.end)
            for h in DlpEngine(builtin_rules(), backend=backend, salt=SALT).scan(text)
        ]
        for backend in BACKENDS
    }
    assert results["hyperscan"] == results["re2"]
    assert len(results["re2"]) >= len(CASES)


def test_python_fallback_runs_safe_rules_and_lists_refused_ones() -> None:
    engine = DlpEngine(builtin_rules(), backend="python", salt=SALT)
    assert engine.backend == "python"
    refused = {rule_id for rule_id, _reason in engine.skipped}
    assert "github-pat" not in refused
    hits = engine.scan("token " + "ghp_" + B64 * 9)
    assert [hit.rule_id for hit in hits] == ["github-pat"]


def test_unknown_backend_rejected() -> None:
    with pytest.raises(ValueError, match="unknown DLP backend"):
        DlpEngine(builtin_rules(), backend="pcre", salt=SALT)


@pytest.mark.parametrize(
    "number", ["4111111111111111", "5500 0000 0000 0004", "3400-0000-0000-009", "6011000990139424"]
)
def test_credit_card_valid(number: str) -> None:
    assert credit_card_ok(number)


@pytest.mark.parametrize(
    "number", ["4111111111111112", "1234567812345670", "0000000000000000", "4111 1111 1111"]
)
def test_credit_card_invalid(number: str) -> None:
    assert not credit_card_ok(number)


def test_luhn() -> None:
    assert luhn_ok("79927398713")
    assert not luhn_ok("79927398710")
    assert not luhn_ok("7992739871a")


@pytest.mark.parametrize(
    "value", ["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000", "NO9386011117947"]
)
def test_iban_valid(value: str) -> None:
    assert iban_ok(value)


@pytest.mark.parametrize(
    "value", ["GB82 WEST 1234 5698 7654 33", "DE8937040044053201300", "ZZ89370400440532013000"]
)
def test_iban_invalid(value: str) -> None:
    assert not iban_ok(value)


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("123-45-6789", True),
        ("000-12-3456", False),
        ("666-12-3456", False),
        ("900-12-3456", False),
        ("123-00-4567", False),
        ("123-45-0000", False),
    ],
)
def test_ssn_rules(value: str, valid: bool) -> None:
    assert ssn_ok(value) is valid


def test_entropy() -> None:
    assert shannon_entropy("aaaa") == 0
    assert shannon_entropy("abcd") == pytest.approx(2.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stream_scanner_finds_split_secret_exactly_once(backend: str) -> None:
    engine = DlpEngine(builtin_rules(), backend=backend, salt=SALT)
    secret = "ghp_" + B64 * 9
    stream = ("data: " + "x " * 3000 + "here is " + secret + " done " + "y " * 3000).encode()
    split_at = stream.index(secret.encode()) + 10
    chunks = [stream[i : i + 1000] for i in range(0, split_at, 1000)]
    chunks[-1] = stream[(len(chunks) - 1) * 1000 : split_at]
    chunks += [stream[i : i + 700] for i in range(split_at, len(stream), 700)]
    assert b"".join(chunks) == stream
    scanner = StreamScanner(engine, window=1024)
    hits = [hit for chunk in chunks for hit in scanner.feed(chunk)] + scanner.finish()
    github = [hit for hit in hits if hit.rule_id == "github-pat"]
    start = stream.index(secret.encode())
    assert [(hit.start, hit.end) for hit in github] == [(start, start + len(secret))]


def test_stream_scanner_secret_at_end_reported_on_finish(engine: DlpEngine) -> None:
    secret = "ghp_" + B64 * 9
    scanner = StreamScanner(engine, window=1024)
    assert scanner.feed(b"token " + secret.encode()[:20]) == []
    assert scanner.feed(secret.encode()[20:]) == []
    assert [hit.rule_id for hit in scanner.finish()] == ["github-pat"]


def test_masking_removes_secret_from_text_and_hits(engine: DlpEngine) -> None:
    secrets = [
        case[2] for case in CASES if case[0] in ("github-pat", "aws-access-key-id", "private-key", "us-ssn")
    ]
    text = "start é " + " and ".join(secrets) + " end"
    hits = engine.scan(text)
    masked = mask_text(text, hits)
    for secret in secrets:
        assert secret not in masked
        for hit in hits:
            assert all(secret not in str(value) for value in (hit.preview, hit.fingerprint, hit.rule_id))
    assert masked.startswith("start é ") and masked.endswith(" end")


@pytest.mark.parametrize(
    ("secret", "preview"),
    [
        ("AKIAIOSFODNN7EXAMPLE", "AKI\u2026PLE"),
        ("x" * 40, "xxxx\u2026xxxx"),
        ("abcdef", "a\u2026b"[:1] + "\u2026f"),
        ("ab", "\u2026"),
    ],
)
def test_preview_reveals_little(secret: str, preview: str) -> None:
    assert mask_preview(secret) == preview
    revealed = len(mask_preview(secret)) - 1
    assert revealed <= 8 and revealed <= len(secret) // 3


def test_fingerprint_stable_per_salt(engine: DlpEngine) -> None:
    text = "token " + "ghp_" + B64 * 9
    first, second = engine.scan(text)[0], engine.scan(text)[0]
    other = DlpEngine(builtin_rules(), backend=engine.backend, salt=b"another-salt").scan(text)[0]
    assert first.fingerprint == second.fingerprint
    assert first.fingerprint != other.fingerprint
    assert len(first.fingerprint) == 32


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("pattern", "matching"), [(r"(a+)+$", "a" * 50), (r"(a|aa)+b", "aab"), (r"(a*)*c", "ac")]
)
def test_redos_patterns_run_in_linear_time(backend: str, pattern: str, matching: str) -> None:
    # A backtracking engine takes ~2**100000 steps on this input: it never returns (the timeout ends
    # it). How fast the linear backends are: benchmarks/bench_bounds.py.
    rules = parse_custom_rules([{"id": "evil", "regex": pattern, "keywords": []}], source="policy")
    engine = DlpEngine(rules, backend=backend, salt=SALT)
    assert [hit.rule_id for hit in engine.scan("a" * 100_000 + "!")] == []
    assert [hit.rule_id for hit in engine.scan(f"x {matching}")] == ["evil"]


def test_python_fallback_refuses_catastrophic_pattern() -> None:
    rules = parse_custom_rules([{"id": "evil", "regex": r"(a+)+$"}], source="policy")
    engine = DlpEngine(rules, backend="python", salt=SALT)
    assert engine.skipped and engine.skipped[0][0] == "evil" and "nested quantifier" in engine.skipped[0][1]
    assert engine.scan("a" * 100_000 + "!") == []


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"id": "bad-backref", "regex": r"(a)\1"}, "bad-backref.*linear-time"),
        ({"id": "look", "regex": r"foo(?=bar)"}, "look.*linear-time"),
        ({"id": "Bad_Id", "regex": "x"}, "kebab-case"),
        ({"id": "sev", "regex": "x", "severity": "urgent"}, "sev.*severity"),
        ({"id": "grp", "regex": "(x)", "secret_group": 2}, "grp.*secret_group"),
        ({"id": "ent", "regex": "x", "entropy": 9}, "ent.*entropy"),
        ({"id": "kw", "regex": "x", "keywords": "abc"}, "kw.*keywords"),
        ({"id": "extra", "regex": "x", "flags": "i"}, "extra.*unknown field"),
        ({"id": "numkey", "regex": "x", 7: "x", "flags": "i"}, r"numkey.*unknown field\(s\) 7, flags"),
    ],
)
def test_custom_rule_errors_name_the_rule(item: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_custom_rules([item], source="policy")


def test_custom_rule_detects_with_keywords_secret_group_and_entropy(engine: DlpEngine) -> None:
    rules = parse_custom_rules(
        [
            {
                "id": "acme-token",
                "regex": r"\b(acme_([A-Za-z0-9]{24}))\b",
                "keywords": ["ACME_"],
                "severity": "critical",
                "description": "ACME",
                "entropy": 3.0,
                "secret_group": 2,
            }
        ],
        source="policy",
    )
    assert rules[0].keywords == ("acme_",) and rules[0].source == "policy"
    custom = DlpEngine(rules, backend=engine.backend, salt=SALT)
    value = "Zk29fLq81MxnT7Rw" + "Pq4sVb8N"
    text = "use acme_" + value + " or acme_" + "a" * 24
    hits = custom.scan(text)
    assert [(hit.rule_id, text.encode()[hit.start : hit.end]) for hit in hits] == [
        ("acme-token", value.encode())
    ]


def _body_with(secret: str) -> dict[str, object]:
    return {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": "read the file"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "read_file", "arguments": '{"p": 1}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "config:\n token=" + secret},
        ],
        "a/b~c": "x " + secret,
    }


def test_json_pointer_locations_with_escaping(engine: DlpEngine) -> None:
    secret = "ghp_" + B64 * 9
    body = json.dumps(_body_with(secret)).encode()
    hits = [hit for hit in scan_json_body(engine, body) if hit.rule_id == "github-pat"]
    assert [hit.location for hit in hits] == ["/messages/3/content", "/a~1b~0c"]
    for hit in hits:
        assert body[hit.start : hit.end] == secret.encode()


def test_non_json_body_location(engine: DlpEngine) -> None:
    hits = scan_json_body(engine, b"plain text " + ("ghp_" + B64 * 9).encode())
    assert [hit.location for hit in hits] == ["body"]


def test_number_values_located(engine: DlpEngine) -> None:
    hits = scan_json_body(engine, b'{"card": [1, 4111111111111111]}')
    assert [(hit.rule_id, hit.location) for hit in hits] == [("credit-card-number", "/card/1")]


def test_scan_headers_and_url(engine: DlpEngine) -> None:
    token = "sk-" + "proj-" + "Ab1x" * 12
    hits = scan_headers(engine, [("Authorization", "Bearer " + token), ("Accept", "*/*")])
    assert [(hit.rule_id, hit.location, hit.start) for hit in hits] == [
        ("openai-project-key", "header:authorization", len("Bearer "))
    ]
    url = "https://api.example.com/v1/x?user=me&key=" + "AIza" + "Sy" + "B1c2" * 8 + "d" + "#frag"
    url_hits = scan_url(engine, url)
    assert [(hit.rule_id, hit.location) for hit in url_hits] == [("google-api-key", "query:key")]
    path_hits = scan_url(engine, "https://x.test/hooks/" + "ghp_" + B64 * 9)
    assert [(hit.rule_id, hit.location) for hit in path_hits] == [("github-pat", "url")]


def test_scan_url_decodes_percent_encoded_values(engine: DlpEngine) -> None:
    encoded = "%67hp_" + B64 * 9  # "%67" is "g"
    hits = scan_url(engine, "https://x.test/cb?code=" + encoded)
    assert [(hit.rule_id, hit.location) for hit in hits] == [("github-pat", "query:code")]


def test_taint_openai_chat() -> None:
    request = _body_with("s")
    assert taint_source(request, "/messages/3/content") == {
        "format": "openai_chat",
        "role": "tool_result",
        "tool_name": "read_file",
        "tool_call_id": "call_1",
        "message_index": 3,
        "exfiltration_path": True,
    }
    args = taint_source(request, "/messages/2/tool_calls/0/function/arguments")
    assert args is not None and args["role"] == "tool_call_arguments" and args["tool_name"] == "read_file"
    assert not args["exfiltration_path"]
    assert taint_source(request, "/messages/1/content")["role"] == "user"  # type: ignore[index]
    assert taint_source(request, "/messages/0/content")["role"] == "system"  # type: ignore[index]
    assert taint_source(request, "/model") is None
    assert taint_source(request, "/messages/9/content") is None


def test_taint_openai_responses() -> None:
    request = {
        "instructions": "sys",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
            {"type": "function_call", "call_id": "fc_1", "name": "shell", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "fc_1", "output": "secret here"},
        ],
    }
    result = taint_source(request, "/input/2/output")
    assert result is not None and result["role"] == "tool_result" and result["tool_name"] == "shell"
    assert result["tool_call_id"] == "fc_1" and result["exfiltration_path"] is True
    assert taint_source(request, "/input/1/arguments")["role"] == "tool_call_arguments"  # type: ignore[index]
    assert taint_source(request, "/input/0/content/0/text")["role"] == "user"  # type: ignore[index]
    assert taint_source(request, "/instructions")["role"] == "system"  # type: ignore[index]
    assert taint_source({"input": "just text"}, "/input")["role"] == "user"  # type: ignore[index]


def test_taint_anthropic() -> None:
    request = {
        "system": [{"type": "text", "text": "sys"}],
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "reading"},
                    {"type": "tool_use", "id": "toolu_1", "name": "cat", "input": {"path": "/etc/x"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": "KEY"}],
                    }
                ],
            },
        ],
    }
    result = taint_source(request, "/messages/2/content/0/content/0/text")
    assert result == {
        "format": "anthropic",
        "role": "tool_result",
        "tool_name": "cat",
        "tool_call_id": "toolu_1",
        "message_index": 2,
        "exfiltration_path": True,
    }
    use = taint_source(request, "/messages/1/content/1/input/path")
    assert use is not None and use["role"] == "tool_call_arguments" and use["tool_call_id"] == "toolu_1"
    assert taint_source(request, "/messages/1/content/0/text")["role"] == "assistant"  # type: ignore[index]
    assert taint_source(request, "/system/0/text")["role"] == "system"  # type: ignore[index]


def test_rule_dataclass_is_frozen() -> None:
    rule = builtin_rules()[0]
    assert isinstance(rule, DlpRule)
    with pytest.raises(AttributeError):
        rule.id = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "plain"),
    [
        (rb'{"a": "\u0067hp_x"}', rb'{"a": "ghp_x"}'),
        (rb'{"a": "\\u0067"}', rb'{"a": "\\u0067"}'),  # an escaped backslash, then "u0067"
        (rb'{"a": "\\\u0041"}', rb'{"a": "\\A"}'),  # an escaped backslash, then an escape
        (rb'{"a": "\u0022\u005c\u007f"}', rb'{"a": "\u0022\u005c\u007f"}'),  # quote, backslash, DEL stay
        (rb'{"a": "\u00e9\u0041"}', rb'{"a": "\u00e9A"}'),  # only printable ASCII is written plainly
        (rb"not json \u0041", rb"not json \u0041"),
    ],
)
def test_ascii_unicode_escapes_are_unescaped_without_changing_the_json(raw: bytes, plain: bytes) -> None:
    import json

    out = unescape_ascii_json(raw)
    assert out == plain
    if raw.startswith(b"{"):
        assert json.loads(out) == json.loads(raw)
