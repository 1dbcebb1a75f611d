"""failcore.tape.serialised: an event the DLP evidence worker sends back already serialised is written as
the very line its dict would have made, and the check on its bytes never lets through what the
writer's own check on a dict (`serialise_event`) refuses: a key the writer adds to a line (`prev`,
`seq`, `h`, at any depth) or a writer's kind. What it cannot vouch for is parsed and checked as a dict:
a worker that forges a line gets an internal_error on the tape, not its line."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from failcore.evidence.scanworker import _serialised
from failcore.tape.reader import iter_events
from failcore.tape.serialised import SerialisedEvent
from failcore.tape.writer import TapeWriter, serialise_event

# Keys a forger (or a recorded body) could use: the writer's own, look-alikes, quotes and escapes.
KEYS = [
    "kind",
    "h",
    "prev",
    "seq",
    "H",
    "hh",
    'h"',
    '"h',
    "\\h",
    "h:",
    "x",
    "text",
    "checkpoint",
    "prev ",
    "é",
]
TEXTS = ['"h":', '\\"h\\":', "checkpoint", '"checkpoint"', "plain", "", '{"prev":1}', "\u2028", "\\"]


def _value(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth < 3 and roll < 0.25:
        return {rng.choice(KEYS): _value(rng, depth + 1) for _ in range(rng.randrange(4))}
    if depth < 3 and roll < 0.35:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    if roll < 0.8:
        return rng.choice(TEXTS + KEYS)
    return rng.choice([0, 1, -2.5, None, True])


def _object(rng: random.Random, depth: int) -> dict[str, Any]:
    return {rng.choice(KEYS): _value(rng, depth + 1) for _ in range(rng.randrange(5))}


def _has_key(value: Any, names: set[str]) -> bool:
    if isinstance(value, dict):
        return bool(names & set(value)) or any(_has_key(v, names) for v in value.values())
    if isinstance(value, list):
        return any(_has_key(v, names) for v in value)
    return False


def _writer_accepts(event: dict[str, Any]) -> bool:
    try:
        serialise_event(event)
    except (TypeError, ValueError):
        return False
    return True


@pytest.mark.parametrize("seed", range(40))
def test_what_the_bytes_check_vouches_for_the_dict_check_accepts(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(100):
        event = (
            {"kind": rng.choice(["exchange", "checkpoint", "network", "h"]), **_object(rng, 0)}
            if rng.random() < 0.9
            else {}
        )
        if rng.random() < 0.5:
            event = {rng.choice(KEYS): _value(rng, 1), **event}
        elif rng.random() < 0.3:
            event["kind"] = _value(rng, 1)
        body = orjson.dumps(event)
        vouched = SerialisedEvent.checked(body)
        if vouched is not None:
            assert vouched.body == body
            assert _writer_accepts(event), event
            assert not _has_key(event, {"prev", "seq", "h"}), event
            assert isinstance(event.get("kind"), str) and event["kind"] != "checkpoint"


def test_an_ordinary_event_is_vouched_for() -> None:
    event: dict[str, Any] = {
        "kind": "exchange",
        "v": 1,
        "run": "r",
        "request": {"headers": {"x-h": "seq: 1", "prev": "x"}, "body": {"text": '{"h": 1, "prev": 2}'}},
    }
    # ("prev" above is a header name, so a key: refused and parsed instead; without it, vouched for.)
    assert SerialisedEvent.checked(orjson.dumps(event)) is None
    del event["request"]["headers"]["prev"]
    assert SerialisedEvent.checked(orjson.dumps(event)) is not None


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b"[]",
        b'"x"',
        b"",
        b'{"kind":"checkpoint"}',
        b'{"kind":"network","a":{"h":"x"}}',
        b'{"run":"r","kind":"network"}',
        b'{"kind":{"a":1}}',
        b'{"kind":"network","kind":{"a":1}}',
    ],
)
def test_what_it_refuses(body: bytes) -> None:
    assert SerialisedEvent.checked(body) is None


def _tape(tmp_path: Path, name: str, items: list[object]) -> list[bytes]:
    directory = tmp_path / name
    with TapeWriter(directory, signing_key=Ed25519PrivateKey.generate(), run_id="run-s") as writer:
        for item in items:
            writer.submit(item)  # type: ignore[arg-type]
    return sorted(directory.glob("*.jsonl"))[0].read_bytes().splitlines()


def test_a_serialised_event_is_written_as_its_dict_would_be(tmp_path: Path) -> None:
    events = [{"kind": "network", "run": "run-s", "n": i, "text": "é\u2028\x00" * i} for i in range(5)]
    as_dicts = _tape(tmp_path, "dicts", list(events))
    as_bytes = _tape(tmp_path, "bytes", [SerialisedEvent.checked(orjson.dumps(e)) for e in events])
    assert [line for line in as_bytes if b'"kind":"network"' in line] == [
        line for line in as_dicts if b'"kind":"network"' in line
    ]
    assert len([line for line in as_bytes if b'"kind":"network"' in line]) == 5


@pytest.mark.parametrize(
    "forged",
    [
        b'{"kind":"checkpoint","run":"run-s","sig":"forged"}',
        b'{"kind":"network","run":"run-s","h":"' + b"0" * 64 + b'"}',
        b'{"kind":"network","run":"run-s","seq":1}',
    ],
)
def test_a_line_a_worker_forges_is_not_written(forged: bytes, tmp_path: Path) -> None:
    """What the proxy takes from the worker's reply (scanworker._serialised), through the writer."""
    item = _serialised(forged)
    assert not isinstance(item, SerialisedEvent)
    directory = tmp_path / "tape"
    with TapeWriter(directory, signing_key=Ed25519PrivateKey.generate(), run_id="run-s") as writer:
        writer.submit(item)  # type: ignore[arg-type]
    events = list(iter_events(directory))
    assert not any(e.get("sig") == "forged" or e.get("kind") == "network" for e in events)
    errors = [e for e in events if e.get("kind") == "internal_error"]
    assert len(errors) == 1 and errors[0]["detail"]["where"] == "tape serialise"
