"""Placeholder, entropy and code guards: documented examples and code must not fire as secrets."""

from __future__ import annotations

import pytest

from failcore.dlp import DlpEngine, builtin_rules


@pytest.fixture(scope="module")
def engine() -> DlpEngine:
    return DlpEngine(builtin_rules(), backend="re2", salt=b"guards")


@pytest.mark.parametrize(
    "text",
    [
        "aws_access_key_id = " + "AKIA" + "IOSFODNN7EXAMPLE",  # AWS's documented example key id
        "token: " + "ghp_" + "x" * 36,
        "OPENAI_API_KEY=" + "sk-" + "proj-" + "x" * 48,
        "OPENAI_API_KEY=" + "sk-" + "proj-" + "X" * 48,
        "key " + "AIza" + "SyD3asb-2pEZVqMkmL6M9N6nHZRR_znhrh0",  # a public key gitleaks allows too
    ],
)
def test_placeholders_do_not_fire(engine: DlpEngine, text: str) -> None:
    assert [hit.rule_id for hit in engine.scan(text) if hit.category == "secret"] == []


@pytest.mark.parametrize(
    "code",
    [
        "pwd = os.getcwd()",
        'password=os.getenv("DB_PASSWORD")',
        "password = self.password_field.value",
        "passwd = getpass.getpass(prompt)",
        "password: str = field(default_factory=make_password)",
        "if password == settings.ADMIN_PASSWORD:",
        "self.username, self.password = credentials\n",
    ],
)
def test_generic_password_does_not_fire_on_code(engine: DlpEngine, code: str) -> None:
    assert "generic-password-assignment" not in {hit.rule_id for hit in engine.scan(code)}


def test_generic_password_stays_on_its_line(engine: DlpEngine) -> None:
    text = "password:\n  Zq8#kLm2$vRt9!pW\n"
    assert "generic-password-assignment" not in {hit.rule_id for hit in engine.scan(text)}


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ('DB_PASSWORD="Zq8#kLm2$vRt9!pW"', "Zq8#kLm2$vRt9!pW"),
        ("password=Zq8#kLm2$vRt9!pW\n", "Zq8#kLm2$vRt9!pW"),
        ('{"password": "Zq8#kLm2$vRt9!pW"}', "Zq8#kLm2$vRt9!pW"),
    ],
)
def test_generic_password_still_fires_on_literals(engine: DlpEngine, text: str, secret: str) -> None:
    hits = [hit for hit in engine.scan(text) if hit.rule_id == "generic-password-assignment"]
    start = text.index(secret)
    assert [(hit.start, hit.end) for hit in hits] == [(start, start + len(secret))]
