"""Image to image from the command line.

    python -m examples.stable_diffusion.img2img --image in.png --strength 0.7 --prompt "a watercolor" --out out.png

Without ``--model``, the tiny random-weight Stable Diffusion is built offline on first use (as for
txt2img) and used. ``--model DIR`` runs any ONNX folder with a ``vae_encoder/`` (SD 1.x/2.x or
SDXL, in diffusers' or optimum's layout).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._cli import open_image, parser_for, run_cli
from .auto import pipeline_for_model

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    parser = parser_for("img2img", __doc__)
    parser.add_argument("--image", type=Path, required=True, help="the starting image (PNG or JPEG)")
    parser.add_argument(
        "--strength", type=float, default=0.8, help="how much to change the image, 0 to 1 (1 ignores it)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m examples.stable_diffusion.img2img`` and ``ortbind-img2img``."""
    args = build_parser().parse_args(argv)

    def call(pipe: Any, common: dict[str, Any]) -> Any:
        return pipe(args.prompt, image=open_image(args.image), strength=args.strength, **common)

    return run_cli("img2img", args, "sd", lambda folder: pipeline_for_model(folder, "image-to-image"), call)


if __name__ == "__main__":
    raise SystemExit(main())
