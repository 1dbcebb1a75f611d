"""`failcore addon-path`: the path of failcore's mitmproxy addon script, for mitmdump -s."""

from __future__ import annotations

import argparse


def cmd_addon_path(args: argparse.Namespace) -> int:
    from failcore.shipped import addon_path

    # Plain print: the output is meant for $(...), with no styling or wrapping.
    print(addon_path())
    return 0
