"""Leak: `mitmdump -s addons/failcore_addon.py` without -q printed every full URL, query-string secrets
included, on its console (issue 9, "decide"). failcore turns mitmdump's default flow lines off; asking
for them (`--set flow_detail=2`) still works. Real mitmdump, real console output."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.helpers import network_events, read_tape
from tests.security.helpers import run_mitmdump_any_port, stop
from tests.security.upstream import LoggingUpstream

pytestmark = pytest.mark.timeout(180)

SECRET = "qs" + "-secret-" + "5f0c2a9e7b"
# Short enough that mitmdump's flow_detail 1 does not cut it (it trims URLs to the terminal width).


@pytest.mark.parametrize(("extra", "printed"), [((), False), (("--set", "flow_detail=2"), True)])
def test_query_string_secrets_stay_off_the_console(
    tmp_path: Path, plain_logging_upstream: LoggingUpstream, extra: tuple[str, ...], printed: bool
) -> None:
    process, log, port = run_mitmdump_any_port(tmp_path, *extra)
    try:
        with httpx.Client(proxy=f"http://127.0.0.1:{port}", trust_env=False, timeout=30) as client:
            assert client.get(f"{plain_logging_upstream.url}/?k={SECRET}").status_code == 200
    finally:
        stop(process)
    assert SECRET.encode() in plain_logging_upstream.received_bytes()
    assert (SECRET in log.read_text(errors="replace")) is printed
    (event,) = network_events(read_tape(tmp_path / "tape"))
    assert event["path"].startswith("/?k=")
