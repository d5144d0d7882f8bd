"""The Ray Serve server (``examples.stable_diffusion.serve``) on the built-in and tiny models, on loopback only.

One Serve instance runs five applications side by side, each a deployment of the server:

- ``/``: the built-in digits model (no ``--model``), two CPU replicas;
- ``/sdxl`` and ``/inpainting``: a tiny random-weight SDXL folder and inpainting folder, as ``--model``;
- ``/batched``: one replica whose batches start only once four requests are there (the wait is
  long enough never to end first), so batching is driven by reaching the batch size;
- ``/strict``: one replica that gives a request 50 ms.

Every route's picture is compared with the command line's for the same request, defaults
included; each hostile request gets its 4xx naming the field; a bad request sent among good ones
stays out of their batch.
"""

from __future__ import annotations

import json
import socket
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ray.serve")

from .helpers import b64, cli_image, http, png_array, post_json, sample_images, wait_until
from .netns import require_loopback_only

pytestmark = [pytest.mark.slow, pytest.mark.loopback]

STEPS = 3
# Within 2 of 255: the same latents in a bigger UNet batch may round a pixel differently than alone.
PIXEL_TOLERANCE = 2
BATCH = 4


@dataclass
class App:
    """A deployed application: its base URL and the command-line options that run the same model."""

    url: str
    model: list[str]


@pytest.fixture(scope="module")
def apps(cache_dir: Path, sdxl_dir: Path, inpaint_dir: Path) -> Iterator[dict[str, App]]:
    require_loopback_only()
    import ray
    from ray import serve

    from examples.stable_diffusion.apps.serve import deploy, start_ray
    from examples.stable_diffusion.apps.service import Service

    builtin = Service(None, cache_dir=cache_dir)
    for task in builtin.tasks():
        builtin.folder(task)  # export the built-in model here, once, not in every replica
    settings: dict[str, dict[str, Any]] = {
        "builtin": {"model_dir": None, "replicas": 2, "route_prefix": "/", "max_batch_size": BATCH},
        "sdxl": {"model_dir": sdxl_dir, "route_prefix": "/sdxl"},
        "inpainting": {"model_dir": inpaint_dir, "route_prefix": "/inpainting"},
        "batched": {"model_dir": None, "route_prefix": "/batched", "max_batch_size": BATCH, "batch_wait_s": 600.0},
        "strict": {"model_dir": None, "route_prefix": "/strict", "max_seconds": 0.05, "batch_wait_s": 0.0},
    }
    with tempfile.TemporaryDirectory(prefix="ray-") as temp_dir:
        start_ray(num_cpus=6, temp_dir=temp_dir)
        try:
            port = _serve_on_a_free_port()
            deployed: dict[str, App] = {}
            for name, options in settings.items():
                url = deploy(
                    **{"replicas": 1, **options},
                    device="cpu",
                    cache_dir=cache_dir,
                    port=port,
                    name=name,
                )
                folder = options["model_dir"]
                model = ["--cache-dir", str(cache_dir)] if folder is None else ["--model", str(folder)]
                deployed[name] = App(url, model)
            status = serve.status().applications
            assert {name: status[name].status for name in settings} == dict.fromkeys(settings, "RUNNING")
            yield deployed
        finally:
            serve.shutdown()
            ray.shutdown()


def _serve_on_a_free_port() -> int:
    """Start Serve's proxy on the first port it can bind from 8000 on (retrying on a conflict)."""
    from ray import serve

    for port in range(8000, 8010):
        serve.start(http_options={"host": "127.0.0.1", "port": port})

        def settled() -> str | None:
            states = {str(getattr(state, "value", state)) for state in serve.status().proxies.values()}
            return next((s for s in states if s in ("HEALTHY", "UNHEALTHY")), None)

        if wait_until(settled, timeout=120, what="Serve's proxy to start") == "UNHEALTHY":
            serve.shutdown()
            continue
        return port
    pytest.fail("no free port for Serve's proxy from 8000 to 8009")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return sample_images(tmp_path_factory.mktemp("pictures"))


def listing(app: App) -> dict[str, Any]:
    status, _, body = http(f"{app.url}/")
    assert status == 200, body
    answer: dict[str, Any] = json.loads(body)
    return answer


def assert_json_error(status: int, headers: Any, payload: bytes, expected_status: int, field: str | None) -> str:
    assert status == expected_status, payload
    assert headers["Content-Type"] == "application/json"
    error = json.loads(payload)
    assert set(error) == {"error", "field"} and error["field"] == field, error
    assert "Traceback" not in error["error"]
    message: str = error["error"]
    return message


# ---------------------------------------------------------------------- what each folder serves


def test_each_application_lists_what_its_folder_serves(apps: dict[str, App]) -> None:
    builtin = listing(apps["builtin"])
    assert builtin["tasks"] == ["txt2img", "img2img", "inpaint"] and builtin["unavailable"] == {}
    fields = {f["name"]: f for f in builtin["fields"]["txt2img"]}
    assert list(fields) == ["prompt", "negative_prompt", "steps", "guidance", "seed", "scheduler", "width", "height"]
    # The digits model's size: its UNet's sample_size 8 x its VAE's 4; the rest, the defaults for digits.
    assert fields["width"] == {
        "name": "width",
        "kind": "int",
        "help": "pixels, a multiple of the model's size multiple",
        "default": 32,
        "min": 8,
        "max": 128,
    }
    assert [fields[name]["default"] for name in ("prompt", "steps", "guidance", "scheduler")] == [
        "a handwritten 7",
        25,
        5.0,
        "model",
    ]
    assert fields["steps"]["max"] == 150
    assert [f["name"] for f in builtin["fields"]["inpaint"]][2:5] == ["image", "mask_image", "strength"]

    sdxl = listing(apps["sdxl"])
    assert sdxl["tasks"] == ["txt2img", "img2img"]
    assert sdxl["unavailable"]["inpaint"].endswith("does text-to-image and image-to-image, not inpainting")
    inpainting = listing(apps["inpainting"])
    assert inpainting["tasks"] == ["inpaint"]
    assert set(inpainting["unavailable"]) == {"txt2img", "img2img"}
    message = assert_json_error(*post_json(f"{apps['sdxl'].url}/inpaint", {}), 404, "route")
    assert message.startswith("route: no route /inpaint: ") and message.endswith("not inpainting")
    message = assert_json_error(*post_json(f"{apps['builtin'].url}/img2pdf", {}), 404, "route")
    assert message == "route: no route /img2pdf; the routes are POST /txt2img, POST /img2img, POST /inpaint"
    message = assert_json_error(*http(f"{apps['builtin'].url}/txt2img"), 405, "method")
    assert message == "method: /txt2img takes POST with a JSON body, got GET"


# ---------------------------------------------------------------------- every route against the CLI

ROUTES = [
    ("builtin", "txt2img"),
    ("builtin", "img2img"),
    ("builtin", "inpaint"),
    ("sdxl", "txt2img"),
    ("sdxl", "img2img"),
    ("inpainting", "inpaint"),
]


@pytest.mark.parametrize(("name", "task"), ROUTES, ids=[f"{n}-{t}" for n, t in ROUTES])
def test_every_route_gives_the_cli_picture(
    apps: dict[str, App], pictures: tuple[Path, Path], tmp_path: Path, name: str, task: str
) -> None:
    app = apps[name]
    image, mask = pictures
    files: dict[str, Any] = {}
    flags: list[str] = []
    if task != "txt2img":
        files["image"], flags = b64(image), ["--image", str(image)]
    if task == "inpaint":
        files["mask_image"] = b64(mask)
        flags += ["--mask", str(mask)]
    custom: dict[str, Any] = {"prompt": "a red door", "negative_prompt": "fog", "steps": STEPS, "seed": 7}
    custom |= {"guidance": 4.0, "scheduler": "euler"}
    custom_flags = ["--prompt", "a red door", "--negative-prompt", "fog", "--steps", str(STEPS), "--seed", "7"]
    custom_flags += ["--guidance", "4", "--scheduler", "euler"]
    if task == "txt2img":
        # Not the default size, within the model's pixels (the digits model's: 64x64).
        width, height = (64, 32) if name == "builtin" else (96, 48)
        custom |= {"width": width, "height": height}
        custom_flags += ["--width", str(width), "--height", str(height)]
    elif task == "img2img":
        custom["strength"] = 0.6
        custom_flags += ["--strength", "0.6"]
    for label, body, extra in (("defaults", files, []), ("custom", {**files, **custom}, custom_flags)):
        status, headers, png = post_json(f"{app.url}/{task}", body)
        assert status == 200, png
        assert headers["Content-Type"] == "image/png"
        expected = cli_image(tmp_path / f"{label}.png", *app.model, *flags, *extra, command=task)
        np.testing.assert_array_equal(png_array(png), expected, err_msg=label)


# ---------------------------------------------------------------------- hostile requests

BIG_PNG = "BIG_PNG"  # stands for a 2048x2048 PNG of one colour: a few kilobytes, 4 Mpx decoded


def _big_png() -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (2048, 2048)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


HOSTILE: list[tuple[str, bytes, int, str, str]] = [
    (
        "txt2img",
        b'{"steps": 1000000000}',
        422,
        "steps",
        "steps: must be at most 150 (the most steps one request may run)",
    ),
    ("txt2img", b'{"width": 100000, "height": 100000}', 422, "width", "width: must be at most 128"),
    ("txt2img", b'{"width": 128, "height": 128}', 422, "width", "width: 128x128 is 16384 pixels, more than the 4096"),
    (
        "txt2img",
        b'{"width": 36}',
        422,
        "width",
        "width: must be a multiple of 8 (this model's VAE scale factor x UNet downsampling), got 36; try 32",
    ),
    ("txt2img", b'{"guidance": NaN}', 400, "body", "body: not valid JSON (NaN is not a JSON number)"),
    ("txt2img", b'{"guidance": Infinity}', 400, "body", "body: not valid JSON (Infinity is not a JSON number)"),
    ("txt2img", b'{"guidance": 1e400}', 422, "guidance", "guidance: must be a finite number, got inf"),
    (
        "txt2img",
        b'{"guidance": 1e308}',
        422,
        "guidance",
        "guidance: must be at most 30 (far above any useful guidance), got 1e+308",
    ),
    ("txt2img", b'{"scheduler": ["pndm"]}', 422, "scheduler", "scheduler: expected one of model, pndm"),
    ("txt2img", b"[" * 100_000 + b"]" * 100_000, 400, "body", "body: not valid JSON (nested too deep)"),
    ("txt2img", b'{"prompt": "a \\ud800 cat"}', 422, "prompt", "prompt: not valid Unicode: a lone surrogate"),
    ("txt2img", b'{"seed": 18446744073709551616}', 422, "seed", "seed: must be at most 9007199254740991"),
    ("txt2img", b'{"steps": "many"}', 422, "steps", 'steps: expected a whole number, got "many" (str)'),
    ("txt2img", b'{"step": 3}', 422, "step", "step: unknown field; the fields are prompt, negative_prompt, steps"),
    ("txt2img", b'{"batch": 8}', 422, "batch", "batch: unknown field"),
    ("txt2img", b"{not json", 400, "body", "body: not valid JSON"),
    ("txt2img", b"[1, 2]", 400, "body", "body: expected a JSON object, got [1, 2] (list)"),
    ("img2img", b'{"image": "not base64!"}', 422, "image", "image: not valid base64"),
    ("img2img", b'{"image": "aGVsbG8="}', 422, "image", "image: 5 bytes that are not a PNG, JPEG or WebP file"),
    ("img2img", b'{"prompt": "x"}', 422, "image", "image: missing; send the starting image"),
    (
        "img2img",
        b'{"image": "BIG_PNG"}',
        422,
        "image",
        "image: a 2048x2048 image has 4194304 pixels, more than the 16384 taken for this model",
    ),
    ("inpaint", b'{"image": "PNG", "mask_image": "BIG_PNG"}', 422, "mask_image", "mask_image: a 2048x2048 image"),
    (
        "inpaint",
        b'{"image": "PNG", "mask_image": "PNG", "strength": 2}',
        422,
        "strength",
        "strength: must be at most 1",
    ),
]


@pytest.mark.parametrize(
    ("task", "body", "status", "field", "message"), HOSTILE, ids=[f"{h[3]}-{i}" for i, h in enumerate(HOSTILE)]
)
def test_hostile_requests_get_a_json_4xx_naming_the_field(
    apps: dict[str, App], pictures: tuple[Path, Path], task: str, body: bytes, status: int, field: str, message: str
) -> None:
    body = body.replace(b'"BIG_PNG"', f'"{_big_png()}"'.encode()).replace(b'"PNG"', f'"{b64(pictures[0])}"'.encode())
    started = time.monotonic()
    got = assert_json_error(*http(f"{apps['builtin'].url}/{task}", body), status, field)
    assert got.startswith(message), got
    assert time.monotonic() - started < 30, "refused before any work"


def raw_post(app: App, route: str, head: bytes, body: bytes = b"") -> socket.socket:
    """A POST whose headers (``Content-Length`` included) the caller writes; the socket, for reading or closing."""
    address, prefix = app.url.removeprefix("http://").split("/", 1) if "/" in app.url[7:] else (app.url[7:], "")
    host, port = address.split(":")
    connection = socket.create_connection((host, int(port)), timeout=120)
    path = f"/{prefix}/{route}" if prefix else f"/{route}"
    connection.sendall(f"POST {path} HTTP/1.1\r\nHost: {address}\r\n".encode() + head + b"\r\n" + body)
    return connection


def test_a_body_over_the_limit_is_refused_unread(apps: dict[str, App]) -> None:
    from examples.stable_diffusion.apps.requests import Limits

    limit = Limits().json_bytes()
    # The headers announce a body over the limit; none of it is sent, and the answer comes all the same.
    with raw_post(apps["builtin"], "txt2img", f"Content-Length: {limit + 1}\r\n".encode()) as connection:
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = connection.recv(65536)
            assert chunk, answer
            answer += chunk
    head, payload = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 413 "), head
    assert json.loads(payload) == {"error": f"body: {limit + 1} bytes, more than the {limit} taken", "field": "body"}


def test_a_run_past_its_time_is_stopped_with_a_503(apps: dict[str, App]) -> None:
    body = {"steps": 150, "width": 64, "height": 64}  # about a second on the digits model: past 50 ms
    message = assert_json_error(*post_json(f"{apps['strict'].url}/txt2img", body), 503, None)
    assert message == (
        "the run took longer than this server gives one request and was stopped; ask for fewer steps or a smaller image"
    )
    assert listing(apps["strict"])["stopped"] == 1


def test_a_caller_that_leaves_stops_its_run(apps: dict[str, App]) -> None:
    app = apps["sdxl"]
    assert listing(app) | {"running": 0, "stopped": 0} == listing(app)
    body = json.dumps({"steps": 150, "width": 128, "height": 128}).encode()
    head = f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n".encode()
    with raw_post(app, "txt2img", head, body):
        wait_until(lambda: listing(app)["running"] == 1, timeout=60, what="the run to start")
    # The connection is closed: Serve cancels the request, and the run stops at the end of its step.
    wait_until(lambda: listing(app)["stopped"] == 1 and listing(app)["running"] == 0, timeout=60, what="the stop")
    status, _, png = post_json(f"{app.url}/txt2img", {"steps": 2})
    assert status == 200, png


# ---------------------------------------------------------------------- load


def test_a_batch_fills_by_size_and_bad_requests_stay_out(apps: dict[str, App], cache_dir: Path) -> None:
    from examples.stable_diffusion.apps.service import Result, Service

    good = [{"prompt": f"a cube number {i}", "steps": STEPS, "seed": i} for i in range(BATCH)]
    bad: list[tuple[bytes, str]] = [
        (b'{"seed": 18446744073709551616}', "seed"),
        (b'{"prompt": "\\ud800"}', "prompt"),
        (b'{"guidance": 1e400}', "guidance"),
    ]
    calls: list[bytes] = [json.dumps(g).encode() for g in good] + [b for b, _ in bad]
    # Bad ones first: they are refused while the good ones are still gathering.
    order = list(range(BATCH, len(calls))) + list(range(BATCH))
    with ThreadPoolExecutor(len(calls)) as pool:
        answers = dict(zip(order, pool.map(lambda i: http(f"{apps['batched'].url}/txt2img", calls[i]), order)))
    for index, (_, field) in enumerate(bad, start=BATCH):
        assert_json_error(*answers[index], 422, field)
    local = Service(None, cache_dir=cache_dir)
    for index, body in enumerate(good):
        status, headers, png = answers[index]
        assert status == 200, png
        assert headers["X-Batch-Size"] == str(BATCH)  # the four good ones shared one pipeline call
        expected = local.generate(local.parse("txt2img", body))
        assert isinstance(expected, Result)
        diff = np.abs(png_array(png).astype(np.int16) - np.asarray(expected.images[0], dtype=np.int16)).max()
        assert diff <= PIXEL_TOLERANCE, (body, diff)


def test_many_callers_on_two_replicas_with_bad_ones_among_them(apps: dict[str, App], cache_dir: Path) -> None:
    from examples.stable_diffusion.apps.service import Result, Service

    calls: list[tuple[bytes, str | None]] = []
    for i in range(32):
        if i % 8 == 3:
            calls.append((b'{"steps": 2, "seed": -1}', "seed"))
        elif i % 8 == 6:
            calls.append((b'{"steps": 2, "scheduler": {"name": "pndm"}}', "scheduler"))
        else:
            calls.append((json.dumps({"prompt": f"a sphere {i}", "steps": STEPS, "seed": i}).encode(), None))
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda c: http(f"{apps['builtin'].url}/txt2img", c[0]), calls))
    local = Service(None, cache_dir=cache_dir)
    replicas = set()
    for (body, field), answer in zip(calls, answers, strict=True):
        if field is not None:
            assert_json_error(*answer, 422, field)
            continue
        status, headers, png = answer
        assert status == 200, png
        replicas.add(headers["X-Replica"])
        expected = local.generate(local.parse("txt2img", json.loads(body)))
        assert isinstance(expected, Result)
        diff = np.abs(png_array(png).astype(np.int16) - np.asarray(expected.images[0], dtype=np.int16)).max()
        assert diff <= PIXEL_TOLERANCE, (body, diff)
    print("replicas that answered:", sorted(replicas))


def test_a_killed_replica_answers_in_json(apps: dict[str, App]) -> None:
    """Last: it kills the replicas of ``/`` and waits for Serve to start new ones."""
    import ray
    from ray import serve

    app = apps["builtin"]
    # The digits model's largest picture: a batch of four takes seconds.
    body = json.dumps({"steps": 150, "width": 64, "height": 64}).encode()
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(http, f"{app.url}/txt2img", body) for _ in range(4)]

        def running() -> bool:
            # A listing is routed to the less busy replica: while the first requests all run on
            # one, it answers from the idle one. Another request goes there too, and it starts.
            if listing(app)["running"] > 0:
                return True
            if len(futures) < 8:
                futures.append(pool.submit(http, f"{app.url}/txt2img", body))
            return False

        wait_until(running, timeout=60, what="a run to start", every=0.5)
        names = [
            (actor["name"], actor["namespace"])
            for actor in ray.util.list_named_actors(all_namespaces=True)
            if "SERVE_REPLICA" in actor["name"] and "builtin" in actor["name"]
        ]
        assert len(names) == 2, names
        for name, namespace in names:
            ray.kill(ray.get_actor(name, namespace=namespace))
        answers = [future.result() for future in futures]
    errors = 0
    for status, headers, payload in answers:
        if status == 200:
            assert headers["Content-Type"] == "image/png"
            continue
        errors += 1
        assert status >= 500, (status, payload)
        assert headers["Content-Type"] == "application/json", (status, payload)
        error = json.loads(payload)
        assert error["field"] is None and "Traceback" not in error["error"], error
    assert errors > 0, "no request was in flight on the killed replicas"
    wait_until(
        lambda: serve.status().applications["builtin"].status == "RUNNING" and listing(app)["tasks"],
        timeout=180,
        what="Serve to replace the killed replicas",
        every=0.5,
    )
