"""What failcore's proxy prints: QuietConsole keeps mitmdump's per-request lines off unless asked for;
LogMasking masks and escapes the log lines that quote traffic (failcore.logmask).

At its default `flow_detail` of 1, mitmdump prints every request's full URL, query string included,
so an API key passed as `?key=…` ends up in a terminal scroll-back, a CI log or the journal, in
clear, while the tape redacts it. When failcore loads and finds that default it sets `flow_detail`
to 0 (as `-q` does for flows) and says so; `--set flow_detail=2` (or `-v`) shows flows on purpose.
"""

from __future__ import annotations

import logging
from typing import Any

from mitmproxy import ctx

from failcore.logmask import LogMask
from failcore.proxy.session import Session

logger = logging.getLogger("failcore")

MITMDUMP_DEFAULT = 1


class QuietConsole:
    def __init__(self) -> None:
        self.checked = False

    def configure(self, updated: set[str]) -> None:
        # Only the value found when failcore loads: a level chosen later, at run time, is kept.
        if self.checked or "flow_detail" not in updated:
            return
        self.checked = True
        if ctx.options.flow_detail == MITMDUMP_DEFAULT:
            ctx.options.flow_detail = 0
            logger.info(
                "failcore: mitmdump's per-request lines are off (they print full URLs, query strings "
                "included); the tape records every exchange. --set flow_detail=2 shows them"
            )


class LogMasking:
    """While failcore is loaded, failcore's log lines and mitmproxy's that quote client or server bytes
    are masked with the active policy's DLP rules and escaped (failcore.logmask.LogMask)."""

    def __init__(self, session: Session) -> None:
        self.mask = LogMask(lambda: session.dlp)

    def load(self, loader: Any) -> None:
        self.mask.install()

    def done(self) -> None:
        self.mask.uninstall()
