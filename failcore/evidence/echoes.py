"""An exchange's own credentials echoed in what its DLP pass masks, masked together with its hits.

Echoed credentials (failcore.evidence.redact.credential_values: a cookie's value, a Bearer token) were
masked before the DLP scan: a mask spliced into a secret they were part of (a private key whose first
line is also the agent's cookie) broke the secret's match, and the rest of it was written in clear.
The DLP pass now scans the text as it was sent, finds the echoes in that same text, and masks the
union: a span where an echo and a hit overlap is replaced whole by their fingerprints. A hit that lies
wholly inside an echo is that credential, masked as an echo (as before: not a DLP hit).
"""

from __future__ import annotations

from collections.abc import Sequence

from failcore.dlp import Hit, mask_preview
from failcore.dlp.masking import fingerprint

# (start, end, fingerprint of the credential) of an echo in a text.
Span = tuple[int, int, str]


def echo_spans(data: bytes, secrets: Sequence[bytes], salt: bytes, start: int = 0) -> list[Span]:
    """Every copy of `secrets` (longest first, as mask_echoes replaces them) in `data` from `start`."""
    spans: list[Span] = []
    for secret in secrets:
        at = data.find(secret, start)
        while at >= 0:
            spans.append((at, at + len(secret), fingerprint(secret.replace(b"\\/", b"/"), salt)))
            at = data.find(secret, at + len(secret))
    return spans


def not_echoed(hits: list[Hit], spans: Sequence[Span]) -> list[Hit]:
    """The hits that are not wholly inside an echo (one that is, is that credential)."""
    if not spans:
        return hits
    return [h for h in hits if not any(s <= h.start and h.end <= e for s, e, _ in spans)]


def mask_with_echoes(data: bytes, hits: Sequence[Hit], spans: Sequence[Span]) -> bytes:
    """`data` with every hit masked (its preview, as mask_bytes) and every echo replaced by its
    fingerprint; overlapping spans are one span, replaced by all their fingerprints when it holds an
    echo (a preview would show the credential's characters)."""
    marks = sorted(
        [(max(0, h.start), min(len(data), h.end), "", h.fingerprint) for h in hits if h.end > h.start]
        + [(s, e, fp, "") for s, e, fp in spans]
    )
    out: list[bytes] = []
    cursor = 0
    group: list[tuple[int, int, str, str]] = []
    for mark in [*marks, (len(data) + 1, len(data) + 1, "", "")]:
        if group and mark[0] <= max(end for _, end, _, _ in group):
            group.append(mark)
            continue
        if group:
            start, end = group[0][0], max(e for _, e, _, _ in group)
            out.append(data[cursor:start])
            echoed = [fp for _, _, fp, _ in group if fp]
            if echoed:
                prints = dict.fromkeys(echoed + [fp for _, _, _, fp in group if fp])
                out.append(f"[redacted {', '.join(prints)}]".encode())
            else:
                out.append(mask_preview(data[start:end]).encode("utf-8"))
            cursor = end
        group = [mark]
    out.append(data[cursor:])
    return b"".join(out)


def redacted(hits: list[Hit]) -> str:
    """What stands for a whole value a secret was found in: the hits' fingerprints."""
    return f"[redacted {', '.join(dict.fromkeys(h.fingerprint for h in hits))}]"
