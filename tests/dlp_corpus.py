"""The DLP corpora the conformance and fast-path tests share: gitleaks' own fixtures
(tests/data/conformance/dlp, MIT, see its LICENSE), the chat request a sample is wrapped in, and ordinary
text found on this machine (stdlib source, package metadata, READMEs)."""

from __future__ import annotations

import json
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).parent / "data" / "conformance" / "dlp" / "gitleaks-fixtures.jsonl"
ORDINARY_TARGET_BYTES = 7_000_000


@dataclass(frozen=True, slots=True)
class Sample:
    rule: str
    kind: str
    text: str
    secret: str | None


def load_samples() -> list[Sample]:
    samples = []
    with DATA.open(encoding="utf-8") as handle:
        for line in handle:
            raw = json.loads(line)
            if raw["needs_path"]:
                continue  # only fires on a file path: traffic has none
            samples.append(Sample(raw["rule"], raw["kind"], raw["text"], raw.get("secret") or None))
    return samples


def chat_body(text: str) -> bytes:
    """What the OpenAI SDK sends (json.dumps defaults: ASCII-only, `\\uXXXX` for the rest)."""
    return json.dumps(
        {
            "model": "gpt-4o",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}],
        }
    ).encode()


def ordinary_files() -> Iterator[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    yield from sorted(stdlib.glob("*.py"))
    for sub in ("email", "http", "json", "logging", "urllib", "asyncio", "importlib", "concurrent", "xml"):
        yield from sorted((stdlib / sub).rglob("*.py"))
    site = Path(sysconfig.get_paths()["purelib"])
    for dist in sorted(site.glob("*.dist-info")):
        for name in ("METADATA", "README.md", "README.rst"):
            if (dist / name).is_file():
                yield dist / name
    yield from sorted(site.glob("*/README*"))


def ordinary_corpus(target: int = ORDINARY_TARGET_BYTES) -> list[bytes]:
    docs: list[bytes] = []
    size = 0
    for path in ordinary_files():
        if "test" in path.parts or "tests" in path.parts:
            continue  # test suites ship deliberate fake keys
        data = path.read_bytes()
        docs.append(data)
        size += len(data)
        if size >= target:
            break
    return docs
