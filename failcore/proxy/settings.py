"""Settings: the one owner of every `failcore_*` option.

It declares them all in `load()`, checks them in `configure()` and publishes what they say as one
frozen `AddonSettings` on the Session every concern already shares (`session.settings`). Concerns read
that snapshot and never `ctx.options` for a `failcore_*` name, so no addon reads another's options and
a bad value is refused once, before any concern acts on it. A concern whose behaviour depends on an
option changing (the gate reloads the policy, the recorder refuses a new tape while it runs) still
looks at the names in `updated`: FailCore calls this addon's `configure` first.

It also takes over mitmproxy's `stream_large_bodies` (streams mitmproxy starts would pass failcore's
checks and recording by) and names, once set, the mitmproxy options that route traffic around failcore.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from mitmproxy import ctx, exceptions
from mitmproxy.options import CONF_DIR
from mitmproxy.utils import human

logger = logging.getLogger("failcore")

MODES = ("", "observe", "enforce")
RAW_TCP = ("allow", "block")
REPLAY_ON_MISS = ("live", "fail")
REPLAY_PACE = ("fast", "recorded")


@dataclass(frozen=True, slots=True)
class AddonSettings:
    """What the options say, checked; one immutable snapshot per configuration change."""

    # failcore.proxy.gate
    policy: str = ""
    mode: str = ""
    policy_poll_ms: int = 1000
    # failcore.proxy.streamtap, meter, DLP guard, hold, budget guard, recorder
    stream_threshold: int = 1 << 20
    body_cap: int = 1 << 20
    llm_body_max: int = 64 << 20
    # failcore.proxy.hold
    hold_max: int = 64 << 20
    # failcore.proxy.budgetguard
    state_dir: str = ""
    # failcore.proxy.recorder
    tape: str = ""
    run_id: str = ""
    queue_size: int = 4096
    segment_mb: int = 64
    segment_seconds: int = 0
    checkpoint_every: int = 1000
    tape_reserve_mb: int = 16
    # failcore.proxy.tcpstream
    raw_tcp: str = "allow"
    # failcore.proxy.replayer
    replay: str = ""
    replay_on_miss: str = "live"
    replay_pace: str = "fast"
    replay_override: tuple[str, ...] = ()
    replay_ignore: tuple[str, ...] = ()
    # failcore.proxy.gctune
    gc_freeze: bool = True
    # mitmproxy's confdir: the fingerprint salt lives there, beside the CA (and the budget state by default).
    confdir: str = CONF_DIR


@dataclass(frozen=True, slots=True)
class _Option:
    field: str
    typ: type
    help: str
    # The smallest value allowed (ints), or the values allowed (strs); None: anything.
    minimum: int | None = None
    choices: tuple[str, ...] | None = None
    # How the error names the allowed values (default: "one of a, b").
    expected: str = ""

    @property
    def name(self) -> str:
        return f"failcore_{self.field}"

    def check(self, value: Any) -> None:
        if self.minimum is not None and value < self.minimum:
            raise exceptions.OptionsError(f"{self.name} must be >= {self.minimum}")
        if self.choices is not None and value not in self.choices:
            expected = self.expected or f"one of {', '.join(self.choices)}"
            raise exceptions.OptionsError(f"{self.name} must be {expected}, not {value!r}")


OPTIONS: tuple[_Option, ...] = (
    _Option("policy", str, "Policy YAML file (default: policies/default.yaml, observe mode)."),
    _Option(
        "mode",
        str,
        "Override the policy's mode: observe or enforce (empty: as the policy says).",
        choices=MODES,
        expected="observe or enforce",
    ),
    _Option(
        "policy_poll_ms",
        int,
        "Milliseconds between checks of the policy file for changes (0: never reload).",
        minimum=0,
    ),
    _Option(
        "stream_threshold",
        int,
        "Bodies with a Content-Length above this many bytes are streamed instead of buffered "
        "(SSE and bodies without a length always are).",
        minimum=0,
    ),
    _Option("body_cap", int, "Bytes of each decoded body kept in the tape.", minimum=0),
    _Option(
        "llm_body_max",
        int,
        "LLM API requests (chat, messages, responses, … paths) up to this many bytes are buffered, not "
        "streamed, so they are metered and DLP-checked before they leave.",
        minimum=0,
    ),
    _Option(
        "hold_max",
        int,
        "Largest request body held whole before forwarding when the policy must decide on it "
        "(DLP blocking, budgets, fail_open: false); larger ones are refused with 413.",
        minimum=0,
    ),
    _Option(
        "state_dir",
        str,
        "Where budget usage persists (default: <confdir>/failcore-state): a restart keeps the day.",
    ),
    _Option("tape", str, "Tape directory (default: ~/.failcore/tape)."),
    _Option("run_id", str, "Run id for this proxy's events (default: generated)."),
    _Option("queue_size", int, "Events the tape writer may hold before dropping.", minimum=1),
    _Option("segment_mb", int, "Rotate tape segments after this many MiB.", minimum=1),
    _Option("segment_seconds", int, "Also rotate tape segments after this many seconds (0: off).", minimum=0),
    _Option("checkpoint_every", int, "Write a signed checkpoint every this many events.", minimum=1),
    _Option(
        "tape_reserve_mb",
        int,
        "With fail_open: false, refuse requests while the tape's file system has less than this many "
        "MiB free: the rest is kept for the evidence of requests already forwarded (0: refuse only "
        "once a write has failed).",
        minimum=0,
    ),
    _Option(
        "raw_tcp",
        str,
        "TCP that is not HTTP (through a tunnel, or in transparent modes): allow (judged by the "
        "policy's tcp rules, recorded when it ends) or block (refused and recorded).",
        choices=RAW_TCP,
    ),
    _Option("replay", str, "Replay this recorded run: TAPE_DIR[:RUN] (default run: the last)."),
    _Option(
        "replay_on_miss",
        str,
        "Unmatched requests: live (forward) or fail (599).",
        choices=REPLAY_ON_MISS,
        expected="live or fail",
    ),
    _Option(
        "replay_pace",
        str,
        "Streamed answers: fast, or recorded (the recorded timing).",
        choices=REPLAY_PACE,
        expected="fast or recorded",
    ),
    _Option(
        "replay_override",
        Sequence[str],  # type: ignore[arg-type]
        "N=FILE: answer step N (the N-th request matching the recording) with FILE.",
    ),
    _Option(
        "replay_ignore",
        Sequence[str],  # type: ignore[arg-type]
        "JSON pointers left out when matching request bodies, besides the defaults ('*': any key).",
    ),
    _Option(
        "gc_freeze",
        bool,
        "Once start-up (and each policy reload) is done, move the heap out of the garbage "
        "collector's walks (gc.freeze). Process-wide: false leaves Python's collector as it is.",
    ),
)
_DEFAULTS = AddonSettings()
OPTION_NAMES = frozenset(o.name for o in OPTIONS)


def read_settings(options: Any) -> AddonSettings:
    """Check every failcore option in `options` (mitmproxy's OptManager) and snapshot them."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        value = getattr(options, option.name)
        option.check(value)
        values[option.field] = tuple(value) if isinstance(value, list) else value
    if values["replay_override"] and not values["replay"]:
        raise exceptions.OptionsError("failcore_replay_override needs failcore_replay")
    return AddonSettings(**values, confdir=options.confdir)


# mitmproxy options that let traffic past failcore's checks, and what failcore can say about them.
_PASSED_THROUGH = (
    "connections it passes through (TLS not intercepted) are judged by their CONNECT host only: their "
    "content is not inspected by failcore (each is recorded as a tcp.passthrough event, without its "
    "bytes); with show_ignored_hosts=true each is recorded as raw TCP (judged by tcp rules and "
    "failcore_raw_tcp)"
)
_AFTER_DECISION = (
    "under `mitmdump -s` it changes a request after failcore decided on it (the policy judged the "
    "request as the agent sent it; the tape records what was sent); `failcore proxy` runs it before"
)
BYPASSING_OPTIONS = {
    "ignore_hosts": _PASSED_THROUGH,
    "allow_hosts": _PASSED_THROUGH,
    "modify_body": _AFTER_DECISION,
    "map_remote": _AFTER_DECISION,
}


def bypass_notes(options: Any, updated: set[str]) -> list[str]:
    """One line for each mitmproxy option just set (in `updated`, not empty) that lets traffic past
    failcore's checks (mitmproxy's own addons; absent options, as in a bare embedder, are skipped)."""
    notes = []
    for name, what in BYPASSING_OPTIONS.items():
        if name in updated and getattr(options, name, None):
            notes.append(f"{name} is set: {what}")
    return notes


class Settings:
    """Declares, checks and publishes failcore's options (see the module docstring)."""

    def __init__(self, holder: Any) -> None:
        # Anything with a `settings` attribute: the Session the concerns share.
        self.holder = holder
        # mitmproxy's stream_large_bodies, taken over (see _adopt_stream_large_bodies).
        self.stream_large: int | None = None

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        for option in OPTIONS:
            default = getattr(_DEFAULTS, option.field)
            loader.add_option(
                option.name, option.typ, list(default) if isinstance(default, tuple) else default, option.help
            )

    def configure(self, updated: set[str]) -> None:
        if "stream_large_bodies" in updated:
            self._adopt_stream_large_bodies()
        for note in bypass_notes(ctx.options, updated):
            logger.warning("failcore: %s", note)
        # Every time, whatever changed: a snapshot is cheap, and one never lags an option (confdir is
        # mitmproxy's, and may have been set before this addon was added).
        self.holder.settings = self._read()

    def running(self) -> None:
        # An embedder that sets no option after adding the addon triggers no configure at all.
        self._adopt_stream_large_bodies()
        self.holder.settings = self._read()

    def _read(self) -> AddonSettings:
        settings = read_settings(ctx.options)
        if self.stream_large is not None and self.stream_large < settings.stream_threshold:
            settings = replace(settings, stream_threshold=self.stream_large)
        return settings

    def _adopt_stream_large_bodies(self) -> None:
        """mitmproxy streams a body over `stream_large_bodies` on its own, before failcore's hooks run
        or in the middle of a body failcore holds, and a stream it starts is neither recorded nor
        scanned, nor held for a decision. So failcore takes the option over: it streams bodies over
        that size itself (tapped: recorded up to failcore_body_cap, DLP-scanned, cut by strict stream
        DLP), still holds the bodies its policy must read whole (up to failcore_hold_max), and turns
        mitmproxy's own switch off."""
        # (Declared by mitmproxy's proxyserver addon: absent where an embedder runs without it.)
        spec = getattr(ctx.options, "stream_large_bodies", None)
        if not spec:
            return
        try:
            size = human.parse_size(spec)
        except ValueError:
            return  # mitmproxy's proxyserver addon refuses the value
        if size is None:
            return
        self.stream_large = size
        logger.warning(
            "failcore: stream_large_bodies=%s is taken over by failcore: bodies over %d bytes stream "
            "through failcore's tap (recorded up to failcore_body_cap and DLP-scanned); a body the "
            "policy must read whole is still held (up to failcore_hold_max); mitmproxy's own "
            "stream_large_bodies is set off, as it would stream bodies unrecorded and undecided",
            spec,
            size,
        )
        ctx.options.update(stream_large_bodies=None)
