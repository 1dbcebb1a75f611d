"""DLP through the real proxy: hits recorded masked, blocks in enforce mode, taint, split secrets."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from tests.helpers import network_events, proxied_client, read_tape

# Assembled at run time so the repository itself holds no secret-shaped strings.
GITHUB_PAT = "ghp_" + "Z9y8X7w6V5u4" * 3
AWS_KEY_ID = "AKIA" + "QWERTYUIOPASDFGH"

BLOCK_CRITICAL = """\
mode: enforce
dlp:
  severity_actions: {critical: BLOCK}
"""


def tape_bytes(tape: Path) -> bytes:
    return b"".join(p.read_bytes() for p in tape.glob("seg-*.jsonl"))


def test_secret_in_a_request_is_recorded_masked_and_located(start_proxy, upstream, tmp_path):
    proxy = start_proxy()
    trust = ssl.create_default_context(cafile=str(proxy.ca_cert))
    with httpx.Client(proxy=proxy.url, verify=trust) as http:
        client = openai.OpenAI(base_url=upstream.url + "/v1", api_key="sk-x", http_client=http)
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": f"deploy with token {GITHUB_PAT} and id {AWS_KEY_ID}"},
            ],
        )
    proxy.stop()
    raw = tape_bytes(tmp_path / "tape")
    assert GITHUB_PAT.encode() not in raw and AWS_KEY_ID.encode() not in raw
    [event] = [e for e in network_events(read_tape(tmp_path / "tape")) if e.get("llm")]
    hits = {h["rule"]: h for h in event["dlp"]["hits"] if h["location"].startswith("request.")}
    assert {"github-pat", "aws-access-key-id"} <= set(hits)
    pat = hits["github-pat"]
    assert pat["location"] == "request.body:/messages/1/content"
    assert pat["preview"].startswith("ghp") and "…" in pat["preview"] and len(pat["preview"]) < 12
    assert pat["fingerprint"] and pat["action"] == "WARN"
    assert pat["taint_source"]["role"] == "user" and pat["taint_source"]["exfiltration_path"] is False
    assert pat["preview"] in event["request"]["body"]["text"]
    assert any(w["reason"] == "dlp" for w in event["warnings"])
    # The echoed reply carries the secret back: inbound responses are scanned (and masked) too.
    assert any(h["location"].startswith("response.body:") for h in event["dlp"]["hits"])


def test_enforce_blocks_a_critical_secret_before_it_leaves(start_proxy, policy_file, upstream, tmp_path):
    proxy = start_proxy(policy_file(BLOCK_CRITICAL))
    before = upstream.request_count("/echo")
    with proxied_client(proxy) as client:
        blocked = client.post(upstream.url + "/echo", json={"note": f"token={GITHUB_PAT}"})
        passed = client.post(upstream.url + "/echo", json={"note": f"id={AWS_KEY_ID}"})  # high, not critical
    assert blocked.status_code == 403
    error = blocked.json()["error"]
    assert error["type"] == "failcore_blocked" and error["rule"] == "dlp:github-pat"
    assert GITHUB_PAT not in blocked.text, "the refusal must not echo the secret"
    assert passed.status_code == 200
    assert upstream.request_count("/echo") == before + 1
    proxy.stop()
    events = network_events(read_tape(tmp_path / "tape"))
    assert [e["outcome"] for e in events] == ["BLOCKED", "ok"]
    assert events[0]["rule"] == "dlp:github-pat"
    assert GITHUB_PAT.encode() not in tape_bytes(tmp_path / "tape")


def test_secret_from_a_tool_result_is_an_exfiltration_path(start_proxy, upstream, tmp_path):
    proxy = start_proxy()
    trust = ssl.create_default_context(cafile=str(proxy.ca_cert))
    with httpx.Client(proxy=proxy.url, verify=trust) as http:
        client = openai.OpenAI(base_url=upstream.url + "/v1", api_key="sk-x", http_client=http)
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[
                {"role": "user", "content": "what is in .env?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_env",
                            "type": "function",
                            "function": {"name": "read_file", "arguments": '{"path": ".env"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_env", "content": f"GITHUB_TOKEN={GITHUB_PAT}"},
            ],
        )
    proxy.stop()
    [event] = [e for e in network_events(read_tape(tmp_path / "tape")) if e.get("llm")]
    [hit] = [h for h in event["dlp"]["hits"] if h["location"] == "request.body:/messages/2/content"]
    assert hit["taint_source"]["role"] == "tool_result"
    assert hit["taint_source"]["tool_name"] == "read_file"
    assert hit["taint_source"]["tool_call_id"] == "call_env"
    assert hit["taint_source"]["exfiltration_path"] is True
    [warning] = [w for w in event["warnings"] if w["reason"] == "exfiltration_path"]
    assert "read_file" in warning["message"]


class SplitSecretServer:
    """Plain-HTTP upstream whose SSE response splits a secret across two chunks, 0.3 s apart."""

    def __init__(self, first: bytes, second: bytes) -> None:
        self.parts = (first, second)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sent_second = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            for part in self.parts:
                conn.sendall(b"%x\r\n%s\r\n" % (len(part), part))
                time.sleep(0.3)
            self.sent_second.set()
            with contextlib.suppress(OSError):  # strict mode closed the connection: expected
                conn.sendall(b"0\r\n\r\n")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def split_secret() -> Iterator[SplitSecretServer]:
    half = len(GITHUB_PAT) // 2
    server = SplitSecretServer(
        b'data: {"text": "here: ' + GITHUB_PAT[:half].encode(), GITHUB_PAT[half:].encode() + b' done"}\n\n'
    )
    yield server
    server.close()


def test_split_secret_is_found_in_side_mode(start_proxy, split_secret, tmp_path):
    proxy = start_proxy()
    with proxied_client(proxy) as client:
        body = client.get(f"http://127.0.0.1:{split_secret.port}/stream").content
    assert GITHUB_PAT.encode() in body  # side mode never changes what the client gets
    proxy.stop()
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert event["stream"]["chunk_count"] == 2
    assert [h["rule"] for h in event["dlp"]["hits"]] == ["github-pat"]
    assert GITHUB_PAT.encode() not in tape_bytes(tmp_path / "tape")


def test_split_secret_cuts_the_stream_in_strict_mode(start_proxy, policy_file, split_secret, tmp_path):
    policy = policy_file("mode: enforce\ndlp:\n  stream: strict\n  rule_actions: {github-pat: BLOCK}\n")
    proxy = start_proxy(policy)
    received = b""
    with (
        proxied_client(proxy) as client,
        pytest.raises(httpx.TransportError),
        client.stream("GET", f"http://127.0.0.1:{split_secret.port}/stream") as response,
    ):
        for chunk in response.iter_raw():
            received += chunk
    assert GITHUB_PAT.encode() not in received, "the chunk completing the secret must not be forwarded"
    assert received.startswith(b'data: {"text": "here: ghp_')
    proxy.stop()
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert event["outcome"] == "BLOCKED" and event["cut"]["reason"] == "dlp"
    assert "github-pat" in event["cut"]["detail"]
    assert GITHUB_PAT.encode() not in tape_bytes(tmp_path / "tape")


def test_custom_rule_and_gitleaks_import_from_the_policy(start_proxy, policy_file, upstream, tmp_path):
    gitleaks = Path(__file__).parent.parent / "failcore" / "data" / "gitleaks" / "gitleaks.toml"
    policy = policy_file(
        "mode: enforce\n"
        "dlp:\n"
        f"  import_gitleaks: {gitleaks}\n"
        "  custom:\n"
        "    - id: acme-internal-token\n"
        "      regex: 'acme_[a-z0-9]{24}'\n"
        "      keywords: [acme_]\n"
        "      severity: high\n"
        "      description: ACME internal token\n"
        "  rule_actions: {acme-internal-token: BLOCK}\n"
    )
    proxy = start_proxy(policy)
    token = "acme_" + "k3y" * 8
    with proxied_client(proxy) as client:
        assert client.post(upstream.url + "/echo", content=f"auth {token}").status_code == 403
    proxy.stop()
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert event["rule"] == "dlp:acme-internal-token"


def test_secret_in_a_header_and_query_is_masked_and_located(start_proxy, upstream, tmp_path):
    proxy = start_proxy()
    with proxied_client(proxy) as client:
        client.get(
            upstream.url + f"/json?token={GITHUB_PAT}",
            headers={"X-Debug": "plain value", "X-Forwarded-Token": f"tok {GITHUB_PAT} end"},
        )
    proxy.stop()
    assert GITHUB_PAT.encode() not in tape_bytes(tmp_path / "tape")
    [event] = network_events(read_tape(tmp_path / "tape"))
    locations = sorted(h["location"] for h in event["dlp"]["hits"])
    assert locations == ["request.header:x-forwarded-token", "request.query:token"]
    headers = dict(event["request"]["headers"])
    assert headers["X-Debug"] == "plain value"
    # A header value a DLP rule hits is recorded as the hit's fingerprint, whole (what surrounds the
    # secret in a header can be as telling as the secret).
    [hit] = [h for h in event["dlp"]["hits"] if h["location"] == "request.header:x-forwarded-token"]
    assert headers["X-Forwarded-Token"] == f"[redacted {hit['fingerprint']}]"
    assert hit["preview"].startswith("ghp") and "…" in hit["preview"]
    assert "…" in event["path"] and event["path"].startswith("/json?token=")


def test_secret_past_the_recorded_cap_of_a_streamed_upload_is_found_by_offset(
    start_proxy, upstream, tmp_path
):
    """The tape keeps the first failcore_body_cap bytes of a body; a secret further into a streamed
    upload (and into its echo) is still found, located by byte offset, and never written."""
    proxy = start_proxy(sets=["failcore_body_cap=65536", "failcore_stream_threshold=65536"])
    filler = b"x" * 200_000
    offset = len(filler) + len(b"token=")
    body = filler + b"token=" + GITHUB_PAT.encode() + b"\n" + b"z" * 100_000

    def chunks():  # type: ignore[no-untyped-def]
        for i in range(0, len(body), 10_000):  # chunked transfer: a secret split between chunks too
            yield body[i : i + 10_000]

    with proxied_client(proxy) as client:
        echoed = client.post(upstream.url + "/echo", content=chunks())
    assert echoed.status_code == 200 and GITHUB_PAT in echoed.text  # traffic is untouched
    proxy.stop()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "tape").glob("seg-*.jsonl"))
    assert GITHUB_PAT.encode() not in raw
    [event] = [e for e in network_events(read_tape(tmp_path / "tape")) if e["summary"] == "POST /echo"]
    assert event["request"]["body"]["truncated"] is True
    hits = {h["location"]: h for h in event["dlp"]["hits"] if h["rule"] == "github-pat"}
    assert f"request.body@{offset}" in hits
    assert hits[f"request.body@{offset}"]["preview"].startswith("ghp_")
    assert any(loc.startswith("response.body@") for loc in hits), hits  # the echo carries it back
    coverage = {c["where"]: c for c in event["dlp"]["past_cap"]}
    assert coverage["request.body"] == {
        "where": "request.body",
        "from_byte": 65536,
        "to_byte": len(body),
        "complete": True,
        "note": None,
    }
    assert any(w["reason"] == "dlp" for w in event["warnings"])


def _big_chat(secret_at_word: int, words: int) -> list[dict[str, str]]:
    text = " ".join(GITHUB_PAT if i == secret_at_word else f"w{i % 10}" for i in range(words))
    return [{"role": "user", "content": text}]


def test_a_large_llm_request_is_metered_and_scanned_whole(start_proxy, upstream, tmp_path):
    """An LLM request over the stream threshold (a long context, images) is still an LLM call: it is
    buffered so it is metered, and its secret past the recorded cap is found by offset."""
    proxy = start_proxy()
    messages = _big_chat(secret_at_word=500_000, words=600_000)  # ~1.8 MB, the PAT near 1.5 MB
    with proxied_client(proxy) as http:
        client = openai.OpenAI(base_url=upstream.url + "/v1", api_key="sk-x", http_client=http, max_retries=0)
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert reply.choices[0].message.content.startswith("Echo: ")
    proxy.stop()
    assert GITHUB_PAT.encode() not in tape_bytes(tmp_path / "tape")
    [event] = network_events(read_tape(tmp_path / "tape"))
    assert event["request"]["body"]["truncated"] is True and event["request"]["body"]["size"] > 1_500_000
    assert event["llm"]["request_model"] == "gpt-4o-mini" and event["llm"]["usage"]["known"] is True
    assert event["llm"]["cost"]["usd"] > 0
    locations = sorted(h["location"] for h in event["dlp"]["hits"] if h["rule"] == "github-pat")
    # Once in the request, once in the stand-in's echo of it ("Echo: <last user text>").
    assert [loc.split("@")[0] for loc in locations] == ["request.body", "response.body"]
    assert all(int(loc.split("@")[1]) > 1 << 20 for loc in locations)
    coverage = {c["where"]: c for c in event["dlp"]["past_cap"]}
    assert coverage["request.body"] == {
        "where": "request.body",
        "from_byte": 1 << 20,
        "to_byte": event["request"]["body"]["size"],
        "complete": True,
        "note": None,
    }
    assert coverage["response.body"]["complete"] is True


def test_enforce_blocks_a_secret_deep_inside_a_large_llm_request(
    start_proxy, policy_file, upstream, tmp_path
):
    proxy = start_proxy(policy_file(BLOCK_CRITICAL))
    before = upstream.request_count("/v1/chat/completions")
    with proxied_client(proxy) as http:
        client = openai.OpenAI(base_url=upstream.url + "/v1", api_key="sk-x", http_client=http, max_retries=0)
        with pytest.raises(openai.PermissionDeniedError) as refused:
            client.chat.completions.create(model="gpt-4o-mini", messages=_big_chat(500_000, 600_000))
    assert refused.value.response.json()["error"]["rule"] == "dlp:github-pat"
    assert upstream.request_count("/v1/chat/completions") == before, "the secret must not leave"
    proxy.stop()
    assert GITHUB_PAT.encode() not in tape_bytes(tmp_path / "tape")


def test_a_secret_hidden_behind_json_unicode_escapes_is_found_masked_and_blocked(
    start_proxy, policy_file, upstream, tmp_path
):
    """`"\\u0067hp_…"` parses to a GitHub token; written that way it must not slip past the patterns."""
    escaped = "".join(f"\\u{ord(c):04x}" for c in GITHUB_PAT[:6]) + GITHUB_PAT[6:]
    body = (
        '{"messages": [{"role": "user", "content": "token ' + escaped + '"}], "note": "a\\\\u0041b"}'
    ).encode()
    assert orjson.loads(body)["messages"][0]["content"] == f"token {GITHUB_PAT}"
    proxy = start_proxy()
    with proxied_client(proxy) as client:
        echoed = client.post(
            upstream.url + "/echo", content=body, headers={"content-type": "application/json"}
        )
    assert echoed.status_code == 200
    proxy.stop()
    [event] = network_events(read_tape(tmp_path / "tape"))
    [hit] = [h for h in event["dlp"]["hits"] if h["location"].startswith("request.body")]
    assert (hit["rule"], hit["location"]) == ("github-pat", "request.body:/messages/0/content")
    recorded = orjson.loads(event["request"]["body"]["text"])  # still the same JSON, masked
    assert recorded["note"] == "a\\u0041b", "an escaped backslash is not an escape"
    assert GITHUB_PAT not in recorded["messages"][0]["content"]
    assert GITHUB_PAT.encode() not in tape_bytes(tmp_path / "tape") and escaped.encode() not in tape_bytes(
        tmp_path / "tape"
    )

    enforcing = start_proxy(policy_file(BLOCK_CRITICAL), tape=tmp_path / "tape2")
    with proxied_client(enforcing) as client:
        refused = client.post(
            upstream.url + "/echo", content=body, headers={"content-type": "application/json"}
        )
    assert refused.status_code == 403 and refused.json()["error"]["rule"] == "dlp:github-pat"


def test_a_secret_cut_by_the_recorded_cap_leaves_no_part_of_itself_in_the_tape(
    start_proxy, upstream, tmp_path
):
    cap = 65536
    proxy = start_proxy(sets=[f"failcore_body_cap={cap}", f"failcore_stream_threshold={cap}"])
    start = cap - 20  # the kept text ends with the token's first 20 characters
    body = b"x" * (start - 1) + b" " + GITHUB_PAT.encode() + b" " + b"y" * 100_000
    with proxied_client(proxy) as client:
        assert client.post(upstream.url + "/echo", content=iter([body])).status_code == 200
    proxy.stop()
    raw = tape_bytes(tmp_path / "tape")
    assert GITHUB_PAT[:20].encode() not in raw
    [event] = [e for e in network_events(read_tape(tmp_path / "tape")) if e["summary"] == "POST /echo"]
    assert f"request.body@{start}" in {h["location"] for h in event["dlp"]["hits"]}
    assert event["request"]["body"]["text"].startswith("x" * 1000)  # only the tail is masked
