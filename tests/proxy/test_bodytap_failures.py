"""failcore.proxy.session.BodyTap: a failure of its own counting is reported once, and an observer
failing after that is still reported (and may still stop the stream under `fail_open: false`).

Before: the first counting failure replaced the tap's `failed` with a no-op, so every later observer
failure (strict stream DLP, the meter) was neither recorded nor able to cut the stream."""

from __future__ import annotations

from failcore.proxy.session import BodyTap


class BrokenDigest:
    """The tap's hashing raising: its counting fails."""

    def update(self, data: bytes) -> None:
        raise OverflowError("digest broke")


def test_an_observer_failing_after_the_counting_failed_is_still_reported_and_can_stop() -> None:
    reports: list[tuple[str, object]] = []

    def failed(exc: Exception, part: object) -> bool:
        reports.append((type(exc).__name__, part))
        return part is not tap

    tap = BodyTap(1024, failed=failed)
    tap.digest = BrokenDigest()  # type: ignore[assignment]
    assert tap(b"abc") == b"abc"  # fail-open for the counting: the chunk goes on
    assert tap(b"def") == b"def"
    assert reports == [("OverflowError", tap)], "the counting failure is reported once"

    def observer(chunk: bytes) -> None:
        raise ValueError("scanner broke")

    tap.observers.append(observer)
    assert tap(b"secret") == (), "a failing observer stops the stream when the policy says so"
    assert reports[-1] == ("ValueError", observer)
