"""The serve command's guard: it never starts Ray on a host with a network unless told to.

Runs outside any namespace, so ``ray.init`` is replaced by a function that fails the test: if the
guard let the command through, nothing would start.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("ray.serve")

from examples.stable_diffusion.apps import serve


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def refuse(**kwargs: Any) -> None:
        calls.append(kwargs)
        raise AssertionError("ray.init called")

    monkeypatch.setattr(serve.ray, "init", refuse)
    return calls


def test_refuses_to_start_ray_with_a_network_up(
    no_ray: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(serve, "interfaces_up", lambda: ["lo", "eth0"])
    assert serve.main(["--replicas", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("serve: error: not starting Ray: interfaces eth0 are up, and Ray contacts the network")
    assert "pass --allow-network" in err
    assert "unshare -n -p -f --mount-proc" in err
    assert no_ray == []
    with pytest.raises(serve.NetworkRefusedError):
        serve.start_ray("ray-head:6379")  # joining a cluster is as networked as starting one
    assert no_ray == []


def test_allow_network_and_loopback_reach_ray_init(
    no_ray: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serve, "interfaces_up", lambda: ["lo", "eth0"])
    with pytest.raises(AssertionError, match=r"ray\.init called"):
        serve.start_ray("ray-head:6379", allow_network=True)
    assert no_ray[-1]["address"] == "ray-head:6379"
    assert "_node_ip_address" not in no_ray[-1]
    monkeypatch.setattr(serve, "interfaces_up", lambda: ["lo"])
    with pytest.raises(AssertionError, match=r"ray\.init called"):
        serve.start_ray(num_cpus=2)
    # On loopback only, Ray is told its address instead of probing for one.
    assert no_ray[-1]["_node_ip_address"] == "127.0.0.1"
    assert no_ray[-1]["include_dashboard"] is False
    assert no_ray[-1]["runtime_env"]["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "0"


def test_bad_counts_are_refused(no_ray: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    assert serve.main(["--replicas", "0"]) == 2
    assert capsys.readouterr().err == "serve: error: --replicas must be at least 1, got 0\n"
    assert no_ray == []
