"""mitmproxy entry point: `mitmdump -s addons/failcore_addon.py [--set failcore_policy=…]`.

Works from a checkout without installing failcore (the repository root is put on sys.path), and
loads the same way in mitmproxy and mitmweb.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import failcore  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from failcore.proxy import make_addons

addons = make_addons()
