"""`failcore sample`: the offline demo (a local LLM stand-in, the proxy and an agent)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path


def cmd_sample(args: argparse.Namespace) -> int:
    from failcore.sample import run_sample

    return asyncio.run(
        run_sample(json_output=args.json, tape=Path(args.tape).expanduser() if args.tape else None)
    )
