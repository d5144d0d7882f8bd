"""The wheel installs ortbind and the example under names of their own, with working console scripts."""

from __future__ import annotations

import configparser
import importlib
import subprocess
import sys
import zipfile
from pathlib import Path

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
