"""A policy file caught mid-write is not reported invalid: the watcher waits for it to hold still.

Editors (and `Path.write_text`) truncate the file, then write it; a poll between the two read an empty
policy, recorded `policy.reload` with ok=false and warned, then loaded the real edit at the next poll
(seen as a flaky extra rejection in tests/test_proxy_e2e.py under load)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from failcore.proxy.gate import PolicyGate
from tests.addon_harness import concerns

ALLOW = "version: 1\nmode: enforce\ndefault: ALLOW\n"
BLOCK = ALLOW + "rules:\n  - {id: no-json, path: /json, action: BLOCK}\n"


def _policy_events(events: list[dict]) -> list[tuple[str, bool]]:
    return [(e["detail"]["action"], e["detail"]["ok"]) for e in events if e.get("kind") == "policy"]


def test_a_file_still_being_written_is_read_once_it_holds_still(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(ALLOW)
    with concerns(PolicyGate, confdir=tmp_path, failcore_policy=str(path)) as h:
        gate = h.get(PolicyGate)
        loop = h.tctx.master.event_loop

        async def edit_mid_poll() -> bool:
            path.write_text("")  # the editor has truncated the file ...
            poll = asyncio.ensure_future(gate.reload_if_changed())
            await asyncio.sleep(0)  # ... the poll saw the empty file and waits for it to settle ...
            path.write_text(BLOCK)  # ... and the edit lands
            return await poll

        assert loop.run_until_complete(edit_mid_poll()) is False
        assert _policy_events(h.events) == [("policy.load", True)]
        assert loop.run_until_complete(gate.reload_if_changed()) is True
        assert _policy_events(h.events) == [("policy.load", True), ("policy.reload", True)]
        assert [r.id for r in h.session.policy.rules] == ["no-json"]


def test_an_invalid_edit_that_holds_still_is_still_reported_the_control(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(ALLOW)
    with concerns(PolicyGate, confdir=tmp_path, failcore_policy=str(path)) as h:
        gate = h.get(PolicyGate)
        path.write_text(ALLOW + "colour: red\n")
        assert h.tctx.master.event_loop.run_until_complete(gate.reload_if_changed()) is False
        assert _policy_events(h.events) == [("policy.load", True), ("policy.reload", False)]
