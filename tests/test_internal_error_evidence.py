"""failcore.evidence.dlp.scan_internal_error: what an internal_error event quotes, masked."""

from __future__ import annotations

from typing import Any

from failcore.dlp.pending import wait_until_built
from failcore.dlp.scanner import DlpScanner
from failcore.evidence.dlp import scan_internal_error
from failcore.policy.load import load_policy
from failcore.shipped import default_policy_path
from tests.security.helpers import gitleaks_token


def event(secret: str) -> dict[str, Any]:
    return {
        "kind": "internal_error",
        "error": f"ValueError: bad {secret}",
        "detail": {
            "where": "evidence builder",
            "fail_open": True,
            "traceback": f"Traceback …\nValueError: bad {secret}\n",
            "summary": f"GET /{secret}",
            "target": {"host": f"{secret}.example", "port": 443, "scheme": "https"},
        },
    }


def test_every_quoted_string_of_an_unbuilt_exchanges_event_is_masked() -> None:
    scanner = DlpScanner.for_policy(load_policy(default_policy_path()), b"salt", background=False)
    assert scanner is not None
    wait_until_built(scanner.engine)
    secret = gitleaks_token("github-pat")
    masked = scan_internal_error(scanner, event(secret))
    assert secret not in repr(masked)
    where = sorted(hit["location"] for hit in masked["dlp"]["hits"])
    assert where == ["detail.summary", "detail.target.host", "detail.traceback", "error"], where
    assert masked["detail"]["where"] == "evidence builder"


class Broken:
    """A scanner whose rules could not be built: every scan raises."""

    class clean_texts:  # (as DlpScanner names it)
        @staticmethod
        def scan(text: str) -> list[object]:
            raise RuntimeError("the DLP rules could not be compiled")


def test_what_rules_that_failed_to_build_cannot_scan_is_not_recorded() -> None:
    secret = gitleaks_token("github-pat")
    masked = scan_internal_error(Broken(), event(secret))  # type: ignore[arg-type]
    assert secret not in repr(masked)
    assert masked["error"].startswith("[not recorded: the DLP rules could not scan it")
    assert masked["detail"]["where"] == "evidence builder"
