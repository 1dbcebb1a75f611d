"""Files that ship with failcore: the policies and the mitmproxy addon script.

In a checkout they are the repository's top-level `policies/` and `addons/`; an installed wheel holds
the same files as `failcore/policies/` and `failcore/addons/` (pyproject.toml maps them), so every
command finds them the same way from any working directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

_PACKAGE: Final = Path(__file__).resolve().parent
BUNDLED_GITLEAKS: Final = _PACKAGE / "data" / "gitleaks" / "gitleaks.toml"
ADDON_NAME: Final = "failcore_addon.py"


def _shipped_dir(name: str) -> Path:
    installed = _PACKAGE / name
    return installed if installed.is_dir() else _PACKAGE.parent / name


def policies_dir() -> Path:
    return _shipped_dir("policies")


def addon_path() -> Path:
    """The script for `mitmdump -s` / `mitmweb -s`."""
    return _shipped_dir("addons") / ADDON_NAME


def default_policy_path() -> Path:
    return policies_dir() / "default.yaml"


def shipped_policy_names() -> list[str]:
    """Names `--policy` accepts without a path: `strict`, `examples/dlp`, …"""
    root = policies_dir()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def resolve_policy(value: str | os.PathLike[str]) -> Path:
    """A policy given as a path, or as the name of a shipped policy (`strict`, `examples/dlp`,
    `dlp` for short). A path that exists always wins; an unknown name is returned as the path it
    spells, so that loading it reports the file that is missing."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    text = os.fspath(value)
    name = text.removesuffix(".yaml").removesuffix(".yml")
    if not name or path.is_absolute() or name.startswith("."):
        return path
    root = policies_dir()
    for candidate in (root / f"{name}.yaml", root / "examples" / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    return path
