"""pytest plugin for the namespaced child run (see ``tests/examples/netns.py``): writes each test's reports as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

_phases: dict[str, list[dict[str, Any]]] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--netns-report", default=None, help="write each test's phase reports to this JSON file")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    skip = None
    if report.skipped and isinstance(report.longrepr, tuple):
        path, line, reason = report.longrepr
        skip = [str(path), line, reason]
    _phases.setdefault(report.nodeid, []).append(
        {
            "when": report.when,
            "outcome": report.outcome,
            "longrepr": None if report.passed else report.longreprtext,
            "skip": skip,
            "duration": report.duration,
            # Captured output helps only when something went wrong.
            "sections": [list(section) for section in report.sections] if report.failed else [],
        }
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("--netns-report")
    if path:
        Path(path).write_text(json.dumps(_phases))
