"""Data-loss prevention: linear-time secret and PII detection for agent traffic."""

from failcore.dlp.custom import parse_custom_rules
from failcore.dlp.engine import BACKENDS, DlpEngine
from failcore.dlp.gitleaks import GitleaksImport, import_gitleaks
from failcore.dlp.locations import scan_headers, scan_json_body, scan_url, unescape_ascii_json
from failcore.dlp.masking import mask_bytes, mask_preview, mask_text
from failcore.dlp.model import DlpAllowlist, DlpRule, Hit
from failcore.dlp.rules import builtin_rules
from failcore.dlp.stream import StreamScanner
from failcore.dlp.taint import taint_source

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
