"""Stable Diffusion on ONNX Runtime through ortbind: text-to-image, image-to-image, inpainting, SDXL.

Three parts, each importable without the others above it:

- :mod:`.pipelines`: the pipelines, a library (diffusers' API, latents on the device throughout);
- :mod:`.apps`: the command lines, the web page and the server, all on one request layer
  (:mod:`.apps.requests`) and one service that runs requests on a model folder (:mod:`.apps.service`);
- :mod:`.build`: the exporter, the cache of the built-in models' exports (the trained digits model
  committed in ``models/``, the default everywhere; tiny random-weight models, for shapes), the
  tiny-model factory, the optimizer and the digits model's training script.

The modules ``txt2img``, ``img2img``, ``inpaint``, ``app``, ``serve``, ``export`` and ``optimize``
here are the commands' stable names (``python -m examples.stable_diffusion.txt2img``...).

The pipeline names below are imported on first use: importing the package (say, for
``.build.cache.ensure_digits_model``) does not pay for importing diffusers and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pipelines import (
        SCHEDULERS,
        ModelFolder,
        OrtStableDiffusionImg2ImgPipeline,
        OrtStableDiffusionInpaintPipeline,
        OrtStableDiffusionPipeline,
        OrtStableDiffusionXLImg2ImgPipeline,
        OrtStableDiffusionXLPipeline,
        PipelineOutput,
        Progress,
        StepCallback,
        VaeSettings,
        cpu_session_options,
        load_scheduler,
        pipeline_for_model,
    )

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
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(".pipelines", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
