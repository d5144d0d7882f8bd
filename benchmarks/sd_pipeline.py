"""Stable Diffusion pipelines: ours against diffusers', side by side.

Three tables, each with the same prompts, inputs, scheduler and step count for both sides:

* text-to-image: ours vs diffusers' ``OnnxStableDiffusionPipeline`` on the same ONNX files (PNDM);
* image-to-image: ours vs diffusers' ``OnnxStableDiffusionImg2ImgPipeline`` on the same ONNX files
  (DDIM with ``steps_offset=0``, where both pick the same timesteps; the VAE encoder of a copy of the
  folder outputs the posterior mean, so diffusers' pipeline, which takes the encoder's output as the
  latents, is deterministic; the noise comes from the same torch generator for both);
* SDXL text-to-image: ours (ONNX) vs diffusers' torch ``StableDiffusionXLPipeline`` on the same weights.

For each configuration prints seconds per image (median over rounds, the two pipelines alternating
so machine drift hits both), the speed ratio, and for the ONNX pipelines the share of wall time
spent outside ONNX Runtime runs (pipeline overhead: scheduler, guidance, copies, decoding loop).
A sanity check asserts both sides produce the same images.

Run from the repo root: ``python -m benchmarks.sd_pipeline [--model DIR] [--device cuda] [--rounds 5]``; without
``--model`` the tiny random-weight models are built (or reused from the cache); the SDXL table
runs on the tiny SDXL unless ``--sdxl-model ONNX_DIR --sdxl-torch TORCH_DIR`` are given.
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

from examples.stable_diffusion import (
    OrtStableDiffusionImg2ImgPipeline,
    OrtStableDiffusionPipeline,
    OrtStableDiffusionXLPipeline,
    cpu_session_options,
)
from examples.stable_diffusion.build.cache import ensure_tiny_model, tiny_torch_pipeline_dir

PROMPTS = ["an astronaut riding a horse", "a lighthouse at dusk"]


def _diffusers_pipeline(model_dir: Path, device: str, cls: Any = None) -> Any:
    from diffusers import OnnxStableDiffusionPipeline

    cls = cls or OnnxStableDiffusionPipeline
    extra: dict[str, Any] = {}
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        provider, options = "CUDAExecutionProvider", {"device_id": index}
    else:
        # The same ORT options as ours, so the comparison is of the pipelines, not of ORT settings.
        provider, options = "CPUExecutionProvider", {}
        extra["sess_options"] = cpu_session_options()
    pipe = cls.from_pretrained(model_dir, provider=provider, provider_options=options, **extra)
    pipe.set_progress_bar_config(disable=True)
    for name in ("text_encoder", "unet", "vae_decoder"):
        active = getattr(pipe, name).model.get_providers()
        if active[0] != provider:
            raise SystemExit(f"diffusers' {name} runs on {active}, not {provider}: the comparison would be unfair")
    return pipe


class _OrtClock:
    """Times every InferenceSession.run of diffusers' models (its time inside ORT)."""

    def __init__(self, pipe: Any, names: tuple[str, ...] = ("text_encoder", "unet", "vae_decoder")) -> None:
        self.seconds = 0.0
        for name in names:
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


def _measure(fn: Callable[..., tuple[np.ndarray, float]]) -> tuple[np.ndarray, float, float]:
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
    parser.add_argument("--strength", type=float, default=0.75, help="image-to-image strength")
    parser.add_argument("--sdxl-model", type=Path, default=None, help="SDXL ONNX folder (default: tiny SDXL)")
    parser.add_argument("--sdxl-torch", type=Path, default=None, help="the torch SDXL folder it was exported from")
    parser.add_argument(
        "--only",
        choices=["txt2img", "bound", "img2img", "sdxl"],
        nargs="+",
        default=["txt2img", "bound", "img2img", "sdxl"],
    )
    args = parser.parse_args(argv)
    if "txt2img" in args.only:
        _txt2img(args)
    if "bound" in args.only:
        _bound_vs_plain(args)
    if "img2img" in args.only:
        _img2img(args)
    if "sdxl" in args.only:
        _sdxl(args)
    return 0


def _prompts(batch: int) -> list[str]:
    return PROMPTS[:batch] if batch <= len(PROMPTS) else [PROMPTS[0]] * batch


def _txt2img_inputs(args: argparse.Namespace, size: int, batch: int) -> tuple[list[str], torch.Tensor, dict[str, Any]]:
    """Prompts, initial latents (seed 0) and the call's settings for one text-to-image row."""
    latents = torch.randn((batch, 4, size // 8, size // 8), generator=torch.Generator().manual_seed(0))
    common = {"num_inference_steps": args.steps, "guidance_scale": args.guidance, "height": size, "width": size}
    return _prompts(batch), latents, common


def _txt2img(args: argparse.Namespace) -> None:

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
            prompts, latents, common = _txt2img_inputs(args, size, batch)

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


def _bound_vs_plain(args: argparse.Namespace) -> None:
    """Our pipeline with the UNet loop on a BoundCall against one TorchSession call per step."""
    model_dir = args.model or ensure_tiny_model()
    bound = OrtStableDiffusionPipeline.from_pretrained(model_dir, args.device, scheduler="pndm")
    plain = OrtStableDiffusionPipeline.from_pretrained(model_dir, args.device, scheduler="pndm")
    plain.bind_unet = False
    print()
    print(f"UNet loop: bound call (fixed buffers, run only) against a plain call per step; {args.steps} steps")
    header = (
        f"{'size':>7} {'batch':>5} {'bound s/img':>12} {'plain s/img':>12} {'speed-up':>9} "
        f"{'bound ORT ms/step':>18} {'plain ORT ms/step':>18}"
    )
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        for batch in args.batches:
            prompts, latents, common = _txt2img_inputs(args, size, batch)
            runs: dict[str, list[tuple[float, float]]] = {"bound": [], "plain": []}
            outputs = {}
            for rnd in range(args.rounds + 1):
                for name, pipe in (("bound", bound), ("plain", plain)):
                    out = pipe(prompts, latents=latents, output_type="np", progress=False, **common)
                    outputs[name] = out.images
                    if rnd:  # the first round warms up
                        runs[name].append((out.seconds, out.ort_seconds))
            if not np.array_equal(outputs["bound"], outputs["plain"]):
                raise SystemExit("bound and plain loops disagree; timings would compare different work")
            per_img = {n: statistics.median(w for w, _ in r) / batch for n, r in runs.items()}
            unet = {n: statistics.median(o for _, o in r) / args.steps * 1e3 for n, r in runs.items()}
            print(
                f"{f'{size}x{size}':>7} {batch:>5} {per_img['bound']:>12.4f} {per_img['plain']:>12.4f} "
                f"{per_img['plain'] / per_img['bound']:>8.2f}x {unet['bound']:>18.2f} {unet['plain']:>18.2f}"
            )


class _TorchNoise:
    """diffusers' ONNX pipelines draw with ``generator.randn(*shape)``; this draws from a torch generator."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def randn(self, *shape: int) -> np.ndarray:
        noise: np.ndarray = torch.randn(shape, generator=self.generator).numpy()
        return noise


def _mean_encoder_copy(model_dir: Path, target: Path) -> Path:
    """A copy of the folder whose VAE encoder outputs the posterior mean as ``latent_sample``."""
    import shutil

    import onnx
    import onnx.helper

    shutil.copytree(model_dir, target)
    path = target / "vae_encoder" / "model.onnx"
    model = onnx.load(str(path))
    if model.graph.output[0].name == "latent_parameters":
        model.graph.node.append(
            onnx.helper.make_node("Split", ["latent_parameters"], ["latent_sample", "logvar"], axis=1, num_outputs=2)
        )
        del model.graph.output[:]
        model.graph.output.append(onnx.helper.make_tensor_value_info("latent_sample", onnx.TensorProto.FLOAT, None))
        onnx.save(model, str(path))
    return target


def _header(first: str, second: str, onnx_second: bool) -> None:
    header = (
        f"{'size':>7} {'batch':>5} {'ours s/img':>11} {first + ' s/img':>16} {'speed-up':>9} "
        f"{'ours outside ORT':>17} {(second + ' outside ORT') if onnx_second else '':>22} "
        f"{f'|diff| {_CHECK_STEPS} st':>11}"
    )
    print(header)
    print("-" * len(header))


def _img2img(args: argparse.Namespace) -> None:
    import tempfile

    from diffusers import DDIMScheduler, OnnxStableDiffusionImg2ImgPipeline

    source = args.model or ensure_tiny_model()
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = _mean_encoder_copy(source, Path(scratch) / "model")
        ours = OrtStableDiffusionImg2ImgPipeline.from_pretrained(model_dir, args.device)
        theirs = _diffusers_pipeline(model_dir, args.device, OnnxStableDiffusionImg2ImgPipeline)
        config = {**dict(ours.scheduler.config), "steps_offset": 0}
        ddim: Any = DDIMScheduler  # diffusers' classes are untyped
        ours.scheduler = ddim.from_config(config)
        theirs.scheduler = ddim.from_config(config)
        clock = _OrtClock(theirs, ("text_encoder", "unet", "vae_encoder", "vae_decoder"))
        print()
        print(
            f"image-to-image: OnnxStableDiffusionImg2ImgPipeline; DDIM (steps_offset 0), {args.steps} steps, "
            f"strength {args.strength}, guidance {args.guidance}; median of {args.rounds} rounds"
        )
        _header("diffusers", "diffusers", True)
        for size in args.sizes:
            for batch in args.batches:
                prompts = _prompts(batch)
                image = torch.rand((batch, 3, size, size), generator=torch.Generator().manual_seed(1))
                common = {"guidance_scale": args.guidance, "strength": args.strength, "output_type": "np"}

                def run_ours(steps: int = args.steps) -> tuple[np.ndarray, float]:
                    generator = torch.Generator().manual_seed(0)
                    out = ours(
                        prompts,  # noqa: B023
                        image=image,  # noqa: B023
                        generator=generator,
                        num_inference_steps=steps,
                        progress=False,
                        **common,  # noqa: B023
                    )
                    return out.images, out.ort_seconds

                def run_theirs(steps: int = args.steps) -> tuple[np.ndarray, float]:
                    clock.seconds = 0.0
                    pixels = image * 2 - 1  # noqa: B023  (diffusers' ONNX img2img takes tensors in [-1, 1])
                    out = theirs(prompts, image=pixels, generator=_TorchNoise(0), num_inference_steps=steps, **common)  # noqa: B023
                    return out.images, clock.seconds

                _print_row(size, batch, run_ours, run_theirs, args.rounds, ort_second=True)


def _sdxl(args: argparse.Namespace) -> None:
    from diffusers import StableDiffusionXLPipeline

    if (args.sdxl_model is None) != (args.sdxl_torch is None):
        raise SystemExit("--sdxl-model and --sdxl-torch go together (the ONNX export and its torch source)")
    onnx_dir = args.sdxl_model or ensure_tiny_model(kind="sdxl")
    torch_dir = args.sdxl_torch or tiny_torch_pipeline_dir(kind="sdxl")
    ours = OrtStableDiffusionXLPipeline.from_pretrained(onnx_dir, args.device)
    torch_cls: Any = StableDiffusionXLPipeline  # diffusers' classes are untyped
    theirs = torch_cls.from_pretrained(torch_dir).to(args.device)
    theirs.set_progress_bar_config(disable=True)
    scheduler_cls: Any = type(ours.scheduler)
    theirs.scheduler = scheduler_cls.from_config(ours.scheduler.config)
    print()
    print(
        f"SDXL text-to-image: torch StableDiffusionXLPipeline (torch {torch.get_num_threads()} threads) on the same "
        f"weights; {type(ours.scheduler).__name__}, {args.steps} steps, guidance {args.guidance}; "
        f"median of {args.rounds} rounds"
    )
    _header("diffusers torch", "", False)
    for size in args.sizes:
        for batch in args.batches:
            prompts = _prompts(batch)
            common = {"guidance_scale": args.guidance, "height": size, "width": size, "output_type": "np"}

            def run_ours(steps: int = args.steps) -> tuple[np.ndarray, float]:
                generator = torch.Generator().manual_seed(0)
                out = ours(prompts, generator=generator, num_inference_steps=steps, progress=False, **common)  # noqa: B023
                return out.images, out.ort_seconds

            def run_theirs(steps: int = args.steps) -> tuple[np.ndarray, float]:
                generator = torch.Generator().manual_seed(0)
                with torch.inference_mode():
                    out = theirs(prompts, generator=generator, num_inference_steps=steps, **common)  # noqa: B023
                return out.images, 0.0

            _print_row(size, batch, run_ours, run_theirs, args.rounds, ort_second=False)


# The sanity check runs this many steps: on random weights, DDIM and guidance amplify rounding
# differences step after step (a 1e-6 change of the input image moves the tiny model's 20-step
# image by 0.4), so agreement is checked where it is meaningful and the timings use --steps.
_CHECK_STEPS = 4


def _print_row(
    size: int,
    batch: int,
    run_ours: Callable[..., tuple[np.ndarray, float]],
    run_theirs: Callable[..., tuple[np.ndarray, float]],
    rounds: int,
    *,
    ort_second: bool,
) -> None:
    mine, _ = run_ours(_CHECK_STEPS)
    reference, _ = run_theirs(_CHECK_STEPS)
    diff = float(np.abs(mine - reference).max())
    _measure(run_ours)  # warm-up, also first-signature shape work
    _measure(run_theirs)
    ours_wall, ours_out, theirs_wall, theirs_out = [], [], [], []
    for _ in range(rounds):
        _, wall, inside = _measure(run_ours)
        ours_wall.append(wall)
        ours_out.append(1 - inside / wall)
        _, wall, inside = _measure(run_theirs)
        theirs_wall.append(wall)
        theirs_out.append(1 - inside / wall)
    ours_img = statistics.median(ours_wall) / batch
    theirs_img = statistics.median(theirs_wall) / batch
    second = f"{statistics.median(theirs_out):>21.1%}" if ort_second else f"{'':>21}"
    print(
        f"{f'{size}x{size}':>7} {batch:>5} {ours_img:>11.4f} {theirs_img:>16.4f} "
        f"{theirs_img / ours_img:>8.2f}x {statistics.median(ours_out):>16.1%} {second} {diff:>11.1e}"
    )
    if diff > 1e-3:
        raise SystemExit(f"the pipelines disagree (max |diff| {diff}); timings would compare different work")


if __name__ == "__main__":
    raise SystemExit(main())
