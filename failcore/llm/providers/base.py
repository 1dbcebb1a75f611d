"""What every provider's accumulator shares: the capped output text, usage salvage from an oversized
event, and the `Accumulator` base class the per-API ones fill in."""

from __future__ import annotations

import json
from dataclasses import replace

from failcore.llm.call import UsageSnapshot
from failcore.llm.typed import as_text

OUTPUT_TEXT_CAP = 256 * 1024


class CappedText:
    """Appends text up to a byte-ish cap (characters, cheap) and remembers whether anything was dropped."""

    __slots__ = ("_cap", "_in_word", "_parts", "_size", "chars", "seen", "truncated", "words")

    def __init__(self, cap: int, keep: bool) -> None:
        self._parts: list[str] = []
        self._size = 0
        self._cap = cap if keep else 0
        self.truncated = False
        self.seen = False
        self.chars = 0
        # Runs of non-whitespace characters (a word split across two appends counted once): a lower bound
        # on the tokens of the text, as no tokenizer's token spans whitespace between two words.
        self.words = 0
        self._in_word = False

    def append(self, text: str) -> None:
        self.seen = True
        self.chars += len(text)
        if text:
            words = len(text.split())
            if words and self._in_word and not text[0].isspace():
                words -= 1
            self.words += words
            self._in_word = not text[-1].isspace()
        room = self._cap - self._size
        if room <= 0:
            self.truncated = self.truncated or self._cap > 0
            return
        piece = text[:room]
        if len(piece) < len(text):
            self.truncated = True
        self._parts.append(piece)
        self._size += len(piece)

    def replace(self, text: str) -> None:
        self._parts, self._size, self.truncated, self.chars = [], 0, False, 0
        self.words, self._in_word = 0, False
        self.append(text)

    def value(self) -> str | None:
        return "".join(self._parts) if self.seen and self._cap > 0 else None

    def drop(self) -> None:
        """Keep no more text (what was kept goes); the counts go on."""
        self._cap, self._parts, self._size = 0, [], 0


def salvage_object(tail: bytes, key: bytes) -> dict | None:
    """Recover ``"key": {...}`` from the tail of an oversized event whose head was cut away."""
    position = tail.rfind(b'"' + key + b'"')
    if position < 0:
        return None
    brace = tail.find(b"{", position)
    if brace < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(tail[brace:].decode("utf-8", "replace"))
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


class Accumulator:
    """Folds one API's response (whole document or stream events) into usage, text and tool-call counts."""

    usage_key = b"usage"

    def __init__(self, keep_content: bool) -> None:
        self.keep_content = keep_content
        self.text = CappedText(OUTPUT_TEXT_CAP, keep_content)
        self.tool_input_budget = OUTPUT_TEXT_CAP
        self.tool_inputs: list[str] = []
        self.response_model: str | None = None
        self.service_tier: str | None = None
        self.finish_reason: str | None = None
        self.tool_calls = 0
        # The provider's id of the response (Responses API), so a later retrieval of it is not charged twice.
        self.response_id: str | None = None
        # Generated text not in `text` (other choices, streamed tool-call arguments), for estimates.
        self.other_chars = 0
        self.done = False
        # The stream ended on an error (an `error` event, `response.failed`), not on its normal end.
        self.errored = False
        self.usage = UsageSnapshot()

    def handle_document(self, doc: object) -> None:
        raise NotImplementedError

    def handle_event(self, event: str | None, payload: object) -> None:
        raise NotImplementedError

    def apply_usage(self, usage: dict) -> None:
        raise NotImplementedError

    def handle_done_marker(self) -> None:
        self.done = True

    def drop_content(self) -> None:
        """Keep no more content (text, tool inputs) from here on, and let go of what was kept: usage,
        counts, model and finish reason are folded as before (a stream tracker past its content limit)."""
        self.keep_content = False
        self.text.drop()
        self.tool_inputs = []

    def add_tool_input(self, raw: str) -> None:
        if not self.keep_content:
            return
        if len(raw) > self.tool_input_budget:
            self.text.truncated = True
            return
        self.tool_input_budget -= len(raw)
        self.tool_inputs.append(raw)

    def set_model(self, value: object) -> None:
        model = as_text(value)
        if model:
            self.response_model = model[:256]

    def set_service_tier(self, value: object) -> None:
        tier = as_text(value)
        if tier:
            self.service_tier = tier[:32]

    def set_finish(self, value: object) -> None:
        reason = as_text(value)
        if reason:
            self.finish_reason = reason[:64]

    def snapshot(self) -> UsageSnapshot:
        return replace(self.usage, output_chars=self.text.chars)

    @property
    def generated_words(self) -> int:
        """Words of the main text (`CappedText.words`): fewer tokens than this were not generated."""
        return self.text.words

    @property
    def generated_chars(self) -> int:
        """Characters of everything generated that the response showed (budgets' estimate)."""
        return self.text.chars + self.other_chars
