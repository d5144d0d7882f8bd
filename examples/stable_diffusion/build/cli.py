"""The build tools' command lines: ``python -m examples.stable_diffusion.export`` and ``.optimize``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .cache import ensure_tiny_model, tiny_torch_pipeline_dir
from .export import export_onnx, export_optimized
from .optimize import optimize_folder
from .tiny import TINY_KINDS

__all__ = ["export_main", "optimize_main"]


def export_main(argv: Sequence[str] | None = None) -> int:
    """Run the export command line: export SRC to DST, or build a tiny model with ``--tiny DST``.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The process exit status: 0 on success, 1 when the export failed with a clear error.
    """
    parser = argparse.ArgumentParser(
        prog="python -m examples.stable_diffusion.export",
        description="Export a diffusers Stable Diffusion torch folder (SD 1.x/2.x, inpainting, SDXL) to ONNX.",
    )
    parser.add_argument("src", nargs="?", type=Path, help="torch pipeline folder (save_pretrained)")
    parser.add_argument("dst", nargs="?", type=Path, help="output folder, missing or empty")
    parser.add_argument(
        "--tiny",
        metavar="DST",
        type=Path,
        help="build a tiny random-weight pipeline and its export into DST (random weights, for shapes: it draws "
        "noise; the built-in digits model is in examples/stable_diffusion/models/, export it as SRC)",
    )
    parser.add_argument("--kind", choices=TINY_KINDS, default="sd", help="which tiny pipeline --tiny builds")
    parser.add_argument("--fp16", action="store_true", help="export float16 weights and tensors")
    parser.add_argument("--opset", type=int, default=20, help="ONNX opset version (default: 20)")
    parser.add_argument(
        "--optimize",
        nargs="?",
        const="cuda",
        choices=("cuda", "cpu"),
        help="run ONNX Runtime's transformer optimizer on the export (fused attention, LayerNorm, GroupNorm...), "
        "for the CUDA provider (the default) or the CPU one",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)

    try:
        if args.tiny is not None:
            if args.src is not None or args.fp16 or args.opset != 20 or args.optimize:
                parser.error("--tiny takes no SRC, DST, --fp16, --opset or --optimize")
            onnx_dir = ensure_tiny_model(args.tiny, kind=args.kind, progress=not args.no_progress)
            print(f"torch pipeline: {tiny_torch_pipeline_dir(args.tiny, kind=args.kind)}")
            print(f"ONNX pipeline:  {onnx_dir}")
            return 0
        if args.src is None or args.dst is None:
            parser.error("expected SRC and DST, or --tiny DST")
        if args.optimize is None:
            output = export_onnx(args.src, args.dst, fp16=args.fp16, opset=args.opset, progress=not args.no_progress)
        else:
            output = export_optimized(args.src, args.dst, args.optimize, fp16=args.fp16, opset=args.opset)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"ONNX pipeline written to {output}")
    for path in sorted(output.rglob("*")):
        if path.is_file():
            print(f"  {path.relative_to(output)}  ({path.stat().st_size:,} bytes)")
    return 0


def optimize_main(argv: Sequence[str] | None = None) -> int:
    """Run the optimizer command line over an exported folder; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.stable_diffusion.optimize",
        description="ONNX Runtime's transformer optimizer over an exported Stable Diffusion folder.",
    )
    parser.add_argument("source", type=Path, help="exported SD folder")
    parser.add_argument("target_dir", type=Path, help="new folder for the optimized copy")
    parser.add_argument("--target", choices=("cpu", "cuda"), default="cuda", help="provider to optimize for")
    parser.add_argument("--fp16", action="store_true", help="convert float32 models to float16 (cuda)")
    args = parser.parse_args(argv)
    try:
        optimize_folder(args.source, args.target_dir, target=args.target, fp16=args.fp16)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
