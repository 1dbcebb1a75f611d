"""What gets compared. Add a variant here and every section that lists its tag measures it.

`extra` holds mitmdump arguments; placeholders are filled per run:
  {addon}   addons/failcore_addon.py          {tape}     a fresh tape directory
  {flows}   a fresh mitmproxy flow file       {policy_enforce}  strict.yaml + an allow rule for 127.0.0.1
  {policy_no_dlp}  observe, DLP disabled

Every mitmdump also gets -q, --set confdir=<shared tmp>, termlog_verbosity=error and the upstream
trust anchor (see servers.ProxyProcess), so variants differ only by what is listed here.
"""

from __future__ import annotations

from dataclasses import dataclass

# Section tags.
THROUGHPUT = "throughput"
HTTPS = "https"
LATENCY = "latency"
SSE = "sse"
MEMORY = "memory"
_ALL_LOAD = frozenset({THROUGHPUT, HTTPS, LATENCY, SSE})


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    description: str
    extra: tuple[str, ...] = ()
    direct: bool = False  # no proxy at all: the client talks to the upstream
    failcore: bool = False  # gets --set failcore_tape=<tmp>; its tape is checked after each run
    sections: frozenset[str] = _ALL_LOAD
    env: tuple[tuple[str, str], ...] = ()  # extra environment variables for this variant's mitmdump


DIRECT = Variant("direct", "client → upstream, no proxy", direct=True)
BARE = Variant("bare", "mitmdump, no addons", sections=_ALL_LOAD | {MEMORY})
BARE_STREAMING = Variant(
    "bare-stream",
    "mitmdump --set stream_large_bodies=1 (bare, but streams bodies)",
    ("--set", "stream_large_bodies=1"),
    sections=frozenset({SSE}),
)
BARE_RECORDING = Variant("bare -w", "mitmdump -w <file> (mitmproxy's own recorder)", ("-w", "{flows}"))
OBSERVE = Variant(
    "failcore observe",
    "failcore addon, default policy (observe), full evidence",
    ("-s", "{addon}"),
    failcore=True,
    sections=_ALL_LOAD | {MEMORY},
)
OBSERVE_INPROCESS = Variant(
    "failcore observe, in-process DLP",
    "as observe, but DLP evidence scans stay in the proxy process (FAILCORE_EVIDENCE_WORKER=0: "
    "how failcore worked before the evidence worker)",
    ("-s", "{addon}"),
    failcore=True,
    sections=frozenset({THROUGHPUT, HTTPS, LATENCY}),
    env=(("FAILCORE_EVIDENCE_WORKER", "0"),),
)
OBSERVE_NO_DLP = Variant(
    "failcore no-DLP",
    "failcore addon, observe, DLP scanning disabled (shows what DLP evidence costs)",
    ("-s", "{addon}", "--set", "failcore_policy={policy_no_dlp}"),
    failcore=True,
    sections=frozenset({THROUGHPUT, HTTPS}),
)
ENFORCE = Variant(
    "failcore enforce",
    "failcore addon, enforce: strict.yaml + allow 127.0.0.1, two budgets, DLP blocking critical hits",
    ("-s", "{addon}", "--set", "failcore_policy={policy_enforce}"),
    failcore=True,
)

# The reference every ratio is computed against.
REFERENCE = BARE
VARIANTS: tuple[Variant, ...] = (
    DIRECT,
    BARE,
    BARE_STREAMING,
    BARE_RECORDING,
    OBSERVE,
    OBSERVE_INPROCESS,
    OBSERVE_NO_DLP,
    ENFORCE,
)


def for_section(tag: str) -> list[Variant]:
    return [variant for variant in VARIANTS if tag in variant.sections]
