"""Text-to-image Stable Diffusion on ONNX Runtime through ortbind, latents on the device throughout.

Reads the diffusers ONNX folder layout (what diffusers' convert script and ``optimum-cli export
onnx`` write). Unlike diffusers' ``OnnxStableDiffusionPipeline``, which copies every tensor to
numpy and back on each denoising step, this pipeline keeps the text embeddings, latents,
timesteps and noise predictions as torch tensors on the session's device from the first step
to the decoded image: the only host transfer is the finished image.

Tokenizer and schedulers are the well-kept ones from transformers and diffusers.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

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
from transformers import CLIPTokenizer

import ortbind

__all__ = [
    "SCHEDULERS",
    "OrtStableDiffusionPipeline",
    "PipelineOutput",
    "Scheduler",
    "cpu_session_options",
    "load_scheduler",
]


class Scheduler(Protocol):
    """What the pipeline uses of a diffusers scheduler."""

    timesteps: torch.Tensor
    init_noise_sigma: float

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None: ...

    def scale_model_input(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor: ...

    def step(self, model_output: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor, **kwargs: Any) -> Any: ...


SCHEDULERS: dict[str, tuple[Any, dict[str, Any]]] = {
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler-ancestral": (EulerAncestralDiscreteScheduler, {}),
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "unipc": (UniPCMultistepScheduler, {}),
}
"""Scheduler names the pipeline and CLI accept -> (diffusers class, config overrides)."""

# SD 1.x/2.x VAEs all use this; a VAE config.json next to the decoder overrides it.
DEFAULT_VAE_SCALING_FACTOR = 0.18215


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


def load_scheduler(name: str, config: dict[str, Any]) -> Scheduler:
    """A diffusers scheduler by name, configured from the model's ``scheduler_config.json``."""
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
        ort_seconds: Wall time spent inside ONNX Runtime runs (all three models).
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


class OrtStableDiffusionPipeline:
    """Stable Diffusion text-to-image whose three models run as :class:`ortbind.TorchSession`.

    Build it with :meth:`from_pretrained` on a diffusers ONNX folder, then call it like
    diffusers' pipelines. Every input's dtype comes from the session specs (``timestep`` is
    float32 in some exports and int64 in others), never from assumptions.

    Args:
        text_encoder: Session of ``text_encoder/model.onnx`` (``input_ids`` -> ``last_hidden_state``).
        unet: Session of ``unet/model.onnx`` (``sample``, ``timestep``, ``encoder_hidden_states``
            -> ``out_sample``).
        vae_decoder: Session of ``vae_decoder/model.onnx`` (``latent_sample`` -> ``sample``).
        tokenizer: The CLIP tokenizer.
        scheduler: Any diffusers scheduler.
        vae_scaling_factor: Latents are divided by it before decoding.
    """

    def __init__(
        self,
        text_encoder: ortbind.TorchSession,
        unet: ortbind.TorchSession,
        vae_decoder: ortbind.TorchSession,
        tokenizer: CLIPTokenizer,
        scheduler: Scheduler,
        vae_scaling_factor: float = DEFAULT_VAE_SCALING_FACTOR,
    ) -> None:
        self.text_encoder = text_encoder
        self.unet = unet
        self.vae_decoder = vae_decoder
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.vae_scaling_factor = vae_scaling_factor
        self.device = unet.device
        for name, session in (("text_encoder", text_encoder), ("vae_decoder", vae_decoder)):
            if session.device != self.device:
                raise ValueError(
                    f"{name} runs on {session.device} but unet on {self.device}; load all three on one device"
                )
        self._ids_dtype = _input_dtype(text_encoder, "input_ids")
        self._sample_dtype = _input_dtype(unet, "sample")
        self._timestep_spec = unet.spec.input("timestep")
        self._embeds_dtype = _input_dtype(unet, "encoder_hidden_states")
        self._latent_dtype = _input_dtype(vae_decoder, "latent_sample")
        self._latent_channels = _fixed_dim(unet, "sample", 1, default=4)

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        device: str | torch.device = "cpu",
        scheduler: str = "pndm",
        **session_kwargs: Any,
    ) -> OrtStableDiffusionPipeline:
        """Load a diffusers ONNX Stable Diffusion folder.

        Args:
            model_dir: Folder with ``model_index.json``, ``text_encoder/``, ``unet/``,
                ``vae_decoder/``, ``tokenizer/`` and ``scheduler/``.
            device: Where the models run and tensors live.
            scheduler: One of :data:`SCHEDULERS`.
            session_kwargs: Passed to every :class:`ortbind.TorchSession` (``providers=``,
                ``provider_options=``, ``session_options=``, ``allow_cpu_fallback=``...).
                On CPU, ``session_options`` defaults to :func:`cpu_session_options`.
        """
        root = Path(model_dir)
        index = root / "model_index.json"
        if not index.is_file():
            raise FileNotFoundError(
                f"{root}: no model_index.json; expected a diffusers ONNX Stable Diffusion folder "
                f"(as written by `python -m examples.stable_diffusion.export`)"
            )
        required = ["text_encoder/model.onnx", "unet/model.onnx", "vae_decoder/model.onnx", "tokenizer", "scheduler"]
        missing = [part for part in required if not (root / part).exists()]
        if missing:
            raise FileNotFoundError(f"{root}: missing {', '.join(missing)}; not a complete diffusers ONNX folder")
        if torch.device(device).type == "cpu" and "session_options" not in session_kwargs:
            session_kwargs["session_options"] = cpu_session_options()
        sessions = {
            name: ortbind.TorchSession(root / name / "model.onnx", device, **session_kwargs)
            for name in ("text_encoder", "unet", "vae_decoder")
        }
        scheduler_config = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
        return cls(
            sessions["text_encoder"],
            sessions["unet"],
            sessions["vae_decoder"],
            CLIPTokenizer.from_pretrained(root / "tokenizer"),
            load_scheduler(scheduler, scheduler_config),
            _vae_scaling_factor(root),
        )

    # ------------------------------------------------------------------ the call

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
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        progress: bool = True,
    ) -> PipelineOutput:
        """Generate images from text.

        Args:
            prompt: One prompt or a list of prompts.
            negative_prompt: What to steer away from: one for all prompts, or one per prompt.
            num_images_per_prompt: Images per prompt.
            height: Image height in pixels, a multiple of 8; by default from ``latents``, else 512.
            width: Image width in pixels, a multiple of 8; by default from ``latents``, else 512.
            num_inference_steps: Denoising steps.
            guidance_scale: Classifier-free guidance weight; at or below 1 the unconditional
                half is skipped and the UNet runs on half the batch.
            generator: Seeds the initial latents and, for ancestral schedulers, the step noise.
                Step noise is drawn on the pipeline's device: a generator on another device
                seeds a device generator with its ``initial_seed()``.
            latents: Initial latents ``(batch, 4, height/8, width/8)`` instead of random ones.
            output_type: ``"pil"``, ``"pt"`` or ``"np"``.
            progress: Show a tqdm bar over the steps.
        """
        started = time.perf_counter()
        clock = _RunClock()

        # 1. Check the request.
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        height = height or (latents.shape[-2] * 8 if latents is not None else 512)
        width = width or (latents.shape[-1] * 8 if latents is not None else 512)
        batch = self._check(
            prompts, negative_prompt, num_images_per_prompt, height, width, num_inference_steps, output_type
        )
        do_guidance = guidance_scale > 1.0

        # 2. Tokenize and encode the negative prompts (when guiding) and the prompts, in one run.
        texts = (_negatives(negative_prompt, len(prompts)) if do_guidance else []) + prompts
        embeds = self._encode(texts, num_images_per_prompt, clock).to(self._embeds_dtype)

        # 3. Prepare the initial latents, scaled for the scheduler.
        shape = (batch, self._latent_channels, height // 8, width // 8)
        latents = self._initial_latents(shape, generator, latents)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        latents = latents * self.scheduler.init_noise_sigma

        # 4. Denoise: one UNet run per step on the whole (guided) batch, everything on device.
        loop_started = time.perf_counter()
        latents = self._denoise(latents, embeds, guidance_scale, self._step_generator(generator), clock, progress)
        loop_seconds = time.perf_counter() - loop_started

        # 5. Decode every latent in one VAE run.
        sample = (latents / self.vae_scaling_factor).to(self._latent_dtype)
        image = clock.timed(self.vae_decoder, latent_sample=sample)["sample"]

        # 6. To images: the one host transfer of the call.
        image = (image.float() * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu()
        images = _convert(image, output_type)
        return PipelineOutput(
            images,
            seconds_per_step=loop_seconds / max(len(self.scheduler.timesteps), 1),
            seconds=time.perf_counter() - started,
            ort_seconds=clock.seconds,
        )

    def _denoise(
        self,
        latents: torch.Tensor,
        embeds: torch.Tensor,
        guidance_scale: float,
        generator: torch.Generator | None,
        clock: _RunClock,
        progress: bool,
    ) -> torch.Tensor:
        """The denoising loop. No numpy and no host transfer happen in here (a test proves it)."""
        scheduler = self.scheduler
        do_guidance = guidance_scale > 1.0
        if hasattr(scheduler, "set_begin_index"):
            # Else the first step looks its index up with .item(), a device-to-host sync.
            scheduler.set_begin_index(0)
        # Every step's UNet timestep input, made in one go rather than once per step.
        unet_timesteps = self._unet_timesteps(scheduler.timesteps, latents.shape[0] * (2 if do_guidance else 1))
        step_kwargs: dict[str, Any] = {"generator": generator} if _takes_generator(scheduler) else {}
        steps = tqdm(scheduler.timesteps, disable=not progress, desc="denoising", unit="step")
        for t, unet_t in zip(steps, unet_timesteps, strict=True):
            model_input = torch.cat([latents] * 2) if do_guidance else latents
            model_input = scheduler.scale_model_input(model_input, t)
            noise = clock.timed(
                self.unet,
                sample=model_input.to(self._sample_dtype),
                timestep=unet_t,
                encoder_hidden_states=embeds,
            )["out_sample"].to(latents.dtype)
            if do_guidance:
                uncond, text = noise.chunk(2)
                noise = torch.add(uncond, text - uncond, alpha=guidance_scale)  # uncond + g * (text - uncond)
            latents = scheduler.step(noise, t, latents, **step_kwargs).prev_sample
        return latents

    # ------------------------------------------------------------------ steps

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
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value <= 0 or value % 8:
                suggestion = max(8, round(value / 8) * 8) if isinstance(value, int) else 512
                raise ValueError(f"{name}: must be a positive multiple of 8, got {value!r}; try {suggestion}")
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt: must be at least 1, got {num_images_per_prompt}")
        if steps < 1:
            raise ValueError(f"num_inference_steps: must be at least 1, got {steps}")
        if output_type not in ("pil", "pt", "np"):
            raise ValueError(f"output_type: expected 'pil', 'pt' or 'np', got {output_type!r}")
        return len(prompts) * num_images_per_prompt

    def _encode(self, prompts: list[str], per_prompt: int, clock: _RunClock) -> torch.Tensor:
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        ids = ids.to(device=self.device, dtype=self._ids_dtype)
        hidden = clock.timed(self.text_encoder, input_ids=ids)["last_hidden_state"]
        return hidden.repeat_interleave(per_prompt, dim=0)

    def _initial_latents(
        self, shape: tuple[int, ...], generator: torch.Generator | None, latents: torch.Tensor | None
    ) -> torch.Tensor:
        if latents is None:
            noise: torch.Tensor = randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)
            return noise
        if tuple(latents.shape) != shape:
            raise ValueError(f"latents: expected shape {shape}, got {tuple(latents.shape)}")
        return latents.to(device=self.device, dtype=torch.float32)

    def _step_generator(self, generator: torch.Generator | None) -> torch.Generator | None:
        if generator is None or generator.device == self.device:
            return generator
        return torch.Generator(self.device).manual_seed(generator.initial_seed())

    def _unet_timesteps(self, timesteps: torch.Tensor, batch: int) -> torch.Tensor:
        """The UNet's ``timestep`` input for every step: row i is step i's, in the spec's dtype."""
        spec = self._timestep_spec
        assert spec.dtype is not None
        values = timesteps.to(device=self.device, dtype=spec.dtype)
        if spec.dims is not None and len(spec.dims) == 0:
            return values
        # Rank 1: the full batch, as the declared batch symbol says (ORT would also broadcast (1,)).
        return values.reshape(-1, 1).repeat(1, batch)


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


def _vae_scaling_factor(root: Path) -> float:
    for candidate in (root / "vae_decoder" / "config.json", root / "vae" / "config.json"):
        if candidate.is_file():
            config = json.loads(candidate.read_text())
            if "scaling_factor" in config:
                return float(config["scaling_factor"])
    return DEFAULT_VAE_SCALING_FACTOR


def _negatives(negative_prompt: str | Sequence[str] | None, count: int) -> list[str]:
    if negative_prompt is None:
        return [""] * count
    if isinstance(negative_prompt, str):
        return [negative_prompt] * count
    return list(negative_prompt)


def _takes_generator(scheduler: Scheduler) -> bool:
    return "generator" in inspect.signature(scheduler.step).parameters


def _convert(image: torch.Tensor, output_type: str) -> Any:
    if output_type == "pt":
        return image
    array = image.numpy()
    if output_type == "np":
        return array
    return [Image.fromarray((a * 255).round().astype("uint8")) for a in array]
