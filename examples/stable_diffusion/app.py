"""A web page for the Stable Diffusion example, on Gradio.

    python -m examples.stable_diffusion.app [--model DIR] [--device cuda] [--host 127.0.0.1] [--port 7860]

One tab per task of :data:`tasks.TASKS` that has a form in :data:`TABS`. The form's defaults are
the command line's, so the same prompt, steps and seed give the picture ``txt2img`` writes. Each
tab's handler is also a Gradio API endpoint (``/txt2img``) whose parameters are the form's fields::

    from gradio_client import Client
    Client("http://127.0.0.1:7860/").predict(prompt="a lighthouse", steps=20, seed=7, api_name="/txt2img")

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
from PIL import Image  # noqa: E402

from . import defaults  # noqa: E402
from .pipeline import SCHEDULERS  # noqa: E402
from .tasks import TASKS, Models, RequestError, Txt2ImgRequest  # noqa: E402

__all__ = ["TABS", "build_app", "main"]

MAX_SIZE = 1024
MAX_BATCH = 8
# One generation at a time on the device, whichever tab asked: the pipelines share it.
_CONCURRENCY_ID = "generate"


def _whole(name: str, value: float | int) -> int:
    """A form number that must be whole: Gradio sends sliders and numbers as floats."""
    if isinstance(value, bool) or not float(value).is_integer():
        raise RequestError(name, f"expected a whole number, got {value!r}")
    return int(value)


def txt2img_tab(models: Models) -> None:
    """The text-to-image form, its gallery, and the ``/txt2img`` endpoint."""
    size = models.default_size
    with gr.Row():
        with gr.Column(scale=1):
            prompt = gr.Textbox(label="prompt", value=defaults.PROMPT, lines=2, elem_id="txt2img-prompt")
            negative_prompt = gr.Textbox(label="negative prompt", value="", lines=1, elem_id="txt2img-negative")
            with gr.Row():
                steps = gr.Slider(1, 150, value=defaults.STEPS, step=1, label="steps", elem_id="txt2img-steps")
                guidance = gr.Slider(
                    0.0, 20.0, value=defaults.GUIDANCE, step=0.5, label="guidance", elem_id="txt2img-guidance"
                )
            with gr.Row():
                seed = gr.Number(value=defaults.SEED, precision=0, minimum=0, label="seed", elem_id="txt2img-seed")
                scheduler = gr.Dropdown(
                    list(SCHEDULERS), value=defaults.SCHEDULER, label="scheduler", elem_id="txt2img-scheduler"
                )
            with gr.Row():
                width = gr.Slider(64, MAX_SIZE, value=size, step=8, label="width", elem_id="txt2img-width")
                height = gr.Slider(64, MAX_SIZE, value=size, step=8, label="height", elem_id="txt2img-height")
                batch = gr.Slider(1, MAX_BATCH, value=1, step=1, label="batch", elem_id="txt2img-batch")
            generate = gr.Button("Generate", variant="primary", elem_id="txt2img-generate")
        with gr.Column(scale=1):
            gallery = gr.Gallery(
                label="images", format="png", columns=2, buttons=["download", "fullscreen"], elem_id="txt2img-gallery"
            )

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
            # progress=True: the pipeline's tqdm bar over the steps, which track_tqdm shows on the page.
            return models.run("txt2img", [request], progress=True)[0]
        except (RequestError, ValueError, RuntimeError) as exc:
            raise gr.Error(str(exc)) from exc

    generate.click(
        txt2img,
        inputs=[prompt, negative_prompt, steps, guidance, seed, scheduler, width, height, batch],
        outputs=gallery,
        api_name="txt2img",
        concurrency_limit=1,
        concurrency_id=_CONCURRENCY_ID,
    )


TABS: dict[str, Callable[[Models], None]] = {"txt2img": txt2img_tab}
"""Task name -> its form. A task of :data:`tasks.TASKS` gets a tab once it has a form here."""


def build_app(models: Models) -> gr.Blocks:
    """The page: one tab per task that has a form."""
    names = [name for name in TASKS if name in TABS]
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
        description="A web page for text-to-image on the Stable Diffusion example.",
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
        models.pipeline("txt2img", defaults.SCHEDULER)  # load now: fail before serving, not on the first click
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"app: error: {exc}", file=sys.stderr)
        return 2
    build_app(models).queue().launch(**launch_options(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
