"""What every pipeline here shares: loading, checks, text encoding, images in and out, the loop.

Each pipeline file (``pipeline.py``, ``pipeline_img2img.py``, ``pipeline_inpaint.py``,
``pipeline_sdxl.py``, ``pipeline_sdxl_img2img.py``) is a ``__call__`` that reads as numbered steps
over these parts. The denoising loop is one method, :meth:`OrtPipelineBase._denoise`, for all of
them: it keeps every tensor on the session's device, and a test proves for each pipeline that no
tensor reaches the host and no numpy is touched inside it.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, cast

import numpy as np
import onnxruntime as ort
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from tqdm.auto import tqdm

import ortbind

from ._folder import DEFAULT_VAE_SCALING_FACTOR, ModelFolder, VaeSettings, scheduler_from_config

__all__ = [
    "SCHEDULERS",
    "OrtPipelineBase",
    "PipelineOutput",
    "Progress",
    "Scheduler",
    "StepCallback",
    "cpu_session_options",
    "load_scheduler",
]


class Scheduler(Protocol):
    """What the pipelines use of a diffusers scheduler."""

    timesteps: torch.Tensor
    init_noise_sigma: float
    order: int
    config: Any

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None: ...

    def scale_model_input(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor: ...

    def step(self, model_output: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor, **kwargs: Any) -> Any: ...

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor: ...


SCHEDULERS: dict[str, tuple[Any, dict[str, Any]]] = {
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler-ancestral": (EulerAncestralDiscreteScheduler, {}),
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "unipc": (UniPCMultistepScheduler, {}),
}
"""Scheduler names the pipelines and CLIs accept -> (diffusers class, config overrides)."""

StepCallback = Callable[[Any, int, torch.Tensor, dict[str, torch.Tensor]], "dict[str, torch.Tensor] | None"]
"""``callback_on_step_end(pipe, step, timestep, {"latents": latents})``, as in diffusers.

Called after each denoising step with the step's index and timestep (device tensors, no host
transfer made for them); may return a dict whose ``"latents"`` replaces the latents.
"""

Progress = bool | Callable[[int, int], None]
"""``True``: a tqdm bar; ``False``: nothing; a callable: ``progress(steps_done, steps_total)`` per step."""


def cpu_session_options() -> ort.SessionOptions:
    """ORT options for CPU sessions that share the cores with torch.

    ORT's worker threads spin for a while after each run; torch's own parallel ops (the image
    post-processing, the scheduler on large latents) then wait for cores that ORT's idle
    threads hold. Measured on a 2-core CPU with ``benchmarks/cpu_spinning.py``, spinning made
    the tiny model's images 1.15-1.2x slower at 64x64 and 1.45-1.75x slower at 128x128.
    """
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def load_scheduler(name: str | None, config: dict[str, Any]) -> Scheduler:
    """A diffusers scheduler configured from the model's ``scheduler_config.json``.

    Args:
        name: One of :data:`SCHEDULERS`, or None for the class the config names.
        config: The parsed ``scheduler_config.json``.
    """
    if name is None:
        return cast(Scheduler, scheduler_from_config(config))
    try:
        cls, overrides = SCHEDULERS[name]
    except KeyError:
        raise ValueError(f"scheduler {name!r}: unknown; choose one of {', '.join(SCHEDULERS)}") from None
    return cast(Scheduler, cls.from_config({**config, **overrides}))


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


@dataclass
class _RunClock:
    """Adds up time spent inside ORT runs, to tell pipeline overhead from model time."""

    seconds: float = 0.0

    def timed(self, session: ortbind.TorchSession, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        start = time.perf_counter()
        out = session.run(feeds)
        self.seconds += time.perf_counter() - start
        return out

    def timed_bound(self, bound: ortbind.BoundCall) -> dict[str, torch.Tensor]:
        start = time.perf_counter()
        out = bound.run()
        self.seconds += time.perf_counter() - start
        return out


@dataclass
class _BoundUNet:
    """The UNet bound once for one set of input shapes: fixed input buffers, a fixed output."""

    call: ortbind.BoundCall
    sample: torch.Tensor
    timestep: torch.Tensor
    conditions: dict[str, torch.Tensor]


# Bound UNet calls a pipeline keeps (one per input-shape signature; each may own a CUDA graph).
_MAX_BOUND_UNETS = 8


ImageInput = Image.Image | torch.Tensor | Sequence[Image.Image]
"""An image: PIL, a list of PIL images, or a float tensor (C, H, W) or (N, C, H, W) in [0, 1]."""

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
    """

    _sessions: ClassVar[tuple[str, ...]] = ("text_encoder", "unet", "vae_decoder")
    _class_names: ClassVar[tuple[str, ...]] = ()
    _default_size: ClassVar[int] = 512

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
        self._ids_dtype = _input_dtype(text_encoder, "input_ids") if text_encoder is not None else torch.int32
        self._sample_dtype = _input_dtype(unet, "sample")
        self._timestep_spec = unet.spec.input("timestep")
        self._embeds_dtype = _input_dtype(unet, "encoder_hidden_states")
        self._latent_dtype = _input_dtype(vae_decoder, "latent_sample")
        self._unet_in_channels = _fixed_dim(unet, "sample", 1, default=4)
        self._latent_channels = 4 if self._unet_in_channels == 9 else self._unet_in_channels
        self.default_sample_size = default_sample_size or self._default_size // self.vae.scale_factor
        self.bind_unet = True
        """Run the denoising loop on a :class:`ortbind.BoundCall` (fixed buffers; the fast path,
        and the one CUDA graphs need); ``False`` calls the UNet session afresh every step."""
        self._bound_unets: dict[tuple[Any, ...], _BoundUNet] = {}

    @property
    def vae_scaling_factor(self) -> float:
        """Latents are multiplied by it after encoding and divided by it before decoding."""
        return self.vae.scaling_factor

    @property
    def vae_scale_factor(self) -> int:
        """Image pixels per latent pixel, from the VAE (``2 ** (len(block_out_channels) - 1)``)."""
        return self.vae.scale_factor

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
        names = cls._session_names(folder)
        folder.require([*names, *cls._folders(folder), "scheduler"], cls.__name__)
        if torch.device(device).type == "cpu" and "session_options" not in session_kwargs:
            session_kwargs["session_options"] = cpu_session_options()
        sessions = {
            name: folder.session(
                name, device, **session_kwargs, **({"cuda_graph": True} if cuda_graph and name == "unet" else {})
            )
            for name in names
        }
        return cls._from_folder(folder, sessions, load_scheduler(scheduler, folder.scheduler_config()))

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
        factor = self.vae.scale_factor
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value <= 0 or value % factor:
                suggestion = max(factor, round(value / factor) * factor) if isinstance(value, int) else 512
                raise ValueError(
                    f"{name}: must be a positive multiple of {factor} (the VAE's scale factor), "
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
            return height or latents.shape[-2] * self.vae.scale_factor, width or latents.shape[
                -1
            ] * self.vae.scale_factor
        size = self.default_sample_size * self.vae.scale_factor
        return height or size, width or size

    # ------------------------------------------------------------------ text

    def _encode_clip(
        self,
        session: ortbind.TorchSession,
        tokenizer: Any,
        texts: list[str],
        clock: _RunClock,
        ids_dtype: torch.dtype | None = None,
    ) -> dict[str, torch.Tensor]:
        """Tokenize ``texts`` padded to the tokenizer's length and run one text encoder on them."""
        ids = tokenizer(
            texts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        ids = ids.to(device=self.device, dtype=ids_dtype or self._ids_dtype)
        return clock.timed(session, input_ids=ids)

    def _sd_embeddings(
        self,
        prompts: list[str],
        negative_prompt: str | Sequence[str] | None,
        per_prompt: int,
        do_guidance: bool,
        clock: _RunClock,
    ) -> torch.Tensor:
        """Negative (when guiding) and positive prompt embeddings, encoded in one run."""
        texts = (_negatives(negative_prompt, len(prompts)) if do_guidance else []) + prompts
        assert self.text_encoder is not None
        hidden = self._encode_clip(self.text_encoder, self.tokenizer, texts, clock)["last_hidden_state"]
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
        """An image as a float32 tensor (N, 3, H, W) in [-1, 1] on the device, as diffusers prepares it.

        PIL images are resized (Lanczos, as diffusers' ``VaeImageProcessor``) to ``height`` x
        ``width``, which default to the image's size rounded down to the VAE's scale factor.
        Tensors must already have a size that is a multiple of it.
        """
        factor = self.vae.scale_factor
        if isinstance(image, Image.Image):
            image = [image]
        if isinstance(image, torch.Tensor):
            tensor = image.unsqueeze(0) if image.dim() == 3 else image
            if tensor.dim() != 4 or tensor.shape[1] != 3 or not tensor.is_floating_point():
                raise ValueError(
                    f"{name}: expected a float tensor (3, H, W) or (N, 3, H, W) in [0, 1], "
                    f"got {tensor.dtype} of shape {tuple(image.shape)}"
                )
            h, w = int(tensor.shape[-2]), int(tensor.shape[-1])
            if (height or h, width or w) != (h, w) or h % factor or w % factor:
                raise ValueError(
                    f"{name}: a tensor of {h}x{w} pixels for a {height or h}x{width or w} image; pass a tensor "
                    f"of that size, a multiple of {factor} (the VAE's scale factor), or a PIL image to resize"
                )
            low, high = float(tensor.min()), float(tensor.max())
            if low < 0 or high > 1:
                raise ValueError(f"{name}: tensor values must be in [0, 1], got [{low:.3g}, {high:.3g}]")
            pixels = tensor.to(device=self.device, dtype=torch.float32)
        elif isinstance(image, Sequence) and image and all(isinstance(i, Image.Image) for i in image):
            w, h = image[0].size
            size = (width or w - w % factor, height or h - h % factor)
            if size[0] % factor or size[1] % factor:
                raise ValueError(f"height and width: must be multiples of {factor}, got {size[1]}x{size[0]}")
            arrays = [np.asarray(_resized(i.convert("RGB"), size), dtype=np.float32) / 255.0 for i in image]
            # NHWC pixels to the NCHW layout the VAE encoder binds (ortbind refuses strided tensors).
            pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous().to(self.device)
        else:
            raise ValueError(f"{name}: expected a PIL image, a list of them or a tensor, got {type(image).__name__}")
        return pixels * 2.0 - 1.0

    def _encode_image(self, pixels: torch.Tensor, generator: torch.Generator | None, clock: _RunClock) -> torch.Tensor:
        """Scaled VAE latents of ``pixels``, sampled with ``generator`` as diffusers' torch VAE does.

        An encoder that outputs ``latent_parameters`` (mean and log-variance) is sampled here:
        ``mean + exp(logvar / 2) * noise``, the noise drawn from ``generator`` like diffusers'
        ``DiagonalGaussianDistribution.sample``. One that outputs ``latent_sample`` sampled inside
        the model (diffusers' convert script) is taken as it is.
        """
        if self.vae_encoder is None:
            raise ValueError(f"{type(self).__name__}: needs a vae_encoder session; load a folder with vae_encoder/")
        sample_dtype = _input_dtype(self.vae_encoder, "sample")
        out = clock.timed(self.vae_encoder, sample=pixels.to(sample_dtype))
        if "latent_parameters" in out:
            mean, logvar = out["latent_parameters"].float().chunk(2, dim=1)
            std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
            noise = randn_tensor(mean.shape, generator=generator, device=self.device, dtype=mean.dtype)
            latents: torch.Tensor = mean + std * noise
        elif "latent_sample" in out:
            latents = out["latent_sample"].float()
        else:
            raise ValueError(
                f"{self.vae_encoder.path}: expected an output 'latent_parameters' or 'latent_sample', "
                f"found {', '.join(out)}"
            )
        if self.vae.latents_mean is not None and self.vae.latents_std is not None:
            mean_t = torch.tensor(self.vae.latents_mean, device=self.device).view(1, -1, 1, 1)
            std_t = torch.tensor(self.vae.latents_std, device=self.device).view(1, -1, 1, 1)
            return (latents - mean_t) * self.vae.scaling_factor / std_t
        return latents * self.vae.scaling_factor

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
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        begin_index: int,
        conditions: dict[str, torch.Tensor],
        guidance_scale: float,
        generator: torch.Generator | None,
        clock: _RunClock,
        progress: Progress,
        *,
        guidance_rescale: float = 0.0,
        extra_channels: torch.Tensor | None = None,
        callback_on_step_end: StepCallback | None = None,
    ) -> torch.Tensor:
        """The denoising loop. No numpy and no host transfer happen in here (a test proves it).

        Args:
            latents: The starting latents, already scaled or noised for the first timestep.
            timesteps: The timesteps to run.
            begin_index: Index of ``timesteps[0]`` in the scheduler's full schedule.
            conditions: UNet inputs that stay the same each step (``encoder_hidden_states`` and,
                for SDXL, ``text_embeds`` and ``time_ids``), negative half first when guiding.
            guidance_scale: Classifier-free guidance weight; above 1 the UNet runs on both halves.
            generator: For the step noise of ancestral schedulers.
            clock: Adds up the time in ORT.
            progress: See :data:`Progress`.
            guidance_rescale: diffusers' ``rescale_noise_cfg`` factor (0 leaves the guided noise alone).
            extra_channels: Stacked after the scaled latents on the channel axis each step (the
                inpainting UNet's mask and masked-image latents).
            callback_on_step_end: See :data:`StepCallback`.
        """
        scheduler = self.scheduler
        do_guidance = guidance_scale > 1.0
        if hasattr(scheduler, "set_begin_index"):
            # Else the first step looks its index up with .item(), a device-to-host sync.
            scheduler.set_begin_index(begin_index)
        # Every step's UNet timestep input, made in one go rather than once per step.
        unet_timesteps = self._unet_timesteps(timesteps, latents.shape[0] * (2 if do_guidance else 1))
        step_kwargs: dict[str, Any] = {"generator": generator} if _takes_generator(scheduler) else {}
        report = progress if callable(progress) else None
        steps = tqdm(timesteps, disable=progress is not True, desc="denoising", unit="step")
        for i, (t, unet_t) in enumerate(zip(steps, unet_timesteps, strict=True)):
            model_input = torch.cat([latents] * 2) if do_guidance else latents
            model_input = scheduler.scale_model_input(model_input, t)
            if extra_channels is not None:
                model_input = torch.cat([model_input, extra_channels], dim=1)
            if self.bind_unet:
                bound = self._bound_unet(model_input, unet_t, conditions)
                bound.sample.copy_(model_input)
                bound.timestep.copy_(unet_t)
                # The bound output is overwritten by the next step; schedulers keep past outputs.
                noise = clock.timed_bound(bound.call)["out_sample"].to(latents.dtype, copy=True)
            else:
                sample = model_input.to(self._sample_dtype)
                noise = clock.timed(self.unet, sample=sample, timestep=unet_t, **conditions)["out_sample"]
                noise = noise.to(latents.dtype)
            if do_guidance:
                uncond, text = noise.chunk(2)
                noise = torch.add(uncond, text - uncond, alpha=guidance_scale)  # uncond + g * (text - uncond)
                if guidance_rescale > 0.0:
                    noise = _rescale_noise_cfg(noise, text, guidance_rescale)
            latents = scheduler.step(noise, t, latents, **step_kwargs).prev_sample
            if callback_on_step_end is not None:
                replaced = callback_on_step_end(self, i, t, {"latents": latents})
                if replaced is not None:
                    latents = replaced.get("latents", latents)
            if report is not None:
                report(i + 1, len(timesteps))
        return latents

    def _bound_unet(
        self, model_input: torch.Tensor, timestep: torch.Tensor, conditions: dict[str, torch.Tensor]
    ) -> _BoundUNet:
        """The UNet bound for these input shapes, with this call's conditions copied into its buffers.

        Kept between calls, so a CUDA graph is captured once per shape and replayed after; the
        conditions (text embeddings, SDXL's added ones) are copied in once per call, the sample
        and timestep once per step.
        """
        key = (tuple(model_input.shape), tuple(timestep.shape), *((n, tuple(c.shape)) for n, c in conditions.items()))
        bound = self._bound_unets.get(key)
        if bound is None:
            if len(self._bound_unets) >= _MAX_BOUND_UNETS:
                self._bound_unets.pop(next(iter(self._bound_unets)))
            sample = torch.empty(model_input.shape, dtype=self._sample_dtype, device=self.device)
            step = torch.empty(timestep.shape, dtype=timestep.dtype, device=self.device)
            fixed = {n: torch.empty(c.shape, dtype=c.dtype, device=self.device) for n, c in conditions.items()}
            call = self.unet.bind({"sample": sample, "timestep": step, **fixed}, ["out_sample"])
            bound = self._bound_unets[key] = _BoundUNet(call, sample, step, fixed)
        for name, value in conditions.items():
            bound.conditions[name].copy_(value)
        return bound

    def _unet_timesteps(self, timesteps: torch.Tensor, batch: int) -> torch.Tensor:
        """The UNet's ``timestep`` input for every step: row i is step i's, in the spec's dtype."""
        spec = self._timestep_spec
        assert spec.dtype is not None
        values = timesteps.to(device=self.device, dtype=spec.dtype)
        if spec.dims is not None and len(spec.dims) == 0:
            return values
        # Rank 1: the full batch, as the declared batch symbol says (ORT would also broadcast (1,)).
        return values.reshape(-1, 1).repeat(1, batch)

    def _step_generator(self, generator: torch.Generator | None) -> torch.Generator | None:
        """The generator for step noise: the caller's, or one seeded from it on the pipeline's device."""
        if generator is None or generator.device == self.device:
            return generator
        return torch.Generator(self.device).manual_seed(generator.initial_seed())

    # ------------------------------------------------------------------ out

    def _decode(self, latents: torch.Tensor, clock: _RunClock) -> torch.Tensor:
        """Decode every latent in one VAE run; return NHWC float in [0, 1] on the CPU.

        The ``.cpu()`` here is the one host transfer of a call.
        """
        if self.vae.latents_mean is not None and self.vae.latents_std is not None:
            mean = torch.tensor(self.vae.latents_mean, device=self.device).view(1, -1, 1, 1)
            std = torch.tensor(self.vae.latents_std, device=self.device).view(1, -1, 1, 1)
            latents = latents * std / self.vae.scaling_factor + mean
        else:
            latents = latents / self.vae.scaling_factor
        image = clock.timed(self.vae_decoder, latent_sample=latents.to(self._latent_dtype))["sample"]
        return (image.float() * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu()

    @staticmethod
    def _output(
        image: torch.Tensor, output_type: str, started: float, loop_seconds: float, steps: int, clock: _RunClock
    ) -> PipelineOutput:
        return PipelineOutput(
            _convert(image, output_type),
            seconds_per_step=loop_seconds / max(steps, 1),
            seconds=time.perf_counter() - started,
            ort_seconds=clock.seconds,
        )


# ---------------------------------------------------------------------- helpers


def _input_dtype(session: ortbind.TorchSession, name: str) -> torch.dtype:
    try:
        dtype = session.spec.input(name).dtype
    except KeyError:
        names = ", ".join(s.name for s in session.inputs)
        raise ValueError(f"{session.path}: expected an input {name!r}, found {names}") from None
    if dtype is None:
        raise ValueError(f"{session.path}: input {name!r} has no torch dtype")
    return dtype


def _fixed_dim(session: ortbind.TorchSession, name: str, axis: int, default: int) -> int:
    dims = session.spec.input(name).dims
    if dims is not None and len(dims) > axis and isinstance(dims[axis], int):
        return int(dims[axis])  # type: ignore[arg-type]
    return default


def _prompts(prompt: str | Sequence[str]) -> list[str]:
    return [prompt] if isinstance(prompt, str) else list(prompt)


def _negatives(negative_prompt: str | Sequence[str] | None, count: int) -> list[str]:
    if negative_prompt is None:
        return [""] * count
    if isinstance(negative_prompt, str):
        return [negative_prompt] * count
    return list(negative_prompt)


def _takes_generator(scheduler: Scheduler) -> bool:
    return "generator" in inspect.signature(scheduler.step).parameters


def _rescale_noise_cfg(noise_cfg: torch.Tensor, noise_text: torch.Tensor, guidance_rescale: float) -> torch.Tensor:
    """diffusers' ``rescale_noise_cfg`` (section 3.4 of arXiv:2305.08891)."""
    dims = list(range(1, noise_text.ndim))
    rescaled = noise_cfg * (noise_text.std(dim=dims, keepdim=True) / noise_cfg.std(dim=dims, keepdim=True))
    return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg


def _resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image if image.size == size else image.resize(size, resample=Image.Resampling.LANCZOS)


def _convert(image: torch.Tensor, output_type: str) -> Any:
    if output_type == "pt":
        return image
    array = image.numpy()
    if output_type == "np":
        return array
    return [Image.fromarray((a * 255).round().astype("uint8")) for a in array]
