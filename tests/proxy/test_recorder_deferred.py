"""The recorder's response hook takes only a snapshot: where an exchange's event is built (on the event
loop, or for a large body in the tape writer's thread) is decided with the build, after the hook, so
the tape lists exchanges in the order they finished, whichever way each was built."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path

from mitmproxy import hooks, http
from mitmproxy.addonmanager import Loader
from mitmproxy.test import taddons, tflow

import failcore.proxy.recorder as recorder_module
from failcore.proxy import FailCore
from failcore.proxy.recorder import LOOP_BUILD_MAX_BYTES
from tests.helpers import read_tape


def _flow(path: str, body: bytes, encoding: str | None = None) -> http.HTTPFlow:
    flow = tflow.tflow(resp=True)
    flow.request.host, flow.request.port, flow.request.scheme = "127.0.0.1", 8080, "http"
    flow.server_conn.address = ("127.0.0.1", 8080)
    flow.client_conn.sni = None
    flow.request.path = path
    flow.response.headers["content-type"] = "application/octet-stream"
    if encoding:
        flow.response.headers["content-encoding"] = encoding
    flow.response.raw_content = body
    flow.response.headers["content-length"] = str(len(body))
    return flow


async def _finish(addon: FailCore, flow: http.HTTPFlow) -> None:
    response, flow.response = flow.response, None
    for name in ("requestheaders", "request"):
        if (r := getattr(addon, name)(flow)) is not None:
            await r
    flow.response = response
    for name in ("responseheaders", "response"):
        if (r := getattr(addon, name)(flow)) is not None:
            await r


def _run(
    confdir: Path, tape: Path, first: tuple[bytes, str | None], second: bytes, marker: list[int] | None = None
) -> list[str]:
    addon = FailCore()

    async def run() -> list[str]:
        with taddons.context() as tctx:
            addon.load(Loader(tctx.master))  # type: ignore[attr-defined]
            tctx.master.addons.add(addon)
            # No DLP: a DLP scan of a large body in a worker thread would turn the loop between the two.
            policy = tape.parent / "no-dlp.yaml"
            policy.write_text("mode: observe\ndefault: ALLOW\ndlp:\n  enabled: false\n")
            tctx.options.update(confdir=str(confdir), failcore_tape=str(tape), failcore_policy=str(policy))
            tctx.master.addons.invoke_addon_sync(addon, hooks.ConfigureHook(set(tctx.options.keys())))
            if (r := addon.running()) is not None:  # type: ignore[attr-defined]
                await r
            # Two exchanges finish in one turn of the loop, as under load.
            await _finish(addon, _flow("/first", *first))
            if marker is not None:
                marker.append(0)  # the first exchange's response hook has returned
            await _finish(addon, _flow("/second", second, "gzip"))
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert addon.recorder.writer is not None
            addon.recorder.writer.flush(timeout=30)
            addon.recorder.done()
        return [e["path"] for e in read_tape(tape) if e.get("kind") == "network"]

    return asyncio.run(run())


def test_a_large_exchange_keeps_its_place_on_the_tape(confdir: Path, tmp_path: Path) -> None:
    # The second decodes past LOOP_BUILD_MAX_BYTES: built in the writer's thread, the first on the loop.
    # (Before, the large one was handed to the writer in its hook and reached the tape first.)
    large = gzip.compress(b"x" * (4 * LOOP_BUILD_MAX_BYTES))
    assert _run(confdir, tmp_path / "tape", (b"small", None), large) == ["/first", "/second"]


def test_the_response_hook_does_not_weigh_the_body(
    confdir: Path, tmp_path: Path, monkeypatch: object
) -> None:
    """The size probe of a compressed body (a bounded inflate) runs after the response hook returned,
    not while the client waits for the response."""
    calls: list[int] = []
    probe = recorder_module.decoded_size_at_most

    def counted(raw: bytes, encoding: str | None, limit: int) -> int:
        calls.append(len(calls))
        return probe(raw, encoding, limit)

    monkeypatch.setattr(recorder_module, "decoded_size_at_most", counted)  # type: ignore[attr-defined]
    order: list[int] = []

    class Marker(list):  # type: ignore[type-arg]
        def append(self, item: object) -> None:
            order.append(len(calls))  # probes made by the time the first response hook returned
            super().append(item)

    small = gzip.compress(b"y" * 1000)
    paths = _run(confdir, tmp_path / "tape", (small, "gzip"), small, Marker())
    assert paths == ["/first", "/second"]
    assert order == [0] and calls  # none during the hook; made afterwards, for the build
