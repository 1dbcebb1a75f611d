"""What one LLM exchange comes to: `LlmCall` (model, tokens, finish, tool calls, text) and the running
`UsageSnapshot` of a stream. Token semantics: see failcore/llm/usage.py."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(slots=True)
class UsageSnapshot:
    """Usage numbers observed so far; ``output_chars`` lets a caller estimate tokens before usage arrives."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    cached_input_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    usage_known: bool = False
    output_chars: int = 0
    # The part of cache_write_tokens written with a 1-hour TTL (Anthropic bills it at 2x input).
    cache_write_1h_tokens: int | None = None


@dataclass(slots=True)
class LlmCall:
    provider: str
    api: str
    request_model: str | None = None
    response_model: str | None = None
    stream: bool = False
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    cached_input_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    usage_known: bool = False
    cache_write_1h_tokens: int | None = None
    finish_reason: str | None = None
    tool_calls: int = 0
    response_format: str | None = None
    # The tier that served the call, as the response reports it (OpenAI: default/priority/flex).
    service_tier: str | None = None
    output_text: str | None = None
    output_truncated: bool = False
    # Raw JSON text of each tool call's arguments/input, kept so a forced-tool contract can be checked.
    tool_inputs: list[str] = field(default_factory=list)
    status: int | None = None
    # The provider's id of the response (Responses API): budgets charge a retrieved response once.
    response_id: str | None = None

    @property
    def model(self) -> str | None:
        return self.response_model or self.request_model

    def to_dict(self) -> dict:
        return asdict(self)

    def apply_usage(self, usage: UsageSnapshot) -> None:
        """Take the token counts (and whether they are known) from a usage snapshot."""
        self.input_tokens = usage.input_tokens
        self.output_tokens = usage.output_tokens
        self.total_tokens = usage.total_tokens
        self.cached_input_tokens = usage.cached_input_tokens
        self.cache_write_tokens = usage.cache_write_tokens
        self.reasoning_tokens = usage.reasoning_tokens
        self.cache_write_1h_tokens = usage.cache_write_1h_tokens
        self.usage_known = usage.usage_known
