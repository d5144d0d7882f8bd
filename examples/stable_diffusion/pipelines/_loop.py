"""The one denoising loop every pipeline runs, and the clock that tells model time from overhead.

No numpy and no host transfer happen inside :meth:`DenoisingLoop.run` (a test proves it for every
pipeline and scheduler): latents, timesteps, conditions and noise predictions stay torch tensors
on the session's device from the first step to the last.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

import ortbind

from ._schedulers import Scheduler
from ._specs import input_dtype

__all__ = ["DenoisingLoop", "Progress", "RunClock", "StepCallback"]

StepCallback = Callable[[Any, int, torch.Tensor, dict[str, torch.Tensor]], "dict[str, torch.Tensor] | None"]
"""``callback_on_step_end(pipe, step, timestep, {"latents": latents})``, as in diffusers.

Called after each denoising step with the step's index and timestep (device tensors, no host
transfer made for them); may return a dict whose ``"latents"`` replaces the latents. Raising from
it stops the loop (how a caller cancels a run).
"""

Progress = bool | Callable[[int, int], None]
"""``True``: a tqdm bar; ``False``: nothing; a callable: ``progress(steps_done, steps_total)`` per step."""

# Bound UNet calls a loop keeps (one per input-shape signature; each may own a CUDA graph).
_MAX_BOUND_UNETS = 8


@dataclass
class RunClock:
    """Adds up time spent inside ORT runs, to tell pipeline overhead from model time."""

    seconds: float = 0.0

    def timed(self, session: ortbind.TorchSession, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        """``session.run(feeds)``, timed."""
        start = time.perf_counter()
        out = session.run(feeds)
        self.seconds += time.perf_counter() - start
        return out

    def timed_bound(self, bound: ortbind.BoundCall) -> dict[str, torch.Tensor]:
        """``bound.run()``, timed."""
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


class DenoisingLoop:
    """The denoising loop over one UNet session, with the bound UNet calls it keeps between runs.

    Args:
        unet: Session of ``unet/model.onnx`` (``sample``, ``timestep``, conditions -> ``out_sample``).
    """

    def __init__(self, unet: ortbind.TorchSession) -> None:
        self.unet = unet
        self.device = unet.device
        self.bind = True
        """Run on a :class:`ortbind.BoundCall` (fixed buffers; the fast path, and the one CUDA
        graphs need); ``False`` calls the UNet session afresh every step."""
        self._sample_dtype = input_dtype(unet, "sample")
        self._timestep_spec = unet.spec.input("timestep")
        self._bound: dict[tuple[Any, ...], _BoundUNet] = {}

    @property
    def bound_calls(self) -> list[ortbind.BoundCall]:
        """The bound UNet calls kept, oldest first (one per input-shape signature)."""
        return [bound.call for bound in self._bound.values()]

    @property
    def timestep_dtype(self) -> torch.dtype:
        """The dtype of the UNet's ``timestep`` input."""
        assert self._timestep_spec.dtype is not None
        return self._timestep_spec.dtype

    def run(
        self,
        *,
        pipe: Any,
        scheduler: Scheduler,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        begin_index: int,
        conditions: dict[str, torch.Tensor],
        guidance_scale: float,
        guidance_rescale: float,
        generator: torch.Generator | None,
        extra_channels: torch.Tensor | None,
        progress: Progress,
        callback_on_step_end: StepCallback | None,
        clock: RunClock,
    ) -> torch.Tensor:
        """Denoise ``latents`` over ``timesteps``; see :meth:`OrtPipelineBase._denoise` for the arguments."""
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
            noise = self._predict_noise(model_input, unet_t, conditions, latents.dtype, clock)
            if do_guidance:
                uncond, text = noise.chunk(2)
                noise = torch.add(uncond, text - uncond, alpha=guidance_scale)  # uncond + g * (text - uncond)
                if guidance_rescale > 0.0:
                    noise = _rescale_noise_cfg(noise, text, guidance_rescale)
            latents = scheduler.step(noise, t, latents, **step_kwargs).prev_sample
            if callback_on_step_end is not None:
                replaced = callback_on_step_end(pipe, i, t, {"latents": latents})
                if replaced is not None:
                    latents = replaced.get("latents", latents)
            if report is not None:
                report(i + 1, len(timesteps))
        return latents

    def _predict_noise(
        self,
        model_input: torch.Tensor,
        timestep: torch.Tensor,
        conditions: dict[str, torch.Tensor],
        dtype: torch.dtype,
        clock: RunClock,
    ) -> torch.Tensor:
        """One UNet run: the noise prediction, in ``dtype``."""
        if not self.bind:
            feeds = {"sample": model_input.to(self._sample_dtype), "timestep": timestep, **conditions}
            return clock.timed(self.unet, **feeds)["out_sample"].to(dtype)
        bound = self._bound_unet(model_input, timestep, conditions)
        bound.sample.copy_(model_input)
        bound.timestep.copy_(timestep)
        # The bound output is overwritten by the next step, and schedulers keep past outputs: a copy.
        return clock.timed_bound(bound.call)["out_sample"].to(dtype, copy=True)

    def _bound_unet(
        self, model_input: torch.Tensor, timestep: torch.Tensor, conditions: dict[str, torch.Tensor]
    ) -> _BoundUNet:
        """The UNet bound for these input shapes, with this call's conditions copied into its buffers.

        Kept between calls, so a CUDA graph is captured once per shape and replayed after; the
        conditions (text embeddings, SDXL's added ones) are copied in once per call, the sample
        and timestep once per step.
        """
        key = (tuple(model_input.shape), tuple(timestep.shape), *((n, tuple(c.shape)) for n, c in conditions.items()))
        bound = self._bound.get(key)
        if bound is None:
            if len(self._bound) >= _MAX_BOUND_UNETS:
                self._bound.pop(next(iter(self._bound)))
            sample = torch.empty(model_input.shape, dtype=self._sample_dtype, device=self.device)
            step = torch.empty(timestep.shape, dtype=timestep.dtype, device=self.device)
            fixed = {n: torch.empty(c.shape, dtype=c.dtype, device=self.device) for n, c in conditions.items()}
            call = self.unet.bind({"sample": sample, "timestep": step, **fixed}, ["out_sample"])
            bound = self._bound[key] = _BoundUNet(call, sample, step, fixed)
        for name, value in conditions.items():
            bound.conditions[name].copy_(value)
        return bound

    def _unet_timesteps(self, timesteps: torch.Tensor, batch: int) -> torch.Tensor:
        """The UNet's ``timestep`` input for every step: row i is step i's, in the spec's dtype."""
        values = timesteps.to(device=self.device, dtype=self.timestep_dtype)
        dims = self._timestep_spec.dims
        if dims is not None and len(dims) == 0:
            return values
        # Rank 1: the full batch, as the declared batch symbol says (ORT would also broadcast (1,)).
        return values.reshape(-1, 1).repeat(1, batch)


def _takes_generator(scheduler: Scheduler) -> bool:
    return "generator" in inspect.signature(scheduler.step).parameters


def _rescale_noise_cfg(noise_cfg: torch.Tensor, noise_text: torch.Tensor, guidance_rescale: float) -> torch.Tensor:
    """diffusers' ``rescale_noise_cfg`` (section 3.4 of arXiv:2305.08891)."""
    dims = list(range(1, noise_text.ndim))
    rescaled = noise_cfg * (noise_text.std(dim=dims, keepdim=True) / noise_cfg.std(dim=dims, keepdim=True))
    return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg
