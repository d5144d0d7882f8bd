"""Stable Diffusion 1.5's architecture on a GPU: ortbind plain, bound, bound + CUDA graph, optimized.

One command, export included: builds SD 1.5's UNet, VAE and CLIP text encoder from diffusers'
public configs with random weights (no download), exports them to ONNX in float16, optimizes a
copy with ONNX Runtime's transformer optimizer, then times text-to-image side by side in one run:

- ``torch eager``: diffusers' ``StableDiffusionPipeline`` on the same weights, float16;
- ``ortbind plain``: the example pipeline, one ``TorchSession`` call per UNet step;
- ``ortbind bound``: the UNet loop on a ``BoundCall`` (fixed buffers, run only);
- ``ortbind bound + graph``: the same with ``cuda_graph=True`` (captured once, replayed);
- ``optimized bound + graph``: the optimizer's fused export (fused attention, GroupNorm, ...);
- ``diffusers ONNX``: diffusers' ``OnnxStableDiffusionPipeline`` on the CUDA provider, where it runs.

Prints seconds per image (median over ``--images``) and each ratio to torch eager. Random weights
make noise, not art, but every kernel runs at SD 1.5's real size.

Run on a GPU host: ``python benchmarks/gpu_sd.py`` (512x512, 50 steps). ``--small`` runs a scaled-
down architecture on any device (the CPU smoke run the tests use).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a clone
    sys.path.insert(0, str(REPO))

from examples.stable_diffusion import OrtStableDiffusionPipeline  # noqa: E402
from examples.stable_diffusion.build.export import export_onnx  # noqa: E402
from examples.stable_diffusion.build.optimize import optimize_folder  # noqa: E402
from examples.stable_diffusion.build.tiny import build_tiny_pipeline  # noqa: E402

# diffusers' published configs for runwayml/stable-diffusion-v1-5 (unet, vae, text_encoder).
SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
SD15_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "sample_size": 512,
    "norm_num_groups": 32,
}
SD15_CLIP: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
SMALL_UNET = {**SD15_UNET, "block_out_channels": (32, 64, 64, 64), "cross_attention_dim": 64, "attention_head_dim": 2}
SMALL_VAE = {**SD15_VAE, "block_out_channels": (32, 32, 64, 64), "layers_per_block": 1}
SMALL_CLIP = {
    **SD15_CLIP,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}


def build_torch_pipeline(root: Path, *, small: bool) -> Path:
    """SD 1.5's architecture with random weights (seed 0), saved with ``save_pretrained``."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    d: Any = diffusers  # untyped library: its classes are called through Any

    tiny = build_tiny_pipeline(root / "tiny")  # only its offline byte-level tokenizer is reused
    tokenizer = CLIPTokenizer.from_pretrained(tiny / "tokenizer")
    torch.manual_seed(0)
    clip = SMALL_CLIP if small else SD15_CLIP
    config = CLIPTextConfig(
        **clip,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    pipe: Any = d.StableDiffusionPipeline(
        vae=d.AutoencoderKL(**(SMALL_VAE if small else SD15_VAE)),
        text_encoder=CLIPTextModel(config),
        tokenizer=tokenizer,
        unet=d.UNet2DConditionModel(**(SMALL_UNET if small else SD15_UNET)),
        scheduler=d.PNDMScheduler.from_pretrained(tiny / "scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    target = root / "torch"
    pipe.save_pretrained(target)
    return target


def seconds_per_image(generate: Callable[[], object], images: int, device: torch.device) -> float:
    """Median wall time of one image over ``images`` runs, after one warm-up run."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    generate()
    sync()
    times = []
    for _ in range(images):
        start = time.perf_counter()
        generate()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=512, help="image height and width")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--images", type=int, default=3, help="timed images per variant (median shown)")
    parser.add_argument("--small", action="store_true", help="scaled-down architecture (a smoke run on any device)")
    parser.add_argument("--workdir", type=Path, help="keep the built and exported models here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    prompt = "a photograph of an astronaut riding a horse"
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ortbind-gpu-sd-"))
    workdir.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    torch_dir = workdir / "torch" if (workdir / "torch").is_dir() else build_torch_pipeline(workdir, small=args.small)
    onnx_dir = workdir / "onnx"
    if not onnx_dir.is_dir():
        export_onnx(torch_dir, onnx_dir, fp16=on_gpu, progress=False)
    optimized_dir = workdir / "onnx-optimized"
    if not optimized_dir.is_dir():
        optimize_folder(onnx_dir, optimized_dir, target="cuda" if on_gpu else "cpu", progress=False)
    print(f"built, exported and optimized in {time.perf_counter() - start:.0f} s ({workdir})")

    def ours(folder: Path, *, bound: bool, cuda_graph: bool) -> Callable[[], object]:
        pipe = OrtStableDiffusionPipeline.from_pretrained(folder, device, scheduler="pndm", cuda_graph=cuda_graph)
        pipe.bind_unet = bound

        def generate() -> object:
            generator = torch.Generator().manual_seed(0)
            return pipe(
                prompt,
                height=args.size,
                width=args.size,
                num_inference_steps=args.steps,
                generator=generator,
                output_type="pt",
                progress=False,
            )

        return generate

    def torch_eager() -> Callable[[], object]:
        from diffusers import StableDiffusionPipeline

        dtype = torch.float16 if on_gpu else torch.float32
        pipe = cast(Any, StableDiffusionPipeline).from_pretrained(torch_dir, torch_dtype=dtype).to(device)
        pipe.set_progress_bar_config(disable=True)

        def generate() -> object:
            generator = torch.Generator().manual_seed(0)
            return pipe(
                prompt,
                height=args.size,
                width=args.size,
                num_inference_steps=args.steps,
                generator=generator,
                output_type="pt",
            )

        return generate

    def diffusers_onnx() -> Callable[[], object]:
        import numpy as np
        from diffusers import OnnxStableDiffusionPipeline

        provider = "CUDAExecutionProvider" if on_gpu else "CPUExecutionProvider"
        pipe = cast(Any, OnnxStableDiffusionPipeline).from_pretrained(onnx_dir, provider=provider, provider_options={})
        pipe.set_progress_bar_config(disable=True)

        def generate() -> object:
            return pipe(
                prompt,
                height=args.size,
                width=args.size,
                num_inference_steps=args.steps,
                generator=np.random.RandomState(0),
                output_type="np",
            )

        return generate

    variants: list[tuple[str, Callable[[], Callable[[], object]]]] = [
        ("torch eager", torch_eager),
        ("ortbind plain", lambda: ours(onnx_dir, bound=False, cuda_graph=False)),
        ("ortbind bound", lambda: ours(onnx_dir, bound=True, cuda_graph=False)),
    ]
    if on_gpu:
        variants.append(("ortbind bound + graph", lambda: ours(onnx_dir, bound=True, cuda_graph=True)))
        variants.append(("optimized bound + graph", lambda: ours(optimized_dir, bound=True, cuda_graph=True)))
    else:
        variants.append(("optimized bound", lambda: ours(optimized_dir, bound=True, cuda_graph=False)))
    variants.append(("diffusers ONNX", diffusers_onnx))

    name = torch.cuda.get_device_name(device) if on_gpu else "CPU"
    print(f"{name}, {args.size}x{args.size}, {args.steps} steps, PNDM, batch 1, guidance 7.5")
    print(f"{'variant':<26} {'s/image':>9} {'speed-up vs torch eager':>24}")
    results: dict[str, float] = {}
    for label, make in variants:
        try:
            seconds = seconds_per_image(make(), args.images, device)
        except Exception as exc:  # a variant that does not run here is reported, not fatal
            print(f"{label:<26} {'did not run':>9}  ({type(exc).__name__}: {str(exc).splitlines()[0][:100]})")
            continue
        results[label] = seconds
        eager = results.get("torch eager")
        ratio = f"{eager / seconds:.2f}x" if eager else ""
        print(f"{label:<26} {seconds:>9.3f} {ratio:>24}")
        if on_gpu:
            torch.cuda.empty_cache()
    return 0 if "ortbind bound" in results else 1


if __name__ == "__main__":
    raise SystemExit(main())
