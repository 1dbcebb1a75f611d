"""Load generators: wrk (plain HTTP through a proxy via absolute-URI requests) and curl (CONNECT + TLS).

wrk has no proxy support, so it is pointed at the proxy and its Lua script writes the request line
with the absolute URL, exactly what an HTTP client configured with a proxy sends.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import CommandLog, Measured, children_cpu, run_measured
from benchmarks.servers import REQUEST_BODY_BYTES, json_document

RESULT_MARK = "BENCHJSON "
STOP_MARK = "BENCHSTOP"

_LUA = """
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Host"] = "{host}"
local target = "{target}"
local limit = {limit}
local count = 0
local req

function init(args)
  req = wrk.format(nil, target)
end

function request()
  return req
end
{response}
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{mark}{{"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"mean_us":%.1f}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""

# Only limited runs count responses in Lua: defining response() makes wrk parse every header into Lua.
_LIMIT_RESPONSE = """
function response(status, headers, body)
  count = count + 1
  if count == limit then
    io.write("{stop}\\n")
    io.flush()
    wrk.thread:stop()
  end
end
"""


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    seconds: float
    errors: int
    p50_us: int
    p90_us: int
    p99_us: int
    mean_us: float
    client_cpu_share: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def wrk_script(path: Path, upstream_hostport: str, through_proxy: bool, limit: int = 0) -> Path:
    target = f"http://{upstream_hostport}/echo" if through_proxy else "/echo"
    response = _LIMIT_RESPONSE.format(stop=STOP_MARK) if limit else ""
    body = json_document(REQUEST_BODY_BYTES, "chat.completion.request")
    path.write_text(
        _LUA.format(
            body=body, host=upstream_hostport, target=target, limit=limit, response=response, mark=RESULT_MARK
        )
    )
    return path


def _wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk not found: apt-get install wrk")
    return found


def _parse_wrk(stdout: bytes, cpu_share: float) -> WrkResult:
    for line in stdout.decode("utf-8", "replace").splitlines():
        if line.startswith(RESULT_MARK):
            data = json.loads(line[len(RESULT_MARK) :])
            errors = sum(
                data[k]
                for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
            )
            return WrkResult(
                data["requests"],
                data["duration_us"] / 1e6,
                errors,
                data["p50_us"],
                data["p90_us"],
                data["p99_us"],
                data["mean_us"],
                cpu_share,
            )
    raise RuntimeError(f"wrk printed no result: {stdout[-2000:]!r}")


def wrk_for(
    address: str, script: Path, *, connections: int, seconds: float, log: CommandLog, label: str
) -> WrkResult:
    argv = [
        _wrk_binary(),
        "-t1",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"http://{address}/",
    ]
    log.note(label, argv)
    measured = run_measured(argv, timeout=seconds + 60)
    _check(measured, argv)
    return _parse_wrk(measured.stdout, measured.cpu_share)


def wrk_count(
    address: str, script: Path, *, connections: int, log: CommandLog, label: str, timeout: float = 900.0
) -> WrkResult:
    """Run until the script's response limit is reached (wrk itself only knows durations: the script
    prints a mark on reaching the limit and we interrupt wrk, which then reports normally)."""
    argv = [
        _wrk_binary(),
        "-t1",
        f"-c{connections}",
        f"-d{int(timeout)}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"http://{address}/",
    ]
    log.note(label, argv)
    cpu_before = children_cpu()
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    output = bytearray()
    for line in process.stdout:
        output += line
        if line.strip() == STOP_MARK.encode():
            process.send_signal(signal.SIGINT)
            break
    rest, err = process.communicate(timeout=60)
    output += rest
    wall = time.perf_counter() - started
    measured = Measured(wall, children_cpu() - cpu_before, process.returncode, bytes(output), err)
    _check(measured, argv)
    return _parse_wrk(measured.stdout, measured.cpu_share)


def _check(measured: Measured, argv: list[str]) -> None:
    if measured.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({measured.returncode}): {measured.stderr[-2000:]!r}")


@dataclass(frozen=True, slots=True)
class CurlResult:
    requests: int
    seconds: float
    failures: int
    connections: int
    client_cpu_share: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def curl_https(
    workdir: Path,
    url: str,
    *,
    requests: int,
    parallel: int,
    proxy: str | None,
    cacert: Path,
    log: CommandLog,
    label: str,
    close: bool = False,
) -> CurlResult:
    """`requests` POSTs of the 1 KB body over `parallel` kept-alive TLS connections (CONNECT tunnels
    when proxied), HTTP/1.1 like most agent SDKs. `close`: each request asks `Connection: close`, so
    every exchange opens its own tunnel and TLS connections (a client that does not keep alive)."""
    body = workdir / "body.json"
    if not body.exists():
        body.write_text(json_document(REQUEST_BODY_BYTES, "chat.completion.request"))
    urls = workdir / f"urls-{requests}.cfg"
    if not urls.exists():
        urls.write_text("".join(f'url = "{url}?i={i}"\noutput = "/dev/null"\n' for i in range(requests)))
    argv = [
        "curl",
        "--http1.1",
        "--silent",
        "--show-error",
        "--parallel",
        "--parallel-max",
        str(parallel),
        "--cacert",
        str(cacert),
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        f"@{body}",
        "--no-progress-meter",
        "--write-out",
        "%{http_code} %{num_connects}\\n",
    ]
    if close:
        argv += ["-H", "Connection: close"]
    if proxy:
        argv += ["--proxy", proxy]
    argv += ["--config", str(urls)]
    log.note(label, argv)
    measured = run_measured(argv, timeout=600)
    codes = [line.split() for line in measured.stdout.decode("utf-8", "replace").splitlines() if line.strip()]
    ok = sum(1 for fields in codes if len(fields) == 2 and fields[0] == "200")
    connects = sum(int(fields[1]) for fields in codes if len(fields) == 2 and fields[1].isdigit())
    return CurlResult(requests, measured.wall, requests - ok, connects, measured.cpu_share)
