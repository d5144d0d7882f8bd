"""The Stable Diffusion pipelines: a library, one file per task over a shared base.

===================  ================================================================
``txt2img``          :class:`OrtStableDiffusionPipeline`, text to image (SD 1.x/2.x)
``img2img``          :class:`OrtStableDiffusionImg2ImgPipeline`, image to image
``inpaint``          :class:`OrtStableDiffusionInpaintPipeline`, inpainting UNets (9 channels)
``sdxl_txt2img``     :class:`OrtStableDiffusionXLPipeline`, SDXL text to image
``sdxl_img2img``     :class:`OrtStableDiffusionXLImg2ImgPipeline`, SDXL image to image, base or refiner
``auto``             :func:`pipeline_for_model`: the class for a folder and a task
===================  ================================================================

What they share is private: ``_base`` (loading, checks), ``_folder`` (diffusers' and optimum's
layouts), ``_text``, ``_images``, ``_loop`` (the one denoising loop), ``_schedulers``, ``_sdxl``.
Nothing here knows of the command lines, the page or the server.
"""

from __future__ import annotations

from ._base import OrtPipelineBase, PipelineOutput, cpu_session_options
from ._folder import ModelFolder, VaeSettings
from ._loop import Progress, StepCallback
from ._schedulers import SCHEDULERS, Scheduler, draws_step_noise, load_scheduler
from .auto import PIPELINES, Task, pipeline_for_model
from .img2img import OrtStableDiffusionImg2ImgPipeline
from .inpaint import OrtStableDiffusionInpaintPipeline
from .sdxl_img2img import OrtStableDiffusionXLImg2ImgPipeline
from .sdxl_txt2img import OrtStableDiffusionXLPipeline
from .txt2img import OrtStableDiffusionPipeline

__all__ = [
    "PIPELINES",
    "SCHEDULERS",
    "ModelFolder",
    "OrtPipelineBase",
    "OrtStableDiffusionImg2ImgPipeline",
    "OrtStableDiffusionInpaintPipeline",
    "OrtStableDiffusionPipeline",
    "OrtStableDiffusionXLImg2ImgPipeline",
    "OrtStableDiffusionXLPipeline",
    "PipelineOutput",
    "Progress",
    "Scheduler",
    "StepCallback",
    "Task",
    "VaeSettings",
    "cpu_session_options",
    "draws_step_noise",
    "load_scheduler",
    "pipeline_for_model",
]
