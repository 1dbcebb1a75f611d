"""Text from the wire that is not valid UTF-8.

mitmproxy decodes a request's path, host and header fields with `surrogateescape`: a non-UTF-8 byte
(`/v1/caf\\xe9`) becomes a lone surrogate, which `str.encode("utf-8")` and orjson refuse. A DLP scan
that raised on it failed open (the request went out unscanned) and the exchange's event could not be
written at all. `utf8_bytes` gives the bytes such a text stands for (each escaped byte as itself), for
scanning; `wire_text` a valid text to record (each such byte written `\\xNN`).
"""

from __future__ import annotations


def utf8_bytes(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")  # a lone surrogate from elsewhere (a JSON \ud800)


def wire_text(text: str) -> str:
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return utf8_bytes(text).decode("utf-8", "backslashreplace")
