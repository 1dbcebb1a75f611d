"""failcore's demo and test upstream: a local HTTPS stand-in for LLM providers and generic endpoints.

It is no part of the proxy: `failcore sample`, the tests and the benchmarks run it as the upstream.
`replies` plans an answer and reads the control headers, `wire` writes the providers' documents and
stream events, `framing` the bytes (SSE frames, content encodings), `certs` the self-signed
certificate; `handler` routes and answers one HTTP request, `websocket` echoes, and `server.StandIn`
runs it all on loopback.

``StandIn`` runs a real TLS server on loopback (self-signed certificate generated with
``cryptography``) that speaks the providers' wire formats closely enough for the official
``openai`` and ``anthropic`` SDKs, httpx and curl to talk to it unmodified.  It backs
failcore's end-to-end tests, the offline demo (``failcore sample``) and the benchmarks.

    from failcore.demo.server import StandIn

    with StandIn() as upstream:
        ctx = ssl.create_default_context(cafile=str(upstream.ca_path))
        client = openai.OpenAI(base_url=upstream.url + "/v1", api_key="x",
                               http_client=httpx.Client(verify=ctx))

Every request is recorded (``StandIn.requests``) before it is answered.

Provider endpoints
------------------
``POST /v1/chat/completions`` -- OpenAI Chat Completions.  JSON ``chat.completion`` or, with
    ``"stream": true``, ``text/event-stream`` of ``chat.completion.chunk`` objects: a first
    delta carrying the role, the reply word by word, a final chunk with ``finish_reason``,
    then -- only if ``stream_options.include_usage`` is true -- a chunk with ``choices: []``
    and ``usage``, then ``data: [DONE]``.
``POST /v1/responses`` -- OpenAI Responses API.  JSON ``response`` object or SSE with
    ``event: <type>`` frames: response.created, response.in_progress,
    response.output_item.added, response.content_part.added, response.output_text.delta (one
    per word), response.output_text.done, response.content_part.done,
    response.output_item.done, response.completed (full response including usage).  Each
    ``data`` carries ``type`` and an increasing ``sequence_number``.  Function calls stream as
    output_item.added, response.function_call_arguments.delta (several),
    response.function_call_arguments.done, output_item.done.
``POST /v1/messages`` -- Anthropic Messages.  JSON ``message`` or SSE: message_start
    (usage with the input tokens and ``output_tokens: 1``), content_block_start, ping,
    content_block_delta (text_delta per word / input_json_delta pieces), content_block_stop,
    TWO message_delta events whose ``usage.output_tokens`` are cumulative (first
    ``min(3, output)``, then the final total -- consumers must keep the latest, never sum),
    message_stop.

Replies are deterministic:

* text: ``"Echo: <last user text>"``;
* tools: when the request declares function tools and the conversation carries no tool result
  yet, the answer is a call of the FIRST function tool (finish/stop reason ``tool_calls`` /
  ``tool_use``).  Its arguments fill every property of the tool's JSON schema: strings get the
  last user text, integers/numbers 1, booleans true, arrays [], objects {};
* once the conversation carries a tool result (chat ``role: tool`` as last message, Responses
  ``function_call_output`` input item, Anthropic ``tool_result`` block in the last user
  message) the answer is ``"Tool said: <result text>"``.

Token usage is fixed per endpoint (``DEFAULT_USAGE``) and reported verbatim:
``input`` -> prompt_tokens / input_tokens, ``output`` -> completion_tokens / output_tokens,
``cached`` -> prompt_tokens_details.cached_tokens / input_tokens_details.cached_tokens /
cache_read_input_tokens, ``cache_write`` -> cache_creation_input_tokens (and the Responses
``cache_write_tokens``), ``reasoning`` -> completion_tokens_details.reasoning_tokens /
output_tokens_details.reasoning_tokens; OpenAI totals are ``input + output``.

Per-request control headers (all optional):

* ``x-standin-usage: {"input":120,"output":30,"cached":20,"cache_write":5,"reasoning":4}``
  -- any subset; missing keys keep the endpoint default (0 for the detail counters);
* ``x-standin-reply: <text>`` -- replaces the text reply (tool calls are unaffected);
* ``x-standin-tool-args: {json object}`` -- replaces the generated tool-call arguments;
* ``x-standin-gap: 0.5`` -- seconds between SSE events (default: the server's ``sse_gap``);
* ``x-standin-linger: 0.5`` -- seconds an SSE stream stays open after its final event before the
  HTTP message ends (a client that stops reading at the final event hangs up in between);
* ``x-standin-framing: length | chunked`` -- how the answer is framed: with a Content-Length, or
  ``Transfer-Encoding: chunked`` without one (how OpenAI and Anthropic send JSON). Default: JSON with
  a length, streams chunked;
* ``x-standin-encoding: gzip | deflate | br | zstd | identity`` -- Content-Encoding of the answer
  (a stream is compressed event by event, each flushed as it is sent).

``POST /v1beta/models/<model>:generateContent`` / ``:streamGenerateContent`` -- Gemini. JSON
    ``GenerateContentResponse``; the stream is SSE with ``?alt=sse``, else a JSON array sent piece by
    piece (how the Gemini API streams without alt=sse). Each chunk carries one word and running
    ``usageMetadata``; the last one the ``finishReason``. ``cached`` -> cachedContentTokenCount,
    ``reasoning`` -> thoughtsTokenCount (reported beside candidatesTokenCount, as Gemini does).
``POST /api/chat``, ``/api/generate`` -- Ollama's native API: NDJSON stream unless ``"stream": false``,
    final line ``done: true`` with ``prompt_eval_count`` / ``eval_count``.

Malformed bodies or control headers get a 400 in the provider's error format.

Generic endpoints
-----------------
``GET /sse?n=3&gap=0.5`` -- ``data: event i`` for i = 1..n, ``gap`` seconds apart.
``GET /json`` -- a small JSON document (``SAMPLE_DOCUMENT``).
``POST|PUT|PATCH|DELETE|GET /echo`` -- JSON with method, path, headers, ``body`` (text, or
    null if not UTF-8) and ``body_base64``.
``GET /gzip``, ``/deflate``, ``/br``, ``/zstd`` -- ``SAMPLE_DOCUMENT`` compressed with that
    Content-Encoding (deflate is the zlib format HTTP specifies).
``GET /big?mb=50`` -- that many MiB of a repeating pattern, produced piece by piece; add
    ``&chunked=1`` for chunked transfer without Content-Length.
``GET /binary`` -- ``BINARY_BODY`` (all byte values, NULs included), application/octet-stream.
``GET /status/<code>`` -- that status (200..599); 4xx/5xx carry a JSON error body
    ``{"error": {"code", "message"}}``, 204/304 no body, others ``{"status", "reason"}``.
``GET /slow?seconds=2`` -- answers after sleeping.
``GET /drop`` -- closes the connection without answering.
``GET /ws`` -- WebSocket echo of text and binary messages; answers pings and closes cleanly.
Anything else -- 404 JSON.

``tls=False`` serves the same endpoints over plain HTTP.
"""
