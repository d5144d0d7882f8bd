"""Inpainting Stable Diffusion (SD 1.x/2.x inpainting UNets) on ONNX Runtime through ortbind.

The counterpart of diffusers' ``StableDiffusionInpaintPipeline`` for UNets with 9 input channels
(the latents, the mask, and the masked image's latents, stacked): white mask pixels are repainted,
black ones kept. With the same generator it draws the noise and the VAE samples in the order
diffusers' torch pipeline does, so the same seed gives the same image.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import ClassVar

import torch
from diffusers.utils.torch_utils import randn_tensor

from ._base import OrtPipelineBase, PipelineOutput
from ._images import ImageInput, preprocess_mask
from ._loop import Progress, RunClock, StepCallback
from ._text import prompt_list

__all__ = ["OrtStableDiffusionInpaintPipeline"]

_INPAINT_CHANNELS = 9


class OrtStableDiffusionInpaintPipeline(OrtPipelineBase):
    """Stable Diffusion inpainting whose four models run as :class:`ortbind.TorchSession`.

    Needs an inpainting UNet (9 input channels) and ``vae_encoder/``. Build it with
    :meth:`from_pretrained`.
    """

    _sessions: ClassVar[tuple[str, ...]] = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
    _class_names = ("OnnxStableDiffusionInpaintPipeline", "ORTStableDiffusionInpaintPipeline")

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if self._unet_in_channels != _INPAINT_CHANNELS:
            raise ValueError(
                f"{self.unet.path}: input 'sample' has {self._unet_in_channels} channels, an inpainting UNet "
                f"takes {_INPAINT_CHANNELS} (latents, mask, masked-image latents); load an inpainting model"
            )

    @torch.inference_mode()
    def __call__(
        self,
        prompt: str | Sequence[str],
        image: ImageInput,
        mask_image: ImageInput,
        *,
        height: int | None = None,
        width: int | None = None,
        strength: float = 1.0,
        negative_prompt: str | Sequence[str] | None = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        guidance_rescale: float = 0.0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        progress: Progress = True,
        callback_on_step_end: StepCallback | None = None,
    ) -> PipelineOutput:
        """Repaint the white part of ``mask_image`` in ``image`` as the prompt says.

        Args:
            prompt: One prompt or a list of prompts.
            image: The image: PIL (resized to ``height`` x ``width``), a list of PIL images, or a
                float tensor (3, H, W) or (N, 3, H, W) in [0, 1].
            mask_image: White (>= 0.5) where to repaint: PIL (taken as grayscale), or a float
                tensor (H, W), (1, H, W) or (N, 1, H, W) in [0, 1]; binarized at 0.5.
            height: Output height, a multiple of the VAE's scale factor; by default from ``latents``,
                else the UNet's ``sample_size`` times the scale factor (as diffusers; 512 for SD 1.5).
            width: Output width, as ``height``.
            strength: Below 1, start from the image noised to that point instead of pure noise.
            negative_prompt: What to steer away from: one for all prompts, or one per prompt.
            num_images_per_prompt: Images per prompt.
            num_inference_steps: Denoising steps (times ``strength``).
            guidance_scale: Classifier-free guidance weight (at or below 1: off).
            guidance_rescale: diffusers' guidance rescale factor (0 to 1).
            generator: Draws the noise, the VAE samples and any step noise, in diffusers' order.
            latents: Initial noise ``(batch, 4, height / f, width / f)`` instead of random.
            output_type: ``"pil"``, ``"pt"`` or ``"np"``.
            progress: A tqdm bar (True), nothing (False), or ``progress(done, total)`` per step.
            callback_on_step_end: ``callback(pipe, step, timestep, {"latents": ...})`` after each step.
        """
        started = time.perf_counter()
        clock = RunClock()

        # 1. Check the request; prepare image and mask as diffusers does.
        prompts = prompt_list(prompt)
        height, width = self._default_hw(height, width, latents)
        pixels = self._preprocess(image, height, width)
        mask = preprocess_mask(mask_image, height, width, device=self.device)
        batch = self._check(
            prompts, negative_prompt, num_images_per_prompt, height, width, num_inference_steps, output_type
        )
        do_guidance = guidance_scale > 1.0

        # 2. Encode the negative prompts (when guiding) and the prompts, in one run.
        embeds = self._sd_embeddings(prompts, negative_prompt, num_images_per_prompt, do_guidance, clock)

        # 3. Set the timesteps (all of them unless strength < 1).
        timesteps, begin = self._strength_timesteps(num_inference_steps, strength)
        full_strength = strength == 1.0

        # 4. The initial latents: noise, or (strength < 1) the image's latents noised to the first timestep.
        shape = self.latent_shape(batch, height, width)
        if latents is not None or full_strength:
            latents = self._random_latents(shape, generator, latents) * self.scheduler.init_noise_sigma
        else:
            image_latents = self._encode_image(pixels, generator, clock)
            image_latents = image_latents.repeat(batch // image_latents.shape[0], 1, 1, 1)
            noise = randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)
            latents = self.scheduler.add_noise(image_latents, noise, timesteps[:1].repeat(batch))

        # 5. The UNet's extra channels: the mask at latent size and the masked image's latents.
        masked_latents = self._encode_image(pixels * (mask < 0.5), generator, clock)
        mask = torch.nn.functional.interpolate(mask, size=shape[-2:])
        extra = torch.cat([self._repeat_rows(mask, batch, "mask_image"), self._repeat_rows(masked_latents, batch)], 1)
        extra = torch.cat([extra] * 2) if do_guidance else extra

        # 6. Denoise, everything on device.
        loop_started = time.perf_counter()
        latents = self._denoise(
            latents=latents,
            timesteps=timesteps,
            begin_index=begin,
            conditions={"encoder_hidden_states": embeds},
            extra_channels=extra.to(self._sample_dtype),
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

    @staticmethod
    def _repeat_rows(tensor: torch.Tensor, batch: int, name: str = "image") -> torch.Tensor:
        """``tensor.repeat(batch // rows, ...)``, as diffusers duplicates masks and masked latents."""
        rows = tensor.shape[0]
        if batch % rows:
            raise ValueError(f"{name}: cannot spread {rows} over {batch} outputs; pass 1 or {batch}")
        return tensor.repeat(batch // rows, 1, 1, 1)
