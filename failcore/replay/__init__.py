"""Replay a recorded run from its tape: matched requests are answered from the tape, never upstream.

This package is the pure layer, with no mitmproxy import, so `failcore diff` and the CLI's summaries
use it alone; the addon that ties it to the proxy is `failcore.proxy.replayer.Replayer`.

- `pointers`: JSON pointers, leaving their values out, the first difference between two documents.
- `request`: a request's shape as matching compares it, and where two requests differ.
- `canned`: a response to serve (recorded or from an override file).
- `recording`: a recorded run read back from its tape.
- `match`: live requests against a recording; what a refused miss answers.
- `overrides`: `--override N=FILE` response files.
- `serve`: the loopback server and the re-chunking stream that keep recorded chunk boundaries.
- `savings`: what a replay run saved.

How a request is matched: method, scheme, host, port, path and query (parameters in any order) and
the body. JSON bodies are compared after normalisation: key order does not matter and the values at
the ignored JSON pointers (`request.DEFAULT_IGNORED_POINTERS` plus `--ignore`, `*` matches any key or
index) are left out, because SDKs put per-session ids there. The n-th identical request gets the n-th
recorded response.

How an answer is served: mitmproxy sends a response set by an addon in one piece, so an SSE answer
would lose its chunk boundaries. Instead a matched flow is redirected to `serve.ReplayServer`, a
loopback HTTP/1.1 server on the proxy's own event loop that sends the recorded response (paced as
recorded with `--pace recorded`), and a `serve.Rechunker` stream callable re-cuts whatever bytes reach
mitmproxy at the recorded boundaries. mitmproxy then streams it to the client through its normal
response path, so the client sees the recorded chunks, one chunk each. The flow's request is restored
before anything records it.

The replay is recorded as a new run: run_start carries `replay_of`, every network event a `replay`
block saying whether it was replayed, overridden (a fork, `--override N=FILE`), forwarded live or
refused as a miss (`--on-miss fail`, status 599 with the closest recorded request and the first JSON
pointer where the two differ).
"""
