"""Evidence: what the tape records of an exchange, built from plain data, never inside a proxy hook.

- `body`: bodies decoded within limits, capped and hashed;
- `redact`: credentials as salted fingerprints, echoed copies masked;
- `dlp`: DLP hits masked in a built event, with the `dlp` block that lists them;
- `pastcap`: DLP for the part of a streamed body past what the tape keeps;
- `exchange`: the snapshot of an exchange (taken by the recorder) and the events built from it.

The one-way path: the proxy's hooks take a snapshot (failcore.proxy.recorder), these modules turn it
into an event, the tape writer appends it. Nothing here imports failcore.proxy.
"""

from failcore.evidence.body import (
    DECODE_ERRORS,
    DECODE_LIMIT,
    DECODED_CODINGS,
    MAX_DECODED_BYTES,
    MAX_ENCODINGS,
    ON_LOOP_DECODE_LIMIT,
    DecodedBody,
    aws_streaming,
    body_encoding,
    body_evidence,
    content_encodings,
    decode_body,
    decoded_content,
    decoded_size_at_most,
    decoded_steps,
    header_value,
    is_encoded,
    looks_textual,
    read_off_loop,
    transfer_codings,
)
from failcore.evidence.redact import (
    CREDENTIAL_HEADERS,
    HOST_HEADERS,
    credential_values,
    fingerprint,
    mask_echoed_credentials,
    redact_headers,
)

__all__ = [
    "CREDENTIAL_HEADERS",
    "DECODED_CODINGS",
    "DECODE_ERRORS",
    "DECODE_LIMIT",
    "HOST_HEADERS",
    "MAX_DECODED_BYTES",
    "MAX_ENCODINGS",
    "ON_LOOP_DECODE_LIMIT",
    "DecodedBody",
    "aws_streaming",
    "body_encoding",
    "body_evidence",
    "content_encodings",
    "credential_values",
    "decode_body",
    "decoded_content",
    "decoded_size_at_most",
    "decoded_steps",
    "fingerprint",
    "header_value",
    "is_encoded",
    "looks_textual",
    "mask_echoed_credentials",
    "read_off_loop",
    "redact_headers",
    "transfer_codings",
]
