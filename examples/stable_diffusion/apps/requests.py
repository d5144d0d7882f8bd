"""The requests the command lines, the web page and the server take: one definition per task.

A task is a tuple of :class:`Field`\\ s. A field's name is the JSON key, the page's parameter and
the command line's ``--option``; its kind, default, bounds and help are written here once, and
:func:`parse` is the one function that turns what a caller sent into a :class:`Request` or a
:class:`.errors.RequestError` naming the field. The command lines build their options from the
fields, the page its form and API, the server its routes and ``GET /`` listing.

The defaults that do not depend on the model are the ones the built-in digits model draws well
with (``models/MODEL_CARD.md``): the prompt ``"a handwritten 7"``, 25 steps, guidance 5, and the
model's own scheduler (DDIM for the digits model).

Defaults and limits that depend on the model come from :class:`ModelFacts`, which the service
(:mod:`.service`) reads from the folder a task runs: the image size (the UNet's ``sample_size``
times the VAE's scale factor), what sizes must be multiples of, the most pixels one image may
have (four times the default's) and one call may make (by the memory at hand), and the
scheduler (the one ``scheduler_config.json`` names).

An image field takes the file's bytes: a ``Path`` (command lines, the page's uploads), ``bytes``,
or, in a JSON body, a base64 string (optionally a ``data:image/png;base64,`` URL). Its size is
read from the file's header and checked before anything is decoded.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image, UnidentifiedImageError

from ..pipelines._schedulers import SCHEDULERS
from .errors import BodyError, RequestError

__all__ = [
    "MODEL_SCHEDULER",
    "SCHEDULER_CHOICES",
    "TASKS",
    "Field",
    "Limits",
    "ModelFacts",
    "Request",
    "decode_image",
    "json_body",
    "parse",
]

PROMPT = "a handwritten 7"
"""The default prompt: a digit, which the built-in digits model draws (``make demo`` asks for it too)."""
MODEL_SCHEDULER = "model"
"""The scheduler name that stands for the class the model's ``scheduler_config.json`` names."""
SCHEDULER_CHOICES = (MODEL_SCHEDULER, *SCHEDULERS)
# The largest whole number a browser's JavaScript holds exactly: the page's seed box sends a double.
MAX_SEED = 2**53 - 1
# Image file formats a request may carry; PIL would open many more (EPS, PSD...), none needed here.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")


@dataclass(frozen=True)
class Limits:
    """The most a request may ask for, whatever the model.

    Attributes:
        max_steps: Denoising steps (a schedule's arrays grow with them).
        max_batch: Images per request.
        max_guidance: Guidance scale (far above any useful value, below where the numbers overflow).
        max_prompt_chars: Characters of a prompt (the encoder reads 77 tokens; the rest costs tokenizing).
        max_image_bytes: Bytes of one image file sent.
        max_json_bytes: Bytes of an HTTP body; set from ``max_image_bytes`` by default.
    """

    max_steps: int = 150
    max_batch: int = 8
    max_guidance: float = 30.0
    max_prompt_chars: int = 10_000
    max_image_bytes: int = 16 * 2**20
    max_json_bytes: int = 0

    def json_bytes(self) -> int:
        """Bytes of an HTTP body: two images in base64 (4/3 of their bytes) and room for the rest."""
        return self.max_json_bytes or 2 * (self.max_image_bytes * 4 // 3 + 4) + 2**20


@dataclass(frozen=True)
class ModelFacts:
    """What a task's defaults and limits are on one model (see :meth:`.service.Service.facts`).

    Attributes:
        default_size: The image side when none is given: the UNet's ``sample_size`` times the VAE's
            scale factor (32 on the built-in digits model, 64 on the tiny random-weight ones, 512 for
            SD 1.5, 1024 for SDXL).
        size_multiple: Heights and widths must be multiples of it (the VAE's scale factor times the
            UNet's downsampling).
        max_pixels: The most pixels one image may have: four times the default image's.
        max_call_pixels: The most pixels (width x height x batch) one pipeline call may make, by
            the memory at hand when the model was loaded.
        memory_note: How ``max_call_pixels`` was found, for messages.
        limits: The limits that do not depend on the model.
    """

    default_size: int
    size_multiple: int
    max_pixels: int
    max_call_pixels: int
    memory_note: str = ""
    limits: Limits = field(default_factory=Limits)

    @property
    def max_side(self) -> int:
        """The longest side the page offers: four times the default, within ``max_pixels`` and the multiple."""
        longest = min(4 * self.default_size, self.max_pixels // self.size_multiple)
        return max(self.size_multiple, longest - longest % self.size_multiple)


Kind = Literal["text", "int", "number", "choice", "image"]


@dataclass(frozen=True)
class Field:
    """One request field.

    Attributes:
        name: The JSON key and the page's parameter; ``--name-with-dashes`` on the command line.
        kind: ``text``, ``int`` (whole numbers), ``number`` (finite floats), ``choice`` or ``image``.
        help: What it is, for ``--help``, the page's label info and ``GET /``.
        default: The value when none is given, or a function of the model's :class:`ModelFacts`.
            ``None`` for a text field: no such text. Image fields have none: they are required.
        bounds: ``(lowest, highest)`` for numbers, from the model's facts.
        limit: Why the highest bound is what it is, for the message that refuses a value above it.
        choices: The values a ``choice`` field takes.
        server: Whether the HTTP routes take it (the server answers with one PNG, so no ``batch``).
        flag: The command line's option when it is not ``--name`` (``--mask`` for ``mask_image``).
        mode: The PIL mode an image is converted to (``RGB``; ``L`` for masks).
    """

    name: str
    kind: Kind
    help: str
    default: Any = None
    bounds: Callable[[ModelFacts], tuple[float, float]] | None = None
    limit: str = ""
    choices: tuple[str, ...] = ()
    server: bool = True
    flag: str | None = None
    mode: str = "RGB"

    @property
    def required(self) -> bool:
        """Image fields must be given; every other field has a default."""
        return self.kind == "image"

    def default_for(self, facts: ModelFacts) -> Any:
        """The default on a model: a constant, or what the model's facts say."""
        return self.default(facts) if callable(self.default) else self.default

    def option(self) -> str:
        """The command line's option: ``--negative-prompt`` for ``negative_prompt``."""
        return self.flag or "--" + self.name.replace("_", "-")


def _size_default(facts: ModelFacts) -> int:
    """the model's size (its UNet's sample_size x its VAE's scale factor)"""
    return facts.default_size


PROMPT_FIELD = Field("prompt", "text", "what to draw", default=PROMPT)
NEGATIVE_FIELD = Field("negative_prompt", "text", "what to steer away from")
STEPS_FIELD = Field(
    "steps",
    "int",
    "denoising steps",
    default=25,
    bounds=lambda facts: (1, facts.limits.max_steps),
    limit="the most steps one request may run",
)
GUIDANCE_FIELD = Field(
    "guidance",
    "number",
    "classifier-free guidance scale (at or below 1: off)",
    default=5.0,
    bounds=lambda facts: (0.0, facts.limits.max_guidance),
    limit="far above any useful guidance",
)
SEED_FIELD = Field(
    "seed",
    "int",
    "the seed of the random draws; the same seed gives the same picture",
    default=0,
    bounds=lambda facts: (0, MAX_SEED),
    limit="2**53 - 1, the largest whole number a browser holds exactly",
)
SCHEDULER_FIELD = Field(
    "scheduler",
    "choice",
    f"diffusers scheduler ('{MODEL_SCHEDULER}': the one the model's scheduler_config.json names)",
    default=MODEL_SCHEDULER,
    choices=SCHEDULER_CHOICES,
)


def _side_field(name: str) -> Field:
    return Field(
        name,
        "int",
        "pixels, a multiple of the model's size multiple",
        default=_size_default,
        bounds=lambda facts: (facts.size_multiple, facts.max_side),
        limit="the longest side this model makes",
    )


WIDTH_FIELD = _side_field("width")
HEIGHT_FIELD = _side_field("height")
BATCH_FIELD = Field(
    "batch",
    "int",
    "images per prompt",
    default=1,
    bounds=lambda facts: (1, facts.limits.max_batch),
    limit="the most images one request may make",
    server=False,
)
IMAGE_FIELD = Field("image", "image", "the starting image, a PNG, JPEG or WebP file")
MASK_FIELD = Field(
    "mask_image", "image", "the mask: white where to repaint, black where to keep", flag="--mask", mode="L"
)


def _strength_field(default: float, help_text: str) -> Field:
    return Field("strength", "number", help_text, default=default, bounds=lambda facts: (0.0, 1.0))


TASKS: dict[str, tuple[Field, ...]] = {
    "txt2img": (
        PROMPT_FIELD,
        NEGATIVE_FIELD,
        STEPS_FIELD,
        GUIDANCE_FIELD,
        SEED_FIELD,
        SCHEDULER_FIELD,
        WIDTH_FIELD,
        HEIGHT_FIELD,
        BATCH_FIELD,
    ),
    "img2img": (
        PROMPT_FIELD,
        NEGATIVE_FIELD,
        IMAGE_FIELD,
        _strength_field(0.8, "how much of the schedule runs from the noised image, 0 to 1 (1 ignores the image)"),
        STEPS_FIELD,
        GUIDANCE_FIELD,
        SEED_FIELD,
        SCHEDULER_FIELD,
        BATCH_FIELD,
    ),
    "inpaint": (
        PROMPT_FIELD,
        NEGATIVE_FIELD,
        Field("image", "image", "the image to repaint, a PNG, JPEG or WebP file (resized to width x height)"),
        MASK_FIELD,
        _strength_field(1.0, "below 1, start from the noised image instead of pure noise"),
        STEPS_FIELD,
        GUIDANCE_FIELD,
        SEED_FIELD,
        SCHEDULER_FIELD,
        WIDTH_FIELD,
        HEIGHT_FIELD,
        BATCH_FIELD,
    ),
}
"""Task name -> its fields, in the order the page shows them."""


@dataclass(frozen=True)
class Request:
    """One checked request, every default resolved: what the service runs.

    ``width`` and ``height`` are the picture's (for img2img, the image's size rounded down to the
    model's size multiple); ``strength``, ``image`` and ``mask_image`` are None where the task has
    no such field.
    """

    task: str
    prompt: str
    negative_prompt: str | None
    steps: int
    guidance: float
    seed: int
    scheduler: str
    width: int
    height: int
    batch: int
    strength: float | None = None
    image: Image.Image | None = field(default=None, compare=False)
    mask_image: Image.Image | None = field(default=None, compare=False)

    @property
    def pixels(self) -> int:
        """Pixels the request makes: width x height x batch."""
        return self.width * self.height * self.batch


def fields_of(task: str, *, server: bool = False) -> tuple[Field, ...]:
    """The task's fields; with ``server``, those the HTTP routes take.

    Raises:
        KeyError: No such task.
    """
    return tuple(f for f in TASKS[task] if f.server or not server)


def parse(task: str, values: Mapping[str, object], facts: ModelFacts, *, server: bool = False) -> Request:
    """Check what a caller sent for ``task`` and resolve every default from the model's facts.

    Args:
        task: A key of :data:`TASKS`.
        values: Field name -> value, as the caller sent them; a missing or ``None`` value takes the
            default. Numbers may be floats with no fraction (the page's sliders send those).
        facts: The model's defaults and limits (:meth:`.service.Service.facts`).
        server: Take only the fields the HTTP routes take.

    Raises:
        RequestError: A field is unknown, missing, of the wrong type or out of range, or the
            picture would be larger than the model or the memory allows; the message names it.
    """
    if not isinstance(values, Mapping):
        raise BodyError(f"expected a JSON object, got {_shown(values)}")
    fields = fields_of(task, server=server)
    names = [f.name for f in fields]
    unknown = sorted(str(name) for name in values if name not in names)
    if unknown:
        raise RequestError(unknown[0], f"unknown field; the fields are {', '.join(names)}")
    given: dict[str, Any] = {}
    for spec in TASKS[task]:
        raw = values.get(spec.name) if spec in fields else None
        if raw is None:
            if spec.required:
                raise RequestError(spec.name, f"missing; send {spec.help}")
            given[spec.name] = spec.default_for(facts)
        else:
            given[spec.name] = _PARSERS[spec.kind](spec, raw, facts)
    return _resolved(task, given, facts)


def _resolved(task: str, given: dict[str, Any], facts: ModelFacts) -> Request:
    """The cross-field checks: the size against the model and the memory, strength against steps."""
    multiple = facts.size_multiple
    image: Image.Image | None = given.get("image")
    if task == "img2img":
        assert image is not None
        # The picture keeps the image's size, rounded down to what the model runs (as the pipeline does).
        width, height = (side - side % multiple for side in image.size)
        if width < multiple or height < multiple:
            raise RequestError(
                "image",
                f"a {image.width}x{image.height} image makes no picture: its sides must be at least {multiple} "
                f"pixels (the model's size multiple); send a larger image",
            )
        if width * height > facts.max_pixels:
            raise RequestError(
                "image",
                f"a {image.width}x{image.height} image ({width * height} pixels) is larger than the "
                f"{facts.max_pixels} pixels this model makes at most; send a smaller image",
            )
    else:
        width, height = given["width"], given["height"]
        for name, value in (("width", width), ("height", height)):
            if value % multiple:
                lower = value - value % multiple
                raise RequestError(
                    name,
                    f"must be a multiple of {multiple} (this model's VAE scale factor x UNet downsampling), "
                    f"got {value}; try {lower if lower >= multiple else multiple}",
                )
        if width * height > facts.max_pixels:
            raise RequestError(
                "width",
                f"{width}x{height} is {width * height} pixels, more than the {facts.max_pixels} this model "
                f"makes at most (four times its default {facts.default_size}x{facts.default_size}); ask for less",
            )
    batch = given["batch"]
    if width * height * batch > facts.max_call_pixels:
        raise RequestError(
            "batch" if batch > 1 else "width",
            f"{batch} x {width}x{height} is {width * height * batch} pixels, more than the "
            f"{facts.max_call_pixels} one call may make here ({facts.memory_note}); ask for fewer or smaller images",
        )
    strength = given.get("strength")
    if strength is not None and int(given["steps"] * strength) < 1:
        # The pipelines run int(steps * strength) of the steps; none is no picture.
        raise RequestError(
            "strength",
            f"{strength} of {given['steps']} steps runs no step; raise strength to at least "
            f"{1 / given['steps']:.3g} or the steps",
        )
    return Request(
        task=task,
        prompt=given["prompt"],
        negative_prompt=given["negative_prompt"],
        steps=given["steps"],
        guidance=given["guidance"],
        seed=given["seed"],
        scheduler=given["scheduler"],
        width=width,
        height=height,
        batch=batch,
        strength=strength,
        image=image,
        mask_image=given.get("mask_image"),
    )


# ---------------------------------------------------------------------- one parser per kind


def _text(spec: Field, raw: object, facts: ModelFacts) -> str:
    if not isinstance(raw, str):
        raise RequestError(spec.name, f"expected text, got {_shown(raw)}")
    if len(raw) > facts.limits.max_prompt_chars:
        raise RequestError(
            spec.name,
            f"{len(raw)} characters, more than the {facts.limits.max_prompt_chars} taken (the text encoder "
            f"reads the first 77 tokens); send a shorter text",
        )
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(
            spec.name, f"not valid Unicode: a lone surrogate {raw[exc.start]!r} at index {exc.start}; send UTF-8 text"
        ) from None
    return raw


def _whole(spec: Field, raw: object, facts: ModelFacts) -> int:
    if isinstance(raw, float) and math.isfinite(raw) and raw.is_integer():
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise RequestError(spec.name, f"expected a whole number, got {_shown(raw)}")
    return int(_within(spec, raw, facts))


def _number(spec: Field, raw: object, facts: ModelFacts) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise RequestError(spec.name, f"expected a number, got {_shown(raw)}")
    value = float(raw)
    if not math.isfinite(value):
        raise RequestError(spec.name, f"must be a finite number, got {value!r}")
    return float(_within(spec, value, facts))


def _within(spec: Field, value: float, facts: ModelFacts) -> float:
    assert spec.bounds is not None
    low, high = spec.bounds(facts)
    if value < low:
        raise RequestError(spec.name, f"must be at least {_number_text(low)}, got {_number_text(value)}")
    if value > high:
        why = f" ({spec.limit})" if spec.limit else ""
        raise RequestError(spec.name, f"must be at most {_number_text(high)}{why}, got {_number_text(value)}")
    return value


def _choice(spec: Field, raw: object, facts: ModelFacts) -> str:
    if not isinstance(raw, str) or raw not in spec.choices:
        raise RequestError(spec.name, f"expected one of {', '.join(spec.choices)}, got {_shown(raw)}")
    return raw


def _image(spec: Field, raw: object, facts: ModelFacts) -> Image.Image:
    # img2img's picture has the image's size; inpaint resizes it, so a larger one (up to 4x) is fine.
    max_pixels = 4 * facts.max_pixels
    if isinstance(raw, Image.Image):
        _check_pixels(spec.name, raw.width, raw.height, max_pixels)
        return raw.convert(spec.mode)
    if isinstance(raw, Path):
        try:
            size = raw.stat().st_size
            if size > facts.limits.max_image_bytes:
                raise RequestError(spec.name, _too_many_bytes(size, facts.limits.max_image_bytes))
            data = raw.read_bytes()
        except OSError as exc:
            raise RequestError(
                spec.name, f"cannot read {raw} ({exc.strerror or exc}); give a PNG or JPEG file"
            ) from None
    elif isinstance(raw, bytes):
        data = raw
    elif isinstance(raw, str):
        data = _base64(spec.name, raw, facts.limits.max_image_bytes)
    else:
        raise RequestError(spec.name, f"expected a base64-encoded PNG as text, got {_shown(raw)}")
    return decode_image(spec.name, data, mode=spec.mode, max_pixels=max_pixels, max_bytes=facts.limits.max_image_bytes)


_PARSERS: dict[Kind, Callable[[Field, object, ModelFacts], Any]] = {
    "text": _text,
    "int": _whole,
    "number": _number,
    "choice": _choice,
    "image": _image,
}


def decode_image(field_name: str, data: bytes, *, mode: str, max_pixels: int, max_bytes: int) -> Image.Image:
    """The image a file's bytes hold, converted to ``mode``, its size checked before it is decoded.

    Args:
        field_name: The field, for errors.
        data: A PNG, JPEG or WebP file.
        mode: The PIL mode to convert to (``RGB``; ``L`` for masks).
        max_pixels: The most pixels the image may have; its header says, before any pixel is decoded.
        max_bytes: The most bytes the file may have.

    Raises:
        RequestError: Too many bytes or pixels (PIL's own ``DecompressionBombError`` included), or
            not an image file of those formats.
    """
    if len(data) > max_bytes:
        raise RequestError(field_name, _too_many_bytes(len(data), max_bytes))
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            _check_pixels(field_name, image.width, image.height, max_pixels)
            return image.convert(mode)
    except RequestError:
        raise
    except Image.DecompressionBombError as exc:
        # Not an OSError: PIL refuses before our check can, for images of hundreds of megapixels.
        raise RequestError(field_name, f"{exc}; send a smaller image") from None
    except UnidentifiedImageError:
        raise RequestError(
            field_name, f"{len(data)} bytes that are not a PNG, JPEG or WebP file; send a PNG or JPEG file"
        ) from None
    except Exception as exc:
        raise RequestError(
            field_name,
            f"a broken image file of {len(data)} bytes ({type(exc).__name__}: {exc}); send a PNG or JPEG file",
        ) from None


def _check_pixels(field_name: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise RequestError(
            field_name,
            f"a {width}x{height} image has {width * height} pixels, more than the {max_pixels} taken "
            f"for this model; send a smaller image",
        )


def _base64(field_name: str, text: str, max_bytes: int) -> bytes:
    body = text.split(",", 1)[1] if text.startswith("data:") and "," in text else text
    if len(body) > max_bytes * 4 // 3 + 4:
        raise RequestError(field_name, _too_many_bytes(len(body) * 3 // 4, max_bytes))
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(
            field_name, f"not valid base64 ({exc}); send the PNG file's bytes base64-encoded (base64 -w0)"
        ) from None


def _too_many_bytes(size: int, max_bytes: int) -> str:
    return f"a file of {size} bytes, more than the {max_bytes} taken; send a smaller file"


# ---------------------------------------------------------------------- JSON bodies


def json_body(raw: bytes, limits: Limits) -> dict[str, Any]:
    """An HTTP body as a JSON object, refusing what ``json.loads`` alone would let through.

    NaN and Infinity are not JSON (Python's parser takes them), a body nested deeper than the
    parser's recursion limit is refused rather than crashing it, and the size is checked first.

    Raises:
        BodyError: Too large (413), not JSON, or not an object (400).
    """
    if len(raw) > limits.json_bytes():
        raise BodyError(f"{len(raw)} bytes, more than the {limits.json_bytes()} taken", too_large=True)
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise BodyError('not valid JSON (nested too deep); send a flat object such as {"prompt": "a cat"}') from None
    except ValueError as exc:
        raise BodyError(f'not valid JSON ({exc}); send an object such as {{"prompt": "a cat"}}') from None
    if not isinstance(body, dict):
        raise BodyError(f"expected a JSON object, got {_shown(body)}")
    return body


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _shown(value: object) -> str:
    """A value and its type, short: ``"many" (str)``, ``[1, 2] (list)``."""
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{text} ({type(value).__name__})"


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**63 else repr(value)
