"""The run's own marks on the tape (run id, run_start, run_end, policy load details), shared by the proxy's
recorder and by `failcore run` when a command finishes before mitmproxy has loaded (failcore.quickstart).
No mitmproxy import here: the quick path must not pay for it."""

from __future__ import annotations

import os
import secrets
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from failcore import __version__

if TYPE_CHECKING:
    from collections.abc import Callable

    from failcore.dlp.model import Hit
    from failcore.policy.model import Policy


def new_run_id() -> str:
    return time.strftime("run-%Y%m%dT%H%M%SZ-", time.gmtime()) + secrets.token_hex(3)


def run_start_detail(
    policy: Policy | None,
    tape_dir: Path,
    replay_of: str | None = None,
    scan: Callable[[str], list[Hit]] | None = None,
) -> dict[str, Any]:
    """`scan` (the run's DLP engine's) masks a secret given on the command line; it may wait for the
    rules' compile, so the proxy calls this on the tape writer's thread."""
    from failcore.dlp.masking import mask_strings

    return {
        "version": __version__,
        "pid": os.getpid(),
        "argv": mask_strings(sys.argv[:32], scan),
        "policy": policy.source if policy else None,
        "policy_sha256": policy.sha256 if policy else None,
        "mode": policy.mode if policy else None,
        "tape": str(tape_dir),
        **({"replay_of": replay_of} if replay_of else {}),
    }


def run_end_detail(
    counts: dict[str, int], internal_errors: int, dropped: int, refused: int, duration_s: float
) -> dict[str, Any]:
    return {
        **counts,
        "internal_errors": internal_errors,
        "dropped": dropped,
        "refused_no_evidence": refused,
        "duration_s": round(duration_s, 3),
    }


def policy_detail(action: str, path: object, policy: Policy | None, problems: list[str]) -> dict[str, Any]:
    return {
        "action": action,
        "path": str(path),
        "ok": not problems,
        "problems": problems,
        "active_sha256": policy.sha256 if policy else None,
        "mode": policy.mode if policy else None,
        "default": policy.default if policy else None,
        "rules": len(policy.rules) if policy else 0,
    }
