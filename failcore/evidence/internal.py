"""An internal_error event is masked like an exchange's, off the hooks.

The exception it quotes can quote what failed to be handled: a header, a URL, body bytes (a ValueError
from parsing a malformed header with an API key in it). Its strings are masked with the DLP rules and
the echoes of its exchange's credentials (failcore.evidence.dlp.scan_internal_error) by the evidence
backlog when the event loop is idle, or on the tape writer's thread while the DLP rules still compile.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from mitmproxy import flow as mflow
from mitmproxy import http

from failcore.dlp.pending import engine_ready
from failcore.evidence.dlp import Echoes, scan_internal_error
from failcore.evidence.redact import credential_values
from failcore.evidence.scanworker import BuildFirst

if TYPE_CHECKING:
    from failcore.dlp.scanner import DlpScanner


def flow_echoes(flow: mflow.Flow | None, redact: frozenset[str], salt: bytes) -> Echoes:
    """The credentials an HTTP flow's headers carry (request's, then response's), or None."""
    if not isinstance(flow, http.HTTPFlow):
        return None
    response = flow.response
    fields = (*flow.request.headers.fields, *(response.headers.fields if response is not None else ()))
    secrets = credential_values(fields, redact)
    return (secrets, salt) if secrets else None


def internal_error_item(
    scanner: DlpScanner | None, event: dict[str, Any], echoes: Echoes = None
) -> dict[str, Any] | Callable[[], dict[str, Any] | BuildFirst]:
    """What to record: the event as it is when there is nothing to mask it with; otherwise a builder
    that masks it (the evidence backlog calls it when the loop is idle), or hands that to the tape
    writer's thread while the DLP rules still compile (a scan would wait for them)."""
    if scanner is None and echoes is None:
        return event
    scan = partial(scan_internal_error, scanner, event, echoes)

    def build() -> dict[str, Any] | BuildFirst:
        if scanner is not None and not engine_ready(scanner.engine):
            return BuildFirst(scan)
        return scan()

    return build
