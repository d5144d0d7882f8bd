"""Serve the Stable Diffusion example over HTTP on Ray Serve: replicas across GPUs and machines.

    python -m examples.stable_diffusion.serve [--replicas N] [--model DIR] [--device cuda] [--port 8000]
    curl -X POST http://127.0.0.1:8000/txt2img -d '{"prompt": "a lighthouse", "seed": 7}' -o out.png
    curl -X POST http://127.0.0.1:8000/img2img -o out.png \
        -d '{"prompt": "a watercolor", "strength": 0.7, "image": "'"$(base64 -w0 in.png)"'"}'

One route per task of :data:`tasks.TASKS` that the model runs takes a JSON body and answers
``image/png``, the command line's defaults standing for the fields left out:

- ``POST /txt2img``: ``prompt``, ``negative_prompt``, ``steps``, ``guidance``, ``seed``,
  ``scheduler``, ``width``, ``height``;
- ``POST /img2img``: those but the size, plus ``image`` (a base64-encoded PNG) and ``strength``;
- ``POST /inpaint``: the txt2img fields plus ``image`` and ``mask_image`` (base64 PNGs; white
  is repainted) and ``strength``.

A bad body gets a 4xx JSON ``{"error": ..., "field": ...}``. Without ``--model`` the built-in
tiny models serve all three; a given folder serves the tasks it can (``GET /`` lists them).

Text-to-image requests from different callers that share size, steps, scheduler and guidance are
batched by ``@serve.batch`` into one pipeline call, one UNet batch; each keeps its own seed, so an
answer is the picture ``txt2img`` makes for the same prompt, steps and seed (to rounding: a bigger
batch may round a pixel differently). Image-to-image and inpainting requests run one per call,
each the command line's picture (see :mod:`.tasks` for why). Each answer says in ``X-Batch-Size``
how many requests shared its call and in ``X-Replica`` which replica ran it.

On a host with GPUs each replica takes one (``num_gpus=1``; Ray sets ``CUDA_VISIBLE_DEVICES``, so
inside it the device is ``cuda``), else replicas run on CPUs. Without ``--address`` it joins the Ray
cluster started on this host by ``ray start``, or starts a local one; ``--address HOST:6379``
joins a cluster elsewhere, whose nodes all need this package installed.

Ray contacts the network when it starts (a socket towards a public DNS server to find the node's
address). So the command refuses to start or join Ray on a host where any interface but loopback
is up unless ``--allow-network`` says that is intended, as it is on a real server.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .network import OFFLINE_ENV, interfaces_up, set_offline_env

# Ray reads its usage-stats switch when imported and when it starts.
set_offline_env()

import ray  # noqa: E402
from ray import serve  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, Response  # noqa: E402

from . import defaults  # noqa: E402
from .tasks import TASKS, Models, RequestError  # noqa: E402

__all__ = [
    "NetworkRefusedError",
    "StableDiffusionReplica",
    "StableDiffusionServer",
    "deploy",
    "main",
    "start_ray",
]


DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_BATCH_WAIT_S = 0.05
APP_NAME = "stable-diffusion"
# The directory above the ``examples`` package: replicas import it from there when not installed.
_IMPORT_ROOT = Path(__file__).resolve().parents[2]


class StableDiffusionReplica:
    """One Ray Serve replica: the pipelines of one model on one device, and the HTTP routes.

    Deployed as :data:`StableDiffusionServer`.

    Args:
        model_dir: A diffusers ONNX folder; ``None`` for the built-in tiny model.
        device: ``cpu`` or ``cuda`` (the GPU Ray gave this replica).
        cache_dir: Where the tiny model is built.
        max_batch_size: The most requests one pipeline call serves.
        batch_wait_s: How long the first request of a batch waits for others.
    """

    def __init__(
        self,
        model_dir: str | None,
        device: str,
        cache_dir: str | None,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        batch_wait_s: float = DEFAULT_BATCH_WAIT_S,
    ) -> None:
        self.models = Models(model_dir, device, cache_dir)
        self.tasks = self.models.tasks()
        for name in self.tasks:
            self.models.pipeline(name, defaults.SCHEDULER)  # load now: fail at deploy, not on a request
        batcher: Any = self.generate  # Serve's batch wrapper; its setters are not in the type stubs
        batcher.set_max_batch_size(max_batch_size)
        batcher.set_batch_wait_timeout_s(batch_wait_s)
        self.replica = serve.get_replica_context().replica_id.unique_id

    async def __call__(self, request: Request) -> Response:
        """Route ``POST /<task>``; ``GET /`` lists the tasks."""
        name = request.url.path.strip("/")
        if name == "" and request.method == "GET":
            fields = {n: list(TASKS[n].http_fields) for n in self.tasks}
            return JSONResponse({"tasks": self.tasks, "fields": fields, "replica": self.replica})
        if name not in self.tasks:
            routes = ", ".join(f"POST /{n}" for n in self.tasks)
            why = f" ({self.models.supports(name)})" if name in TASKS else ""
            return _error(404, "route", f"no route /{name}{why}; the routes are {routes}")
        task = TASKS[name]
        if request.method != "POST":
            return _error(405, "method", f"/{name} takes POST with a JSON body, got {request.method}")
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            return _error(400, "body", f'not valid JSON ({exc}); send an object such as {{"prompt": "a cat"}}')
        try:
            parsed = task.request.from_json(body, allow=task.http_fields)
        except RequestError as exc:
            return _error(422, exc.field, str(exc))
        result = await self.generate((name, parsed))
        if isinstance(result, Exception):
            status = 422 if isinstance(result, ValueError) else 500
            return _error(status, "request", str(result))
        png, batch_size = result
        headers = {"X-Batch-Size": str(batch_size), "X-Replica": self.replica}
        return Response(png, media_type="image/png", headers=headers)

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def generate(self, items: list[tuple[str, Any]]) -> list[tuple[bytes, int] | Exception]:
        """Serve a batch of ``(task, request)``: one pipeline call per task and batch key."""
        # Off the event loop, so that the next batch gathers while this one runs; Serve runs one
        # batch at a time per replica, which the pipelines (scheduler set per call) rely on.
        return await asyncio.to_thread(self._generate, items)

    def _generate(self, items: list[tuple[str, Any]]) -> list[tuple[bytes, int] | Exception]:
        groups: dict[Any, list[int]] = {}
        for index, (name, request) in enumerate(items):
            groups.setdefault((name, request.batch_key()), []).append(index)
        results: list[tuple[bytes, int] | Exception] = [ValueError("not run")] * len(items)
        for (name, _), indices in groups.items():
            try:
                images = self.models.run(name, [items[i][1] for i in indices])
            except (ValueError, RuntimeError) as exc:  # one bad group must not fail the others
                for i in indices:
                    results[i] = exc
                continue
            for i, per_request in zip(indices, images, strict=True):
                results[i] = (_png(per_request[0]), len(indices))
        return results


StableDiffusionServer = serve.deployment(max_ongoing_requests=64)(StableDiffusionReplica)
"""The deployment; ``StableDiffusionServer.options(num_replicas=...)`` scales it (see :func:`deploy`)."""


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _error(status: int, field: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status)


# ---------------------------------------------------------------------- starting


class NetworkRefusedError(RuntimeError):
    """Ray would contact the network and the caller did not allow it."""


def start_ray(
    address: str | None = None,
    *,
    allow_network: bool = False,
    num_cpus: int | None = None,
    temp_dir: str | None = None,
) -> None:
    """Join the Ray cluster at ``address`` (``None``: this host's, or a new local one).

    Raises:
        NetworkRefusedError: An interface other than loopback is up and ``allow_network`` is false.
    """
    up = [name for name in interfaces_up() if name != "lo"]
    if up and not allow_network:
        raise NetworkRefusedError(
            f"not starting Ray: interfaces {', '.join(up)} are up, and Ray contacts the network when it starts "
            "(a public DNS server to find this node's address; its dashboard probes the cloud metadata address). "
            "On a server where that is intended pass --allow-network; to keep to loopback run inside a private "
            "network namespace: unshare -n -p -f --mount-proc sh -c 'ip link set lo up && exec python -m ...'"
        )
    env_vars = {
        **OFFLINE_ENV,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(_IMPORT_ROOT), os.environ.get("PYTHONPATH")])),
    }
    options: dict[str, Any] = {"runtime_env": {"env_vars": env_vars}, "include_dashboard": False}
    if address is None:
        options["num_cpus"] = num_cpus
        if temp_dir is not None:
            options["_temp_dir"] = temp_dir
        if not up:
            # With no network there is no address to find: say it, rather than let Ray probe.
            options["_node_ip_address"] = "127.0.0.1"
    ray.init(address=address, **options)


def deploy(
    model_dir: str | Path | None,
    *,
    replicas: int | None = None,
    device: str | None = None,
    cache_dir: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    batch_wait_s: float = DEFAULT_BATCH_WAIT_S,
) -> str:
    """Run the deployment on the connected Ray cluster; returns the base URL.

    Args:
        model_dir: A diffusers ONNX folder every node can read; ``None`` for the tiny model.
        replicas: How many; by default one per GPU in the cluster, else one.
        device: ``cuda`` or ``cpu``; by default ``cuda`` when the cluster has GPUs.
        cache_dir: Where each node builds the tiny model.
        host: The HTTP proxy's address.
        port: The HTTP proxy's port.
        max_batch_size: The most requests one pipeline call serves.
        batch_wait_s: How long the first request of a batch waits for others.
    """
    gpus = int(ray.cluster_resources().get("GPU", 0))  # type: ignore[no-untyped-call]
    device = device or ("cuda" if gpus else "cpu")
    replicas = replicas or (gpus if gpus and device.startswith("cuda") else 1)
    if device.startswith("cuda:"):
        raise ValueError(f"device: got {device!r}; pass 'cuda': each replica sees only the GPU Ray gave it, as cuda:0")
    actor_options = {"num_gpus": 1} if device == "cuda" else {"num_cpus": 1}
    serve.start(http_options={"host": host, "port": port})
    app = StableDiffusionServer.options(num_replicas=replicas, ray_actor_options=actor_options).bind(
        str(model_dir) if model_dir is not None else None,
        device,
        str(cache_dir) if cache_dir is not None else None,
        max_batch_size,
        batch_wait_s,
    )
    serve.run(app, name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}"


# ---------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    parser = argparse.ArgumentParser(
        prog="serve",
        description="Serve text-to-image, image-to-image and inpainting over HTTP on Ray Serve.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="HTTP address (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port")
    parser.add_argument("--replicas", type=int, default=None, help="replicas (default: one per GPU, else 1)")
    parser.add_argument(
        "--model", type=Path, default=None, help="diffusers ONNX folder; default: the built-in tiny model"
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the tiny model is built")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when the cluster has GPUs)")
    parser.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE, help="requests per UNet batch")
    parser.add_argument(
        "--batch-wait-s", type=float, default=DEFAULT_BATCH_WAIT_S, help="how long a batch waits to fill"
    )
    parser.add_argument(
        "--address", default=None, help="Ray cluster to join (HOST:6379); default: this host's, or a new local one"
    )
    parser.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs of a new local Ray (default: all; at least --replicas)"
    )
    parser.add_argument(
        "--allow-network", action="store_true", help="start Ray although interfaces other than loopback are up"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m examples.stable_diffusion.serve``: deploy, then serve until interrupted."""
    args = build_parser().parse_args(argv)
    for name in ("replicas", "max_batch_size", "num_cpus"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"serve: error: --{name.replace('_', '-')} must be at least 1, got {value}", file=sys.stderr)
            return 2
    num_cpus = args.num_cpus or (max(os.cpu_count() or 1, args.replicas) if args.replicas else None)
    try:
        start_ray(args.address, allow_network=args.allow_network, num_cpus=num_cpus)
        url = deploy(
            args.model,
            replicas=args.replicas,
            device=args.device,
            cache_dir=args.cache_dir,
            host=args.host,
            port=args.port,
            max_batch_size=args.max_batch_size,
            batch_wait_s=args.batch_wait_s,
        )
    except (NetworkRefusedError, ValueError, FileNotFoundError) as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 2
    # The tiny models run every task; a given folder those it can (as each replica works out).
    served = list(TASKS) if args.model is None else Models(args.model, "cpu").tasks()
    for name in served:
        print(f"serving POST {url}/{name} (JSON body: {', '.join(TASKS[name].http_fields)})", flush=True)
    print("Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()  # type: ignore[no-untyped-call]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
