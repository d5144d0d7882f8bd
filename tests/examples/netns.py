"""Run the tests marked ``loopback`` inside a private loopback-only network namespace.

Ray opens connections to public addresses when it starts, and no test may reach beyond
loopback. So tests that start servers (Ray, Gradio, the browser) run only where no interface
but ``lo`` is up. Outside such a namespace, the first of them re-executes all of them in one
child pytest under::

    unshare -n -p -f --mount-proc sh -c 'ip link set lo up && exec python -m pytest ...'

(a new network namespace with only loopback, and a PID namespace so that no process it starts
outlives it), and each test reports its result from there: a failure inside fails it outside,
with the inner traceback. Where ``unshare`` is not allowed, they skip and say why.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from examples.stable_diffusion.apps.network import OFFLINE_ENV, interfaces_up, loopback_only

__all__ = ["MARKER", "loopback_only", "report_from_namespace", "require_loopback_only"]

MARKER = "loopback"
_RESULTS = pytest.StashKey[dict[str, Any]]()
_TIMEOUT_S = 900
# Proxies that lead nowhere: a library that ignores the namespace and tries a proxy fails fast.
_NO_PROXY_ENV = {
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost,::1",
    "no_proxy": "127.0.0.1,localhost,::1",
}


def require_loopback_only() -> None:
    """Fail unless only loopback is up; every fixture that starts a server calls it first."""
    up = [name for name in interfaces_up() if name != "lo"]
    if up:
        pytest.fail(f"refusing to start a server: interfaces {', '.join(up)} are up; run inside the namespace")


def _unshare_problem() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs `unshare` (util-linux) and `ip` (iproute2) to make a loopback-only network namespace"
    probe = subprocess.run(
        ["unshare", "-n", "-p", "-f", "--mount-proc", "sh", "-c", "ip link set lo up"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"cannot make a loopback-only network namespace (unshare -n -p: {probe.stderr.strip()}); run as root"
    return None


def _run_inside(session: pytest.Session) -> dict[str, Any]:
    """Run every ``loopback`` item of the session in one child pytest inside the namespace."""
    items = [item for item in session.items if item.get_closest_marker(MARKER) is not None]
    problem = _unshare_problem()
    if problem is not None:
        return {"skip": problem}
    workdir = Path(tempfile.mkdtemp(prefix="ortbind-loopback-"))
    report = workdir / "report.json"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "tests.examples.netns_report",
        f"--netns-report={report}",
        "-p",
        "no:cacheprovider",
        f"--basetemp={workdir / 'tmp'}",
        "-q",
        *[item.nodeid for item in items],
    ]
    root = session.config.rootpath
    env = {**os.environ, **OFFLINE_ENV, **_NO_PROXY_ENV, "PYTHONPATH": str(root)}
    inner = "ip link set lo up && exec " + shlex.join(command)
    try:
        proc = subprocess.run(
            ["unshare", "-n", "-p", "-f", "--mount-proc", "sh", "-c", inner],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S,
            check=False,
        )
        output = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        output = f"timed out after {_TIMEOUT_S} s\n{exc.stdout or ''}{exc.stderr or ''}"
    results: dict[str, Any] = json.loads(report.read_text()) if report.is_file() else {}
    shutil.rmtree(workdir, ignore_errors=True)
    return {"reports": results, "output": output}


def report_from_namespace(item: pytest.Item) -> bool:
    """Log ``item``'s result from the namespaced run (starting that run on first use)."""
    session = item.session
    if _RESULTS not in session.stash:
        session.stash[_RESULTS] = _run_inside(session)
    results = session.stash[_RESULTS]
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    if "skip" in results:
        path, line, _ = item.location
        reports = [_report(item, "setup", "skipped", (str(path), (line or 0) + 1, f"Skipped: {results['skip']}"))]
    else:
        phases = results["reports"].get(item.nodeid)
        if phases is None:
            text = "the namespaced run did not report this test; its output:\n" + results["output"][-20000:]
            reports = [_report(item, "setup", "failed", text)]
        else:
            reports = [_report(item, p["when"], p["outcome"], _longrepr(p), p["duration"]) for p in phases]
            for report, phase in zip(reports, phases, strict=True):
                report.sections.extend((title, text) for title, text in phase["sections"])
    for report in reports:
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def _longrepr(phase: dict[str, Any]) -> Any:
    if phase["outcome"] == "skipped" and phase["skip"] is not None:
        return tuple(phase["skip"])
    return phase["longrepr"]


def _report(item: pytest.Item, when: str, outcome: str, longrepr: Any, duration: float = 0.0) -> pytest.TestReport:
    return pytest.TestReport(
        nodeid=item.nodeid,
        location=item.location,
        keywords=dict.fromkeys(item.keywords, 1),
        outcome=outcome,
        longrepr=longrepr,
        when=when,
        duration=duration,
    )
