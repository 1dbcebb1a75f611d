"""OpenAI's response formats (also spoken by OpenAI-compatible hosts): Chat Completions and Responses,
as JSON documents or SSE streams."""

from __future__ import annotations

from collections.abc import Iterator

from failcore.llm.providers.base import Accumulator
from failcore.llm.typed import as_count, as_dict, as_list, as_text, sum_known

# Client-executed Responses output items: these are the actions the agent itself will perform.
# Server-side built-ins (web_search_call, file_search_call, mcp_call, ...) run at OpenAI and are not counted.
RESPONSES_TOOL_CALL_TYPES = frozenset(
    {
        "function_call",
        "custom_tool_call",
        "computer_call",
        "local_shell_call",
        "shell_call",
        "apply_patch_call",
    }
)
# Streamed text that is generated (and billed) but is not the answer's text.
_OTHER_TEXT_DELTAS = frozenset(
    {
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
        "response.refusal.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_text.delta",
    }
)


# A Chat Completions delta with these keys only carries no refusal, reasoning or tool call.
_PLAIN_DELTA_KEYS = frozenset({"role", "content"})


class ChatCompletions(Accumulator):
    """OpenAI Chat Completions and legacy Completions (``choices[].text``)."""

    def __init__(self, keep_content: bool) -> None:
        super().__init__(keep_content)
        self._stream_tools: set[tuple[int, int]] = set()
        self._stream_args: dict[tuple[int, int], list[str]] = {}
        self._legacy_function_choices: set[int] = set()

    def handle_document(self, doc: object) -> None:
        doc = as_dict(doc)
        self.set_model(doc.get("model"))
        self.set_service_tier(doc.get("service_tier"))
        for position, choice in enumerate(as_list(doc.get("choices"))):
            choice = as_dict(choice)
            message = as_dict(choice.get("message"))
            content = as_text(message.get("content")) if message else as_text(choice.get("text"))
            if position == 0:
                if content is not None:
                    self.text.append(content)
                self.set_finish(choice.get("finish_reason"))
            for call in as_list(message.get("tool_calls")):
                self.tool_calls += 1
                call = as_dict(call)
                raw = as_text(as_dict(call.get("function")).get("arguments"))
                raw = raw if raw is not None else as_text(as_dict(call.get("custom")).get("input"))
                if raw is not None:
                    self.add_tool_input(raw)
            legacy = as_dict(message.get("function_call"))
            if legacy:
                self.tool_calls += 1
                raw = as_text(legacy.get("arguments"))
                if raw is not None:
                    self.add_tool_input(raw)
        self.apply_usage(as_dict(doc.get("usage")))
        self.done = True

    def handle_event(self, event: str | None, payload: object) -> None:
        # Once per streamed chunk: the typed reads are written out (isinstance) rather than called.
        if not isinstance(payload, dict):
            return
        chunk = payload
        if "error" in chunk and "choices" not in chunk:
            self.done = self.errored = True
            return
        model = chunk.get("model")
        if isinstance(model, str) and model:
            self.response_model = model[:256]
        tier = chunk.get("service_tier")
        if isinstance(tier, str) and tier:
            self.service_tier = tier[:32]
        choices = chunk.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict):
                    self._stream_choice(choice)
        usage = chunk.get("usage")
        if not isinstance(usage, dict):
            # Groq streams carry the usage in their own extension object, on the last chunk.
            groq = chunk.get("x_groq")
            usage = groq.get("usage") if isinstance(groq, dict) else None
        if isinstance(usage, dict):
            self.apply_usage(usage)

    def _stream_choice(self, choice: dict) -> None:
        index = choice.get("index")
        if type(index) is not int or index < 0:  # as_count's test, for what JSON can hold
            index = 0
        delta = choice.get("delta")
        if isinstance(delta, dict) and delta:
            content = delta.get("content")
        else:
            delta, content = {}, choice.get("text")
        if isinstance(content, str) and content:
            if index == 0:
                self.text.append(content)
            else:
                self.other_chars += len(content)
        if delta.keys() <= _PLAIN_DELTA_KEYS:  # most chunks: a piece of text, nothing else to read
            if index == 0 and choice.get("finish_reason") is not None:
                self.set_finish(choice["finish_reason"])
            return
        # Visible reasoning (DeepSeek's, vLLM's `reasoning_content`, OpenRouter's `reasoning`) is billed.
        for name in ("refusal", "reasoning_content", "reasoning"):
            other = delta.get(name)
            if isinstance(other, str):
                self.other_chars += len(other)
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            self._stream_tool_calls(index, calls)
        legacy = delta.get("function_call")
        if isinstance(legacy, dict) and legacy:
            self.other_chars += len(as_text(legacy.get("name")) or "")
            self.other_chars += len(as_text(legacy.get("arguments")) or "")
            if index not in self._legacy_function_choices:
                self._legacy_function_choices.add(index)
                self.tool_calls += 1
        if index == 0:
            self.set_finish(choice.get("finish_reason"))

    def _stream_tool_calls(self, index: int, calls: list) -> None:
        for call in calls:
            call = as_dict(call)
            key = (index, as_count(call.get("index")) or 0)
            if key not in self._stream_tools:
                self._stream_tools.add(key)
                self.tool_calls += 1
            function = as_dict(call.get("function"))
            arguments = as_text(function.get("arguments"))
            self.other_chars += len(as_text(function.get("name")) or "") + len(arguments or "")
            if arguments and self.keep_content:
                self._stream_args.setdefault(key, []).append(arguments)

    def drop_content(self) -> None:
        super().drop_content()
        self._stream_args.clear()

    def finalize_stream(self) -> None:
        for key in sorted(self._stream_args):
            self.add_tool_input("".join(self._stream_args[key]))
        self._stream_args.clear()

    def apply_usage(self, usage: dict) -> None:
        prompt = as_count(usage.get("prompt_tokens"))
        completion = as_count(usage.get("completion_tokens"))
        if prompt is None and completion is None:
            return
        prompt_details = as_dict(usage.get("prompt_tokens_details"))
        completion_details = as_dict(usage.get("completion_tokens_details"))
        self.usage.input_tokens = prompt
        self.usage.output_tokens = completion
        self.usage.total_tokens = as_count(usage.get("total_tokens")) or sum_known(prompt, completion)
        # DeepSeek bills by its own cache hit/miss split (prompt_tokens = hit + miss).
        hit = as_count(usage.get("prompt_cache_hit_tokens"))
        cached = as_count(prompt_details.get("cached_tokens"))
        self.usage.cached_input_tokens = hit if hit is not None else cached
        self.usage.cache_write_tokens = as_count(prompt_details.get("cache_write_tokens"))
        self.usage.reasoning_tokens = as_count(completion_details.get("reasoning_tokens"))
        self.usage.usage_known = True


class Responses(Accumulator):
    _TERMINAL = ("response.completed", "response.incomplete", "response.failed")

    def __init__(self, keep_content: bool) -> None:
        super().__init__(keep_content)
        self._tool_items: set[int | str] = set()

    def handle_document(self, doc: object) -> None:
        self._absorb_response(as_dict(doc), final=True)
        self.done = True

    def _absorb_response(self, response: dict, *, final: bool) -> None:
        self.set_model(response.get("model"))
        response_id = as_text(response.get("id"))
        if response_id:
            self.response_id = response_id[:256]
        self.set_service_tier(response.get("service_tier"))
        status = as_text(response.get("status"))
        if final:
            reason = as_text(as_dict(response.get("incomplete_details")).get("reason"))
            self.set_finish(reason or status)
            if not self.text.seen:
                for text in self._output_texts(response):
                    self.text.append(text)
            self._count_items(as_list(response.get("output")), collect_inputs=True)
        usage = response.get("usage")
        if isinstance(usage, dict):
            self.apply_usage(usage)

    @staticmethod
    def _output_texts(response: dict) -> Iterator[str]:
        for item in as_list(response.get("output")):
            item = as_dict(item)
            if item.get("type") != "message":
                continue
            for part in as_list(item.get("content")):
                part = as_dict(part)
                text = as_text(part.get("text"))
                if part.get("type") == "output_text" and text is not None:
                    yield text

    def _count_items(self, items: list, *, collect_inputs: bool) -> None:
        for position, item in enumerate(items):
            item = as_dict(item)
            if as_text(item.get("type")) not in RESPONSES_TOOL_CALL_TYPES:  # (a list type: not hashable)
                continue
            key = as_text(item.get("id")) or as_text(item.get("call_id")) or position
            if key not in self._tool_items:
                self._tool_items.add(key)
                self.tool_calls += 1
                if collect_inputs:
                    raw = as_text(item.get("arguments")) or as_text(item.get("input"))
                    if raw is not None and item.get("type") == "function_call":
                        self.add_tool_input(raw)

    def handle_event(self, event: str | None, payload: object) -> None:
        data = payload if isinstance(payload, dict) else {}
        kind = data.get("type")
        if not isinstance(kind, str) or not kind:
            kind = event
        if kind == "response.output_text.delta":  # most events: a piece of text
            delta = data.get("delta")
            if isinstance(delta, str) and delta:
                self.text.append(delta)
        elif kind in _OTHER_TEXT_DELTAS:
            self.other_chars += len(as_text(data.get("delta")) or "")
        elif kind in ("response.output_item.added", "response.output_item.done"):
            item = as_dict(data.get("item"))
            if as_text(item.get("type")) in RESPONSES_TOOL_CALL_TYPES:
                key = (
                    as_text(item.get("id")) or as_text(item.get("call_id")) or f"#{data.get('output_index')}"
                )
                if key not in self._tool_items:
                    self._tool_items.add(key)
                    self.tool_calls += 1
                    self.other_chars += len(as_text(item.get("name")) or "")
                if kind == "response.output_item.done" and item.get("type") == "function_call":
                    raw = as_text(item.get("arguments"))
                    if raw is not None:
                        self.add_tool_input(raw)
        elif kind in ("response.created", "response.in_progress", "response.queued"):
            self._absorb_response(as_dict(data.get("response")), final=False)
        elif kind in self._TERMINAL:
            response = as_dict(data.get("response"))
            # Tool inputs were already taken from output_item.done; the final object only fills gaps.
            self.set_model(response.get("model"))
            self.response_id = self.response_id or (as_text(response.get("id")) or "")[:256] or None
            reason = as_text(as_dict(response.get("incomplete_details")).get("reason"))
            self.set_finish(reason or as_text(response.get("status")) or kind.rsplit(".", 1)[-1])
            if not self.text.seen:
                for text in self._output_texts(response):
                    self.text.append(text)
            self._count_items(as_list(response.get("output")), collect_inputs=False)
            usage = response.get("usage")
            if isinstance(usage, dict):
                self.apply_usage(usage)
            self.done = True
            self.errored = kind == "response.failed"
        elif kind == "error":
            self.done = self.errored = True

    def apply_usage(self, usage: dict) -> None:
        input_tokens = as_count(usage.get("input_tokens"))
        output_tokens = as_count(usage.get("output_tokens"))
        if input_tokens is None and output_tokens is None:
            return
        input_details = as_dict(usage.get("input_tokens_details"))
        output_details = as_dict(usage.get("output_tokens_details"))
        self.usage.input_tokens = input_tokens
        self.usage.output_tokens = output_tokens
        total = as_count(usage.get("total_tokens"))
        self.usage.total_tokens = total or sum_known(input_tokens, output_tokens)
        self.usage.cached_input_tokens = as_count(input_details.get("cached_tokens"))
        self.usage.cache_write_tokens = as_count(input_details.get("cache_write_tokens"))
        self.usage.reasoning_tokens = as_count(output_details.get("reasoning_tokens"))
        self.usage.usage_known = True
