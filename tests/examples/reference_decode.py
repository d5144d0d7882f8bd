"""Reference greedy decode loops: plain ``onnxruntime.InferenceSession`` with numpy, transformers, onnxruntime-genai.

What each layout needs of a loop (read from the folder's description, ``DecoderFolder``):

* **Prompt padding.** Models that take ``position_ids`` (optimum, torch) take a left-padded batch:
  the mask is 0 on padding and positions count real tokens only (``cumsum(mask) - 1``; padding
  positions are masked out, so their value does not matter: transformers gives them 0, optimum's
  ``ORTModelForCausalLM`` 1). Models with ``GroupQueryAttention`` (genai) take no positions: the
  attention reads each row's length as the mask's row sum and its tokens as starting at
  position 0, so rows are packed from the start (right padding), and the first step's logits of a
  row are at its last real token, not at the batch's last position. onnxruntime-genai's own
  generator reads a batch the same way: its prompt mask is 1 up to each row's last non-pad token.
* **Cache.** Concatenated (optimum, torch, genai with ``InferenceSession.run``): the first step's
  past has length 0, each step's present is one longer and is the next step's past. Shared (genai's
  ``past_present_share_buffer``): one buffer per layer's key and value, [batch, kv_heads,
  max_length, head_dim], bound as both past and present from the first step on; the model writes
  each step's keys/values at each row's own length (the mask's row sum minus one).
* **Each step** feeds the chosen token of every row ([batch, 1]); the mask grows by a column of
  ones ([batch, prompt + step]); positions (where taken) are the previous ones plus one.
* **End of sequence.** As transformers' ``generate``: a row that chose an end token gets the pad
  token from then on; the loop stops when every row has ended or after ``max_new_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from examples.text_generation.folder import DecoderFolder


@dataclass(frozen=True)
class Greedy:
    """A greedy decode's result.

    Attributes:
        tokens: [batch, steps] the chosen tokens (the pad token after a row's end).
        logits: [steps, batch, vocab] float32: the logits each step's tokens were chosen from.
    """

    tokens: np.ndarray
    logits: np.ndarray


def pack_rows_from_start(
    input_ids: np.ndarray, attention_mask: np.ndarray, pad_token_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Turn a left-padded batch into one whose rows start at position 0 (right padding)."""
    lengths = attention_mask.sum(axis=1)
    ids = np.full_like(input_ids, pad_token_id)
    mask = np.zeros_like(attention_mask)
    width = input_ids.shape[1]
    for row, length in enumerate(lengths):
        ids[row, :length] = input_ids[row, width - length :]
        mask[row, :length] = 1
    return ids, mask


def onnx_greedy(
    folder: DecoderFolder,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    max_new_tokens: int,
    *,
    shared_buffer: bool = False,
    eos_token_ids: tuple[int, ...] | None = None,
    padding_position: int = 0,
    prompt_padding: str | None = None,
) -> Greedy:
    """Greedy decoding with plain ONNX Runtime and numpy, the cache held as numpy arrays or ``OrtValue``s.

    Args:
        folder: The decoder folder.
        input_ids: [batch, prompt] int64, left-padded (as the folder's tokenizer pads).
        attention_mask: [batch, prompt], 0 on padding.
        max_new_tokens: Most tokens to generate per row.
        shared_buffer: Bind one buffer of ``folder.max_length`` positions per cache tensor as both
            past and present (genai's ``past_present_share_buffer``), through an ``IOBinding``;
            otherwise feed each step's presents as the next step's past with ``session.run``.
        eos_token_ids: End tokens; the folder's when ``None``.
        padding_position: The position id given to padding (models that take positions).
        prompt_padding: ``"left"`` or ``"right"``; the folder's ``prompt_padding`` when ``None``.

    Returns:
        The tokens and the logits they were chosen from.
    """
    session = ort.InferenceSession(str(folder.model_file), providers=["CPUExecutionProvider"])
    eos = folder.eos_token_ids if eos_token_ids is None else eos_token_ids
    batch, width = input_ids.shape
    rows = np.arange(batch)
    if (prompt_padding or folder.prompt_padding) == "right":
        ids, mask = pack_rows_from_start(input_ids, attention_mask, folder.pad_token_id)
        # Each row's next token is chosen from the logits at its own last real token.
        read_at = attention_mask.sum(axis=1) - 1
    else:
        ids, mask = input_ids, attention_mask
        read_at = np.full(batch, width - 1)
    positions = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, padding_position) if folder.position_ids else None

    def cache_shape(length: int) -> tuple[int, int, int, int]:
        return (batch, folder.num_kv_heads, length, folder.head_dim)

    kv_dtype = folder.kv_type.numpy
    past: dict[str, np.ndarray] = {name: np.zeros(cache_shape(0), kv_dtype) for name in folder.past_names}
    buffers: list[ort.OrtValue] = []
    if shared_buffer:
        assert folder.max_length is not None
        buffers = [
            ort.OrtValue.ortvalue_from_numpy(np.zeros(cache_shape(folder.max_length), kv_dtype))
            for _ in folder.past_names
        ]

    unfinished = np.ones(batch, dtype=bool)
    tokens: list[np.ndarray] = []
    chosen_logits: list[np.ndarray] = []
    for _ in range(max_new_tokens):
        feeds = {
            folder.input_ids: ids.astype(folder.input_types[folder.input_ids].numpy),
            folder.attention_mask: mask.astype(folder.input_types[folder.attention_mask].numpy),
        }
        if folder.position_ids is not None:
            assert positions is not None
            feeds[folder.position_ids] = positions.astype(folder.input_types[folder.position_ids].numpy)
        if shared_buffer:
            binding = session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            binding.bind_output(folder.logits)
            for past_name, present_name, buffer in zip(folder.past_names, folder.present_names, buffers, strict=True):
                binding.bind_ortvalue_input(past_name, buffer)
                binding.bind_ortvalue_output(present_name, buffer)
            session.run_with_iobinding(binding)
            logits = binding.get_outputs()[0].numpy()
        else:
            results = session.run([folder.logits, *folder.present_names], {**feeds, **past})
            logits = results[0]
            past = dict(zip(folder.past_names, results[1:], strict=True))
        step_logits = logits[rows, read_at]
        chosen = np.where(unfinished, step_logits.argmax(axis=-1), folder.pad_token_id)
        chosen_logits.append(step_logits)
        tokens.append(chosen)
        unfinished &= ~np.isin(chosen, eos)
        if not unfinished.any():
            break
        ids = chosen[:, None]
        mask = np.concatenate([mask, np.ones((batch, 1), dtype=mask.dtype)], axis=1)
        if positions is not None:
            positions = positions[:, -1:] + 1
        read_at = np.zeros(batch, dtype=np.int64)
    return Greedy(np.stack(tokens, axis=1), np.stack(chosen_logits))


def transformers_greedy(
    source: Path,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    max_new_tokens: int,
    *,
    eos_token_ids: tuple[int, ...] | None = None,
) -> Greedy:
    """transformers' ``generate(do_sample=False)`` on the torch folder an export was made from."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, local_files_only=True)
    model.eval()  # type: ignore[no-untyped-call]
    extra = {} if eos_token_ids is None else {"eos_token_id": list(eos_token_ids)}
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.from_numpy(input_ids),
            attention_mask=torch.from_numpy(attention_mask),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            return_dict_in_generate=True,
            output_logits=True,
            **extra,
        )
    tokens = out.sequences[:, input_ids.shape[1] :].numpy()
    return Greedy(tokens, np.stack([step.float().numpy() for step in out.logits]))


def genai_greedy(
    folder: DecoderFolder, input_ids: np.ndarray, attention_mask: np.ndarray, max_new_tokens: int
) -> np.ndarray:
    """onnxruntime-genai's own ``Generator`` (its C++ loop, shared buffer), greedy; returns [batch, steps] tokens.

    It reads a batch's padding as trailing pad tokens, so the left-padded prompts are packed from
    the start first.
    """
    import onnxruntime_genai as og

    ids, _ = pack_rows_from_start(input_ids, attention_mask, folder.pad_token_id)
    model = og.Model(str(folder.path))
    params = og.GeneratorParams(model)
    batch, width = ids.shape
    params.set_search_options(do_sample=False, max_length=width + max_new_tokens, batch_size=batch)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    while not generator.is_done():
        generator.generate_next_token()
    return np.array([np.asarray(generator.get_sequence(row))[width:] for row in range(batch)], dtype=np.int64)
