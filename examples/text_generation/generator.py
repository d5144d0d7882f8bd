"""TextGenerator: a decoder's generation loop on ortbind, the KV cache on the device the whole time.

One loop serves every layout :mod:`.folder` reads:

1. Tokenize the prompts (left-padded, with an attention mask); a model with
   ``GroupQueryAttention`` gets its rows packed from the start instead (see
   :attr:`~.folder.DecoderFolder.prompt_padding`).
2. Allocate the cache: empty tensors that each step's presents replace (optimum and torch.onnx
   exports concatenate inside the model), or, for a model that writes its cache in place
   (onnxruntime-genai's shared past/present buffer), one buffer per key and value of as many
   positions as the generation needs (at most the model's ``max_length``), bound as both past and
   present with ``share=``.
3. Prefill: one run over the prompts.
4. Each step: pick the next tokens from the last logits with transformers' logits processors and
   warpers (repetition penalty, temperature, top-k, top-p) on device tensors, argmax or a seeded
   draw; write them into the bound ids tensor; grow the mask; run again. With ``bound=True`` (the
   default) the step is a :meth:`ortbind.BoundCall.rebind` of what changed and a
   :meth:`~ortbind.BoundCall.run`; with ``bound=False`` a plain :meth:`ortbind.TorchSession.run`.
5. Stop when every row has produced an end token, or after ``max_new_tokens``.

Only the new token ids (one per row) reach the host each step, for streaming and stopping: the
cache and the logits stay on the device.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

import ortbind

from .folder import DecoderFolder, read_decoder_folder

__all__ = ["Generated", "GenerationConfig", "TextGenerator", "cpu_session_options"]


@dataclass(frozen=True)
class GenerationConfig:
    """How tokens are chosen; the defaults live here, for the library, the command line and tests.

    Attributes:
        max_new_tokens: Most tokens to generate per prompt.
        do_sample: Draw from the distribution (``False``: greedy, the most likely token).
        temperature: Divides the logits before sampling.
        top_k: Keep only the ``top_k`` most likely tokens (0: all).
        top_p: Keep the smallest set of tokens whose probability reaches ``top_p`` (1.0: all).
        repetition_penalty: Penalise tokens already in the sequence (1.0: none); greedy too.
        seed: Seeds the draws, so a sampled generation is reproducible.
    """

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be a positive int, got {self.max_new_tokens!r}")
        if not self.temperature > 0:
            problems.append(f"temperature must be positive, got {self.temperature!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            problems.append(f"top_k must be a non-negative int, got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not self.repetition_penalty > 0:
            problems.append(f"repetition_penalty must be positive, got {self.repetition_penalty!r}")
        if problems:
            raise ValueError("; ".join(problems))

    def processors(self) -> LogitsProcessorList:
        """transformers' processors and warpers for these settings, in ``generate``'s order."""
        processors = LogitsProcessorList()
        if self.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.do_sample:
            if self.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k:
                processors.append(TopKLogitsWarper(self.top_k))
            if self.top_p < 1.0:
                processors.append(TopPLogitsWarper(self.top_p))
        return processors


@dataclass(frozen=True)
class Generated:
    """What :meth:`TextGenerator.generate` made.

    Attributes:
        tokens: Per prompt, the new tokens, up to and including its end token.
        text: Per prompt, the new tokens decoded (special tokens skipped).
        prefill_ms: The prompt run, in milliseconds.
        ms_per_token: Wall time per generated step after the prompt (all rows at once).
        steps: Runs after the prompt run.
    """

    tokens: list[list[int]]
    text: list[str]
    prefill_ms: float
    ms_per_token: float
    steps: int


def cpu_session_options(threads: int | None = None) -> ort.SessionOptions:
    """Options for a CPU session that shares the cores with torch: no thread spinning."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
    return options


class TextGenerator:
    """Generates text with a decoder folder on ortbind.

    Args:
        model: A decoder folder (optimum ``text-generation-with-past``, onnxruntime-genai builder,
            or ``torch.onnx`` export with its tokenizer), or its :class:`~.folder.DecoderFolder`.
        device: ``"cpu"`` or ``"cuda[:N]"``.
        bound: Run each step as a rebind and run of one bound call (the default), or as a plain
            call.
        session_options: ONNX Runtime session options; on CPU, defaults to
            :func:`cpu_session_options`.
    """

    def __init__(
        self,
        model: str | Path | DecoderFolder,
        device: str | torch.device = "cpu",
        *,
        bound: bool = True,
        session_options: ort.SessionOptions | None = None,
    ) -> None:
        self.folder = model if isinstance(model, DecoderFolder) else read_decoder_folder(model)
        self.device = torch.device(device)
        if session_options is None and self.device.type == "cpu":
            session_options = cpu_session_options()
        self.session = ortbind.TorchSession(self.folder.model_file, self.device, session_options=session_options)
        self.bound = bound

    @property
    def tokenizer(self) -> Any:
        """The folder's tokenizer."""
        return self.folder.tokenizer

    def generate(
        self,
        prompts: Sequence[str],
        config: GenerationConfig | None = None,
        *,
        on_tokens: Callable[[list[int]], None] | None = None,
    ) -> Generated:
        """Generate a continuation of each prompt.

        Args:
            prompts: The prompts, a batch.
            config: How tokens are chosen; :class:`GenerationConfig` defaults when ``None``.
            on_tokens: Called after each step with that step's new token per row (the pad token
                for rows that have ended), for streaming.

        Returns:
            The new tokens, their text and the timings.
        """
        if isinstance(prompts, str) or not prompts:
            raise ValueError(f"prompts: expected a non-empty list of strings, got {prompts!r}")
        encoded = self.tokenizer(list(prompts), return_tensors="pt", padding=True)
        return self.generate_ids(encoded["input_ids"], encoded["attention_mask"], config, on_tokens=on_tokens)

    def generate_ids(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        config: GenerationConfig | None = None,
        *,
        on_tokens: Callable[[list[int]], None] | None = None,
    ) -> Generated:
        """:meth:`generate` from token ids: ``input_ids`` and ``attention_mask`` [batch, prompt], left-padded."""
        config = config or GenerationConfig()
        folder = self.folder
        batch, width = input_ids.shape
        device = self.device
        ids = input_ids.to(device=device, dtype=torch.int64)
        mask = attention_mask.to(device=device, dtype=torch.int64)
        lengths = mask.sum(dim=1)
        steps = config.max_new_tokens
        total = width + steps
        if folder.context_length is not None and total > folder.context_length:
            raise ValueError(
                f"prompt of {width} tokens + max_new_tokens {steps} = {total}: the model's positions cover "
                f"{folder.context_length}; ask for fewer new tokens"
            )
        run = _Run(self.session, folder, batch, device, self.bound)
        history = torch.full((batch, total), folder.pad_token_id, dtype=torch.int64, device=device)
        history[:, :width] = ids
        processors = config.processors()
        generator = torch.Generator(device=device).manual_seed(config.seed) if config.do_sample else None
        eos = torch.tensor(folder.eos_token_ids or [-1], dtype=torch.int64, device=device)
        unfinished = torch.ones(batch, 1, dtype=torch.bool, device=device)
        tokens: list[list[int]] = [[] for _ in range(batch)]
        done = [False] * batch

        start = time.perf_counter()
        logits = run.prefill(ids, mask, lengths, total)  # [batch, 1, vocab]: each row's last position
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        taken = 0
        chosen = run.step_ids  # [batch, 1]: the ids the next step feeds, written here in place
        # Rows that have ended get the pad token, as transformers' generate does; one row just stops.
        stops = bool(folder.eos_token_ids) and batch > 1
        for step in range(steps):
            if processors or generator is not None:
                scores = logits[:, -1]
                if processors:
                    scores = processors(history[:, : width + step], scores)  # type: ignore[arg-type]  # a LongTensor
                if generator is None:
                    torch.argmax(scores, dim=-1, keepdim=True, out=chosen)
                else:
                    chosen.copy_(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator))
            else:
                torch.argmax(logits, dim=-1, out=chosen)  # greedy: one op from the bound logits to the ids
            if stops:
                chosen.masked_fill_(~unfinished, folder.pad_token_id)
                unfinished &= ~torch.isin(chosen, eos)
            if processors:
                history[:, width + step] = chosen[:, 0]
            new = [row[0] for row in chosen.tolist()]  # the step's one token per row: all that reaches the host
            for row, token in enumerate(new):
                if not done[row]:
                    tokens[row].append(token)
                    done[row] = token in folder.eos_token_ids
            if on_tokens is not None:
                on_tokens(new)
            if all(done) or step == steps - 1:
                break
            logits = run.step()
            taken += 1
        elapsed = time.perf_counter() - start
        text = [self.tokenizer.decode(row, skip_special_tokens=True) for row in tokens]
        return Generated(tokens, text, prefill * 1e3, elapsed * 1e3 / max(taken, 1), taken)


class _Run:
    """The model calls of one generation: the cache, the growing mask and positions, bound or plain."""

    def __init__(
        self, session: ortbind.TorchSession, folder: DecoderFolder, batch: int, device: torch.device, bound: bool
    ) -> None:
        self.session = session
        self.folder = folder
        self.batch = batch
        self.device = device
        self.use_bound = bound
        self.call: ortbind.BoundCall | None = None
        self.feeds: dict[str, torch.Tensor] = {}
        self.share: dict[str, str] | None = None
        self.stepped = False  # whether a step has fed the [batch, 1] ids and positions tensors
        # Every output, the shared presents too (written into the past buffers).
        self.names = [folder.logits, *folder.present_names]
        self.pairs = list(zip(folder.past_names, folder.present_names, strict=True))

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor, total: int) -> torch.Tensor:
        """Run the prompts; the scores [batch, vocab] to choose each row's first new token from."""
        folder, batch, device = self.folder, self.batch, self.device
        width = ids.shape[1]
        rows = torch.arange(batch, device=device)
        # The mask of every step, as one [batch, total] table of which each step binds a prefix.
        self.mask_table = torch.ones(batch, total, dtype=torch.int64, device=device)
        kv = folder.kv_type.torch
        if folder.shared_buffer:
            assert folder.max_length is not None
            if total - 1 > folder.max_length:
                raise ValueError(
                    f"prompt of {width} tokens + {total - width} new ones needs a cache of {total - 1} positions, but "
                    f"the model's shared buffer holds max_length {folder.max_length}; ask for fewer new tokens"
                )
            # GroupQueryAttention reads each row's length from the mask's row sum and takes its
            # tokens to start at position 0: pack the rows from the start.
            positions = torch.arange(width, device=device)
            packed = positions[None, :] < lengths[:, None]
            source = (positions[None, :] + (width - lengths)[:, None]).clamp(max=width - 1)
            ids = torch.where(packed, torch.gather(ids, 1, source), torch.full_like(ids, folder.pad_token_id))
            mask = packed.to(torch.int64)
            self.read_at = lengths - 1
            # As long as this generation needs (what genai's max_length search option does): the
            # attention kernel's work grows with the buffer's length, not the sequence's.
            cache_shape = (batch, folder.num_kv_heads, total, folder.head_dim)
            self.share = {present: past for pairs in zip(folder.present, folder.past) for present, past in zip(*pairs)}
        else:
            self.read_at = torch.full((batch,), width - 1, device=device)
            cache_shape = (batch, folder.num_kv_heads, 0, folder.head_dim)
        self.mask_table[:, :width] = mask
        self.mask_flat = torch.empty(batch * total, dtype=torch.int64, device=device)
        self.rows = rows
        self.width = width
        self.cache = {name: torch.zeros(cache_shape, dtype=kv, device=device) for name in folder.past_names}
        feeds = {folder.input_ids: ids.contiguous(), folder.attention_mask: mask, **self.cache}
        self.step_ids = torch.empty(batch, 1, dtype=torch.int64, device=device)
        if folder.position_ids is not None:
            # transformers' positions for left padding: count real tokens; padding gets 1.
            positions = (mask.cumsum(dim=1) - 1).masked_fill(mask == 0, 1)
            feeds[folder.position_ids] = positions
            self.step_positions = positions[:, -1:].clone()  # advanced by one before each step
        out = self._run(feeds, first=True)
        return out[folder.logits][rows, self.read_at].unsqueeze(1)

    def step(self) -> torch.Tensor:
        """Feed the tokens chosen into :attr:`step_ids`; the logits [batch, 1, vocab] for the next ones."""
        folder = self.folder
        self.width += 1
        if folder.position_ids is not None:
            self.step_positions.add_(1)
        if self.use_bound and self.stepped and self.batch == 1 and folder.shared_buffer:
            # The decoder step at its cheapest: the ids and the cache are written in place, and the
            # mask grows within its table, bound at a longer shape without making a view.
            assert self.call is not None
            self.call.resize(**{folder.attention_mask: (1, self.width)})
            return self.call.run()[folder.logits]
        feeds = {folder.attention_mask: self._mask(self.width)}
        if not self.stepped or not self.use_bound:  # a bound call keeps the ids tensor, written in place
            feeds[folder.input_ids] = self.step_ids
            if folder.position_ids is not None:
                feeds[folder.position_ids] = self.step_positions
        self.stepped = True
        if not (folder.shared_buffer and self.use_bound):  # a bound call keeps its shared buffers bound
            feeds.update(self.cache)
        return self._run(feeds, first=False)[folder.logits]

    def _mask(self, width: int) -> torch.Tensor:
        """The first ``width`` columns of the mask table, as a contiguous tensor (a view of one buffer)."""
        if self.batch == 1:
            return self.mask_table[:, :width]  # already contiguous
        view = self.mask_flat[: self.batch * width].view(self.batch, width)
        view.copy_(self.mask_table[:, :width])
        return view

    def _run(self, feeds: dict[str, torch.Tensor], *, first: bool) -> dict[str, torch.Tensor]:
        folder, names = self.folder, self.names
        if not self.use_bound:
            out = self.session.run(feeds, names, share=self.share)
        elif self.call is None or first:
            self.call = self.session.bind(feeds, names, share=self.share)
            out = self.call.run()
        else:
            self.call.rebind(feeds)
            out = self.call.run()
        if not folder.shared_buffer:
            # Concatenating exports: this step's presents are the next step's past.
            self.cache = {past: out[present] for past, present in self.pairs}
        return out
