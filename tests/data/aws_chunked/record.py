"""Records what botocore (the real AWS client) sends for S3 PutObject over HTTPS: aws-chunked with a
trailing checksum. Not run by the tests (botocore is no dependency of failcore's); its output is
boto3_put_object.json beside it.

Run in a throwaway venv with botocore installed (botocore 1.44.8 made the committed file), with a
self-signed cert.pem/key.pem for 127.0.0.1 in the working directory (openssl req -x509 -newkey rsa:2048
-nodes -keyout key.pem -out cert.pem -days 1 -subj /CN=127.0.0.1):  python record.py OUT.json
A local TLS server on 127.0.0.1 (verify=False) captures each request whole; credentials are dummies."""

import base64
import gzip
import io
import json
import socket
import ssl
import sys
import threading

import botocore.session
from botocore.config import Config

captured = []


def serve(sock, ctx):
    while True:
        conn, _ = sock.accept()
        with ctx.wrap_socket(conn, server_side=True) as s:
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(65536)
            head, _, rest = data.partition(b"\r\n\r\n")
            if b"100-continue" in head.lower():
                s.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            # The body is HTTP/1.1 chunked (Transfer-Encoding) around the aws-chunked body: read to its end.
            while not rest.endswith(b"0\r\n\r\n"):
                more = s.recv(65536)
                if not more:
                    break
                rest += more
            captured.append((head, rest))
            s.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 0\r\nETag: "x"\r\nConnection: close\r\n\r\n')


def unchunk(body):  # the HTTP/1.1 chunked transfer coding, undone
    out, pos = b"", 0
    while True:
        end = body.index(b"\r\n", pos)
        size = int(body[pos:end].split(b";")[0], 16)
        if size == 0:
            return out
        out += body[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2


class ShortReads(io.BytesIO):
    """A body whose reads return at most `n` bytes: botocore makes one aws-chunked chunk a read."""

    def __init__(self, data, n):
        super().__init__(data)
        self.n = n

    def read(self, size=-1):
        return super().read(self.n if size is None or size < 0 else min(size, self.n))


ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("cert.pem", "key.pem")
sock = socket.create_server(("127.0.0.1", 0))
port = sock.getsockname()[1]
threading.Thread(target=serve, args=(sock, ctx), daemon=True).start()
session = botocore.session.get_session()
client = session.create_client(
    "s3",
    region_name="us-east-1",
    endpoint_url=f"https://127.0.0.1:{port}",
    verify=False,
    aws_access_key_id="test-access-key",
    aws_secret_access_key="test-secret-key",
    config=Config(s3={"addressing_style": "path"}),
)
# The placeholder has the length of an AWS key id: a test puts its secret in its place (same framing).
PLACEHOLDER = b"@" * 20
DOC = b'{"note": "deploy", "key": "' + PLACEHOLDER + b'", "pad": "' + b"lorem ipsum " * 20 + b'"}'
cases = [
    ("aws-chunked, one chunk a read of 16 bytes", dict(Body=ShortReads(DOC, 16))),
    (
        "gzip,aws-chunked: the caller's ContentEncoding=gzip",
        dict(Body=gzip.compress(DOC, mtime=0), ContentEncoding="gzip"),
    ),
]
out = {
    "produced_by": f"botocore {botocore.__version__} S3 PutObject over HTTPS"
    " (tests/data/aws_chunked/record.py)",
    "placeholder": PLACEHOLDER.decode(),
    "document": DOC.decode(),
    "requests": [],
}
for name, kw in cases:
    client.put_object(Bucket="bucket", Key="key", **kw)
    head, rest = captured[-1]
    lines = head.decode().split("\r\n")
    keep = (
        "content-encoding",
        "transfer-encoding",
        "x-amz-decoded-content-length",
        "x-amz-trailer",
        "x-amz-content-sha256",
        "content-type",
    )
    headers = [line.split(": ", 1) for line in lines[1:] if line.split(":", 1)[0].lower() in keep]
    out["requests"].append(
        {
            "name": name,
            "request_line": lines[0],
            "headers": headers,
            "body_b64": base64.b64encode(unchunk(rest)).decode(),
        }
    )
with open(sys.argv[1], "w") as f:
    json.dump(out, f, indent=1)
