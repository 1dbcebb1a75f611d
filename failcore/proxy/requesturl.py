"""The URL a request was sent to, as the tape records it (`pretty_url`), and header lookups by name from
the header list a hook already has: the request path's pieces that the blocking DLP scan (dlpguard)
reads on every request, each worked out once per origin instead of once per request."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from mitmproxy import http
from mitmproxy.net.http import url as urls


def header_value(fields: Sequence[tuple[str, str]], name: str) -> str | None:
    """`headers.get(name)` of mitmproxy's Headers, from the `headers.items(multi=True)` the caller has
    already: every value of that (lower-case, ASCII) name joined by ", ", or None. mitmproxy compares
    the names' bytes lower-cased as ASCII, so a name with other characters never matches."""
    values = [value for key, value in fields if key.isascii() and key.lower() == name]
    return ", ".join(values) if values else None


def request_url(req: http.Request, headers: Sequence[tuple[str, str]] | None = None) -> str:
    """`req.pretty_url` (what the tape records as the request's URL), with its scheme://authority part
    parsed once per (scheme, Host header) instead of on every request. `headers`: the request's
    `headers.items(multi=True)`, when the caller has them."""
    if req.first_line_format == "authority":
        return req.pretty_url
    if headers is None or req.is_http2 or req.is_http3:
        host_header = req.host_header
    else:
        host_header = header_value(headers, "host")
    if not host_header:
        # (pretty_url falls back to `url`: scheme, host, port and path, as below.)
        return _plain_origin(req.scheme, req.host, req.port) + (req.path if req.path != "*" else "")
    # (A byte that is not UTF-8 stays as mitmproxy decodes it: url_hits scans it as sent and recorded.)
    return _origin(req.scheme, host_header) + (req.path if req.path != "*" else "")


@functools.lru_cache(maxsize=1024)
def _origin(scheme: str, host_header: str) -> str:
    host, port = urls.parse_authority(host_header, check=False)
    return urls.unparse(scheme, host, port or urls.default_port(scheme) or 443, "")


@functools.lru_cache(maxsize=1024)
def _plain_origin(scheme: str, host: str, port: int) -> str:
    return urls.unparse(scheme, host, port, "")
