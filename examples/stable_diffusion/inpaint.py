"""Inpainting from the command line: repaint the white part of a mask.

    python -m examples.stable_diffusion.inpaint --image in.png --mask mask.png --prompt "a red door" --out out.png

Without ``--model``, a tiny random-weight inpainting model (a 9-channel UNet) is built offline on
first use (cached like txt2img's) and used. ``--model DIR`` runs an inpainting ONNX folder.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._cli import TINY_SIZE, add_size_options, open_image, parser_for, run_cli
from .auto import pipeline_for_model

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    parser = parser_for("inpaint", __doc__)
    parser.add_argument("--image", type=Path, required=True, help="the image to repaint (PNG or JPEG)")
    parser.add_argument("--mask", type=Path, required=True, help="white where to repaint, black where to keep")
    parser.add_argument("--strength", type=float, default=1.0, help="below 1, start from the noised image")
    add_size_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m examples.stable_diffusion.inpaint`` and ``ortbind-inpaint``."""
    args = build_parser().parse_args(argv)
    size = TINY_SIZE if args.model is None else None

    def call(pipe: Any, common: dict[str, Any]) -> Any:
        return pipe(
            args.prompt,
            image=open_image(args.image),
            mask_image=open_image(args.mask, "L"),
            height=args.height or size,
            width=args.width or size,
            strength=args.strength,
            **common,
        )

    return run_cli("inpaint", args, "inpaint", lambda folder: pipeline_for_model(folder, "inpainting"), call)


if __name__ == "__main__":
    raise SystemExit(main())
