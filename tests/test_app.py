"""The web page (``examples.stable_diffusion.app``): its API through gradio_client, and the page in Chromium.

Both run the tiny model and compare the picture with the one the command line writes for the
same prompt, steps and seed: PNG both ways, so equal to the bit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("gradio")
pytest.importorskip("gradio_client")

from PIL import Image

from .netns import require_loopback_only
from .sd_servers import cli_image, free_port, loopback_opener, sample_images, tiny_cache_dir

pytestmark = [pytest.mark.slow, pytest.mark.loopback]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Enough steps for the page to show the bar at several points of a run that takes a few seconds.
BROWSER_STEPS = 60


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_cache_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def app_url(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require_loopback_only()
    os.environ["GRADIO_TEMP_DIR"] = str(tmp_path_factory.mktemp("gradio"))
    from examples.stable_diffusion.app import build_app, launch_options
    from examples.stable_diffusion.tasks import Models

    models = Models(None, "cpu", cache_dir)
    app = build_app(models).queue()
    port = free_port()
    app.launch(prevent_thread_lock=True, quiet=True, **launch_options("127.0.0.1", port))
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()


def test_api_endpoint_gives_the_cli_picture(app_url: str, cache_dir: Path, tmp_path: Path) -> None:
    from gradio_client import Client

    client = Client(app_url, download_files=str(tmp_path / "downloads"), verbose=False)
    result = client.predict(prompt="a red cube", steps=4, seed=11, api_name="/txt2img")
    assert len(result) == 1
    path = Path(result[0]["image"])
    assert path.suffix == ".png"
    with Image.open(path) as image:
        got = np.asarray(image.convert("RGB"))
    expected = cli_image(cache_dir, tmp_path / "cli.png", "--prompt", "a red cube", "--steps", "4", "--seed", "11")
    np.testing.assert_array_equal(got, expected)

    # Every field by name, a batch, and a refusal that names the field.
    result = client.predict(
        prompt="a lighthouse",
        negative_prompt="fog",
        steps=3,
        guidance=5.0,
        seed=2,
        scheduler="ddim",
        width=96,
        height=64,
        batch=2,
        api_name="/txt2img",
    )
    assert len(result) == 2
    with Image.open(result[1]["image"]) as image:
        second = np.asarray(image.convert("RGB"))
    expected = cli_image(
        cache_dir,
        tmp_path / "batch.png",
        *("--prompt", "a lighthouse", "--negative-prompt", "fog", "--steps", "3", "--guidance", "5"),
        *("--seed", "2", "--scheduler", "ddim", "--width", "96", "--height", "64", "--batch", "2"),
        read=tmp_path / "batch-1.png",
    )
    assert expected.shape == (64, 96, 3)
    np.testing.assert_array_equal(second, expected)

    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=r"width: must be a multiple of 8, got 100; try 96"):
        client.predict(prompt="x", steps=2, width=100, api_name="/txt2img")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return sample_images(tmp_path_factory.mktemp("pictures"))


def _read(result: list[dict[str, Any]]) -> np.ndarray:
    (item,) = result
    path = Path(item["image"])
    assert path.suffix == ".png"
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_img2img_and_inpaint_endpoints_give_the_cli_pictures(
    app_url: str, cache_dir: Path, pictures: tuple[Path, Path], tmp_path: Path
) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    image, mask = pictures
    client = Client(app_url, download_files=str(tmp_path / "downloads"), verbose=False)
    got = _read(
        client.predict(
            prompt="a watercolor", image=handle_file(image), strength=0.6, steps=4, seed=3, api_name="/img2img"
        )
    )
    args = ("--prompt", "a watercolor", "--image", str(image), "--strength", "0.6", "--steps", "4", "--seed", "3")
    np.testing.assert_array_equal(got, cli_image(cache_dir, tmp_path / "img2img.png", *args, command="img2img"))

    editor = {"background": handle_file(image), "layers": [], "composite": None}
    got = _read(
        client.predict(
            prompt="a red door", image=editor, mask_image=handle_file(mask), steps=4, seed=5, api_name="/inpaint"
        )
    )
    args = ("--prompt", "a red door", "--image", str(image), "--mask", str(mask), "--steps", "4", "--seed", "5")
    expected = cli_image(cache_dir, tmp_path / "inpaint.png", *args, command="inpaint")
    np.testing.assert_array_equal(got, expected)

    # The strokes painted on the editor are the mask when none is uploaded: here the same left half.
    with Image.open(mask) as m:
        alpha = np.asarray(m.convert("L"))
    stroke = np.zeros((64, 64, 4), dtype=np.uint8)
    stroke[..., :3], stroke[..., 3] = 255, alpha
    Image.fromarray(stroke, mode="RGBA").save(tmp_path / "stroke.png")
    editor = {"background": handle_file(image), "layers": [handle_file(tmp_path / "stroke.png")], "composite": None}
    got = _read(client.predict(prompt="a red door", image=editor, steps=4, seed=5, api_name="/inpaint"))
    np.testing.assert_array_equal(got, expected)

    with pytest.raises(AppError, match=r"mask_image: missing; paint over the image where to repaint"):
        editor = {"background": handle_file(image), "layers": [], "composite": None}
        client.predict(image=editor, steps=2, api_name="/inpaint")
    with pytest.raises(AppError, match=r"image: missing; upload the starting image"):
        client.predict(steps=2, api_name="/img2img")


# ---------------------------------------------------------------------- the page in a browser

# Records every text the progress bar shows, from before the click to the end of the run.
_WATCH_PROGRESS = """
window.__progress = [];
new MutationObserver(() => {
  for (const el of document.querySelectorAll('.progress-text, .progress-level-inner, .meta-text')) {
    const text = el.textContent.trim();
    if (text && window.__progress[window.__progress.length - 1] !== text) window.__progress.push(text);
  }
}).observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true});
"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER}: apt-get install chromium chromium-driver (make test does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,860",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def test_page_generates_with_a_moving_progress_bar(browser: Any, app_url: str, cache_dir: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(app_url)
    prompt = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#txt2img-prompt textarea")))
    prompt.clear()
    prompt.send_keys("a lighthouse at dusk")
    steps = browser.find_element(By.CSS_SELECTOR, "#txt2img-steps input[type=number]")
    steps.send_keys(Keys.CONTROL, "a")
    steps.send_keys(str(BROWSER_STEPS), Keys.TAB)
    seed = browser.find_element(By.CSS_SELECTOR, "#txt2img-seed input")
    seed.send_keys(Keys.CONTROL, "a")
    seed.send_keys("5", Keys.TAB)

    browser.execute_script(_WATCH_PROGRESS)
    browser.find_element(By.CSS_SELECTOR, "#txt2img-generate").click()
    image = WebDriverWait(browser, 120).until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, "#txt2img-gallery img"))
    )
    time.sleep(0.5)  # let the gallery settle for the screenshot
    shot = Path(os.environ.get("ORTBIND_SCREENSHOT") or tmp_path / "page.png")
    browser.save_screenshot(str(shot))

    # The bar moved: it showed several step counts of this run, rising.
    seen = browser.execute_script("return window.__progress")
    # PNDM without its Runge-Kutta warm-up runs steps + 1 UNet steps.
    counts = [int(m.group(1)) for text in seen if (m := re.search(rf"(\d+)/{BROWSER_STEPS + 1} step", text))]
    assert len(set(counts) - {0}) >= 2, seen
    assert counts == sorted(counts), seen

    # The picture is the CLI's, in PNG.
    src = image.get_attribute("src")
    assert src is not None and src.startswith(app_url) and src.endswith(".png"), src
    with loopback_opener().open(src, timeout=30) as response:
        (tmp_path / "page-image.png").write_bytes(response.read())
    with Image.open(tmp_path / "page-image.png") as png:
        got = np.asarray(png.convert("RGB"))
    args = ("--prompt", "a lighthouse at dusk", "--steps", str(BROWSER_STEPS), "--seed", "5")
    np.testing.assert_array_equal(got, cli_image(cache_dir, tmp_path / "cli.png", *args))

    # Everything the page loaded came from the app itself.
    urls = {
        entry["params"]["request"]["url"]
        for entry in (json.loads(e["message"])["message"] for e in browser.get_log("performance"))
        if entry["method"] == "Network.requestWillBeSent"
    }
    # (The browser's own chrome:// pages are not the network.)
    outside = sorted(u for u in urls if u.startswith(("http:", "https:", "ws:", "wss:")) and not u.startswith(app_url))
    assert not outside, outside


def test_page_has_three_tabs_and_runs_img2img_and_inpaint(
    browser: Any, app_url: str, cache_dir: Path, pictures: tuple[Path, Path], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(app_url)
    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#txt2img-prompt textarea")))
    tabs = {b.text.strip(): b for b in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]")}
    assert {"txt2img", "img2img", "inpaint"} <= set(tabs), sorted(tabs)

    tabs["img2img"].click()
    upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#img2img-image input[type=file]")))
    upload.send_keys(str(pictures[0]))
    wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#img2img-image img")))
    prompt = browser.find_element(By.CSS_SELECTOR, "#img2img-prompt textarea")
    prompt.clear()
    prompt.send_keys("a watercolor")
    for name, value in (("steps", "4"), ("strength", "0.5")):
        box = browser.find_element(By.CSS_SELECTOR, f"#img2img-{name} input[type=number]")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(value, Keys.TAB)
    seed = browser.find_element(By.CSS_SELECTOR, "#img2img-seed input")
    seed.send_keys(Keys.CONTROL, "a")
    seed.send_keys("7", Keys.TAB)
    browser.find_element(By.CSS_SELECTOR, "#img2img-generate").click()
    image = WebDriverWait(browser, 120).until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, "#img2img-gallery img"))
    )
    src = image.get_attribute("src")
    assert src is not None and src.endswith(".png"), src
    with loopback_opener().open(src, timeout=30) as response:
        (tmp_path / "page-image.png").write_bytes(response.read())
    with Image.open(tmp_path / "page-image.png") as png:
        got = np.asarray(png.convert("RGB"))
    args = ("--prompt", "a watercolor", "--image", str(pictures[0]), "--steps", "4", "--strength", "0.5")
    expected = cli_image(cache_dir, tmp_path / "cli.png", *args, "--seed", "7", command="img2img")
    np.testing.assert_array_equal(got, expected)

    # Inpaint with an uploaded mask: the picture goes through the editor's canvas and back.
    tabs["inpaint"].click()
    upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#inpaint-image input[type=file]")))
    upload.send_keys(str(pictures[0]))
    browser.find_element(By.CSS_SELECTOR, "#inpaint-mask input[type=file]").send_keys(str(pictures[1]))
    wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#inpaint-mask img")))
    box = browser.find_element(By.CSS_SELECTOR, "#inpaint-steps input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("4", Keys.TAB)
    time.sleep(1)  # let the editor draw the uploaded picture on its canvas
    browser.find_element(By.CSS_SELECTOR, "#inpaint-generate").click()
    image = WebDriverWait(browser, 120).until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, "#inpaint-gallery img"))
    )
    with loopback_opener().open(image.get_attribute("src"), timeout=30) as response:
        (tmp_path / "page-inpaint.png").write_bytes(response.read())
    with Image.open(tmp_path / "page-inpaint.png") as png:
        got = np.asarray(png.convert("RGB"))
    args = ("--image", str(pictures[0]), "--mask", str(pictures[1]), "--steps", "4")
    np.testing.assert_array_equal(got, cli_image(cache_dir, tmp_path / "cli-inpaint.png", *args, command="inpaint"))


def test_the_command_serves_the_page(cache_dir: Path, tmp_path: Path) -> None:
    require_loopback_only()
    import subprocess
    import sys
    import urllib.error

    from .reference import REPO_ROOT

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    command = [
        sys.executable,
        "-m",
        "examples.stable_diffusion.app",
        "--cache-dir",
        str(cache_dir),
        "--port",
        str(port),
    ]
    with subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        try:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                try:
                    with loopback_opener().open(f"http://127.0.0.1:{port}/config", timeout=5) as response:
                        config = json.loads(response.read())
                    break
                except (urllib.error.URLError, ConnectionError):
                    assert time.monotonic() < deadline, "the page did not come up in 120 s"
                    time.sleep(0.5)
            assert config["title"] == "ortbind Stable Diffusion"
            endpoints = {f"/{d['api_name']}" for d in config["dependencies"] if d.get("api_name")}
            assert {"/txt2img", "/img2img", "/inpaint"} <= endpoints, endpoints
        finally:
            proc.kill()
