"""Past-cap secrets that straddle the recorded cap of a body: masked in the recorded part by their
offsets, before anything else changes the recorded text's length (failcore.evidence.dlp.scan_event,
failcore.evidence.exchange)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from failcore.evidence.echoes import redacted

if TYPE_CHECKING:
    from failcore.dlp import Hit
    from failcore.evidence.findings import PastCapFindings
    from failcore.evidence.pastcap import PastCapScan


def mask_straddling(
    event: dict[str, Any], past_cap: Sequence[PastCapFindings], covering: Sequence[bytes] = ()
) -> tuple[PastCapFindings, ...]:
    """Mask, in the recorded bodies of a built event, the first bytes of every past-cap secret that
    starts inside the recorded part (it straddles the cap), before anything else changes the recorded
    text's length: a hit's offset is exact only in the body as received. `covering`: other secrets
    about to be masked in the same text (the exchange's echoed credentials); one overlapping where a
    straddling secret starts is masked with it. Returns the findings marked as masked, so scan_event
    does not mask them again."""
    mask_straddles(event, [(scan, scan.results()[0]) for scan in past_cap], covering)
    return tuple(replace(scan, masked=True) for scan in past_cap)


def mask_straddles(
    event: dict[str, Any],
    past: Sequence[tuple[PastCapScan | PastCapFindings, list[tuple[int, Hit]]]],
    covering: Sequence[bytes] = (),
) -> None:
    straddling: dict[str, list[tuple[int, Hit]]] = {}
    for scan, found in past:
        for offset, hit in found:
            if offset < scan.cap:
                # It starts inside the recorded part, where its beginning alone matched nothing.
                straddling.setdefault(scan.where.split(".", 1)[0], []).append((offset, hit))
    for side, hits in straddling.items():
        _mask_recorded_tail((event.get(side) or {}).get("body"), hits, covering)


def _mask_recorded_tail(
    body: dict[str, Any] | None, hits: list[tuple[int, Hit]], covering: Sequence[bytes]
) -> None:
    """Replace the recorded body from the first straddling secret's start to its end (the first bytes
    of secrets that run past it) by their fingerprints, as a header value is: a masked preview of the
    part would show characters of the secret besides those of the hit's own preview."""
    if not body or ("text" not in body and "b64" not in body):
        return
    raw = body["text"].encode("utf-8") if "text" in body else base64.b64decode(body["b64"])
    start = min(offset for offset, _ in hits)
    if start >= len(raw):
        return
    moved = True
    while moved:  # a credential overlapping the start is masked with it (its own mask would miss it)
        moved = False
        for secret in covering:
            at = raw.find(secret, max(0, start - len(secret) + 1))
            if 0 <= at < start:
                start, moved = at, True
    masked = raw[:start] + redacted([hit for _, hit in hits]).encode()
    if "text" in body:
        body["text"] = masked.decode("utf-8", errors="replace")
    else:
        body["b64"] = base64.b64encode(masked).decode("ascii")
    body["dlp_masked"] = body.get("dlp_masked", 0) + len(hits)
