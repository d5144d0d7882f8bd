"""What every pipeline here shares: loading a folder, checking a call, the parts each ``__call__`` is made of.

Each pipeline file (``txt2img.py``, ``img2img.py``, ``inpaint.py``, ``sdxl_txt2img.py``,
``sdxl_img2img.py``) is a ``__call__`` that reads as numbered steps over these parts: text in
:mod:`._text`, images and latents in :mod:`._images`, and the one denoising loop in :mod:`._loop`,
which keeps every tensor on the session's device (a test proves for each pipeline that no tensor
reaches the host and no numpy is touched inside it).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import onnxruntime as ort
import torch
from diffusers.utils.torch_utils import randn_tensor

import ortbind

from ._folder import DEFAULT_VAE_SCALING_FACTOR, ModelFolder, VaeSettings
from ._images import ImageInput, decode_latents, encode_pixels, preprocess, to_output
from ._loop import DenoisingLoop, Progress, RunClock, StepCallback
from ._schedulers import Scheduler, load_scheduler
from ._specs import fixed_dim, input_dtype
from ._text import encode_clip, negative_list

__all__ = ["OrtPipelineBase", "PipelineOutput", "cpu_session_options"]


def cpu_session_options(*, memory_arena: bool = True) -> ort.SessionOptions:
    """ORT options for CPU sessions that share the cores with torch.

    ORT's worker threads spin for a while after each run; torch's own parallel ops (the image
    post-processing, the scheduler on large latents) then wait for cores that ORT's idle
    threads hold. Measured on a 2-core CPU with ``benchmarks/cpu_spinning.py``, spinning made
    the tiny model's images 1.15-1.2x slower at 64x64 and 1.45-1.75x slower at 128x128.

    Args:
        memory_arena: Keep ORT's CPU memory arena, which holds on to the largest call's memory
            for the session's life. A server that takes calls of any size turns it off: the
            memory of a large call then goes back when it ends (measured on the tiny model:
            214 MB kept after 128x128 x 8 images with it, 26 MB without; up to 10% slower).
    """
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_cpu_mem_arena = memory_arena
    return options


@dataclass
class PipelineOutput:
    """What a pipeline call returns.

    Attributes:
        images: PIL images (``output_type="pil"``), or a float tensor NHWC in [0, 1] on the CPU
            (``"pt"``) or a numpy array (``"np"``).
        seconds_per_step: Wall time of the denoising loop divided by the number of steps.
        seconds: Wall time of the whole call.
        ort_seconds: Wall time spent inside ONNX Runtime runs (all models).
    """

    images: Any
    seconds_per_step: float
    seconds: float
    ort_seconds: float = 0.0


_P = TypeVar("_P", bound="OrtPipelineBase")


class OrtPipelineBase:
    """The parts all Stable Diffusion pipelines here share; not a pipeline by itself.

    Subclasses name the sessions they need in ``_sessions`` and the ``model_index.json`` pipeline
    classes they are for in ``_class_names``.

    Args:
        text_encoder: Session of ``text_encoder/model.onnx`` (``input_ids`` -> ``last_hidden_state``).
        unet: Session of ``unet/model.onnx`` (``sample``, ``timestep``, ``encoder_hidden_states``
            -> ``out_sample``).
        vae_decoder: Session of ``vae_decoder/model.onnx`` (``latent_sample`` -> ``sample``).
        tokenizer: The CLIP tokenizer.
        scheduler: Any diffusers scheduler.
        vae_scaling_factor: Latents are divided by it before decoding (a float), or the VAE's
            :class:`VaeSettings` (scaling factor, spatial scale factor, optional mean and std).
        vae_encoder: Session of ``vae_encoder/model.onnx`` (``sample`` -> ``latent_parameters``
            or ``latent_sample``); the image-to-image and inpainting pipelines need it.
        default_sample_size: Latent size of the default image (the UNet's ``sample_size``).
        unet_downsampling: How many times the UNet halves the latents' size (``2 ** (levels - 1)``):
            latent sizes must be multiples of it, since an exported UNet concatenates each
            upsampled level with its skip connection at fixed ratios. ``None``: 1.
    """

    _sessions: ClassVar[tuple[str, ...]] = ("text_encoder", "unet", "vae_decoder")
    _class_names: ClassVar[tuple[str, ...]] = ()
    _default_size: ClassVar[int] = 512
    # What a folder's UNet halves its latents by when no config.json says: SD 1.x/2.x UNets have
    # four levels in every released checkpoint (SDXL's, three).
    _default_unet_downsampling: ClassVar[int] = 8

    def __init__(
        self,
        text_encoder: ortbind.TorchSession | None,
        unet: ortbind.TorchSession,
        vae_decoder: ortbind.TorchSession,
        tokenizer: Any,
        scheduler: Scheduler,
        vae_scaling_factor: float | VaeSettings = DEFAULT_VAE_SCALING_FACTOR,
        *,
        vae_encoder: ortbind.TorchSession | None = None,
        default_sample_size: int | None = None,
        unet_downsampling: int | None = None,
    ) -> None:
        self.text_encoder = text_encoder
        self.unet = unet
        self.vae_decoder = vae_decoder
        self.vae_encoder = vae_encoder
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.vae = (
            vae_scaling_factor if isinstance(vae_scaling_factor, VaeSettings) else VaeSettings(vae_scaling_factor)
        )
        self.device = unet.device
        for name in ("text_encoder", "vae_decoder", "vae_encoder", "text_encoder_2"):
            session = getattr(self, name, None)
            if session is not None and session.device != self.device:
                raise ValueError(f"{name} runs on {session.device} but unet on {self.device}; load all on one device")
        self._ids_dtype = input_dtype(text_encoder, "input_ids") if text_encoder is not None else torch.int32
        self._sample_dtype = input_dtype(unet, "sample")
        self._embeds_dtype = input_dtype(unet, "encoder_hidden_states")
        self._unet_in_channels = fixed_dim(unet, "sample", 1, default=4)
        self.latent_channels = 4 if self._unet_in_channels == 9 else self._unet_in_channels
        """Channels of the latents the loop denoises (an inpainting UNet takes 5 more as conditions)."""
        self.default_sample_size = default_sample_size or self._default_size // self.vae.scale_factor
        self.unet_downsampling = unet_downsampling or 1
        self.unet_loop = DenoisingLoop(unet)
        """The denoising loop, with the bound UNet calls it keeps between calls."""

    @property
    def vae_scaling_factor(self) -> float:
        """Latents are multiplied by it after encoding and divided by it before decoding."""
        return self.vae.scaling_factor

    @property
    def vae_scale_factor(self) -> int:
        """Image pixels per latent pixel, from the VAE (``2 ** (len(block_out_channels) - 1)``)."""
        return self.vae.scale_factor

    @property
    def size_multiple(self) -> int:
        """What image heights and widths must be multiples of: the VAE's scale factor times the UNet's downsampling."""
        return self.vae.scale_factor * self.unet_downsampling

    @property
    def default_size(self) -> int:
        """The image side used when a call gives no height or width (the UNet's ``sample_size`` in pixels)."""
        return self.default_sample_size * self.vae.scale_factor

    @property
    def bind_unet(self) -> bool:
        """Run the denoising loop on a :class:`ortbind.BoundCall` (fixed buffers; the fast path, and
        the one CUDA graphs need); ``False`` calls the UNet session afresh every step."""
        return self.unet_loop.bind

    @bind_unet.setter
    def bind_unet(self, value: bool) -> None:
        self.unet_loop.bind = value

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
        """The shape of the initial latents for ``batch`` images of ``height`` x ``width`` pixels."""
        factor = self.vae.scale_factor
        return (batch, self.latent_channels, height // factor, width // factor)

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls: type[_P],
        model_dir: str | Path,
        device: str | torch.device = "cpu",
        scheduler: str | None = None,
        *,
        cuda_graph: bool = False,
        **session_kwargs: Any,
    ) -> _P:
        """Load an ONNX Stable Diffusion folder, in diffusers' or optimum's layout.

        Args:
            model_dir: Folder with ``model_index.json``, one ``model.onnx`` per component folder,
                ``tokenizer/`` and ``scheduler/``.
            device: Where the models run and tensors live.
            scheduler: One of :data:`SCHEDULERS`, or None for the class ``scheduler_config.json`` names.
            cuda_graph: Capture the UNet's denoising step as a CUDA graph and replay it (CUDA
                only; the UNet session gets ``cuda_graph=True`` and the loop runs on a bound call).
            session_kwargs: Passed to every :class:`ortbind.TorchSession` (``providers=``,
                ``provider_options=``, ``session_options=``, ``allow_cpu_fallback=``...).
                On CPU, ``session_options`` defaults to :func:`cpu_session_options`.
        """
        folder = ModelFolder(model_dir)
        names = cls.session_names(folder)
        folder.require([*names, *cls._folders(folder), "scheduler"], cls.__name__)
        if torch.device(device).type == "cpu" and "session_options" not in session_kwargs:
            session_kwargs["session_options"] = cpu_session_options()
        sessions = {
            name: folder.session(
                name, device, **session_kwargs, **({"cuda_graph": True} if cuda_graph and name == "unet" else {})
            )
            for name in names
        }
        return cls.from_sessions(folder, sessions, scheduler)

    @classmethod
    def from_sessions(
        cls: type[_P],
        model_dir: str | Path | ModelFolder,
        sessions: Mapping[str, ortbind.TorchSession],
        scheduler: str | None = None,
    ) -> _P:
        """Build the pipeline of a folder from sessions already loaded, say shared with another pipeline.

        Args:
            model_dir: The folder the sessions were loaded from (its tokenizers, scheduler and configs
                are read from it).
            sessions: Component name -> session, at least :meth:`session_names` of them.
            scheduler: As for :meth:`from_pretrained`.

        Raises:
            FileNotFoundError: The folder lacks a part the pipeline needs.
            KeyError: ``sessions`` lacks one the pipeline needs.
        """
        folder = model_dir if isinstance(model_dir, ModelFolder) else ModelFolder(model_dir)
        names = cls.session_names(folder)
        folder.require([*cls._folders(folder), "scheduler"], cls.__name__)
        missing = [name for name in names if name not in sessions]
        if missing:
            raise KeyError(f"{cls.__name__} needs sessions {', '.join(names)}; missing {', '.join(missing)}")
        chosen = {name: sessions[name] for name in names}
        return cls._from_folder(folder, chosen, load_scheduler(scheduler, folder.scheduler_config()))

    @classmethod
    def session_names(cls, folder: ModelFolder) -> list[str]:
        """The components of ``folder`` this pipeline runs as sessions (``unet``, ``vae_decoder``...)."""
        return cls._session_names(folder)

    @classmethod
    def _session_names(cls, folder: ModelFolder) -> list[str]:
        return list(cls._sessions)

    @classmethod
    def _folders(cls, folder: ModelFolder) -> list[str]:
        return ["tokenizer"]

    @classmethod
    def _from_folder(
        cls: type[_P], folder: ModelFolder, sessions: dict[str, ortbind.TorchSession], scheduler: Scheduler
    ) -> _P:
        return cls(
            sessions["text_encoder"],
            sessions["unet"],
            sessions["vae_decoder"],
            folder.tokenizer(),
            scheduler,
            folder.vae_settings(sessions["vae_decoder"]),
            vae_encoder=sessions.get("vae_encoder"),
            default_sample_size=folder.unet_sample_size(),
            unet_downsampling=folder.unet_downsampling() or cls._default_unet_downsampling,
        )

    # ------------------------------------------------------------------ checks

    def _check(
        self,
        prompts: list[str],
        negative_prompt: str | Sequence[str] | None,
        num_images_per_prompt: int,
        height: int,
        width: int,
        steps: int,
        output_type: str,
    ) -> int:
        """Refuse a bad request with a clear message; return the number of images."""
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompt: expected a string or a non-empty list of strings, got {prompts!r}")
        if (
            negative_prompt is not None
            and not isinstance(negative_prompt, str)
            and len(negative_prompt) != len(prompts)
        ):
            raise ValueError(
                f"negative_prompt: got {len(negative_prompt)} for {len(prompts)} prompts; "
                f"pass one string, or one per prompt"
            )
        multiple = self.size_multiple
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value <= 0 or value % multiple:
                suggestion = max(multiple, round(value / multiple) * multiple) if isinstance(value, int) else 512
                raise ValueError(
                    f"{name}: must be a positive multiple of {multiple} (the VAE's scale factor "
                    f"{self.vae.scale_factor} x the UNet's downsampling {self.unet_downsampling}), "
                    f"got {value!r}; try {suggestion}"
                )
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt: must be at least 1, got {num_images_per_prompt}")
        if steps < 1:
            raise ValueError(f"num_inference_steps: must be at least 1, got {steps}")
        if output_type not in ("pil", "pt", "np"):
            raise ValueError(f"output_type: expected 'pil', 'pt' or 'np', got {output_type!r}")
        return len(prompts) * num_images_per_prompt

    def _default_hw(self, height: int | None, width: int | None, latents: torch.Tensor | None) -> tuple[int, int]:
        if latents is not None:
            factor = self.vae.scale_factor
            return height or latents.shape[-2] * factor, width or latents.shape[-1] * factor
        return height or self.default_size, width or self.default_size

    # ------------------------------------------------------------------ text

    def _sd_embeddings(
        self,
        prompts: list[str],
        negative_prompt: str | Sequence[str] | None,
        per_prompt: int,
        do_guidance: bool,
        clock: RunClock,
    ) -> torch.Tensor:
        """Negative (when guiding) and positive prompt embeddings, encoded in one run."""
        texts = (negative_list(negative_prompt, len(prompts)) if do_guidance else []) + prompts
        assert self.text_encoder is not None
        hidden = encode_clip(self.text_encoder, self.tokenizer, texts, self._ids_dtype, clock)["last_hidden_state"]
        return hidden.repeat_interleave(per_prompt, dim=0).to(self._embeds_dtype)

    # ------------------------------------------------------------------ images and latents

    def _random_latents(
        self, shape: tuple[int, ...], generator: torch.Generator | None, latents: torch.Tensor | None
    ) -> torch.Tensor:
        if latents is None:
            noise: torch.Tensor = randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)
            return noise
        if tuple(latents.shape) != shape:
            raise ValueError(f"latents: expected shape {shape}, got {tuple(latents.shape)}")
        return latents.to(device=self.device, dtype=torch.float32)

    def _preprocess(
        self, image: ImageInput, height: int | None, width: int | None, name: str = "image"
    ) -> torch.Tensor:
        """``image`` as the VAE encoder takes it; see :func:`._images.preprocess`."""
        return preprocess(image, height, width, multiple=self.size_multiple, device=self.device, name=name)

    def _encode_image(self, pixels: torch.Tensor, generator: torch.Generator | None, clock: RunClock) -> torch.Tensor:
        """Scaled VAE latents of ``pixels``; see :func:`._images.encode_pixels`."""
        if self.vae_encoder is None:
            raise ValueError(f"{type(self).__name__}: needs a vae_encoder session; load a folder with vae_encoder/")
        return encode_pixels(self.vae_encoder, pixels, generator, self.vae, clock)

    def _strength_timesteps(self, steps: int, strength: float) -> tuple[torch.Tensor, int]:
        """Set the scheduler's timesteps and keep the last ``strength`` of them, as diffusers does.

        Returns the timesteps to run and the index of the first one in the full schedule.
        """
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength: must be between 0 and 1, got {strength}")
        self.scheduler.set_timesteps(steps, device=self.device)
        kept = min(int(steps * strength), steps)
        start = max(steps - kept, 0) * self.scheduler.order
        timesteps = self.scheduler.timesteps[start:]
        if len(timesteps) == 0:
            raise ValueError(
                f"strength: {strength} with {steps} steps leaves no denoising step; "
                f"raise strength or num_inference_steps"
            )
        return timesteps, start

    @staticmethod
    def _repeat_to_batch(latents: torch.Tensor, batch: int, name: str = "image") -> torch.Tensor:
        """``torch.cat([latents] * k)`` to ``batch`` rows, as diffusers expands images to prompts."""
        rows = latents.shape[0]
        if batch % rows:
            raise ValueError(f"{name}: cannot spread {rows} images over {batch} outputs; pass 1 or {batch} images")
        return torch.cat([latents] * (batch // rows)) if batch > rows else latents

    # ------------------------------------------------------------------ the loop

    def _denoise(
        self,
        *,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        begin_index: int,
        conditions: dict[str, torch.Tensor],
        guidance_scale: float,
        guidance_rescale: float,
        generator: torch.Generator | None,
        progress: Progress,
        callback_on_step_end: StepCallback | None,
        clock: RunClock,
        extra_channels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The denoising loop (:class:`._loop.DenoisingLoop`). No numpy and no host transfer happen in it.

        Args:
            latents: The starting latents, already scaled or noised for the first timestep.
            timesteps: The timesteps to run.
            begin_index: Index of ``timesteps[0]`` in the scheduler's full schedule.
            conditions: UNet inputs that stay the same each step (``encoder_hidden_states`` and,
                for SDXL, ``text_embeds`` and ``time_ids``), negative half first when guiding.
            guidance_scale: Classifier-free guidance weight; above 1 the UNet runs on both halves.
            guidance_rescale: diffusers' ``rescale_noise_cfg`` factor (0 leaves the guided noise alone).
            generator: For the step noise of ancestral schedulers.
            progress: See :data:`Progress`.
            callback_on_step_end: See :data:`StepCallback`.
            clock: Adds up the time in ORT.
            extra_channels: Stacked after the scaled latents on the channel axis each step (the
                inpainting UNet's mask and masked-image latents).
        """
        return self.unet_loop.run(
            pipe=self,
            scheduler=self.scheduler,
            latents=latents,
            timesteps=timesteps,
            begin_index=begin_index,
            conditions=conditions,
            guidance_scale=guidance_scale,
            guidance_rescale=guidance_rescale,
            generator=generator,
            extra_channels=extra_channels,
            progress=progress,
            callback_on_step_end=callback_on_step_end,
            clock=clock,
        )

    def _step_generator(self, generator: torch.Generator | None) -> torch.Generator | None:
        """The generator for step noise: the caller's, or one seeded from it on the pipeline's device."""
        if generator is None or generator.device == self.device:
            return generator
        return torch.Generator(self.device).manual_seed(generator.initial_seed())

    # ------------------------------------------------------------------ out

    def _decode(self, latents: torch.Tensor, clock: RunClock) -> torch.Tensor:
        """Decode every latent in one VAE run; NHWC float in [0, 1] on the CPU, the call's one host transfer."""
        return decode_latents(self.vae_decoder, latents, self.vae, clock)

    @staticmethod
    def _output(
        image: torch.Tensor, output_type: str, started: float, loop_seconds: float, steps: int, clock: RunClock
    ) -> PipelineOutput:
        return PipelineOutput(
            to_output(image, output_type),
            seconds_per_step=loop_seconds / max(steps, 1),
            seconds=time.perf_counter() - started,
            ort_seconds=clock.seconds,
        )
