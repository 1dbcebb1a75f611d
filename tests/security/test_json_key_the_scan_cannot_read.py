"""Attack: a JSON body with a key failcore's locating of a hit could not read, and a secret after it.

A DLP hit in a JSON body is located by the JSON pointer of the string that holds it
(failcore.dlp.locations); each key on the way was read with `json.loads`. A key Python's parser refuses
(`"a\\q"`: an escape JSON does not have; a raw control character; a lone `\\ud800`, read but not
written to the tape as UTF-8) raised out of the DLP guard, and
every hook fails open: the request went out with its secret, past a BLOCK, with an internal error
recorded. The upstream an agent sends to need not be strict (a server of the agent's reads what it
likes): the secret must not leave whatever the body's grammar. So must a UTF-16 body, whose keys
`json.loads` read as UTF-16 pieces.

Through the real proxy: what reached the logging upstream and what the tape holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.security.helpers import AWS_KEY_ID, DLP_BLOCK, assert_refused, plain_request, send_raw, tape_bytes
from tests.security.upstream import LoggingUpstream

BODIES = {
    "invalid-escape": b'{"a\\q": 1, "key": "' + AWS_KEY_ID.encode() + b'"}',
    "control-character": b'{"\x00abc": 1, "key": "' + AWS_KEY_ID.encode() + b'"}',
    "lone-quote-escape": b'{"\\u12": 1, "key": "' + AWS_KEY_ID.encode() + b'"}',
    "lone-surrogate-key": b'{"\\ud800": {"key": "' + AWS_KEY_ID.encode() + b'"}}',
    "utf-16-without-bom": ('{"key": "' + AWS_KEY_ID + '"}').encode("utf-16-le"),
}


@pytest.mark.parametrize("name", sorted(BODIES))
def test_the_secret_after_the_key_is_refused(
    start_proxy, policy_file, plain_logging_upstream: LoggingUpstream, tmp_path: Path, name: str
) -> None:
    headers = "Content-Type: application/json\r\n"
    request = plain_request(plain_logging_upstream, "POST", "/upload", headers=headers, body=BODIES[name])
    proxy = start_proxy(policy_file(DLP_BLOCK))
    answer = send_raw(proxy.port, request)
    proxy.flush()
    event = assert_refused(answer, plain_logging_upstream, tmp_path / "tape")
    assert (event["decision"], event["rule"]) == ("BLOCK", "dlp:aws-access-key-id")
    assert AWS_KEY_ID.encode() not in tape_bytes(tmp_path / "tape")
