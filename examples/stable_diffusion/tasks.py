"""What the web page and the server can generate: one table from task name to pipeline and runner.

Each task is a request type (its fields are the HTTP body's and the web form's, with the command
line's defaults), a pipeline factory and a runner that serves a group of requests with one
pipeline call. The web page (``app.py``) makes one tab per task and the server (``serve.py``) one
route per task from :data:`TASKS`; neither knows how a model is exported or built.

Requests that share a :meth:`Txt2ImgRequest.batch_key` run as one UNet batch; each keeps its own
seed, because its initial latents are drawn from its own generator exactly as a request run alone
draws them (see :func:`run_txt2img`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from . import defaults
from .export import ensure_tiny_model
from .pipeline import SCHEDULERS, OrtStableDiffusionPipeline, load_scheduler

__all__ = [
    "TASKS",
    "TXT2IMG_HTTP_FIELDS",
    "Models",
    "RequestError",
    "Task",
    "Txt2ImgRequest",
    "run_txt2img",
]

# Schedulers whose steps draw fresh noise from the call's one generator: requests batched together
# would share that stream and no longer match their single runs, so each of them runs alone.
_STOCHASTIC_SCHEDULERS = frozenset({"euler-ancestral"})


class RequestError(ValueError):
    """A request field is missing, of the wrong type or out of range.

    Attributes:
        field: The field's name, as in the HTTP body and the web form.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Txt2ImgRequest:
    """One text-to-image request. Field names are the HTTP body's keys and the web API's parameters.

    ``width``/``height`` of ``None`` mean the model's default size (see :func:`defaults.default_size`).
    """

    prompt: str = defaults.PROMPT
    negative_prompt: str | None = None
    steps: int = defaults.STEPS
    guidance: float = defaults.GUIDANCE
    seed: int = defaults.SEED
    scheduler: str = defaults.SCHEDULER
    width: int | None = None
    height: int | None = None
    batch: int = 1

    def __post_init__(self) -> None:
        _check_type("prompt", self.prompt, str)
        if self.negative_prompt is not None:
            _check_type("negative_prompt", self.negative_prompt, str)
        _check_int("steps", self.steps, minimum=1)
        _check_type("guidance", self.guidance, (int, float))
        _check_int("seed", self.seed, minimum=0)
        if self.scheduler not in SCHEDULERS:
            raise RequestError("scheduler", f"expected one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None:
                _check_int(name, value, minimum=8)
                if value % 8:
                    raise RequestError(name, f"must be a multiple of 8, got {value}; try {round(value / 8) * 8 or 8}")
        _check_int("batch", self.batch, minimum=1)

    @classmethod
    def from_json(cls, body: object, *, allow: Sequence[str] | None = None) -> Txt2ImgRequest:
        """A request from a decoded JSON object; absent keys take the defaults.

        Args:
            body: The decoded JSON body.
            allow: The keys accepted; by default every field. Unknown keys are refused, so that a
                misspelt ``step`` is not silently ignored.

        Raises:
            RequestError: The body is not an object, has unknown keys, or a field is invalid.
        """
        if not isinstance(body, dict):
            raise RequestError("body", f"expected a JSON object, got {type(body).__name__}")
        allowed = list(allow) if allow is not None else [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(body) - set(allowed))
        if unknown:
            raise RequestError(unknown[0], f"unknown field; the fields are {', '.join(allowed)}")
        return cls(**body)

    def batch_key(self) -> Hashable:
        """Requests with equal keys can share one pipeline call: same size, steps, scheduler, guidance."""
        key: tuple[Hashable, ...] = (self.width, self.height, self.steps, self.scheduler, float(self.guidance))
        if self.scheduler in _STOCHASTIC_SCHEDULERS:
            return (*key, id(self))
        return key


def _check_type(name: str, value: object, kinds: type | tuple[type, ...]) -> None:
    if not isinstance(value, kinds) or isinstance(value, bool):
        expected = kinds.__name__ if isinstance(kinds, type) else " or ".join(k.__name__ for k in kinds)
        raise RequestError(name, f"expected {expected}, got {json.dumps(value)} ({type(value).__name__})")


def _check_int(name: str, value: object, *, minimum: int) -> None:
    _check_type(name, value, int)
    assert isinstance(value, int)
    if value < minimum:
        raise RequestError(name, f"must be at least {minimum}, got {value}")


# ---------------------------------------------------------------------- running


class Models:
    """The pipelines of one model folder on one device, loaded on first use and shared by the tasks.

    Not for concurrent calls: a pipeline's scheduler is set per call. The web page runs one
    generation at a time and a server replica one batch at a time.

    Args:
        model_dir: A diffusers ONNX folder; ``None`` for the built-in tiny model (built on first use).
        device: Where the models run: ``cpu``, ``cuda`` or ``cuda:N``.
        cache_dir: Where the tiny model is built; see :func:`ensure_tiny_model`.
    """

    def __init__(self, model_dir: str | Path | None, device: str = "cpu", cache_dir: str | Path | None = None) -> None:
        self.tiny = model_dir is None
        self.model_dir = Path(model_dir) if model_dir is not None else ensure_tiny_model(cache_dir)
        self.device = device
        self.default_size = defaults.default_size(self.tiny)
        self._pipelines: dict[str, Any] = {}

    def pipeline(self, task: str, scheduler: str) -> Any:
        """The task's pipeline, loaded on first use, with a fresh ``scheduler`` (as the CLI's would be)."""
        pipe = self._pipelines.get(task)
        if pipe is None:
            pipe = self._pipelines[task] = TASKS[task].load(self.model_dir, self.device)
        config = json.loads((self.model_dir / "scheduler" / "scheduler_config.json").read_text())
        pipe.scheduler = load_scheduler(scheduler, config)
        return pipe

    def run(self, task: str, requests: Sequence[Any], progress: bool = False) -> list[list[Image.Image]]:
        """Serve ``requests`` of one task: one pipeline call per group of equal batch keys.

        Returns:
            Each request's images, in request order.
        """
        spec = TASKS[task]
        groups: dict[Hashable, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(request.batch_key(), []).append(index)
        results: list[list[Image.Image]] = [[] for _ in requests]
        for indices in groups.values():
            group = [requests[i] for i in indices]
            pipe = self.pipeline(task, group[0].scheduler)
            for index, images in zip(indices, spec.run(pipe, group, self.default_size, progress), strict=True):
                results[index] = images
        return results


def run_txt2img(
    pipe: OrtStableDiffusionPipeline, requests: Sequence[Txt2ImgRequest], default_size: int, progress: bool = False
) -> list[list[Image.Image]]:
    """One pipeline call for requests that share a batch key; each request's images, in order.

    A request alone runs exactly as ``txt2img`` runs it (its seed's generator, ``batch`` images
    per prompt). Several run as one UNet batch whose initial latents are each request's own
    draw: ``randn_tensor`` on the request's generator, as the pipeline draws them for a single
    request, concatenated.
    """
    first = requests[0]
    if any(r.batch_key() != first.batch_key() for r in requests):
        raise ValueError(
            "run_txt2img: requests differ in size, steps, scheduler or guidance; group them by batch_key()"
        )
    height = first.height or default_size
    width = first.width or default_size
    common: dict[str, Any] = {
        "height": height,
        "width": width,
        "num_inference_steps": first.steps,
        "guidance_scale": float(first.guidance),
        "progress": progress,
    }
    if len(requests) == 1:
        out = pipe(
            first.prompt,
            negative_prompt=first.negative_prompt,
            num_images_per_prompt=first.batch,
            generator=defaults.seeded_generator(first.seed),
            **common,
        )
        return [list(out.images)]
    shape = (_latent_channels(pipe), height // 8, width // 8)
    latents = torch.cat(
        [
            randn_tensor(
                (r.batch, *shape), generator=defaults.seeded_generator(r.seed), device=pipe.device, dtype=torch.float32
            )
            for r in requests
        ]
    )
    out = pipe(
        [r.prompt for r in requests for _ in range(r.batch)],
        negative_prompt=[r.negative_prompt or "" for r in requests for _ in range(r.batch)],
        latents=latents,
        **common,
    )
    images = list(out.images)
    results, start = [], 0
    for r in requests:
        results.append(images[start : start + r.batch])
        start += r.batch
    return results


def _latent_channels(pipe: OrtStableDiffusionPipeline) -> int:
    # The UNet's declared sample channels; SD 1.x/2.x use 4 and exports may leave the dim symbolic.
    dims = pipe.unet.spec.input("sample").dims
    return dims[1] if dims is not None and len(dims) > 1 and isinstance(dims[1], int) else 4


def _load_txt2img(model_dir: Path, device: str) -> OrtStableDiffusionPipeline:
    return OrtStableDiffusionPipeline.from_pretrained(model_dir, device)


@dataclass(frozen=True)
class Task:
    """One row of :data:`TASKS`.

    Attributes:
        name: The tab's title and the route, ``/<name>``.
        request: The request type; ``request.from_json(body)`` parses an HTTP body. Tasks that
            take the text-to-image fields and more (img2img's image and strength) subclass
            :class:`Txt2ImgRequest`.
        load: ``(model_dir, device) -> pipeline``.
        run: ``(pipeline, requests of one batch key, default size, progress) -> images per request``.
        http_fields: The keys an HTTP body may have (one image per HTTP request, so no ``batch``).
    """

    name: str
    request: type[Txt2ImgRequest]
    load: Callable[[Path, str], Any]
    run: Callable[[Any, Sequence[Any], int, bool], list[list[Image.Image]]]
    http_fields: tuple[str, ...]


TXT2IMG_HTTP_FIELDS = ("prompt", "negative_prompt", "steps", "guidance", "seed", "scheduler", "width", "height")

TASKS: dict[str, Task] = {
    "txt2img": Task("txt2img", Txt2ImgRequest, _load_txt2img, run_txt2img, TXT2IMG_HTTP_FIELDS),
}
"""Task name -> request type, pipeline factory, runner. img2img and inpaint join here as rows."""
