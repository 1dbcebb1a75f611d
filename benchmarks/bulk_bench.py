"""Bulk transfer through the proxy: a large HTTPS download and upload, against bare mitmdump streaming.

    .venv/bin/python benchmarks/bulk_bench.py [--size-mib 128] [--runs 5] [--repo PATH ...]
        [--only download|upload] [--probe-runs 3] [--profile DIR] [--json] [--write BENCHMARKS.md]

The upstream is a loopback TLS server (a child process of this script) that answers
`GET /download` with `--size-mib` MiB of incompressible bytes (Content-Length set) and `POST /upload`
by reading the body and answering its size. The client is curl, through the proxy, trusting
mitmproxy's CA; the proxy trusts the upstream's certificate (ssl_verify_upstream_trusted_ca).

Compared, interleaved run by run:
  bare           mitmdump --set stream_large_bodies=1m (mitmproxy streaming bodies, no addon)
  failcore       mitmdump -s addons/failcore_addon.py, default policy (observe, DLP evidence on)
With `--repo` repeated (e.g. a `git archive` of an older commit and this checkout) every repo gets its
own failcore variant, so before/after numbers come from one run on the same machine state.

Per transfer: MB/s (10^6 bytes per second of wall time, curl start to exit), the proxy's CPU seconds
per MiB (utime + stime of all its threads, from /proc), and the proxy's RSS growth during the transfer
(peak VmRSS sampled every 20 ms minus VmRSS before it; "flat" means it does not grow with the body);
the same CPU and the peak RSS of its child processes (failcore's DLP evidence worker and past-cap scan
process), apart. CPU is read 0.5 s after curl exits, so work finishing after the transfer counts.
Medians over the runs, min-max in parentheses, ratios against bare. Run on an idle machine when you can:
on a shared one the numbers include whatever else the CPU is doing, which interleaving spreads evenly.

The tape writer thread's CPU per transfer is read apart (the launcher gives each thread its Python
name as OS name). After the timed runs, `--probe-runs N` more uploads per variant (interleaved) each
have a client send small HTTPS requests through the proxy on their own tunnel, one every 20 ms, during
the upload and for 1.5 s after it (when its evidence is built): their latency is what other agents
wait while the proxy's event loop cannot run. Those uploads count for latency only.

`--profile DIR` runs one more failcore proxy under cProfile (its event-loop thread) for one download and
one upload, and writes DIR/download.pstats, DIR/upload.pstats and a text summary of each.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import children_of, free_port, rss_mib, stop_process, tree_cpu, wait_for_port
from benchmarks.report import machine_info

REPO = Path(__file__).resolve().parent.parent
MIB = 1 << 20
BLOCK = MIB
SECTION_TITLE = "## Bulk transfer: 128 MiB HTTPS download and upload"
# Every proxy starts through this launcher so `--repo` can time another checkout with this venv (an
# editable install's import hook would otherwise load the installed checkout's failcore). With a
# profile path it runs mitmdump under cProfile and writes the stats when mitmdump exits.
# Each thread is also given its Python name as its OS name (prctl PR_SET_NAME, 15 bytes), so the tape
# writer's thread can be found in /proc (Python 3.12 names no OS thread).
LAUNCHER = (
    "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in f.__module__.lower()]; "
    "sys.path.insert(0, sys.argv.pop(1)); profile = sys.argv.pop(1); sys.argv[0] = 'mitmdump'; "
    "import ctypes, threading; libc = ctypes.CDLL(None); inner = threading.Thread._bootstrap_inner\n"
    "def named(self): libc.prctl(15, self.name[:15].encode(), 0, 0, 0); inner(self)\n"
    "threading.Thread._bootstrap_inner = named\n"
    "from mitmproxy.tools.main import mitmdump\n"
    "if not profile: sys.exit(mitmdump())\n"
    "import cProfile; p = cProfile.Profile(); p.enable()\n"
    "try: mitmdump()\n"
    "finally: p.disable(); p.dump_stats(profile)\n"
)


# --- the upstream ---------------------------------------------------------------------------------


def _block() -> bytes:
    """1 MiB of incompressible bytes, the same every run (a download of a model or an archive)."""
    out = bytearray()
    seed = b"failcore bulk bench"
    while len(out) < BLOCK:
        seed = hashlib.sha256(seed).digest()
        out += hashlib.shake_256(seed).digest(65536)
    return bytes(out[:BLOCK])


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    size = 0
    block = b""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/small"):  # the small requests sent while a transfer finishes
            # One write (headers and body apart, Nagle's algorithm held the body back for a delayed ACK:
            # ~40 ms on every answer).
            self.log_request(200)
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
            )
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(self.size))
        self.end_headers()
        view = memoryview(self.block)
        left = self.size
        while left:
            n = min(left, len(view))
            self.wfile.write(view[:n])
            left -= n

    def do_POST(self) -> None:
        left = int(self.headers.get("Content-Length", "0"))
        received = 0
        buffer = bytearray(BLOCK)
        view = memoryview(buffer)
        while left:
            n = self.rfile.readinto(view[: min(left, BLOCK)])
            if not n:
                break
            received += n
            left -= n
        body = str(received).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(port: int, cert: str, key: str, size: int) -> None:
    _Handler.size = size
    _Handler.block = _block()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


# --- proxies and transfers ------------------------------------------------------------------------


class Proxy:
    def __init__(
        self,
        name: str,
        repo: Path,
        workdir: Path,
        upstream_cert: Path,
        failcore: bool,
        profile: str = "",
        policy: Path | None = None,
    ):
        self.name = name
        self.port = free_port()
        scratch = Path(tempfile.mkdtemp(prefix="proxy-", dir=workdir))
        self.tape = scratch / "tape" if failcore else None
        argv = [
            sys.executable,
            "-c",
            LAUNCHER,
            str(repo),
            profile,
            "-q",
            "--listen-host",
            "127.0.0.1",
            "-p",
            str(self.port),
            "--set",
            f"confdir={workdir / 'confdir'}",
            "--set",
            "termlog_verbosity=error",
            "--set",
            f"ssl_verify_upstream_trusted_ca={upstream_cert}",
        ]
        if failcore:
            argv += [
                "-s",
                str(repo / "addons" / "failcore_addon.py"),
                "--set",
                f"failcore_tape={scratch / 'tape'}",
            ]
            if policy is not None:
                argv += ["--set", f"failcore_policy={policy}"]
        else:
            argv += ["--set", "stream_large_bodies=1m"]
        env = dict(os.environ, FAILCORE_HOME=str(workdir / "failcore-home"))
        self.process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for_port(self.port, self.process)

    def stop(self) -> None:
        stop_process(self.process, timeout=60)

    def past_cap_coverage(self) -> list[dict[str, Any]]:
        """The `dlp.past_cap` blocks of the tape (read after stop): did DLP cover the bodies whole?"""
        found: list[dict[str, Any]] = []
        for path in sorted(self.tape.glob("*.jsonl")) if self.tape is not None else ():
            for line in path.read_text().splitlines():
                if '"past_cap"' in line:
                    found.extend(json.loads(line).get("dlp", {}).get("past_cap", []))
        return found


def children_rss_mib(pid: int) -> float:
    """RSS of a process's live children (failcore's DLP evidence worker and past-cap scan process)."""
    total = 0.0
    for child in children_of(pid):
        try:
            total += rss_mib(child)
        except (OSError, RuntimeError):
            continue
    return total


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.before = rss_mib(pid)
        self.peak = self.before
        self.children_before = children_rss_mib(pid)
        self.children_peak = self.children_before
        self.stopped = threading.Event()

    def sample(self) -> None:
        self.peak = max(self.peak, rss_mib(self.pid))
        self.children_peak = max(self.children_peak, children_rss_mib(self.pid))

    def run(self) -> None:
        while not self.stopped.wait(0.02):
            self.sample()

    def growth(self) -> float:
        self.stopped.set()
        self.join()
        self.sample()
        return self.peak - self.before


def thread_cpu(pid: int) -> tuple[float, float, float, float]:
    """CPU seconds of the proxy's event-loop (main) thread, of its tape writer thread(s), of the past-cap
    scan's in-process worker thread (it scans a batch the scan process has no free slot for: the child
    fell behind) and of that process's reply reader thread (all named by the launcher), from
    /proc/<pid>/task/<tid>/schedstat (nanoseconds; /proc's stat counts 10 ms ticks)."""
    loop = writer = in_process = reader = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            seconds = int((task / "schedstat").read_text().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            continue
        if task.name == str(pid):
            loop += seconds
        elif comm.startswith("tape-writer"):
            writer += seconds
        elif comm.startswith("failcore-dlp-pa"):  # failcore-dlp-past-cap (15 bytes kept)
            in_process += seconds
        elif comm.startswith("failcore-past-c"):  # failcore-past-cap-reader
            reader += seconds
    return loop, writer, in_process, reader


# Small requests: one every PROBE_INTERVAL on their own keep-alive tunnel, until PROBE_AFTER seconds
# after the big transfer ended (when its evidence is built).
PROBE_INTERVAL = 0.02
PROBE_AFTER = 1.5


class Prober(threading.Thread):
    """Sends small HTTPS requests through the proxy while a big transfer runs and finishes: another
    agent's calls, which wait whenever the proxy's event loop cannot run."""

    def __init__(self, proxy_port: int, upstream_port: int, ca: Path) -> None:
        import http.client

        super().__init__(daemon=True)
        context = ssl.create_default_context(cafile=str(ca))
        self.conn = http.client.HTTPSConnection("127.0.0.1", proxy_port, context=context, timeout=60)
        self.conn.set_tunnel("127.0.0.1", upstream_port)
        self._get()  # the tunnel and TLS set up before the transfer starts
        self.samples: list[tuple[float, float]] = []  # (sent at, latency), perf_counter seconds
        self.until: float | None = None

    def _get(self) -> None:
        self.conn.request("GET", "/small")
        response = self.conn.getresponse()
        if response.read() != b"{}":
            raise RuntimeError("unexpected answer to /small")

    def run(self) -> None:
        while self.until is None or time.perf_counter() < self.until:
            sent = time.perf_counter()
            self._get()
            self.samples.append((sent, time.perf_counter() - sent))
            time.sleep(PROBE_INTERVAL)

    def finish(self, ended: float) -> dict[str, float]:
        self.until = ended + PROBE_AFTER
        self.join()
        self.conn.close()
        after = [lat * 1000 for sent, lat in self.samples if sent >= ended] or [0.0]
        during = [lat * 1000 for sent, lat in self.samples if sent < ended] or [0.0]
        return {
            "small_after_p50_ms": statistics.median(after),
            "small_after_max_ms": max(after),
            "small_during_p50_ms": statistics.median(during),
            "small_during_max_ms": max(during),
        }


class Bench:
    def __init__(self, workdir: Path, size: int) -> None:
        from failcore.demo.certs import generate_certificate

        self.workdir = workdir
        self.size = size
        (workdir / "confdir").mkdir(mode=0o700)
        (workdir / "failcore-home").mkdir(mode=0o700)
        certs = generate_certificate(workdir, "127.0.0.1")
        self.upstream_cert = certs.cert_path
        self.upstream_port = free_port()
        self.upstream = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                str(self.upstream_port),
                str(certs.cert_path),
                str(certs.key_path),
                str(size),
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_for_port(self.upstream_port, self.upstream)
        self.upload_file = workdir / "upload.bin"
        block = _block()
        with self.upload_file.open("wb") as out:
            for offset in range(0, size, BLOCK):
                out.write(block[: min(BLOCK, size - offset)])

    def close(self) -> None:
        stop_process(self.upstream)

    def transfer(self, proxy: Proxy, kind: str, probe: bool = False) -> dict[str, float]:
        """One transfer. With `probe`, only the latency of small requests sent meanwhile (their own
        CPU would count against the transfer's)."""
        ca = self.workdir / "confdir" / "mitmproxy-ca-cert.pem"
        url = f"https://127.0.0.1:{self.upstream_port}/{kind}"
        argv = [
            "curl",
            "-sS",
            "--fail",
            "--noproxy",
            "",
            "-x",
            f"http://127.0.0.1:{proxy.port}",
            "--cacert",
            str(ca),
        ]
        argv += ["-o", "-" if kind == "upload" else os.devnull, "-w", "\n%{size_download} %{size_upload}"]
        if kind == "upload":
            argv += [
                "-X",
                "POST",
                "-T",
                str(self.upload_file),
                "-H",
                "Expect:",
                "-H",
                "Content-Type: application/octet-stream",
            ]
        argv.append(url)
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        pid = proxy.process.pid
        prober = Prober(proxy.port, self.upstream_port, ca) if probe else None
        sampler = RssSampler(pid)
        cpu_before, children_before = tree_cpu(pid)
        loop_before, writer_before, in_process_before, reader_before = thread_cpu(pid)
        sampler.start()
        if prober is not None:
            prober.start()
        started = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, check=False, timeout=600)
        ended = time.perf_counter()
        wall = ended - started
        latency = prober.finish(ended) if prober is not None else {}
        # (the past-cap scan's last batches and the exchange's evidence end after curl does: give them
        # a moment before reading)
        time.sleep(0.5)
        cpu, children_cpu = tree_cpu(pid)
        cpu -= cpu_before
        children_cpu -= children_before
        loop_cpu, writer_cpu, in_process_cpu, reader_cpu = thread_cpu(pid)
        loop_cpu -= loop_before
        writer_cpu -= writer_before
        in_process_cpu -= in_process_before
        reader_cpu -= reader_before
        growth = sampler.growth()
        if done.returncode != 0:
            raise RuntimeError(
                f"curl via {proxy.name} exited {done.returncode}: {done.stderr.decode()[-1000:]}"
            )
        lines = done.stdout.decode().splitlines()
        downloaded, uploaded = (float(x) for x in lines[-1].split())
        moved = uploaded if kind == "upload" else downloaded
        if int(moved) != self.size or (kind == "upload" and lines[0].strip() != str(self.size)):
            raise RuntimeError(
                f"{kind} via {proxy.name} moved {moved:.0f} bytes, expected {self.size}: {lines}"
            )
        if probe:
            return latency
        return {
            "MB/s": self.size / wall / 1e6,
            "cpu_ms_per_MiB": cpu / (self.size / MIB) * 1000,
            "loop_thread_cpu_ms_per_MiB": loop_cpu / (self.size / MIB) * 1000,
            "writer_thread_cpu_ms": writer_cpu * 1000,
            "past_cap_thread_cpu_ms_per_MiB": in_process_cpu / (self.size / MIB) * 1000,
            "past_cap_reader_cpu_ms_per_MiB": reader_cpu / (self.size / MIB) * 1000,
            "children_cpu_ms_per_MiB": max(0.0, children_cpu) / (self.size / MIB) * 1000,
            "rss_growth_MiB": growth,
            "children_rss_MiB": sampler.children_peak,
            "load1": os.getloadavg()[0],
        }


def profile(bench: Bench, repo: Path, out: Path) -> None:
    import pstats

    out.mkdir(parents=True, exist_ok=True)
    for kind in ("download", "upload"):
        stats_path = out / f"{kind}.pstats"
        proxy = Proxy(f"profile {kind}", repo, bench.workdir, bench.upstream_cert, True, str(stats_path))
        try:
            bench.transfer(proxy, kind)
        finally:
            proxy.stop()
        with (out / f"{kind}.txt").open("w") as text:
            pstats.Stats(str(stats_path), stream=text).sort_stats("tottime").print_stats(40)
        print(f"profile of the {kind}: {out / f'{kind}.txt'}")


def dlp_costs(rounds: int = 5) -> dict[str, dict[str, float]]:
    """CPU ms per MiB of the past-cap scanners on 1 MiB of incompressible bytes and of JSON text, in
    this process: the full engine scan (what each batch cost before), Hyperscan's stream mode over the
    engine's main database (the alternative the issue suggested), and scan_bulk (what runs now): as the
    proxy's own scan thread runs it (a copy of the batch, its runs of text found by translate/find) and
    as the past-cap scan process does (a view of the batch in place, its runs found by Hyperscan)."""
    import hyperscan

    from failcore.dlp import DlpEngine, builtin_rules
    from failcore.dlp import decode as dv
    from failcore.dlp import regex_backend as rx
    from failcore.dlp.stream import scan_bulk
    from failcore.evidence import pastcap

    engine = DlpEngine(builtin_rules(), salt=b"bench")
    engine.scan(b"warm up")
    # The engine's main database, rebuilt in stream mode (its expressions, from its own helpers).
    expressions = [engine._hs_expression(engine._rules[i]) for i in engine._hs_rule_indexes]
    expressions.append(rx.pattern_bytes(dv.RUN_PATTERN))
    stream_db = hyperscan.Database(mode=hyperscan.HS_MODE_STREAM)
    stream_db.compile(
        expressions=expressions, ids=list(range(len(expressions))), flags=[0] * len(expressions)
    )
    batch = pastcap.BATCH_BYTES
    bodies = {
        "incompressible": _block(),
        "JSON text": (b'{"id": 12345, "text": "lorem ipsum dolor sit amet", "tags": ["a", "b"]}\n' * 16_000)[
            :MIB
        ],
    }

    def full(body: bytes) -> None:
        for i in range(0, len(body), batch):
            engine.scan(body[i : i + batch])

    def bulk(body: bytes) -> None:
        for i in range(0, len(body), batch):
            scan_bulk(engine, body[i : i + batch])

    def bulk_in_place(body: bytes) -> None:
        with memoryview(body) as view:
            for i in range(0, len(body), batch):
                scan_bulk(engine, view[i : i + batch], hyperscan=True)

    def on_match(*_: object) -> bool:
        return False

    def stream(body: bytes) -> None:
        # (python-hyperscan's stream keeps no reference to its handler: it must outlive the stream)
        with stream_db.stream(match_event_handler=on_match) as hs_stream:
            for i in range(0, len(body), 65_536):
                hs_stream.scan(body[i : i + 65_536])

    runs = {
        "engine.scan per batch": full,
        "Hyperscan stream mode": stream,
        "scan_bulk, proxy's thread": bulk,
        "scan_bulk, scan process": bulk_in_place,
    }
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):  # interleaved, like the transfers
        for name, body in bodies.items():
            for label, run in runs.items():
                started = time.process_time()
                run(body)
                samples.setdefault((name, label), []).append((time.process_time() - started) * 1000)
    out: dict[str, dict[str, float]] = {}
    for (name, label), values in samples.items():
        out.setdefault(name, {})[label] = statistics.median(values)
    return out


# --- output ---------------------------------------------------------------------------------------


def fmt(values: list[float], digits: int = 1) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        SECTION_TITLE,
        "",
        f"Generated by `{result['command']}` on {result['date']}.",
        f"CPU: {result['cpu']} ({result['cores']} cores); load average at start {result['load_start']:.2f}, "
        f"at end {result['load_end']:.2f}. {result['size_mib']} MiB per transfer, {result['runs']} runs per "
        "variant, interleaved; median (min–max); ratio = median MB/s / bare's.",
        "Upstream: loopback TLS server (Python `ssl`), incompressible body; client: curl through the proxy.",
        "",
        "| transfer | variant | MB/s | × bare | proxy CPU ms / MiB | its event loop's thread ms / MiB "
        "| its tape writer thread ms (per transfer) | its past-cap threads ms / MiB: in-process scan, reply "
        "reader | child processes' CPU ms / MiB | proxy RSS growth MiB | child processes' RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in result["kinds"]:
        bare = statistics.median(result["samples"][kind]["bare"]["MB/s"])
        for name, metrics in result["samples"][kind].items():
            ratio = statistics.median(metrics["MB/s"]) / bare
            lines.append(
                f"| {kind} | {name} | {fmt(metrics['MB/s'])} | {ratio:.2f}× "
                f"| {fmt(metrics['cpu_ms_per_MiB'])} | {fmt(metrics['loop_thread_cpu_ms_per_MiB'])} "
                f"| {fmt(metrics['writer_thread_cpu_ms'], 0)} "
                f"| {fmt(metrics['past_cap_thread_cpu_ms_per_MiB'], 2)}, "
                f"{fmt(metrics['past_cap_reader_cpu_ms_per_MiB'], 2)} "
                f"| {fmt(metrics['children_cpu_ms_per_MiB'])} "
                f"| {fmt(metrics['rss_growth_MiB'])} | {fmt(metrics['children_rss_MiB'])} |"
            )
    if result.get("probes"):
        lines += [
            "",
            "Small requests (GET, 2-byte answer, own keep-alive tunnel, one per "
            f"{PROBE_INTERVAL * 1000:.0f} ms) during an upload and in the {PROBE_AFTER} s after it ended "
            "(when its evidence is built); "
            "latency ms, median over the upload runs of each run's p50 / max:",
            "",
            "| variant | during: p50 | during: max | after: p50 | after: max |",
            "|---|---|---|---|---|",
        ]
        for name, metrics in result["probes"].items():
            lines.append(
                f"| {name} | {fmt(metrics['small_during_p50_ms'])} | {fmt(metrics['small_during_max_ms'])} "
                f"| {fmt(metrics['small_after_p50_ms'])} | {fmt(metrics['small_after_max_ms'])} |"
            )
    lines += ["", "Variants:"] + [f"- {name}: {text}" for name, text in result["variants"].items()]
    if result.get("dlp_costs"):
        labels = list(next(iter(result["dlp_costs"].values())))
        lines += [
            "",
            "Past-cap DLP alone, CPU ms per MiB (median of 5, in one process, 1 MiB batches):",
            "",
            "| body | " + " | ".join(labels) + " |",
            "|---|" + "---|" * len(labels),
        ]
        for body, costs in result["dlp_costs"].items():
            lines.append(f"| {body} | " + " | ".join(f"{costs[label]:.1f}" for label in labels) + " |")
    lines += ["", "DLP past the recorded cap (the tape's `dlp.past_cap` of the timed transfers):"]
    for name, cov in result.get("past_cap", {}).items():
        notes = f" — incomplete: {'; '.join(cov['notes'])}" if cov["notes"] else ""
        lines.append(f"- {name}: scanned whole in {cov['complete']} of {cov['bodies']} bodies{notes}")
    return "\n".join(lines) + "\n"


def write_section(path: Path, text: str) -> None:
    """Replace this benchmark's section of BENCHMARKS.md (or append it)."""
    doc = path.read_text()
    start = doc.find(SECTION_TITLE)
    if start < 0:
        path.write_text(doc.rstrip("\n") + "\n\n" + text)
        return
    nxt = doc.find("\n## ", start + len(SECTION_TITLE))
    rest = "" if nxt < 0 else doc[nxt + 1 :]
    path.write_text(doc[:start] + text + ("\n" + rest if rest else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--serve", nargs=4, metavar=("PORT", "CERT", "KEY", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--size-mib", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", choices=("download", "upload"), action="append")
    parser.add_argument(
        "--repo",
        type=Path,
        action="append",
        help="a checkout to time (default: this one); repeat for before/after",
    )
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="also profile one failcore proxy into DIR"
    )
    parser.add_argument("--no-dlp", action="store_true", help="also time failcore with DLP disabled")
    parser.add_argument(
        "--probe-runs",
        type=int,
        default=3,
        metavar="N",
        help="after the timed runs, N uploads per variant with small requests sent meanwhile (latency)",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--write", type=Path, metavar="BENCHMARKS.md", help="replace this section of the file"
    )
    args = parser.parse_args(argv)
    if args.serve:
        port, cert, key, size = args.serve
        serve(int(port), cert, key, int(size))
        return 0
    if shutil.which("curl") is None:
        raise SystemExit("curl not found")
    kinds = [k for k in ("download", "upload") if k in (args.only or ("download", "upload"))]
    repos = [repo.resolve() for repo in args.repo or [REPO]]
    size = args.size_mib * MIB
    load_start = os.getloadavg()[0]
    samples: dict[str, dict[str, dict[str, list[float]]]] = {kind: {} for kind in kinds}
    variants = {"bare": "mitmdump --set stream_large_bodies=1m, no addon"}
    coverage: dict[str, dict[str, Any]] = {}
    probes: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="failcore-bulk-") as tmp:
        bench = Bench(Path(tmp), size)
        proxies: list[Proxy] = []
        try:
            proxies.append(Proxy("bare", REPO, bench.workdir, bench.upstream_cert, False))
            for repo in repos:
                name = f"failcore [{repo.name}]" if len(repos) > 1 else "failcore"
                variants[name] = f"mitmdump -s {repo}/addons/failcore_addon.py, default policy (observe)"
                proxies.append(Proxy(name, repo, bench.workdir, bench.upstream_cert, True))
            if args.no_dlp:
                policy = bench.workdir / "no-dlp.yaml"
                policy.write_text("mode: observe\ndefault: ALLOW\ndlp:\n  enabled: false\n")
                name = f"failcore no-DLP [{repos[-1].name}]" if len(repos) > 1 else "failcore no-DLP"
                variants[name] = "the same, with a policy that disables DLP (observe, default ALLOW)"
                proxies.append(
                    Proxy(name, repos[-1], bench.workdir, bench.upstream_cert, True, policy=policy)
                )
            for proxy in (
                proxies if args.runs else ()
            ):  # warm-up, not counted: certificates, first flows, bytecode
                for kind in kinds:
                    bench.transfer(proxy, kind)
            for run in range(args.runs):
                for kind in kinds:
                    for proxy in proxies if run % 2 == 0 else proxies[::-1]:
                        for metric, value in bench.transfer(proxy, kind).items():
                            samples[kind].setdefault(proxy.name, {}).setdefault(metric, []).append(value)
            for run in range(args.probe_runs if "upload" in kinds else 0):
                for proxy in proxies if run % 2 == 0 else proxies[::-1]:
                    for metric, value in bench.transfer(proxy, "upload", probe=True).items():
                        probes.setdefault(proxy.name, {}).setdefault(metric, []).append(value)
            for proxy in proxies:
                proxy.stop()
                if proxy.tape is not None:
                    # (not the warm-up transfers: a fresh proxy may still be compiling its DLP rules)
                    covered = proxy.past_cap_coverage()[len(kinds) :]
                    covered = covered[: len(covered) - (args.probe_runs if "upload" in kinds else 0)]
                    notes = sorted(
                        {str(c["note"]).split(" at byte")[0] for c in covered if not c["complete"]}
                    )
                    coverage[proxy.name] = {
                        "bodies": len(covered),
                        "complete": sum(1 for c in covered if c["complete"]),
                        "notes": notes,
                    }
            proxies.clear()
            if args.profile:
                profile(bench, repos[-1], args.profile.resolve())
        finally:
            for proxy in proxies:
                proxy.stop()
            bench.close()
    result = {
        "command": "benchmarks/bulk_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": dict(machine_info())["CPU"],
        "cores": os.cpu_count(),
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "size_mib": args.size_mib,
        "runs": args.runs,
        "kinds": kinds,
        "variants": variants,
        "samples": samples,
        "past_cap": coverage,
        "probes": probes,
        "dlp_costs": dlp_costs() if args.runs else {},
    }
    if args.runs == 0:
        return 0
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(markdown(result))
    if args.write:
        write_section(args.write, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
