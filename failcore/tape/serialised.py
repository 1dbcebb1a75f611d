"""An event that reaches the tape writer already serialised: the DLP evidence worker builds a whole
exchange's event in its own process (failcore.evidence.remotebuild) and sends it back as the orjson
bytes the writer would have made of it, so the proxy neither parses it back into a dict nor serialises
it again (both hold the proxy's GIL: ~60 µs for a 40 KB LLM call's event).

What the worker sends is checked as `serialise_event` checks a dict, on the bytes: a JSON object that
opening with its `kind` (a string, named once), naming none of the keys the writer adds to a line
(`prev`, `seq`, `h`) and not a writer's own kind.
In JSON text a key can only appear as `"name":` (a quote inside a string is escaped), so a body without
those byte sequences has no such key at any depth; one with them (a nested key of that name, say) is
refused here and parsed and checked as a dict instead.
"""

from __future__ import annotations

import re
from typing import Final

# The sequences whose absence rules out the writer's keys and kinds (failcore.tape.writer:
# RESERVED_KEYS, WRITER_KINDS).
_REFUSED: Final = (b'"prev":', b'"seq":', b'"h":', b'"checkpoint"')
# All of them looked for in one pass over the body (four `in` searches cost 2.5x as much on a tape line).
_REFUSED_RE: Final = re.compile(b"|".join(re.escape(refused) for refused in _REFUSED))


class SerialisedEvent:
    """An event's orjson body (`{...}`), as `failcore.tape.writer.serialise_event` returns it."""

    __slots__ = ("body",)

    def __init__(self, body: bytes) -> None:
        self.body = body

    @classmethod
    def checked(cls, body: bytes) -> SerialisedEvent | None:
        """The body as a writer's item, or None when the cheap check cannot vouch for it."""
        # Its kind first and a string, named once (an event's to_dict() puts it first): a later
        # duplicate cannot change it.
        if not body.startswith(b'{"kind":"') or body[-1:] != b"}" or body.count(b'"kind":') != 1:
            return None
        if _REFUSED_RE.search(body) is not None:
            return None
        return cls(body)
