"""What the web page and the server can generate: one table from task name to pipeline and runner.

Each task is a request type (its fields are the HTTP body's and the web form's, with the command
line's defaults), a pipeline factory and a runner that serves a group of requests with one
pipeline call. The web page (``app.py``) makes one tab per task and the server (``serve.py``) one
route per task from :data:`TASKS`; neither knows how a model is exported or built.

Requests that share a :meth:`Txt2ImgRequest.batch_key` run as one UNet batch; each keeps its own
seed, because its initial latents are drawn from its own generator exactly as a request run alone
draws them (see :func:`run_txt2img`).

Image-to-image and inpainting requests always run alone. Their pipelines draw three things from
the call's one generator, in turn: the VAE encoder's sample of the image, the initial noise, and
the steps' noise. Only the initial noise can be given from outside (inpainting's ``latents``), so
in a shared call the VAE samples of every request after the first would come from the first
request's stream, and each picture would differ from its single run. Their batch key is therefore
unique to each request.

In an HTTP body an image (``image``, ``mask_image``) is a base64-encoded PNG (or JPEG) file, with
or without a ``data:image/png;base64,`` prefix.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image, UnidentifiedImageError

from . import defaults
from ._folder import ModelFolder
from .auto import Task as PipelineTask
from .auto import pipeline_for_model
from .cache import ensure_tiny_model
from .pipeline import SCHEDULERS, OrtStableDiffusionPipeline, load_scheduler

if TYPE_CHECKING:
    from .tiny import TinyKind

__all__ = [
    "IMG2IMG_HTTP_FIELDS",
    "INPAINT_HTTP_FIELDS",
    "TASKS",
    "TXT2IMG_HTTP_FIELDS",
    "Img2ImgRequest",
    "InpaintRequest",
    "Models",
    "RequestError",
    "Task",
    "Txt2ImgRequest",
    "decode_image",
    "run_img2img",
    "run_inpaint",
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
        return cls(**cls._decoded(body))

    @classmethod
    def _decoded(cls, body: dict[str, Any]) -> dict[str, Any]:
        """The body's values as the constructor takes them; the image tasks decode their images here."""
        return body

    def batch_key(self) -> Hashable:
        """Requests with equal keys can share one pipeline call: same size, steps, scheduler, guidance."""
        key: tuple[Hashable, ...] = (self.width, self.height, self.steps, self.scheduler, float(self.guidance))
        if self.scheduler in _STOCHASTIC_SCHEDULERS:
            return (*key, id(self))
        return key


DEFAULT_IMG2IMG_STRENGTH = 0.8
"""``img2img --strength``'s default."""
DEFAULT_INPAINT_STRENGTH = 1.0
"""``inpaint --strength``'s default."""


@dataclass(frozen=True, kw_only=True)
class Img2ImgRequest(Txt2ImgRequest):
    """One image-to-image request: the text-to-image fields but the size, plus the image and ``strength``.

    The picture keeps the image's size (rounded down to a multiple of 8), as ``img2img`` does, so
    ``width`` and ``height`` must stay ``None``.
    """

    image: Image.Image
    strength: float = DEFAULT_IMG2IMG_STRENGTH

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("width", "height"):
            if getattr(self, name) is not None:
                raise RequestError(name, "img2img keeps the image's size; resize the image instead")
        _check_image("image", self.image)
        _check_strength(self.strength, self.steps)

    @classmethod
    def _decoded(cls, body: dict[str, Any]) -> dict[str, Any]:
        if "image" not in body:
            raise RequestError("image", "missing; send the starting image as a base64-encoded PNG")
        return {**body, "image": decode_image("image", body["image"])}

    def batch_key(self) -> Hashable:
        """Unique to this request: it runs alone (see the module's note on randomness)."""
        return ("alone", id(self))


@dataclass(frozen=True, kw_only=True)
class InpaintRequest(Txt2ImgRequest):
    """One inpainting request: the text-to-image fields plus the image, the mask and ``strength``.

    ``mask_image`` is white where to repaint and black where to keep (grayscale, split at half
    way). Both images are resized to ``width`` x ``height`` (the model's default size for ``None``).
    """

    image: Image.Image
    mask_image: Image.Image
    strength: float = DEFAULT_INPAINT_STRENGTH

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_image("image", self.image)
        _check_image("mask_image", self.mask_image)
        _check_strength(self.strength, self.steps)

    @classmethod
    def _decoded(cls, body: dict[str, Any]) -> dict[str, Any]:
        decoded = dict(body)
        for name, what, mode in (("image", "the image to repaint", "RGB"), ("mask_image", "the mask", "L")):
            if name not in body:
                raise RequestError(name, f"missing; send {what} as a base64-encoded PNG")
            decoded[name] = decode_image(name, body[name], mode)
        return decoded

    def batch_key(self) -> Hashable:
        """Unique to this request: it runs alone (see the module's note on randomness)."""
        return ("alone", id(self))


def decode_image(field: str, value: object, mode: str = "RGB") -> Image.Image:
    """The image a base64 string in an HTTP body holds, loaded and converted to ``mode``.

    Args:
        field: The body's key, for errors.
        value: A base64-encoded PNG or JPEG file, optionally as a ``data:`` URL.
        mode: The PIL mode to convert to: ``RGB`` for pictures, ``L`` for masks (as the command lines).

    Raises:
        RequestError: ``value`` is not a string, not base64, or not an image file.
    """
    if not isinstance(value, str):
        raise RequestError(
            field, f"expected a base64-encoded PNG as a string, got {type(value).__name__}; encode with base64 -w0"
        )
    text = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(field, f"not valid base64 ({exc}); send the PNG file's bytes base64-encoded") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert(mode)
    except (UnidentifiedImageError, OSError) as exc:
        raise RequestError(
            field, f"base64 of {len(data)} bytes that are not an image ({exc}); send a PNG or JPEG file"
        ) from None


def _check_image(name: str, value: object) -> None:
    if not isinstance(value, Image.Image):
        raise RequestError(name, f"expected a PIL image, got {type(value).__name__}")


def _check_strength(strength: object, steps: int) -> None:
    _check_type("strength", strength, (int, float))
    assert isinstance(strength, int | float)
    if not 0.0 <= strength <= 1.0:
        raise RequestError("strength", f"must be between 0 and 1, got {strength}")
    if int(steps * strength) < 1:
        # The pipelines run int(steps * strength) of the steps; none is no picture.
        raise RequestError(
            "strength",
            f"{strength} of {steps} steps runs no step; raise strength to at least {1 / steps:.3g} or the steps",
        )


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
        self.cache_dir = cache_dir
        self.model_dir = Path(model_dir) if model_dir is not None else ensure_tiny_model(cache_dir)
        self.device = device
        self.default_size = defaults.default_size(self.tiny)
        self._pipelines: dict[str, Any] = {}

    def model_dir_for(self, task: str) -> Path:
        """The folder the task runs: the given one, or the tiny model of the task's kind (built on first use).

        Inpainting needs its own tiny model (a 9-channel UNet), as ``inpaint`` runs without ``--model``.
        """
        kind = TASKS[task].tiny_kind
        if not self.tiny or kind == "sd":
            return self.model_dir
        return ensure_tiny_model(self.cache_dir, kind=kind)

    def supports(self, task: str) -> str | None:
        """``None`` if the model can run ``task``, else why not (the tiny models run every task)."""
        if self.tiny:
            return None
        spec = TASKS[task]
        try:
            pipeline_for_model(self.model_dir, spec.pipeline_task)
        except ValueError as exc:
            return str(exc)
        folder = ModelFolder(self.model_dir)
        missing = [name for name in spec.needs if not folder.has_model(name)]
        if missing:
            return f"{self.model_dir}: {task} needs {', '.join(f'{m}/' for m in missing)}, which the folder lacks"
        return None

    def tasks(self) -> list[str]:
        """The tasks of :data:`TASKS` this model runs, in table order."""
        return [name for name in TASKS if self.supports(name) is None]

    def pipeline(self, task: str, scheduler: str) -> Any:
        """The task's pipeline, loaded on first use, with a fresh ``scheduler`` (as the CLI's would be)."""
        model_dir = self.model_dir_for(task)
        pipe = self._pipelines.get(task)
        if pipe is None:
            pipe = self._pipelines[task] = TASKS[task].load(model_dir, self.device)
        config = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())
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


def _alone(task: str, requests: Sequence[Txt2ImgRequest]) -> Txt2ImgRequest:
    if len(requests) != 1:
        raise ValueError(f"run_{task}: got {len(requests)} requests; each runs alone, group them by batch_key()")
    return requests[0]


def run_img2img(
    pipe: Any, requests: Sequence[Img2ImgRequest], default_size: int, progress: bool = False
) -> list[list[Image.Image]]:
    """Run one image-to-image request exactly as ``img2img`` runs it; its images, in a list of one.

    ``default_size`` is unused: the picture has the image's size.
    """
    request = _alone("img2img", requests)
    assert isinstance(request, Img2ImgRequest)
    out = pipe(
        request.prompt,
        image=request.image,
        strength=float(request.strength),
        negative_prompt=request.negative_prompt,
        num_images_per_prompt=request.batch,
        num_inference_steps=request.steps,
        guidance_scale=float(request.guidance),
        generator=defaults.seeded_generator(request.seed),
        progress=progress,
    )
    return [list(out.images)]


def run_inpaint(
    pipe: Any, requests: Sequence[InpaintRequest], default_size: int, progress: bool = False
) -> list[list[Image.Image]]:
    """Run one inpainting request exactly as ``inpaint`` runs it; its images, in a list of one."""
    request = _alone("inpaint", requests)
    assert isinstance(request, InpaintRequest)
    out = pipe(
        request.prompt,
        image=request.image,
        mask_image=request.mask_image,
        height=request.height or default_size,
        width=request.width or default_size,
        strength=float(request.strength),
        negative_prompt=request.negative_prompt,
        num_images_per_prompt=request.batch,
        num_inference_steps=request.steps,
        guidance_scale=float(request.guidance),
        generator=defaults.seeded_generator(request.seed),
        progress=progress,
    )
    return [list(out.images)]


def _latent_channels(pipe: OrtStableDiffusionPipeline) -> int:
    # The UNet's declared sample channels; SD 1.x/2.x use 4 and exports may leave the dim symbolic.
    dims = pipe.unet.spec.input("sample").dims
    return dims[1] if dims is not None and len(dims) > 1 and isinstance(dims[1], int) else 4


def _load_txt2img(model_dir: Path, device: str) -> OrtStableDiffusionPipeline:
    return OrtStableDiffusionPipeline.from_pretrained(model_dir, device)


def _load_img2img(model_dir: Path, device: str) -> Any:
    # The class the command line picks: SD's or SDXL's image-to-image.
    return pipeline_for_model(model_dir, "image-to-image").from_pretrained(model_dir, device)


def _load_inpaint(model_dir: Path, device: str) -> Any:
    return pipeline_for_model(model_dir, "inpainting").from_pretrained(model_dir, device)


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
        tiny_kind: The tiny model the task runs without a model folder (see :func:`ensure_tiny_model`).
        pipeline_task: What :func:`auto.pipeline_for_model` calls the task, to tell if a folder does it.
        needs: Model folders the task needs besides the text-to-image ones.
    """

    name: str
    request: type[Txt2ImgRequest]
    load: Callable[[Path, str], Any]
    run: Callable[[Any, Sequence[Any], int, bool], list[list[Image.Image]]]
    http_fields: tuple[str, ...]
    tiny_kind: TinyKind = "sd"
    pipeline_task: PipelineTask = "text-to-image"
    needs: tuple[str, ...] = ()


TXT2IMG_HTTP_FIELDS = ("prompt", "negative_prompt", "steps", "guidance", "seed", "scheduler", "width", "height")
IMG2IMG_HTTP_FIELDS = ("prompt", "negative_prompt", "image", "strength", "steps", "guidance", "seed", "scheduler")
INPAINT_HTTP_FIELDS = (
    *("prompt", "negative_prompt", "image", "mask_image", "strength", "steps", "guidance", "seed", "scheduler"),
    *("width", "height"),
)

TASKS: dict[str, Task] = {
    "txt2img": Task("txt2img", Txt2ImgRequest, _load_txt2img, run_txt2img, TXT2IMG_HTTP_FIELDS),
    "img2img": Task(
        "img2img",
        Img2ImgRequest,
        _load_img2img,
        run_img2img,
        IMG2IMG_HTTP_FIELDS,
        pipeline_task="image-to-image",
        needs=("vae_encoder",),
    ),
    "inpaint": Task(
        "inpaint",
        InpaintRequest,
        _load_inpaint,
        run_inpaint,
        INPAINT_HTTP_FIELDS,
        tiny_kind="inpaint",
        pipeline_task="inpainting",
        needs=("vae_encoder",),
    ),
}
"""Task name -> request type, pipeline factory, runner."""
