"""Reads every plain exchange makes, done once (issue 12): the LLM-path test of a request path is worked
out once per path, and the gate reads an HTTP/1 Host header straight from the header fields; both give
what they gave before, checked against the recorded LLM paths (tests/data/conformance) and against
mitmproxy's own `Request.host_header`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from failcore.proxy import gate, streamtap

CASSETTES = Path(__file__).parent.parent / "data" / "conformance" / "llm" / "openllmetry-cassettes.jsonl"


def recorded_paths() -> list[str]:
    lines = CASSETTES.read_text(encoding="utf-8").splitlines()
    return sorted({json.loads(line)["path"] for line in lines if line})


def test_a_path_is_tested_for_an_llm_call_once(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = [*recorded_paths(), "/echo", "/v1/chat%2Fcompletions", "/v1/chat/completion%73", "/index.html"]
    expected = [streamtap.could_be_llm_path.__wrapped__(p) for p in paths]  # type: ignore[attr-defined]
    assert any(expected) and not all(expected)
    read = []
    request_path = streamtap.request_path
    monkeypatch.setattr(streamtap, "request_path", lambda p: read.append(p) or request_path(p))
    streamtap.could_be_llm_path.cache_clear()  # type: ignore[attr-defined]
    for _ in range(3):  # an exchange asks up to three times
        assert [streamtap.could_be_llm_path(p) for p in paths] == expected
    assert sorted(read) == sorted(paths)


HOSTS = [
    [],
    [(b"Host", b"example.com")],
    [(b"host", b"EXAMPLE.com.:8080")],
    [(b"HoSt", b"evil.example")],
    [(b"Host", b"a.example"), (b"x-other", b"1"), (b"HOST", b"b.example")],
    [(b"Host", b"[::1]:80")],
    [(b"Host", b"\xff\xfe.example")],
    [(b"Host", b"")],
    [(b"H\xc3\xb6st", b"other.example")],
]


@pytest.mark.parametrize("fields", HOSTS)
@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0", "HTTP/2.0"])
def test_the_gate_reads_the_host_header_as_mitmproxy_does(
    fields: list[tuple[bytes, bytes]], version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow = tflow.tflow(req=tutils.treq(host="127.0.0.1", port=8080, headers=http.Headers(fields)))
    flow.request.http_version = version
    if version == "HTTP/2.0":
        flow.request.authority = "h2.example"
    header = flow.request.host_header  # mitmproxy's own reading
    name = None
    if header:
        name = header.rsplit(":", 1)[0] if not header.endswith("]") else header
        name = name.strip("[]").lower().rstrip(".") or None
    expected = None if name in (None, "127.0.0.1") else name
    if version != "HTTP/2.0":  # read from the fields, not through the headers mapping
        monkeypatch.setattr(
            http.Request, "host_header", property(lambda self: pytest.fail("host_header read"))
        )
    assert gate.claimed_host(flow) == expected
