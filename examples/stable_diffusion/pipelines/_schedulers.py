"""The schedulers the pipelines run: diffusers' own torch schedulers, chosen by name or by the model's config."""

from __future__ import annotations

from typing import Any, Protocol, cast

import diffusers
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

__all__ = ["SCHEDULERS", "Scheduler", "draws_step_noise", "load_scheduler", "scheduler_from_config"]


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

# Classes whose steps are a function of the model output alone (as the pipelines call them: DDIM
# with its default eta of 0). Every other class may draw step noise from the call's generator.
_NOISE_FREE = (
    PNDMScheduler,
    DDIMScheduler,
    EulerDiscreteScheduler,
    DPMSolverMultistepScheduler,
    UniPCMultistepScheduler,
)


def load_scheduler(name: str | None, config: dict[str, Any]) -> Scheduler:
    """A diffusers scheduler configured from the model's ``scheduler_config.json``.

    Args:
        name: One of :data:`SCHEDULERS`, or None for the class the config names.
        config: The parsed ``scheduler_config.json``.

    Raises:
        ValueError: ``name`` is unknown, or the config names a class diffusers does not have.
    """
    if name is None:
        return cast(Scheduler, scheduler_from_config(config))
    try:
        cls, overrides = SCHEDULERS[name]
    except KeyError:
        raise ValueError(f"scheduler {name!r}: unknown; choose one of {', '.join(SCHEDULERS)}") from None
    return cast(Scheduler, cls.from_config({**config, **overrides}))


def scheduler_from_config(config: dict[str, Any]) -> Any:
    """The diffusers scheduler class ``scheduler_config.json`` names, configured from it.

    Raises:
        ValueError: The config names no class, or one diffusers does not have.
    """
    name = config.get("_class_name")
    cls = getattr(diffusers, str(name), None) if name else None
    if cls is None or not hasattr(cls, "from_config"):
        raise ValueError(
            f"scheduler_config.json: names scheduler class {name!r}, which diffusers "
            f"{diffusers.__version__} does not have; pass scheduler=NAME to choose one"
        )
    return cls.from_config(config)


def draws_step_noise(scheduler: Scheduler) -> bool:
    """Whether ``scheduler``'s steps may draw noise from the call's generator (ancestral and SDE samplers).

    Unknown classes count as drawing: a caller that shares one generator between requests then
    keeps them apart, which costs speed, never a wrong picture.
    """
    if not isinstance(scheduler, _NOISE_FREE):
        return True
    algorithm = str(getattr(scheduler.config, "algorithm_type", ""))
    return "sde" in algorithm
