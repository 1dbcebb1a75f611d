"""`@guard()`: one `tool` event per call of a function, with the side effects the audit hook saw.

The call's arguments are snapshot when it starts; masking and the event itself are built off the
guarded path (on the tape writer's or the channel's thread). A failure inside failcore is recorded as
an internal_error and the tool runs anyway, unless the policy says `fail_open: false`.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import os
import time
from collections.abc import Callable
from typing import Any, overload

from failcore.policy.contracts import check_output
from failcore.runtime import dispatch, hook
from failcore.runtime.context import Blocked, CallState, RunState, active_run, current_call
from failcore.runtime.events import origin, snapshot, tool_event

# Call ids: 8 random hex digits per process + a counter (16 hex digits, as uuid4().hex[:16] would be,
# without a getrandom(2) syscall per call: that alone cost 7-15 us on the benchmark machine).
_CALL_PREFIX = os.urandom(4).hex()
_call_numbers = itertools.count(1)


def new_call_id() -> str:
    return f"{_CALL_PREFIX}{next(_call_numbers) & 0xFFFFFFFF:08x}"


def _reseed_after_fork() -> None:
    global _CALL_PREFIX
    _CALL_PREFIX = os.urandom(4).hex()


os.register_at_fork(after_in_child=_reseed_after_fork)


@overload
def guard[F: Callable[..., Any]](fn: F, *, name: str | None = None) -> F: ...
@overload
def guard[F: Callable[..., Any]](fn: None = None, *, name: str | None = None) -> Callable[[F], F]: ...


def guard(fn: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Record every call of `fn` as a tool call of the enclosing `run()` (sync or async functions)."""
    if fn is None:
        return lambda f: _wrap(f, name)
    return _wrap(fn, name)


def _wrap(fn: Callable[..., Any], name: str | None) -> Callable[..., Any]:
    tool = name or getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    try:
        signature: inspect.Signature | None = inspect.signature(fn)
    except (TypeError, ValueError):
        signature = None
    names = _plain_names(signature)
    hook.install()

    def begin(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[CallState, dict[str, Any], Any] | None:
        run = active_run()
        if run is None:
            return None
        try:
            parent = current_call.get()
            call = CallState(run, new_call_id(), tool, parent.call_id if parent else None)
            snap = _arguments(signature, names, args, kwargs)
            token = current_call.set(call)
        except Exception as exc:
            _failed(run, "runtime.guard.begin", exc)
            return None
        hook.arm(call)
        return call, snap, token

    def end(
        state: tuple[CallState, dict[str, Any], Any], t0: float, result: Any, error: BaseException | None
    ) -> None:
        call, snap, token = state
        hook.disarm(call)
        call.open = False
        current_call.reset(token)
        t1 = time.time()
        run = call.run
        run.tool_calls += 1
        if error is not None and call.blocked_by is None:
            run.failed += 1
        contract = None
        scanner = None
        where: dict[str, Any] = {}
        with dispatch.internal():
            try:
                where = origin()
                loaded = run.rules.current()
                scanner = loaded.scanner
                declared = loaded.policy.tools.get(tool) if loaded.policy.tools else None
                if error is None and declared is not None:
                    contract = check_output(declared, result)
            except Exception as exc:  # the tool's event is still recorded, without what failed
                _failed(run, "runtime.guard.end", exc, closed_ok=True)
        run.record(
            _ToolBuild(
                call,
                snap,
                result,
                error,
                t0,
                t1,
                contract,
                where or _NO_ORIGIN,
                scanner,
                run.rules.salt,
                # A joined child's rules compile no DLP: the enclosing `failcore run` masks and cuts.
                run.rules.dlp,
            )
        )

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            state = begin(args, kwargs)
            if state is None:
                return await fn(*args, **kwargs)
            t0 = time.time()
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                end(state, t0, None, exc)
                raise
            end(state, t0, result, None)
            return result

        return async_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        state = begin(args, kwargs)
        if state is None:
            return fn(*args, **kwargs)
        t0 = time.time()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            end(state, t0, None, exc)
            raise
        end(state, t0, result, None)
        return result

    return wrapper


_NO_ORIGIN: dict[str, Any] = {"pid": None, "thread": "?", "task": None}


class _ToolBuild:
    """The tool event's builder, called on the writer's (or sender's) thread. One object rather than a
    closure: a closure over these ten values costs a dozen objects the garbage collector tracks, and in
    a loop of guarded calls those collections were a third of what guard() added (runtime_bench)."""

    __slots__ = (
        "call",
        "contract",
        "error",
        "final",
        "result",
        "salt",
        "scanner",
        "snap",
        "t0",
        "t1",
        "where",
    )

    def __init__(
        self,
        call: CallState,
        snap: dict[str, Any],
        result: Any,
        error: BaseException | None,
        t0: float,
        t1: float,
        contract: dict[str, Any] | None,
        where: dict[str, Any],
        scanner: Any,
        salt: bytes,
        final: bool,
    ) -> None:
        self.call, self.snap, self.result, self.error = call, snap, result, error
        self.t0, self.t1, self.contract, self.where = t0, t1, contract, where
        self.scanner, self.salt, self.final = scanner, salt, final

    def __call__(self) -> dict[str, Any]:
        return tool_event(
            self.call,
            args=self.snap,
            result=self.result,
            error=self.error,
            ts_start=self.t0,
            ts_end=self.t1,
            contract=self.contract,
            origin_info=self.where,
            scanner=self.scanner,
            salt=self.salt,
            final=self.final,
        )


def _plain_names(signature: inspect.Signature | None) -> tuple[str, ...] | None:
    """Parameter names when every parameter is positional-or-keyword (no *args, no keyword-only):
    arguments are then named by zipping, without Signature.bind (defaults are not recorded)."""
    if signature is None:
        return None
    params = list(signature.parameters.values())
    if any(p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params)


def _arguments(
    signature: inspect.Signature | None,
    names: tuple[str, ...] | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> dict[str, Any]:
    if names is not None and len(args) <= len(names) and not (kwargs.keys() - names):
        out = {name: snapshot(value) for name, value in zip(names, args, strict=False) if name != "self"}
        out.update((k, snapshot(v)) for k, v in kwargs.items())
        return out
    if signature is not None:
        try:
            bound = signature.bind_partial(*args, **kwargs)
            return {k: snapshot(v) for k, v in bound.arguments.items() if k != "self"}
        except TypeError:
            pass  # the call itself will raise the TypeError; record what was given
    out: dict[str, Any] = {f"arg{i}": snapshot(v) for i, v in enumerate(args)}
    out.update((k, snapshot(v)) for k, v in kwargs.items())
    return out


def _failed(run: RunState, where: str, exc: Exception, *, closed_ok: bool = False) -> None:
    """A failure inside failcore: recorded; the tool runs anyway unless the policy fails closed."""
    if not dispatch.record_failure(run, where, exc) and not closed_ok:
        raise Blocked(f"failcore failed ({type(exc).__name__}) and the policy says fail_open: false") from exc
