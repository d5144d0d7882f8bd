"""Image-to-image Stable Diffusion (SD 1.x/2.x) on ONNX Runtime through ortbind, latents on the device.

The counterpart of diffusers' ``StableDiffusionImg2ImgPipeline``: the image is encoded by the VAE
encoder, noised to the timestep that ``strength`` picks, and denoised from there. With the same
generator it draws the VAE sample and the noise in the order diffusers' torch pipeline does, so the
same seed gives the same image.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import ClassVar

import torch
from diffusers.utils.torch_utils import randn_tensor

from ._base import OrtPipelineBase, PipelineOutput
from ._images import ImageInput
from ._loop import Progress, RunClock, StepCallback
from ._text import prompt_list

__all__ = ["OrtStableDiffusionImg2ImgPipeline"]


class OrtStableDiffusionImg2ImgPipeline(OrtPipelineBase):
    """Stable Diffusion image-to-image whose four models run as :class:`ortbind.TorchSession`.

    Needs ``vae_encoder/`` besides the text-to-image models. Build it with :meth:`from_pretrained`.
    """

    _sessions: ClassVar[tuple[str, ...]] = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
    _class_names = ("OnnxStableDiffusionImg2ImgPipeline", "ORTStableDiffusionImg2ImgPipeline")

    @torch.inference_mode()
    def __call__(
        self,
        prompt: str | Sequence[str],
        image: ImageInput,
        *,
        strength: float = 0.8,
        negative_prompt: str | Sequence[str] | None = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        guidance_rescale: float = 0.0,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        progress: Progress = True,
        callback_on_step_end: StepCallback | None = None,
    ) -> PipelineOutput:
        """Transform ``image`` as the prompt says.

        Args:
            prompt: One prompt or a list of prompts.
            image: The starting image: PIL (its size rounded down to a multiple of the VAE's scale
                factor), a list of PIL images, or a float tensor (3, H, W) or (N, 3, H, W) in [0, 1].
                One image for all prompts, or one per prompt.
            strength: How much to change the image, 0 to 1: the share of the ``num_inference_steps``
                that run, starting from the image noised to that point. 1 ignores the image.
            negative_prompt: What to steer away from: one for all prompts, or one per prompt.
            num_images_per_prompt: Images per prompt.
            num_inference_steps: Denoising steps of the full schedule (``strength`` of them run).
            guidance_scale: Classifier-free guidance weight (at or below 1: off).
            guidance_rescale: diffusers' guidance rescale factor (0 to 1).
            generator: Draws the VAE sample, the noise and any step noise, in diffusers' order.
            output_type: ``"pil"``, ``"pt"`` or ``"np"``.
            progress: A tqdm bar (True), nothing (False), or ``progress(done, total)`` per step.
            callback_on_step_end: ``callback(pipe, step, timestep, {"latents": ...})`` after each step.
        """
        started = time.perf_counter()
        clock = RunClock()

        # 1. Check the request and prepare the image as diffusers does (float in [-1, 1]).
        prompts = prompt_list(prompt)
        pixels = self._preprocess(image, None, None)
        height, width = int(pixels.shape[-2]), int(pixels.shape[-1])
        batch = self._check(
            prompts, negative_prompt, num_images_per_prompt, height, width, num_inference_steps, output_type
        )
        do_guidance = guidance_scale > 1.0

        # 2. Encode the negative prompts (when guiding) and the prompts, in one run.
        embeds = self._sd_embeddings(prompts, negative_prompt, num_images_per_prompt, do_guidance, clock)

        # 3. Keep the last `strength` of the schedule.
        timesteps, begin = self._strength_timesteps(num_inference_steps, strength)

        # 4. Encode the image (a VAE sample from the generator), then noise it to the first timestep.
        image_latents = self._repeat_to_batch(self._encode_image(pixels, generator, clock), batch)
        noise = randn_tensor(image_latents.shape, generator=generator, device=self.device, dtype=image_latents.dtype)
        latents = self.scheduler.add_noise(image_latents, noise, timesteps[:1].repeat(batch))

        # 5. Denoise, everything on device.
        loop_started = time.perf_counter()
        latents = self._denoise(
            latents=latents,
            timesteps=timesteps,
            begin_index=begin,
            conditions={"encoder_hidden_states": embeds},
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
