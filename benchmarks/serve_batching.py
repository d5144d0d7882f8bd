"""Ray Serve deployment: images per second for one caller against N concurrent callers.

Deploys ``examples.stable_diffusion.apps.serve`` on the tiny random-weight SD model (the one
docs/benchmarks.md measured, not the apps' built-in digits model; or ``--model``), sends the same
number of ``POST /txt2img`` requests (different prompts and seeds, one size and step count) from
one caller, one after the other, then from N callers at once, and prints images per second for
each, the mean number of requests that shared a UNet batch (``X-Batch-Size``), and the ratio.
Then the same N callers against a deployment with batching off (``max_batch_size=1``), to tell
what batching adds from what concurrency alone gives.

Ray starts only inside a private loopback-only network namespace: outside one, the script
re-executes itself under ``unshare -n -p -f --mount-proc`` (root).

Run: ``python benchmarks/serve_batching.py [--callers 8] [--requests 32] [--replicas 1] [--steps 20]``
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from examples.stable_diffusion.apps.network import OFFLINE_ENV, loopback_only

ROOT = Path(__file__).resolve().parents[1]


def _reexec_in_namespace() -> int:
    inner = "ip link set lo up && exec " + shlex.join([sys.executable, *sys.argv])
    env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(ROOT), "NO_PROXY": "127.0.0.1,localhost"}
    return subprocess.run(
        ["unshare", "-n", "-p", "-f", "--mount-proc", "sh", "-c", inner], env=env, check=False
    ).returncode


def _post(url: str, body: dict[str, object]) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with opener.open(request, timeout=600) as response:
        response.read()
        return int(response.headers["X-Batch-Size"])


def _measure(url: str, callers: int, requests: int, steps: int, size: int) -> tuple[float, float]:
    """Images per second and mean batch size for ``requests`` requests from ``callers`` callers."""
    bodies = [
        {"prompt": f"a cube number {i}", "seed": i, "steps": steps, "width": size, "height": size}
        for i in range(requests)
    ]
    start = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        sizes = list(pool.map(lambda b: _post(f"{url}/txt2img", b), bodies))
    seconds = time.perf_counter() - start
    return requests / seconds, statistics.mean(sizes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--callers", type=int, default=8, help="concurrent callers (N)")
    parser.add_argument("--requests", type=int, default=32, help="requests per measurement")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-wait-s", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=3, help="median over this many rounds")
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args()
    if not loopback_only():
        return _reexec_in_namespace()

    from ray import serve

    from examples.stable_diffusion.apps.serve import deploy, start_ray
    from examples.stable_diffusion.build.cache import ensure_tiny_model

    if args.model is None:
        args.model = ensure_tiny_model()  # built once, before the replicas look for it
    rows: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="ray-") as temp_dir:
        start_ray(num_cpus=max(os.cpu_count() or 1, args.replicas), temp_dir=temp_dir)
        deployed, url = 0, ""
        for label, max_batch, callers in (
            ("1 caller, batching on", args.callers, 1),
            (f"{args.callers} callers, batching on", args.callers, args.callers),
            (f"{args.callers} callers, batching off", 1, args.callers),
        ):
            if max_batch != deployed:
                url = deploy(
                    args.model,
                    replicas=args.replicas,
                    device="cpu",
                    port=8000,
                    max_batch_size=max_batch,
                    batch_wait_s=args.batch_wait_s,
                )
                deployed = max_batch
            _measure(url, callers, min(args.requests, 2 * callers), args.steps, args.size)  # warm
            runs = [_measure(url, callers, args.requests, args.steps, args.size) for _ in range(args.rounds)]
            rows.append((label, statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)))
        serve.shutdown()  # type: ignore[no-untyped-call]

    print(
        f"\n{args.replicas} CPU replica(s), {args.size}x{args.size}, {args.steps} steps, {args.requests} requests, "
        f"batch wait {args.batch_wait_s * 1000:.0f} ms, median of {args.rounds}"
    )
    print(f"{'':32} {'images/s':>9} {'mean batch':>11} {'vs 1 caller':>12}")
    for label, rate, batch in rows:
        print(f"{label:32} {rate:9.1f} {batch:11.2f} {rate / rows[0][1]:11.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
