"""A secret straddling the recorded cap of a body is masked by its offset in the body as received. The
exchange's echoed credentials are masked in the same recorded text, by a marker of fixed length, and
the recorded part's own DLP hits by masks shorter than their secrets: masked first, they moved the
text, and the straddling secret's mask started past its start. Attacks: a credential echoed in the
body before the cap, longer or shorter than its marker, with or without a secret of the recorded part
before the straddling one, in a text and a binary body, and a credential that runs into the
straddling secret; each hoping to leave the secret's first bytes in clear on the tape. The masked
start itself shows no character of the secret (a masked preview of the part showed 4 more)."""

from __future__ import annotations

import base64
import copy
import hashlib
import string
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from failcore.evidence.exchange import (
    EvidenceSettings,
    ExchangeSnapshot,
    MessageSnapshot,
    build_exchange_event,
)
from failcore.evidence.scanworker import DeferredScan, ScanOffload
from tests.helpers import network_events, proxied_client, read_tape
from tests.security.evidence_helpers import POLICY, PROXY_CAP, SALT, SETS
from tests.security.evidence_helpers import event_with_secrets as _event
from tests.security.evidence_helpers import offload_until_ready as _offload_until_ready
from tests.security.evidence_helpers import origin_and_scanner as _origin_and_scanner
from tests.security.helpers import tape_bytes
from tests.security.upstream import LoggingUpstream

CAP = 16 * 1024
SIZE = 40 * 1024
ALNUM = string.ascii_letters + string.digits


def _alnum(seed: str, n: int) -> str:
    """n alphanumerics derived from `seed` (fixed: a chance coincidence with the body cannot flake)."""
    return "".join(ALNUM[b % len(ALNUM)] for b in hashlib.shake_256(seed.encode()).digest(n))


def _token(seed: str) -> str:
    return "ghp_" + _alnum(seed, 36)  # gitleaks' github-pat


def _body(kind: str, placed: dict[int, str]) -> bytes:
    body = bytearray(hashlib.shake_256(b"straddle " + kind.encode()).digest(SIZE))
    if kind == "text":
        body = bytearray(b if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else 0x61 for b in body)
    for at, value in placed.items():
        body[at - 1 : at + len(value) + 1] = b" " + value.encode() + b" "
    return bytes(body)


def _snapshot(body: bytes, kind: str, credential: str) -> ExchangeSnapshot:
    ctype = b"text/plain" if kind == "text" else b"application/octet-stream"
    request = MessageSnapshot(
        "HTTP/1.1",
        ((b"content-type", ctype), (b"authorization", b"Bearer " + credential.encode())),
        body,
        None,
        1.0,
        1.1,
    )
    response = MessageSnapshot("HTTP/1.1", ((b"content-type", b"text/plain"),), b"ok", None, 1.2, 1.3)
    return ExchangeSnapshot(
        "flow-1", "http.request", "api.example.test", 443, "https", "POST", "/upload", 1.0, 1.3,
        request, response, 200, "OK", None, False, None, None, None,
    )  # fmt: skip


def _recorded(event: dict[str, Any]) -> bytes:
    body = event["request"]["body"]
    assert body["truncated"]
    return base64.b64decode(body["b64"]) if "b64" in body else body["text"].encode()


def _without_body(event: dict[str, Any]) -> bytes:
    event = copy.deepcopy(event)
    event["request"]["body"].pop("b64", None)
    event["request"]["body"].pop("text", None)
    return orjson.dumps(event)


def _assert_no_clear(event: dict[str, Any], secret: str, at: int | None = None) -> None:
    """The secret (of 40 characters) shows at most its hit preview's 8 (4 each end) anywhere."""
    recorded, rest = _recorded(event), _without_body(event)
    assert secret.encode() not in recorded and secret.encode() not in rest
    assert secret.encode()[:5] not in recorded
    for k in range(4, len(secret) - 4 - 3):
        window = secret.encode()[k : k + 4]
        assert window not in recorded and window not in rest, (at, k, window)


CASES = [
    pytest.param(kind, length, before, id=f"{kind}-credential{length}{'-recorded-secret' if before else ''}")
    for kind in ("text", "binary")
    for length in (200, 12)
    for before in (False, True)
]


def _exchange(kind: str, length: int, before: bool) -> tuple[ExchangeSnapshot, dict[str, Any]]:
    credential = _alnum(f"credential {kind} {length}", length)
    placed = {3_000: credential, CAP - 30: _token(f"straddling {kind}"), 30_000: _token(f"past {kind}")}
    if before:
        placed[5_000] = _token(f"recorded {kind}")
    return _snapshot(_body(kind, placed), kind, credential), {"credential": credential, **placed}


@pytest.mark.parametrize(("kind", "length", "before"), CASES)
def test_a_straddling_secret_is_masked_from_its_start_whatever_was_masked_before_it(
    kind: str, length: int, before: bool
) -> None:
    origin, scanner = _origin_and_scanner()
    snap, placed = _exchange(kind, length, before)
    cfg = EvidenceSettings("run-test", CAP, SALT, frozenset(), dlp=scanner)
    event = build_exchange_event(snap, cfg)  # the in-process pass
    assert isinstance(event, dict)
    worker_cfg = EvidenceSettings("run-test", CAP, SALT, frozenset(), scanner, origin)
    deferred = build_exchange_event(snap, worker_cfg)
    assert isinstance(deferred, DeferredScan)
    assert deferred() == event  # the pass the worker (or the writer, in its place) runs
    credential = placed.pop("credential")
    assert credential.encode()[:8] not in orjson.dumps(event)
    for at, secret in placed.items():
        _assert_no_clear(event, secret, at)
    locations = {hit["location"] for hit in event["dlp"]["hits"]}
    assert {f"request.body@{CAP - 30}", "request.body@30000"} <= locations
    straddling = next(h for h in event["dlp"]["hits"] if h["location"] == f"request.body@{CAP - 30}")
    # What stands for the secret's first bytes: its fingerprint, as a masked header value is.
    assert _recorded(event).endswith(f"[redacted {straddling['fingerprint']}]".encode())
    recorded_hits = [h for h in event["dlp"]["hits"] if h["location"] == "request.body"]
    assert ("github-pat" in {h["rule"] for h in recorded_hits}) == before
    assert event["request"]["body"]["dlp_masked"] == len(recorded_hits) + 1


@pytest.mark.parametrize("kind", ["text", "binary"])
def test_a_credential_running_into_a_straddling_secret_is_masked_with_it(kind: str) -> None:
    """An echoed credential whose last bytes are the straddling secret's first: masking the secret from
    its start cut the credential, whose own mask then no longer found it."""
    _, scanner = _origin_and_scanner()
    token = _token(f"joined {kind}")
    credential = _alnum(f"joined credential {kind}", 20) + "=" + token[:6]
    body = bytearray(_body(kind, {}))
    start = CAP - 30
    body[start - 22 : start - 21] = b" "
    body[start - 21 : start + len(token)] = credential.encode() + token[6:].encode()
    body[start + len(token)] = 0x20
    snap = _snapshot(bytes(body), kind, credential)
    event = build_exchange_event(snap, EvidenceSettings("run-test", CAP, SALT, frozenset(), dlp=scanner))
    assert isinstance(event, dict)
    assert f"request.body@{start}" in {hit["location"] for hit in event["dlp"]["hits"]}
    _assert_no_clear(event, token)
    assert credential.encode()[:8] not in _recorded(event)


def test_the_worker_masks_straddling_secrets_as_the_in_process_pass_does() -> None:
    origin, scanner = _origin_and_scanner()
    cfg = EvidenceSettings("run-test", CAP, SALT, frozenset(), scanner, origin)
    built = [build_exchange_event(_exchange(*case.values)[0], cfg) for case in CASES]
    expected = [build_exchange_event(_exchange(*case.values)[0], cfg)() for case in CASES]  # type: ignore[operator]
    offload = ScanOffload("run-test")
    try:
        _offload_until_ready(offload, DeferredScan(_event("warm"), scanner, origin))
        handed = offload.offloaded
        scanned = offload(list(built))
        assert offload.offloaded == handed + len(built)  # the child did them all
        assert scanned == orjson.loads(orjson.dumps(expected))
    finally:
        offload.close()


@pytest.mark.usefixtures("manager")  # a fresh past-cap scan process, ended with the test
def test_through_the_proxy_a_streamed_upload_echoing_its_credential_keeps_no_straddling_secret(
    start_proxy, policy_file, logging_upstream: LoggingUpstream, tmp_path: Path
) -> None:
    """The reviewer's case, through the real proxy: a streamed upload repeats its 200-character Bearer
    credential at byte 3000 and carries a GitHub token 30 bytes before the recorded cap; the tape held
    the token's first 30 characters."""
    proxy = start_proxy(policy_file(POLICY), sets=SETS, upstream_ca=logging_upstream.ca_path)
    recorder = proxy.proxy.master.addons.get("failcore").recorder  # type: ignore[union-attr]
    deadline = time.monotonic() + 120
    while not proxy.call(lambda: recorder.offload.worker.poll_ready()):
        assert time.monotonic() < deadline, "the evidence worker never became ready"
        time.sleep(0.1)
    credential = _alnum("proxy credential", 200)
    straddling, past = _token("proxy straddling"), _token("proxy past")
    size = 3 * PROXY_CAP
    body = bytearray(hashlib.shake_256(b"through the proxy, echoed").digest(size))
    for at, value in ((3_000, credential), (PROXY_CAP - 30, straddling), (2 * PROXY_CAP, past)):
        body[at - 1 : at + len(value) + 1] = b" " + value.encode() + b" "
    handed = proxy.call(lambda: recorder.offload.offloaded)
    with proxied_client(proxy) as client:
        sent = client.post(
            f"{logging_upstream.url}/upload",
            content=bytes(body),
            headers={"authorization": f"Bearer {credential}", "content-type": "application/octet-stream"},
        )
        assert sent.status_code == 200
    proxy.flush()
    assert proxy.call(lambda: recorder.offload.offloaded) > handed  # the worker did the DLP pass
    proxy.stop()
    [event] = [e for e in network_events(read_tape(tmp_path / "tape")) if e["path"] == "/upload"]
    assert f"request.body@{PROXY_CAP - 30}" in {h["location"] for h in event["dlp"]["hits"]}
    raw = tape_bytes(tmp_path / "tape")
    assert credential.encode()[:8] not in raw and credential.encode()[:8] not in _recorded(event)
    _assert_no_clear(event, straddling)
    _assert_no_clear(event, past)
    assert bytes(body) == logging_upstream.received_bytes()[-size:]  # observe: it went out whole
