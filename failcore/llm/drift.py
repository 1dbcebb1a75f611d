"""Contract drift: the request demanded JSON output but the model returned something else."""

from __future__ import annotations

import json

from failcore.llm.usage import LlmCall, anthropic_prefill, requested_response_format

_JSON_TEXT_FORMATS = frozenset({"json_object", "json_schema"})


def _json_error(text: str) -> str | None:
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        return f"{error.msg} at line {error.lineno} column {error.colno}"
    return None


def _tool_input_problem(raw: str) -> str | None:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        return f"tool input is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
    if not isinstance(value, dict):
        return f"tool input is not a JSON object: got {type(value).__name__}"
    return None


def contract_drift(call: LlmCall, request_json: dict | None) -> str | None:
    """Reason string when the response breaks the JSON contract the request asked for, else None.

    Undecidable cases return None: error statuses, bodies cut by the capture cap, and responses with no
    assistant content at all.
    """
    expected = call.response_format or requested_response_format(call.api, request_json)
    if expected is None:
        return None
    if call.status is not None and not 200 <= call.status < 300:
        return None
    if call.output_truncated:
        return None

    if expected == "tool_forced":
        if call.tool_calls == 0:
            return "tool call was forced but the response contains no tool call"
        for raw in call.tool_inputs:
            problem = _tool_input_problem(raw)
            if problem is not None:
                return problem
        return None

    if call.output_text is None or expected not in _JSON_TEXT_FORMATS | {"json_prefill"}:
        return None
    text = call.output_text
    if expected == "json_prefill":
        # Anthropic continues the assistant turn, so the prefix is not repeated in the response.
        text = (anthropic_prefill(request_json or {}) or "") + text
    error = _json_error(text)
    return None if error is None else f"response is not valid JSON: {error}"
