"""The wheel installs ortbind and the example under names of their own, with working console scripts."""

from __future__ import annotations

import configparser
import importlib
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from .helpers import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO_ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (path,) = out.glob("ortbind-*.whl")
    return zipfile.ZipFile(path)


def test_top_level_names_are_the_projects_own(wheel: zipfile.ZipFile) -> None:
    top = {Path(name).parts[0] for name in wheel.namelist()}
    assert top == {"ortbind", "ortbind_examples", next(t for t in top if t.endswith(".dist-info"))}
    names = set(wheel.namelist())
    # Every module of the example, in every one of its packages, is in the wheel.
    sources = (REPO_ROOT / "examples").rglob("*.py")
    expected = {"ortbind_examples/" + str(path.relative_to(REPO_ROOT / "examples")) for path in sources}
    assert expected <= names, sorted(expected - names)
    assert "ortbind_examples/stable_diffusion/pipelines/sdxl_txt2img.py" in names


def test_console_scripts_point_at_importable_entry_points(wheel: zipfile.ZipFile) -> None:
    (entry_points,) = (n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(entry_points).decode())
    scripts = dict(parser["console_scripts"])
    assert set(scripts) == {"ortbind", "ortbind-txt2img", "ortbind-img2img", "ortbind-inpaint"}
    for name, target in scripts.items():
        module, function = target.split(":")
        # The installed ortbind_examples package is the examples folder under its own name.
        source = module.replace("ortbind_examples.", "examples.", 1)
        assert callable(getattr(importlib.import_module(source), function)), name
        if name != "ortbind":
            assert module.startswith("ortbind_examples.stable_diffusion."), name


def test_the_builtin_digits_model_is_in_the_wheel_whole(
    wheel: zipfile.ZipFile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from examples.stable_diffusion.build import cache

    # Every committed file, those the inpainting folder links to included (a wheel holds them as copies).
    models = REPO_ROOT / "examples" / "stable_diffusion" / "models"
    committed = {
        Path(root, name).relative_to(models).as_posix()
        for root, _, names in os.walk(models, followlinks=True)
        for name in names
    }
    assert {"MODEL_CARD.md", "digits-inpaint/vae/config.json", "digits/unet/config.json"} <= committed
    prefix = "ortbind_examples/stable_diffusion/models/"
    packed = {name.removeprefix(prefix) for name in wheel.namelist() if name.startswith(prefix)}
    assert packed == committed
    for name in committed:
        assert wheel.read(prefix + name) == (models / name).read_bytes(), name

    # Unpacked as pip installs it: the inpainting folder loads whole, and both folders have the
    # clone's export keys, so an installed copy exports the same ONNX folders.
    wheel.extractall(tmp_path, [prefix + name for name in committed])
    installed = tmp_path / prefix
    from diffusers import StableDiffusionInpaintPipeline

    with cache.quiet_libraries():
        pipe: Any = StableDiffusionInpaintPipeline.from_pretrained(installed / "digits-inpaint")
    assert pipe.unet.config.in_channels == 9 and pipe.vae.config.block_out_channels == [32, 64, 64]
    keys = {kind: cache.digits_cache_key(kind) for kind in cache.DIGITS_KINDS}
    monkeypatch.setattr(cache, "MODELS_DIR", installed)
    assert {kind: cache.digits_cache_key(kind) for kind in cache.DIGITS_KINDS} == keys
