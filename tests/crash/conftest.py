"""Crash tests: a private PostgreSQL cluster per test (never the shared server), and the
``crash`` marker's tests left out of a run whose ``-m`` does not name them (``make test``):
they take over a minute and are run by ``make crash`` (``pytest -m crash tests/crash``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.crash.cluster import Cluster

SCRATCH = Path("/tmp/crash-tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "crash" in config.getoption("markexpr"):
        return  # -m names them: it selects or excludes them itself
    crash = [item for item in items if item.get_closest_marker("crash")]
    if crash:
        config.hook.pytest_deselected(items=crash)
        items[:] = [item for item in items if not item.get_closest_marker("crash")]


@pytest.fixture
def run_dir() -> Path:
    directory = SCRATCH / f"run-{uuid.uuid4().hex[:10]}"
    directory.mkdir(parents=True)
    return directory


@pytest.fixture
def cluster(run_dir: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    cluster = Cluster(run_dir / "pg")
    cluster.init()
    cluster.start()
    try:
        yield cluster
    finally:
        failed = getattr(request.node, "crash_failed", True)
        if failed:
            # Keep the data and logs to look at; stop the server all the same.
            if cluster.running():
                cluster.stop("fast")
        else:
            cluster.destroy()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if call.when == "call":
        item.crash_failed = report.failed  # type: ignore[attr-defined]
    return report
