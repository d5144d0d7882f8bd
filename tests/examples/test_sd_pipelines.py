"""img2img, inpainting, SDXL, any VAE, both folder layouts: against diffusers' torch and ONNX pipelines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.helper
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("onnxscript")

from diffusers import (
    DDIMScheduler,
    OnnxStableDiffusionImg2ImgPipeline,
    OnnxStableDiffusionInpaintPipeline,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
)
from PIL import Image

from examples.stable_diffusion import (
    OrtStableDiffusionImg2ImgPipeline,
    OrtStableDiffusionInpaintPipeline,
    OrtStableDiffusionPipeline,
    OrtStableDiffusionXLImg2ImgPipeline,
    OrtStableDiffusionXLPipeline,
    pipeline_for_model,
)
from examples.stable_diffusion.build.cache import ensure_tiny_model, tiny_torch_pipeline_dir
from examples.stable_diffusion.build.export import export_vae
from examples.stable_diffusion.build.tiny import tiny_vae
from examples.stable_diffusion.pipelines import OrtPipelineBase

from .helpers import forbid_host_transfers, optimum_layout, raises, run_python

pytestmark = pytest.mark.slow

PROMPTS = ["a red cube on a table", "a lighthouse at dusk"]
STEPS = 5
SIZE = 64
# Ours vs diffusers' torch pipelines on the same weights: exporter and kernel rounding.
TORCH_ATOL = 1e-4
# Ours vs diffusers' ONNX pipelines on the same ONNX files: the same arithmetic in another order
# (numpy vs torch noise mixing, per-image VAE runs): measured up to 1.1e-5.
ONNX_ATOL = 1e-4


def quiet(pipe: Any) -> Any:
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def an_image(seed: int = 7, batch: int = 1) -> torch.Tensor:
    """A smooth random image in [0, 1], (batch, 3, SIZE, SIZE)."""
    coarse = torch.rand(batch, 3, 8, 8, generator=seeded(seed))
    return torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)


def to_pil(image: torch.Tensor) -> Image.Image:
    array = (image[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    return Image.fromarray(array)


def square_mask() -> Image.Image:
    """White (repaint) in the middle, aligned to the 8-pixel latent grid."""
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[16:48, 24:56] = 255
    return Image.fromarray(mask)


def assert_close(got: np.ndarray, expected: np.ndarray, atol: float) -> None:
    assert got.shape == expected.shape
    assert np.abs(got - 0.5).max() > 0.01, "a blank image would match trivially"
    np.testing.assert_allclose(got, expected, rtol=0, atol=atol)


# ---------------------------------------------------------------------- models


def torch_pipe(cls: Any, cache_dir: Path, kind: Any) -> Any:
    extra = {} if "XL" in cls.__name__ else {"safety_checker": None, "requires_safety_checker": False}
    return quiet(cls.from_pretrained(tiny_torch_pipeline_dir(cache_dir, kind=kind), **extra))


def with_mean_encoder(source: Path, target: Path) -> Path:
    """A copy of ``source`` whose VAE encoder outputs the posterior mean as ``latent_sample``.

    diffusers' ONNX pipelines take the encoder's first output as the latents; sampling inside the
    model (its convert script) makes them random, so the comparison uses this deterministic one.
    """
    shutil.copytree(source, target)
    path = target / "vae_encoder" / "model.onnx"
    model = onnx.load(str(path))
    parameters = model.graph.output[0].name
    model.graph.node.append(
        onnx.helper.make_node("Split", [parameters], ["latent_sample", "logvar"], axis=1, num_outputs=2)
    )
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_tensor_value_info("latent_sample", onnx.TensorProto.FLOAT, None))
    onnx.save(model, str(path))
    return target


class NumpyNoise:
    """What diffusers' ONNX pipelines take as a generator (``randn(*shape)``), drawing from a torch generator.

    So both pipelines see the same noise values for the same seed.
    """

    def __init__(self, seed: int) -> None:
        self.generator = seeded(seed)

    def randn(self, *shape: int) -> np.ndarray:
        return torch.randn(shape, generator=self.generator).numpy()


# ---------------------------------------------------------------------- img2img


@pytest.mark.parametrize(("guidance", "batch"), [(7.5, 2), (1.0, 1)], ids=["guided-2", "unguided-1"])
def test_img2img_equals_diffusers_torch(sd_dir: Path, cache_dir: Path, guidance: float, batch: int) -> None:
    ours = OrtStableDiffusionImg2ImgPipeline.from_pretrained(sd_dir)
    theirs = torch_pipe(StableDiffusionImg2ImgPipeline, cache_dir, "sd")
    image = an_image()
    common = {"strength": 0.7, "num_inference_steps": STEPS, "guidance_scale": guidance, "output_type": "np"}
    got = ours(PROMPTS[:batch], image=image, generator=seeded(3), progress=False, **common).images
    expected = theirs(PROMPTS[:batch], image=image, generator=seeded(3), **common).images
    assert_close(got, expected, TORCH_ATOL)
    # The image matters, and so does strength.
    other = ours(PROMPTS[:batch], image=an_image(seed=8), generator=seeded(3), progress=False, **common).images
    assert np.abs(other - got).max() > 1e-3


def test_img2img_takes_pil_images_as_diffusers_does(sd_dir: Path, cache_dir: Path) -> None:
    ours = OrtStableDiffusionImg2ImgPipeline.from_pretrained(sd_dir, scheduler="euler-ancestral")
    theirs = torch_pipe(StableDiffusionImg2ImgPipeline, cache_dir, "sd")
    theirs.scheduler = type(ours.scheduler).from_config(ours.scheduler.config)
    image = to_pil(an_image())
    common = {"strength": 0.6, "num_inference_steps": STEPS, "num_images_per_prompt": 2, "output_type": "np"}
    got = ours(PROMPTS[0], image=image, generator=seeded(4), negative_prompt="blurry", progress=False, **common)
    expected = theirs(PROMPTS[0], image=image, generator=seeded(4), negative_prompt="blurry", **common).images
    assert_close(got.images, expected, TORCH_ATOL)


def test_img2img_equals_diffusers_onnx(sd_dir: Path, tmp_path: Path) -> None:
    """diffusers' ONNX img2img picks its noise timestep one step off when steps_offset is not 0, and
    the schedule of PNDM has one more entry: DDIM with steps_offset 0 is where the two agree."""
    folder = with_mean_encoder(sd_dir, tmp_path / "mean-encoder")
    ours = OrtStableDiffusionImg2ImgPipeline.from_pretrained(folder)
    theirs = quiet(
        OnnxStableDiffusionImg2ImgPipeline.from_pretrained(folder, provider="CPUExecutionProvider", provider_options={})
    )
    config = {**dict(ours.scheduler.config), "steps_offset": 0}
    ours.scheduler = DDIMScheduler.from_config(config)
    theirs.scheduler = DDIMScheduler.from_config(config)
    image = an_image()
    common = {"strength": 0.8, "num_inference_steps": STEPS, "guidance_scale": 7.5, "output_type": "np"}
    got = ours(PROMPTS[:1], image=image, generator=seeded(5), progress=False, **common).images
    expected = theirs(PROMPTS[:1], image=image * 2 - 1, generator=NumpyNoise(5), **common).images
    assert_close(got, expected, ONNX_ATOL)


# ---------------------------------------------------------------------- inpaint


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_inpaint_equals_diffusers_torch(inpaint_dir: Path, cache_dir: Path, strength: float) -> None:
    ours = OrtStableDiffusionInpaintPipeline.from_pretrained(inpaint_dir)
    theirs = torch_pipe(StableDiffusionInpaintPipeline, cache_dir, "inpaint")
    image, mask = an_image(), square_mask()
    common = {"strength": strength, "num_inference_steps": STEPS, "output_type": "np", "height": SIZE, "width": SIZE}
    got = ours(PROMPTS, image=image, mask_image=mask, generator=seeded(6), progress=False, **common).images
    expected = theirs(PROMPTS, image=image, mask_image=mask, generator=seeded(6), **common).images
    assert_close(got, expected, TORCH_ATOL)


def test_inpaint_equals_diffusers_onnx(inpaint_dir: Path, tmp_path: Path) -> None:
    folder = with_mean_encoder(inpaint_dir, tmp_path / "mean-encoder")
    ours = OrtStableDiffusionInpaintPipeline.from_pretrained(folder)
    theirs = quiet(
        OnnxStableDiffusionInpaintPipeline.from_pretrained(folder, provider="CPUExecutionProvider", provider_options={})
    )
    theirs.scheduler = PNDMScheduler.from_config(ours.scheduler.config)
    image, mask = to_pil(an_image()), square_mask()
    latents = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=seeded(2))
    common = {"num_inference_steps": STEPS, "guidance_scale": 7.5, "output_type": "np", "height": SIZE, "width": SIZE}
    got = ours(PROMPTS[:1], image=image, mask_image=mask, latents=latents, progress=False, **common).images
    expected = theirs(PROMPTS[:1], image=image, mask_image=mask, latents=latents.numpy(), **common).images
    assert_close(got, expected, ONNX_ATOL)


def test_inpaint_refuses_a_text_to_image_unet(sd_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"input 'sample' has 4 channels, an inpainting UNet takes 9"):
        OrtStableDiffusionInpaintPipeline.from_pretrained(sd_dir)


# ---------------------------------------------------------------------- SDXL


@pytest.mark.parametrize(
    "kwargs",
    [
        {"guidance_scale": 5.0},  # no negative prompt: force_zeros_for_empty_prompt
        {
            "guidance_scale": 5.0,
            "negative_prompt": "blurry",
            "prompt_2": ["oil painting", "ink"],
            "num_images_per_prompt": 2,
        },
        {
            "guidance_scale": 6.0,
            "original_size": (128, 96),
            "crops_coords_top_left": (8, 16),
            "target_size": (64, 64),
            "negative_original_size": (32, 32),
            "negative_target_size": (48, 48),
            "guidance_rescale": 0.5,
        },
        {"guidance_scale": 1.0, "denoising_end": 0.6},
    ],
    ids=["zero-negative", "negative-and-prompt-2", "size-and-crop", "unguided-denoising-end"],
)
def test_sdxl_equals_diffusers_torch(sdxl_dir: Path, cache_dir: Path, kwargs: dict[str, Any]) -> None:
    ours = OrtStableDiffusionXLPipeline.from_pretrained(sdxl_dir)
    theirs = torch_pipe(StableDiffusionXLPipeline, cache_dir, "sdxl")
    common = {"num_inference_steps": STEPS, "output_type": "np", "height": SIZE, "width": SIZE, **kwargs}
    got = ours(PROMPTS, generator=seeded(1), progress=False, **common).images
    expected = theirs(PROMPTS, generator=seeded(1), **common).images
    assert_close(got, expected, TORCH_ATOL)


@pytest.mark.parametrize(
    "kwargs",
    [{"strength": 0.6}, {"strength": 0.3, "negative_prompt": "dull", "denoising_start": 0.5}],
    ids=["strength", "denoising-start"],
)
def test_sdxl_img2img_equals_diffusers_torch(sdxl_dir: Path, cache_dir: Path, kwargs: dict[str, Any]) -> None:
    ours = OrtStableDiffusionXLImg2ImgPipeline.from_pretrained(sdxl_dir)
    theirs = torch_pipe(StableDiffusionXLImg2ImgPipeline, cache_dir, "sdxl")
    image = an_image()
    common = {"num_inference_steps": STEPS, "output_type": "np", **kwargs}
    got = ours(PROMPTS, image=image, generator=seeded(2), progress=False, **common).images
    expected = theirs(PROMPTS, image=image, generator=seeded(2), **common).images
    assert_close(got, expected, TORCH_ATOL)


# ---------------------------------------------------------------------- any VAE


@pytest.fixture(scope="module")
def vae4_dirs(sd_dir: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny SD with a three-block VAE (scale factor 4): torch folder and ONNX folder."""
    root = tmp_path_factory.mktemp("vae4")
    torch_dir = root / "torch"
    shutil.copytree(tiny_torch_pipeline_dir(cache_dir, kind="sd"), torch_dir)
    shutil.rmtree(torch_dir / "vae")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        tiny_vae(3).save_pretrained(torch_dir / "vae")
    onnx_dir = root / "onnx"
    shutil.copytree(sd_dir, onnx_dir)
    for name in ("vae_encoder", "vae_decoder"):
        shutil.rmtree(onnx_dir / name)
    export_vae(torch_dir / "vae", onnx_dir, latent_size=16)
    return torch_dir, onnx_dir


def test_vae_with_scale_factor_4_gives_the_size_asked_for(vae4_dirs: tuple[Path, Path]) -> None:
    torch_dir, onnx_dir = vae4_dirs
    ours = OrtStableDiffusionPipeline.from_pretrained(onnx_dir)
    assert ours.vae_scale_factor == 4
    theirs = quiet(
        StableDiffusionPipeline.from_pretrained(torch_dir, safety_checker=None, requires_safety_checker=False)
    )
    assert theirs.vae_scale_factor == 4
    common = {"num_inference_steps": STEPS, "output_type": "np", "height": SIZE, "width": SIZE}
    got = ours(PROMPTS[:1], generator=seeded(0), progress=False, **common).images
    assert got.shape == (1, SIZE, SIZE, 3)
    assert_close(got, theirs(PROMPTS[:1], generator=seeded(0), **common).images, TORCH_ATOL)
    image2image = OrtStableDiffusionImg2ImgPipeline.from_pretrained(onnx_dir)
    out = image2image(PROMPTS[0], image=an_image(), num_inference_steps=STEPS, output_type="np", progress=False)
    assert out.images.shape == (1, SIZE, SIZE, 3)


def test_vae_scale_factor_from_the_decoder_dims_without_a_config(vae4_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(vae4_dirs[1], bare)
    for name in ("vae_encoder", "vae_decoder"):
        (bare / name / "config.json").unlink()
    ours = OrtStableDiffusionPipeline.from_pretrained(bare)
    assert str(ours.vae_decoder.spec.output("sample").dims[2]).startswith("4*")
    assert ours.vae_scale_factor == 4
    out = ours(PROMPTS[0], height=SIZE, width=SIZE, num_inference_steps=2, output_type="np", progress=False)
    assert out.images.shape == (1, SIZE, SIZE, 3)


# ---------------------------------------------------------------------- folders


def test_optimum_layout_runs_and_picks_its_pipelines(sd_dir: Path, sdxl_dir: Path, tmp_path: Path) -> None:
    sd = optimum_layout(sd_dir, tmp_path / "sd", "ORTStableDiffusionPipeline")
    xl = optimum_layout(sdxl_dir, tmp_path / "xl", "ORTStableDiffusionXLPipeline")
    assert pipeline_for_model(sd) is OrtStableDiffusionPipeline
    assert pipeline_for_model(sd, "image-to-image") is OrtStableDiffusionImg2ImgPipeline
    assert pipeline_for_model(xl) is OrtStableDiffusionXLPipeline
    assert pipeline_for_model(xl, "image-to-image") is OrtStableDiffusionXLImg2ImgPipeline
    image = an_image()
    common = {"num_inference_steps": 3, "output_type": "np", "progress": False}
    for folder, original, cls in (
        (sd, sd_dir, OrtStableDiffusionImg2ImgPipeline),
        (xl, sdxl_dir, OrtStableDiffusionXLImg2ImgPipeline),
    ):
        got = cls.from_pretrained(folder)(PROMPTS[0], image=image, generator=seeded(9), **common).images
        expected = cls.from_pretrained(original)(PROMPTS[0], image=image, generator=seeded(9), **common).images
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    ("class_name", "task", "expected"),
    [
        ("OnnxStableDiffusionPipeline", None, OrtStableDiffusionPipeline),
        ("StableDiffusionPipeline", "image-to-image", OrtStableDiffusionImg2ImgPipeline),
        ("OnnxStableDiffusionImg2ImgPipeline", None, OrtStableDiffusionImg2ImgPipeline),
        ("OnnxStableDiffusionImg2ImgPipeline", "text-to-image", OrtStableDiffusionPipeline),
        ("ORTStableDiffusionImg2ImgPipeline", "image-to-image", OrtStableDiffusionImg2ImgPipeline),
        ("OnnxStableDiffusionInpaintPipeline", None, OrtStableDiffusionInpaintPipeline),
        ("ORTStableDiffusionInpaintPipeline", None, OrtStableDiffusionInpaintPipeline),
        ("ORTStableDiffusionXLPipeline", None, OrtStableDiffusionXLPipeline),
        ("ORTStableDiffusionXLImg2ImgPipeline", "image-to-image", OrtStableDiffusionXLImg2ImgPipeline),
    ],
)
def test_pipeline_for_model_reads_the_class_name(
    tmp_path: Path, class_name: str, task: Any, expected: type[OrtPipelineBase]
) -> None:
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    assert pipeline_for_model(tmp_path, task) is expected


def test_pipeline_for_model_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match=r"pipeline class 'FluxPipeline' is not a Stable Diffusion pipeline"):
        pipeline_for_model(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "ORTStableDiffusionXLPipeline"}))
    with pytest.raises(ValueError, match=r"does text-to-image and image-to-image, not inpainting$"):
        pipeline_for_model(tmp_path, "inpainting")


def test_a_missing_part_is_named(sd_dir: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(sd_dir, partial)
    shutil.rmtree(partial / "vae_encoder")
    OrtStableDiffusionPipeline.from_pretrained(partial)  # text-to-image does not need it
    with pytest.raises(FileNotFoundError, match=r"missing vae_encoder/model.onnx; OrtStableDiffusionImg2ImgPipeline"):
        OrtStableDiffusionImg2ImgPipeline.from_pretrained(partial)


# ---------------------------------------------------------------------- on the device, and the hooks


def _runs(sd: Path, inpaint: Path, sdxl: Path) -> dict[str, tuple[type[OrtPipelineBase], Path, dict[str, Any]]]:
    image = an_image()
    return {
        "img2img": (OrtStableDiffusionImg2ImgPipeline, sd, {"image": image}),
        "inpaint": (OrtStableDiffusionInpaintPipeline, inpaint, {"image": image, "mask_image": square_mask()}),
        "sdxl": (OrtStableDiffusionXLPipeline, sdxl, {"height": SIZE, "width": SIZE}),
        "sdxl-img2img": (OrtStableDiffusionXLImg2ImgPipeline, sdxl, {"image": image, "strength": 0.9}),
    }


@pytest.mark.parametrize("scheduler", ["euler-ancestral", "dpm++"])
@pytest.mark.parametrize("run", ["img2img", "inpaint", "sdxl", "sdxl-img2img"])
def test_no_numpy_and_no_host_transfer_inside_the_loop(
    sd_dir: Path, inpaint_dir: Path, sdxl_dir: Path, run: str, scheduler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cls, folder, kwargs = _runs(sd_dir, inpaint_dir, sdxl_dir)[run]
    pipe = cls.from_pretrained(folder, scheduler=scheduler)
    denoise = pipe._denoise
    seen: list[list[str]] = []

    def guarded(*args: Any, **kw: Any) -> torch.Tensor:
        with forbid_host_transfers() as attempts:
            result = denoise(*args, **kw)
        seen.append(attempts)
        return result

    monkeypatch.setattr(pipe, "_denoise", guarded)
    out = pipe(PROMPTS[0], num_inference_steps=4, generator=seeded(0), output_type="pt", progress=False, **kwargs)
    assert seen == [[]]
    assert out.images.shape == (1, SIZE, SIZE, 3)
    assert torch.isfinite(out.images).all()


def test_progress_callable_and_step_callback(sd_dir: Path) -> None:
    pipe = OrtStableDiffusionImg2ImgPipeline.from_pretrained(sd_dir, scheduler="ddim")
    reports: list[tuple[int, int]] = []
    steps: list[int] = []

    def on_step(p: Any, i: int, t: torch.Tensor, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        assert p is pipe
        steps.append(i)
        return {"latents": torch.zeros_like(tensors["latents"])} if i == 2 else None

    common = {"image": an_image(), "strength": 0.8, "num_inference_steps": 5, "output_type": "np"}
    out = pipe(
        PROMPTS[0],
        generator=seeded(0),
        progress=lambda done, total: reports.append((done, total)),
        callback_on_step_end=on_step,
        **common,
    )
    assert reports == [(i, 4) for i in range(1, 5)]  # strength 0.8 of 5 DDIM steps
    assert steps == [0, 1, 2, 3]
    plain = pipe(PROMPTS[0], generator=seeded(0), progress=False, **common).images
    assert np.abs(out.images - plain).max() > 1e-3, "the callback's latents replaced the pipeline's"


# ---------------------------------------------------------------------- command lines


@pytest.mark.parametrize("cli", ["img2img", "inpaint"])
def test_cli_writes_png_on_its_builtin_default(
    cache_dir: Path, digits_dir: Path, digits_inpaint_dir: Path, tmp_path: Path, cli: str
) -> None:
    """Without --model: the digits model; img2img keeps the image's size, inpaint makes the model's 32x32."""
    image_path, mask_path, out = tmp_path / "in.png", tmp_path / "mask.png", tmp_path / "out.png"
    to_pil(an_image()).save(image_path)
    square_mask().save(mask_path)
    extra = ["--strength", "0.7"] if cli == "img2img" else ["--mask", str(mask_path)]
    proc = run_python(
        "-m",
        f"examples.stable_diffusion.{cli}",
        "--image",
        str(image_path),
        *extra,
        "--prompt",
        "a handwritten 6",
        "--steps",
        "3",
        "--cache-dir",
        str(cache_dir),
        "--out",
        str(out),
        "--no-progress",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    side = SIZE if cli == "img2img" else 32
    with Image.open(out) as written:
        assert (written.size, written.mode) == ((side, side), "RGB")
    assert f"model: {digits_dir if cli == 'img2img' else digits_inpaint_dir} (built-in digits model" in proc.stdout
    assert f"wrote {out}" in proc.stdout
    assert ("Inpaint" if cli == "inpaint" else "Img2Img") in proc.stdout


def test_txt2img_cli_runs_an_sdxl_folder(sdxl_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "xl.png"
    proc = run_python(
        "-m",
        "examples.stable_diffusion.txt2img",
        "--model",
        str(sdxl_dir),
        "--steps",
        "2",
        "--out",
        str(out),
        "--no-progress",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "pipeline: OrtStableDiffusionXLPipeline" in proc.stdout
    with Image.open(out) as written:
        assert written.size == (SIZE, SIZE)


def test_the_tiny_model_cache_is_keyed_by_what_builds_it(
    sd_dir: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.metadata

    from examples.stable_diffusion.build import cache

    key = cache.tiny_cache_key()
    assert sd_dir.name == f"tiny-random-sd-onnx-{key}"
    real = importlib.metadata.version
    monkeypatch.setattr(cache.importlib.metadata, "version", lambda name: "0.0" if name == "diffusers" else real(name))
    assert cache.tiny_cache_key() != key, "another diffusers would build other bytes"
    monkeypatch.undo()
    assert cache.tiny_cache_key() == key
    # A folder left by an older, unkeyed version of the code is never taken for the current model.
    stale = cache_dir / "tiny-sd-onnx"
    stale.mkdir(exist_ok=True)
    try:
        (stale / "model_index.json").write_text("{}")
        assert ensure_tiny_model(cache_dir, kind="sd") == sd_dir
    finally:
        shutil.rmtree(stale)


def test_the_digits_export_is_keyed_by_the_committed_weights(
    digits_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from examples.stable_diffusion.build import cache

    keys = {kind: cache.digits_cache_key(kind) for kind in cache.DIGITS_KINDS}
    assert digits_dir.name == f"digits-onnx-{keys['digits']}"
    assert keys["digits"] != keys["digits-inpaint"]
    # A copy of the committed folders (the inpainting one's links kept) has the same keys ...
    copy = tmp_path / "models"
    shutil.copytree(cache.MODELS_DIR, copy, symlinks=True)
    assert (copy / "digits-inpaint" / "vae").is_symlink()
    monkeypatch.setattr(cache, "MODELS_DIR", copy)
    assert {kind: cache.digits_cache_key(kind) for kind in cache.DIGITS_KINDS} == keys
    # ... and one byte more in the shared VAE's config changes both: retrained weights are exported afresh.
    config = copy / "digits" / "vae" / "config.json"
    config.write_text(config.read_text() + " ")
    changed = {kind: cache.digits_cache_key(kind) for kind in cache.DIGITS_KINDS}
    assert all(changed[kind] != keys[kind] for kind in keys), (changed, keys)
    with raises(ValueError, "kind: expected one of digits, digits-inpaint, got 'sd'"):
        cache.ensure_digits_model(tmp_path, kind="sd")  # type: ignore[arg-type]


def test_the_package_imports_diffusers_only_when_a_pipeline_is_used() -> None:
    code = (
        "import sys, examples.stable_diffusion as sd, examples.stable_diffusion.build.cache;"
        "print('diffusers' in sys.modules);"
        "sd.OrtStableDiffusionImg2ImgPipeline;"
        "print('diffusers' in sys.modules)"
    )
    proc = run_python("-c", code, timeout=120, check=True)
    assert proc.stdout.split() == ["False", "True"]
