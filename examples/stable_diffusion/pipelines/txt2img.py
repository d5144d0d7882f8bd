"""Text-to-image Stable Diffusion (SD 1.x/2.x) on ONNX Runtime through ortbind, latents on the device throughout.

Reads the diffusers ONNX folder layout and optimum's. Unlike diffusers' ``OnnxStableDiffusionPipeline``,
which copies every tensor to numpy and back on each denoising step, this pipeline keeps the text
embeddings, latents, timesteps and noise predictions as torch tensors on the session's device from
the first step to the decoded image: the only host transfer is the finished image.

Tokenizer and schedulers are the well-kept ones from transformers and diffusers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from ._base import OrtPipelineBase, PipelineOutput
from ._loop import Progress, RunClock, StepCallback
from ._text import prompt_list

__all__ = ["OrtStableDiffusionPipeline"]


class OrtStableDiffusionPipeline(OrtPipelineBase):
    """Stable Diffusion text-to-image whose three models run as :class:`ortbind.TorchSession`.

    Build it with :meth:`from_pretrained` on an ONNX folder, then call it like diffusers'
    ``StableDiffusionPipeline``. Every input's dtype comes from the session specs (``timestep`` is
    float32 in some exports and int64 in others), never from assumptions; the latent size comes
    from the VAE's scale factor.
    """

    _class_names = ("OnnxStableDiffusionPipeline", "ORTStableDiffusionPipeline", "StableDiffusionPipeline")

    @torch.inference_mode()
    def __call__(
        self,
        prompt: str | Sequence[str],
        *,
        negative_prompt: str | Sequence[str] | None = None,
        num_images_per_prompt: int = 1,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        guidance_rescale: float = 0.0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        progress: Progress = True,
        callback_on_step_end: StepCallback | None = None,
    ) -> PipelineOutput:
        """Generate images from text.

        Args:
            prompt: One prompt or a list of prompts.
            negative_prompt: What to steer away from: one for all prompts, or one per prompt.
            num_images_per_prompt: Images per prompt.
            height: Image height in pixels, a multiple of the VAE's scale factor; by default from
                ``latents``, else the UNet's ``sample_size`` times the scale factor (512 for SD 1.5).
            width: Image width in pixels, as ``height``.
            num_inference_steps: Denoising steps.
            guidance_scale: Classifier-free guidance weight; at or below 1 the unconditional
                half is skipped and the UNet runs on half the batch.
            guidance_rescale: diffusers' guidance rescale factor (0 to 1).
            generator: Seeds the initial latents and, for ancestral schedulers, the step noise, in
                the order diffusers' torch pipeline draws them. Step noise is drawn on the
                pipeline's device: a generator on another device seeds a device generator with
                its ``initial_seed()``.
            latents: Initial latents ``(batch, 4, height / f, width / f)`` instead of random ones.
            output_type: ``"pil"``, ``"pt"`` or ``"np"``.
            progress: A tqdm bar (True), nothing (False), or ``progress(done, total)`` per step.
            callback_on_step_end: ``callback(pipe, step, timestep, {"latents": ...})`` after each
                step; a returned ``{"latents": ...}`` replaces them.
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

        # 2. Encode the negative prompts (when guiding) and the prompts, in one run.
        embeds = self._sd_embeddings(prompts, negative_prompt, num_images_per_prompt, do_guidance, clock)

        # 3. Prepare the timesteps and the initial latents, scaled for the scheduler.
        latents = self._random_latents(self.latent_shape(batch, height, width), generator, latents)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        latents = latents * self.scheduler.init_noise_sigma

        # 4. Denoise: one UNet run per step on the whole (guided) batch, everything on device.
        loop_started = time.perf_counter()
        latents = self._denoise(
            latents=latents,
            timesteps=self.scheduler.timesteps,
            begin_index=0,
            conditions={"encoder_hidden_states": embeds},
            guidance_scale=guidance_scale,
            guidance_rescale=guidance_rescale,
            generator=self._step_generator(generator),
            progress=progress,
            callback_on_step_end=callback_on_step_end,
            clock=clock,
        )
        loop_seconds = time.perf_counter() - loop_started

        # 5. Decode every latent in one VAE run; the image is the one host transfer of the call.
        image = self._decode(latents, clock)
        return self._output(image, output_type, started, loop_seconds, len(self.scheduler.timesteps), clock)
