"""Third-party modules whose import differs between Python versions, imported once here.

zstd is the module mitmproxy itself uses: `compression.zstd` from Python 3.14 on, the
`backports.zstd` distribution (a declared dependency) before that.
"""

from __future__ import annotations

try:
    from compression import zstd  # type: ignore[import-not-found]  # Python >= 3.14
except ImportError:  # pragma: no cover - depends on the interpreter
    from backports import zstd  # type: ignore[no-redef]

__all__ = ["zstd"]
