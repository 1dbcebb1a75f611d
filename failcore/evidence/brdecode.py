"""Decoding a br (brotli) body stage by stage, with what a failing call decoded salvaged.

A brotli error (bytes after the stream's end, a corrupt block) drops everything its call decoded, and a
brotli decoder cannot be copied, so a streaming receiver (curl, a browser) has output that one call
over the same bytes loses: a secret with it. BrotliStage keeps the last _BROTLI_KEEP bytes of input and
a second decoder that far behind the first; on an error the failing call's input is fed to it again
byte by byte from the state before it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any, Final

import brotli

# Input handed to brotli in one call (a failing call's is fed again byte by byte), and how much input
# the second decoder stays behind the first.
_BROTLI_INPUT_STEP: Final = 16 * 1024
_BROTLI_KEEP: Final = 1 << 20


def _brotli_outputs(b: Any, data: bytes, step: int) -> Iterator[bytes]:
    """`data` fed to decoder `b`, and what it then has pending, in pieces of at most `step` bytes."""
    yield b.process(data, output_buffer_limit=step)
    # Not `while not can_accept_more_data()`: that turns true while output is still pending, and
    # ended the decoding of a large body early (reported as truncated).
    while not b.is_finished():
        out = b.process(b"", output_buffer_limit=step)
        if not out:
            break  # it needs more input
        yield out


class BrotliStage:
    """The br stage of failcore.evidence.body's decoding: output in pieces of at most `step` bytes."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.b = brotli.Decompressor()
        self.shadow: Any = None  # a decoder `behind` short of `b` (made when the first input leaves it)
        self.behind: deque[bytes] = deque()
        self.behind_bytes = 0

    def feed(self, data: bytes) -> Iterator[bytes]:
        for start in range(0, len(data), _BROTLI_INPUT_STEP):
            piece = data[start : start + _BROTLI_INPUT_STEP]
            if self.b.is_finished():
                raise ValueError("data after the end of the br stream")
            produced = 0
            try:
                for out in _brotli_outputs(self.b, piece, self.step):
                    produced += len(out)
                    yield out
            except brotli.error:
                yield from self._salvage(piece, produced)
                raise
            self._keep(piece)

    def _keep(self, piece: bytes) -> None:
        self.behind.append(piece)
        self.behind_bytes += len(piece)
        while self.behind_bytes > _BROTLI_KEEP:
            oldest = self.behind.popleft()
            self.behind_bytes -= len(oldest)
            if self.shadow is None:
                self.shadow = brotli.Decompressor()
            for _ in _brotli_outputs(self.shadow, oldest, self.step):
                pass

    def _salvage(self, piece: bytes, skip: int) -> Iterator[bytes]:
        """What `piece` decodes to, fed byte by byte from the state before it, up to the error, less its
        first `skip` bytes (already yielded), in pieces of at most `step` bytes."""
        b = self.shadow if self.shadow is not None else brotli.Decompressor()
        try:
            for kept in self.behind:
                for _ in _brotli_outputs(b, kept, self.step):
                    pass
            for i in range(len(piece)):
                if b.is_finished():
                    return
                for decoded in _brotli_outputs(b, piece[i : i + 1], self.step):
                    if skip >= len(decoded):
                        skip -= len(decoded)
                        continue
                    yield decoded[skip:]
                    skip = 0
        except brotli.error:
            return

    def finish(self) -> Iterator[bytes]:
        if not self.b.is_finished():
            raise EOFError("br stream ends before its end marker (truncated)")
        return iter(())
