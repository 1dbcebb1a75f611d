"""Runtime events as the tape stores them (schema v2 kinds tool/fs/exec/connect).

Arguments are snapshot on the guarded path (a JSON-ready copy, capped) and masked where the event is
built: names that carry credentials become a salted fingerprint (as credential headers do), and every
string is DLP-scanned and masked with the policy's rules, so no credential reaches the disk in clear.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Final

import orjson

from failcore.event import EgressEvent, Target

if TYPE_CHECKING:
    from failcore.dlp.scanner import DlpScanner
    from failcore.runtime.context import CallState

MAX_DEPTH: Final = 6
MAX_ITEMS: Final = 64
MAX_STRING: Final = 4096
SUMMARY_CHARS: Final = 200
# A summary is masked before it is cut to SUMMARY_CHARS, from this much more text: a secret that starts
# inside the summary and runs past its end is found whole (cut first, its first part was written in
# clear). Longer than any credential's text, a 4096-bit PEM key included.
SECRET_SPAN: Final = 4096
ERROR_CHARS: Final = 1000
EGRESS: Final = {"tool": "TOOL", "fs": "FS", "exec": "EXEC", "connect": "NETWORK"}
# Argument names whose value is a credential (compared without '-', '_' and case).
_CREDENTIAL_NAME = re.compile(
    r"(pass(word|wd|phrase)?|secret|token|api_?key|apikey|auth(orization)?|credentials?|private_?key|"
    r"cookie|session(_?id)?|access_?key|client_?secret|bearer)$",
    re.IGNORECASE,
)


TRUNCATED: Final = "…[truncated]"
# A long string snapshot keeps SECRET_SPAN more characters than it will show, marked with this (not
# JSON text a caller could send: it holds a NUL); `apply_dlp` masks, then cuts it to MAX_STRING.
_UNCUT: Final = "\x00failcore-uncut"


def _long_text(text: str) -> str:
    return text if len(text) <= MAX_STRING else text[: MAX_STRING + SECRET_SPAN] + _UNCUT


def snapshot(value: Any, depth: int = 0) -> Any:
    """A JSON-ready copy of a value: containers capped, other objects by their (capped) repr. A string
    over MAX_STRING characters is cut by `apply_dlp`, after masking (cut first, a secret across the
    cut kept its first part in clear)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return _long_text(value)
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)[: MAX_STRING + SECRET_SPAN]
        return _long_text(raw.decode("utf-8", "backslashreplace"))
    if depth >= MAX_DEPTH:
        return "…[nested too deep]"
    if isinstance(value, dict):
        items = list(value.items())[:MAX_ITEMS]
        return {str(k): snapshot(v, depth + 1) for k, v in items}
    if isinstance(value, list | tuple | set | frozenset):
        return [snapshot(v, depth + 1) for v in list(value)[:MAX_ITEMS]]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    try:
        text = repr(value)
    except Exception as exc:  # a hostile __repr__ must not break the call
        text = f"<{type(value).__name__}: repr failed: {type(exc).__name__}>"
    return _long_text(text)


def cut_long(value: Any) -> Any:
    """The snapshot's long strings cut to MAX_STRING (after masking)."""
    if isinstance(value, str):
        return value[:MAX_STRING] + TRUNCATED if value.endswith(_UNCUT) else value
    if isinstance(value, dict):
        return {k: cut_long(v) for k, v in value.items()}
    if isinstance(value, list):
        return [cut_long(v) for v in value]
    return value


def _redact(name: str, value: Any, salt: bytes) -> Any:
    from failcore.evidence.redact import fingerprint

    if value is None or value == "" or not _CREDENTIAL_NAME.search(name.replace("-", "_")):
        return value
    raw = value.encode("utf-8") if isinstance(value, str) else orjson.dumps(value)
    return f"[redacted {fingerprint(raw, salt)}]"


def mask(
    value: Any,
    scanner: DlpScanner | None,
    salt: bytes,
    hits: list[dict[str, Any]],
    where: str,
    *,
    redact: bool = True,
) -> Any:
    """Credentials by name redacted (unless `redact` is False: already done), DLP hits in every string
    masked (recorded in `hits`)."""
    if isinstance(value, dict):
        return {
            k: mask(_redact(k, v, salt) if redact else v, scanner, salt, hits, f"{where}/{k}", redact=redact)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask(v, scanner, salt, hits, f"{where}/{i}", redact=redact) for i, v in enumerate(value)]
    if isinstance(value, str) and scanner is not None and value:
        from failcore.dlp.masking import mask_text

        found = scanner.engine.scan(value)
        if found:
            hits.extend(
                {
                    "rule": h.rule_id,
                    "severity": h.severity,
                    "category": h.category,
                    "location": where,
                    "preview": h.preview,
                    "fingerprint": h.fingerprint,
                    "action": scanner.action(h),
                    "taint_source": None,
                }
                for h in found
            )
            return mask_text(value, found)
    return value


def result_block(result: Any, error: BaseException | None) -> dict[str, Any]:
    """type/summary/sha256/bytes of a result (or of the exception a tool raised); summary unmasked yet."""
    if error is not None:
        text = f"{type(error).__name__}: {error}"
        kind = "error"
    elif result is None:
        text, kind = "", "none"
    elif isinstance(result, str | bytes | bytearray):
        text = result.decode("utf-8", "replace") if isinstance(result, bytes | bytearray) else result
        kind = "text"
    else:
        try:
            text = orjson.dumps(result, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
            kind = "json"
        except (TypeError, orjson.JSONEncodeError):
            text, kind = repr(result), "text"
    raw = text.encode("utf-8", "backslashreplace")
    return {
        "type": kind,
        "summary": text[: SUMMARY_CHARS + SECRET_SPAN],  # masked, then cut to SUMMARY_CHARS (apply_dlp)
        "sha256": hashlib.sha256(raw).hexdigest(),
        "bytes": len(raw),
    }


def origin() -> dict[str, Any]:
    asyncio = sys.modules.get("asyncio")  # not imported: there is no task
    try:
        task = asyncio.current_task() if asyncio is not None else None
    except RuntimeError:
        task = None
    return {
        "pid": os.getpid(),
        "thread": threading.current_thread().name,
        "task": task.get_name() if task else None,
    }


def effect_event(
    call: CallState,
    kind: str,
    action: str,
    payload: dict[str, Any],
    *,
    decision: str,
    rule: str | None,
    reason: str | None,
    would_block: bool,
    summary: str,
    target: Target | None = None,
    ts: float | None = None,
) -> dict[str, Any]:
    now = time.time() if ts is None else ts  # when the operation was seen, not when this is built
    blocked = decision == "BLOCK"
    return EgressEvent(
        kind=kind,  # type: ignore[arg-type]
        run=call.run.run_id,
        ts_start=now,
        ts_end=now,
        egress=EGRESS[kind],
        action=action,
        target=target,
        summary=summary,
        decision=decision,  # type: ignore[arg-type]
        rule=rule,
        reason=reason,
        would_block=would_block,
        outcome="BLOCKED" if blocked else "ok",
        call=call.call_id,
        parent_call=call.parent,
        payload=payload,
    ).to_dict()


def tool_event(
    call: CallState,
    *,
    args: dict[str, Any],
    result: Any,
    error: BaseException | None,
    ts_start: float,
    ts_end: float,
    contract: dict[str, Any] | None,
    origin_info: dict[str, Any],
    scanner: DlpScanner | None,
    salt: bytes,
    final: bool = True,
) -> dict[str, Any]:
    """The tool event, built off the guarded path (on the tape writer's or sender's thread): credentials
    by name redacted here, DLP hits masked and long texts cut by `apply_dlp` (the one masking path).
    `final` False: a joined child's event, which the enclosing `failcore run` finishes with its rules."""
    redacted_args = mask(args, None, salt, [], "tool.args")
    res = result_block(result, error)
    warnings = list(call.warnings)
    if contract is not None:
        warnings.append(
            {
                "reason": "contract_drift",
                "code": "contract_drift",
                "message": f"tool {call.name} declared {contract.get('expected')} output, "
                f"returned {contract.get('got')}",
            }
        )
    if call.blocked_by is not None:
        decision, outcome, fail_reason = "BLOCK", "BLOCKED", None
        rule, reason = call.blocked_by
    elif error is not None:
        decision, outcome, fail_reason, rule, reason = "ALLOW", "FAIL", "tool_error", None, None
    elif call.would_block:
        decision, outcome, fail_reason, rule, reason = (
            "WARN",
            "ok",
            None,
            None,
            "a side effect would be blocked in strict mode",
        )
    else:
        decision, outcome, fail_reason, rule, reason = "ALLOW", "ok", None, None, None
    error_text = f"{type(error).__name__}: {error}" if error is not None else None
    if error_text is not None and not final:  # the parent masks, then cuts to ERROR_CHARS
        error_text = error_text[: ERROR_CHARS + SECRET_SPAN]
    event = EgressEvent(
        kind="tool",
        run=call.run.run_id,
        ts_start=ts_start,
        ts_end=ts_end,
        egress="TOOL",
        action=call.name,
        summary=f"{call.name}() {outcome}",
        decision=decision,  # type: ignore[arg-type]
        rule=rule,
        reason=reason,
        would_block=call.would_block,
        outcome=outcome,  # type: ignore[arg-type]
        fail_reason=fail_reason,  # type: ignore[arg-type]
        error=error_text,
        latency_ms=round((ts_end - ts_start) * 1000, 3),
        warnings=warnings,
        call=call.call_id,
        parent_call=call.parent,
        payload={
            "name": call.name,
            "args": redacted_args,
            "result": res,
            "effects": dict(call.effects),
            "contract": contract,
            "origin": origin_info,
        },
    ).to_dict()
    return apply_dlp(event, scanner, salt) if final else event


def _dlp_warning(hits: list[dict[str, Any]]) -> dict[str, str]:
    return {"reason": "dlp", "message": f"{len(hits)} secret(s) in the call's arguments or result (masked)"}


def apply_dlp(event: dict[str, Any], scanner: DlpScanner | None, salt: bytes) -> dict[str, Any]:
    """An event's recorded strings masked with DLP rules: a joined child's by the enclosing `failcore
    run` (its rules), an fs/exec/connect event of a run of its own by that run's.

    A joined child redacts credentials by name and sends the rest unmasked over its private socket (so it
    never waits for a DLP compile of its own, and its events reach the tape in the order they
    happened); this runs on the parent's tape writer thread, before anything is written.
    """
    if scanner is not None:
        _mask_event(event, scanner, salt)
    # Cut only now, masked: cut first, a secret across the cut keeps its first part in clear, undetected.
    tool = event.get("tool")
    if isinstance(tool, dict) and "args" in tool:
        tool["args"] = cut_long(tool["args"])
    result = tool.get("result") if isinstance(tool, dict) else None
    if isinstance(result, dict) and isinstance(result.get("summary"), str):
        result["summary"] = result["summary"][:SUMMARY_CHARS]
    if isinstance(event.get("error"), str):
        event["error"] = event["error"][:ERROR_CHARS]
    return event


def _mask_event(event: dict[str, Any], scanner: DlpScanner, salt: bytes) -> None:
    hits: list[dict[str, Any]] = []
    tool = event.get("tool")
    if isinstance(tool, dict):
        tool["args"] = mask(tool.get("args"), scanner, salt, hits, "tool.args", redact=False)
        result = tool.get("result")
        if isinstance(result, dict) and isinstance(result.get("summary"), str):
            result["summary"] = mask(result["summary"], scanner, salt, hits, "tool.result")
    exec_ = event.get("exec")
    if isinstance(exec_, dict) and isinstance(exec_.get("argv"), list):
        exec_["argv"] = mask(exec_["argv"], scanner, salt, hits, "exec.argv", redact=False)
    fs = event.get("fs")
    if isinstance(fs, dict):
        for name in ("path", "target"):
            if isinstance(fs.get(name), str):
                fs[name] = mask(fs[name], scanner, salt, hits, f"fs.{name}")
    kind = event.get("kind")
    for name in ("summary", "reason", "error"):  # an fs event's summary and a refusal's reason name a path
        if isinstance(event.get(name), str):
            event[name] = mask(event[name], scanner, salt, hits, f"{kind}.{name}")
    if hits:
        dlp = event.get("dlp") if isinstance(event.get("dlp"), dict) else {}
        dlp["hits"] = [*dlp.get("hits", []), *hits]
        event["dlp"] = dlp
        if any(h["action"] != "ALLOW" for h in hits):
            event["warnings"] = [*(event.get("warnings") or []), _dlp_warning(hits)]


def internal_error_event(run_id: str, where: str, exc: BaseException, fail_open: bool) -> dict[str, Any]:
    return EgressEvent(
        kind="internal_error",
        run=run_id,
        ts_start=time.time(),
        fail_reason="internal_error",
        error=f"{type(exc).__name__}: {exc}"[:1000],
        detail={"where": where, "fail_open": fail_open},
    ).to_dict()
