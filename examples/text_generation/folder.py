"""Read a decoder's ONNX folder into the one description a decode loop needs.

Three layouts are read (see :mod:`.build.export` for how each is written and what it declares):

``optimum``
    optimum's ``text-generation-with-past`` export: ``model.onnx`` with ``past_key_values.{i}.key|value``
    inputs and ``present.{i}.key|value`` outputs, the cache concatenated inside the model.
``genai``
    onnxruntime-genai's model builder export: ``genai_config.json`` names the model file and its
    inputs and outputs; with ``past_present_share_buffer`` past and present are one buffer.
``torch``
    a plain ``torch.onnx.export`` of a transformers model with its cache as a pytree: inputs
    ``cache_{n}`` (or ``past_key_values_{n}``), two per layer (key, value); outputs by position,
    the logits first, then the presents in the inputs' order.

The model's inputs and outputs are read from the ONNX file's graph (``onnx.load`` without its
external weights), not by running it. Token ids come from ``generation_config.json``, then
``genai_config.json``, then ``config.json``, then the tokenizer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal

import onnx

from ortbind import ELEMENT_TYPES, ElementType

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["DecoderFolder", "FolderError", "Layout", "read_decoder_folder"]

Layout = Literal["optimum", "genai", "torch"]

MODEL_FILE: Final = "model.onnx"
GENAI_CONFIG: Final = "genai_config.json"

_OPTIMUM_PAST: Final = re.compile(r"past_key_values\.(\d+)\.(key|value)")
_OPTIMUM_PRESENT: Final = re.compile(r"present\.(\d+)\.(key|value)")
_TORCH_PAST: Final = re.compile(r"(?:cache|past_key_values)_(\d+)")
# The float types a KV cache comes in; anything else (float8, ints) is refused with a clear error.
_KV_TYPES: Final = frozenset({"FLOAT", "FLOAT16", "BFLOAT16"})
_INDEX_TYPES: Final = frozenset({"INT32", "INT64"})
_TOKENIZER_FILES: Final = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class FolderError(ValueError):
    """A folder that cannot be read as a decoder: the message names the file, what was expected and what was found."""


@dataclass(frozen=True)
class DecoderFolder:
    """A decoder folder, as a decode loop needs it.

    Attributes:
        path: The folder.
        model_file: The ONNX file inside it.
        layout: ``"optimum"``, ``"genai"`` or ``"torch"`` (see the module docstring).
        input_ids: The token-ids input: [batch, sequence] of the new tokens.
        attention_mask: The mask input: [batch, past + sequence], 1 for a real token, 0 for padding.
        position_ids: The positions input [batch, sequence], or ``None`` where the model computes
            positions itself (genai's ``GroupQueryAttention`` does, from the mask's row sums).
        logits: The logits output: [batch, sequence, vocab].
        past: Per layer, in layer order, the (key, value) input names of the cache.
        present: Per layer, in layer order, the (key, value) output names of the updated cache.
        num_layers: Number of layers (of ``past`` entries).
        num_kv_heads: Key/value heads of the cache: its dim 1.
        head_dim: Size of a head: the cache's dim 3.
        kv_type: The cache's element type (``.torch`` and ``.numpy`` give the dtypes).
        input_types: Every input's element type, by name (the ids, mask and positions are int64
            or int32; genai allows int32).
        vocab_size: Size of the logits' last dim.
        shared_buffer: Past and present are one buffer written in place (genai's
            ``past_present_share_buffer``): the cache is [batch, kv_heads, ``max_length``, head_dim]
            from the first step on, and each step's present is bound to its past.
        max_length: The shared buffer's length (genai's ``search.max_length``), else ``None``.
        context_length: The longest sequence the model's positions cover, where the folder says
            (genai's ``context_length``, the config's ``max_position_embeddings`` or ``n_positions``).
        prompt_padding: Where a batch's prompts must be padded. ``"left"`` for models that take
            an attention mask and positions of any layout. ``"right"`` for models with
            ``GroupQueryAttention``: it reads each row's length from the mask's row sum and takes a
            row's tokens to start at position 0, so rows are packed from the start (a left-padded
            prompt would be read as starting with its padding).
        eos_token_ids: Ids that end a sequence (empty if the folder names none).
        pad_token_id: The id padding positions hold.
        bos_token_id: The id a prompt starts with, if the folder names one.
        tokenizer: The folder's tokenizer (``AutoTokenizer``, offline, ``padding_side="left"``),
            its pad token set to ``pad_token_id`` when it had none.
    """

    path: Path
    model_file: Path
    layout: Layout
    input_ids: str
    attention_mask: str
    position_ids: str | None
    logits: str
    past: tuple[tuple[str, str], ...]
    present: tuple[tuple[str, str], ...]
    num_layers: int
    num_kv_heads: int
    head_dim: int
    kv_type: ElementType
    input_types: Mapping[str, ElementType]
    vocab_size: int
    shared_buffer: bool
    max_length: int | None
    context_length: int | None
    prompt_padding: Literal["left", "right"]
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    bos_token_id: int | None
    tokenizer: PreTrainedTokenizerBase = field(repr=False, compare=False)

    @property
    def past_names(self) -> tuple[str, ...]:
        """All cache input names, layer by layer, key before value."""
        return tuple(name for pair in self.past for name in pair)

    @property
    def present_names(self) -> tuple[str, ...]:
        """All cache output names, layer by layer, key before value."""
        return tuple(name for pair in self.present for name in pair)


def read_decoder_folder(path: str | Path) -> DecoderFolder:
    """Read a decoder folder (optimum, onnxruntime-genai or torch.onnx layout).

    Args:
        path: The folder: ``model.onnx`` (or the file ``genai_config.json`` names) with the
            tokenizer files beside it, and ``config.json`` / ``generation_config.json`` where
            the layout has them.

    Returns:
        The folder's description.

    Raises:
        FolderError: The folder, its model or its configs are not what a decoder folder holds;
            the message names the file, the expectation and what was found.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FolderError(f"{folder}: expected a decoder folder (model.onnx with its tokenizer), found no such folder")
    genai = _read_json(folder / GENAI_CONFIG)
    config = _read_json(folder / "config.json") or {}
    generation = _read_json(folder / "generation_config.json") or {}
    named = _genai_get(genai, "model", "decoder", "filename") if genai else None
    model_file = folder / (named if isinstance(named, str) else MODEL_FILE)
    if not model_file.is_file():
        found = ", ".join(sorted(p.name for p in folder.glob("*.onnx"))) or "no .onnx file"
        raise FolderError(
            f"{folder}: expected {model_file.name} "
            f"({'named by genai_config.json' if genai else 'an optimum, genai or torch.onnx decoder export'}), "
            f"found {found}"
        )
    try:
        graph = onnx.load(str(model_file), load_external_data=False).graph
    except Exception as error:
        raise FolderError(f"{model_file}: expected an ONNX model, could not parse it: {error}") from error
    inputs = {value.name: value for value in graph.input}
    outputs = [value for value in graph.output]

    if genai:
        layout: Layout = "genai"
        names = _genai_names(model_file, genai, inputs, outputs)
    elif any(_OPTIMUM_PAST.fullmatch(name) for name in inputs):
        layout = "optimum"
        names = _optimum_names(model_file, inputs, outputs)
    elif any(_TORCH_PAST.fullmatch(name) for name in inputs):
        layout = "torch"
        names = _torch_names(model_file, inputs, outputs)
    else:
        raise FolderError(
            f"{model_file}: expected cache inputs past_key_values.{{i}}.key|value (optimum, genai) or cache_{{n}} "
            f"(torch.onnx), found inputs {', '.join(inputs) or 'none'}; export it with "
            "python -m examples.text_generation.build.export"
        )
    input_ids, attention_mask, position_ids, logits, past, present = names
    fed = {input_ids, attention_mask, *(name for pair in past for name in pair)}
    if position_ids is not None:
        fed.add(position_ids)
    unknown = [name for name in inputs if name not in fed]
    if unknown:
        raise FolderError(
            f"{model_file}: input {unknown[0]!r} is not one a decode loop feeds (expected the token ids, the "
            f"attention mask, the position ids and the cache: {', '.join(sorted(fed))})"
        )

    input_types = {name: _element_type(model_file, value) for name, value in inputs.items()}
    for name in (input_ids, attention_mask, position_ids):
        if name is not None and input_types[name].name not in _INDEX_TYPES:
            raise FolderError(f"{model_file}: input {name!r}: expected INT64 or INT32, found {input_types[name]}")
    first_key = inputs[past[0][0]]
    kv_type = input_types[first_key.name]
    if kv_type.name not in _KV_TYPES:
        raise FolderError(
            f"{model_file}: cache input {first_key.name!r}: expected FLOAT, FLOAT16 or BFLOAT16, found {kv_type}"
        )
    for name in (n for pair in past for n in pair):
        if input_types[name] != kv_type:
            raise FolderError(
                f"{model_file}: cache input {name!r}: expected {kv_type} like {first_key.name!r}, "
                f"found {input_types[name]}"
            )
    dims = _dims(model_file, first_key, rank=4)
    num_kv_heads = _fixed_or(
        dims[1], _kv_heads_from_configs(genai, config), model_file, first_key.name, "key/value heads"
    )
    head_dim = _fixed_or(dims[3], _head_dim_from_configs(genai, config), model_file, first_key.name, "head size")
    logits_value = next(value for value in outputs if value.name == logits)
    vocab_dim = _dims(model_file, logits_value, rank=3)[2]
    vocab_size = _fixed_or(
        vocab_dim,
        _genai_int(genai, "model", "vocab_size") or config.get("vocab_size"),
        model_file,
        logits,
        "vocabulary size",
    )

    shared_buffer = _genai_get(genai, "search", "past_present_share_buffer") is True
    max_length = _genai_int(genai, "search", "max_length") if genai else None
    if shared_buffer and max_length is None:
        raise FolderError(
            f"{folder / GENAI_CONFIG}: past_present_share_buffer is set: expected search.max_length, found none"
        )
    context_length = _genai_int(genai, "model", "context_length") or _int_or_none(
        config.get("max_position_embeddings", config.get("n_positions"))
    )
    uses_gqa = any(node.op_type == "GroupQueryAttention" for node in graph.node)

    tokenizer = _load_tokenizer(folder)
    eos_token_ids = _token_ids(
        generation.get("eos_token_id"),
        _genai_get(genai, "model", "eos_token_id") if genai else None,
        config.get("eos_token_id"),
        tokenizer.eos_token_id,
    )
    bos = _token_ids(
        generation.get("bos_token_id"),
        _genai_get(genai, "model", "bos_token_id") if genai else None,
        config.get("bos_token_id"),
        tokenizer.bos_token_id,
    )
    pad = _token_ids(
        generation.get("pad_token_id"),
        _genai_get(genai, "model", "pad_token_id") if genai else None,
        config.get("pad_token_id"),
        tokenizer.pad_token_id,
    )
    # transformers' generate pads with the end-of-sequence token when a model names no pad token.
    pad_token_id = pad[0] if pad else eos_token_ids[0] if eos_token_ids else None
    if pad_token_id is None:
        raise FolderError(
            f"{folder}: expected a pad or end-of-sequence token id (generation_config.json, genai_config.json, "
            "config.json or the tokenizer), found none"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_token_id)

    return DecoderFolder(
        path=folder,
        model_file=model_file,
        layout=layout,
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits=logits,
        past=past,
        present=present,
        num_layers=len(past),
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        kv_type=kv_type,
        input_types=MappingProxyType(input_types),
        vocab_size=vocab_size,
        shared_buffer=shared_buffer,
        max_length=max_length,
        context_length=context_length,
        prompt_padding="right" if uses_gqa else "left",
        eos_token_ids=eos_token_ids,
        pad_token_id=pad_token_id,
        bos_token_id=bos[0] if bos else None,
        tokenizer=tokenizer,
    )


_Names = tuple[str, str, "str | None", str, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]


def _optimum_names(
    model_file: Path, inputs: Mapping[str, onnx.ValueInfoProto], outputs: Sequence[onnx.ValueInfoProto]
) -> _Names:
    past = _pairs_by_layer(model_file, "input", inputs, _OPTIMUM_PAST)
    present = _pairs_by_layer(model_file, "output", [value.name for value in outputs], _OPTIMUM_PRESENT)
    if len(present) != len(past):
        raise FolderError(
            f"{model_file}: expected a present.{{i}}.key|value output for each of {len(past)} layers, "
            f"found {len(present)}"
        )
    _require(model_file, "input", inputs, "input_ids", "attention_mask")
    _require(model_file, "output", [value.name for value in outputs], "logits")
    return "input_ids", "attention_mask", "position_ids" if "position_ids" in inputs else None, "logits", past, present


def _torch_names(
    model_file: Path, inputs: Mapping[str, onnx.ValueInfoProto], outputs: Sequence[onnx.ValueInfoProto]
) -> _Names:
    numbered = sorted((int(match[1]), name) for name in inputs if (match := _TORCH_PAST.fullmatch(name)))
    if [index for index, _ in numbered] != list(range(len(numbered))) or len(numbered) % 2:
        raise FolderError(
            f"{model_file}: expected cache inputs numbered 0 to 2 * layers - 1 (a key and a value per layer), "
            f"found {', '.join(name for _, name in numbered)}"
        )
    flat_past = [name for _, name in numbered]
    # torch names outputs after the nodes that make them: they are known by position only, the
    # logits first, then the cache flattened as its inputs are.
    if len(outputs) != 1 + len(flat_past):
        raise FolderError(
            f"{model_file}: expected {1 + len(flat_past)} outputs (the logits, then a present per cache input), "
            f"found {len(outputs)}"
        )
    flat_present = [value.name for value in outputs[1:]]
    _require(model_file, "input", inputs, "input_ids", "attention_mask")
    past = tuple(zip(flat_past[0::2], flat_past[1::2], strict=True))
    present = tuple(zip(flat_present[0::2], flat_present[1::2], strict=True))
    for past_name, present_name in zip(flat_past, flat_present, strict=True):
        past_dims = _dims(model_file, inputs[past_name], rank=4)
        present_dims = _dims(model_file, outputs[1 + flat_past.index(past_name)], rank=4)
        if past_dims[1] != present_dims[1] or past_dims[3] != present_dims[3]:
            raise FolderError(
                f"{model_file}: output {present_name!r} (taken as the present of {past_name!r}): expected heads and "
                f"head size {past_dims[1]}, {past_dims[3]}, found {present_dims[1]}, {present_dims[3]}"
            )
    position_ids = "position_ids" if "position_ids" in inputs else None
    return "input_ids", "attention_mask", position_ids, outputs[0].name, past, present


def _genai_names(
    model_file: Path,
    genai: Mapping[str, Any],
    inputs: Mapping[str, onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
) -> _Names:
    declared_inputs = _genai_get(genai, "model", "decoder", "inputs")
    declared_outputs = _genai_get(genai, "model", "decoder", "outputs")
    layers = _genai_int(genai, "model", "decoder", "num_hidden_layers")
    if not isinstance(declared_inputs, dict) or not isinstance(declared_outputs, dict) or layers is None:
        raise FolderError(
            f"{model_file.parent / GENAI_CONFIG}: expected model.decoder.inputs, .outputs and .num_hidden_layers, "
            "found them missing or malformed"
        )
    output_names = [value.name for value in outputs]

    def templated(
        mapping: Mapping[str, Any], key: str, where: Sequence[str] | Mapping[str, Any], kind: str
    ) -> list[str]:
        template = mapping.get(key)
        if not isinstance(template, str) or "%d" not in template:
            raise FolderError(
                f"{model_file.parent / GENAI_CONFIG}: expected model.decoder.{kind}s.{key} like 'name.%d', "
                f"found {template!r}"
            )
        names = [template % layer for layer in range(layers)]
        _require(model_file, kind, where, *names)
        return names

    past = tuple(
        zip(
            templated(declared_inputs, "past_key_names", inputs, "input"),
            templated(declared_inputs, "past_value_names", inputs, "input"),
            strict=True,
        )
    )
    present = tuple(
        zip(
            templated(declared_outputs, "present_key_names", output_names, "output"),
            templated(declared_outputs, "present_value_names", output_names, "output"),
            strict=True,
        )
    )
    input_ids = str(declared_inputs.get("input_ids", "input_ids"))
    attention_mask = str(declared_inputs.get("attention_mask", "attention_mask"))
    logits = str(declared_outputs.get("logits", "logits"))
    _require(model_file, "input", inputs, input_ids, attention_mask)
    _require(model_file, "output", output_names, logits)
    position_name = str(declared_inputs.get("position_ids", "position_ids"))
    return input_ids, attention_mask, position_name if position_name in inputs else None, logits, past, present


def _pairs_by_layer(
    model_file: Path, kind: str, names: Sequence[str] | Mapping[str, Any], pattern: re.Pattern[str]
) -> tuple[tuple[str, str], ...]:
    found: dict[int, dict[str, str]] = {}
    for name in names:
        if match := pattern.fullmatch(name):
            found.setdefault(int(match[1]), {})[match[2]] = name
    pairs = []
    for layer in range(len(found)):
        entry = found.get(layer, {})
        if set(entry) != {"key", "value"}:
            example = (
                pattern.pattern.replace(r"(\d+)", str(layer)).replace(r"(key|value)", "key|value").replace("\\", "")
            )
            raise FolderError(
                f"{model_file}: expected {kind}s {example} for layers 0 to {len(found) - 1}, "
                f"found layers {sorted(found)} with {sorted(entry) or 'nothing'} for layer {layer}"
            )
        pairs.append((entry["key"], entry["value"]))
    return tuple(pairs)


def _require(model_file: Path, kind: str, names: Sequence[str] | Mapping[str, Any], *wanted: str) -> None:
    for name in wanted:
        if name not in names:
            raise FolderError(f"{model_file}: expected an {kind} named {name!r}, found {', '.join(names) or 'none'}")


def _element_type(model_file: Path, value: onnx.ValueInfoProto) -> ElementType:
    element = ELEMENT_TYPES.get(value.type.tensor_type.elem_type)
    if element is None:
        raise FolderError(
            f"{model_file}: {value.name!r}: expected a tensor type ortbind knows, "
            f"found element type {value.type.tensor_type.elem_type}"
        )
    return element


def _dims(model_file: Path, value: onnx.ValueInfoProto, *, rank: int) -> list[int | str]:
    dims: list[int | str] = [
        dim.dim_value if dim.HasField("dim_value") else dim.dim_param for dim in value.type.tensor_type.shape.dim
    ]
    if len(dims) != rank:
        raise FolderError(f"{model_file}: {value.name!r}: expected rank {rank}, found {len(dims)} ({dims})")
    return dims


def _fixed_or(dim: int | str, fallback: Any, model_file: Path, name: str, what: str) -> int:
    # A fixed dim in the graph is the truth; a symbolic one (genai declares head size as kv_cache_dim)
    # is read from the configs instead.
    if isinstance(dim, int) and dim > 0:
        return dim
    value = _int_or_none(fallback)
    if value is None:
        raise FolderError(
            f"{model_file}: {name!r}: its {what} is symbolic ({dim!r}): expected it in genai_config.json or "
            "config.json, found none"
        )
    return value


def _kv_heads_from_configs(genai: Mapping[str, Any] | None, config: Mapping[str, Any]) -> Any:
    return _genai_int(genai, "model", "decoder", "num_key_value_heads") or config.get(
        "num_key_value_heads", config.get("num_attention_heads", config.get("n_head"))
    )


def _head_dim_from_configs(genai: Mapping[str, Any] | None, config: Mapping[str, Any]) -> Any:
    if (size := _genai_int(genai, "model", "decoder", "head_size")) is not None:
        return size
    if config.get("head_dim"):
        return config["head_dim"]
    hidden, heads = (
        config.get("hidden_size", config.get("n_embd")),
        config.get("num_attention_heads", config.get("n_head")),
    )
    return hidden // heads if isinstance(hidden, int) and isinstance(heads, int) and heads else None


def _genai_get(genai: Mapping[str, Any] | None, *keys: str) -> Any:
    node: Any = genai
    for key in keys:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _genai_int(genai: Mapping[str, Any] | None, *keys: str) -> int | None:
    return _int_or_none(_genai_get(genai, *keys))


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _token_ids(*sources: Any) -> tuple[int, ...]:
    """The first source that names ids: an int or a list of ints (``eos_token_id`` may be either)."""
    for source in sources:
        if isinstance(source, bool):
            continue
        if isinstance(source, int):
            return (source,)
        if isinstance(source, list) and source and all(isinstance(item, int) for item in source):
            return tuple(source)
    return ()


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise FolderError(f"{path}: expected JSON, could not read it: {error}") from error
    if not isinstance(data, dict):
        raise FolderError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer  # noqa: PLC0415  (seconds to import; only needed here)

    # Without any tokenizer file, transformers 5 builds an empty tokenizer of the config's model type
    # (one entry, every text tokenized to nothing) instead of failing.
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise FolderError(
            f"{folder}: expected the model's tokenizer files ({', '.join(_TOKENIZER_FILES)}: any of them), found none"
        )
    try:
        return AutoTokenizer.from_pretrained(folder, padding_side="left", local_files_only=True)
    except (OSError, ValueError) as error:
        raise FolderError(
            f"{folder}: expected the model's tokenizer files (tokenizer.json, tokenizer_config.json) loadable with "
            f"AutoTokenizer, could not load them: {error}"
        ) from error
