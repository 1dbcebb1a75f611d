"""The upstream (nginx, plain and TLS) and the proxies under test (mitmdump per variant)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.harness import REPO, VENV_BIN, CommandLog, free_port, stop_process, tree_cpu, wait_for_port
from benchmarks.variants import Variant
from failcore.demo.certs import generate_certificate

ADDON = REPO / "addons" / "failcore_addon.py"
STRICT_POLICY = REPO / "policies" / "strict.yaml"
REQUEST_BODY_BYTES = 1024
RESPONSE_BODY_BYTES = 1024


def json_document(size: int, label: str) -> str:
    """A JSON object of exactly `size` bytes, shaped like a small chat completion."""
    head = {"id": "chatcmpl-bench", "object": label, "model": "gpt-4o-mini", "content": ""}
    base = len(json.dumps(head, separators=(",", ":")))
    head["content"] = "lorem ipsum dolor sit amet " * ((size - base) // 27 + 1)
    text = json.dumps(head, separators=(",", ":"))
    overshoot = len(text) - size
    head["content"] = head["content"][: len(head["content"]) - overshoot]
    text = json.dumps(head, separators=(",", ":"))
    assert len(text) == size, len(text)
    return text


def _nginx_config(prefix: Path, plain_port: int, tls_port: int, cert: Path, key: Path) -> str:
    reply = json_document(RESPONSE_BODY_BYTES, "chat.completion")
    # `return` answers POST too and discards the request body while keeping the connection alive.
    return f"""
worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log error;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    default_type application/json;
    server {{
        listen 127.0.0.1:{plain_port} reuseport;
        listen 127.0.0.1:{tls_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_session_cache shared:bench:1m;
        location / {{ return 200 '{reply}'; }}
    }}
}}
"""


@dataclass
class Upstream:
    plain_port: int
    tls_port: int
    cert: Path

    def url(self, tls: bool, path: str = "/echo") -> str:
        if tls:
            return f"https://127.0.0.1:{self.tls_port}{path}"
        return f"http://127.0.0.1:{self.plain_port}{path}"


@contextmanager
def nginx_upstream(workdir: Path, log: CommandLog) -> Iterator[Upstream]:
    prefix = workdir / "nginx"
    prefix.mkdir(mode=0o700)
    (prefix / "body").mkdir()
    certs = generate_certificate(prefix, "127.0.0.1")
    upstream = Upstream(free_port(), free_port(), certs.cert_path)
    conf = prefix / "nginx.conf"
    conf.write_text(
        _nginx_config(prefix, upstream.plain_port, upstream.tls_port, certs.cert_path, certs.key_path)
    )
    argv = [_nginx_binary(), "-p", str(prefix), "-c", str(conf)]
    log.note("nginx", argv)
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(upstream.plain_port, process)
        wait_for_port(upstream.tls_port, process)
        yield upstream
    finally:
        stop_process(process)


def _nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        raise RuntimeError("nginx not found: apt-get install nginx-light")
    return found


@dataclass
class BenchContext:
    """Per-invocation state shared by every section."""

    workdir: Path
    log: CommandLog
    quick: bool
    confdir: Path = field(init=False)
    failcore_home: Path = field(init=False)
    enforce_policy: Path = field(init=False)
    no_dlp_policy: Path = field(init=False)

    def __post_init__(self) -> None:
        self.confdir = self.workdir / "confdir"
        self.confdir.mkdir(mode=0o700)
        self.failcore_home = self.workdir / "failcore-home"
        self.failcore_home.mkdir(mode=0o700)
        self.enforce_policy = self.workdir / "enforce.yaml"
        self.enforce_policy.write_text(enforce_policy_text())
        self.no_dlp_policy = self.workdir / "observe-no-dlp.yaml"
        self.no_dlp_policy.write_text("mode: observe\ndefault: ALLOW\ndlp:\n  enabled: false\n")
        self.warm_dlp_cache()

    def warm_dlp_cache(self) -> None:
        """Compile the DLP rules of every policy a variant uses into this run's FAILCORE_HOME once, as a
        user's first start does: without it the first round of each failcore variant compiles them
        (seconds of CPU, in the proxy and again in its evidence worker) inside its timed run."""

        code = (
            "import sys\n"
            "from failcore.dlp.pending import wait_until_built\n"
            "from failcore.dlp.scanner import DlpScanner\n"
            "from failcore.policy.load import load_policy\n"
            "from failcore.shipped import default_policy_path\n"
            "for path in [default_policy_path(), *sys.argv[1:]]:\n"
            "    scanner = DlpScanner.for_policy(load_policy(path), b'warm')\n"
            "    if scanner is not None:\n"
            "        wait_until_built(scanner.engine)\n"
        )
        env = dict(os.environ, FAILCORE_HOME=str(self.failcore_home), PYTHONPATH=str(REPO))
        argv = [str(VENV_BIN / "python"), "-c", code, str(self.enforce_policy)]
        self.log.note("python [warm the DLP cache]", argv)
        subprocess.run(argv, env=env, check=True, timeout=600)

    def scratch(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.workdir))


def enforce_policy_text(*, fail_open: bool = False, budgets: bool = True, dlp_block: bool = True) -> str:
    """strict.yaml (provider allow-list, default BLOCK, enforce) plus one rule for the loopback upstream,
    placed last so every request walks the whole rule list first; with budgets that every request is
    counted against (never reached) and DLP that can BLOCK, so requests are scanned before forwarding.
    The keywords take one part away each (benchmarks/proxy_threads.py `--variant enforce-parts`):
    `fail_open` (strict.yaml says false), the `budgets`, DLP's BLOCK (`dlp_block`; DLP still on)."""
    strict = STRICT_POLICY.read_text()
    if fail_open:
        strict, count = re.subn(r"^fail_open: false$", "fail_open: true", strict, flags=re.MULTILINE)
        if count != 1:
            raise ValueError("strict.yaml no longer says `fail_open: false` once")
    # The rule goes at the end of the `rules:` list, wherever strict.yaml's next section starts.
    head, rules_on = strict.split("\nrules:\n", 1)
    following = re.search(r"^[a-z_]+:", rules_on, re.MULTILINE)
    cut = following.start() if following else len(rules_on)
    rules, rest = rules_on[:cut].rstrip("\n"), rules_on[cut:]
    return (
        head
        + "\nrules:\n"
        + rules
        + """

  - id: allow-bench-upstream
    host: 127.0.0.1
    scheme: [http, https]
    action: ALLOW
    reason: "benchmark upstream"

"""
        + rest.rstrip("\n")
        + "\n"
        + (_BENCH_BUDGETS if budgets else "")
        + ("\ndlp:\n  severity_actions: {critical: BLOCK}\n" if dlp_block else "\ndlp:\n  enabled: true\n")
    )


_BENCH_BUDGETS = """
budgets:
  - id: bench-run
    window: run
    limits: {requests: 1000000000, cost_usd: 1000000}
  - id: bench-day
    window: day
    limits: {requests: 1000000000, total_tokens: 1000000000000}
"""


class ProxyProcess:
    """One mitmdump for one variant, with a fresh tape / flow file."""

    def __init__(
        self, ctx: BenchContext, variant: Variant, upstream: Upstream, extra_sets: tuple[str, ...] = ()
    ):
        if variant.direct:
            raise ValueError("the direct variant has no proxy")
        self.variant = variant
        self.port = free_port()
        self.scratch = ctx.scratch("proxy-")
        self.tape = self.scratch / "tape"
        fill = {
            "addon": str(ADDON),
            "tape": str(self.tape),
            "flows": str(self.scratch / "flows.mitm"),
            "policy_enforce": str(ctx.enforce_policy),
            "policy_no_dlp": str(ctx.no_dlp_policy),
        }
        self.argv = [
            str(VENV_BIN / "mitmdump"),
            "-q",
            "--listen-host",
            "127.0.0.1",
            "-p",
            str(self.port),
            "--set",
            f"confdir={ctx.confdir}",
            "--set",
            "termlog_verbosity=error",
            "--set",
            f"ssl_verify_upstream_trusted_ca={upstream.cert}",
            *(arg.format(**fill) for arg in variant.extra),
        ]
        if variant.failcore:
            self.argv += ["--set", f"failcore_tape={self.tape}"]
        for item in extra_sets:
            self.argv += ["--set", item]
        env = dict(os.environ, FAILCORE_HOME=str(ctx.failcore_home), PYTHONPATH=str(REPO))
        env.update(variant.env)
        ctx.log.note(f"mitmdump [{variant.name}]", self.argv)
        self.process = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        try:
            wait_for_port(self.port, self.process)
        except BaseException:
            self.stop()
            raise
        self.ca_cert = ctx.confdir / "mitmproxy-ca-cert.pem"

    @property
    def pid(self) -> int:
        return self.process.pid

    def settle(self, timeout: float = 30.0) -> float:
        """Wait until the proxy and its children are idle (CPU < 4% over half a second): mitmdump opens
        its port before its start-up work ends (the addon's background warm-ups, the DLP evidence
        worker loading), and a short timed run would count that work as the exchanges' cost.
        Returns the seconds waited."""
        started = time.monotonic()
        last = sum(tree_cpu(self.pid))
        while time.monotonic() - started < timeout:
            time.sleep(0.5)
            now = sum(tree_cpu(self.pid))
            if now - last < 0.02:
                break
            last = now
        return time.monotonic() - started

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.process)
        if self.process.stderr is not None:
            self.stderr = self.process.stderr.read().decode("utf-8", "replace")
            self.process.stderr.close()

    def recorded_network_events(self) -> int:
        """Network events on this proxy's tape (call after stop(): the writer has flushed and closed)."""
        return self._count_kind(b"network")

    def internal_errors(self) -> int:
        return self._count_kind(b"internal_error")

    def dropped_markers(self) -> int:
        return self._count_kind(b"dropped")

    def _count_kind(self, kind: bytes) -> int:
        needle = b'"kind":"' + kind + b'"'
        return sum(path.read_bytes().count(needle) for path in sorted(self.tape.glob("seg-*.jsonl")))

    def cleanup(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


@contextmanager
def running_proxy(
    ctx: BenchContext, variant: Variant, upstream: Upstream, extra_sets: tuple[str, ...] = ()
) -> Iterator[ProxyProcess]:
    proxy = ProxyProcess(ctx, variant, upstream, extra_sets)
    try:
        yield proxy
    finally:
        proxy.stop()
