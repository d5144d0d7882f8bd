"""The example's UNet loop on a BoundCall, CUDA-graph options and the optimized export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("onnxscript")

import ortbind
from examples.stable_diffusion.build.cache import ensure_tiny_model
from examples.stable_diffusion.build.optimize import optimize_folder
from examples.stable_diffusion.export import main as export_main
from examples.stable_diffusion.pipelines import OrtStableDiffusionPipeline

from .helpers import run_python

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def onnx_dir(cache_dir: Path) -> Path:
    return ensure_tiny_model(cache_dir)


def images(pipe: OrtStableDiffusionPipeline, **kwargs: object) -> np.ndarray:
    result = pipe(
        ["a cat", "a dog"],
        negative_prompt="blurry",
        height=64,
        width=64,
        num_inference_steps=6,
        generator=torch.Generator().manual_seed(3),
        output_type="np",
        progress=False,
        **kwargs,
    )
    return np.asarray(result.images)


@pytest.mark.parametrize("scheduler", ["pndm", "dpm++", "euler-ancestral"])
def test_bound_loop_gives_the_images_of_the_plain_loop(onnx_dir: Path, scheduler: str) -> None:
    # PNDM and DPM++ keep earlier model outputs: a bound output overwritten by the next step would show.
    pipe = OrtStableDiffusionPipeline.from_pretrained(onnx_dir, "cpu", scheduler=scheduler)
    # Without guidance the UNet's output is the scheduler's model_output itself.
    pipe.bind_unet = False
    plain = [images(pipe, guidance_scale=1.0), images(pipe)]
    pipe.bind_unet = True
    bound = images(pipe, guidance_scale=1.0)
    np.testing.assert_array_equal(bound, plain[0])
    (call,) = pipe.unet_loop.bound_calls
    np.testing.assert_array_equal(images(pipe, guidance_scale=1.0), plain[0])  # the same bound call, reused
    assert pipe.unet_loop.bound_calls == [call]
    np.testing.assert_array_equal(images(pipe), plain[1])  # guided: twice the batch, another bound call
    assert len(pipe.unet_loop.bound_calls) == 2


def test_cuda_graph_needs_cuda(onnx_dir: Path) -> None:
    with pytest.raises(ortbind.ConfigError, match=r"^cuda_graph=True: CUDA graphs need a CUDA session"):
        OrtStableDiffusionPipeline.from_pretrained(onnx_dir, "cpu", cuda_graph=True)
    done = run_python(
        "-m",
        "examples.stable_diffusion.txt2img",
        "--model",
        str(onnx_dir),
        "--cuda-graph",
        "--no-progress",
        timeout=300,
    )
    assert done.returncode == 2
    assert "txt2img: error: cuda_graph=True: CUDA graphs need a CUDA session" in done.stderr


def test_optimized_cpu_export_gives_the_same_images(onnx_dir: Path, tmp_path: Path) -> None:
    stats = optimize_folder(onnx_dir, tmp_path / "optimized", target="cpu", progress=False)
    assert stats["unet"] and stats["text_encoder"]  # something was fused
    reference = images(OrtStableDiffusionPipeline.from_pretrained(onnx_dir, "cpu"))
    optimized = images(OrtStableDiffusionPipeline.from_pretrained(tmp_path / "optimized", "cpu"))
    np.testing.assert_allclose(optimized, reference, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match=r"already exists; pass a new folder$"):
        optimize_folder(onnx_dir, tmp_path / "optimized", target="cpu")
    with pytest.raises(ValueError, match=r"^fp16: ORT's CPU provider has few, slow float16 kernels"):
        optimize_folder(onnx_dir, tmp_path / "fp16", target="cpu", fp16=True)


def test_export_cli_refuses_optimize_with_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        export_main(["--tiny", str(tmp_path), "--optimize"])
    assert info.value.code == 2
    assert "--tiny takes no SRC, DST, --fp16, --opset or --optimize" in capsys.readouterr().err
