"""Data-loss prevention: linear-time secret and PII detection for agent traffic.

`from failcore.dlp import X` works for every public name; names are resolved lazily (PEP 562), so
importing one submodule (the rule model for a policy, masking for the tape) does not load the engine,
its decoders and the streaming scanner."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE: dict[str, str] = {
    "custom": "parse_custom_rules",
    "engine": "BACKENDS DlpEngine",
    "gitleaks": "GitleaksImport import_gitleaks",
    "locations": "scan_headers scan_json_body scan_url unescape_ascii_json",
    "masking": "mask_bytes mask_preview mask_text",
    "model": "DlpAllowlist DlpRule Hit",
    "rules": "builtin_rules",
    "stream": "StreamScanner",
    "taint": "taint_source",
}
_MODULE_OF: dict[str, str] = {name: module for module, names in _WHERE.items() for name in names.split()}

if TYPE_CHECKING:
    from failcore.dlp.custom import parse_custom_rules
    from failcore.dlp.engine import BACKENDS, DlpEngine
    from failcore.dlp.gitleaks import GitleaksImport, import_gitleaks
    from failcore.dlp.locations import scan_headers, scan_json_body, scan_url, unescape_ascii_json
    from failcore.dlp.masking import mask_bytes, mask_preview, mask_text
    from failcore.dlp.model import DlpAllowlist, DlpRule, Hit
    from failcore.dlp.rules import builtin_rules
    from failcore.dlp.stream import StreamScanner
    from failcore.dlp.taint import taint_source


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULE_OF})


__all__ = [
    "BACKENDS",
    "DlpAllowlist",
    "DlpEngine",
    "DlpRule",
    "GitleaksImport",
    "Hit",
    "StreamScanner",
    "builtin_rules",
    "import_gitleaks",
    "mask_bytes",
    "mask_preview",
    "mask_text",
    "parse_custom_rules",
    "scan_headers",
    "scan_json_body",
    "scan_url",
    "taint_source",
    "unescape_ascii_json",
]
