"""Text to image from the command line.

    python -m examples.stable_diffusion.txt2img --prompt "an astronaut riding a horse" --out out.png

Without ``--model``, a tiny random-weight Stable Diffusion is built offline on first use (cached
under ``$ORTBIND_CACHE`` or ``~/.cache/ortbind``) and used: it makes noise, not art, but runs the
whole pipeline in seconds on a CPU. ``--model DIR`` runs any ONNX folder (SD 1.x/2.x or SDXL, in
diffusers' or optimum's layout), the pipeline chosen from its ``model_index.json``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ._cli import TINY_SIZE, add_size_options, parser_for, run_cli
from .auto import pipeline_for_model

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    parser = parser_for("txt2img", __doc__)
    add_size_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m examples.stable_diffusion.txt2img`` and ``ortbind-txt2img``."""
    args = build_parser().parse_args(argv)
    size = TINY_SIZE if args.model is None else None

    def call(pipe: Any, common: dict[str, Any]) -> Any:
        return pipe(args.prompt, height=args.height or size, width=args.width or size, **common)

    return run_cli("txt2img", args, "sd", lambda folder: pipeline_for_model(folder, "text-to-image"), call)


if __name__ == "__main__":
    raise SystemExit(main())
