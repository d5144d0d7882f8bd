"""Image-to-image Stable Diffusion XL (base or refiner) on ONNX Runtime through ortbind.

The counterpart of diffusers' ``StableDiffusionXLImg2ImgPipeline``: ``strength`` or
``denoising_start`` picks where the schedule starts, the size, crop and (for the refiner)
aesthetic-score conditions are SDXL's. The same generator gives the same image as diffusers'
torch pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import ClassVar

import torch
from diffusers.utils.torch_utils import randn_tensor

from ._base import PipelineOutput
from ._images import ImageInput
from ._loop import Progress, RunClock, StepCallback
from ._sdxl import OrtXLPipelineBase, SizePair
from ._text import prompt_list

__all__ = ["OrtStableDiffusionXLImg2ImgPipeline"]


class OrtStableDiffusionXLImg2ImgPipeline(OrtXLPipelineBase):
    """SDXL image-to-image whose five (refiner: four) models run as :class:`ortbind.TorchSession`."""

    _sessions: ClassVar[tuple[str, ...]] = ("text_encoder", "text_encoder_2", "unet", "vae_encoder", "vae_decoder")
    _class_names = ("ORTStableDiffusionXLImg2ImgPipeline", "StableDiffusionXLImg2ImgPipeline")

    @torch.inference_mode()
    def __call__(
        self,
        prompt: str | Sequence[str],
        image: ImageInput,
        *,
        strength: float = 0.3,
        prompt_2: str | Sequence[str] | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        negative_prompt_2: str | Sequence[str] | None = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 50,
        denoising_start: float | None = None,
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
        aesthetic_score: float = 6.0,
        negative_aesthetic_score: float = 2.5,
        output_type: str = "pil",
        progress: Progress = True,
        callback_on_step_end: StepCallback | None = None,
    ) -> PipelineOutput:
        """Transform ``image`` as the prompt says.

        Args:
            prompt: One prompt or a list of prompts.
            image: The starting image: PIL, a list of PIL images, or a float tensor in [0, 1].
            strength: The share of the schedule that runs (ignored with ``denoising_start``).
            prompt_2: For the second text encoder; defaults to ``prompt``.
            negative_prompt: What to steer away from (see :class:`OrtStableDiffusionXLPipeline`).
            negative_prompt_2: For the second encoder; defaults to ``negative_prompt``.
            num_images_per_prompt: Images per prompt.
            num_inference_steps: Denoising steps of the full schedule.
            denoising_start: Start at this fraction of the schedule, without adding noise (the
                refiner finishing what a base pipeline with ``denoising_end`` left).
            denoising_end: Stop after this fraction of the schedule.
            guidance_scale: Classifier-free guidance weight (at or below 1: off).
            guidance_rescale: diffusers' guidance rescale factor (0 to 1).
            generator: Draws the VAE sample, the noise and any step noise, in diffusers' order.
            latents: Starting latents instead of the encoded, noised image.
            original_size: The ``original_size`` condition; defaults to the image's size.
            crops_coords_top_left: The crop-corner condition.
            target_size: The ``target_size`` condition; defaults to the image's size.
            negative_original_size: Negative size condition; defaults to ``original_size``.
            negative_crops_coords_top_left: Negative crop corner (used with an aesthetic score).
            negative_target_size: Negative target size; defaults to ``target_size``.
            aesthetic_score: The refiner's aesthetic condition (with ``requires_aesthetics_score``).
            negative_aesthetic_score: Its negative counterpart.
            output_type: ``"pil"``, ``"pt"`` or ``"np"``.
            progress: A tqdm bar (True), nothing (False), or ``progress(done, total)`` per step.
            callback_on_step_end: ``callback(pipe, step, timestep, {"latents": ...})`` after each step.
        """
        started = time.perf_counter()
        clock = RunClock()

        # 1. Check the request and prepare the image as diffusers does (float in [-1, 1]).
        prompts = prompt_list(prompt)
        pixels = self._preprocess(image, None, None)
        batch = self._check(
            prompts,
            negative_prompt,
            num_images_per_prompt,
            int(pixels.shape[-2]),
            int(pixels.shape[-1]),
            num_inference_steps,
            output_type,
        )
        do_guidance = guidance_scale > 1.0

        # 2. Encode the prompts with both text encoders.
        embeds, pooled = self._xl_embeddings(
            prompts, prompt_2, negative_prompt, negative_prompt_2, num_images_per_prompt, do_guidance, clock
        )

        # 3. Pick the timesteps: the last `strength` of the schedule, or from `denoising_start` on.
        if denoising_start is not None and 0 < denoising_start < 1:
            timesteps, begin = self._start_timesteps(num_inference_steps, denoising_start)
        else:
            timesteps, begin = self._strength_timesteps(num_inference_steps, strength)
            denoising_start = None

        # 4. Encode the image (a VAE sample from the generator) and noise it to the first timestep.
        if latents is None:
            latents = self._repeat_to_batch(self._encode_image(pixels, generator, clock), batch)
            if denoising_start is None:
                noise = randn_tensor(latents.shape, generator=generator, device=self.device, dtype=latents.dtype)
                latents = self.scheduler.add_noise(latents, noise, timesteps[:1].repeat(batch))
        else:
            latents = latents.to(device=self.device, dtype=torch.float32)
        height, width = (int(d) * self.vae.scale_factor for d in latents.shape[-2:])

        # 5. The added conditions, as diffusers' SDXL img2img orders them.
        original_size = original_size or (height, width)
        target_size = target_size or (height, width)
        negative_original_size = negative_original_size or original_size
        negative_target_size = negative_target_size or target_size
        if self.requires_aesthetics_score:
            values = [*original_size, *crops_coords_top_left, aesthetic_score]
            negative = [*negative_original_size, *negative_crops_coords_top_left, negative_aesthetic_score]
        else:
            # diffusers uses the positive crop corner for the negative ids here.
            values = [*original_size, *crops_coords_top_left, *target_size]
            negative = [*negative_original_size, *crops_coords_top_left, *negative_target_size]
        time_ids = self._time_ids([float(v) for v in values]).repeat(batch, 1)
        if do_guidance:
            time_ids = torch.cat([self._time_ids([float(v) for v in negative]).repeat(batch, 1), time_ids])

        # 6. Denoise, everything on device.
        timesteps = self._xl_timesteps(timesteps, denoising_end)
        loop_started = time.perf_counter()
        latents = self._denoise(
            latents=latents,
            timesteps=timesteps,
            begin_index=begin,
            conditions={"encoder_hidden_states": embeds, "text_embeds": pooled, "time_ids": time_ids},
            guidance_scale=guidance_scale,
            guidance_rescale=guidance_rescale,
            generator=self._step_generator(generator),
            progress=progress,
            callback_on_step_end=callback_on_step_end,
            clock=clock,
        )
        loop_seconds = time.perf_counter() - loop_started

        # 7. Decode; the image is the one host transfer of the call.
        return self._output(self._decode(latents, clock), output_type, started, loop_seconds, len(timesteps), clock)

    def _start_timesteps(self, steps: int, denoising_start: float) -> tuple[torch.Tensor, int]:
        """The schedule from ``denoising_start`` on, as diffusers' ``get_timesteps`` cuts it."""
        self.scheduler.set_timesteps(steps, device=self.device)
        train = int(self.scheduler.config.num_train_timesteps)
        cutoff = round(train - denoising_start * train)
        count = int((self.scheduler.timesteps < cutoff).sum())
        if self.scheduler.order == 2 and count % 2 == 0:
            # Do not cut a second-order step between its two halves.
            count += 1
        start = len(self.scheduler.timesteps) - count
        return self.scheduler.timesteps[start:], start
