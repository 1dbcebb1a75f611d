"""`failcore policy check|list`: validate policy files; list the shipped ones."""

from __future__ import annotations

import argparse

from failcore.cli.common import console, print_json
from failcore.textsafe import safe_text


def cmd_policy_check(args: argparse.Namespace) -> int:
    from failcore.policy.load import check_policy
    from failcore.shipped import resolve_policy

    results = {str(p): [str(x) for x in check_policy(resolve_policy(p))] for p in args.files}
    if args.json:
        print_json({"ok": not any(results.values()), "files": results})
    else:
        for path, problems in results.items():
            if problems:
                for problem in problems:
                    # One problem per line even when piped (80 columns): `file:line:col: message` is grepped.
                    console.print(safe_text(problem, "red"), soft_wrap=True)
            else:
                console.print(safe_text(f"{path}: OK", "green"), soft_wrap=True)
    return 1 if any(results.values()) else 0


def cmd_policy_list(args: argparse.Namespace) -> int:
    from failcore.shipped import policies_dir, shipped_policy_names

    names = shipped_policy_names()
    if args.json:
        print_json({"dir": str(policies_dir()), "policies": names})
        return 0
    console.print(safe_text(f"shipped policies (in {policies_dir()}); use --policy NAME:"), soft_wrap=True)
    for name in names:
        console.print(safe_text(f"  {name}"), soft_wrap=True)
    return 0
