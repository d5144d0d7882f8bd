"""Stable Diffusion on ONNX Runtime through ortbind: text-to-image, image-to-image, inpainting, SDXL.

Every pipeline keeps its latents on the device for the whole denoising loop. Load one with
``from_pretrained(dir, device)``, or let :func:`pipeline_for_model` pick the class from the
folder's ``model_index.json``.

The names are imported on first use: importing the package (say, for ``.cache.ensure_tiny_model``)
does not pay for importing diffusers and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._base import SCHEDULERS, PipelineOutput, Progress, StepCallback, cpu_session_options, load_scheduler
    from ._folder import ModelFolder, VaeSettings
    from .auto import pipeline_for_model
    from .pipeline import OrtStableDiffusionPipeline
    from .pipeline_img2img import OrtStableDiffusionImg2ImgPipeline
    from .pipeline_inpaint import OrtStableDiffusionInpaintPipeline
    from .pipeline_sdxl import OrtStableDiffusionXLPipeline
    from .pipeline_sdxl_img2img import OrtStableDiffusionXLImg2ImgPipeline

_HOMES = {
    "SCHEDULERS": "._base",
    "PipelineOutput": "._base",
    "Progress": "._base",
    "StepCallback": "._base",
    "cpu_session_options": "._base",
    "load_scheduler": "._base",
    "ModelFolder": "._folder",
    "VaeSettings": "._folder",
    "pipeline_for_model": ".auto",
    "OrtStableDiffusionPipeline": ".pipeline",
    "OrtStableDiffusionImg2ImgPipeline": ".pipeline_img2img",
    "OrtStableDiffusionInpaintPipeline": ".pipeline_inpaint",
    "OrtStableDiffusionXLPipeline": ".pipeline_sdxl",
    "OrtStableDiffusionXLImg2ImgPipeline": ".pipeline_sdxl_img2img",
}

__all__ = [
    "SCHEDULERS",
    "ModelFolder",
    "OrtStableDiffusionImg2ImgPipeline",
    "OrtStableDiffusionInpaintPipeline",
    "OrtStableDiffusionPipeline",
    "OrtStableDiffusionXLImg2ImgPipeline",
    "OrtStableDiffusionXLPipeline",
    "PipelineOutput",
    "Progress",
    "StepCallback",
    "VaeSettings",
    "cpu_session_options",
    "load_scheduler",
    "pipeline_for_model",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
