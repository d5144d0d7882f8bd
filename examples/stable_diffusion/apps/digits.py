"""The built-in digits model's ten digits, one request each through the service, and a grid of them.

    python -m examples.stable_diffusion.apps.digits docs/digits.png [--scale 4] [--cache-dir DIR]

Each digit is the request ``{"prompt": "a handwritten N"}`` with every other field at its default,
run alone: the picture ``txt2img --prompt "a handwritten N"`` writes. The page shows the same ten
on its first screen when it runs the built-in model; the README's grid is this command's output.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from .errors import AppError
from .service import Service

__all__ = ["DIGIT_PROMPTS", "digit_grid", "draw_digits", "main"]

DIGIT_PROMPTS = tuple(f"a handwritten {digit}" for digit in range(10))
"""The prompts of the ten digits, 0 to 9."""


def draw_digits(service: Service) -> list[Image.Image]:
    """The ten digits, 0 to 9, each its own request with the defaults (seed 0) and run alone.

    Alone, not as one shared call: a picture is then the command line's to the bit (a larger
    UNet batch may round a pixel differently). On the digits model ten runs take about a second.

    Raises:
        AppError: A request was refused or its run failed.
    """
    images: list[Image.Image] = []
    for prompt in DIGIT_PROMPTS:
        request = service.parse("txt2img", {"prompt": prompt})
        (outcome,) = service.run([request])
        if isinstance(outcome, AppError):
            raise outcome
        images.extend(outcome.images)
    return images


def digit_grid(images: Sequence[Image.Image], *, scale: int = 1) -> Image.Image:
    """The images side by side in one row, each enlarged ``scale`` times (nearest neighbour: its pixels stay sharp)."""
    if not images:
        raise ValueError("images: expected at least one, got none")
    width, height = images[0].size
    grid = Image.new("RGB", (width * scale * len(images), height * scale))
    for index, image in enumerate(images):
        if image.size != (width, height):
            raise ValueError(
                f"images[{index}]: expected {width}x{height} like the first, got {image.width}x{image.height}"
            )
        enlarged = image.convert("RGB").resize((width * scale, height * scale), Image.Resampling.NEAREST)
        grid.paste(enlarged, (index * width * scale, 0))
    return grid


def main(argv: Sequence[str] | None = None) -> int:
    """Draw the ten digits on the built-in model and write them as one PNG row; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.stable_diffusion.apps.digits",
        description="Draw the digits 0 to 9 with the built-in digits model ('a handwritten N', the defaults) "
        "and write them side by side as one PNG.",
    )
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--scale", type=int, default=4, help="enlarge each picture this many times (default: 4)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the built-in model is exported to ONNX")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    if args.scale < 1:
        parser.error(f"--scale: must be at least 1, got {args.scale}")
    try:
        images = draw_digits(Service(None, args.device, cache_dir=args.cache_dir))
    except AppError as exc:
        print(f"digits: error: {exc.message}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    digit_grid(images, scale=args.scale).save(args.out)
    print(f"wrote {args.out}: {DIGIT_PROMPTS[0]!r} to {DIGIT_PROMPTS[-1]!r}, every other field at its default")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
