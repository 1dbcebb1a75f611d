"""Differential of what the tape records: the same exchanges recorded by two failcore checkouts, their
events compared field by field.

    .venv/bin/python benchmarks/evidence_diff.py --repo /tmp/before --repo .

The exchanges: every one of the recorded real LLM API exchanges in tests/data/conformance/llm (openllmetry's
cassettes: their request bodies, status, framing headers and bodies, re-encoded as recorded), plus 250 of
gitleaks' true-positive fixtures placed in chat requests (some answered with the request's own credential
echoed, some as SSE, some gzip'd, some failing upstream), plus 8 large ones (100 KB JSON, gzip decoding past
64 KB, SSE and uploads streaming past the 1 MiB cap with a secret past it); credentials in headers, cookies,
trailers. Each goes through the whole addon (failcore.proxy.FailCore) in mitmproxy's test harness, hook by
hook as mitmproxy calls them (streamed bodies through the stream callables), with a real tape writer (and DLP
evidence worker), once with the default policy and once with DLP off. Deterministic: fixed flow ids, run id,
timestamps, and one salt (a shared confdir). Compared: every field of every event except the chain's
(prev/seq/h), the times of run_start/run_end/policy events, their detail (paths, durations), a policy
event's run id and streamed chunks' arrival times (their sizes are compared). Exit status 1 on a difference.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import brotli
import orjson
from mitmproxy import hooks, http
from mitmproxy.addonmanager import Loader
from mitmproxy.flow import Error
from mitmproxy.test import taddons, tflow

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "tests" / "data" / "conformance"


def _cassettes() -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in (DATA / "llm" / "openllmetry-cassettes.jsonl").open()]


def _secrets() -> list[dict]:  # type: ignore[type-arg]
    fixtures = [json.loads(line) for line in (DATA / "dlp" / "gitleaks-fixtures.jsonl").open()]
    return [f for f in fixtures if f["kind"] == "tp" and not f.get("needs_path")][::12][:250]


def encode(body: bytes, enc):
    if not enc:
        return body
    if enc == "gzip":
        return gzip.compress(body, mtime=0)
    if enc == "br":
        return brotli.compress(body)
    if enc == "deflate":
        return zlib.compress(body)
    return body


def specs():
    CASSETTES = _cassettes()
    TPS = _secrets()
    for i, c in enumerate(CASSETTES):
        host, _, port = c["host"].rpartition(":")
        rh = [(k, v) for k, v in c["response_headers"].items() if v is not None]
        body = (c["response_body"] or "").encode()
        enc = c["response_headers"].get("content-encoding")
        yield dict(
            i=i,
            method=c["method"],
            host=host or c["host"],
            port=int(port or 443),
            path=c["path"],
            req_headers=[
                ("content-type", "application/json"),
                ("authorization", f"Bearer sk-proj-{i:04d}abcdefghijklmnopqrstuvwxyz0123"),
                ("user-agent", "OpenAI/Python 1.2.3"),
                ("x-request-id", f"rq-{i}"),
            ]
            + ([("cookie", f"sess=abcdefgh{i:06d}; theme=dark")] if i % 5 == 0 else []),
            req_body=(c["request_body"] or "").encode(),
            status=c["status"],
            resp_headers=[*rh, ("x-request-id", f"req_{i:08x}")],
            resp_body=encode(body, enc),
            error=("Client disconnected." if i % 23 == 7 else None),
        )
    for j, f in enumerate(TPS):
        i = len(CASSETTES) + j
        doc = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f["text"]}]}
        token = f"sk-proj-{i:04d}zyxwvutsrqponmlkjihgfedcba9876"
        resp = {
            "id": f"x{j}",
            "object": "chat.completion",
            "echo": token if j % 3 == 0 else "no",
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f["text"] if j % 2 else "ok"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 10 + j, "completion_tokens": 3, "total_tokens": 13 + j},
        }
        paths = [
            "/v1/chat/completions",
            "/upload?k=" + f["text"][:40].replace(" ", "+").replace("\n", ""),
            "/api/data",
        ]
        yield dict(
            i=i,
            method="POST",
            host="api.openai.com" if j % 4 else "example.org",
            port=443,
            path=paths[j % 3],
            req_headers=[
                ("content-type", "application/json"),
                ("authorization", f"Bearer {token}"),
                ("x-api-key", f"key-{j:08d}secret"),
            ],
            req_body=json.dumps(doc).encode(),
            status=200 if j % 7 else 500,
            resp_headers=[("content-type", "application/json" if j % 5 else "text/event-stream")]
            + ([("content-encoding", "gzip")] if j % 6 == 1 else []),
            resp_body=encode(json.dumps(resp).encode(), "gzip" if j % 6 == 1 else None),
            error=None,
        )


def big_specs():
    base = len(_cassettes()) + len(_secrets())
    secret = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    filler = json.dumps({"data": [f"lorem ipsum dolor sit amet {k}" for k in range(4000)]})
    for j in range(8):
        i = base + j
        body = (filler[:-2] + f', "k": "{secret}"' + "}").encode()
        rh = [("content-type", "application/json")]
        req_body = b'{"q": 1}'
        if j in (0, 1):  # 100+ KB buffered JSON (built in the writer's thread)
            rb = body
        elif j in (2, 3):  # gzip: small on the wire, decodes past 64 KB
            rb = gzip.compress(body * 3, mtime=0)
            rh.append(("content-encoding", "gzip"))
        elif j in (4, 5):  # SSE stream past the 1 MiB cap, secret past the cap
            ev = b"".join(b'data: {"x": "%s"}\n\n' % (b"y" * 500) for _ in range(2600))
            rb = ev + b'data: {"k": "' + secret.encode() + b'"}\n\n'
            rh = [("content-type", "text/event-stream")]
        else:  # a 2 MiB upload that streams, secret past the cap
            rb = b'{"ok": true}'
            req_body = b'{"blob": "' + b"z" * (2 << 20) + secret.encode() + b'"}'
        yield dict(
            i=i,
            method="POST",
            host="files.example.com",
            port=443,
            path=f"/big/{j}",
            req_headers=[("content-type", "application/json"), ("content-length", str(len(req_body)))],
            req_body=req_body,
            status=200,
            resp_headers=rh,
            resp_body=rb,
            error=None,
        )


def make(s):
    f = tflow.tflow(resp=True)
    f.id = f"flow-{s['i']:05d}"
    f.request.host, f.request.port, f.request.scheme = s["host"], s["port"], "htTPS"
    f.server_conn.address = (s["host"], s["port"])
    f.client_conn.sni = s["host"]
    f.request.method, f.request.path = s["method"], s["path"]
    f.request.headers = http.Headers(
        [(k.encode(), v.encode()) for k, v in s["req_headers"]] + [(b"host", s["host"].encode())]
    )
    f.request.content = s["req_body"]
    f.response.status_code = s["status"]
    f.response.headers = http.Headers([(k.encode(), v.encode()) for k, v in s["resp_headers"]])
    if not any(k == "content-length" or k == "transfer-encoding" for k, _ in s["resp_headers"]):
        f.response.headers["content-length"] = str(len(s["resp_body"]))
    f.response.raw_content = s["resp_body"]
    if s["i"] % 10 == 3:
        f.response.trailers = http.Headers(
            [(b"x-checksum", b"abc"), (b"x-api-key", b"trailersecret%05d" % s["i"])]
        )
        f.request.headers["x-echo"] = f"trailersecret{s['i']:05d}"
    base = 1_700_000_000.0 + s["i"]
    f.request.timestamp_start, f.request.timestamp_end = base, base + 0.001
    f.response.timestamp_start, f.response.timestamp_end = base + 0.01, base + 0.02
    return f


async def call(addon, name, f):
    h = getattr(addon, name, None)
    if h is not None and (r := h(f)) is not None:
        await r


async def record(out: Path, confdir: Path, policy: str | None) -> int:
    from failcore.proxy import FailCore

    addon = FailCore()
    opts = {"confdir": str(confdir), "failcore_tape": str(out / "tape"), "failcore_run_id": "diff-run"}
    if policy:
        opts["failcore_policy"] = policy
    with taddons.context() as tctx:
        addon.load(Loader(tctx.master))
        tctx.master.addons.add(addon)
        tctx.options.update(**opts)
        tctx.master.addons.invoke_addon_sync(addon, hooks.ConfigureHook(set(tctx.options.keys())))
        r = addon.running()
        if r is not None:
            await r
        time.sleep(1.0)
        n = 0
        for s in [*specs(), *big_specs()]:
            f = make(s)
            resp = f.response
            f.response = None
            await call(addon, "requestheaders", f)
            if callable(f.request.stream):
                body = f.request.raw_content
                f.request.data.content = None
                for k in range(0, len(body), 65536):
                    f.request.stream(body[k : k + 65536])
                f.request.stream(b"")
            await call(addon, "request", f)
            if f.response is None:
                f.response = resp
                await call(addon, "responseheaders", f)
                if callable(f.response.stream):
                    body = f.response.raw_content
                    f.response.data.content = None
                    step = 700 if len(body) < 200000 else 65536
                    for k in range(0, len(body), step):
                        f.response.stream(body[k : k + step])
                    f.response.stream(b"")
                if s["error"]:
                    f.error = Error(s["error"])
                    await call(addon, "error", f)
                else:
                    await call(addon, "response", f)
            else:
                await call(addon, "response", f)
            n += 1
            if n % 8 == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(0)
        addon.recorder.writer.flush(timeout=120)
        addon.recorder.done()
    return n


def _normalised(event: dict) -> dict:  # type: ignore[type-arg]
    event = {k: v for k, v in event.items() if k not in ("prev", "seq", "h")}
    if event.get("kind") in ("run_start", "run_end", "checkpoint", "dropped", "policy") or (
        event.get("kind") == "internal_error" and event.get("flow") is None
    ):
        for key in ("ts_start", "ts_end", "detail"):
            event.pop(key, None)
        if event.get("kind") == "policy":
            event.pop("run", None)
    for block in (event, event.get("request"), event.get("response")):
        stream = block.get("stream") if isinstance(block, dict) else None
        if isinstance(stream, dict) and "chunks" in stream:
            stream["chunks"] = [size for _, size in stream["chunks"]]
    return event


def _events(tape: Path, repo: Path) -> list[dict]:  # type: ignore[type-arg]
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, orjson\nfrom pathlib import Path\nfrom failcore.tape.reader import iter_events\n"
            "events = [e for e in iter_events(Path(sys.argv[1])) if e.get('kind') != 'checkpoint']\n"
            "sys.stdout.buffer.write(orjson.dumps(events))",
            str(tape),
        ],
        env=dict(os.environ, PYTHONPATH=str(repo)),
        capture_output=True,
        check=True,
    )
    return [_normalised(e) for e in orjson.loads(out.stdout)]


def _differences(a: object, b: object, path: str, found: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b) and set(a) == set(b):
            found.append(f"{path}: key order")
        for key in {**a, **b}:
            _differences(a.get(key, "<missing>"), b.get(key, "<missing>"), f"{path}.{key}", found)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _differences(x, y, f"{path}[{i}]", found)
    elif a != b or type(a) is not type(b):
        found.append(f"{path}: {repr(a)[:160]} | {repr(b)[:160]}")


def compare(a: list[dict], b: list[dict]) -> tuple[list[str], bool]:  # type: ignore[type-arg]
    def key(e: dict) -> tuple[str, str, bytes]:  # type: ignore[type-arg]
        return (e.get("kind") or "", e.get("flow") or "", orjson.dumps(e, option=orjson.OPT_SORT_KEYS))

    found: list[str] = []
    if len(a) != len(b):
        found.append(f"event count: {len(a)} | {len(b)}")
    for x, y in zip(sorted(a, key=key), sorted(b, key=key), strict=False):
        _differences(x, y, f"{x.get('kind')}:{x.get('flow')}", found)
    same_order = [(e["kind"], e.get("flow")) for e in a] == [(e["kind"], e.get("flow")) for e in b]
    return found, same_order


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repo", type=Path, action="append", required=True, help="two checkouts")
    parser.add_argument("--child", nargs=3, metavar=("OUT", "CONFDIR", "POLICY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        out, confdir, policy = args.child
        print(asyncio.run(record(Path(out), Path(confdir), None if policy == "-" else policy)))
        return 0
    if len(args.repo) != 2:
        parser.error("give two --repo checkouts")
    repos = [r.resolve() for r in args.repo]
    status = 0
    with tempfile.TemporaryDirectory(prefix="failcore-evidence-diff-") as tmp:
        no_dlp = Path(tmp) / "no-dlp.yaml"
        no_dlp.write_text("mode: observe\ndefault: ALLOW\ndlp:\n  enabled: false\n")
        for name, policy in (("default policy", "-"), ("DLP off", str(no_dlp))):
            confdir = Path(tempfile.mkdtemp(dir=tmp))  # one salt for both checkouts
            tapes = []
            for repo in repos:
                out = Path(tempfile.mkdtemp(dir=tmp))
                env = dict(os.environ, PYTHONPATH=f"{repo}{os.pathsep}{HERE.parent}")
                subprocess.run(
                    [
                        sys.executable,
                        str(HERE / "evidence_diff.py"),
                        "--repo",
                        ".",
                        "--repo",
                        ".",
                        "--child",
                        str(out),
                        str(confdir),
                        policy,
                    ],
                    env=env,
                    cwd=repo,
                    check=True,
                    capture_output=True,
                )
                tapes.append(_events(out / "tape", repo))
            found, same_order = compare(*tapes)
            network = [e for e in tapes[0] if e.get("kind") == "network"]
            dlp, streamed, llm = (sum(1 for e in network if e.get(k)) for k in ("dlp", "stream", "llm"))
            print(
                f"{name}: {len(network)} exchanges ({dlp} with DLP findings, {streamed} streamed, "
                f"{llm} metered), {len(tapes[0])} events: {len(found)} fields differ; "
                f"same order on the tape: {same_order}"
            )
            for line in found[:30]:
                print("  " + line)
            status |= bool(found)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
