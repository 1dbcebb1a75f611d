"""Starting one of failcore's own worker children (`python -P -m failcore.…`): the DLP evidence worker,
the past-cap scan process, `report`'s count workers.

The child must run this very failcore, whatever directory failcore was started from. `python -m`
puts the working directory first on `sys.path`, ahead of PYTHONPATH and the standard library, so a
`failcore/` package (or a `struct.py`) in a directory an agent can write to would run in the child
and answer for it: forge masked evidence, or the counts a report prints as verified. `-P` leaves the
working directory off `sys.path`; this failcore's own root comes first on PYTHONPATH (installed or
not: `mitmdump -s addons/…` from a checkout), and the child starts in that root.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# The directory holding the `failcore` package this process imported.
ROOT = str(Path(__file__).resolve().parent.parent)


def worker_command(module: str) -> list[str]:
    return [sys.executable, "-P", "-m", module]


def worker_env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path)


def start_worker(
    module: str, *, pass_fds: tuple[int, ...] = (), own_session: bool = False
) -> subprocess.Popen[bytes]:
    """`python -P -m module` talking over its stdin and stdout (stderr discarded), with this failcore
    first on its path and as its working directory, and no descriptor of ours but `pass_fds`.
    `own_session`: a Ctrl-C or signal to our process group does not reach it (it ends when its stdin
    closes). Bytecode caches as this interpreter has them: the child imports the same modules."""
    return subprocess.Popen(
        worker_command(module),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=worker_env(),
        cwd=ROOT,
        close_fds=True,
        pass_fds=pass_fds,
        start_new_session=own_session,
    )
