"""The HTTP server, on Ray Serve: replicas across GPUs and machines, each batching what it gets.

    python -m examples.stable_diffusion.serve [--replicas N] [--model DIR] [--device cuda] [--port 8000]
    curl -X POST http://127.0.0.1:8000/txt2img -d '{"prompt": "a lighthouse", "seed": 7}' -o out.png

One route per task the folder runs, ``POST /<task>``, takes a JSON object of the task's request
fields (:data:`.requests.TASKS`, all but ``batch``: an answer is one PNG) and answers
``image/png``; ``GET /`` lists the routes, their fields with this folder's defaults and bounds,
and the tasks the folder does not run with the reason. Every other answer is JSON,
``{"error": ..., "field": ...}``, with the status of whose fault it is (:mod:`.errors`): 4xx
naming the field for a bad request, 5xx with the reason for a failure of the model or the
server, never a traceback.

A request is checked in full (images decoded, sizes bounded) before it joins a batch, so a bad
one never reaches the others; the service then shares pipeline calls where each picture stays
the one a request gets alone, and isolates a failing call request by request (:mod:`.service`).
A request stops at the end of a step once its caller has left (Ray Serve cancels it when the
connection closes) or once it has taken ``--max-seconds``.

Ray contacts the network when it starts (a socket towards a public DNS server to find the node's
address). So the command refuses to start or join Ray on a host where any interface but loopback
is up unless ``--allow-network`` says that is intended, as it is on a real server.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .network import OFFLINE_ENV, interfaces_up, set_offline_env

# Ray reads its usage-stats switch when imported and when it starts.
set_offline_env()

import ray  # noqa: E402
from ray import serve  # noqa: E402
from starlette.requests import Request as HttpRequest  # noqa: E402
from starlette.responses import JSONResponse, Response  # noqa: E402

from .errors import AppError, BodyError, ModelFailedError, RequestError  # noqa: E402
from .requests import TASKS, Request, fields_of, json_body  # noqa: E402
from .service import Outcome, Service, add_model_options  # noqa: E402

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
DEFAULT_MAX_SECONDS = 300.0
APP_NAME = "stable-diffusion"
# The directory above the ``examples`` package: replicas import it from there when not installed.
_IMPORT_ROOT = Path(__file__).resolve().parents[3]
# Ray Serve's proxy imports this (in every proxy process) for the middlewares it puts in front of
# every application: the answers the proxy makes itself become JSON too (see .proxy).
_PROXY_CALLBACK = "examples.stable_diffusion.apps.proxy.middlewares"
_log = logging.getLogger(__name__)


@dataclass
class _Pending:
    """A checked request waiting in a replica's batch queue."""

    request: Request
    arrived: float
    gone: threading.Event


class StableDiffusionReplica:
    """One Ray Serve replica: a :class:`.service.Service` on one device, and the HTTP routes.

    Deployed as :data:`StableDiffusionServer`.

    Args:
        model_dir: An ONNX Stable Diffusion folder; ``None`` for the built-in digits model.
        device: ``cpu`` or ``cuda`` (the GPU Ray gave this replica).
        cache_dir: Where the built-in model is exported to ONNX.
        max_batch_size: The most requests one batch takes.
        batch_wait_s: How long the first request of a batch waits for others.
        max_seconds: The longest a request may take, from its arrival.
        memory_share: The share of the memory free at load time one call may take.
    """

    def __init__(
        self,
        model_dir: str | None,
        device: str,
        cache_dir: str | None,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        batch_wait_s: float = DEFAULT_BATCH_WAIT_S,
        max_seconds: float = DEFAULT_MAX_SECONDS,
        memory_share: float = 0.5,
    ) -> None:
        self.service = Service(
            model_dir, device, cache_dir=cache_dir, max_seconds=max_seconds, memory_share=memory_share
        )
        self.tasks = self.service.tasks()
        for task in self.tasks:
            self.service.facts(task)  # load now: fail at deploy, not on a request
        batcher: Any = self.generate  # Serve's batch wrapper; its setters are not in the type stubs
        batcher.set_max_batch_size(max_batch_size)
        batcher.set_batch_wait_timeout_s(batch_wait_s)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.running = 0
        """Requests in the batch being run, for ``GET /``."""
        self.stopped = 0
        """Requests whose run was stopped before its end (callers gone or out of time), for ``GET /``."""

    async def __call__(self, http: HttpRequest) -> Response:
        """Route ``POST /<task>`` and ``GET /``; every error is a JSON answer of its status."""
        try:
            return await self._answer(http)
        except AppError as exc:
            return _error(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _log.exception("request failed")
            return _error(ModelFailedError(f"the server failed: {type(exc).__name__}: {exc}"))

    async def _answer(self, http: HttpRequest) -> Response:
        arrived = self.service.clock()
        route = _route(http)
        if route == "" and http.method == "GET":
            return JSONResponse(self.listing())
        if route not in TASKS:
            routes = ", ".join(f"POST /{task}" for task in self.tasks)
            raise RequestError("route", f"no route /{route}; the routes are {routes}", status=404)
        if route not in self.tasks:
            raise RequestError("route", f"no route /{route}: {self.service.unavailable(route)}", status=404)
        if http.method != "POST":
            raise RequestError("method", f"/{route} takes POST with a JSON body, got {http.method}", status=405)
        limits = self.service.limits
        body = json_body(await _read_body(http, limits.json_bytes()), limits)
        # Decoding images takes a while: off the event loop, which keeps taking other requests.
        request = await asyncio.to_thread(self.service.parse, route, body, server=True)
        pending = _Pending(request, arrived, threading.Event())
        try:
            outcome = await self.generate(pending)
        except asyncio.CancelledError:
            pending.gone.set()  # the caller left: its run stops at the end of the step
            raise
        if isinstance(outcome, AppError):
            return _error(outcome)
        png = await asyncio.to_thread(_png, outcome.images[0])
        headers = {"X-Batch-Size": str(outcome.batch_size), "X-Replica": self.replica}
        return Response(png, media_type="image/png", headers=headers)

    def listing(self) -> dict[str, Any]:
        """``GET /``: the routes, their fields with this folder's defaults and bounds, what is not offered."""
        routes: dict[str, list[dict[str, Any]]] = {}
        for task in self.tasks:
            facts = self.service.facts(task)
            routes[task] = []
            for spec in fields_of(task, server=True):
                entry: dict[str, Any] = {"name": spec.name, "kind": spec.kind, "help": spec.help}
                if spec.required:
                    entry["required"] = True
                else:
                    entry["default"] = spec.default_for(facts)
                if spec.bounds is not None:
                    entry["min"], entry["max"] = spec.bounds(facts)
                if spec.choices:
                    entry["choices"] = list(spec.choices)
                routes[task].append(entry)
        unavailable = {task: self.service.unavailable(task) for task in TASKS if task not in self.tasks}
        return {
            "tasks": self.tasks,
            "fields": routes,
            "unavailable": unavailable,
            "replica": self.replica,
            "running": self.running,
            "stopped": self.stopped,
        }

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def generate(self, batch: list[_Pending]) -> list[Outcome]:
        """Serve a batch of checked requests: the service shares calls and isolates failures."""
        # Off the event loop, so that the next batch gathers while this one runs; Serve runs one
        # batch at a time per replica.
        self.running = len(batch)
        try:
            outcomes = await asyncio.to_thread(
                self.service.run,
                [p.request for p in batch],
                gone=[p.gone.is_set for p in batch],
                started=[p.arrived for p in batch],
            )
        except Exception as exc:
            _log.exception("batch failed")
            return [ModelFailedError(f"the server failed: {type(exc).__name__}: {exc}") for _ in batch]
        finally:
            self.running = 0
        self.stopped += sum(1 for outcome in outcomes if isinstance(outcome, AppError) and outcome.status in (499, 503))
        return outcomes


StableDiffusionServer = serve.deployment(max_ongoing_requests=64)(StableDiffusionReplica)
"""The deployment; ``StableDiffusionServer.options(num_replicas=...)`` scales it (see :func:`deploy`)."""


def _route(http: HttpRequest) -> str:
    """The path below the application's route prefix, without slashes: ``txt2img``."""
    path = http.scope.get("path", "")
    root = http.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return str(path).strip("/")


async def _read_body(http: HttpRequest, limit: int) -> bytes:
    """The body, refused (413) as soon as it passes ``limit`` bytes, before it is all read."""
    declared = http.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyError(f"{declared} bytes, more than the {limit} taken", too_large=True)
    chunks, size = [], 0
    async for chunk in http.stream():
        size += len(chunk)
        if size > limit:
            raise BodyError(f"more than the {limit} bytes taken", too_large=True)
        chunks.append(chunk)
    return b"".join(chunks)


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _error(error: AppError) -> JSONResponse:
    return JSONResponse(error.as_json(), status_code=error.status)


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

    A new local cluster's HTTP proxy answers in JSON the errors it makes itself (a replica that
    died under a request, a timeout): see :mod:`.proxy`. A cluster started by ``ray start`` does
    that when its nodes have ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` set to it.

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
        # Read by the proxy processes the new local cluster starts, which inherit this environment.
        os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", _PROXY_CALLBACK)
        os.environ["PYTHONPATH"] = env_vars["PYTHONPATH"]
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
    max_seconds: float = DEFAULT_MAX_SECONDS,
    name: str = APP_NAME,
    route_prefix: str = "/",
) -> str:
    """Run the deployment on the connected Ray cluster; returns its base URL.

    Args:
        model_dir: An ONNX folder every node can read; ``None`` for the built-in digits model.
        replicas: How many; by default one per GPU in the cluster, else one.
        device: ``cuda`` or ``cpu``; by default ``cuda`` when the cluster has GPUs.
        cache_dir: Where each node exports the built-in model.
        host: The HTTP proxy's address (Serve starts it with the first application).
        port: The HTTP proxy's port.
        max_batch_size: The most requests one batch takes.
        batch_wait_s: How long the first request of a batch waits for others.
        max_seconds: The longest a request may take, from its arrival at a replica.
        name: The Serve application's name (several folders can be served side by side).
        route_prefix: Where its routes start (``/`` for one application).

    Raises:
        ValueError: ``device`` names one GPU.
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
        max_seconds,
        # Replicas on one machine share its memory.
        0.5 / replicas,
    )
    serve.run(app, name=name, route_prefix=route_prefix)
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"


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
    add_model_options(parser, device=None, device_help="cuda or cpu (default: cuda when the cluster has GPUs)")
    parser.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE, help="requests per batch")
    parser.add_argument(
        "--batch-wait-s", type=float, default=DEFAULT_BATCH_WAIT_S, help="how long a batch waits to fill"
    )
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS, help="the longest a request may take")
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
    for option in ("replicas", "max_batch_size", "num_cpus"):
        value = getattr(args, option)
        if value is not None and value < 1:
            print(f"serve: error: --{option.replace('_', '-')} must be at least 1, got {value}", file=sys.stderr)
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
            max_seconds=args.max_seconds,
        )
    except (NetworkRefusedError, ValueError, FileNotFoundError) as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 2
    # What the folder runs, as each replica works it out (the built-in model runs every task).
    local = Service(args.model, "cpu", cache_dir=args.cache_dir)
    for task in TASKS:
        reason = local.unavailable(task)
        if reason is None:
            fields = ", ".join(spec.name for spec in fields_of(task, server=True))
            print(f"serving POST {url}/{task} (JSON body: {fields})", flush=True)
        else:
            print(f"not serving /{task}: {reason}", flush=True)
    print("Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()  # type: ignore[no-untyped-call]
    return 0
