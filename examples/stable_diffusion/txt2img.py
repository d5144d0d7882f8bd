"""Text to image from the command line.

    python -m examples.stable_diffusion.txt2img --prompt "an astronaut riding a horse" --out out.png

Without ``--model``, a tiny random-weight Stable Diffusion is built offline on first use (cached
under ``$ORTBIND_CACHE`` or ``~/.cache/ortbind``) and used: it makes noise, not art, but runs the
whole pipeline in seconds on a CPU. ``--model DIR`` runs a real diffusers ONNX export (SD 1.x/2.x).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import defaults
from .defaults import REAL_SIZE, TINY_SIZE
from .export import ensure_tiny_model
from .pipeline import SCHEDULERS, OrtStableDiffusionPipeline

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    parser = argparse.ArgumentParser(
        prog="txt2img",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--prompt", default=defaults.PROMPT, help="what to draw")
    parser.add_argument("--negative-prompt", default=None, help="what to steer away from")
    parser.add_argument(
        "--model", type=Path, default=None, help="diffusers ONNX folder; default: the built-in tiny model"
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the tiny model is built")
    parser.add_argument(
        "--out", type=Path, default=Path("out.png"), help="PNG to write (out-1.png, ... for --batch > 1)"
    )
    parser.add_argument("--steps", type=int, default=defaults.STEPS, help="denoising steps")
    parser.add_argument(
        "--guidance", type=float, default=defaults.GUIDANCE, help="classifier-free guidance scale (<= 1 disables it)"
    )
    parser.add_argument(
        "--scheduler", choices=sorted(SCHEDULERS), default=defaults.SCHEDULER, help="diffusers scheduler"
    )
    parser.add_argument("--seed", type=int, default=defaults.SEED, help="random seed")
    parser.add_argument(
        "--height", type=int, default=None, help=f"pixels, multiple of 8 (default {TINY_SIZE} tiny, {REAL_SIZE} real)"
    )
    parser.add_argument(
        "--width", type=int, default=None, help=f"pixels, multiple of 8 (default {TINY_SIZE} tiny, {REAL_SIZE} real)"
    )
    parser.add_argument("--batch", type=int, default=1, help="images per prompt")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m examples.stable_diffusion.txt2img`` and ``ortbind-txt2img``."""
    args = build_parser().parse_args(argv)
    default_size = defaults.default_size(tiny=args.model is None)
    height = args.height or default_size
    width = args.width or default_size
    try:
        model_dir = args.model if args.model is not None else ensure_tiny_model(args.cache_dir)
        pipe = OrtStableDiffusionPipeline.from_pretrained(model_dir, args.device, scheduler=args.scheduler)
        generator = defaults.seeded_generator(args.seed)
        result = pipe(
            args.prompt,
            negative_prompt=args.negative_prompt,
            num_images_per_prompt=args.batch,
            height=height,
            width=width,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            generator=generator,
            progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"txt2img: error: {exc}", file=sys.stderr)
        return 2

    args.out.parent.mkdir(parents=True, exist_ok=True)
    paths = (
        [args.out]
        if len(result.images) == 1
        else [args.out.with_name(f"{args.out.stem}-{i}{args.out.suffix}") for i in range(len(result.images))]
    )
    for image, path in zip(result.images, paths, strict=True):
        image.save(path)
    outside = 1 - result.ort_seconds / result.seconds if result.seconds else 0.0
    print(f"model: {model_dir} ({'built-in tiny random weights: noise, not art' if args.model is None else 'given'})")
    print(
        f"device: {pipe.device}; scheduler: {args.scheduler}; {width}x{height}; {args.steps} steps; batch {args.batch}"
    )
    print(
        f"time: {result.seconds:.2f} s total, {result.seconds_per_step * 1000:.1f} ms per step, "
        f"{outside:.0%} outside ONNX Runtime"
    )
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
