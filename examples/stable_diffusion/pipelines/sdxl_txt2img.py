"""Text-to-image Stable Diffusion XL on ONNX Runtime through ortbind, latents on the device throughout.

The counterpart of diffusers' ``StableDiffusionXLPipeline`` on optimum's ONNX layout: two text
encoders (the second with projection, giving the pooled embedding), the UNet's ``text_embeds`` and
``time_ids`` added conditions (original size, crop corner, target size), and
``force_zeros_for_empty_prompt``. The same generator gives the same image as diffusers' torch pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from ._base import PipelineOutput
from ._loop import Progress, RunClock, StepCallback
from ._sdxl import OrtXLPipelineBase, SizePair
from ._text import prompt_list

__all__ = ["OrtStableDiffusionXLPipeline"]


class OrtStableDiffusionXLPipeline(OrtXLPipelineBase):
    """SDXL text-to-image whose four models run as :class:`ortbind.TorchSession`.

    Build it with :meth:`from_pretrained` on an optimum-layout SDXL folder (what
    ``python -m examples.stable_diffusion.export`` writes for an SDXL torch folder).
    """

    _class_names = ("ORTStableDiffusionXLPipeline", "StableDiffusionXLPipeline")

    @torch.inference_mode()
    def __call__(
        self,
        prompt: str | Sequence[str],
        *,
        prompt_2: str | Sequence[str] | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        negative_prompt_2: str | Sequence[str] | None = None,
        num_images_per_prompt: int = 1,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        denoising_end: float | None = None,
        guidance_scale: float = 5.0,
        guidance_rescale: float = 0.0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        original_size: SizePair | None = None,
        crops_coords_top_left: SizePair = (0, 0),
        target_size: SizePair | None = None,
        negative_original_size: SizePair | None = None,
        negative_crops_coords_top_left: SizePair = (0, 0),
        negative_target_size: SizePair | None = None,
        output_type: str = "pil",
        progress: Progress = True,
        callback_on_step_end: StepCallback | None = None,
    ) -> PipelineOutput:
        """Generate images from text.

        Args:
            prompt: One prompt or a list of prompts, for the first text encoder.
            prompt_2: For the second text encoder; defaults to ``prompt``.
            negative_prompt: What to steer away from. Without it (and with
                ``force_zeros_for_empty_prompt``), guidance is against zero embeddings.
            negative_prompt_2: For the second encoder; defaults to ``negative_prompt``.
            num_images_per_prompt: Images per prompt.
            height: Image height, a multiple of the VAE's scale factor; by default from ``latents``,
                else the UNet's ``sample_size`` times the scale factor (1024 for SDXL base).
            width: Image width, as ``height``.
            num_inference_steps: Denoising steps.
            denoising_end: Stop after this fraction of the schedule (for a refiner to finish).
            guidance_scale: Classifier-free guidance weight (at or below 1: off).
            guidance_rescale: diffusers' guidance rescale factor (0 to 1).
            generator: Seeds the initial latents and any step noise, in diffusers' order.
            latents: Initial latents instead of random ones.
            original_size: The ``original_size`` condition; defaults to (height, width).
            crops_coords_top_left: The crop-corner condition.
            target_size: The ``target_size`` condition; defaults to (height, width).
            negative_original_size: Negative conditioning on size (with ``negative_target_size``).
            negative_crops_coords_top_left: Negative crop-corner condition.
            negative_target_size: Negative conditioning on target size.
            output_type: ``"pil"``, ``"pt"`` or ``"np"``.
            progress: A tqdm bar (True), nothing (False), or ``progress(done, total)`` per step.
            callback_on_step_end: ``callback(pipe, step, timestep, {"latents": ...})`` after each step.
        """
        started = time.perf_counter()
        clock = RunClock()

        # 1. Check the request.
        prompts = prompt_list(prompt)
        height, width = self._default_hw(height, width, latents)
        batch = self._check(
            prompts, negative_prompt, num_images_per_prompt, height, width, num_inference_steps, output_type
        )
        do_guidance = guidance_scale > 1.0

        # 2. Encode the prompts with both text encoders: penultimate hidden states and pooled embeddings.
        embeds, pooled = self._xl_embeddings(
            prompts, prompt_2, negative_prompt, negative_prompt_2, num_images_per_prompt, do_guidance, clock
        )

        # 3. Prepare the timesteps and the initial latents, scaled for the scheduler.
        latents = self._random_latents(self.latent_shape(batch, height, width), generator, latents)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        latents = latents * self.scheduler.init_noise_sigma

        # 4. The added conditions: sizes and crop corner (time_ids), as diffusers orders them.
        original_size = original_size or (height, width)
        target_size = target_size or (height, width)
        time_ids = self._time_ids([*original_size, *crops_coords_top_left, *target_size])
        if negative_original_size is not None and negative_target_size is not None:
            negative_ids = self._time_ids(
                [*negative_original_size, *negative_crops_coords_top_left, *negative_target_size]
            )
        else:
            negative_ids = time_ids
        if do_guidance:
            time_ids = torch.cat([negative_ids, time_ids])
        time_ids = time_ids.repeat(batch, 1)

        # 5. Denoise, everything on device.
        timesteps = self._xl_timesteps(self.scheduler.timesteps, denoising_end)
        loop_started = time.perf_counter()
        latents = self._denoise(
            latents=latents,
            timesteps=timesteps,
            begin_index=0,
            conditions={"encoder_hidden_states": embeds, "text_embeds": pooled, "time_ids": time_ids},
            guidance_scale=guidance_scale,
            guidance_rescale=guidance_rescale,
            generator=self._step_generator(generator),
            progress=progress,
            callback_on_step_end=callback_on_step_end,
            clock=clock,
        )
        loop_seconds = time.perf_counter() - loop_started

        # 6. Decode; the image is the one host transfer of the call.
        return self._output(self._decode(latents, clock), output_type, started, loop_seconds, len(timesteps), clock)
