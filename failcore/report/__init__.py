"""`failcore report`: one self-contained HTML file describing a run, safe to open and to share.

Everything in a tape came from an agent or from the servers it talked to, so every recorded string is
hostile. The page is rendered from Jinja2 templates (failcore/templates/) with autoescape on and a
`finalize` that shows control and bidi characters as escapes, so no recorded value can become markup;
numbers placed in SVG geometry are computed here. The page has no script, and a Content-Security-Policy
that forbids scripts, network access and every style but the page's own stylesheet (pinned by hash).

The tape is read as a stream: counts cover the whole run, while every list the page shows (timeline,
waterfall, blocked, warned, failed, warnings, DLP hits, LLM calls, hosts) holds at most `max_events`
entries and the page says how many were left out. Bodies are left out unless asked for (`bodies=True`):
they are shown as the tape holds them (DLP hits already masked by the recorder), within a total budget,
and the file is then written 0600 like the tape.

Layout: collect.py reads the run, aggregates.py counts it per segment (cached beside the viewer's
index, so only the lines the page shows are parsed), filters.py formats values for the templates,
pictures.py computes the SVG geometry, page.py renders and writes the file.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from failcore.report.collect import (
        BODY_BUDGET,
        BODY_SHOW_CAP,
        DEFAULT_MAX_EVENTS,
        HostStats,
        LlmCallRow,
        ReportError,
        RunReport,
        collect_report,
        llm_call_row,
    )
    from failcore.report.page import (
        CSS,
        REPORT_FILE_MODE,
        REPORT_WITH_BODIES_MODE,
        content_security_policy,
        esc,
        render_report,
        write_report,
    )

# Loaded on first use (PEP 562): the count workers (countworker.py) import this package's counting
# modules without the page's templates.
_WHERE = {
    "BODY_BUDGET": "failcore.report.collect",
    "BODY_SHOW_CAP": "failcore.report.collect",
    "DEFAULT_MAX_EVENTS": "failcore.report.collect",
    "HostStats": "failcore.report.collect",
    "LlmCallRow": "failcore.report.collect",
    "ReportError": "failcore.report.collect",
    "RunReport": "failcore.report.collect",
    "collect_report": "failcore.report.collect",
    "llm_call_row": "failcore.report.collect",
    "CSS": "failcore.report.page",
    "REPORT_FILE_MODE": "failcore.report.page",
    "REPORT_WITH_BODIES_MODE": "failcore.report.page",
    "content_security_policy": "failcore.report.page",
    "esc": "failcore.report.page",
    "render_report": "failcore.report.page",
    "write_report": "failcore.report.page",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "BODY_BUDGET",
    "BODY_SHOW_CAP",
    "CSS",
    "DEFAULT_MAX_EVENTS",
    "REPORT_FILE_MODE",
    "REPORT_WITH_BODIES_MODE",
    "HostStats",
    "LlmCallRow",
    "ReportError",
    "RunReport",
    "collect_report",
    "content_security_policy",
    "esc",
    "llm_call_row",
    "render_report",
    "write_report",
]
