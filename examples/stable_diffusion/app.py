"""A web page for the Stable Diffusion example, on Gradio.

    python -m examples.stable_diffusion.app [--model DIR] [--device cuda] [--host 127.0.0.1] [--port 7860]

One tab per task of :data:`tasks.TASKS` that the model runs and that has a form in :data:`TABS`:
txt2img, img2img (upload an image, set the strength) and inpaint (upload an image and paint over
what to repaint, or upload a mask: white is repainted). The forms' defaults are the command
lines', so the same inputs, steps and seed give the picture ``txt2img``, ``img2img`` or
``inpaint`` writes. Each tab's handler is also a Gradio API endpoint (``/txt2img``, ``/img2img``,
``/inpaint``) whose parameters are the request's fields::

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    client.predict(prompt="a lighthouse", steps=20, seed=7, api_name="/txt2img")
    client.predict(prompt="a watercolor", image=handle_file("in.png"), strength=0.7, api_name="/img2img")
    client.predict(
        prompt="a red door",
        image={"background": handle_file("in.png"), "layers": [], "composite": None},
        mask_image=handle_file("mask.png"),
        api_name="/inpaint",
    )

(Inpaint's ``image`` is the editor's value: the picture as ``background`` and the painted strokes
as ``layers``; a ``mask_image``, when given, is used instead of the strokes.)

Offline and private by default: analytics off, no share link, listening on loopback only; the
page's scripts, styles and fonts are all served by the app itself.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .network import set_offline_env

# Gradio reads its analytics switch when imported.
set_offline_env()

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from . import defaults  # noqa: E402
from .pipeline import SCHEDULERS  # noqa: E402
from .tasks import (  # noqa: E402
    DEFAULT_IMG2IMG_STRENGTH,
    DEFAULT_INPAINT_STRENGTH,
    Img2ImgRequest,
    InpaintRequest,
    Models,
    RequestError,
    Txt2ImgRequest,
)

__all__ = ["TABS", "build_app", "img2img_tab", "inpaint_tab", "main", "txt2img_tab"]

MAX_SIZE = 1024
MAX_BATCH = 8
# One generation at a time on the device, whichever tab asked: the pipelines share it.
_CONCURRENCY_ID = "generate"


def _whole(name: str, value: float | int) -> int:
    """A form number that must be whole: Gradio sends sliders and numbers as floats."""
    if isinstance(value, bool) or not float(value).is_integer():
        raise RequestError(name, f"expected a whole number, got {value!r}")
    return int(value)


class _Fields:
    """The fields every tab has, with the command line's defaults; ``elem_id`` is ``<task>-<field>``."""

    def __init__(self, task: str) -> None:
        self.prompt = gr.Textbox(label="prompt", value=defaults.PROMPT, lines=2, elem_id=f"{task}-prompt")
        self.negative_prompt = gr.Textbox(label="negative prompt", value="", lines=1, elem_id=f"{task}-negative")
        with gr.Row():
            self.steps = gr.Slider(1, 150, value=defaults.STEPS, step=1, label="steps", elem_id=f"{task}-steps")
            self.guidance = gr.Slider(
                0.0, 20.0, value=defaults.GUIDANCE, step=0.5, label="guidance", elem_id=f"{task}-guidance"
            )
        with gr.Row():
            self.seed = gr.Number(value=defaults.SEED, precision=0, minimum=0, label="seed", elem_id=f"{task}-seed")
            self.scheduler = gr.Dropdown(
                list(SCHEDULERS), value=defaults.SCHEDULER, label="scheduler", elem_id=f"{task}-scheduler"
            )


def _size_sliders(task: str, size: int) -> tuple[gr.Slider, gr.Slider]:
    width = gr.Slider(64, MAX_SIZE, value=size, step=8, label="width", elem_id=f"{task}-width")
    height = gr.Slider(64, MAX_SIZE, value=size, step=8, label="height", elem_id=f"{task}-height")
    return width, height


def _batch_slider(task: str) -> gr.Slider:
    return gr.Slider(1, MAX_BATCH, value=1, step=1, label="batch", elem_id=f"{task}-batch")


def _strength_slider(task: str, value: float) -> gr.Slider:
    return gr.Slider(0.0, 1.0, value=value, step=0.01, label="strength", elem_id=f"{task}-strength")


def _gallery(task: str) -> gr.Gallery:
    # PNG: Gradio's default WebP is lossy, and the picture must be the command line's.
    return gr.Gallery(
        label="images", format="png", columns=2, buttons=["download", "fullscreen"], elem_id=f"{task}-gallery"
    )


def _generate(models: Models, task: str, request: Txt2ImgRequest) -> list[Image.Image]:
    try:
        # progress=True: the pipeline's tqdm bar over the steps, which track_tqdm shows on the page.
        return models.run(task, [request], progress=True)[0]
    except (RequestError, ValueError, RuntimeError) as exc:
        raise gr.Error(str(exc)) from exc


def _click(
    task: str, button: gr.Button, handler: Callable[..., list[Image.Image]], inputs: list[Any], gallery: gr.Gallery
) -> None:
    """Run ``handler`` on a click, one generation at a time across tabs; it is also the API's ``/<task>``."""
    button.click(
        handler,
        inputs=inputs,
        outputs=gallery,
        api_name=task,
        concurrency_limit=1,
        concurrency_id=_CONCURRENCY_ID,
    )


def txt2img_tab(models: Models) -> None:
    """The text-to-image form, its gallery, and the ``/txt2img`` endpoint."""
    with gr.Row():
        with gr.Column(scale=1):
            fields = _Fields("txt2img")
            with gr.Row():
                width, height = _size_sliders("txt2img", models.default_size)
                batch = _batch_slider("txt2img")
            generate = gr.Button("Generate", variant="primary", elem_id="txt2img-generate")
        with gr.Column(scale=1):
            gallery = _gallery("txt2img")

    def txt2img(
        prompt: str,
        negative_prompt: str,
        steps: float,
        guidance: float,
        seed: float,
        scheduler: str,
        width: float,
        height: float,
        batch: float = 1,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008  (Gradio finds it by its default)
    ) -> list[Image.Image]:
        try:
            request = Txt2ImgRequest(
                prompt=prompt,
                negative_prompt=negative_prompt or None,
                steps=_whole("steps", steps),
                guidance=float(guidance),
                seed=_whole("seed", seed),
                scheduler=scheduler,
                width=_whole("width", width),
                height=_whole("height", height),
                batch=_whole("batch", batch),
            )
        except RequestError as exc:
            raise gr.Error(str(exc)) from exc
        return _generate(models, "txt2img", request)

    f = fields
    inputs = [f.prompt, f.negative_prompt, f.steps, f.guidance, f.seed, f.scheduler, width, height, batch]
    _click("txt2img", generate, txt2img, inputs, gallery)


def img2img_tab(models: Models) -> None:
    """The image-to-image form (an image upload and the strength), its gallery, and ``/img2img``."""
    with gr.Row():
        with gr.Column(scale=1):
            image = gr.Image(
                label="image", type="pil", image_mode="RGB", sources=["upload", "clipboard"], elem_id="img2img-image"
            )
            strength = _strength_slider("img2img", DEFAULT_IMG2IMG_STRENGTH)
            fields = _Fields("img2img")
            batch = _batch_slider("img2img")
            generate = gr.Button("Generate", variant="primary", elem_id="img2img-generate")
        with gr.Column(scale=1):
            gallery = _gallery("img2img")

    def img2img(
        prompt: str,
        negative_prompt: str,
        image: Image.Image | None = None,  # None: optional to the API client, so it gets the error below
        strength: float = DEFAULT_IMG2IMG_STRENGTH,
        steps: float = defaults.STEPS,
        guidance: float = defaults.GUIDANCE,
        seed: float = defaults.SEED,
        scheduler: str = defaults.SCHEDULER,
        batch: float = 1,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008  (Gradio finds it by its default)
    ) -> list[Image.Image]:
        try:
            if image is None:
                raise RequestError("image", "missing; upload the starting image")
            request = Img2ImgRequest(
                prompt=prompt,
                negative_prompt=negative_prompt or None,
                image=image.convert("RGB"),
                strength=float(strength),
                steps=_whole("steps", steps),
                guidance=float(guidance),
                seed=_whole("seed", seed),
                scheduler=scheduler,
                batch=_whole("batch", batch),
            )
        except RequestError as exc:
            raise gr.Error(str(exc)) from exc
        return _generate(models, "img2img", request)

    f = fields
    inputs = [f.prompt, f.negative_prompt, image, strength, f.steps, f.guidance, f.seed, f.scheduler, batch]
    _click("img2img", generate, img2img, inputs, gallery)


def painted_mask(layers: Sequence[Image.Image] | None) -> Image.Image | None:
    """The mask the editor's strokes stand for: white wherever any layer was painted; ``None`` if none was."""
    painted: np.ndarray | None = None
    for layer in layers or []:
        alpha = np.asarray(layer.convert("RGBA"))[..., 3] > 0
        painted = alpha if painted is None else painted | alpha
    if painted is None or not painted.any():
        return None
    return Image.fromarray(np.where(painted, 255, 0).astype(np.uint8), mode="L")


def inpaint_tab(models: Models) -> None:
    """The inpainting form (an image to paint the mask on, or a mask upload), its gallery, and ``/inpaint``."""
    with gr.Row():
        with gr.Column(scale=1):
            image = gr.ImageMask(
                label="image: upload, then paint over what to repaint",
                type="pil",
                image_mode="RGBA",  # the strokes' alpha is the mask
                sources=["upload", "clipboard"],
                brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"),
                format="png",
                elem_id="inpaint-image",
            )
            mask_image = gr.Image(
                label="mask (optional, instead of painting): white = repaint",
                type="pil",
                image_mode="L",
                sources=["upload", "clipboard"],
                elem_id="inpaint-mask",
            )
            strength = _strength_slider("inpaint", DEFAULT_INPAINT_STRENGTH)
            fields = _Fields("inpaint")
            with gr.Row():
                width, height = _size_sliders("inpaint", models.default_size)
                batch = _batch_slider("inpaint")
            generate = gr.Button("Generate", variant="primary", elem_id="inpaint-generate")
        with gr.Column(scale=1):
            gallery = _gallery("inpaint")

    def inpaint(
        prompt: str,
        negative_prompt: str,
        image: dict[str, Any] | None = None,  # None: optional to the API client, so it gets the error below
        mask_image: Image.Image | None = None,  # None: the strokes painted on the image are the mask
        strength: float = DEFAULT_INPAINT_STRENGTH,
        steps: float = defaults.STEPS,
        guidance: float = defaults.GUIDANCE,
        seed: float = defaults.SEED,
        scheduler: str = defaults.SCHEDULER,
        width: float | None = None,
        height: float | None = None,
        batch: float = 1,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008  (Gradio finds it by its default)
    ) -> list[Image.Image]:
        try:
            background = (image or {}).get("background")
            if background is None:
                raise RequestError("image", "missing; upload the image to repaint")
            mask = mask_image.convert("L") if mask_image is not None else painted_mask((image or {}).get("layers"))
            if mask is None:
                raise RequestError("mask_image", "missing; paint over the image where to repaint, or upload a mask")
            request = InpaintRequest(
                prompt=prompt,
                negative_prompt=negative_prompt or None,
                image=background.convert("RGB"),
                mask_image=mask,
                strength=float(strength),
                steps=_whole("steps", steps),
                guidance=float(guidance),
                seed=_whole("seed", seed),
                scheduler=scheduler,
                width=_whole("width", width) if width is not None else None,
                height=_whole("height", height) if height is not None else None,
                batch=_whole("batch", batch),
            )
        except RequestError as exc:
            raise gr.Error(str(exc)) from exc
        return _generate(models, "inpaint", request)

    f = fields
    inputs = [f.prompt, f.negative_prompt, image, mask_image, strength, f.steps, f.guidance, f.seed, f.scheduler]
    _click("inpaint", generate, inpaint, [*inputs, width, height, batch], gallery)


TABS: dict[str, Callable[[Models], None]] = {"txt2img": txt2img_tab, "img2img": img2img_tab, "inpaint": inpaint_tab}
"""Task name -> its form. A task of :data:`tasks.TASKS` gets a tab once it has a form here."""


def build_app(models: Models) -> gr.Blocks:
    """The page: one tab per task that the model runs and that has a form."""
    names = [name for name in models.tasks() if name in TABS]
    for name in names:
        # Build a missing tiny model now, not in a handler: there Gradio's tqdm tracking (for the
        # progress bar) wraps the exporter's bars and breaks them.
        models.model_dir_for(name)
    app: gr.Blocks
    with gr.Blocks(title="ortbind Stable Diffusion", analytics_enabled=False) as app:
        source = "built-in tiny model, random weights: noise, not art" if models.tiny else str(models.model_dir)
        gr.Markdown(
            f"### Stable Diffusion on ONNX Runtime through ortbind\nmodel: `{source}`; device: `{models.device}`"
        )
        with gr.Tabs():
            for name in names:
                with gr.Tab(name, id=name):
                    TABS[name](models)
    return app


def launch_options(host: str, port: int) -> dict[str, Any]:
    """``Blocks.launch`` options: private (no share link, no monitoring, no MCP) and offline."""
    return {
        "server_name": host,
        "server_port": port,
        "share": False,
        "ssr_mode": False,  # server-side rendering runs a Node server; the page works without it
        "mcp_server": False,
        "pwa": False,
        "enable_monitoring": False,
        "show_error": True,
    }


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    parser = argparse.ArgumentParser(
        prog="app",
        description="A web page for text-to-image, image-to-image and inpainting on the Stable Diffusion example.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on")
    parser.add_argument(
        "--model", type=Path, default=None, help="diffusers ONNX folder; default: the built-in tiny model"
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the tiny model is built")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m examples.stable_diffusion.app``."""
    args = build_parser().parse_args(argv)
    try:
        models = Models(args.model, args.device, args.cache_dir)
        for name in models.tasks():
            models.pipeline(name, defaults.SCHEDULER)  # load now: fail before serving, not on the first click
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"app: error: {exc}", file=sys.stderr)
        return 2
    build_app(models).queue().launch(**launch_options(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
