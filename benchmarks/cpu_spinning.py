"""ORT thread spinning on CPU: our SD pipeline with it on and off, side by side in one run.

ONNX Runtime's intra-op worker threads spin for a while after each run; when torch runs its own
parallel CPU ops between ORT runs (guidance, the scheduler, image post-processing), they compete
for the same cores. This prints seconds per image for the pipeline with
``session.intra_op.allow_spinning`` on (ORT's default) and off, and the ratio. It backs the choice
of ``examples.stable_diffusion.pipelines.cpu_session_options``.

Each variant runs in its own process (threads left spinning by one variant would otherwise slow
the other), the processes alternate on, off, on, off..., and the median over processes is shown.

Run from the repo root: ``python -m benchmarks.cpu_spinning [--model DIR] [--processes 4] [--rounds 7]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import onnxruntime as ort
import torch

from examples.stable_diffusion.build.cache import ensure_tiny_model
from examples.stable_diffusion.pipelines import OrtStableDiffusionPipeline, cpu_session_options

CONFIGS = [(64, 1), (64, 2), (128, 1), (128, 2)]


def measure(model_dir: Path, spinning: bool, rounds: int, steps: int) -> dict[str, float]:
    """Median seconds per image for each configuration, in this process."""
    options = ort.SessionOptions() if spinning else cpu_session_options()
    pipe = OrtStableDiffusionPipeline.from_pretrained(model_dir, "cpu", session_options=options)
    result = {}
    for size, batch in CONFIGS:
        latents = torch.randn((batch, 4, size // 8, size // 8), generator=torch.Generator().manual_seed(0))
        seconds = []
        for round_ in range(rounds + 1):
            start = time.perf_counter()
            pipe(["a lighthouse"] * batch, latents=latents, num_inference_steps=steps, output_type="np", progress=False)
            if round_:  # the first round is a warm-up
                seconds.append((time.perf_counter() - start) / batch)
        result[f"{size}x{size} {batch}"] = statistics.median(seconds)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", type=Path, default=None, help="diffusers ONNX folder (default: tiny model)")
    parser.add_argument("--processes", type=int, default=4, help="processes per variant (median shown)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per configuration and process")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    model_dir = args.model or ensure_tiny_model()
    if args.child:
        print(json.dumps(measure(model_dir, args.child == "on", args.rounds, args.steps)))
        return 0

    runs: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    for _ in range(args.processes):
        for variant in ("on", "off"):
            child = [
                sys.executable,
                "-m",
                "benchmarks.cpu_spinning",
                "--child",
                variant,
                "--model",
                str(model_dir),
                "--rounds",
                str(args.rounds),
                "--steps",
                str(args.steps),
            ]
            done = subprocess.run(
                child, capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1]
            )
            runs[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(
        f"model {model_dir}; cpu; onnxruntime {ort.__version__}; torch {torch.__version__}; PNDM, {args.steps} "
        f"steps; median over {args.processes} processes per variant (each the median of {args.rounds} rounds)"
    )
    header = f"{'config':>12} {'spinning on s/img':>18} {'spinning off s/img':>19} {'on/off':>7}"
    print(header)
    print("-" * len(header))
    for key in runs["on"][0]:
        on = statistics.median(r[key] for r in runs["on"])
        off = statistics.median(r[key] for r in runs["off"])
        print(f"{key:>12} {on:>18.4f} {off:>19.4f} {on / off:>6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
