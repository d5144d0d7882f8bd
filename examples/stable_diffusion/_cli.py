"""The options and the run-and-save logic the three command lines (txt2img, img2img, inpaint) share."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import defaults
from ._base import SCHEDULERS, OrtPipelineBase, PipelineOutput
from .cache import ensure_tiny_model
from .tiny import TinyKind

__all__ = ["TINY_SIZE", "add_common_options", "add_size_options", "open_image", "parser_for", "run_cli"]

TINY_SIZE = defaults.TINY_SIZE
"""Default image size on the tiny models (their UNet's sample_size times 8)."""


def parser_for(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A parser for one of the command lines, with the options they all take."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=doc.split("\n\n")[0] if doc else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_common_options(parser)
    return parser


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Add the options every command line takes: prompt, model, sampling, device and output."""
    parser.add_argument("--prompt", default=defaults.PROMPT, help="what to draw")
    parser.add_argument("--negative-prompt", default=None, help="what to steer away from")
    parser.add_argument("--model", type=Path, default=None, help="ONNX model folder; default: the built-in tiny model")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the tiny model is built")
    parser.add_argument(
        "--out", type=Path, default=Path("out.png"), help="PNG to write (out-0.png, ... for several images)"
    )
    parser.add_argument("--steps", type=int, default=defaults.STEPS, help="denoising steps")
    parser.add_argument(
        "--guidance", type=float, default=defaults.GUIDANCE, help="classifier-free guidance scale (<= 1 disables it)"
    )
    parser.add_argument(
        "--scheduler",
        choices=[*sorted(SCHEDULERS), "model"],
        default=defaults.SCHEDULER,
        help="diffusers scheduler ('model': the one the model's scheduler_config.json names)",
    )
    parser.add_argument("--seed", type=int, default=defaults.SEED, help="random seed")
    parser.add_argument("--batch", type=int, default=1, help="images per prompt")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--cuda-graph",
        action="store_true",
        help="capture the UNet step as a CUDA graph and replay it (CUDA devices only)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_size_options(parser: argparse.ArgumentParser) -> None:
    """``--height`` and ``--width`` (text-to-image and inpainting)."""
    for name in ("height", "width"):
        parser.add_argument(
            f"--{name}",
            type=int,
            default=None,
            help=f"pixels, a multiple of the VAE's scale factor (default {TINY_SIZE} tiny, the model's otherwise)",
        )


def run_cli(
    prog: str,
    args: argparse.Namespace,
    tiny_kind: TinyKind,
    choose: Callable[[Path], type[OrtPipelineBase]],
    call: Callable[[Any, dict[str, Any]], PipelineOutput],
) -> int:
    """Load the model (building the tiny one without ``--model``), run it, save and report.

    Args:
        prog: The command's name, for error messages.
        args: Parsed options (see :func:`add_common_options`).
        tiny_kind: Which tiny model runs without ``--model``.
        choose: The pipeline class for a model folder.
        call: Runs the pipeline with the common keyword arguments plus the command's own.

    Returns:
        The exit status: 0, or 2 after printing a clear error.
    """
    try:
        model_dir = args.model if args.model is not None else ensure_tiny_model(args.cache_dir, kind=tiny_kind)
        cls = choose(model_dir)
        scheduler = None if args.scheduler == "model" else args.scheduler
        pipe = cls.from_pretrained(model_dir, args.device, scheduler=scheduler, cuda_graph=args.cuda_graph)
        common = {
            "negative_prompt": args.negative_prompt,
            "num_images_per_prompt": args.batch,
            "num_inference_steps": args.steps,
            "guidance_scale": args.guidance,
            "generator": defaults.seeded_generator(args.seed),
            "progress": not args.no_progress,
        }
        result = call(pipe, common)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2

    args.out.parent.mkdir(parents=True, exist_ok=True)
    paths = (
        [args.out]
        if len(result.images) == 1
        else [args.out.with_name(f"{args.out.stem}-{i}{args.out.suffix}") for i in range(len(result.images))]
    )
    for image, path in zip(result.images, paths, strict=True):
        image.save(path)
    width, height = result.images[0].size
    outside = 1 - result.ort_seconds / result.seconds if result.seconds else 0.0
    print(f"model: {model_dir} ({'built-in tiny random weights: noise, not art' if args.model is None else 'given'})")
    print(
        f"pipeline: {cls.__name__}; device: {pipe.device}; scheduler: {type(pipe.scheduler).__name__}; "
        f"{width}x{height}; {args.steps} steps; batch {args.batch}"
    )
    print(
        f"time: {result.seconds:.2f} s total, {result.seconds_per_step * 1000:.1f} ms per step, "
        f"{outside:.0%} outside ONNX Runtime"
    )
    for path in paths:
        print(f"wrote {path}")
    return 0


def open_image(path: Path, mode: str = "RGB") -> Any:
    """A PIL image from ``path``, loaded and converted, with a clear error when it cannot be read."""
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except (FileNotFoundError, UnidentifiedImageError) as error:
        raise ValueError(f"{path}: cannot read an image ({error}); pass a PNG or JPEG file") from error
