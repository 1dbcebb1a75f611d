"""Attack: another local user connects to a `failcore run` proxy's socket before mitmproxy has loaded
(the socket is bound and the command started first, see failcore.quickstart), hoping the queued
connection skips the per-run credential. It must get 407 once the proxy is up, and nothing of it may
reach the upstream."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import orjson
import pytest

from tests.helpers import network_events, read_tape
from tests.quickstart_helpers import describe, run_gated
from tests.security.upstream import LoggingUpstream

pytestmark = pytest.mark.timeout(180)

# Knows the port (any local user can find it) but not the credential.
INTRUDER = textwrap.dedent(
    """
    import os, socket, sys
    from pathlib import Path
    from urllib.parse import urlsplit
    proxy = urlsplit(os.environ["HTTP_PROXY"])
    target = sys.argv[1] + "/intruder"
    sock = socket.create_connection((proxy.hostname, proxy.port), timeout=60)
    head = f"GET {target} HTTP/1.1\\r\\nHost: {urlsplit(target).netloc}\\r\\nConnection: close\\r\\n\\r\\n"
    sock.sendall(head.encode())
    Path(os.environ["GATE_MARKER"]).write_text("connected")
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    print(answer.split(b"\\r\\n", 1)[0].decode(), file=sys.stderr)
    sys.exit(0 if b" 407 " in answer.split(b"\\r\\n", 1)[0] else 5)
    """
)


def test_a_connection_queued_before_the_proxy_loaded_still_needs_the_credential(
    tmp_path: Path, plain_logging_upstream: LoggingUpstream
) -> None:
    result, tape = run_gated(tmp_path, sys.executable, "-c", INTRUDER, plain_logging_upstream.url)
    assert result.returncode == 0, describe(result)  # the intruder got 407
    assert plain_logging_upstream.received_bytes() == b""
    summary = orjson.loads(result.stdout)
    events = [e for e in read_tape(tape) if e.get("run") == summary["run"]]
    assert not [e for e in network_events(events) if e.get("status") == 200]
