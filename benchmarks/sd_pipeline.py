"""Stable Diffusion pipeline: ours against diffusers' OnnxStableDiffusionPipeline, side by side.

Same ONNX files, prompts, initial latents, scheduler (PNDM) and step count for both. For each
configuration prints seconds per image (median over rounds, the two pipelines alternating so
machine drift hits both), the speed ratio, and for each pipeline the share of wall time spent
outside ONNX Runtime runs (pipeline overhead: scheduler, guidance, copies, decoding loop).
A sanity check asserts both produce the same images.

Run: ``python benchmarks/sd_pipeline.py [--model DIR] [--device cuda] [--rounds 5]``; without
``--model`` the tiny random-weight model is built (or reused from the cache).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from examples.stable_diffusion.export import ensure_tiny_model
from examples.stable_diffusion.pipeline import OrtStableDiffusionPipeline, cpu_session_options

PROMPTS = ["an astronaut riding a horse", "a lighthouse at dusk"]


def _diffusers_pipeline(model_dir: Path, device: str) -> Any:
    from diffusers import OnnxStableDiffusionPipeline

    extra: dict[str, Any] = {}
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        provider, options = "CUDAExecutionProvider", {"device_id": index}
    else:
        # The same ORT options as ours, so the comparison is of the pipelines, not of ORT settings.
        provider, options = "CPUExecutionProvider", {}
        extra["sess_options"] = cpu_session_options()
    pipe = OnnxStableDiffusionPipeline.from_pretrained(model_dir, provider=provider, provider_options=options, **extra)  # type: ignore[no-untyped-call]
    pipe.set_progress_bar_config(disable=True)
    for name in ("text_encoder", "unet", "vae_decoder"):
        active = getattr(pipe, name).model.get_providers()
        if active[0] != provider:
            raise SystemExit(f"diffusers' {name} runs on {active}, not {provider}: the comparison would be unfair")
    return pipe


class _OrtClock:
    """Times every InferenceSession.run of diffusers' models (its time inside ORT)."""

    def __init__(self, pipe: Any) -> None:
        self.seconds = 0.0
        for name in ("text_encoder", "unet", "vae_decoder"):
            model = getattr(pipe, name)
            model.model = _TimedSession(model.model, self)


class _TimedSession:
    def __init__(self, session: ort.InferenceSession, clock: _OrtClock) -> None:
        self._session = session
        self._clock = clock

    def run(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self._session.run(*args, **kwargs)
        finally:
            self._clock.seconds += time.perf_counter() - start

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def _measure(fn: Callable[[], tuple[np.ndarray, float]]) -> tuple[np.ndarray, float, float]:
    start = time.perf_counter()
    images, ort_seconds = fn()
    wall = time.perf_counter() - start
    return images, wall, ort_seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", type=Path, default=None, help="diffusers ONNX folder (default: tiny model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per configuration (median shown)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--guidance", type=float, default=7.5)
    args = parser.parse_args(argv)

    model_dir = args.model or ensure_tiny_model()
    ours = OrtStableDiffusionPipeline.from_pretrained(model_dir, args.device, scheduler="pndm")
    theirs = _diffusers_pipeline(model_dir, args.device)
    clock = _OrtClock(theirs)
    print(
        f"model {model_dir}; device {args.device}; onnxruntime {ort.__version__}; torch {torch.__version__}; "
        f"python {sys.version.split()[0]}; PNDM, {args.steps} steps, guidance {args.guidance}; "
        f"{'ORT intra-op spinning off for both; ' if args.device == 'cpu' else ''}"
        f"median of {args.rounds} rounds, pipelines alternating"
    )
    header = (
        f"{'size':>7} {'batch':>5} {'ours s/img':>11} {'diffusers s/img':>16} {'speed-up':>9} "
        f"{'ours outside ORT':>17} {'diffusers outside ORT':>22} {'max |diff|':>11}"
    )
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        for batch in args.batches:
            prompts = PROMPTS[:batch] if batch <= len(PROMPTS) else [PROMPTS[0]] * batch
            latents = torch.randn((batch, 4, size // 8, size // 8), generator=torch.Generator().manual_seed(0))
            common = {"num_inference_steps": args.steps, "guidance_scale": args.guidance, "height": size, "width": size}

            def run_ours() -> tuple[np.ndarray, float]:
                out = ours(prompts, latents=latents, output_type="np", progress=False, **common)  # noqa: B023
                return out.images, out.ort_seconds

            def run_theirs() -> tuple[np.ndarray, float]:
                clock.seconds = 0.0
                out = theirs(prompts, latents=latents.numpy(), output_type="np", **common)  # noqa: B023
                return out.images, clock.seconds

            mine, _, _ = _measure(run_ours)  # warm-up, also first-signature shape work
            reference, _, _ = _measure(run_theirs)
            diff = float(np.abs(mine - reference).max())
            ours_wall, ours_out, theirs_wall, theirs_out = [], [], [], []
            for _ in range(args.rounds):
                _, wall, inside = _measure(run_ours)
                ours_wall.append(wall)
                ours_out.append(1 - inside / wall)
                _, wall, inside = _measure(run_theirs)
                theirs_wall.append(wall)
                theirs_out.append(1 - inside / wall)
            ours_img = statistics.median(ours_wall) / batch
            theirs_img = statistics.median(theirs_wall) / batch
            print(
                f"{f'{size}x{size}':>7} {batch:>5} {ours_img:>11.4f} {theirs_img:>16.4f} "
                f"{theirs_img / ours_img:>8.2f}x {statistics.median(ours_out):>16.1%} "
                f"{statistics.median(theirs_out):>21.1%} {diff:>11.1e}"
            )
            if diff > 1e-3:
                raise SystemExit(f"the pipelines disagree (max |diff| {diff}); timings would compare different work")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
