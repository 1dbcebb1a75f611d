"""Profile one proxy variant under the plain-HTTP throughput load and list where failcore spends time.

    .venv/bin/python benchmarks/profile_proxy.py [--variant "failcore observe"] [--seconds 15] [--svg out.svg]
        [--connections 1] [--https [--requests 3000]]

Needs py-spy in the venv (`.venv/bin/pip install py-spy`) and ptrace permission. Prints the share of
samples (all threads, idle excluded) spent inside each failcore function (inclusive) and at the top
of the stack (self), plus the mitmproxy/stdlib functions with the most self time for context.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import VENV_BIN, CommandLog
from benchmarks.loadgen import CurlResult, WrkResult, curl_https, wrk_for, wrk_script
from benchmarks.servers import BenchContext, nginx_upstream, running_proxy
from benchmarks.variants import VARIANTS


def frame_label(frame: str) -> str:
    """'function (path/to/file.py:line)' → 'file/relative.py:function' (line numbers dropped)."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    for marker in ("/failcore/", "/mitmproxy/", "/lib/python3"):
        if marker in path:
            path = marker.strip("/") + "/" + path.split(marker, 1)[1]
            break
    return f"{path}:{name}"


def summarise(collapsed: str, top: int) -> list[str]:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_label(frame) for frame in stack.split(";")[1:]]  # first entry is the thread
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for label in set(frames):
            inclusive[label] += count
    out = [f"{total} samples (idle excluded)", "", "failcore, inclusive:"]
    out += [
        f"  {n / total:6.1%}  {label}"
        for label, n in inclusive.most_common()
        if label.startswith("failcore/")
    ][:top]
    out += ["", "failcore, self:"]
    out += [
        f"  {n / total:6.1%}  {label}" for label, n in own.most_common() if label.startswith("failcore/")
    ][:top]
    out += ["", "everything, self:"]
    out += [f"  {n / total:6.1%}  {label}" for label, n in own.most_common(top)]
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--variant", default="failcore observe", choices=[v.name for v in VARIANTS if not v.direct]
    )
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument(
        "--gil", action="store_true", help="sample only the thread holding the GIL (where CPU really goes)"
    )
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--threads", action="store_true", help="name each sample's thread (keep them apart with --raw)"
    )
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (1: the latency load)")
    parser.add_argument(
        "--https",
        action="store_true",
        help="the https section's load instead (curl, CONNECT + TLS, HTTP/1.1 POSTs over kept-alive tunnels)",
    )
    parser.add_argument(
        "--requests", type=int, default=3000, help="with --https: requests per load (outlast --seconds)"
    )
    parser.add_argument("--svg", type=Path, help="also write a flame graph here")
    parser.add_argument("--raw", type=Path, help="also keep py-spy's raw (collapsed) samples here")
    args = parser.parse_args(argv)
    variant = next(v for v in VARIANTS if v.name == args.variant)
    with tempfile.TemporaryDirectory(prefix="failcore-profile-") as tmp:
        workdir = Path(tmp)
        ctx = BenchContext(workdir, CommandLog(), quick=True)
        with nginx_upstream(workdir, ctx.log) as upstream, running_proxy(ctx, variant, upstream) as proxy:
            hostport = f"127.0.0.1:{upstream.plain_port}"
            script = wrk_script(workdir / "wrk.lua", hostport, through_proxy=True)
            address = f"127.0.0.1:{proxy.port}"

            def load() -> WrkResult | CurlResult:
                """The profiled load: it must outlast the recording (with --https: enough --requests)."""
                if args.https:
                    return curl_https(
                        workdir,
                        upstream.url(tls=True),
                        requests=args.requests,
                        parallel=args.connections,
                        proxy=proxy.url,
                        cacert=proxy.ca_cert,
                        log=ctx.log,
                        label="load",
                    )
                return wrk_for(
                    address,
                    script,
                    connections=args.connections,
                    seconds=args.seconds + 1,
                    log=ctx.log,
                    label="load",
                )

            if args.https:
                curl_https(
                    workdir,
                    upstream.url(tls=True),
                    requests=200,
                    parallel=args.connections,
                    proxy=proxy.url,
                    cacert=proxy.ca_cert,
                    log=ctx.log,
                    label="warm-up",
                )
            else:
                wrk_for(
                    address, script, connections=args.connections, seconds=1, log=ctx.log, label="warm-up"
                )

            raw = workdir / "profile.txt"
            spy = [
                str(VENV_BIN / "py-spy"),
                "record",
                "--pid",
                str(proxy.pid),
                "--duration",
                str(args.seconds),
                "--rate",
                "200",
                "--format",
                "raw",
                "--output",
                str(raw),
                "--nonblocking",
                *(["--gil"] if args.gil else []),
                *(["--threads"] if args.threads else []),
            ]
            recorder = subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            result = load()
            _, err = recorder.communicate(timeout=60)
            if recorder.returncode != 0:
                print(err.decode("utf-8", "replace"), file=sys.stderr)
                return 1
            if args.svg:
                svg = [*spy[:-4], "--format", "flamegraph", "--output", str(args.svg), "--nonblocking"]
                flame = subprocess.Popen(svg, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                load()
                flame.wait(timeout=60)
        if args.raw:
            args.raw.write_text(raw.read_text())
        print(f"{variant.name}: {result.rps:,.0f} requests/s while profiled ({result.requests:,} requests)")
        print("\n".join(summarise(raw.read_text(), args.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
