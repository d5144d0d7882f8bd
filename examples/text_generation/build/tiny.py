"""Tiny random-weight decoders with their own tokenizer, built fully offline.

Each is what ``transformers``' ``save_pretrained`` writes for a causal language model
(``config.json``, ``generation_config.json``, ``model.safetensors``) plus a tokenizer the folder
owns (``tokenizer.json``, ``tokenizer_config.json``), loadable offline with
``AutoModelForCausalLM.from_pretrained(dir)`` and ``AutoTokenizer.from_pretrained(dir)``.
Their text is babble: the weights are random.

Kinds (see :data:`TINY_SHAPES`):

* ``"llama"``: 2 layers, hidden 64, 4 heads over 2 KV heads, vocabulary 512, context 256. Small
  enough to export in seconds and decode a token in tens of microseconds.
* ``"llama-small"``: 8 layers, hidden 256, MLP 768, 8 heads over 4 KV heads, context 1024: for timing, where
  the tiny model's per-token cost is mostly overhead.
* ``"gpt2"``: 2 layers, hidden 32, vocabulary 320, context 128: the architecture optimum's
  ``text-generation-with-past`` export is usually seen with (it takes ``position_ids``).

The tokenizer is a byte-level BPE (GPT-2's byte-to-character map) over the 256 bytes, so any
text tokenizes, plus merges of lowercase letters, generated in a fixed order until the vocabulary
is as large as the model's: every id the model can emit decodes to something. It prepends
``<s>``. Special tokens: ``<pad>`` = 0, ``<s>`` = 1, ``</s>`` = 2, ``<unk>`` = 3.

Every builder leaves the global torch RNG state as it was; the same seed gives the same weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = ["PAD_ID", "TINY_KINDS", "TINY_SHAPES", "DecoderShape", "TinyKind", "build_tiny_decoder", "main"]

TinyKind = Literal["llama", "llama-small", "gpt2"]
TINY_KINDS: Final[tuple[TinyKind, ...]] = ("llama", "llama-small", "gpt2")

SPECIAL_TOKENS: Final = ("<pad>", "<s>", "</s>", "<unk>")
PAD_ID: Final = 0
BOS_ID: Final = 1
EOS_ID: Final = 2

# The merges' alphabet, most frequent English letters first, so the first merges are the likeliest.
_LETTERS: Final = "etaoinshrdlcumwfgypbvkjxqz"
# GPT-2's byte-level pre-tokenizer marks a leading space with this character.
_SPACE_MARK: Final = "\u0120"


@dataclass(frozen=True)
class DecoderShape:
    """The sizes of a tiny decoder.

    Attributes:
        architecture: ``"llama"`` (``LlamaForCausalLM``) or ``"gpt2"`` (``GPT2LMHeadModel``).
        vocab_size: Vocabulary size of the model and of its tokenizer.
        hidden_size: Width of the residual stream.
        intermediate_size: Width of the MLP (Llama only; GPT-2 uses four times the hidden size).
        num_layers: Number of decoder layers.
        num_heads: Number of attention (query) heads.
        num_kv_heads: Number of key/value heads (Llama's grouped-query attention; GPT-2 has one per head).
        context_length: Longest sequence the position embeddings cover.
        initializer_std: Standard deviation of the random weights.
    """

    architecture: Literal["llama", "gpt2"]
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    context_length: int
    initializer_std: float


# transformers' default std (0.02) makes a random decoder settle into repeating one token or a short
# cycle within a few steps, and a greedy comparison of such text says little (a wrong cache or
# wrong positions would give the same repeated token). Wider weights give varied babble.
TINY_SHAPES: Final[dict[TinyKind, DecoderShape]] = {
    "llama": DecoderShape("llama", 512, 64, 128, 2, 4, 2, 256, initializer_std=0.2),
    # Its MLP is 768 wide (Llama's 8/3 of hidden, rounded up to 256), not 512: onnxruntime-genai's
    # builder takes any linear layer with vocabulary-many outputs for the LM head.
    "llama-small": DecoderShape("llama", 512, 256, 768, 8, 8, 4, 1024, initializer_std=0.2),
    "gpt2": DecoderShape("gpt2", 320, 32, 128, 2, 2, 2, 128, initializer_std=0.5),
}


def build_tiny_decoder(output_dir: str | Path, *, kind: TinyKind = "llama", seed: int = 0) -> Path:
    """Build a tiny random-weight causal language model and its tokenizer, fully offline.

    Args:
        output_dir: Where to save the model; created if missing, must be empty if present.
        kind: ``"llama"``, ``"llama-small"`` or ``"gpt2"`` (see :data:`TINY_SHAPES`).
        seed: Seed for the random weights.

    Returns:
        ``output_dir`` as a ``Path``, loadable with ``AutoModelForCausalLM`` and ``AutoTokenizer``.

    Raises:
        FileExistsError: ``output_dir`` exists and is not empty.
        ValueError: ``kind`` is not one of :data:`TINY_KINDS`.
    """
    if kind not in TINY_SHAPES:
        raise ValueError(f"kind: expected one of {', '.join(TINY_KINDS)}, got {kind!r}")
    target = Path(output_dir)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"output folder {target} already exists and is not empty; remove it or pick a new path")
    shape = TINY_SHAPES[kind]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _model(shape)
    model.eval()
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    byte_level_tokenizer(shape.vocab_size, shape.context_length).save_pretrained(target)
    _name_tokenizer_class_for_transformers_4(target / "tokenizer_config.json")
    return target


def byte_level_tokenizer(vocab_size: int, model_max_length: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of exactly ``vocab_size`` entries (see the module docstring).

    Args:
        vocab_size: Number of entries; at least the 4 special tokens plus the 256 bytes.
        model_max_length: The longest input the model takes, recorded in the tokenizer's config.

    Returns:
        A ``PreTrainedTokenizerFast`` with ``<pad>``, ``<s>``, ``</s>`` and ``<unk>`` set.

    Raises:
        ValueError: ``vocab_size`` is too small for the special tokens and the bytes.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors  # noqa: PLC0415
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415

    byte_chars = sorted(pre_tokenizers.ByteLevel.alphabet(), key=ord)
    smallest = len(SPECIAL_TOKENS) + len(byte_chars)
    if vocab_size < smallest:
        raise ValueError(f"vocab_size: expected at least {smallest} (4 special tokens and 256 bytes), got {vocab_size}")
    vocab = {token: index for index, token in enumerate((*SPECIAL_TOKENS, *byte_chars))}
    merges: list[tuple[str, str]] = []
    for left, right in _letter_merges():
        if len(vocab) == vocab_size:
            break
        vocab[left + right] = len(vocab)
        merges.append((left, right))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    bos = SPECIAL_TOKENS[BOS_ID]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, BOS_ID)]
    )
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        pad_token=SPECIAL_TOKENS[PAD_ID],
        bos_token=bos,
        eos_token=SPECIAL_TOKENS[EOS_ID],
        unk_token=SPECIAL_TOKENS[3],
        model_max_length=model_max_length,
    )


def _name_tokenizer_class_for_transformers_4(path: Path) -> None:
    # transformers 5 records its fast-tokenizer class as "TokenizersBackend", a name 4.x does not
    # know; optimum's exporter (which needs transformers < 4.58) then silently leaves the tokenizer
    # out of its export. Both read "PreTrainedTokenizerFast" as the same tokenizer.json-backed class.
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _letter_merges() -> Iterator[tuple[str, str]]:
    # Breadth first over letter strings, each with and without the leading-space mark: a token is
    # its longest proper prefix (already in the vocabulary, being shorter) merged with one letter.
    stems = [""]
    while True:
        longer = []
        for stem in stems:
            for letter in _LETTERS:
                if stem:
                    yield stem, letter
                yield _SPACE_MARK + stem, letter
                longer.append(stem + letter)
        stems = longer


def _model(shape: DecoderShape) -> Any:
    # transformers is imported here: it takes seconds, which a caller that only reads the shapes
    # table should not pay for.
    if shape.architecture == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM  # noqa: PLC0415

        return LlamaForCausalLM(
            LlamaConfig(
                vocab_size=shape.vocab_size,
                hidden_size=shape.hidden_size,
                intermediate_size=shape.intermediate_size,
                num_hidden_layers=shape.num_layers,
                num_attention_heads=shape.num_heads,
                num_key_value_heads=shape.num_kv_heads,
                max_position_embeddings=shape.context_length,
                initializer_range=shape.initializer_std,
                pad_token_id=PAD_ID,
                bos_token_id=BOS_ID,
                eos_token_id=EOS_ID,
            )
        )
    from transformers import GPT2Config, GPT2LMHeadModel  # noqa: PLC0415

    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=shape.vocab_size,
            n_embd=shape.hidden_size,
            n_layer=shape.num_layers,
            n_head=shape.num_heads,
            n_positions=shape.context_length,
            initializer_range=shape.initializer_std,
            pad_token_id=PAD_ID,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line: build a tiny decoder into a folder.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The process exit status: 0 on success, 1 when the folder is not empty.
    """
    parser = argparse.ArgumentParser(
        prog="python -m examples.text_generation.build.tiny",
        description="Build a tiny random-weight decoder (transformers folder with its tokenizer), offline.",
    )
    parser.add_argument("dst", type=Path, help="output folder, missing or empty")
    parser.add_argument("--kind", choices=TINY_KINDS, default="llama", help="which decoder (default: llama)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights (default: 0)")
    args = parser.parse_args(argv)
    try:
        print(build_tiny_decoder(args.dst, kind=args.kind, seed=args.seed))
    except FileExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
