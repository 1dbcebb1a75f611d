"""`failcore ca`: show (and on first use create) failcore's CA and the environment a client needs."""

from __future__ import annotations

import argparse
from pathlib import Path

from failcore.cli.common import console, print_json
from failcore.cli.proxy import env_lines
from failcore.textsafe import safe_text


def cmd_ca(args: argparse.Namespace) -> int:
    from failcore.ca import ensure_ca

    info = ensure_ca(Path(args.confdir).expanduser() if args.confdir else None)
    proxy_url = f"http://127.0.0.1:{args.port}"
    data = {
        "confdir": str(info.confdir),
        "cert": str(info.cert_path),
        "bundle": str(info.bundle_path),
        "sha256": info.sha256,
        "env": info.env(proxy_url),
    }
    if args.json:
        print_json(data)
        return 0
    console.print(safe_text(f"CA certificate  {info.cert_path}"))
    console.print(safe_text(f"SHA-256         {info.sha256}"))
    console.print(safe_text(f"trust bundle    {info.bundle_path} (certifi + failcore CA)"))
    console.print(f"Environment for a client of a proxy on {proxy_url}:")
    for line in env_lines(data["env"]):
        console.print(safe_text("  " + line))
    return 0
