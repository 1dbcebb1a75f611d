"""StreamDlp: strict stream DLP (`dlp.stream: strict`, enforce). A response stream is scanned chunk by
chunk with a sliding window, as it is on the wire and as the client will decode it, and cut on a BLOCK
hit before the chunk that completes the secret is forwarded (failcore.proxy.cutoff does the cutting).
"""

from __future__ import annotations

import logging

from failcore.dlp.scanner import DlpScanner
from failcore.evidence import DECODE_ERRORS, MAX_DECODED_BYTES, is_encoded
from failcore.evidence.pastcap import StreamDecoder
from failcore.proxy.cutoff import CutVerdict

logger = logging.getLogger("failcore")


class StreamDlp:
    """Strict stream mode: every chunk is scanned together with the bytes before it, so a secret split
    across chunks is caught by the chunk that completes it, which is then never forwarded.

    An encoded stream (Content-Encoding gzip, br, zstd, deflate, stacked) is scanned as it is on the
    wire (what a client that does not decode sees, a gzip header's file name included) and as the client
    will decode it: each chunk is decoded as it passes (a decoder emits what the bytes so far decode
    to, as the client's does), and a chunk whose decoded bytes complete a secret is dropped whole. One
    that cannot be decoded, or decodes past MAX_DECODED_BYTES, cannot be scanned decoded:
    `dlp.unscannable: BLOCK` cuts it there, otherwise only its wire bytes are scanned from there on, and
    why is added to `warnings` (the flow's, so the exchange's event on the tape says so)."""

    def __init__(
        self,
        scanner: DlpScanner,
        window: int = 4096,
        encoding: str | None = None,
        warnings: list[dict[str, str]] | None = None,
    ) -> None:
        self.scanner = scanner
        self.warnings = warnings if warnings is not None else []
        self.window = window
        self.tail = b""  # the last `window` wire bytes
        self.decoded_tail = b""
        self.decoded = 0
        # The decoder of an encoded stream (None: not encoded, or no longer decoded).
        self.decoder: StreamDecoder | None = None
        # Why an encoded stream cannot be scanned decoded (reported at its first chunk).
        self.gave_up: str | None = None
        if is_encoded(encoding):
            try:
                self.decoder = StreamDecoder(encoding)
            except ValueError as e:
                self.gave_up = str(e)

    def __call__(self, chunk: bytes) -> CutVerdict | None:
        if not self.scanner.enforce:
            return None
        if self.decoder is not None or self.gave_up is not None:
            verdict = self._scan_decoded(chunk)
            if verdict is not None:
                return verdict
        buffer = self.tail + chunk
        self.tail = buffer[-self.window :]
        return self._verdict(buffer, len(buffer) - len(chunk), "response stream")

    def _scan_decoded(self, chunk: bytes) -> CutVerdict | None:
        if self.gave_up is None and self.decoder is not None:
            try:
                for piece in self.decoder.feed(chunk) if chunk else self.decoder.finish():
                    self.decoded += len(piece)
                    if self.decoded > MAX_DECODED_BYTES:
                        self.gave_up = f"it decodes to more than {MAX_DECODED_BYTES} bytes"
                        break
                    buffer = self.decoded_tail + piece
                    self.decoded_tail = buffer[-self.window :]
                    verdict = self._verdict(buffer, len(buffer) - len(piece), "decoded response stream")
                    if verdict is not None:
                        return CutVerdict(verdict.reason, verdict.detail, keep=0)
            except DECODE_ERRORS as e:
                if not chunk:
                    return None  # truncated at its end: what decoded was scanned, nothing follows
                self.gave_up = f"it does not decode: {type(e).__name__}"
        if self.gave_up is None:
            return None
        self.decoder = None
        why = f"the encoded response stream cannot be scanned decoded: {self.gave_up}"
        self.gave_up = None
        if self.scanner.settings.unscannable == "BLOCK":
            return CutVerdict("dlp", f"{why} (dlp.unscannable: BLOCK)", keep=0)
        logger.info("failcore: %s; only its wire bytes are scanned from there on (dlp.unscannable)", why)
        self.warnings.append(
            {"reason": "dlp_unscannable", "message": f"{why}; only its wire bytes were scanned from there on"}
        )
        return None

    def _verdict(self, buffer: bytes, fresh_from: int, where: str) -> CutVerdict | None:
        for hit in self.scanner.engine.scan(buffer):
            if hit.end > fresh_from and self.scanner.action(hit) == "BLOCK":
                return CutVerdict(
                    "dlp",
                    f"{hit.rule_id} ({hit.severity}) in the {where}: {hit.preview}",
                    keep=max(0, hit.start - fresh_from),
                )
        return None
