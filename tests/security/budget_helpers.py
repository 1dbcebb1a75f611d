"""What the budget attacks share: a policy with one token budget, and an OpenAI answer with usage."""

from __future__ import annotations

import json


def token_budget(limit: int, scope: str = "") -> str:
    return f"""
version: 1
mode: enforce
default: ALLOW
budgets:
  - id: tokens
    window: run
    {scope}
    limits: {{total_tokens: {limit}}}
"""


def completion(total_tokens: int) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """A Chat Completions answer reporting `total_tokens`, as LoggingUpstream.respond_with."""
    half = total_tokens // 2
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": half,
            "completion_tokens": total_tokens - half,
            "total_tokens": total_tokens,
        },
    }
    return 200, [(b"content-type", b"application/json")], json.dumps(body).encode()


CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
