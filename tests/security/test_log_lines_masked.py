"""Attack: put a secret where a log line quotes it, and read the proxy's terminal output kept on disk.

A terminal's output is often a file (the systemd journal, `mitmdump … > proxy.log`, a CI log). mitmproxy
logs the raw bytes of a request it cannot read ("127.0.0.1:…: Bad HTTP request line: b'GET /?key=…'",
"Invalid header line: b'…'", "Client closed connection before completing request headers: b'…'"), and
failcore's own lines quote hosts and SNIs (a blocked SNI fronting) and exceptions: each printed a key
there in clear, and an ESC sequence in quoted text raw. With failcore loaded the lines are still
printed, masked with the policy's DLP rules and escaped."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import pytest

from failcore.logmask import LogMask
from tests.security.helpers import (
    AWS_KEY_ID,
    get_through_tunnel,
    gitleaks_token,
    read_head,
    run_mitmdump_any_port,
    stop,
)
from tests.security.upstream import LoggingUpstream

# Blocks every subdomain of blocked.example: an SNI naming one is refused (and logged) as SNI fronting.
POLICY = "version: 1\nmode: enforce\nrules: [{id: no-blocked, host: '*.blocked.example', action: BLOCK}]\n"


def send_and_close(port: int, data: bytes, *, answer: bool) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        if not answer:
            return b""
        return read_head(s)


def wait_for(log: Path, text: bytes, seconds: float = 30) -> bytes:
    deadline = time.monotonic() + seconds
    while text not in (out := log.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return out


def test_mitmproxy_log_lines_quoting_a_malformed_request_are_masked(tmp_path: Path) -> None:
    # gitleaks' own true-positive fixtures (tests/data/conformance/dlp, MIT), one per line kind.
    line_key = gitleaks_token("openai-api-key")
    header_key = gitleaks_token("github-pat")
    partial_key = gitleaks_token("stripe-access-token")
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nmode: observe\n")
    process, log, port = run_mitmdump_any_port(tmp_path, "--set", f"failcore_policy={policy}")
    try:
        # A request line mitmproxy cannot read (a space in the target): 400, and the line is logged.
        bad_line = f"GET /?key={line_key} junk HTTP/1.1\r\nHost: example.com\r\n\r\n".encode()
        assert send_and_close(port, bad_line, answer=True).startswith(b"HTTP/1.1 400")
        # A header line without a colon.
        bad_header = f"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nx-note {header_key}\r\n\r\n"
        assert send_and_close(port, bad_header.encode(), answer=True).startswith(b"HTTP/1.1 400")
        # A head the client never finishes.
        unfinished = f"GET http://example.com/?key={partial_key} HTTP/1.1\r\nHost: example.com\r\n".encode()
        send_and_close(port, unfinished, answer=False)
        wait_for(log, b"before completing request headers")
    finally:
        stop(process)
    out = log.read_bytes().decode("utf-8", "replace")
    lines = out.splitlines()
    bad_lines = [line for line in lines if "Bad HTTP request line: b'GET /?key=" in line]
    header_lines = [line for line in lines if "Invalid header line: b'x-note " in line]
    unfinished_lines = [
        line for line in lines if "before completing request headers: b'GET http://ex" in line
    ]
    assert bad_lines and header_lines and unfinished_lines, out
    # Masked as the tape masks: the key's first and last characters around an ellipsis.
    assert f"{line_key[:4]}…{line_key[-4:]}" in bad_lines[0], bad_lines
    assert f"{header_key[:4]}…{header_key[-4:]}" in header_lines[0], header_lines
    assert f"{partial_key[:4]}…{partial_key[-4:]}" in unfinished_lines[0], unfinished_lines
    for key in (line_key, header_key, partial_key):
        assert key not in out, f"{key[:6]}… in clear in mitmdump's output"


def test_failcore_log_line_quoting_a_blocked_sni_is_masked(
    start_proxy,
    policy_file,
    logging_upstream: LoggingUpstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """gate.py's "blocked SNI fronting" line quotes the SNI the client offered: a key put in it (here
    gitleaks' AWS key shape, lower-cased as a host name is) was printed in clear."""
    proxy = start_proxy(policy_file(POLICY), upstream_ca=logging_upstream.ca_path)
    caplog.set_level(logging.INFO, logger="failcore")
    sni = f"{AWS_KEY_ID.lower()}.blocked.example"
    answer = get_through_tunnel(proxy, logging_upstream, sni, check_hostname=False)
    assert answer.startswith(b"HTTP/1.1 403"), answer
    [line] = [r.getMessage() for r in caplog.records if "blocked SNI fronting" in r.getMessage()]
    assert ".blocked.example" in line and "CONNECT localhost" in line, line
    assert AWS_KEY_ID.lower() not in line and AWS_KEY_ID not in line, line


class Recorded(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_failcore_log_lines_escape_control_characters_and_mask_exceptions() -> None:
    """Recorded content is hostile: a host with an ESC sequence is shown escaped, never raw, and an
    exception's traceback (logger.exception) is masked like the line (no DLP rules here: the escaping
    and a credential the record carries as an echo)."""
    logger = logging.getLogger("failcore")
    handler = Recorded()
    logger.addHandler(handler)
    mask = LogMask(lambda: None)
    mask.install()
    try:
        logger.warning(
            "failcore cut the stream of flow %s to %s (%s, %d B)", "f1", "evil\x1b[2J.example", "dlp", 7
        )
        try:
            raise ValueError("bad cookie: session=opaque-cookie-value-0123456789\x07")
        except ValueError:
            logger.exception(
                "failcore could not cut %s",
                "flow\r\n[00:00:00] forged line",
                extra={"failcore_echoes": ([b"opaque-cookie-value-0123456789"], b"salt")},
            )
    finally:
        mask.uninstall()
        logger.removeHandler(handler)
    first, second = handler.lines
    assert first == "failcore cut the stream of flow f1 to evil\\x1b[2J.example (dlp, 7 B)"
    assert "\x1b" not in first and "\x07" not in second and "\r" not in second
    assert "\n[" not in second
    # A newline in quoted text stays one, but what follows it is indented: no forged record.
    forged = "failcore could not cut flow\\x0d\n  [00:00:00] forged line\n  Traceback"
    assert second.startswith(forged), second
    assert "opaque-cookie-value" not in second and "bad cookie: session=[redacted " in second, second


def test_while_the_dlp_rules_compile_a_quoting_mitmproxy_line_is_withheld_not_shown() -> None:
    """mitmproxy's lines come with traffic and never wait for a compiling engine: the quoted part is
    withheld. A line of another kind is left as it is."""
    from types import SimpleNamespace

    from failcore.dlp.pending import PendingEngine

    compiling = SimpleNamespace(engine=PendingEngine(lambda: None, start=False))  # type: ignore[arg-type, return-value]
    logger = logging.getLogger("mitmproxy.proxy.server")
    handler = Recorded()
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    mask = LogMask(lambda: compiling)  # type: ignore[arg-type, return-value]
    mask.install()
    key = gitleaks_token("github-pat")
    try:
        line = f"GET /?key={key} x HTTP/1.1".encode()
        logger.info(f"127.0.0.1:50000: Bad HTTP request line: {line!r}")  # noqa: G004 (as mitmproxy logs it)
        logger.info("client connect")
    finally:
        mask.uninstall()
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert handler.lines == [
        "127.0.0.1:50000: Bad HTTP re[withheld from the log: the DLP rules could not scan it]",
        "client connect",
    ]


def test_a_mask_left_by_an_addon_never_done_does_not_mask_first() -> None:
    """The last loaded addon's mask is the one on the loggers: a stale one (its addon never got `done`,
    its policy's rules still compiling) took the record first, and left this one nothing to mask."""
    from types import SimpleNamespace

    from failcore.dlp.pending import PendingEngine

    compiling = SimpleNamespace(engine=PendingEngine(lambda: None, start=False))
    logger = logging.getLogger("mitmproxy.proxy.server")
    handler = Recorded()
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    stale = LogMask(lambda: compiling)  # type: ignore[arg-type, return-value]
    stale.install()
    mask = LogMask(lambda: None)
    mask.install()
    try:
        logger.info("127.0.0.1:50000: Bad HTTP request line: %r", b"GET /x\x1b HTTP/1.1")
    finally:
        mask.uninstall()
        stale.uninstall()
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert handler.lines == ["127.0.0.1:50000: Bad HTTP request line: b'GET /x\\x1b HTTP/1.1'"], handler.lines
