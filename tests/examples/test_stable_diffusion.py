"""The Stable Diffusion example against diffusers' ONNX and torch pipelines on the tiny model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("onnxscript")

from diffusers import (
    EulerDiscreteScheduler,
    OnnxStableDiffusionPipeline,
    PNDMScheduler,
    StableDiffusionPipeline,
)

from examples.stable_diffusion.build.cache import ensure_tiny_model, tiny_torch_pipeline_dir
from examples.stable_diffusion.pipelines import SCHEDULERS, OrtStableDiffusionPipeline, load_scheduler

from .helpers import forbid_host_transfers, run_python

pytestmark = pytest.mark.slow

PROMPTS = ["a red cube on a table", "a lighthouse at dusk"]
STEPS = 5
# Ours vs diffusers' ONNX pipeline on the same ONNX files: same arithmetic, so near-exact.
ONNX_ATOL = 1e-5
SIZE = {"height": 64, "width": 64}
# Ours vs diffusers' torch pipeline on the same weights: exporter and kernel rounding.
TORCH_ATOL = 1e-4


@pytest.fixture(scope="session")
def onnx_dir(cache_dir: Path) -> Path:
    return ensure_tiny_model(cache_dir)


@pytest.fixture(scope="session")
def torch_dir(cache_dir: Path, onnx_dir: Path) -> Path:
    return tiny_torch_pipeline_dir(cache_dir)


@pytest.fixture(scope="session")
def ours(onnx_dir: Path) -> OrtStableDiffusionPipeline:
    return OrtStableDiffusionPipeline.from_pretrained(onnx_dir, "cpu")


@pytest.fixture(scope="session")
def diffusers_onnx(onnx_dir: Path) -> OnnxStableDiffusionPipeline:
    return OnnxStableDiffusionPipeline.from_pretrained(onnx_dir, provider="CPUExecutionProvider", provider_options={})


@pytest.fixture(scope="session")
def diffusers_torch(torch_dir: Path) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(torch_dir, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def initial_latents(batch: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn((batch, 4, size // 8, size // 8), generator=torch.Generator().manual_seed(seed))


def run_ours(pipe: OrtStableDiffusionPipeline, prompts: list[str], latents: torch.Tensor, **kwargs: Any) -> np.ndarray:
    out = pipe(prompts, latents=latents, num_inference_steps=STEPS, output_type="np", progress=False, **SIZE, **kwargs)
    images: np.ndarray = out.images
    return images


@pytest.mark.parametrize("guidance", [7.5, 1.0], ids=["guided", "unguided"])
@pytest.mark.parametrize("batch", [1, 2])
def test_equals_diffusers_onnx_and_torch_pipelines(
    ours: OrtStableDiffusionPipeline,
    diffusers_onnx: OnnxStableDiffusionPipeline,
    diffusers_torch: StableDiffusionPipeline,
    guidance: float,
    batch: int,
) -> None:
    prompts = PROMPTS[:batch]
    latents = initial_latents(batch)
    ours.scheduler = PNDMScheduler.from_config(diffusers_onnx.scheduler.config)
    diffusers_torch.scheduler = PNDMScheduler.from_config(diffusers_onnx.scheduler.config)
    got = run_ours(ours, prompts, latents, guidance_scale=guidance)
    reference_onnx = diffusers_onnx(
        prompts, latents=latents.numpy(), num_inference_steps=STEPS, guidance_scale=guidance, output_type="np", **SIZE
    ).images
    reference_torch = diffusers_torch(
        prompts, latents=latents.clone(), num_inference_steps=STEPS, guidance_scale=guidance, output_type="np", **SIZE
    ).images
    assert got.shape == (batch, 64, 64, 3)
    assert np.abs(got - 0.5).max() > 0.01, "a blank image would match trivially"
    np.testing.assert_allclose(got, reference_onnx, rtol=0, atol=ONNX_ATOL)
    np.testing.assert_allclose(got, reference_torch, rtol=0, atol=TORCH_ATOL)


def test_images_per_prompt_and_negative_prompt(
    ours: OrtStableDiffusionPipeline, diffusers_torch: StableDiffusionPipeline
) -> None:
    latents = initial_latents(2, seed=3)
    ours.scheduler = PNDMScheduler.from_config(diffusers_torch.scheduler.config)
    diffusers_torch.scheduler = PNDMScheduler.from_config(diffusers_torch.scheduler.config)
    got = run_ours(ours, PROMPTS[:1], latents, num_images_per_prompt=2, negative_prompt="blurry", guidance_scale=5.0)
    expected = diffusers_torch(
        PROMPTS[:1],
        latents=latents.clone(),
        num_images_per_prompt=2,
        negative_prompt=["blurry"],
        guidance_scale=5.0,
        num_inference_steps=STEPS,
        output_type="np",
        **SIZE,
    ).images
    np.testing.assert_allclose(got, expected, rtol=0, atol=TORCH_ATOL)
    assert not np.allclose(got[0], got[1])


def test_euler_equals_torch_pipeline(
    ours: OrtStableDiffusionPipeline, diffusers_torch: StableDiffusionPipeline
) -> None:
    """Euler fails inside diffusers' ONNX pipeline (numpy array x tensor); ours keeps torch tensors."""
    config = diffusers_torch.scheduler.config
    ours.scheduler = EulerDiscreteScheduler.from_config(config)
    diffusers_torch.scheduler = EulerDiscreteScheduler.from_config(config)
    latents = initial_latents(1, seed=1)
    got = run_ours(ours, PROMPTS[:1], latents, guidance_scale=7.5)
    expected = diffusers_torch(
        PROMPTS[:1], latents=latents.clone(), num_inference_steps=STEPS, guidance_scale=7.5, output_type="np", **SIZE
    ).images
    np.testing.assert_allclose(got, expected, rtol=0, atol=TORCH_ATOL)


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_no_numpy_and_no_host_transfer_inside_the_loop(
    onnx_dir: Path, scheduler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe = OrtStableDiffusionPipeline.from_pretrained(onnx_dir, "cpu", scheduler=scheduler)
    denoise = pipe._denoise
    seen: list[list[str]] = []

    def guarded(*args: Any, **kwargs: Any) -> torch.Tensor:
        with forbid_host_transfers() as attempts:
            result = denoise(*args, **kwargs)
        seen.append(attempts)
        return result

    monkeypatch.setattr(pipe, "_denoise", guarded)
    out = pipe(
        PROMPTS[0],
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(0),
        height=64,
        width=64,
        output_type="pt",
        progress=False,
    )
    assert seen == [[]]
    assert out.images.shape == (1, 64, 64, 3)
    assert torch.isfinite(out.images).all()


def test_the_guard_catches_a_transfer() -> None:
    with pytest.raises(AssertionError, match="host transfer"), forbid_host_transfers() as attempts:
        torch.ones(2).numpy()
    assert attempts == ["Tensor.numpy of (2,)"]


def test_bad_requests_are_refused_clearly(ours: OrtStableDiffusionPipeline) -> None:
    with pytest.raises(
        ValueError,
        match=r"^height: must be a positive multiple of 16 \(the VAE's scale factor 8 x the UNet's downsampling 2\), "
        r"got 72; try 64$",
    ):
        ours("x", height=72, width=64)
    with pytest.raises(ValueError, match=r"^negative_prompt: got 3 for 2 prompts; pass one string, or one per prompt$"):
        ours(PROMPTS, negative_prompt=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"^latents: expected shape \(1, 4, 8, 8\), got \(1, 4, 8, 9\)$"):
        ours("x", height=64, width=64, latents=torch.zeros(1, 4, 8, 9))
    with pytest.raises(ValueError, match=r"^scheduler 'lms': unknown; choose one of "):
        load_scheduler("lms", {})


def test_inputs_take_their_dtype_from_the_session_specs(ours: OrtStableDiffusionPipeline) -> None:
    assert ours.unet_loop.timestep_dtype == ours.unet.spec.input("timestep").dtype
    assert ours._ids_dtype == ours.text_encoder.spec.input("input_ids").dtype


def test_cli_writes_png_on_the_embedded_default(cache_dir: Path, digits_dir: Path, tmp_path: Path) -> None:
    """The command as a user runs it, on the built-in digits model (32x32 by default)."""
    out = tmp_path / "img.png"
    proc = run_python(
        "-m",
        "examples.stable_diffusion.txt2img",
        "--prompt",
        "a handwritten 2",
        "--steps",
        "3",
        "--cache-dir",
        str(cache_dir),
        "--out",
        str(out),
        "--no-progress",
        "--batch",
        "2",
        "--width",
        "128",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    from PIL import Image

    paths = [tmp_path / "img-0.png", tmp_path / "img-1.png"]
    for path in paths:
        with Image.open(path) as image:
            assert (image.size, image.mode) == ((128, 32), "RGB")
        assert f"wrote {path}" in proc.stdout
    assert "ms per step" in proc.stdout


def test_models_with_external_weight_files(ours: OrtStableDiffusionPipeline, onnx_dir: Path, tmp_path: Path) -> None:
    import shutil

    import onnx

    copy = tmp_path / "external"
    shutil.copytree(onnx_dir, copy)
    for name in ("text_encoder", "unet", "vae_decoder"):
        path = copy / name / "model.onnx"
        inline = path.stat().st_size
        model = onnx.load(str(path))
        onnx.save_model(model, str(path), save_as_external_data=True, location="weights.pb", size_threshold=1024)
        assert (copy / name / "weights.pb").stat().st_size > inline - path.stat().st_size > 0
    external = OrtStableDiffusionPipeline.from_pretrained(copy, "cpu")
    latents = initial_latents(1, seed=5)
    ours.scheduler = PNDMScheduler.from_config(external.scheduler.config)
    np.testing.assert_array_equal(run_ours(external, PROMPTS[:1], latents), run_ours(ours, PROMPTS[:1], latents))


def test_fp16_export_runs_with_dtypes_from_the_specs(
    ours: OrtStableDiffusionPipeline, torch_dir: Path, tmp_path: Path
) -> None:
    from examples.stable_diffusion.build.export import export_onnx

    fp16_dir = export_onnx(torch_dir, tmp_path / "fp16", fp16=True, progress=False)
    half = OrtStableDiffusionPipeline.from_pretrained(fp16_dir, "cpu")
    assert half.unet.spec.input("sample").dtype == torch.float16
    assert half.unet.spec.input("timestep").dtype == torch.float16
    assert half.vae_decoder.spec.input("latent_sample").dtype == torch.float16
    latents = initial_latents(1, seed=2)
    ours.scheduler = PNDMScheduler.from_config(half.scheduler.config)
    got = run_ours(half, PROMPTS[:1], latents)
    np.testing.assert_allclose(got, run_ours(ours, PROMPTS[:1], latents), rtol=0, atol=1e-2)
