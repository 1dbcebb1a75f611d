"""Decoded views of a scanned buffer, with offsets that map back to the raw bytes.

A secret reaches its reader decoded: an LLM reads the string values of a JSON body, a server the
percent-decoded form value or path, a program the base64 it unwraps. Patterns written for the plain
secret do not see `\\"ghp_…\\"`, `%67hp_…` or `Z2hwX…`, so the engine also scans these views and maps
every hit back to the raw span that encodes it (masking and blocking stay exact).

Views are cheap where nothing is encoded: a JSON view is built with a few C-speed `bytes.replace`
passes and its offset map only when a hit needs mapping; base64 and hex runs are decoded whole (none
is skipped for its size or number: a limit an agent can pad past is a way out) in C passes, and only
their text is scanned, joined into one view.

Size: the views (JSON, percent) and the base64/hex run decoding share the View classes and their
offset mapping; split apart, the runs' half would import the views' and be imported back by them.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import codecs
import re
from collections.abc import Callable, Iterator
from itertools import accumulate
from urllib.parse import unquote_to_bytes

from failcore.dlp import regex_backend as rx
from failcore.dlp.wide import narrow_units

# JSON escapes that shrink 2 bytes to 1, in the order `bytes.replace` must apply them.
_TWO_BYTE_ESCAPES: tuple[tuple[bytes, bytes], ...] = (
    (b'\\"', b'"'),
    (b"\\/", b"/"),
    (b"\\n", b"\n"),
    (b"\\r", b"\r"),
    (b"\\t", b"\t"),
    (b"\\b", b"\b"),
    (b"\\f", b"\f"),
)
_SENTINEL = b"\x00"
_U_SENTINEL = b"\x01"
# An escape Python's decoder reads but JSON does not have (or reads differently): `\'`, `\a`, `\v`, `\x`,
# octal digits, a line continuation.
_UNCOMMON_ESCAPE = (
    # RE2 finds it (or says there is none) a few times faster than `re` in a body full of `\"`.
    rx.compile_re2(r'\\(?:[^"bfnrt]|\z)') if rx.re2_available() else re.compile(rb'\\(?:[^"bfnrt]|\Z)')
)
_PYTHON_ONLY_ESCAPE = re.compile(rb'\\(?:[^"\\bfnrt]|\Z)')
# `\u00XX` of printable ASCII: the only `\u` escapes a pattern (all ASCII) can care about.
_ASCII_U_ESCAPE = re.compile(rb"\\u00([2-7][0-9a-fA-F])")
# The same tokenisation as the replace chain above, left to right (an escaped backslash first).
_JSON_ESCAPE_TOKEN = re.compile(rb'\\\\|\\["/nrtbf]|\\u00[2-7][0-9a-fA-F]')
_PERCENT = re.compile(rb"%[0-9A-Fa-f]{2}")
_HEX_RUN = re.compile(rb"(?:[0-9a-fA-F]{2}){16,}")

# Not limits any more (every base64/hex run is decoded, whole, whatever its length or how many there
# are: an agent could pad past any count or size); kept as names callers read. MAX_CANDIDATE_BYTES is
# the past-cap batches' overlap (failcore.evidence.pastcapworker.OVERLAP).
MAX_CANDIDATES = 64
MAX_CANDIDATE_BYTES = 16 * 1024
MAX_DECODED_BYTES = 256 * 1024
MIN_PRINTABLE = 0.9


class OffsetMap:
    """Maps offsets of a decoded view to offsets of its source. Each decoded escape is
    `source[spans[i][0]:spans[i][1]]`, one byte at `view_starts[i]` of the view; outside the escapes
    view and source run in step."""

    def __init__(self, spans: list[tuple[int, int]]) -> None:
        self.spans = spans
        shrunk = list(accumulate((end - start - 1 for start, end in spans), initial=0))
        self.view_starts = [start - shift for (start, _end), shift in zip(spans, shrunk, strict=False)]

    def start(self, offset: int) -> int:
        index = bisect.bisect_right(self.view_starts, offset) - 1
        if index < 0:
            return offset
        source_start, source_end = self.spans[index]
        if offset == self.view_starts[index]:
            return source_start
        return source_end + (offset - self.view_starts[index] - 1)

    def end(self, offset: int) -> int:
        index = bisect.bisect_left(self.view_starts, offset) - 1
        if index < 0:
            return offset
        return self.spans[index][1] + (offset - self.view_starts[index] - 1)


class View:
    """A decoded form of (part of) a source buffer. `span()` maps a view span to a span of the raw
    buffer the whole chain started from."""

    kind = "view"

    def __init__(self, data: bytes, parent: View | None) -> None:
        self.data = data
        self.parent = parent

    def depth(self) -> int:
        return 0 if self.parent is None else 1 + self.parent.depth()

    def _to_parent(self, start: int, end: int) -> tuple[int, int]:
        return start, end

    def span(self, start: int, end: int) -> tuple[int, int]:
        view: View | None = self
        while view is not None and view.parent is not None:
            start, end = view._to_parent(start, end)
            view = view.parent
        return start, end


class RawView(View):
    kind = "raw"

    def __init__(self, data: bytes) -> None:
        super().__init__(data, None)


class _EscapeView(View):
    """A view decoded chunk by chunk from its parent: `anchors` hold (view offset, parent offset) of
    each chunk's start; the escapes of a chunk are found by `token` only when a hit in it needs
    mapping."""

    token: re.Pattern[bytes]

    def __init__(
        self,
        data: bytes,
        parent: View,
        anchors: list[tuple[int, int]] | Iterator[tuple[int, int]],
    ) -> None:
        super().__init__(data, parent)
        # An iterator is advanced only as far as the hits that need mapping (most bodies have none).
        self._pending = None if isinstance(anchors, list) else anchors
        self._anchors: list[tuple[int, int]] = anchors if isinstance(anchors, list) else []
        self._anchor_views = [view for view, _ in self._anchors]
        self._maps: dict[int, OffsetMap] = {}

    def _chunk(self, offset: int, *, end: bool) -> tuple[int, OffsetMap]:
        # Known anchors must reach past `offset` (or be all of them) so the chunk and its end are right.
        while self._pending is not None and (not self._anchor_views or self._anchor_views[-1] <= offset):
            anchor = next(self._pending, None)
            if anchor is None:
                self._pending = None
                break
            self._anchors.append(anchor)
            self._anchor_views.append(anchor[0])
        index = (bisect.bisect_left if end else bisect.bisect_right)(self._anchor_views, offset) - 1
        index = max(index, 0)
        offsets = self._maps.get(index)
        if offsets is None:
            assert self.parent is not None
            source_start = self._anchors[index][1]
            source_end = (
                self._anchors[index + 1][1] if index + 1 < len(self._anchors) else len(self.parent.data)
            )
            chunk = self.parent.data[source_start:source_end]
            offsets = OffsetMap([match.span() for match in self.token.finditer(chunk)])
            self._maps[index] = offsets
        return index, offsets

    def _to_parent(self, start: int, end: int) -> tuple[int, int]:
        index, offsets = self._chunk(start, end=False)
        view_base, source_base = self._anchors[index]
        mapped_start = source_base + offsets.start(start - view_base)
        index, offsets = self._chunk(end, end=True)
        view_base, source_base = self._anchors[index]
        return mapped_start, source_base + offsets.end(end - view_base)


class JsonStringView(_EscapeView):
    """JSON string escapes decoded (what a JSON parser hands the model); the punctuation stays, so
    `"api_key": "…"` keeps its shape."""

    kind = "json"
    token = _JSON_ESCAPE_TOKEN


class PercentView(_EscapeView):
    """`%XX` decoded, as a server reads a form value, a query value or a path."""

    kind = "percent"
    token = _PERCENT


class SliceView(View):
    """A base64 or hex run of the parent, decoded. Offsets map to the encoded characters."""

    def __init__(self, data: bytes, parent: View, start: int, end: int, kind: str) -> None:
        super().__init__(data, parent)
        self.start = start
        self.end = end
        self.kind = kind

    def _to_parent(self, start: int, end: int) -> tuple[int, int]:
        if self.kind == "hex":
            mapped = (self.start + 2 * start, self.start + 2 * end)
        else:
            mapped = (self.start + (start // 3) * 4, self.start + -(-end // 3) * 4)
        return mapped[0], min(self.end, mapped[1])


CHUNK = 32 * 1024


def _chunked(
    data: bytes, decode: Callable[[bytes], bytes], lookback: int, mark: bytes
) -> tuple[bytes, list[tuple[int, int]]]:
    """Decode `data` in chunks cut where no escape (starting with `mark`, at most `lookback` + 1 bytes
    long) can straddle the cut; returns the view and each chunk's (view offset, data offset)."""
    anchors: list[tuple[int, int]] = []
    parts: list[bytes] = []
    start = view_length = 0
    size = len(data)
    while start < size:
        cut = min(size, start + CHUNK)
        limit = cut + 4096
        while cut < size and mark in data[cut - lookback : cut]:
            cut += 1
            if cut >= limit:  # escapes everywhere: no safe cut, the rest is one chunk
                cut = size
        part = decode(data[start:cut])
        anchors.append((view_length, start))
        parts.append(part)
        view_length += len(part)
        start = cut
    return b"".join(parts), anchors


def _json_decode(data: bytes) -> bytes:
    """JSON string escapes of `data` decoded (see json_view). One C pass (`codecs.escape_decode`, which
    reads `\\\\ \\" \\b \\f \\n \\r \\t` as JSON does) when the text holds nothing it would read differently;
    otherwise token by token."""
    if _UNCOMMON_ESCAPE.search(data) is None:  # only \" \b \f \n \r \t: the common case
        return codecs.escape_decode(data)[0]
    if _SENTINEL in data or _U_SENTINEL in data or _ASCII_U_ESCAPE.search(data) is not None:
        return _JSON_ESCAPE_TOKEN.sub(_decode_json_token, data)
    text = data.replace(b"\\\\", _SENTINEL)
    if b"\\u" in text:  # a non-ASCII character: kept as written (no ASCII pattern can match inside)
        text = text.replace(b"\\u", _U_SENTINEL + b"u")
    if b"\\/" in text:
        text = text.replace(b"\\/", b"/")
    if _PYTHON_ONLY_ESCAPE.search(text) is not None:
        return _JSON_ESCAPE_TOKEN.sub(_decode_json_token, data)
    view = codecs.escape_decode(text)[0]
    if _SENTINEL in view:
        view = view.replace(_SENTINEL, b"\\")
    if _U_SENTINEL in view:
        view = view.replace(_U_SENTINEL, b"\\")
    return view


MAP_CHUNK = 4 * 1024


def _two_byte_anchors(data: bytes) -> Iterator[tuple[int, int]]:
    """Chunk anchors of a buffer whose every backslash starts a two-byte escape (`\\" \\b \\f \\n \\r
    \\t`, never `\\\\`): the view offset of a cut is the cut minus the backslashes before it."""
    yield 0, 0
    removed = previous = 0
    cut = MAP_CHUNK
    while cut < len(data):
        if data[cut - 1] == 0x5C:  # the cut would split an escape
            cut += 1
            if cut >= len(data):
                break
        removed += data.count(b"\\", previous, cut)
        yield cut - removed, cut
        previous = cut
        cut += MAP_CHUNK


def json_view(
    data: bytes,
) -> tuple[bytes, list[tuple[int, int]] | Iterator[tuple[int, int]]] | None:
    r"""The buffer with JSON string escapes decoded (and its chunk anchors, or an iterator computing
    them in order), or None when it has none.

    Only escapes of ASCII characters are decoded (`\uXXXX` of other characters stays as it is: no
    ASCII pattern can match inside it); an escaped backslash never starts a new escape.
    """
    if b"\\" not in data:
        return None
    if _UNCOMMON_ESCAPE.search(data) is None:
        # Only \" \b \f \n \r \t anywhere: one C pass over the whole buffer, anchors when needed.
        return codecs.escape_decode(data)[0], _two_byte_anchors(data)
    view, anchors = _chunked(data, _json_decode, 6, b"\\")
    return None if len(view) == len(data) else (view, anchors)


def _decode_json_token(match: re.Match[bytes]) -> bytes:
    token = match.group(0)
    if token[1:2] == b"u":
        return bytes([int(token[4:6], 16)])
    return {b"\\\\": b"\\", **dict(_TWO_BYTE_ESCAPES)}[token]


def percent_view(data: bytes) -> tuple[bytes, list[tuple[int, int]]] | None:
    if b"%" not in data or _PERCENT.search(data) is None:
        return None
    return _chunked(data, unquote_to_bytes, 2, b"%")


def _decode_base64(run: bytes) -> bytes | None:
    body = run.rstrip(b"=")
    if len(body) % 4 == 1:
        return None
    padded = body + b"=" * (-len(body) % 4)
    try:
        if b"-" in body or b"_" in body:
            if b"+" in body or b"/" in body:
                return None
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None


RUN_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-="
MIN_RUN = 24
# (Not a cap: find_runs returns every run, at most one per MIN_RUN + 1 bytes; a caller may take this
# many as a reason to scan a text the long way.)
MAX_RUNS = 1024
_RUN_TABLE = bytes(0x61 if byte in RUN_CHARS else 0x20 for byte in range(256))
_RUN_NEEDLE = b"a" * MIN_RUN


# MIN_RUN characters of RUN_CHARS: the earliest end of a match is MIN_RUN past the start of the first run.
RUN_PATTERN = "[A-Za-z0-9+/_=\\-]{" + str(MIN_RUN) + "}"


def find_runs(data: bytes, start: int = 0) -> list[tuple[int, int]]:
    """Spans of the base64/hex-alphabet runs of at least MIN_RUN characters (C-speed passes), from
    `start`, where the caller knows no run begins before it."""
    if len(data) - start < MIN_RUN:
        return []
    mapped = (data[start:] if start else data).translate(_RUN_TABLE)
    runs: list[tuple[int, int]] = []
    position = mapped.find(_RUN_NEEDLE)
    while position >= 0:
        end = mapped.find(b" ", position)
        end = len(mapped) if end < 0 else end
        runs.append((start + position, start + end))
        position = mapped.find(_RUN_NEEDLE, end)
    return runs


# --- base64 and hex runs, decoded -----------------------------------------------------------------
# Every run is decoded, whole, whatever its length and however many there are (an agent can pad past
# any count or size): the cost is a few C passes per byte of the runs. A run that decodes to text is
# scanned whole; in one that does not (an image, a hash, a run whose base64 starts out of step) only
# its stretches of text are, at each of the four offsets a base64 text can start at (two for hex).

# Printable ASCII (and \t \n \r) as `a`, other bytes as a space; and with the bytes of UTF-8's other
# characters as `a` too.
_TEXT_TABLE = bytes(0x61 if byte in b"\t\n\r" or 0x20 <= byte < 0x7F else 0x20 for byte in range(256))
_TEXT_OR_HIGH_TABLE = bytes(0x61 if byte >= 0x80 else code for byte, code in enumerate(_TEXT_TABLE))
# A stretch of text shorter than this in decoded bytes is not scanned (the shortest credential the
# built-in rules know is 12 bytes), as failcore.dlp.stream reads a binary body.
MIN_ISLAND = 10
_ISLAND_NEEDLE = b"a" * MIN_ISLAND
# Stretches of text closer than this are one segment (a rule's context may span a few other bytes).
ISLAND_GAP = 64
# Between two segments of the joined text: no rule, keyword or escape crosses it.
SEPARATOR = b"\x00\n\x00"
# base64url's alphabet read as base64's, and `=` (padding, or a `key=value` inside a run) as a zero.
_LENIENT_B64 = bytes.maketrans(b"-_=", b"+/A")
_HEX_TABLE = bytes(0x68 if byte in b"0123456789abcdefABCDEF" else 0x20 for byte in range(256))
_HEX_NEEDLE = b"h" * 32


def _is_text(data: bytes, mapped: bytes | None = None) -> bool:
    """At least MIN_PRINTABLE of it printable ASCII, or UTF-8 text with as few control bytes (the
    share is judged on characters, not on the bytes of a text in another script). `mapped`: `data`
    translated by _TEXT_TABLE, when the caller has it. (Translate and count: C passes, no deletion.)"""
    if not data:
        return False
    if mapped is None:
        mapped = data.translate(_TEXT_TABLE)
    limit = (1 - MIN_PRINTABLE) * len(data)
    if mapped.count(b" ") <= limit:
        return True
    if data.translate(_TEXT_OR_HIGH_TABLE).count(b" ") > limit:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _islands(data: bytes, mapped: bytes | None = None) -> list[tuple[int, int]]:
    """The stretches of at least MIN_ISLAND text bytes of `data`, merged when less than ISLAND_GAP
    apart, each with a byte of context either side. Two C passes; Python work per stretch only.
    `mapped`: as for _is_text."""
    if mapped is None:
        mapped = data.translate(_TEXT_TABLE)
    size = len(data)
    found: list[tuple[int, int]] = []
    position = mapped.find(_ISLAND_NEEDLE)
    while position >= 0:
        end = mapped.find(b" ", position + MIN_ISLAND)
        end = size if end < 0 else end
        start, stop = max(0, position - 1), min(size, end + 1)
        if found and start - found[-1][1] < ISLAND_GAP:
            start = found.pop()[0]
        found.append((start, stop))
        position = mapped.find(_ISLAND_NEEDLE, end)
    return found


class _Segment:
    """Decoded bytes [offset, offset + length) of the run at [run_start, run_end) of the parent view,
    at `at` in the joined text."""

    __slots__ = ("at", "hex", "length", "offset", "run_end", "run_start", "wide")

    def __init__(
        self, at: int, length: int, offset: int, run_start: int, run_end: int, hex: bool, wide: int = 1
    ) -> None:
        self.at = at
        self.length = length
        self.offset = offset
        self.run_start = run_start
        self.run_end = run_end
        self.hex = hex
        self.wide = wide  # decoded bytes a byte of the joined text stands for (2: UTF-16 narrowed)

    def encoded(self, position: int, *, end: bool) -> int:
        """The parent offset of the joined text's `position` (a start, or an `end`)."""
        decoded = self.offset + self.wide * min(max(position - self.at, 0), self.length)
        if self.hex:
            return min(self.run_end, self.run_start + 2 * decoded)
        groups = -(-decoded // 3) if end else decoded // 3
        return min(self.run_end, self.run_start + 4 * groups)


class DecodedRunsView(SliceView):
    """The base64 and hex runs of a parent view decoded, joined into one text to scan: each run that
    decodes to text whole, each stretch of text of one that does not, SEPARATOR between them (none
    between the lines of a wrapped run: a secret across a line break stays whole). Offsets map to the
    encoded characters."""

    def __init__(self, data: bytes, parent: View, segments: list[_Segment]) -> None:
        super().__init__(data, parent, 0, len(parent.data), "decoded")
        self.segments = segments
        self._starts = [segment.at for segment in segments]

    def _to_parent(self, start: int, end: int) -> tuple[int, int]:
        first = self.segments[max(0, bisect.bisect_right(self._starts, start) - 1)]
        last = self.segments[max(0, bisect.bisect_left(self._starts, end) - 1)]
        return first.encoded(start, end=False), last.encoded(end, end=True)


class _Joiner:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.segments: list[_Segment] = []
        self.at = 0

    def add(
        self, data: bytes, offset: int, run_start: int, run_end: int, hex: bool, glued: bool, wide: int = 1
    ) -> None:
        if self.parts and not glued:
            self.parts.append(SEPARATOR)
            self.at += len(SEPARATOR)
        self.segments.append(_Segment(self.at, len(data), offset, run_start, run_end, hex, wide))
        self.parts.append(data)
        self.at += len(data)

    def add_islands(
        self, decoded: bytes, run_start: int, run_end: int, hex: bool, mapped: bytes | None = None
    ) -> None:
        for start, stop in _islands(decoded, mapped):
            self.add(decoded[start:stop], start, run_start, run_end, hex, False)
        if decoded.count(0) * 4 >= len(decoded) > 0:
            # Many NULs: perhaps UTF-16 text (PowerShell's -EncodedCommand; UTF-7's `+AEEASw…-`, which
            # Express's JSON reader decodes under `charset=utf-7`): its units narrowed, in either order.
            for low_index in (0, 1):
                narrow = narrow_units(decoded, 2, low_index)
                for start, stop in _islands(narrow):
                    self.add(narrow[start:stop], 2 * start, run_start, run_end, hex, False, wide=2)


def _hex_runs(run: bytes) -> Iterator[tuple[int, int]]:
    """Spans of the stretches of at least 32 hex digits in a run (C passes)."""
    mapped = run.translate(_HEX_TABLE)
    position = mapped.find(_HEX_NEEDLE)
    while position >= 0:
        end = mapped.find(b" ", position)
        end = len(run) if end < 0 else end
        yield position, end
        position = mapped.find(_HEX_NEEDLE, end)


# The last line of a wrapped base64 text, shorter than a run (find_runs does not give it).
_SHORT_LINE = re.compile(rb"\r?\n([A-Za-z0-9+/_\-]{1,%d}=*)(?![A-Za-z0-9+/_\-=])" % (MIN_RUN - 1))


def _glue_short_line(data: bytes, end: int, joiner: _Joiner) -> int:
    """After a run that decoded to text and may go on on the next line (at `end`): a short last line
    there is decoded onto it (a secret across that line break stays whole). Where a next line may
    still continue it, or -1."""
    match = _SHORT_LINE.match(data, end)
    if match is None or len(match.group(1)) >= MIN_RUN:
        return end
    decoded = _decode_base64(match.group(1))
    if decoded:
        joiner.add(decoded, 0, match.start(1), match.end(1), False, True)
    return -1


def _a2b_lenient(chars: bytes) -> bytes:
    """base64 `chars` (already in base64's alphabet) decoded in step from their start, a last group of
    2 or 3 characters too (unpadded base64, as UTF-7 and base64url write it: its last byte or two)."""
    extra = len(chars) & 3
    if extra >= 2:
        return binascii.a2b_base64(chars + b"==" if extra == 2 else chars + b"=")
    return binascii.a2b_base64(chars[: len(chars) - extra] if extra else chars)


def no_candidates(data: bytes, runs: list[tuple[int, int]]) -> bool:
    """True only when `encoded_candidates(RawView(data), runs)` yields nothing, known with the same
    decodings but none of the text it would build: no run decodes to a stretch of text at any offset
    it is read at. False when that is not known (a run that may decode to text whole, or holds many
    NULs: perhaps UTF-16); the caller then asks encoded_candidates itself. (DlpEngine.quiet_lines:
    the header block of most requests has a request or trace id, one run that decodes to nothing.)"""
    for run_start, run_end in runs:
        if run_end - run_start < MIN_RUN:
            continue
        run = data[run_start:run_end]
        if len(run) % 2 == 0 and _HEX_RUN.fullmatch(run):
            if _is_text(bytes.fromhex(run.decode())):
                return False
        else:
            lenient = run.translate(_LENIENT_B64)
            first = _a2b_lenient(lenient)
            mapped = first.translate(_TEXT_TABLE)
            if _may_be_text(first, mapped) or _may_have_islands(first, mapped):
                return False
            for step in (1, 2, 3):
                decoded = _a2b_lenient(lenient[step:])
                if decoded.translate(_TEXT_TABLE).find(_ISLAND_NEEDLE) >= 0 or _many_nuls(decoded):
                    return False
        for hex_start, hex_end in _hex_runs(run):
            for step in (0, 1):
                digits = run[hex_start + step : hex_end]
                if _may_have_islands(bytes.fromhex(digits[: len(digits) // 2 * 2].decode())):
                    return False
    return True


def _may_have_islands(decoded: bytes, mapped: bytes | None = None) -> bool:
    """False only when `_Joiner.add_islands(decoded, …)` adds nothing: no stretch of text (_islands)
    and too few NULs for its UTF-16 reading."""
    if (decoded.translate(_TEXT_TABLE) if mapped is None else mapped).find(_ISLAND_NEEDLE) >= 0:
        return True
    return _many_nuls(decoded)


def _many_nuls(decoded: bytes) -> bool:
    """Whether `_Joiner.add_islands` also reads `decoded` as UTF-16."""
    return decoded.count(0) * 4 >= len(decoded) > 0


def _may_be_text(data: bytes, mapped: bytes) -> bool:
    """True whenever `_is_text(data, mapped)` is, without its exception for bytes that are not UTF-8
    (the usual answer for an id decoded as base64): UTF-8 decoded with replacement characters has
    none unless it was not UTF-8 or held one itself."""
    limit = (1 - MIN_PRINTABLE) * len(data)
    if not data or mapped.count(b" ") <= limit:
        return bool(data)
    if data.translate(_TEXT_OR_HIGH_TABLE).count(b" ") > limit:
        return False
    return "\ufffd" not in data.decode("utf-8", "replace") or b"\xef\xbf\xbd" in data


def encoded_candidates(
    view: View, runs: list[tuple[int, int]], budget: list[int] | None = None
) -> Iterator[SliceView]:
    """The base64 and hex `runs` of `view` decoded, as one DecodedRunsView (nothing when none holds
    text). Every run is decoded whole, however long, however many: a run of hex digits as hex, any
    other as base64, first in step from its start (a run that decodes to text is scanned whole, the
    lines of a wrapped one joined), else at each of the four character offsets a base64 text inside
    it can start at (a `key=…` or `/path/…` piece, a prefix), and any stretch of 32+ hex digits in it
    at both offsets: of these only the stretches of text are scanned. `budget` is not read (callers
    pass one; nothing is capped)."""
    del budget
    data = view.data
    joiner = _Joiner()
    glue_end = -1  # where a run that decoded to text whole ended, when the next one may continue it
    for run_start, run_end in runs:
        if run_end - run_start < MIN_RUN:
            continue
        run = data[run_start:run_end]
        glued = glue_end >= 0 and run_start - glue_end <= 2 and not data[glue_end:run_start].strip()
        glue_end = -1
        if len(run) % 2 == 0 and _HEX_RUN.fullmatch(run):
            decoded = bytes.fromhex(run.decode())
            if _is_text(decoded):
                joiner.add(decoded, 0, run_start, run_end, True, glued)
                glue_end = run_end
                continue
        else:
            lenient = run.translate(_LENIENT_B64)
            first = _a2b_lenient(lenient)
            # (In step from the start, leniently: the strict decoding is made only for a text.)
            mapped = first.translate(_TEXT_TABLE)
            whole = _decode_base64(run) if _is_text(first, mapped) else None
            if whole is not None and _is_text(whole):
                joiner.add(whole, 0, run_start, run_end, False, glued)
                glue_end = run_end if len(whole) % 3 == 0 and not run.endswith(b"=") else -1
                if glue_end >= 0:
                    glue_end = _glue_short_line(data, run_end, joiner)
                continue
            joiner.add_islands(first, run_start, run_end, False, mapped)
            for step in (1, 2, 3):
                decoded = _a2b_lenient(lenient[step:])
                joiner.add_islands(decoded, run_start + step, run_end, False)
        for hex_start, hex_end in _hex_runs(run):
            for step in (0, 1):
                digits = run[hex_start + step : hex_end]
                decoded = bytes.fromhex(digits[: len(digits) // 2 * 2].decode())
                joiner.add_islands(decoded, run_start + hex_start + step, run_start + hex_end, True)
    if joiner.segments:
        yield DecodedRunsView(b"".join(joiner.parts), view, joiner.segments)
