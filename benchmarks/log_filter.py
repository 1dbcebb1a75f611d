"""CPU per log record with and without failcore.logmask.LogMask (the DLP scanner of the default policy).

One process, interleaved: without, with, without again (the lower "without" is reported). Usage:
`.venv/bin/python benchmarks/log_filter.py`."""

import logging
import time

from failcore.dlp.pending import wait_until_built
from failcore.dlp.scanner import DlpScanner
from failcore.logmask import LogMask
from failcore.policy.load import load_policy
from failcore.shipped import default_policy_path

policy = load_policy(str(default_policy_path()))
scanner = DlpScanner.for_policy(policy, b"salt", background=False)
wait_until_built(scanner.engine)


class Count(logging.Handler):
    n = 0

    def emit(self, record):
        record.getMessage()
        Count.n += 1


mp = logging.getLogger("mitmproxy.proxy.server")
mp.setLevel(logging.INFO)
mp.propagate = False
fc = logging.getLogger("failcore")
fc.setLevel(logging.INFO)
fc.propagate = False
for lg in (mp, fc):
    lg.addHandler(Count())
N = 20000


def run(label, fn):
    t = time.process_time()
    for i in range(N):
        fn(i)
    return (time.process_time() - t) / N * 1e6


cases = {
    "mitmproxy 'client connect' (not a quoting kind)": lambda i: mp.info("client connect"),
    "mitmproxy 'server connect host:port' (quoting kind, host repeats)": lambda i: mp.info(
        "server connect api.openai.com:443"
    ),
    "mitmproxy 'Bad HTTP request line' (quoting kind, new text each time)": lambda i: mp.info(
        f"127.0.0.1:{i}: Bad HTTP request line: b'GET /?q={i} x HTTP/1.1'"
    ),
    "failcore line with 3 args (a cut stream)": lambda i: fc.info(
        "failcore cut the response stream of flow %s to %s (%s)", f"f{i}", "api.openai.com", "dlp"
    ),
}
before = {k: run(k, f) for k, f in cases.items()}
mask = LogMask(lambda: scanner)
mask.install()
after = {k: run(k, f) for k, f in cases.items()}
mask.uninstall()
before2 = {k: run(k, f) for k, f in cases.items()}
for k in cases:
    print(f"{k}: without {min(before[k], before2[k]):.1f} us, with {after[k]:.1f} us CPU per record")
