"""Attack: a secret as UTF-16 text inside base64 (UTF-7's encoded words, PowerShell's -EncodedCommand).

failcore decodes every base64 run and scans what is text in it; UTF-16 text is half NUL bytes, so none
of it was text to the scan and no rule matched. Two readers decode such a run for what it is:

* UTF-7 writes characters as `+` base64 of their UTF-16 `-` (RFC 2152); Express's JSON reader
  (body-parser 1.20, checked with express 4: `{"k":"…"}` came back decoded) takes a JSON body with
  `Content-Type: application/json; charset=utf-7`, so `"+AEEASwBJAEE…"` is the key to it;
* PowerShell's `-EncodedCommand` is base64 of a UTF-16LE command line: a request body carrying one (a
  remote-execution API, a CI job) carries the key in it.

Such a decoded run's UTF-16 units are now also scanned narrowed, in either byte order. Through the
real proxy: what reached the logging upstream and what the tape holds."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tests.security.coding_helpers import recoverable_from_tape
from tests.security.helpers import (
    AWS_KEY_ID,
    DLP_BLOCK,
    assert_refused,
    plain_request,
    send_raw,
)
from tests.security.upstream import LoggingUpstream


def _utf7_word(text: str) -> str:
    """`text` as one UTF-7 encoded word (RFC 2152: `+`, modified base64 of UTF-16BE, `-`)."""
    return "+" + base64.b64encode(text.encode("utf-16-be")).decode().rstrip("=") + "-"


UTF7_BODY = ('{"note": "deploy", "key": "' + _utf7_word(AWS_KEY_ID) + '"}').encode()
COMMAND = base64.b64encode(f"aws configure set aws_access_key_id {AWS_KEY_ID}".encode("utf-16-le")).decode()
POWERSHELL_BODY = json.dumps({"shell": "powershell", "args": ["-EncodedCommand", COMMAND]}).encode()
CASES = {
    "utf-7-json": (UTF7_BODY, "application/json; charset=utf-7"),
    "powershell-encoded-command": (POWERSHELL_BODY, "application/json"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_secret_in_utf16_inside_base64_is_refused(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path, name: str
) -> None:
    body, content_type = CASES[name]
    assert AWS_KEY_ID.encode() not in body
    if name == "utf-7-json":
        assert json.loads(body.decode("utf-7"))["key"] == AWS_KEY_ID, "what a UTF-7 reader makes of it"
    proxy = start_proxy(policy_file(DLP_BLOCK))
    request = plain_request(
        plain_logging_upstream, "POST", "/run", headers=f"Content-Type: {content_type}\r\n", body=body
    )
    answer = send_raw(proxy.port, request)
    proxy.flush()
    event = assert_refused(answer, plain_logging_upstream, tmp_path / "tape")
    assert (event["decision"], event["rule"]) == ("BLOCK", "dlp:aws-access-key-id")
    assert not recoverable_from_tape(tmp_path / "tape", AWS_KEY_ID.encode("utf-16-le"))
    assert not recoverable_from_tape(tmp_path / "tape", AWS_KEY_ID.encode("utf-16-be"))
