"""Pick the pipeline class for a folder from its ``model_index.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ._base import OrtPipelineBase
from ._folder import ModelFolder
from .img2img import OrtStableDiffusionImg2ImgPipeline
from .inpaint import OrtStableDiffusionInpaintPipeline
from .sdxl_img2img import OrtStableDiffusionXLImg2ImgPipeline
from .sdxl_txt2img import OrtStableDiffusionXLPipeline
from .txt2img import OrtStableDiffusionPipeline

__all__ = ["PIPELINES", "Task", "pipeline_for_model"]

Task = Literal["text-to-image", "image-to-image", "inpainting"]

PIPELINES: dict[tuple[str, Task], type[OrtPipelineBase]] = {
    ("sd", "text-to-image"): OrtStableDiffusionPipeline,
    ("sd", "image-to-image"): OrtStableDiffusionImg2ImgPipeline,
    ("sd-inpaint", "inpainting"): OrtStableDiffusionInpaintPipeline,
    ("sdxl", "text-to-image"): OrtStableDiffusionXLPipeline,
    ("sdxl", "image-to-image"): OrtStableDiffusionXLImg2ImgPipeline,
}
"""(model family, task) -> pipeline class."""

_TASK_OF_CLASS: dict[str, Task] = {
    "Img2Img": "image-to-image",
    "Inpaint": "inpainting",
}


def pipeline_for_model(model_dir: str | Path, task: Task | None = None) -> type[OrtPipelineBase]:
    """The pipeline class that runs the folder, from ``model_index.json``'s class name.

    diffusers' ONNX names (``OnnxStableDiffusion…Pipeline``), optimum's (``ORTStableDiffusion…``)
    and the torch ones (``StableDiffusion…``) are all understood. An SDXL folder is recognised by
    its name or its ``text_encoder_2/``; an inpainting one by its name.

    Args:
        model_dir: The ONNX folder.
        task: Run the folder's models for another task than its class name says (the default):
            an SD or SDXL text-to-image folder runs image-to-image too (with a ``vae_encoder/``),
            and an image-to-image one text-to-image.

    Raises:
        ValueError: The class name is not a Stable Diffusion pipeline, or the model cannot do ``task``.
    """
    folder = ModelFolder(model_dir)
    name = folder.class_name
    base = name.removeprefix("Onnx").removeprefix("ORT")
    if not base.startswith("StableDiffusion") or not base.endswith("Pipeline"):
        raise ValueError(
            f"{folder.root}/model_index.json: pipeline class {name!r} is not a Stable Diffusion pipeline; "
            f"expected one of {', '.join(sorted({c for cls in PIPELINES.values() for c in cls._class_names}))}"
        )
    xl = base.startswith("StableDiffusionXL") or (folder.root / "text_encoder_2").is_dir()
    own_task: Task = next((t for marker, t in _TASK_OF_CLASS.items() if marker in base), "text-to-image")
    family = "sdxl" if xl else ("sd-inpaint" if own_task == "inpainting" else "sd")
    wanted = task or own_task
    try:
        return PIPELINES[(family, wanted)]
    except KeyError:
        can = [t for f, t in PIPELINES if f == family]
        raise ValueError(f"{folder.root}: a {name} model does {' and '.join(can)}, not {wanted}") from None
