"""The command lines on the request layer: their options are the fields, their refusals the request layer's."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("diffusers")

from examples.stable_diffusion.apps.cli import build_parser, main
from examples.stable_diffusion.apps.requests import TASKS

from .helpers import cli_image, sample_images

pytestmark = pytest.mark.slow


def test_the_options_are_the_fields() -> None:
    for task, fields in TASKS.items():
        actions = {action.dest: action for action in build_parser(task)._actions}
        for spec in fields:
            action = actions[spec.name]
            assert action.option_strings == [spec.option()], spec.name
            assert action.required is spec.required, spec.name
            if spec.choices:
                assert tuple(action.choices or ()) == spec.choices
    help_text = build_parser("inpaint").format_help()
    assert "--mask MASK" in help_text and "--strength STRENGTH" in help_text
    assert "(default: the model's size (its UNet's sample_size x its VAE's scale factor))" in " ".join(
        help_text.split()
    )
    assert "--model MODEL ONNX model folder (default: the built-in digits model, trained on scikit-learn's" in " ".join(
        help_text.split()
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "1000000000"], "steps: must be at most 150 (the most steps one request may run), got 1000000000"),
        (["--guidance", "nan"], "guidance: must be a finite number, got nan"),
        (["--guidance", "1e400"], "guidance: must be a finite number, got inf"),
        (
            ["--width", "36"],
            "width: must be a multiple of 8 (this model's VAE scale factor x UNet downsampling), got 36; try 32",
        ),
        (["--width", "256"], "width: must be at most 128 (the longest side this model makes), got 256"),
        (
            ["--width", "128", "--height", "128"],
            "width: 128x128 is 16384 pixels, more than the 4096 this model makes "
            "at most (four times its default 32x32); ask for less",
        ),
        (
            ["--seed", str(2**64)],
            "seed: must be at most 9007199254740991 (2**53 - 1, the largest whole number a browser "
            "holds exactly), got 18446744073709551616",
        ),
    ],
    ids=["steps", "nan", "inf", "multiple", "side", "pixels", "seed"],
)
def test_a_bad_option_is_refused_naming_the_field(
    cache_dir: Path, digits_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    """On the built-in digits model (exported before the output is captured): its size, multiple and pixels."""
    assert main("txt2img", ["--cache-dir", str(cache_dir), "--out", str(tmp_path / "x.png"), *args]) == 2
    assert capsys.readouterr().err == f"txt2img: error: {message}\n"
    assert not (tmp_path / "x.png").exists()


def test_images_are_checked_before_they_are_decoded(
    cache_dir: Path, digits_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = tmp_path / "big.png"
    Image.new("RGB", (2048, 2048)).save(big)
    assert main("img2img", ["--cache-dir", str(cache_dir), "--image", str(big), "--out", str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err == (
        "img2img: error: image: a 2048x2048 image has 4194304 pixels, more than the 16384 taken for this model; "
        "send a smaller image\n"
    )


def test_a_folder_that_cannot_run_the_task_says_why(
    sd_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, mask = sample_images(tmp_path)
    args = ["--model", str(sd_dir), "--image", str(image), "--mask", str(mask), "--out", str(tmp_path / "x.png")]
    assert main("inpaint", args) == 2
    assert capsys.readouterr().err == (
        f"inpaint: error: task: {sd_dir}: a OnnxStableDiffusionPipeline model does text-to-image and image-to-image, "
        "not inpainting\n"
    )


def test_the_size_defaults_to_the_models(
    sdxl_dir: Path, cache_dir: Path, digits_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    picture = cli_image(tmp_path / "xl.png", "--model", str(sdxl_dir), "--steps", "2")
    assert picture.shape == (64, 64, 3)  # the tiny SDXL's UNet sample_size 8 x its VAE's 8
    out = capsys.readouterr().out
    assert "pipeline: OrtStableDiffusionXLPipeline; device: cpu; scheduler: PNDMScheduler; 64x64; 2 steps" in out
    # Without --model: the built-in digits model, its UNet's sample_size 8 x its VAE's 4, its DDIM scheduler.
    picture = cli_image(tmp_path / "digits.png", "--steps", "2", cache_dir=cache_dir)
    assert picture.shape == (32, 32, 3)
    out = capsys.readouterr().out
    assert f"model: {digits_dir} (built-in digits model: ask for a digit, 0 to 9)" in out
    assert "pipeline: OrtStableDiffusionPipeline; device: cpu; scheduler: DDIMScheduler; 32x32; 2 steps" in out
