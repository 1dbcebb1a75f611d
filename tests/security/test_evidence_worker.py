"""The DLP evidence scan worker (failcore.evidence.scanworker): a child process that masks secrets in
events so the proxy's event loop does not. Attacks on it: kill it mid-run, hope a secret reaches the
tape unmasked or an exchange goes unrecorded; feed it a policy that changed on disk; find a socket in it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from failcore.dlp.rules import policy_rules
from failcore.dlp.scanner import DlpScanner
from failcore.evidence.dlp import scan_event
from failcore.evidence.scanworker import DeferredScan, ScanOffload, ScanOrigin, rules_sha256
from failcore.policy.load import load_policy
from tests.helpers import network_events, proxied_client, read_tape
from tests.llm_replay import RedirectToReplay, ReplayUpstream, encode, load_exchanges, reported_usage
from tests.security.evidence_helpers import AWS_KEY, GITHUB_TOKEN, SALT
from tests.security.evidence_helpers import event_with_secrets as _event
from tests.security.evidence_helpers import offload_until_ready as _offload_until_ready
from tests.security.evidence_helpers import origin_and_scanner as _origin_and_scanner
from tests.security.upstream import LoggingUpstream


def test_worker_masks_exactly_what_the_proxy_would_and_holds_no_socket() -> None:
    origin, scanner = _origin_and_scanner()
    offload = ScanOffload("run-test")
    try:
        event = _event("first")
        expected = copy.deepcopy(event)
        scan_event(scanner, expected)  # in this process, as the proxy did before the worker
        (scanned,) = _offload_until_ready(offload, DeferredScan(copy.deepcopy(event), scanner, origin))
        assert scanned == orjson.loads(orjson.dumps(expected))
        raw = orjson.dumps(scanned)
        assert AWS_KEY.encode() not in raw and GITHUB_TOKEN.encode() not in raw
        assert {hit["rule"] for hit in scanned["dlp"]["hits"]} >= {"aws-access-key-id"}  # type: ignore[index]
        # An event without secrets comes back "unchanged": the proxy keeps its own, which is identical.
        clean = _event("clean")
        clean["path"] = "/v1/upload"
        clean["request"]["headers"] = [["content-type", "application/json"]]  # type: ignore[index]
        clean["request"]["body"] = {"text": '{"note":"nothing here"}', "size": 23, "truncated": False}  # type: ignore[index]
        reference = copy.deepcopy(clean)
        scan_event(scanner, reference)
        assert reference == clean and "dlp" not in clean
        (same,) = offload([DeferredScan(clean, scanner, origin)])
        assert same is clean
        assert offload.worker is not None
        fds = Path(f"/proc/{offload.worker.pid}/fd")
        links = [os.readlink(fd) for fd in fds.iterdir()]
        assert not [link for link in links if link.startswith("socket:")], links
    finally:
        offload.close()


def test_worker_refuses_a_policy_file_changed_since_the_proxy_loaded_it(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nmode: observe\ndefault: ALLOW\n")
    policy = load_policy(path)
    scanner = DlpScanner.for_policy(policy, SALT)
    assert scanner is not None
    origin = ScanOrigin(str(path), policy.sha256, policy.mode, SALT, rules_sha256(policy_rules(policy)))
    # Edited after the proxy loaded it: the worker must not scan with rules the proxy does not use.
    path.write_text("version: 1\nmode: observe\ndefault: ALLOW\ndlp:\n  enabled: false\n")
    offload = ScanOffload("run-test")
    try:
        deadline = time.monotonic() + 120
        while offload.worker is None or (not offload.worker.ready and offload.worker.refused is None):
            out = offload([DeferredScan(_event("x"), scanner, origin)])
            assert isinstance(out[0], DeferredScan)  # never scanned elsewhere: the writer does it
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert offload.worker.refused and "changed" in offload.worker.refused
        # And the writer's own scan of it still masks the secret.
        event = out[0]()
        assert AWS_KEY.encode() not in orjson.dumps(event)
    finally:
        offload.close()


POLICY = """
version: 1
mode: observe
default: ALLOW
{extra}
"""


@pytest.mark.parametrize("fail_open", [True, False])
def test_worker_killed_mid_run_is_recorded_and_nothing_is_lost_or_unmasked(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path, fail_open: bool
) -> None:
    policy = policy_file(POLICY.format(extra="" if fail_open else "fail_open: false"))
    proxy = start_proxy(policy)
    recorder = proxy.proxy.master.addons.get("failcore").recorder  # type: ignore[union-attr]
    sent = 0
    with proxied_client(proxy) as client:

        def post() -> None:
            nonlocal sent
            reply = client.post(
                f"{plain_logging_upstream.url}/upload", content=orjson.dumps({"n": sent, "aws": AWS_KEY})
            )
            # Fail-closed or not: losing the worker never makes evidence unwritable.
            assert reply.status_code == 200
            sent += 1

        deadline = time.monotonic() + 120
        while not proxy.call(lambda: recorder.offload.offloaded):
            assert time.monotonic() < deadline, "no exchange was ever scanned by the worker"
            post()
            proxy.flush()
        pid = proxy.call(lambda: recorder.offload.worker.pid)
        os.kill(pid, signal.SIGKILL)
        for _ in range(5):
            post()
        proxy.flush()
    proxy.stop()
    raw = b"".join(p.read_bytes() for p in sorted((tmp_path / "tape").glob("seg-*.jsonl")))
    assert AWS_KEY.encode() not in raw
    events = read_tape(tmp_path / "tape")
    uploads = [e for e in network_events(events) if e["path"] == "/upload"]
    assert len(uploads) == sent
    assert all(e["request"]["body"]["dlp_masked"] for e in uploads)
    assert all("aws-access-key-id" in {hit["rule"] for hit in e["dlp"]["hits"]} for e in uploads)
    lost = [e for e in events if e["kind"] == "internal_error"]
    assert len(lost) == 1 and lost[0]["detail"]["where"] == "evidence worker"
    assert lost[0]["detail"]["exit_code"] == -signal.SIGKILL
    run_end = next(e for e in events if e["kind"] == "run_end")
    assert run_end["detail"]["internal_errors"] == 1 and run_end["detail"]["dropped"] == 0
    assert AWS_KEY.encode() in plain_logging_upstream.received_bytes()  # observe: it did go out


def test_a_worker_that_keeps_dying_is_recorded_each_time_then_given_up(monkeypatch) -> None:
    """A crash-looping child (here: one that exits at once) must neither flood the tape nor lose a scan."""
    import failcore.evidence.scanworker as scanworker
    import failcore.spawn as spawn

    origin, scanner = _origin_and_scanner()
    monkeypatch.setattr(scanworker, "RESTART_INTERVAL", 0.0)
    # (the interpreter the child is started with: failcore.spawn.worker_command)
    monkeypatch.setattr(spawn.sys, "executable", "/bin/false")
    offload = ScanOffload("run-test")
    recorded: list[dict[str, object]] = []
    try:
        deadline = time.monotonic() + 60
        while not offload.disabled:
            assert time.monotonic() < deadline
            out = offload([DeferredScan(_event("x"), scanner, origin)])
            assert isinstance(out[-1], DeferredScan)  # left for the writer to scan
            recorded += [item for item in out if isinstance(item, dict)]
            time.sleep(0.05)
        assert len(recorded) == scanworker.MAX_LOSSES == offload.deaths
        assert all(e["kind"] == "internal_error" and e["detail"]["exit_code"] == 1 for e in recorded)  # type: ignore[index]
        assert "for the rest of the run" in recorded[-1]["detail"]["fallback"]  # type: ignore[index]
        assert offload([DeferredScan(_event("y"), scanner, origin)])[0].__class__ is DeferredScan
        assert offload.worker is None
    finally:
        offload.close()


def test_the_worker_starts_with_the_proxy_and_scans_the_first_exchange(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    """Started on the first batch, the child spent its first seconds loading while those exchanges were
    scanned in the proxy's own process; started with the proxy, it is ready for the first one."""
    proxy = start_proxy(policy_file(POLICY.format(extra="")))
    recorder = proxy.proxy.master.addons.get("failcore").recorder  # type: ignore[union-attr]
    assert proxy.call(lambda: recorder.offload.worker is not None), "no worker before the first exchange"
    deadline = time.monotonic() + 120
    while not proxy.call(lambda: recorder.offload.worker.poll_ready()):
        assert time.monotonic() < deadline, "the worker never became ready"
        time.sleep(0.1)
    with proxied_client(proxy) as client:
        reply = client.post(f"{plain_logging_upstream.url}/first", content=orjson.dumps({"aws": AWS_KEY}))
        assert reply.status_code == 200
    proxy.flush()
    assert proxy.call(lambda: recorder.offload.offloaded) == 1
    proxy.stop()
    raw = b"".join(p.read_bytes() for p in sorted((tmp_path / "tape").glob("seg-*.jsonl")))
    assert AWS_KEY.encode() not in raw
    [event] = [e for e in network_events(read_tape(tmp_path / "tape")) if e["path"] == "/first"]
    assert event["request"]["body"]["dlp_masked"]


def test_the_worker_builds_plain_exchanges_and_their_secrets_stay_masked(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path, monkeypatch
) -> None:
    """Once the worker is ready, a plain exchange's event is built there (failcore.evidence.remotebuild),
    not in the proxy; what it writes is masked as the proxy's own build was."""
    import failcore.proxy.recorder as recorder_module

    proxy = start_proxy(policy_file(POLICY.format(extra="")))
    recorder = proxy.proxy.master.addons.get("failcore").recorder  # type: ignore[union-attr]
    built_here: list[str] = []
    real_build = recorder_module.build_exchange_event

    def counting_build(snap, cfg):  # type: ignore[no-untyped-def]
        built_here.append(snap.path)
        return real_build(snap, cfg)

    with proxied_client(proxy) as client:
        deadline = time.monotonic() + 120
        while not proxy.call(lambda: recorder.offload.offloaded):
            assert time.monotonic() < deadline, "no exchange was ever handed to the worker"
            client.post(f"{plain_logging_upstream.url}/warm", content=b"{}")
            proxy.flush()
        monkeypatch.setattr(recorder_module, "build_exchange_event", counting_build)
        for n in range(5):
            body = orjson.dumps({"n": n, "aws": AWS_KEY})
            reply = client.post(f"{plain_logging_upstream.url}/upload", content=body,
                                headers={"Authorization": f"Bearer {GITHUB_TOKEN}"})  # fmt: skip
            assert reply.status_code == 200
        proxy.flush()
    proxy.stop()
    assert built_here == []  # (not one was built in the proxy)
    raw = b"".join(p.read_bytes() for p in sorted((tmp_path / "tape").glob("seg-*.jsonl")))
    assert AWS_KEY.encode() not in raw and GITHUB_TOKEN.encode() not in raw
    uploads = [e for e in network_events(read_tape(tmp_path / "tape")) if e["path"] == "/upload"]
    assert len(uploads) == 5
    assert all(e["request"]["body"]["dlp_masked"] for e in uploads)
    for event in uploads:
        auth = [value for name, value in event["request"]["headers"] if name.lower() == "authorization"]
        assert len(auth) == 1 and auth[0].startswith("Bearer [redacted hmac-sha256:")


ONE_CALL_A_CONNECTION = httpx.Limits(max_keepalive_connections=0)


def _llm_calls() -> list[dict[str, Any]]:
    """Recorded calls with their providers' real framing: an OpenAI chat answer streamed as SSE (with
    its usage), an Anthropic message as gzip'd chunked JSON, and an OpenAI structured output (its
    request asks for a JSON schema: the event's contract-drift check runs)."""
    found: dict[str, dict[str, Any]] = {}
    for e in load_exchanges():
        ctype = (e["response_headers"].get("content-type") or "").lower()
        coding = e["response_headers"].get("content-encoding")
        if e["status"] != 200 or e["request_trimmed"] or e["response_trimmed"] or not reported_usage(e):
            continue
        if e["host"] == "api.openai.com:443" and e["path"] == "/v1/chat/completions":
            kind = (
                "sse" if "event-stream" in ctype else "schema" if '"json_schema"' in e["request_body"] else ""
            )
        else:
            kind = "anthropic" if e["path"] == "/v1/messages" and coding == "gzip" else ""
        if kind and kind not in found:
            found[kind] = e
    return [found["sse"], found["anthropic"], found["schema"]]


def _call(client: Any, exchanges: list[dict[str, Any]], index: int) -> None:
    """Replays exchange `index` with an AWS key in its prompt and a GitHub token as its credential."""
    ex = exchanges[index]
    request = json.loads(ex["request_body"])
    request["messages"].append({"role": "user", "content": f"deploy with {AWS_KEY} please"})
    reply = client.post(
        f"http://{ex['host'].rsplit(':', 1)[0]}{ex['path']}",
        content=json.dumps(request).encode(),
        headers={"content-type": "application/json", "x-replay-id": str(index),
                 "authorization": f"Bearer {GITHUB_TOKEN}"},
    )  # fmt: skip
    assert reply.status_code == 200 and reply.content == ex["response_body"].encode()


def _check_llm_events(tape: Path, exchanges: list[dict[str, Any]], count: int) -> None:
    """Each call is on the tape once per time it was made, with the provider's own usage, the model its
    request named, its answer's bytes counted whole, and no secret."""
    raw = b"".join(p.read_bytes() for p in sorted(tape.glob("seg-*.jsonl")))
    assert AWS_KEY.encode() not in raw and GITHUB_TOKEN.encode() not in raw
    events = [e for e in network_events(read_tape(tape)) if e.get("llm")]
    assert len(events) == count
    for event in events:
        [replay_id] = [v for n, v in event["request"]["headers"] if n.lower() == "x-replay-id"]
        ex = exchanges[int(replay_id)]
        want = reported_usage(ex)
        assert want is not None
        llm = event["llm"]
        usage = llm["usage"]
        assert (usage["input_tokens"], usage["output_tokens"]) == (want.input_tokens, want.output_tokens)
        assert llm["request_model"] == json.loads(ex["request_body"])["model"]
        assert llm["stream"] is ("event-stream" in ex["response_headers"]["content-type"])
        body = event["response"]["body"]
        plain = ex["response_body"].encode()
        assert body["size"] == len(encode(plain, ex["response_headers"].get("content-encoding")))
        assert body["sha256"] == hashlib.sha256(plain).hexdigest()
        assert event["request"]["body"]["dlp_masked"]
        assert "aws-access-key-id" in {hit["rule"] for hit in event["dlp"]["hits"]}
        if '"json_schema"' in ex["request_body"]:  # the answer is the JSON the schema asked for
            json.loads(json.loads(plain)["choices"][0]["message"]["content"])
            assert llm["response_format"] == "json_schema" and llm["contract_drift"] is None


def test_the_worker_builds_llm_calls_and_their_secrets_stay_masked(
    start_proxy, policy_file, tmp_path: Path, monkeypatch
) -> None:
    """An LLM call's event (its answer streamed through a tap, its meter's evidence) is built in the
    worker too (failcore.evidence.remotebuild), not in the proxy; the tape holds no secret, the upstream
    got the prompt as sent (observe), and the llm block is the provider's own figures."""
    import failcore.proxy.recorder as recorder_module

    exchanges = _llm_calls()
    built_here: list[str] = []
    real_build = recorder_module.build_exchange_event

    def counting_build(snap, cfg):  # type: ignore[no-untyped-def]
        built_here.append(snap.path)
        return real_build(snap, cfg)

    with ReplayUpstream(exchanges) as replay:
        proxy = start_proxy(policy_file(POLICY.format(extra="")))
        proxy.call(lambda: proxy.proxy.master.addons.add(RedirectToReplay(replay.port)))
        recorder = proxy.proxy.master.addons.get("failcore").recorder  # type: ignore[union-attr]
        calls = 0
        # (a connection per call, as the conformance replay makes them)
        with proxied_client(proxy, limits=ONE_CALL_A_CONNECTION) as client:
            deadline = time.monotonic() + 120
            while not proxy.call(lambda: recorder.offload.offloaded):
                assert time.monotonic() < deadline, "no exchange was ever handed to the worker"
                _call(client, exchanges, 0)
                calls += 1
                proxy.flush()
            monkeypatch.setattr(recorder_module, "build_exchange_event", counting_build)
            for index in (0, 1, 2, 0, 1, 2):
                _call(client, exchanges, index)
                calls += 1
            proxy.flush()
        proxy.stop()
        assert len(replay.server.received) == calls
        assert all(AWS_KEY.encode() in body for body in replay.server.received)
    assert built_here == []  # (not one was built in the proxy)
    _check_llm_events(tmp_path / "tape", exchanges, calls)


@pytest.mark.parametrize("fail_open", [True, False])
def test_worker_killed_while_building_llm_calls_loses_nothing_and_masks_everything(
    start_proxy, policy_file, tmp_path: Path, monkeypatch, fail_open: bool
) -> None:
    """Killed while it builds LLM calls' events: the calls it held and every later one are built by the
    proxy, whole and masked; the loss is recorded once; nothing is dropped; traffic never stops."""
    import failcore.proxy.recorder as recorder_module

    exchanges = _llm_calls()
    built_here: list[str] = []
    real_build = recorder_module.build_exchange_event

    def counting_build(snap, cfg):  # type: ignore[no-untyped-def]
        built_here.append(snap.path)
        return real_build(snap, cfg)

    with ReplayUpstream(exchanges) as replay:
        proxy = start_proxy(policy_file(POLICY.format(extra="" if fail_open else "fail_open: false")))
        proxy.call(lambda: proxy.proxy.master.addons.add(RedirectToReplay(replay.port)))
        recorder = proxy.proxy.master.addons.get("failcore").recorder  # type: ignore[union-attr]
        calls = 0
        # (a connection per call, as the conformance replay makes them)
        with proxied_client(proxy, limits=ONE_CALL_A_CONNECTION) as client:
            deadline = time.monotonic() + 120
            while not proxy.call(lambda: recorder.offload.offloaded):
                assert time.monotonic() < deadline, "no exchange was ever handed to the worker"
                _call(client, exchanges, 1)
                calls += 1
                proxy.flush()
            monkeypatch.setattr(recorder_module, "build_exchange_event", counting_build)
            for index in range(3):
                _call(client, exchanges, index)
                calls += 1
            proxy.flush()
            assert built_here == []  # built by the worker until it is killed
            os.kill(proxy.call(lambda: recorder.offload.worker.pid), signal.SIGKILL)
            for index in (0, 1, 2, 0, 1, 2):
                _call(client, exchanges, index)
                calls += 1
            proxy.flush()
        proxy.stop()
    assert built_here  # (the proxy built what the dead worker could not)
    _check_llm_events(tmp_path / "tape", exchanges, calls)
    events = read_tape(tmp_path / "tape")
    lost = [e for e in events if e["kind"] == "internal_error"]
    assert len(lost) == 1 and lost[0]["detail"]["where"] == "evidence worker"
    assert lost[0]["detail"]["exit_code"] == -signal.SIGKILL
    run_end = next(e for e in events if e["kind"] == "run_end")
    assert run_end["detail"]["internal_errors"] == 1 and run_end["detail"]["dropped"] == 0
