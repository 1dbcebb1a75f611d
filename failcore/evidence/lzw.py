"""The `compress` / `x-compress` content coding (RFC 9110 8.4.1.1: Unix compress, adaptive LZW) undone as
a stream: pure, bounded, decoding what gzip's unlzw.c and ncompress decode, as they decode it.

The format, from those two decoders (tests/data/lzw holds what ncompress wrote, checked against
`gzip -dc`):

    header = 1f 9d, flags: bits 0-4 the largest code width (gzip and ncompress read at most 16;
             0x60 reserved, ignored), 0x80 block mode (code 256 is CLEAR)
    codes  = packed least significant bit first, 9 bits wide at first; a code adds the table entry
             `previous string + first byte of this one` (not the first code; a code one past the
             table is that entry itself, the KwKwK case); once the next entry would not fit the width
             (and the width is below the largest) codes are one bit wider
    groups = codes are read 8 at a time (as many bytes as bits a code): when the width grows, or at a
             CLEAR (the table back to its 256 bytes, 9-bit codes), the rest of the current group is
             padding, skipped (the decoders read whole groups; the encoder pads them)

The quirks kept as those decoders have them: the first code must be a byte; after CLEAR the previous
code is kept, so the next code adds an entry 256 no code can name; with `-b 9` the width still grows to
10 bits once the table is full; bits after the last whole code are ignored. There is no end marker:
a stream cut short decodes, as far as it goes, to what the tools give.

Bounds: output is handed on in pieces of at most `step` bytes (a code expands to at most 2^16 bytes:
130 KB of codes can make 2 GiB); the table holds at most 2^16 entries of at most _FLAT bytes each, a
longer string kept as an earlier entry plus at most _FLAT bytes, so it stays near 10 MiB at worst
(measured with tracemalloc: entries all just past _FLAT; a KwKwK chain of 2^16 entries), whatever the
strings' lengths. Malformed input (a bad magic, more than 16 bits, a code past the table, a first code
that is no byte) raises LzwError, a ValueError, after what decoded before it was given; a header cut
short raises EOFError at the end.

Speed (benchmarks/lzw_bench.py): codes are unpacked a batch at a time (one int per group of 8, shifted
in a comprehension; 16-bit codes read as an array), 32 groups at a new width, doubling up to
_BATCH_CODES codes; a CLEAR at 9 bits goes on with the codes unpacked. Then one tight loop while the
table grows (a flat entry looked up and added inline, the rest in one slow branch) and, once it is
full, one `map` of the table over the codes. About 35-50 ms per MB of .Z for text or random bytes
(15-60 ms per MB decoded); the crafted worst cases, a stream of CLEARs or of codes each naming a string
just past _FLAT, about 0.15-0.18 s per MB of .Z; strings longer than that cost less per byte. So a
caller on the event loop (the stream meter, strict stream DLP) spends on a chunk at most ~0.2 ms per KB
of it, plus ~6 ms per MB it decodes to (those callers stop at 64 MiB decoded).
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable, Generator, Iterator
from typing import Final

MAGIC: Final = b"\x1f\x9d"
_MAX_BITS: Final = 16
_BLOCK_MODE: Final = 0x80
_CLEAR: Final = 256
# A table entry longer than this is kept as an earlier entry and its last bytes (memory bound).
_FLAT: Final = 64
# Codes unpacked and decoded in one batch: a batch of entries of at most _FLAT bytes stays under a
# step of output; longer ones (and KwKwK strings) are counted and end the batch early.
_BATCH_CODES: Final = 4096
# Groups unpacked in the first batch at a width (a CLEAR may follow soon: what is unpacked past it is
# unpacked again at 9 bits), doubling up to _BATCH_CODES / 8.
_FIRST_GROUPS: Final = 32
_SHIFTS: Final = {n: tuple(range(0, 8 * n, n)) for n in range(9, _MAX_BITS + 1)}
_BYTES: Final = tuple(bytes([i]) for i in range(256))


class LzwError(ValueError):
    """The stream is not one gzip or ncompress would decode past this point."""


def _unpack(data: bytes, start: int, end: int, bits: int) -> list[int]:
    """The codes of `bits` bits packed in data[start:end] (whole groups of `bits` bytes, or a last
    partial one: its whole codes)."""
    if bits == 16 and not (end - start) & 1:
        codes = array("H", data[start:end])
        if sys.byteorder == "big":
            codes.byteswap()
        return codes.tolist()
    mask = (1 << bits) - 1
    whole = start + (end - start) // bits * bits
    from_bytes = int.from_bytes
    shifts = _SHIFTS[bits]
    codes = [
        (g >> s) & mask
        for g in [from_bytes(data[p : p + bits], "little") for p in range(start, whole, bits)]
        for s in shifts
    ]
    if whole < end:
        g = from_bytes(data[whole:end], "little")
        codes += [(g >> s) & mask for s in shifts[: (end - whole) * 8 // bits]]
    return codes


class LzwStage:
    """The compress stage of failcore.evidence.body's decoding: fed the stream in pieces of any size,
    gives what they decode to in pieces of at most `step` bytes."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.pending = b""  # input not decoded yet: the header, or a group not all here yet
        self.started = False
        self.block = False
        self.maxbits = _MAX_BITS
        self.maxmax = 1 << _MAX_BITS  # entries the table can hold
        self.bits = 9
        self.maxcode = (1 << 9) - 1  # past this many entries the width grows (unless at maxbits)
        self.table: list[bytes | None] = list(_BYTES)  # None: a long entry (heads/tails)
        self.heads: dict[int, int] = {}
        self.tails: dict[int, bytes] = {}
        self.prev = b""  # the previous code's string
        self.old = -1  # the previous code (-1: none read yet)
        self.done = 0  # the codes of the group `pending` holds already decoded
        self.drop = 0  # bytes of input to skip (the padding of a group the width left)
        self.groups = _FIRST_GROUPS  # groups of codes unpacked next (doubling from a new width on)

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self.drop:  # the rest of a group a CLEAR or a wider width left unread: padding
            dropped = min(self.drop, len(data))
            data = data[dropped:]
            self.drop -= dropped
        data = self.pending + data if self.pending else data
        self.pending = b""
        pos = 0
        if not self.started:
            if len(data) < 3:
                self.pending = data
                return
            self._header(data)
            pos = 3
        skip, self.done = self.done, 0
        while True:
            bits = self.bits
            end = pos + (len(data) - pos) // bits * bits
            partial = pos == end
            if partial:  # the whole codes of a group not all here yet are decoded now (a receiver can)
                if (len(data) - pos) * 8 // bits <= skip:
                    self.done = skip
                    break
                end = len(data)
            start = pos
            pos = yield from self._batch(data, pos, end, skip)
            skip = 0
            if partial:
                if pos > len(data):
                    self.drop = pos - len(data)
                    return
                self.done = (len(data) - start) * 8 // bits
                pos = start
                break
        self.pending = data[pos:]

    def finish(self) -> Iterator[bytes]:
        """The stream ends: each whole code was decoded as it came (bits after the last are ignored)."""
        if not self.started and self.pending:
            raise EOFError("compress stream ends inside its 3-byte header (truncated)")
        yield from ()

    def _header(self, data: bytes) -> None:
        if data[:2] != MAGIC:
            raise LzwError(f"not a compress stream (magic {data[:2].hex()}, not 1f9d)")
        flags = data[2]
        self.maxbits = flags & 0x1F
        if self.maxbits > _MAX_BITS:
            raise LzwError(f"compress stream of {self.maxbits}-bit codes (at most {_MAX_BITS})")
        self.maxmax = 1 << self.maxbits
        self.block = bool(flags & _BLOCK_MODE)
        if self.block:
            self.table.append(None)  # 256: CLEAR, never a string
        self.started = True

    def _widen(self) -> None:
        self.groups = _FIRST_GROUPS
        self.bits += 1
        self.maxcode = self.maxmax if self.bits == self.maxbits else (1 << self.bits) - 1

    def _clear(self) -> None:
        del self.table[256:]
        self.groups = _FIRST_GROUPS
        self.heads.clear()
        self.tails.clear()
        self.bits = 9
        self.maxcode = (1 << 9) - 1
        self.prev = b""  # (the entry the next code adds, 256, is never named: its string is moot)

    def _batch(self, data: bytes, pos: int, end: int, skip: int = 0) -> Generator[bytes, None, int]:
        """Decodes the codes of data[pos:end] (whole groups, or a last partial one) but the first `skip`
        (decoded before), up to `groups` groups; returns where the next batch starts (past `end`: the
        rest of the group is padding, still to come)."""
        bits = self.bits
        groups = self.groups
        self.groups = min(2 * groups, _BATCH_CODES // 8)
        grow = min(self.maxcode + 1, self.maxmax) - len(self.table)
        if grow > 0 and len(self.table) + grow > self.maxcode:  # no code past the next width's start
            groups = min(groups, (skip + (self.old < 0) + grow + 7) // 8)
        end = min(end, pos + groups * bits)
        codes = _unpack(data, pos, end, bits)
        out: list[bytes] = []
        at = skip
        try:
            while True:
                at = yield from self._segment(codes, at, out)
                if not (bits == 9 and self.bits == 9 and 0 <= at < len(codes)):
                    break
                # (a CLEAR at 9 bits: the codes after its group are 9-bit codes as unpacked)
        except LzwError:
            if out:  # what decoded before the error
                yield from self._pieces(out)
            raise
        if out:
            yield from self._pieces(out)
        return end if at < 0 else pos + at // 8 * bits

    def _segment(self, codes: list[int], at: int, out: list[bytes]) -> Generator[bytes, None, int]:
        """Decodes codes[at:] up to a CLEAR or a wider width (the rest of that group is padding);
        returns the index of the group after it, or -1 when all were decoded."""
        free = len(self.table)
        # Codes that add an entry before the width grows or the table is full, from `start` on.
        grow = min(self.maxcode + 1, self.maxmax) - free
        start = at if self.old >= 0 else at + 1
        widen_at = -1  # the index of the code read at the next width
        if grow > 0 and free + grow > self.maxcode and start + grow < len(codes):
            widen_at = start + grow
        cut = widen_at if widen_at >= 0 else len(codes)
        clear_at = -1
        if self.block:
            try:
                clear_at = codes.index(_CLEAR, start, cut)
            except ValueError:
                pass
            else:
                cut = clear_at
        if self.old < 0 and at < cut:
            code = codes[at]
            if code >= 256:
                raise LzwError(f"compress stream's first code {code} is not a byte")
            self.prev = _BYTES[code]
            self.old = code
            out.append(self.prev)
        at = start
        if at < cut and grow > 0:
            stop = min(cut, at + grow)
            at = self._grow(codes, at, stop, out)
            if at < stop:
                at = yield from self._flush(out, codes, at, stop, self._grow)
        if at < cut:
            at = self._full(codes, at, cut, out)
            if at < cut:
                yield from self._flush(out, codes, at, cut, self._full)
        if clear_at >= 0:
            self._clear()
            return (clear_at // 8 + 1) * 8
        if widen_at >= 0:
            self._widen()
            return (widen_at + 7) // 8 * 8
        if len(self.table) > self.maxcode:  # the table reached the width's end with the last code
            self._widen()
            return (len(codes) + 7) // 8 * 8
        return -1

    def _flush(
        self,
        out: list[bytes],
        codes: list[int],
        at: int,
        stop: int,
        run: Callable[[list[int], int, int, list[bytes]], int],
    ) -> Generator[bytes, None, int]:
        """A run stopped early (a step of output): hand it on, go on from `at`."""
        while at < stop:
            yield from self._pieces(out)
            out.clear()
            at = run(codes, at, stop, out)
        return at

    def _pieces(self, out: list[bytes]) -> Iterator[bytes]:
        joined = b"".join(out)
        step = self.step
        if len(joined) <= step:
            yield joined
            return
        for start in range(0, len(joined), step):
            yield joined[start : start + step]

    def _grow(self, codes: list[int], at: int, stop: int, out: list[bytes]) -> int:
        """codes[at:stop], each adding an entry; returns where it stopped (early after a step of long
        strings). The hot loop: a flat entry (at most _FLAT bytes) is looked up and added inline."""
        table = self.table
        add = table.append
        give = out.append
        prev = self.prev
        old = self.old  # (the code before codes[at]; codes[i - 1] after it)
        flat = _FLAT
        extra = 0
        i = at
        for i in range(at, stop):
            code = codes[i]
            try:
                s = table[code]
            except IndexError:
                s = None
            if s is None:  # a KwKwK code, a long entry, or a code past the table
                s = self._slow(code, prev)
                extra += len(s)
                give(s)
                if len(prev) < flat:
                    add(prev + s[:1])
                else:
                    self._add_long(codes[i - 1] if i > at else old, s[:1])
                prev = s
                if extra > self.step:
                    i += 1
                    break
                continue
            give(s)
            if len(prev) < flat:
                add(prev + s[:1])
            else:
                self._add_long(codes[i - 1] if i > at else old, s[:1])
            prev = s
        else:
            i = stop
        self.prev = prev
        if i > at:
            self.old = codes[i - 1]
        return i

    def _full(self, codes: list[int], at: int, stop: int, out: list[bytes]) -> int:
        """codes[at:stop], the table full (no entry added): looked up all at once when each is a flat
        entry (so the output stays under _FLAT bytes a code), else one by one."""
        table = self.table
        try:
            strings = list(map(table.__getitem__, codes[at:stop]))
        except IndexError:  # (a KwKwK code of a table that holds no more, or an error)
            strings = None
        if strings is not None and (not self.heads or None not in strings):
            if strings:
                out += strings  # (no None in it)
                self.prev = strings[-1]
                self.old = codes[stop - 1]
            return stop
        give = out.append
        prev = self.prev
        extra = 0
        i = at
        for i in range(at, stop):
            code = codes[i]
            try:
                s = table[code]
            except IndexError:
                s = None
            if s is None:
                s = self._slow(code, prev)
                extra += len(s)
            give(s)
            prev = s
            if extra > self.step:
                i += 1
                break
        else:
            i = stop
        self.prev = prev
        if i > at:
            self.old = codes[i - 1]
        return i

    def _slow(self, code: int, prev: bytes) -> bytes:
        """The string of a code that is no flat entry: a long one, or the KwKwK code one past the table
        (the previous string and its first byte); LzwError past that."""
        if code < len(self.table):
            return self._expand(code)
        if code == len(self.table):
            return prev + prev[:1]
        raise LzwError(f"compress code {code} is past the table ({len(self.table)} entries)")

    def _add_long(self, old: int, last: bytes) -> None:
        """Adds the entry `string(old) + last`, string(old) being _FLAT bytes or more."""
        code = len(self.table)
        self.table.append(None)
        tail = self.tails.get(old)
        if tail is not None and len(tail) < _FLAT:
            self.heads[code] = self.heads[old]
            self.tails[code] = tail + last
        else:
            self.heads[code] = old
            self.tails[code] = last

    def _expand(self, code: int) -> bytes:
        parts = []
        heads, tails = self.heads, self.tails
        while code in heads:
            parts.append(tails[code])
            code = heads[code]
        head = self.table[code]
        assert head is not None
        parts.append(head)
        parts.reverse()
        return b"".join(parts)
