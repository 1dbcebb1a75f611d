"""The spellings of a host name a secret may hide in, and the secrets found in them (the evidence
scan, failcore.evidence.dlp, and the blocking scans, failcore.proxy.dlpguard and hostdlp, read the
same spellings)."""

from __future__ import annotations

from failcore.dlp.escapes import escaped_hits
from failcore.dlp.model import Hit, Scans

# Bounds of host_spellings' label runs: a name has at most 127 labels, a key a few hundred characters.
MAX_LABELS = 127
JOINED_MAX = 256


def host_spellings(host: str) -> list[str]:
    """The spellings of a host name a secret may hide in: as written and upper-cased (hosts are
    case-insensitive and clients lower-case them; an AWS key id only matches in upper case), then,
    for a dotted name, every run of consecutive labels joined without their dots, one per line (a
    DNS label holds at most 63 characters, so a longer key must be split across labels, and a short
    one can be; a run ends where its last label does, so a rule's end boundary still holds). Runs are
    at most JOINED_MAX characters long."""
    spellings = [host, host.upper()]
    labels = [label for label in host.split(".") if label][:MAX_LABELS]
    runs = []
    for i in range(len(labels)):
        joined = labels[i]
        for label in labels[i + 1 :]:
            joined += label
            if len(joined) > JOINED_MAX:
                break
            runs.append(joined)
    if runs:
        text = "\n".join(runs)
        spellings += [text, text.upper()]
    return spellings


def host_hits(engine: Scans, host: str) -> list[Hit]:
    """Secrets in a host name, in the first of its spellings that has any (see host_spellings)."""
    return spelling_hits(engine, host)[1]


def spelling_hits(engine: Scans, host: str, first: int = 0) -> tuple[int, list[Hit]]:
    """(index in host_spellings, hits) of the first spelling from `first` on with any hits; (-1, []).
    A spelling the same as an earlier one (an upper-case host upper-cased) is not scanned again."""
    spellings = host_spellings(host)
    escaped = "\\" in host
    for index in range(first, len(spellings)):
        spelling = spellings[index]
        if spelling in spellings[:index]:
            continue
        # (A byte that is not UTF-8, recorded `\\xNN`, read back as the byte: see escaped_hits.)
        if found := engine.scan(spelling) or (escaped_hits(engine, spelling) if escaped else []):
            return index, found
    return -1, []
