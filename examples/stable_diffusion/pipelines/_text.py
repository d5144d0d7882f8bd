"""Prompts to embeddings: CLIP tokenization and text-encoder runs, negatives paired with prompts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

import ortbind

from ._loop import RunClock

__all__ = ["encode_clip", "negative_list", "penultimate_output", "prompt_list"]


def prompt_list(prompt: str | Sequence[str]) -> list[str]:
    """One prompt or several, as a list."""
    return [prompt] if isinstance(prompt, str) else list(prompt)


def negative_list(negative_prompt: str | Sequence[str] | None, count: int) -> list[str]:
    """The negative prompt for each of ``count`` prompts: none is the empty prompt, one is repeated."""
    if negative_prompt is None:
        return [""] * count
    if isinstance(negative_prompt, str):
        return [negative_prompt] * count
    return list(negative_prompt)


def encode_clip(
    session: ortbind.TorchSession, tokenizer: Any, texts: list[str], ids_dtype: torch.dtype, clock: RunClock
) -> dict[str, torch.Tensor]:
    """Tokenize ``texts`` padded to the tokenizer's length and run one text encoder on them, all in one run."""
    ids = tokenizer(
        texts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return clock.timed(session, input_ids=ids.to(device=session.device, dtype=ids_dtype))


def penultimate_output(session: ortbind.TorchSession, out: dict[str, torch.Tensor]) -> str:
    """The output name of the second-to-last hidden state, which SDXL conditions on.

    Raises:
        ValueError: The encoder does not output its hidden states.
    """
    layers = sorted(int(name.rsplit(".", 1)[1]) for name in out if name.startswith("hidden_states."))
    if len(layers) < 2:
        raise ValueError(
            f"{session.path}: expected outputs hidden_states.0 ... hidden_states.N (SDXL conditions on the "
            f"penultimate one), found {', '.join(out)}; export it with output_hidden_states"
        )
    return f"hidden_states.{layers[-2]}"
