"""The generation defaults, one place for the command line, the web page and the server.

The same prompt, steps and seed give the same picture from ``txt2img``, ``app`` and ``serve``
because all three read their defaults, and draw their seeds, from here.
"""

from __future__ import annotations

import torch

__all__ = [
    "GUIDANCE",
    "PROMPT",
    "REAL_SIZE",
    "SCHEDULER",
    "SEED",
    "STEPS",
    "TINY_SIZE",
    "default_size",
    "seeded_generator",
]

PROMPT = "an astronaut riding a horse on the moon"
STEPS = 20
GUIDANCE = 7.5
SCHEDULER = "pndm"
SEED = 0
TINY_SIZE = 64
"""Image side on the built-in tiny model: small enough for seconds on a CPU."""
REAL_SIZE = 512
"""Image side on a given model: what SD 1.x was trained at."""


def default_size(tiny: bool) -> int:
    """The default image height and width: :data:`TINY_SIZE` on the tiny model, else :data:`REAL_SIZE`."""
    return TINY_SIZE if tiny else REAL_SIZE


def seeded_generator(seed: int) -> torch.Generator:
    """The generator a request's seed stands for: a CPU one, so a seed draws the same latents on any device."""
    return torch.Generator("cpu").manual_seed(seed)
