"""The web page, on Gradio: one tab per task, its form and its API made from the request fields.

    python -m examples.stable_diffusion.app [--model DIR] [--device cuda] [--host 127.0.0.1] [--port 7860]

A tab's widgets are its task's :data:`.requests.TASKS` fields, with the defaults and bounds the
request layer resolves from the folder (the image size from the model, for instance), and its
handler is also a Gradio API endpoint (``/txt2img``, ``/img2img``, ``/inpaint``) whose parameters
are the field names::

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

On the built-in digits model the txt2img tab opens with the ten digits, 0 to 9, drawn when the
page starts (:func:`.digits.draw_digits`: ten requests through the same service, about a second).

Inpaint's ``image`` is the editor's value: the picture as ``background`` and the painted strokes
as ``layers``; a ``mask_image``, when given, is used instead of the strokes. A task the folder
cannot run has a tab that says why, and no form and no endpoint.

Offline and private by default: analytics off, no share link, listening on loopback only; the
page's scripts, styles and fonts are all served by the app itself. Uploads are refused above the
request layer's file size, the files the page stores are deleted after ``--keep-files-s``, one
generation runs at a time and at most ``--queue-size`` wait.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from .network import set_offline_env

# Gradio reads its analytics switch when imported.
set_offline_env()

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from .digits import DIGIT_PROMPTS, draw_digits  # noqa: E402
from .errors import AppError, RequestError  # noqa: E402
from .requests import TASKS, Field, ModelFacts, decode_image  # noqa: E402
from .service import Service, add_model_options  # noqa: E402

__all__ = ["build_app", "launch_options", "main", "painted_mask"]

# One generation at a time on the device, whichever tab asked: the pipelines share it.
_CONCURRENCY_ID = "generate"
DEFAULT_KEEP_FILES_S = 3600
DEFAULT_QUEUE_SIZE = 16


def build_app(service: Service, *, keep_files_s: int = DEFAULT_KEEP_FILES_S) -> gr.Blocks:
    """The page: a tab per task, a form for each task the folder runs and the reason for each it does not.

    Args:
        service: The folder's service; the pipelines of the tasks it runs are loaded here (before
            serving, not inside a handler, where Gradio's progress tracking would wrap the
            exporter's bars when the built-in model is exported); on the built-in model, the ten
            digits are drawn here too.
        keep_files_s: Uploaded and generated files older than this are deleted (checked as often).
    """
    for task in service.tasks():
        service.facts(task)
    examples = draw_digits(service) if service.builtin else None
    every = max(1, min(keep_files_s, 600))
    app: gr.Blocks
    with gr.Blocks(
        title="ortbind Stable Diffusion", analytics_enabled=False, delete_cache=(every, keep_files_s)
    ) as app:
        source = (
            "the built-in digits model, trained on scikit-learn's handwritten digits: ask for a digit, 0 to 9"
            if service.builtin
            else f"`{service.model_dir}`"
        )
        gr.Markdown(
            f"### Stable Diffusion on ONNX Runtime through ortbind\nmodel: {source}; device: `{service.device}`"
        )
        with gr.Tabs():
            for task in TASKS:
                with gr.Tab(task, id=task):
                    reason = service.unavailable(task)
                    if reason is None:
                        _tab(service, task, examples=examples if task == "txt2img" else None)
                    else:
                        gr.Markdown(
                            f"**{task} is not offered for this model.** {reason}", elem_id=f"{task}-unavailable"
                        )
    return app


def _tab(service: Service, task: str, *, examples: list[Image.Image] | None = None) -> None:
    """The task's form (one widget per field), its gallery, and its API endpoint ``/<task>``.

    ``examples``, when given, open the tab: the built-in model's ten digits.
    """
    facts = service.facts(task)
    fields = TASKS[task]
    if examples is not None:
        gr.Gallery(
            value=examples,
            label=f"what it draws: '{DIGIT_PROMPTS[0]}' to '{DIGIT_PROMPTS[-1]}', every other field at its default",
            format="png",
            columns=10,
            rows=1,
            height=150,
            object_fit="contain",
            allow_preview=False,
            interactive=False,
            buttons=["download"],
            elem_id=f"{task}-digits",
        )
    with gr.Row():
        with gr.Column(scale=1):
            widgets = [_widget(task, spec, facts) for spec in fields]
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id=f"{task}-generate")
                stop = gr.Button("Stop", variant="stop", elem_id=f"{task}-stop")
        with gr.Column(scale=1):
            # PNG: Gradio's default WebP is lossy, and the picture must be the command line's.
            gallery = gr.Gallery(
                label="images", format="png", columns=2, buttons=["download", "fullscreen"], elem_id=f"{task}-gallery"
            )
    event = generate.click(
        _handler(service, task, facts),
        inputs=widgets,
        outputs=gallery,
        api_name=task,
        concurrency_limit=1,
        concurrency_id=_CONCURRENCY_ID,
    )
    # Cancels the handler's task; the run stops at the end of its step (see _handler).
    stop.click(None, cancels=[event])


def _widget(task: str, spec: Field, facts: ModelFacts) -> Any:
    """The field's widget, its default and bounds the request layer's; ``elem_id`` is ``<task>-<field>``."""
    common: dict[str, Any] = {"label": spec.name.replace("_", " "), "elem_id": f"{task}-{spec.name}"}
    default = spec.default_for(facts)
    if spec.kind == "text":
        return gr.Textbox(value=default or "", lines=2 if spec.name == "prompt" else 1, info=spec.help, **common)
    if spec.kind == "choice":
        return gr.Dropdown(list(spec.choices), value=default, info=spec.help, **common)
    if spec.kind == "image":
        sources: list[Literal["upload", "webcam", "clipboard"]] = ["upload", "clipboard"]
        if task == "inpaint" and spec.name == "image":
            return gr.ImageMask(
                type="filepath",
                image_mode="RGBA",  # the strokes' alpha is the mask
                sources=sources,
                brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"),
                format="png",
                **{**common, "label": "image: upload, then paint over what to repaint"},
            )
        label = "mask (optional, instead of painting): white = repaint" if spec.name == "mask_image" else "image"
        return gr.Image(type="filepath", sources=sources, **{**common, "label": label})
    assert spec.bounds is not None
    low, high = spec.bounds(facts)
    if spec.name == "seed":
        return gr.Number(value=default, precision=0, minimum=low, maximum=high, info=spec.help, **common)
    if spec.name in ("width", "height"):
        step: float = facts.size_multiple
    else:
        step = 1 if spec.kind == "int" else (0.01 if high <= 1 else 0.5)
    return gr.Slider(low, high, value=default, step=step, info=spec.help, **common)


def _handler(service: Service, task: str, facts: ModelFacts) -> Callable[..., Any]:
    """The tab's handler; its signature (the field names, the form's defaults) is the API endpoint's."""
    fields = TASKS[task]

    async def handler(*values: Any) -> list[Image.Image]:
        # Gradio passes the fields' values in order, then the progress tracker the signature below
        # declares (its track_tqdm follows the pipeline's bar); zip leaves the tracker out.
        try:
            sent = _sent(task, dict(zip((f.name for f in fields), values, strict=False)), facts)
            request = await asyncio.to_thread(service.parse, task, sent)
        except AppError as exc:
            raise gr.Error(exc.message) from None
        gone = threading.Event()
        try:
            # progress=True: the pipeline's tqdm bar over the steps, which track_tqdm shows on the page.
            (outcome,) = await asyncio.to_thread(service.run, [request], gone=[gone.is_set], progress=True)
        except asyncio.CancelledError:
            gone.set()  # the run stops at the end of its step
            raise
        if isinstance(outcome, AppError):
            prefix = "" if outcome.status < 500 else "the server failed (not your request): "
            raise gr.Error(prefix + outcome.message)
        return outcome.images

    parameters = [
        inspect.Parameter(
            spec.name,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=None if spec.required else spec.default_for(facts),
        )
        for spec in fields
    ]
    # Gradio finds the tracker by its default.
    progress = inspect.Parameter(
        "progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress(track_tqdm=True)
    )
    handler.__signature__ = inspect.Signature([*parameters, progress])  # type: ignore[attr-defined]
    handler.__annotations__ = {}
    handler.__name__ = handler.__qualname__ = task
    return handler


def _sent(task: str, values: dict[str, Any], facts: ModelFacts) -> dict[str, Any]:
    """What the widgets hold as the request layer takes it: files as paths, an empty text as none.

    Inpaint's editor holds the picture and the painted strokes: the strokes are the mask unless
    one was uploaded.
    """
    sent: dict[str, Any] = {}
    for spec in TASKS[task]:
        value = values.get(spec.name)
        if spec.kind == "text" and spec.name != "prompt" and value == "":
            value = None
        elif spec.kind == "image" and isinstance(value, dict):
            layers = value.get("layers") or []
            value = value.get("background")
            if values.get("mask_image") is None and layers:
                sent["mask_image"] = painted_mask([Path(layer) for layer in layers], facts)
        if spec.kind == "image" and isinstance(value, str):
            value = Path(value)
        if spec.name not in sent:
            sent[spec.name] = value
    return sent


def painted_mask(layers: Sequence[Path], facts: ModelFacts) -> Image.Image | None:
    """The mask the editor's strokes stand for: white wherever any layer was painted; ``None`` if none was.

    Raises:
        RequestError: A layer is not an image, or larger than an image the model takes.
    """
    painted: np.ndarray | None = None
    for layer in layers:
        try:
            data = layer.read_bytes()
        except OSError as exc:
            raise RequestError("image", f"cannot read the painted layer ({exc}); paint again") from None
        image = decode_image(
            "image", data, mode="RGBA", max_pixels=4 * facts.max_pixels, max_bytes=facts.limits.max_image_bytes
        )
        alpha = np.asarray(image)[..., 3] > 0
        painted = alpha if painted is None else painted | alpha
    if painted is None or not painted.any():
        return None
    return Image.fromarray(np.where(painted, 255, 0).astype(np.uint8), mode="L")


def launch_options(host: str, port: int | None, max_file_bytes: int) -> dict[str, Any]:
    """``Blocks.launch`` options: private (no share link, no monitoring, no MCP), offline, uploads bounded.

    Args:
        host: The address to listen on.
        port: The port; ``None``: the first free one from 7860 on (Gradio tries them in turn).
        max_file_bytes: The largest upload taken, in bytes (the request layer's image file size).
    """
    return {
        "server_name": host,
        "server_port": port,
        "share": False,
        "ssr_mode": False,  # server-side rendering runs a Node server; the page works without it
        "mcp_server": False,
        "pwa": False,
        "enable_monitoring": False,
        "show_error": True,
        "max_file_size": max_file_bytes,
    }


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    parser = argparse.ArgumentParser(
        prog="app",
        description="A web page for text-to-image, image-to-image and inpainting on the Stable Diffusion example.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on; 0: the first free one from 7860 on")
    add_model_options(parser)
    parser.add_argument(
        "--max-seconds", type=float, default=600.0, help="the longest one generation may take before it is stopped"
    )
    parser.add_argument(
        "--keep-files-s", type=int, default=DEFAULT_KEEP_FILES_S, help="delete uploads and pictures older than this"
    )
    parser.add_argument("--queue-size", type=int, default=DEFAULT_QUEUE_SIZE, help="the most generations waiting")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m examples.stable_diffusion.app``."""
    args = build_parser().parse_args(argv)
    try:
        service = Service(args.model, args.device, cache_dir=args.cache_dir, max_seconds=args.max_seconds)
        app = build_app(service, keep_files_s=args.keep_files_s)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"app: error: {exc}", file=sys.stderr)
        return 2
    port = args.port or None
    app.queue(max_size=args.queue_size).launch(**launch_options(args.host, port, service.limits.max_image_bytes))
    return 0
