"""failcore.proxy.bodyhash: a streamed body's sha256 is hashed off the thread that feeds it (mitmproxy's
event loop), and is still the sha256 of its bytes in order, whatever the chunking and however many
bodies stream at once.

Expected digests come from hashlib over the whole body; which thread hashed what is seen by a stand-in
for hashlib.sha256 that records it (the same stand-in on the code before this module: there every byte
was hashed by the feeding thread)."""

from __future__ import annotations

import hashlib
import os
import random
import threading

import pytest

from failcore.proxy import bodyhash
from failcore.proxy.bodyhash import BATCH, StreamSha256
from failcore.proxy.session import BodyTap

REAL_SHA256 = hashlib.sha256


class RecordingSha256:
    """hashlib.sha256, noting how many bytes each thread hashed."""

    by_thread: dict[str, int]

    def __init__(self, data: bytes = b"") -> None:
        self._hash = REAL_SHA256(data)

    def update(self, data: bytes) -> None:
        name = threading.current_thread().name
        RecordingSha256.by_thread[name] = RecordingSha256.by_thread.get(name, 0) + len(data)
        self._hash.update(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    RecordingSha256.by_thread = {}
    monkeypatch.setattr(hashlib, "sha256", RecordingSha256)
    return RecordingSha256.by_thread


def _chunks(data: bytes, rng: random.Random) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        n = rng.choice([1, 7, 2047, 4096, 65536, 300_000])
        out.append(data[i : i + n])
        i += n
    return out


@pytest.mark.parametrize("size", [0, 1, 100, BATCH - 1, BATCH, BATCH + 1, 3 * BATCH + 7, 5 * 2**20 + 3])
def test_the_digest_is_the_bodys_sha256_for_any_chunking(size: int) -> None:
    rng = random.Random(size)
    data = os.urandom(size)
    for _ in range(3):
        body = StreamSha256()
        for chunk in _chunks(data, rng):
            body.update(chunk)
        assert body.hexdigest() == REAL_SHA256(data).hexdigest()


def test_many_bodies_streaming_at_once_each_hash_their_own_bytes_in_order() -> None:
    rng = random.Random(7)
    datas = [os.urandom(rng.randrange(4 * BATCH)) for _ in range(12)]
    bodies = [StreamSha256() for _ in datas]
    pending = [_chunks(d, rng) for d in datas]
    while any(pending):
        i = rng.randrange(len(pending))
        if pending[i]:
            bodies[i].update(pending[i].pop(0))
    # The digests are asked for from other threads, as the tape writer's thread asks.
    answers: dict[int, str] = {}
    threads = [
        threading.Thread(target=lambda i=i: answers.__setitem__(i, bodies[i].hexdigest())) for i in range(12)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert answers == {i: REAL_SHA256(d).hexdigest() for i, d in enumerate(datas)}


def test_a_body_may_be_hashed_so_far_and_go_on(recorded: dict[str, int]) -> None:
    data = os.urandom(2 * BATCH + 5)
    body = StreamSha256()
    body.update(data[: BATCH + 3])
    assert body.hexdigest() == REAL_SHA256(data[: BATCH + 3]).hexdigest()
    body.update(data[BATCH + 3 :])
    assert body.hexdigest() == REAL_SHA256(data).hexdigest()


def test_a_tap_fed_on_one_thread_hashes_nothing_there(recorded: dict[str, int]) -> None:
    """The event loop (here: the thread feeding the tap) hashes no byte of a 6 MiB body; the tape
    writer's thread, asking for the digest, hashes only what is left under one batch."""
    data = os.urandom(6 * 2**20 + 12345)
    tap = BodyTap(1024)
    feeder = threading.Thread(
        target=lambda: [tap(data[i : i + 65536]) for i in range(0, len(data), 65536)], name="loop"
    )
    feeder.start()
    feeder.join(60)
    digest: list[str] = []
    writer = threading.Thread(target=lambda: digest.append(tap.digest.hexdigest()), name="writer")
    writer.start()
    writer.join(60)
    assert digest == [REAL_SHA256(data).hexdigest()]
    assert recorded.get("loop", 0) == 0, recorded
    assert recorded.get("writer", 0) < BATCH, recorded
    assert sum(recorded.values()) == len(data)


def test_a_hash_that_fails_makes_the_digest_raise_not_lie(monkeypatch: pytest.MonkeyPatch) -> None:
    body = StreamSha256()

    class Broken:
        def update(self, data: bytes) -> None:
            raise ValueError("broken hash")

        def hexdigest(self) -> str:
            return "0" * 64

    body._hash = Broken()  # type: ignore[assignment]
    body.update(os.urandom(BATCH))
    with pytest.raises(RuntimeError, match="broken hash"):
        body.hexdigest()


def test_a_hasher_that_never_answers_times_the_digest_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bodyhash, "DIGEST_TIMEOUT", 0.2)
    body = StreamSha256()
    body._queued = 1  # a batch handed over that the hasher never hashes
    with pytest.raises(TimeoutError):
        body.hexdigest()
