"""`failcore report`: a self-contained, script-free HTML report whose recorded content stays inert text."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import ssl
import stat
import subprocess
import tempfile
import threading
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import pytest

from failcore.cli import main
from failcore.report import collect_report, content_security_policy, esc, render_report
from failcore.tape.keys import load_or_create_signing_key
from failcore.tape.writer import TapeWriter
from tests.helpers import network_events, proxied_client, read_tape, skip_or_fail
from tests.report_helpers import (
    SECRET,
    cassette_event,
    lifecycle,
    llm_block,
    load_cassettes,
    network,
)

PAYLOADS = (
    "<script>window.__pwned=1;document.title='PWNED'</script>",
    '"><img src=x onerror="window.__pwned=1;document.title=\'PWNED\'">',
    "javascript:window.__pwned=1",
    "</title><script>window.__pwned=1;document.title='PWNED'</script>",
    "'><svg/onload=window.__pwned=1>",
    "</style><style>body{display:none}</style>",
    '<a href="javascript:window.__pwned=1">click</a>',
)
ALLOWED_TAGS = frozenset(
    [
        "html",
        "head",
        "meta",
        "title",
        "style",
        "body",
        "h1",
        "h2",
        "p",
        "a",
        "code",
        "div",
        "b",
        "span",
        "table",
        "thead",
        "tbody",
        "tr",
        "th",
        "td",
        "ul",
        "li",
        "details",
        "summary",
        "svg",
        "g",
        "title",
        "rect",
        "line",
        "text",
        "i",
        "footer",
        "figure",
        "figcaption",
        "h4",
        "pre",
    ]
)


class DomAudit(HTMLParser):
    """Every element, attribute and text node of a page, to prove nothing recorded became markup."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str, str]] = []
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend((tag, name, value or "") for name, value in attrs)
        self.elements.append((tag, {name: value or "" for name, value in attrs}))
        self._in_title = tag == "title" and not self.title

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_title:
            self.title += data

    @property
    def all_text(self) -> str:
        return "".join(self.text)


def audit(page: str) -> DomAudit:
    parser = DomAudit()
    parser.feed(page)
    parser.close()
    return parser


def assert_inert(page: str) -> DomAudit:
    dom = audit(page)
    assert set(dom.tags) <= ALLOWED_TAGS, set(dom.tags) - ALLOWED_TAGS
    assert "script" not in dom.tags and "img" not in dom.tags
    assert dom.tags.count("style") == 1
    for tag, name, value in dom.attrs:
        assert not name.startswith("on"), (tag, name, value)
        assert name not in ("src", "style", "srcdoc", "action", "formaction"), (tag, name, value)
        if name == "href":
            # In-page links only: a section, or an event by its number.
            assert re.fullmatch(r"#[a-z]+|#ev-[0-9]+", value), value
    return dom


# ---------------------------------------------------------------- synthetic tapes


def write_events(tape: Path, confdir: Path, events: list[dict[str, Any]]) -> None:
    key = load_or_create_signing_key(confdir)
    with TapeWriter(tape, signing_key=key, run_id="writer", checkpoint_every=4) as writer:
        for ev in events:
            assert writer.submit(ev)


def plain_run(run: str) -> list[dict[str, Any]]:
    return [
        lifecycle("run_start", run, 1_700_000_000.0, policy="/etc/failcore/policy.yaml", mode="observe"),
        network(1, run, target={"host": "example.org", "port": 443, "scheme": "https"}, summary="GET /"),
        network(
            2,
            run,
            decision="WARN",
            would_block=True,
            rule="no-pastebin",
            reason="paste sites leak data",
            target={"host": "pastebin.test", "port": 443, "scheme": "https"},
            dlp={
                "hits": [
                    {
                        "rule": "openai-api-key",
                        "severity": "critical",
                        "category": "credential",
                        "location": "request.body:/api_key",
                        "preview": "sk-l…cdef",
                        "fingerprint": "hmac-sha256:1234abcd",
                        "action": "WARN",
                    }
                ]
            },
            warnings=[{"reason": "dlp", "message": "openai-api-key in request.body:/api_key"}],
        ),
        network(
            3,
            run,
            decision="BLOCK",
            outcome="BLOCKED",
            status=403,
            rule="deny-metadata",
            reason="cloud metadata endpoint",
            target={"host": "169.254.169.254", "port": 80, "scheme": "http"},
        ),
        network(4, run, outcome="FAIL", fail_reason="upstream_status", status=503, error="upstream said 503"),
        lifecycle("run_end", run, 1_700_000_010.0),
    ]


@pytest.fixture
def tape(tmp_path: Path, confdir: Path) -> Path:
    return tmp_path / "tape"


def test_report_without_llm_calls(tape: Path, confdir: Path) -> None:
    write_events(tape, confdir, plain_run("run-plain"))
    report = collect_report(tape, "run-plain")
    assert (report.summary.requests, report.summary.blocked, report.summary.warned) == (4, 1, 1)
    assert report.summary.failed == 1 and report.summary.mode == "observe"
    assert [e["seq"] for e in report.blocked] == [4]
    assert len(report.dlp_hits) == 1 and len(report.warnings) == 1
    assert report.llm_calls == []
    page = render_report(report)
    dom = assert_inert(page)
    text = dom.all_text
    assert "No LLM calls recorded in this run." in text
    # The waterfall is the only picture: no LLM charts without LLM calls.
    assert dom.tags.count("svg") == 1 and "figcaption" in dom.tags
    assert ("aria-label", "waterfall of exchanges") in [(n, v) for t, n, v in dom.attrs if t == "svg"]
    for expected in ("deny-metadata", "cloud metadata endpoint", "169.254.169.254:80", "upstream said 503"):
        assert expected in text
    assert "sk-l…cdef" in text and "hmac-sha256:1234abcd" in text
    assert "OK" in text and "chain intact" in text
    hosts = {h.host: h for h in report.hosts.values()}
    assert hosts["pastebin.test:443"].warned == 1 and hosts["api.example.test:443"].failed == 1
    # Bodies are never copied into a report meant to be shared.
    assert SECRET not in page


def test_report_with_llm_calls(tape: Path, confdir: Path) -> None:
    run = "run-llm"
    events = [
        lifecycle("run_start", run, 1_700_000_000.0, policy="p.yaml", mode="enforce"),
        network(1, run, llm=llm_block("gpt-4o-mini", 1200, 300, 0.00036)),
        network(2, run, llm=llm_block("gpt-4o", 800, 200, 0.004)),
        network(3, run, llm=llm_block("mystery-model", 50, 5, None)),
        network(4, run, llm=llm_block("gpt-4o", None, None, None)),
        network(5, run, summary="GET /not-an-llm"),
    ]
    write_events(tape, confdir, events)
    report = collect_report(tape, run)
    assert len(report.llm_calls) == 4
    assert (report.tokens_in, report.tokens_out) == (2050, 505)
    assert report.cost_usd == pytest.approx(0.00436)
    assert report.unpriced_calls == 2
    page = render_report(report)
    assert_inert(page)
    # The LLM section holds two charts besides the waterfall above it.
    dom = audit(page[page.index('<h2 id="llm">') :])
    assert dom.tags.count("svg") == 2
    # Two stacked segments per call in the token chart, one per call in the cost chart.
    assert dom.tags.count("rect") == 4 * 2 + 4
    heights = [float(v) for tag, name, v in dom.attrs if tag == "rect" and name == "height"]
    assert max(heights) == pytest.approx(120.0)
    text = audit(page).all_text
    assert "2,050 in, 505 out" in text
    assert "$0.004360 (+2 call(s) without a price)" in text
    assert "- (unpriced_model)" in text and "unknown" in text
    assert f"seq {report.llm_calls[0].seq} gpt-4o-mini: 1,200 in, 300 out" in text


def test_hostile_strings_in_every_field_stay_text(tape: Path, confdir: Path) -> None:
    evil = " | ".join(PAYLOADS)
    run = "run-" + PAYLOADS[3]
    hit = {
        "rule": evil,
        "severity": "high",
        "category": evil,
        "location": evil,
        "preview": evil,
        "fingerprint": evil,
        "action": "BLOCK",
    }
    events = [
        lifecycle("run_start", run, 1_700_000_000.0, policy=evil, mode=evil),
        network(
            1,
            run,
            target={"host": evil, "port": 443, "scheme": "https"},
            method=evil,
            path=evil,
            summary=evil,
            decision="WARN",
            rule=evil,
            reason=evil,
            request={"http_version": "HTTP/1.1", "headers": [[evil, evil]], "body": None},
            llm=llm_block(evil, 10, 10, 0.5) | {"provider": evil, "api": evil, "finish_reason": evil},
            dlp={"hits": [hit]},
            warnings=[{"reason": "dlp", "message": evil}],
        ),
        network(2, run, outcome="FAIL", fail_reason="connect_error", error=evil, decision="BLOCK"),
        {
            "kind": "internal_error",
            "v": 1,
            "run": run,
            "ts_start": 1_700_000_003.0,
            "ts_end": None,
            "fail_reason": "internal_error",
            "error": evil,
        },
    ]
    write_events(tape, confdir, events)
    page = render_report(collect_report(tape, run))
    dom = assert_inert(page)
    assert dom.title == f"failcore report: {run}"
    # Each field reaches the page, literally, as text.
    assert dom.all_text.count(evil) >= 15
    assert page.index('http-equiv="Content-Security-Policy"') < page.index("<title>")


def test_trailers_are_shown_after_the_body_and_stay_text(tape: Path, confdir: Path) -> None:
    """A message's trailers (HTTP/2, gRPC; recorded since schema v2) follow its body on the page, as
    hostile as any recorded header: markup and control characters stay inert text."""
    evil = " | ".join(PAYLOADS)
    run = "run-t"
    body = {
        "size": 2,
        "cap": 1 << 20,
        "sha256": "0" * 64,
        "sha256_of": "decoded",
        "truncated": False,
        "text": "{}",
    }
    request = {
        "http_version": "HTTP/2.0",
        "headers": [["content-type", "application/grpc"]],
        "body": body,
        "trailers": [["x-request-checksum", "[redacted 0123456789ab]"]],
    }
    response = request | {
        "trailers": [["grpc-status", "0"], [f"x-{evil}\x1b]0;pwned\x07", f"{evil}\x1b[31m"]]
    }
    write_events(tape, confdir, [network(1, run, request=request, response=response)])
    page = render_report(collect_report(tape, run))
    dom = assert_inert(page)
    text = dom.all_text
    assert "x-request-checksum[redacted 0123456789ab]" in text
    assert "grpc-status0" in text
    assert text.count(f"x-{evil}\\x1b]0;pwned\\x07") == 1 and text.count(f"{evil}\\x1b[31m") == 1
    assert "\x1b" not in page and "\x07" not in page
    # After the message's body, under their own caption.
    request_body = text.index("on the wire")
    response_body = text.index("on the wire", request_body + 1)
    assert (
        request_body < text.index("trailers", request_body) < text.index("x-request-checksum") < response_body
    )
    assert response_body < text.index("trailers", response_body) < text.index("grpc-status")


def test_esc_covers_text_and_attribute_contexts() -> None:
    assert esc("\"><x a='b'>&") == "&quot;&gt;&lt;x a=&#x27;b&#x27;&gt;&amp;"
    # Bidi overrides and terminal escapes are shown, not obeyed.
    assert esc("a\u202eb\x1bc") == "a\\u202eb\\x1bc"
    assert "script-src 'none'" in content_security_policy()
    assert "unsafe-inline" not in content_security_policy()


def test_chain_break_and_truncation_are_stated(tape: Path, confdir: Path) -> None:
    write_events(tape, confdir, plain_run("run-x"))
    segment = sorted(tape.glob("seg-*.jsonl"))[0]
    lines = segment.read_bytes().splitlines(keepends=True)
    intact = b"".join(lines)
    segment.write_bytes(intact + b'{"prev":"')
    text = audit(render_report(collect_report(tape, "run-x"))).all_text
    assert f"OK, truncated at {segment.name}:{len(lines) + 1}" in text
    edited = next(i for i, line in enumerate(lines) if b"example.org" in line)
    lines[edited] = lines[edited].replace(b"example.org", b"example.net")
    segment.write_bytes(b"".join(lines))
    text = audit(render_report(collect_report(tape, "run-x"))).all_text
    assert f"BROKEN at {segment.name}:{edited + 1}" in text
    assert "Nothing after the break can be trusted" in text


# ---------------------------------------------------------------- CLI


def test_cli_last_unknown_run_and_file_mode(
    tape: Path, confdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_events(tape, confdir, plain_run("run-first") + plain_run("run-second"))
    out = tmp_path / "shared" / "report.html"
    out.parent.mkdir()
    old_umask = os.umask(0o077)
    try:
        assert main(["report", "--last", "--tape", str(tape), "-o", str(out)]) == 0
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    page = out.read_text()
    assert "run-second" in page and "run-first" not in page
    assert SECRET not in page
    assert "Bearer [redacted hmac-sha256:" in audit(page).all_text
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]
    assert "written to" in capsys.readouterr().out

    assert main(["report", "run-first", "--tape", str(tape), "-o", str(out)]) == 0
    assert "run-first" in out.read_text()

    before = out.read_bytes()
    assert main(["report", "run-nope", "--tape", str(tape), "-o", str(out)]) == 2
    assert "no run 'run-nope'" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(["report", "--last", "--tape", str(tmp_path / "missing"), "-o", str(out)]) == 1
    assert "no tape at" in capsys.readouterr().err


# ---------------------------------------------------------------- hostile traffic in a real browser

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=3000",
)


CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def chromium_path() -> str:
    """Any installed Chromium runs the browser tests (FAILCORE_CHROMIUM names one explicitly); without
    one they skip with the reason shown, and fail in CI (CI or FAILCORE_REQUIRE_CHROMIUM set)."""
    found = os.environ.get("FAILCORE_CHROMIUM") or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if found:
        return found
    skip_or_fail(
        f"no Chromium found (looked for {', '.join(CHROMIUM_NAMES)} on PATH and FAILCORE_CHROMIUM; "
        "Debian package: chromium)",
        required_by=("CI", "FAILCORE_REQUIRE_CHROMIUM"),
    )


def chromium(page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="failcore-chromium-") as profile:
        cmd = [chromium_path(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_browser_harness_detects_script(tmp_path: Path) -> None:
    """The checks below would see a script that ran: a page without the report's defences proves it."""
    page = tmp_path / "control.html"
    page.write_text(f"<html><head><title>calm</title></head><body><p>x</p>{PAYLOADS[1]}</body></html>")
    dom = audit(chromium(page, "--dump-dom").stdout)
    assert dom.title == "PWNED" and "img" in dom.tags


def raw_request(
    proxy: Any, upstream: Any, method: str, path: str, headers: dict[str, str], body: bytes
) -> int:
    """Send a request target and headers exactly as given (httpx would percent-encode the path)."""
    ctx = ssl.create_default_context(cafile=str(proxy.ca_cert))
    conn = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=ctx, timeout=30)
    conn.set_tunnel(upstream.host, upstream.port)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_hostile_traffic_report_is_inert_in_chromium(
    start_proxy: Any, upstream: Any, policy_file: Any, tmp_path: Path
) -> None:
    policy = policy_file(
        "version: 1\nmode: enforce\ndefault: ALLOW\nrules:\n"
        "  - id: warn-echo\n    path: /echo\n    action: WARN\n"
        f"    reason: {orjson_str(PAYLOADS[0])}\n"
        "  - id: block-status\n    path: /status/*\n    action: BLOCK\n"
        f"    reason: {orjson_str(PAYLOADS[1])}\n"
    )
    run = "run-" + PAYLOADS[3]
    tape = tmp_path / "tape"
    proxy = start_proxy(policy, run_id=run, tape=tape)
    with proxied_client(proxy) as client:
        for payload in PAYLOADS:
            r = client.post(
                f"{upstream.url}/echo",
                params={"q": payload},
                headers={"x-evil": payload, "referer": payload, "authorization": f"Bearer {SECRET}"},
                content=payload.encode(),
            )
            assert r.status_code == 200
        client.get(f"{upstream.url}/status/500", headers={"x-evil": PAYLOADS[2]})
        client.post(
            f"{upstream.url}/v1/chat/completions",
            json={"model": PAYLOADS[0], "messages": [{"role": "user", "content": PAYLOADS[1]}]},
        )
    raw_paths = [p for p in PAYLOADS if " " not in p]
    for payload in raw_paths:
        status = raw_request(
            proxy, upstream, "POST", f"/echo?x={payload}", {"X-Raw": payload}, payload.encode()
        )
        assert status == 200
    proxy.flush()
    recorded = network_events(read_tape(tape))
    assert any(e["path"] == f"/echo?x={PAYLOADS[0]}" for e in recorded), "raw path did not reach the tape"
    assert any(e["decision"] == "BLOCK" for e in recorded)
    proxy.stop()

    out = tmp_path / "report.html"
    assert main(["report", "--last", "--tape", str(tape), "-o", str(out)]) == 0
    page = out.read_text()
    static = assert_inert(page)
    assert SECRET not in page
    assert static.title == f"failcore report: {run}"

    result = chromium(out, "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = audit(result.stdout)
    # Nothing ran: a running payload would have renamed the page.
    assert dom.title == f"failcore report: {run}"
    # Nothing recorded became an element: the live DOM has only the report's own kinds of element.
    assert set(dom.tags) <= ALLOWED_TAGS and "script" not in dom.tags and "img" not in dom.tags
    assert not [a for a in dom.attrs if a[1].startswith("on") or a[1] in ("src", "style")]
    # Payloads are there, literally, as text (headers, raw paths, rule reasons, run id).
    text = dom.all_text
    for payload in PAYLOADS:
        assert payload in text, payload
    for payload in raw_paths:
        assert f"/echo?x={payload}" in text
    # The CSP was never exercised (nothing tried to run or load) and the stylesheet's hash matched.
    assert "Content Security Policy" not in result.stderr, result.stderr[-2000:]

    shot = tmp_path / "report.png"
    result = chromium(out, f"--screenshot={shot}", "--window-size=1280,2000")
    assert result.returncode == 0, result.stderr[-2000:]
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000
    shutil.copyfile(shot, "/tmp/failcore-report.png")


def orjson_str(value: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return orjson.dumps(value).decode()


# ---------------------------------------------------------------- pictures and conversations


def llm_traffic(client: Any, upstream: Any, hostile: str) -> None:
    """The three provider APIs the stand-in speaks, streamed and not, with tools and tool results."""
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Weather in Paris? " + hostile}]}
    client.post(f"{upstream.url}/v1/chat/completions", json=chat | {"tools": [tool], "stream": True})
    history = [
        *chat["messages"],
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": tool["function"]}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18 C and sunny " + hostile},
    ]
    client.post(
        f"{upstream.url}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": history},
        headers={"x-standin-reply": "It is 18 C. " + hostile},
    )
    client.post(
        f"{upstream.url}/v1/responses",
        json={
            "model": "gpt-4o",
            "instructions": "Be brief.",
            "input": "Summarise " + hostile,
            "stream": True,
        },
    )
    client.post(
        f"{upstream.url}/v1/messages",
        json={
            "model": "claude-3-5-haiku-latest",
            "max_tokens": 100,
            "system": "You are terse.",
            "messages": [{"role": "user", "content": "Hello Claude " + hostile}],
            "stream": True,
        },
        headers={"x-standin-reply": "Hello back " + hostile},
    )


def test_llm_conversations_and_waterfall_in_chromium(
    start_proxy: Any, upstream: Any, policy_file: Any, tmp_path: Path
) -> None:
    hostile = PAYLOADS[0] + PAYLOADS[1]
    policy = policy_file(
        "version: 1\nmode: enforce\ndefault: ALLOW\nrules:\n"
        "  - id: block-status\n    path: /status/*\n    action: BLOCK\n    reason: no status pages\n"
    )
    tape = tmp_path / "tape"
    proxy = start_proxy(policy, run_id="run-llm-e2e", tape=tape)
    with proxied_client(proxy) as client:
        llm_traffic(client, upstream, hostile)
        assert client.get(f"{upstream.url}/status/200").status_code == 403
        client.get(f"{upstream.url}/sse")
    proxy.flush()
    proxy.stop()

    out = tmp_path / "report.html"
    assert main(["report", "--last", "--bodies", "--tape", str(tape), "-o", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    page = out.read_text()
    assert_inert(page)

    result = chromium(out, "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = audit(result.stdout)
    assert dom.title == "failcore report: run-llm-e2e"
    assert set(dom.tags) <= ALLOWED_TAGS and "script" not in dom.tags and "img" not in dom.tags
    text = dom.all_text
    # Each conversation is there as text: messages, the tool offered and called, the tool's result and
    # the answers, streamed ones reassembled from their SSE events.
    for expected in (
        "Weather in Paris? " + hostile,
        "18 C and sunny " + hostile,
        "It is 18 C. " + hostile,
        "Summarise " + hostile,
        "Be brief.",
        "You are terse.",
        "Hello back " + hostile,
        "(streamed answer reassembled)",
        "lookup",
        "failcore show run-llm-e2e --event ",
    ):
        assert expected in text, expected
    assert "failcore show RUN --event SEQ" not in text
    # The waterfall draws each exchange once and marks the blocked one.
    waterfall = audit(page[page.index('<svg class="wf"') : page.index("</svg>")])
    drawn = [v for t, n, v in waterfall.attrs if t == "a" and n == "href"]
    recorded = network_events(read_tape(tape))
    assert drawn == [f"#ev-{e['seq']}" for e in recorded]
    assert "✕ blocked" in waterfall.all_text
    assert "Content Security Policy" not in result.stderr, result.stderr[-2000:]

    shot = tmp_path / "report.png"
    result = chromium(out, f"--screenshot={shot}", "--window-size=1400,2400")
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    keep = os.environ.get("FAILCORE_REPORT_KEEP")
    if keep:
        shutil.copyfile(out, Path(keep) / "report-llm.html")
        shutil.copyfile(shot, Path(keep) / "report-llm.png")


def test_real_provider_bodies_read_as_conversations(tape: Path, confdir: Path) -> None:
    run = "run-cassettes"
    cassettes = load_cassettes()
    events = [cassette_event(i + 1, run, ex, api) for i, (ex, api, _) in enumerate(cassettes)]
    write_events(tape, confdir, events)

    report = collect_report(tape, run, bodies=True)
    assert len(report.conversations) == len(cassettes)
    page = render_report(report)
    assert_inert(page)
    # Each event's own details hold its conversation.
    for (_, _, expected), ev in zip(
        cassettes, [e for e in report.timeline if e["kind"] == "network"], strict=True
    ):
        start = page.index(f'id="ev-{ev["seq"]}"')
        section = audit(page[start : page.index("</details>", start)]).all_text
        assert "Conversation" in section
        for snippet in expected:
            assert snippet in section, (ev["seq"], snippet)
    streamed = [c for c in report.conversations.values() if c.streamed]
    assert len(streamed) == 4
    assert all(not c.notes for c in report.conversations.values())

    # Without --bodies nothing of the bodies reaches the page.
    plain = render_report(collect_report(tape, run))
    assert "Why did the developer love OpenTelemetry?" not in plain and "Add 5 and 7" not in plain
    assert "failcore report --bodies" in audit(plain).all_text


def test_hostile_real_bodies_stay_text(tape: Path, confdir: Path) -> None:
    """Real exchanges with every string replaced by payloads: the conversation view shows them inert."""
    run = "run-hostile-bodies"
    evil = " | ".join(PAYLOADS)

    def poison(value: Any) -> Any:
        if isinstance(value, str):
            return value + evil
        if isinstance(value, dict):
            return {k: poison(v) for k, v in value.items()}
        if isinstance(value, list):
            return [poison(v) for v in value]
        return value

    events = []
    for i, (exchange, api, _) in enumerate(load_cassettes()):
        request = orjson.loads(exchange["request_body"])
        keep = {k: request[k] for k in ("stream", "max_tokens") if k in request}
        exchange = exchange | {"request_body": orjson.dumps(poison(request) | keep).decode()}
        if not exchange["response_body"].lstrip().startswith(("data:", "event:")):
            exchange["response_body"] = orjson.dumps(poison(orjson.loads(exchange["response_body"]))).decode()
        events.append(cassette_event(i + 1, run, exchange, api))
    write_events(tape, confdir, events)
    page = render_report(collect_report(tape, run, bodies=True))
    dom = assert_inert(page)
    assert dom.all_text.count(evil) >= 20


def test_waterfall_places_exchanges_in_time(tape: Path, confdir: Path) -> None:
    run = "run-waterfall"
    t0 = 1_700_000_000.0
    events = [
        network(1, run, ts_start=t0, ts_end=t0 + 1.0, latency_ms=1000.0, ttfb_ms=250.0),
        network(
            2,
            run,
            ts_start=t0 + 0.5,
            ts_end=t0 + 2.0,
            latency_ms=1500.0,
            ttfb_ms=500.0,
            stream={
                "chunks": [[0.0, 10], [400.0, 10], [900.0, 10]],
                "chunk_count": 3,
                "chunks_truncated": False,
            },
        ),
        network(3, run, ts_start=t0 + 1.0, ts_end=t0 + 1.0, decision="BLOCK", outcome="BLOCKED", status=403),
        network(4, run, ts_start=t0 + 1.5, ts_end=t0 + 1.9, outcome="FAIL", fail_reason="upstream_status"),
    ]
    write_events(tape, confdir, events)
    page = render_report(collect_report(tape, run))
    svg = page[page.index('<svg class="wf"') : page.index("</svg>") + 6]
    dom = audit(svg)
    rects = [attrs for tag, attrs in dom.elements if tag == "rect"]
    bars = [r for r in rects if r["class"] != "hit"]
    # 2 s span over 900 px of plot starting at x=400: 450 px a second.
    assert [(r["class"], float(r["x"]), float(r["width"])) for r in bars] == [
        ("wait", 400.0, pytest.approx(112.5)),  # 250 ms to the first byte
        ("ok", pytest.approx(512.5), pytest.approx(337.5)),  # then 750 ms receiving
        ("wait", 625.0, pytest.approx(225.0)),
        ("ok", 850.0, pytest.approx(450.0)),
        ("block", 850.0, 3.0),
        ("wait", pytest.approx(1075.0), pytest.approx(4.5)),  # ttfb 10 ms
        ("fail", pytest.approx(1079.5), pytest.approx(175.5)),
    ]
    chunks = [float(a["x1"]) for tag, a in dom.elements if tag == "line" and a.get("class") == "chunk"]
    # Chunk ticks of event 2: headers at +0.5 s +500 ms, then offsets 0, 400 and 900 ms.
    assert chunks == [850.0, 1030.0, 1255.0]
    grid = [float(a["x1"]) for tag, a in dom.elements if tag == "line" and a.get("class") == "grid"]
    assert grid == [400.0, 625.0, 850.0, 1075.0, 1300.0]  # every 500 ms
    assert "✕ blocked" in dom.all_text and "! failed" in dom.all_text
    assert [v for t, n, v in dom.attrs if t == "a"] == ["#ev-1", "#ev-2", "#ev-3", "#ev-4"]


def test_captions_precede_their_chart_and_show_names_the_run(tape: Path, confdir: Path) -> None:
    run = "run-charts"
    events = [network(i, run, llm=llm_block("gpt-4o", 10 * i, i, 0.001 * i)) for i in range(1, 4)]
    write_events(tape, confdir, events)
    page = render_report(collect_report(tape, run))
    figures = re.findall(r"<figure>(.*?)</figure>", page, re.S)
    assert len(figures) == 3
    for figure in figures:
        assert figure.lstrip().startswith("<figcaption>") and figure.rstrip().endswith("</svg>")
    captions = [audit(f).all_text.strip() for f in figures]
    assert captions[1].startswith("Tokens per call") and captions[2].startswith("Cost per call (USD)")
    text = audit(page).all_text
    assert "failcore show RUN --event SEQ" not in text
    assert f"failcore show {run} --event 1" in text and f"failcore show {run} --event 3" in text


def test_max_events_bounds_every_list_and_says_what_was_left_out(
    tape: Path, confdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Verification runs in a thread while the run is read; hold it until the reading has ended, so the
    # "verifying" message is said every time (a fast verify on an idle core finished first: flaky).
    import failcore.report.collect as collect

    read_done = threading.Event()
    real_verify = collect.verify_tape

    def verify_after_reading(*args: Any, **kwargs: Any) -> Any:
        read_done.wait(30)
        return real_verify(*args, **kwargs)

    monkeypatch.setattr(collect, "verify_tape", verify_after_reading)
    run = "run-big"
    hit = {
        "rule": "r",
        "severity": "high",
        "category": "c",
        "location": "l",
        "preview": "p",
        "action": "WARN",
    }
    events = []
    for i in range(1, 41):
        events.append(
            network(
                i,
                run,
                target={"host": f"h{i}.test", "port": 443, "scheme": "https"},
                decision=("BLOCK", "WARN", "ALLOW", "ALLOW")[i % 4],
                outcome=("BLOCKED", "ok", "FAIL", "ok")[i % 4],
                fail_reason="upstream_status" if i % 4 == 2 else None,
                dlp={"hits": [hit]},
                warnings=[{"reason": "dlp", "message": "m"}],
                llm=llm_block("gpt-4o", 100, 10, 0.5),
            )
        )
    write_events(tape, confdir, events)
    said: list[str] = []

    def progress(message: str) -> None:
        said.append(message)
        read_done.set()

    report = collect_report(tape, run, max_events=4, progress=progress)
    assert said == ["read 40 events of run run-big; verifying the whole tape"]
    assert report.verification is not None and report.verification.ok
    # Counts cover the whole run.
    assert (report.summary.requests, report.llm_count, report.tokens_in) == (40, 40, 4000)
    assert report.cost_usd == pytest.approx(20.0)
    assert (report.summary.blocked, report.summary.warned, report.summary.failed) == (10, 10, 10)
    # Every list holds at most 4 and the rest is counted.
    for items in (
        report.timeline,
        report.blocked,
        report.warned,
        report.failed,
        report.warnings,
        report.dlp_hits,
        report.llm_calls,
        list(report.hosts.values()),
    ):
        assert len(items) == 4
    assert report.omitted == {
        "timeline": 36,
        "hosts": 36,
        "blocked": 6,
        "warned": 6,
        "failed": 6,
        "warnings": 36,
        "dlp": 36,
        "llm": 36,
    }
    page = render_report(report)
    dom = assert_inert(page)
    assert dom.tags.count("details") - page.count("<details><summary>") == 4
    text = dom.all_text
    assert "This report is bounded by --max-events 4" in text
    for line in ("36 timeline events", "6 blocked exchanges", "36 DLP hits", "36 LLM calls"):
        assert line in text, line
    assert "$20.0000" in text


def test_default_page_says_how_much_of_the_timeline_it_shows(
    tape: Path, confdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default bound (a page that opens) is stated above the timeline, with how to see more."""
    from failcore.report import DEFAULT_MAX_EVENTS

    run = "run-long"
    extra = 7
    start = lifecycle("run_start", run, 1_700_000_000.0, policy="p.yaml", mode="observe")
    write_events(tape, confdir, [start, *(network(i, run) for i in range(1, DEFAULT_MAX_EVENTS + extra))])
    out = tmp_path / "r.html"
    assert main(["report", run, "--tape", str(tape), "-o", str(out), "--json"]) == 0
    data = orjson.loads(capsys.readouterr().out)
    assert data["events"] == DEFAULT_MAX_EVENTS and data["left_out"]["timeline"] == extra
    page = out.read_text()
    notice = (
        f"Showing the first {DEFAULT_MAX_EVENTS:,} of {DEFAULT_MAX_EVENTS + extra:,} events "
        f"(<code>--max-events {DEFAULT_MAX_EVENTS}</code>): "
        f"<code>failcore report {run} --max-events N</code> shows more, "
        f"<code>failcore show {run}</code> every one."
    )
    assert notice in page
    assert page.index(notice) < page.index('id="ev-') < page.index(f"{extra:,} more events not shown")
    assert page.count('<details class="ev"') == DEFAULT_MAX_EVENTS
    bigger = DEFAULT_MAX_EVENTS + extra
    assert main(["report", run, "--tape", str(tape), "-o", str(out), "--max-events", str(bigger)]) == 0
    assert "Showing the first" not in out.read_text()
    assert out.read_text().count('<details class="ev"') == bigger


def test_cli_bodies_json_and_bounds(
    tape: Path, confdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_events(tape, confdir, plain_run("run-cli"))
    out = tmp_path / "r.html"
    assert (
        main(["report", "run-cli", "--tape", str(tape), "-o", str(out), "--max-events", "2", "--json"]) == 0
    )
    data = orjson.loads(capsys.readouterr().out)
    assert data["left_out"]["timeline"] == 4 and data["events"] == 2 and data["bodies"] is False
    assert stat.S_IMODE(out.stat().st_mode) == 0o644 and SECRET not in out.read_text()
    assert main(["report", "run-cli", "--tape", str(tape), "-o", str(out), "--bodies"]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    # The body is there as recorded (this synthetic one was not masked by DLP).
    assert SECRET in audit(out.read_text()).all_text
    assert main(["report", "run-cli", "--tape", str(tape), "-o", str(out), "--max-events", "0"]) == 1
    assert "--max-events must be at least 1" in capsys.readouterr().err


def _reference_printable(value: object) -> str:
    """textsafe.printable as it was before its fast path: every replacement applied every time."""
    s = "" if value is None else str(value)
    s = s.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return re.sub(
        r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]",
        lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}",
        s,
    )


def test_printable_fast_path_changes_nothing() -> None:
    from failcore.textsafe import printable

    samples = [chr(c) for c in range(0x3000)] + [f"a{chr(c)}b" for c in range(0x2100)] + list(PAYLOADS)
    samples += [None, 0, -12, 1.5, True, "plain text", "tab\there", "\u202eevil\u2066"]
    for sample in samples:
        assert printable(sample) == _reference_printable(sample), repr(sample)
        if isinstance(sample, str) and "\n" not in sample and "\r" not in sample and "\t" not in sample:
            assert printable(sample, keep_newlines=True) == _reference_printable(sample), repr(sample)
    assert printable("a\nb\x1b", keep_newlines=True) == "a\nb\\x1b"


def test_page_renders_the_same_as_with_stock_jinja(
    tape: Path, confdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report's environment (dict lookups without Jinja's exception, ints not re-escaped) writes
    byte for byte what a stock jinja2.Environment with the plain finalize writes."""
    import jinja2
    from markupsafe import Markup

    from failcore.report import page as page_module

    evil = " | ".join(PAYLOADS) + "\x1b[31m\u202e\ttab\nline"
    run = "run-same"
    cassettes = load_cassettes()
    events = [e | {"run": run} for e in plain_run(run)]
    events += [cassette_event(10 + i, run, ex, api) for i, (ex, api, _) in enumerate(cassettes)]
    events += [
        network(
            40,
            run,
            target={"host": evil, "port": 443, "scheme": "https"},
            path=evil,
            summary=evil,
            decision="WARN",
            rule=evil,
            request={"http_version": "HTTP/1.1", "headers": [[evil, evil]], "body": None},
            llm=llm_block(evil, 10, None, None),
            warnings=[{"reason": "dlp", "message": evil}, "not a mapping"],
        ),
        {
            "kind": "websocket",
            "v": 1,
            "run": run,
            "ts": 1_700_000_005.0,
            "path": evil,
            "detail": {"direction": "up", "index": 3, "opcode": "text", "body": None},
        },
        {
            "kind": "policy",
            "v": 1,
            "run": run,
            "ts": 1_700_000_006.0,
            "detail": {"action": "reload", "path": evil, "ok": False, "items": 7},
        },
        {"kind": "dropped", "v": 1, "run": run, "ts": 1_700_000_007.0, "count": 5},
    ]
    write_events(tape, confdir, events)
    for bodies in (False, True):
        for max_events in (1000, 3):
            report = collect_report(tape, run, bodies=bodies, max_events=max_events)
            ours = render_report(report)
            stock = jinja2.Environment(
                loader=jinja2.PackageLoader("failcore", "templates"),
                autoescape=True,
                trim_blocks=True,
                lstrip_blocks=True,
                finalize=lambda value: value if isinstance(value, Markup) else _reference_printable(value),
            )
            monkeypatch.setattr(page_module, "_ENV", stock)
            assert render_report(report) == ours, (bodies, max_events)
            monkeypatch.undo()
    assert "&lt;script&gt;window.__pwned=1" in ours and "\\x1b[31m" in ours


def test_fields_of_the_wrong_type_do_not_crash_the_report(tape: Path, confdir: Path) -> None:
    """Recorded content is hostile: a line another writer produced, valid JSON with a number or a
    string where a list or an object belongs, is counted as having nothing there, not a crash."""
    run = "run-odd"
    events = [
        lifecycle("run_start", run, 1_700_000_000.0),
        network(1, run, warnings=5, dlp={"hits": 5}),
        network(2, run, warnings="dlp", dlp=[1, 2], decision="WARN"),
        network(3, run, warnings=[5, "x", None], dlp={"hits": [5, "x"]}, decision="BLOCK"),
        network(4, run),
        network(5, run, target="api.example"),
        network(6, run, target=[1, 2]),
    ]
    write_events(tape, confdir, events)
    for index in (True, False):
        report = collect_report(tape, run, index=index)
        assert report.summary.requests == 6
        assert report.warnings == [] and report.dlp_hits == []
        assert_inert(render_report(report))
