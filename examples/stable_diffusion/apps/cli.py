"""The command lines ``txt2img``, ``img2img`` and ``inpaint``: options from the request fields, one run, PNG files.

Each command's options are its task's :data:`.requests.TASKS` fields (``--steps``,
``--negative-prompt``, ``--mask`` for ``mask_image``...) plus where to run and what to write
(``--model``, ``--device``, ``--out``...). An option left out takes the default the request layer
resolves from the model, as on the page and the server: the same request gives the same picture
on all three.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import AppError
from .requests import TASKS, Field
from .service import Service, add_model_options

__all__ = ["build_parser", "img2img", "inpaint", "main", "txt2img"]

_DESCRIPTIONS = {
    "txt2img": "Text to image on an ONNX Stable Diffusion folder (SD 1.x/2.x or SDXL).",
    "img2img": "Image to image on an ONNX Stable Diffusion folder with a vae_encoder/ (SD 1.x/2.x or SDXL).",
    "inpaint": "Inpainting on an ONNX inpainting folder (a 9-channel UNet): repaint the white part of the mask.",
}
_TEXT_TYPES: dict[str, Any] = {"text": str, "int": int, "number": float, "choice": str, "image": Path}


def build_parser(task: str) -> argparse.ArgumentParser:
    """The parser of ``task``'s command: its request fields, then where to run and what to write."""
    parser = argparse.ArgumentParser(
        prog=task,
        description=_DESCRIPTIONS[task]
        + " Without --model, the built-in digits model (trained on scikit-learn's handwritten digits) draws the "
        "digit the prompt names; it is exported to ONNX on first use.",
    )
    for spec in TASKS[task]:
        parser.add_argument(spec.option(), dest=spec.name, **_option(spec))
    add_model_options(parser)
    parser.add_argument(
        "--out", type=Path, default=Path("out.png"), help="PNG to write; out-0.png, out-1.png... for several images"
    )
    parser.add_argument(
        "--cuda-graph", action="store_true", help="capture the UNet step as a CUDA graph and replay it (CUDA only)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _option(spec: Field) -> dict[str, Any]:
    """``add_argument`` keywords for a field; a value left out stays out, for the request layer to resolve."""
    default = spec.default
    shown = default.__doc__ if callable(default) else ("none" if default is None else repr(default))
    options: dict[str, Any] = {
        "type": _TEXT_TYPES[spec.kind],
        "help": f"{spec.help} (default: {shown})" if not spec.required else spec.help,
    }
    if spec.required:
        options["required"] = True
    else:
        options["default"] = argparse.SUPPRESS
    if spec.kind == "choice":
        options["choices"] = spec.choices
    return options


def main(task: str, argv: Sequence[str] | None = None) -> int:
    """Run ``task``'s command: parse, run the request, write the PNG files, report.

    Returns:
        The exit status: 0, or 2 after printing what went wrong (a field named when it is one).
    """
    args = build_parser(task).parse_args(argv)
    values = {spec.name: getattr(args, spec.name) for spec in TASKS[task] if hasattr(args, spec.name)}
    service = Service(args.model, args.device, cache_dir=args.cache_dir, cuda_graph=args.cuda_graph)
    try:
        request = service.parse(task, values)
        result = service.generate(request, progress=not args.no_progress)
    except AppError as exc:
        print(f"{task}: error: {exc.message}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
        # Loading the model: a folder that is not one, a part missing, a provider that will not start.
        print(f"{task}: error: {exc}", file=sys.stderr)
        return 2

    args.out.parent.mkdir(parents=True, exist_ok=True)
    out: Path = args.out
    paths = (
        [out]
        if len(result.images) == 1
        else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(len(result.images))]
    )
    for image, path in zip(result.images, paths, strict=True):
        image.save(path)
    outside = 1 - result.ort_seconds / result.seconds if result.seconds else 0.0
    model = "built-in digits model: ask for a digit, 0 to 9" if service.builtin else "given"
    print(f"model: {service.folder(task)} ({model})")
    print(
        f"pipeline: {result.pipeline}; device: {args.device}; scheduler: {result.scheduler}; "
        f"{request.width}x{request.height}; {request.steps} steps; batch {request.batch}"
    )
    print(
        f"time: {result.seconds:.2f} s total, {result.seconds_per_step * 1000:.1f} ms per step, "
        f"{outside:.0%} outside ONNX Runtime"
    )
    for path in paths:
        print(f"wrote {path}")
    return 0


def txt2img(argv: Sequence[str] | None = None) -> int:
    """``python -m examples.stable_diffusion.txt2img`` and ``ortbind-txt2img``."""
    return main("txt2img", argv)


def img2img(argv: Sequence[str] | None = None) -> int:
    """``python -m examples.stable_diffusion.img2img`` and ``ortbind-img2img``."""
    return main("img2img", argv)


def inpaint(argv: Sequence[str] | None = None) -> int:
    """``python -m examples.stable_diffusion.inpaint`` and ``ortbind-inpaint``."""
    return main("inpaint", argv)
