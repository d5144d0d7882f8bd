"""Stable Diffusion on ONNX Runtime through ortbind: text-to-image, image-to-image, inpainting, SDXL.

Every pipeline keeps its latents on the device for the whole denoising loop. Load one with
``from_pretrained(dir, device)``, or let :func:`pipeline_for_model` pick the class from the
folder's ``model_index.json``.
"""

from ._base import SCHEDULERS, PipelineOutput, Progress, StepCallback, cpu_session_options, load_scheduler
from ._folder import ModelFolder, VaeSettings
from .auto import pipeline_for_model
from .pipeline import OrtStableDiffusionPipeline
from .pipeline_img2img import OrtStableDiffusionImg2ImgPipeline
from .pipeline_inpaint import OrtStableDiffusionInpaintPipeline
from .pipeline_sdxl import OrtStableDiffusionXLPipeline
from .pipeline_sdxl_img2img import OrtStableDiffusionXLImg2ImgPipeline

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
