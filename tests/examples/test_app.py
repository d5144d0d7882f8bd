"""The web page (``examples.stable_diffusion.app``): its API through gradio_client, the page in Chromium.

Three pages run side by side: the built-in digits model (no ``--model``), and a tiny random-weight
SDXL folder and inpainting folder, each given as ``--model`` would give it. Every route's picture
is compared with the one the command line writes for the same request, defaults included, and so
are the ten digits the built-in page opens with: PNG both ways, so equal to the bit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("gradio")
pytest.importorskip("gradio_client")

from .helpers import REPO_ROOT, cli_image, cli_images, loopback_opener, png_array, sample_images, wait_until
from .netns import require_loopback_only

pytestmark = [pytest.mark.slow, pytest.mark.loopback]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Enough steps and images for the page to show the bar at several points of a run that takes a
# few seconds (about 3 s for 8 digits of 150 DDIM steps).
BROWSER_STEPS = 150
BROWSER_BATCH = 8


@dataclass
class Page:
    """A page being served, and the command-line options that run the same model."""

    url: str
    model: list[str]
    app: Any
    service: Any


@pytest.fixture(scope="module")
def pages(cache_dir: Path, sdxl_dir: Path, inpaint_dir: Path) -> Iterator[dict[str, Page]]:
    require_loopback_only()
    from examples.stable_diffusion.apps.service import Service
    from examples.stable_diffusion.apps.web import build_app, launch_options

    served: dict[str, Page] = {}
    try:
        for name, folder in (("builtin", None), ("sdxl", sdxl_dir), ("inpaint", inpaint_dir)):
            service = Service(folder, cache_dir=cache_dir)
            app = build_app(service).queue()
            # No port given: Gradio takes the first free one from 7860 on, trying the next on a conflict.
            app.launch(prevent_thread_lock=True, quiet=True, **launch_options("127.0.0.1", None, 16 * 2**20))
            model = ["--cache-dir", str(cache_dir)] if folder is None else ["--model", str(folder)]
            served[name] = Page(app.local_url, model, app, service)
        yield served
    finally:
        for page in served.values():
            page.app.close()


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return sample_images(tmp_path_factory.mktemp("pictures"))


def public(config: dict[str, Any]) -> set[str]:
    """The API endpoints a page's config offers (the Stop buttons' events are private)."""
    return {d["api_name"] for d in config["dependencies"] if d.get("api_visibility") == "public"}


def client(page: Page, tmp_path: Path) -> Any:
    from gradio_client import Client

    return Client(page.url, download_files=str(tmp_path / "downloads"), verbose=False)


def read(result: list[dict[str, Any]]) -> list[np.ndarray]:
    paths = [Path(item["image"]) for item in result]
    assert all(path.suffix == ".png" for path in paths), paths
    return [png_array(path.read_bytes()) for path in paths]


# ---------------------------------------------------------------------- every route against the CLI


def test_txt2img_routes_give_the_cli_pictures(pages: dict[str, Page], tmp_path: Path) -> None:
    # A size other than the default, within each model's pixels (the digits model's: 64x64).
    sizes = {"builtin": (64, 32), "sdxl": (96, 64)}
    for name, (width, height) in sizes.items():
        page = pages[name]
        api = client(page, tmp_path / name)
        # Defaults, all of them: no width or height, the model's scheduler.
        (got,) = read(api.predict(api_name="/txt2img"))
        np.testing.assert_array_equal(got, cli_image(tmp_path / f"{name}-defaults.png", *page.model))
        # Every field by name, and a batch.
        got_batch = read(
            api.predict(
                prompt="a lighthouse",
                negative_prompt="fog",
                steps=3,
                guidance=5.0,
                seed=2,
                scheduler="ddim",
                width=width,
                height=height,
                batch=2,
                api_name="/txt2img",
            )
        )
        args = (
            "--prompt",
            "a lighthouse",
            "--negative-prompt",
            "fog",
            "--steps",
            "3",
            "--guidance",
            "5",
            "--seed",
            "2",
        )
        args += ("--scheduler", "ddim", "--width", str(width), "--height", str(height), "--batch", "2")
        expected = cli_images(tmp_path / f"{name}-batch.png", *page.model, *args)
        assert [e.shape for e in expected] == [(height, width, 3)] * 2
        for got_image, expected_image in zip(got_batch, expected, strict=True):
            np.testing.assert_array_equal(got_image, expected_image)


def test_img2img_routes_give_the_cli_pictures(
    pages: dict[str, Page], pictures: tuple[Path, Path], tmp_path: Path
) -> None:
    from gradio_client import handle_file

    image = pictures[0]
    for name in ("builtin", "sdxl"):
        page = pages[name]
        api = client(page, tmp_path / name)
        (got,) = read(api.predict(image=handle_file(image), api_name="/img2img"))
        expected = cli_image(tmp_path / f"{name}-defaults.png", *page.model, "--image", str(image), command="img2img")
        np.testing.assert_array_equal(got, expected)
        (got,) = read(
            api.predict(
                prompt="a watercolor", image=handle_file(image), strength=0.6, steps=4, seed=3, api_name="/img2img"
            )
        )
        args = ("--prompt", "a watercolor", "--image", str(image), "--strength", "0.6", "--steps", "4", "--seed", "3")
        np.testing.assert_array_equal(got, cli_image(tmp_path / f"{name}.png", *page.model, *args, command="img2img"))


def test_inpaint_routes_give_the_cli_pictures(
    pages: dict[str, Page], pictures: tuple[Path, Path], tmp_path: Path
) -> None:
    from gradio_client import handle_file

    image, mask = pictures
    for name in ("builtin", "inpaint"):
        page = pages[name]
        api = client(page, tmp_path / name)
        editor = {"background": handle_file(image), "layers": [], "composite": None}
        (got,) = read(api.predict(image=editor, mask_image=handle_file(mask), api_name="/inpaint"))
        args = ("--image", str(image), "--mask", str(mask))
        expected = cli_image(tmp_path / f"{name}-defaults.png", *page.model, *args, command="inpaint")
        np.testing.assert_array_equal(got, expected)
        (got,) = read(
            api.predict(
                prompt="a red door", image=editor, mask_image=handle_file(mask), steps=4, seed=5, api_name="/inpaint"
            )
        )
        args += ("--prompt", "a red door", "--steps", "4", "--seed", "5")
        expected = cli_image(tmp_path / f"{name}.png", *page.model, *args, command="inpaint")
        np.testing.assert_array_equal(got, expected)

        # The strokes painted on the editor are the mask when none is uploaded: here the same left half.
        from PIL import Image

        with Image.open(mask) as m:
            alpha = np.asarray(m.convert("L"))
        stroke = np.zeros((64, 64, 4), dtype=np.uint8)
        stroke[..., :3], stroke[..., 3] = 255, alpha
        Image.fromarray(stroke, mode="RGBA").save(tmp_path / "stroke.png")
        painted = {
            "background": handle_file(image),
            "layers": [handle_file(tmp_path / "stroke.png")],
            "composite": None,
        }
        (got,) = read(api.predict(prompt="a red door", image=painted, steps=4, seed=5, api_name="/inpaint"))
        np.testing.assert_array_equal(got, expected)


def test_each_page_offers_what_its_folder_runs(pages: dict[str, Page]) -> None:
    for name, offered in (
        ("builtin", {"txt2img", "img2img", "inpaint"}),
        ("sdxl", {"txt2img", "img2img"}),
        ("inpaint", {"inpaint"}),
    ):
        with loopback_opener().open(pages[name].url + "config", timeout=30) as response:
            config = json.loads(response.read())
        assert config["title"] == "ortbind Stable Diffusion"
        assert public(config) == offered, name
        # A task the folder does not run has a tab that says why.
        notes = {
            c["props"].get("elem_id"): c["props"].get("value")
            for c in config["components"]
            if str(c["props"].get("elem_id", "")).endswith("-unavailable")
        }
        assert set(notes) == {f"{task}-unavailable" for task in {"txt2img", "img2img", "inpaint"} - offered}, name
        for note in notes.values():
            assert "is not offered for this model." in note and "not " in note.split("model.", 1)[1], note
    # The form's defaults are the model's: the tiny SDXL's size is its UNet's sample_size x 8, the
    # digits model's its sample_size x 4; the other defaults are the request layer's, for digits.
    for name, expected in (("sdxl", (64, 16, 256)), ("builtin", (32, 8, 128))):
        by_id = elements(pages[name])
        width = by_id["txt2img-width"]["props"]
        assert (width["value"], width["step"], width["maximum"]) == expected, name
        assert ("txt2img-digits" in by_id) is (name == "builtin"), name
    form = elements(pages["builtin"])
    assert [form[f"txt2img-{name}"]["props"]["value"] for name in ("prompt", "steps", "guidance", "scheduler")] == [
        "a handwritten 7",
        25,
        5,
        "model",
    ]


def elements(page: Page) -> dict[str, dict[str, Any]]:
    """The page's components by their ``elem_id``, from its config."""
    with loopback_opener().open(page.url + "config", timeout=30) as response:
        components = json.loads(response.read())["components"]
    return {c["props"]["elem_id"]: c for c in components if c["props"].get("elem_id")}


def test_the_builtin_page_opens_with_the_cli_pictures_of_the_ten_digits(pages: dict[str, Page], tmp_path: Path) -> None:
    gallery = elements(pages["builtin"])["txt2img-digits"]["props"]
    assert gallery["format"] == "png" and gallery["columns"] == 10
    urls = [item["image"]["url"] for item in gallery["value"]]
    assert len(urls) == 10
    for digit, url in enumerate(urls):
        assert url.startswith(pages["builtin"].url) and url.endswith(".png"), url
        with loopback_opener().open(url, timeout=30) as response:
            got = png_array(response.read())
        prompt = f"a handwritten {digit}"
        expected = cli_image(tmp_path / f"{digit}.png", *pages["builtin"].model, "--prompt", prompt)
        np.testing.assert_array_equal(got, expected, err_msg=prompt)


# ---------------------------------------------------------------------- hostile requests


def call_raw(page: Page, task: str, data: str) -> tuple[str, str]:
    """Call a page's endpoint with ``data`` (a JSON array, as text: it may hold NaN); the event and its data."""
    opener = loopback_opener()
    request = urllib.request.Request(
        f"{page.url}gradio_api/call/{task}",
        data=('{"data": ' + data + "}").encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with opener.open(request, timeout=30) as response:
        event_id = json.loads(response.read())["event_id"]
    with opener.open(f"{page.url}gradio_api/call/{task}/{event_id}", timeout=120) as response:
        stream = response.read().decode()
    events = re.findall(r"event: (\w+)\ndata: (.*)", stream)
    return events[-1]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ('["x", "", 2, NaN, 0, "model", 32, 32, 1]', "guidance: must be a finite number, got nan"),
        (
            '["x", "", 2, 7.5, 0, "model", 128, 128, 1]',
            "width: 128x128 is 16384 pixels, more than the 4096 this "
            "model makes at most (four times its default 32x32); ask for less",
        ),
        (
            '["x", "", 2, 7.5, 0, "model", 64, 36, 1]',
            "height: must be a multiple of 8 (this model's VAE scale factor x UNet downsampling), got 36; try 32",
        ),
        (
            '["x \\ud800", "", 2, 7.5, 0, "model", 64, 64, 1]',
            "prompt: not valid Unicode: a lone surrogate '\\ud800' at index 2; send UTF-8 text",
        ),
        ('["x", "", 2, 7.5, 0, ["pndm"], 64, 64, 1]', None),
    ],
    ids=["nan", "pixels", "multiple", "surrogate", "list"],
)
def test_the_page_refuses_what_the_request_layer_refuses(
    pages: dict[str, Page], data: str, message: str | None
) -> None:
    event, text = call_raw(pages["builtin"], "txt2img", data)
    assert event == "error"
    if message is not None:
        assert json.loads(text)["error"] == message
    assert "Traceback" not in text


def test_a_generation_stops_when_its_caller_cancels(
    pages: dict[str, Page], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tiny SDXL at 128x128: a run of 150 steps takes seconds (the digits model's largest, one).
    service = pages["sdxl"].service
    pipe = service.pipeline("txt2img")
    runs: list[list[int]] = []
    real = type(pipe)._denoise

    def counted(**kwargs: Any) -> Any:
        steps: list[int] = []
        runs.append(steps)
        check = kwargs["callback_on_step_end"]

        def on_step(*args: Any) -> Any:
            steps.append(args[1])
            return check(*args)

        return real(pipe, **{**kwargs, "callback_on_step_end": on_step})

    monkeypatch.setattr(pipe, "_denoise", counted)
    page = pages["sdxl"]
    api = client(page, tmp_path)
    job = api.submit(steps=150, width=128, height=128, api_name="/txt2img")
    wait_until(lambda: runs and runs[0], timeout=60, what="the run to start")
    # What the page's Stop button sends: cancel this session's txt2img event.
    with loopback_opener().open(page.url + "config", timeout=30) as response:
        config = json.loads(response.read())
    (fn_index,) = (d["id"] for d in config["dependencies"] if d.get("api_name") == "txt2img")
    body = {"session_hash": api.session_hash, "fn_index": fn_index, "event_id": "stop"}
    request = urllib.request.Request(
        page.url + "gradio_api/cancel",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with loopback_opener().open(request, timeout=30) as response:
        assert json.loads(response.read()) == {"success": True}
    # Runs go one at a time: once the next one is done, the cancelled one has stopped.
    read(api.predict(steps=2, api_name="/txt2img"))
    assert len(runs) == 2 and len(runs[0]) < 151, [len(r) for r in runs]
    job.cancel()


def test_uploads_are_bounded_and_cleaned_up(pages: dict[str, Page], cache_dir: Path) -> None:
    from examples.stable_diffusion.apps.service import Service
    from examples.stable_diffusion.apps.web import build_app, launch_options

    def upload(url: str, size: int) -> tuple[int, bytes]:
        """POST a file of ``size`` bytes to the page's upload route; the status and the body of the answer."""
        head = b'--B\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n'
        head += b"Content-Type: image/png\r\n\r\n"
        body = head + b"\0" * size + b"\r\n--B--\r\n"
        address = url.removeprefix("http://").rstrip("/")
        host, port = address.split(":")
        with socket.create_connection((host, int(port)), timeout=60) as connection:
            connection.sendall(
                f"POST /gradio_api/upload HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n"
                f"Content-Type: multipart/form-data; boundary=B\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            answer = b"".join(iter(lambda: connection.recv(65536), b""))
        status_line, _, rest = answer.partition(b"\r\n")
        return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]

    uploads = Path(os.environ["GRADIO_TEMP_DIR"])
    # One byte over: the page reads it all, refuses it, and the answer is not lost to a reset.
    status, answer = upload(pages["builtin"].url, 16 * 2**20 + 1)
    assert (status, answer) == (413, b"File size exceeded maximum allowed size of 16777216 bytes.")
    largest = max((p.stat().st_size for p in uploads.rglob("*") if p.is_file()), default=0)
    assert largest < 2**20, "the refused upload was kept"

    # A page that keeps files one second: an upload is gone soon after, without a restart.
    app = build_app(Service(None, cache_dir=cache_dir), keep_files_s=1).queue()
    app.launch(prevent_thread_lock=True, quiet=True, **launch_options("127.0.0.1", None, 16 * 2**20))
    try:
        status, answer = upload(app.local_url, 1000)
        assert status == 200
        (stored,) = (Path(p) for p in json.loads(answer))
        assert stored.is_file() and stored.is_relative_to(uploads)
        wait_until(lambda: not stored.exists(), timeout=30, what=f"{stored} to be deleted")
    finally:
        app.close()


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


def set_number(browser: Any, selector: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = browser.find_element(By.CSS_SELECTOR, selector)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(value, Keys.TAB)


def gallery_picture(browser: Any, task: str, tmp_path: Path) -> np.ndarray:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    image = WebDriverWait(browser, 120).until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, f"#{task}-gallery img"))
    )
    src = image.get_attribute("src")
    assert src is not None and src.endswith(".png"), src
    with loopback_opener().open(src, timeout=30) as response:
        return png_array(response.read())


def test_page_generates_with_a_moving_progress_bar(browser: Any, pages: dict[str, Page], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    page = pages["builtin"]
    browser.get(page.url)
    prompt = WebDriverWait(browser, 60).until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#txt2img-prompt textarea")))
    # The first screen shows the ten digits the page opened with.
    digits = browser.find_elements(By.CSS_SELECTOR, "#txt2img-digits img")
    assert len(digits) == 10
    height = browser.execute_script("return window.innerHeight")
    assert all(image.rect["y"] >= 0 and image.rect["y"] + image.rect["height"] <= height for image in digits)
    # ORTBIND_SCREENSHOT=docs/web-ui.png makes the docs' pictures: the page as it opens
    # (docs/web-ui-tabs.png), then after the run below (docs/web-ui.png).
    shot = os.environ.get("ORTBIND_SCREENSHOT")
    if shot:
        browser.save_screenshot(str(Path(shot).with_name(Path(shot).stem + "-tabs.png")))
    prompt.clear()
    prompt.send_keys("a handwritten 3")
    set_number(browser, "#txt2img-steps input[type=number]", str(BROWSER_STEPS))
    set_number(browser, "#txt2img-seed input", "5")
    set_number(browser, "#txt2img-batch input[type=number]", str(BROWSER_BATCH))

    browser.execute_script(_WATCH_PROGRESS)
    browser.find_element(By.CSS_SELECTOR, "#txt2img-generate").click()
    got = gallery_picture(browser, "txt2img", tmp_path)
    if shot:
        # docs/web-ui.png: the first screen, with the ten digits and the pictures just made.
        browser.execute_script("window.scrollTo(0, 0)")
        time.sleep(0.5)  # let the gallery settle for a picture meant for the docs
        browser.save_screenshot(shot)

    # The bar moved: it showed several step counts of this run, rising.
    seen = browser.execute_script("return window.__progress")
    # The digits model's DDIM runs the steps asked for.
    counts = [int(m.group(1)) for text in seen if (m := re.search(rf"(\d+)/{BROWSER_STEPS} step", text))]
    assert len(set(counts) - {0}) >= 2, seen
    assert counts == sorted(counts), seen

    args = ("--prompt", "a handwritten 3", "--steps", str(BROWSER_STEPS), "--seed", "5", "--batch", str(BROWSER_BATCH))
    np.testing.assert_array_equal(got, cli_images(tmp_path / "cli.png", *page.model, *args)[0])

    # Everything the page loaded came from the app itself.
    urls = {
        entry["params"]["request"]["url"]
        for entry in (json.loads(e["message"])["message"] for e in browser.get_log("performance"))
        if entry["method"] == "Network.requestWillBeSent"
    }
    outside = sorted(u for u in urls if u.startswith(("http:", "https:", "ws:", "wss:")) and not u.startswith(page.url))
    assert not outside, outside


def test_page_runs_img2img_and_inpaint(
    browser: Any, pages: dict[str, Page], pictures: tuple[Path, Path], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    page = pages["builtin"]
    wait = WebDriverWait(browser, 60)
    browser.get(page.url)
    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#txt2img-prompt textarea")))
    tabs = {b.text.strip(): b for b in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]")}
    assert {"txt2img", "img2img", "inpaint"} <= set(tabs), sorted(tabs)

    tabs["img2img"].click()
    upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#img2img-image input[type=file]")))
    upload.send_keys(str(pictures[0]))
    wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#img2img-image img")))
    prompt = browser.find_element(By.CSS_SELECTOR, "#img2img-prompt textarea")
    prompt.clear()
    prompt.send_keys("a handwritten 5")
    set_number(browser, "#img2img-steps input[type=number]", "4")
    set_number(browser, "#img2img-strength input[type=number]", "0.5")
    set_number(browser, "#img2img-seed input", "7")
    browser.find_element(By.CSS_SELECTOR, "#img2img-generate").click()
    got = gallery_picture(browser, "img2img", tmp_path)
    args = ("--prompt", "a handwritten 5", "--image", str(pictures[0]), "--steps", "4", "--strength", "0.5")
    args += ("--seed", "7")
    np.testing.assert_array_equal(got, cli_image(tmp_path / "cli.png", *page.model, *args, command="img2img"))

    # Inpaint with an uploaded mask: the picture goes through the editor's canvas and back.
    tabs["inpaint"].click()
    _inpaint_in_browser(browser, pictures)
    got = gallery_picture(browser, "inpaint", tmp_path)
    args = ("--image", str(pictures[0]), "--mask", str(pictures[1]), "--steps", "4")
    np.testing.assert_array_equal(got, cli_image(tmp_path / "cli-inpaint.png", *page.model, *args, command="inpaint"))


def _inpaint_in_browser(browser: Any, pictures: tuple[Path, Path]) -> None:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#inpaint-image input[type=file]")))
    upload.send_keys(str(pictures[0]))
    browser.find_element(By.CSS_SELECTOR, "#inpaint-mask_image input[type=file]").send_keys(str(pictures[1]))
    wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#inpaint-mask_image img")))
    set_number(browser, "#inpaint-steps input[type=number]", "4")
    # The editor draws the uploaded picture on its canvas; its layer list shows once it has.
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#inpaint-image canvas")))
    # The editor sends its picture to the server in the background; on a busy machine a click can
    # come before that is done, and the request layer then says the image is missing (a toast).
    # Click again once it is: up to a minute, then the gallery wait below fails as it should.
    deadline = time.monotonic() + 60
    browser.find_element(By.CSS_SELECTOR, "#inpaint-generate").click()
    while time.monotonic() < deadline:
        if browser.find_elements(By.CSS_SELECTOR, "#inpaint-gallery img"):
            return
        try:
            missing = any("image: missing" in t.text for t in browser.find_elements(By.CSS_SELECTOR, ".toast-body"))
            if missing:
                for close in browser.find_elements(By.CSS_SELECTOR, ".toast-close"):
                    close.click()
                time.sleep(2)
                browser.find_element(By.CSS_SELECTOR, "#inpaint-generate").click()
        except WebDriverException:  # a toast that went away while read
            pass
        time.sleep(0.5)


def test_folder_pages_in_the_browser(
    browser: Any, pages: dict[str, Page], pictures: tuple[Path, Path], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    # The SDXL folder: txt2img with its defaults but the steps and seed; inpaint says why it is not offered.
    page = pages["sdxl"]
    browser.get(page.url)
    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#txt2img-prompt textarea")))
    set_number(browser, "#txt2img-steps input[type=number]", "4")
    set_number(browser, "#txt2img-seed input", "3")
    browser.find_element(By.CSS_SELECTOR, "#txt2img-generate").click()
    got = gallery_picture(browser, "txt2img", tmp_path)
    np.testing.assert_array_equal(got, cli_image(tmp_path / "xl.png", *page.model, "--steps", "4", "--seed", "3"))
    tabs = {b.text.strip(): b for b in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]")}
    tabs["inpaint"].click()
    note = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#inpaint-unavailable")))
    assert "inpaint is not offered for this model." in note.text
    assert note.text.endswith("does text-to-image and image-to-image, not inpainting"), note.text

    # The inpainting folder: its one task, the command line's picture.
    page = pages["inpaint"]
    browser.get(page.url)
    tabs = {
        b.text.strip(): b
        for b in wait.until(ec.presence_of_all_elements_located((By.CSS_SELECTOR, "button[role=tab]")))
    }
    tabs["inpaint"].click()
    _inpaint_in_browser(browser, pictures)
    got = gallery_picture(browser, "inpaint", tmp_path)
    args = ("--image", str(pictures[0]), "--mask", str(pictures[1]), "--steps", "4")
    np.testing.assert_array_equal(got, cli_image(tmp_path / "cli-inpaint.png", *page.model, *args, command="inpaint"))


def test_the_command_serves_the_page(sdxl_dir: Path) -> None:
    require_loopback_only()
    import threading

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "examples.stable_diffusion.app", "--model", str(sdxl_dir), "--port", "0"]
    with subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        lines: list[str] = []
        assert proc.stdout is not None
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
        reader.start()
        try:

            def address() -> str | None:
                assert proc.poll() is None, "".join(lines)
                found = re.search(r"Running on local URL:\s+(http://127\.0\.0\.1:\d+)", "".join(lines))
                return found.group(1) if found else None

            url = wait_until(address, timeout=120, what="the page's address on its output")
            with loopback_opener().open(url + "/config", timeout=30) as response:
                config = json.loads(response.read())
            assert config["title"] == "ortbind Stable Diffusion"
            assert public(config) == {"txt2img", "img2img"}
            assert config["max_file_size"] == 16 * 2**20
        finally:
            proc.kill()
