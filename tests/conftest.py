"""Shared fixtures: a real local HTTPS upstream and a real mitmproxy with failcore, in-process.

Fixtures only; what tests import lives in tests/helpers.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from failcore.demo.server import StandIn
from failcore.runner import ProxySettings
from tests.helpers import ProxyThread


@pytest.fixture(scope="session", autouse=True)
def confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CA and signing key for the whole session: generating RSA keys per test is slow. Autouse: no
    test writes into the real failcore home (the compiled DLP database cache lives there too)."""
    path = tmp_path_factory.mktemp("failcore-home")
    os.environ["FAILCORE_HOME"] = str(path)
    return path


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIn]:
    with StandIn(workdir=tmp_path_factory.mktemp("standin")) as server:
        yield server


@pytest.fixture
def policy_file(tmp_path: Path):  # type: ignore[no-untyped-def]
    def write(text: str, name: str = "policy.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture
def start_proxy(confdir: Path, upstream: StandIn, tmp_path: Path):  # type: ignore[no-untyped-def]
    started: list[ProxyThread] = []

    def start(
        policy: Path | None = None,
        *,
        sets: list[str] | None = None,
        upstream_ca: Path | None = None,
        **kw: Any,
    ) -> ProxyThread:
        """`upstream_ca`: trust another upstream's CA instead of the stand-in's."""
        settings = ProxySettings(
            listen_port=0,
            policy=str(policy) if policy else None,
            tape=str(kw.pop("tape", tmp_path / "tape")),
            confdir=confdir,
            sets=[f"ssl_verify_upstream_trusted_ca={upstream_ca or upstream.ca_path}", *(sets or [])],
            **kw,
        )
        proxy = ProxyThread(settings).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()
