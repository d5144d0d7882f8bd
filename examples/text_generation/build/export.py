"""Export a transformers causal language model folder to ONNX, in the layouts decoder folders come in.

Every layout writes ``model.onnx`` beside the source's ``config.json``, ``generation_config.json``
and tokenizer files (see :data:`._files.SIDE_FILES`). Each step feeds the new tokens and the cache
of the steps before; they differ in names, in how the cache grows and in what else they take:

``optimum``
    What optimum's ``text-generation-with-past`` export writes (``optimum-cli export onnx --task
    text-generation-with-past``; optimum-onnx 0.1.0 with transformers 4.57, opset 18)::

        input_ids                   int64  [batch_size, sequence_length]
        attention_mask              int64  [batch_size, past_sequence_length + sequence_length]
        position_ids                int64  [batch_size, sequence_length]
        past_key_values.{i}.key     float  [batch_size, kv_heads, past_sequence_length, head_dim]
        past_key_values.{i}.value   float  (same)
        -> logits                   float  [batch_size, sequence_length, vocab]
        -> present.{i}.key|value    float  [batch_size, kv_heads, past_sequence_length + sequence_length, head_dim]

    The model concatenates the past and the new keys/values: each step's present is one longer and
    is the next step's past; the first step takes a past of length 0. Inputs are in the order of the
    model's ``forward`` arguments, as optimum's exporter leaves them (GPT-2:
    ``input_ids, past_key_values.*, attention_mask, position_ids``; Llama: ``input_ids,
    attention_mask, position_ids, past_key_values.*``). Written here with ``torch.onnx.export``
    (dynamo) and the declared dims renamed to optimum's strings; optimum itself needs
    transformers < 4.58 and does not import next to transformers 5.

``genai``
    onnxruntime-genai's model builder (``python -m onnxruntime_genai.models.builder -p fp32 -e
    cpu``): ``genai_config.json`` beside the model, ``GroupQueryAttention`` (com.microsoft)
    in every layer, no ``position_ids`` (the rotary embedding is inside the attention, at the
    positions the attention mask's row sums give). Inputs ``input_ids``, ``attention_mask``
    [batch_size, total_sequence_length], ``past_key_values.{i}.key|value`` [batch_size, kv_heads,
    past_sequence_length, kv_cache_dim]; outputs ``logits``, ``present.{i}.key|value`` [...,
    total_sequence_length, ...]. With ``past_present_share_buffer`` (the builder sets it) past and
    present are one buffer of ``search.max_length`` positions, written in place. Needs the optional
    ``onnxruntime-genai`` package (``pip install 'ortbind[genai]'``).

``torch``
    A plain ``torch.onnx.export(model, kwargs=..., dynamo=True)`` of the transformers model itself,
    with a ``DynamicCache`` as its ``cache`` argument and no names given: what a user gets who
    exports it by hand. The cache must be registered as a pytree node for ``torch.export``; this
    uses transformers' own registration (``transformers.exporters``), which flattens a
    ``DynamicCache`` to a layer's key, then its value, layer after layer. The names are torch's::

        input_ids, attention_mask, position_ids, cache_0, cache_1, ..., cache_{2 * layers - 1}
        -> <the producing node's name>, e.g. linear_14 (logits), cat_3, cat_4, ... (presents)

    ``cache_{2i}``/``cache_{2i+1}`` are layer ``i``'s key/value; the outputs are the logits, then
    the presents in the same order (GPT-2's are named ``linear``, ``cat``, ``cat_1``, ...). The
    declared dims take the names of the ``torch.export.Dim``s given (``batch_size``,
    ``sequence_length``, ``past_sequence_length``, ``total_sequence_length`` for the mask), and
    the presents' ``past_sequence_length + sequence_length``; given a bool argument as well
    (``use_cache=True``), torch keeps its own symbols (``s10``, ``s54 + s70``) instead. Opset 20
    (torch's default).

Command line::

    python -m examples.text_generation.build.export SRC DST --layout optimum|genai|torch
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import onnx
import torch

from ._files import copy_side_files, publish_atomically, require_missing_or_empty

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "GENAI_INSTALL_HINT",
    "LAYOUTS",
    "OPTIMUM_OPSET",
    "Layout",
    "export_decoder",
    "export_genai",
    "export_optimum",
    "export_torch",
    "genai_available",
    "main",
]

Layout = Literal["optimum", "genai", "torch"]
LAYOUTS: Final[tuple[Layout, ...]] = ("optimum", "genai", "torch")

OPTIMUM_OPSET: Final = 18  # what optimum-onnx 0.1.0 writes for decoders

GENAI_INSTALL_HINT: Final = (
    "onnxruntime-genai is not installed; it builds the genai layout (and runs its reference generator). "
    "Install it with: pip install 'ortbind[genai]' (on Linux/Windows x86-64 that is onnxruntime-genai-cuda, "
    "which uses the onnxruntime-gpu ortbind already has and runs on the CPU too; elsewhere onnxruntime-genai)"
)

# Optimum's declared dims, by role.
_BATCH: Final = "batch_size"
_SEQUENCE: Final = "sequence_length"
_PAST: Final = "past_sequence_length"
_TOTAL: Final = "past_sequence_length + sequence_length"

# Sample sizes for tracing: all different and above 1, so the exporter neither specializes a dim
# nor assumes two dims equal.
_SAMPLE_BATCH: Final = 2
_SAMPLE_SEQUENCE: Final = 3
_SAMPLE_PAST: Final = 5


def export_decoder(source: str | Path, output_dir: str | Path, *, layout: Layout) -> Path:
    """Export a transformers causal LM folder to ONNX in one of :data:`LAYOUTS`.

    Args:
        source: A folder ``AutoModelForCausalLM.from_pretrained`` loads offline, with its tokenizer.
        output_dir: Where to write; must be missing or empty. Written whole or not at all.
        layout: ``"optimum"``, ``"genai"`` or ``"torch"`` (see the module docstring).

    Returns:
        ``output_dir`` as a ``Path``.

    Raises:
        ValueError: ``layout`` is not one of :data:`LAYOUTS`.
        FileExistsError: ``output_dir`` is not empty.
        ModuleNotFoundError: ``layout`` is ``"genai"`` and onnxruntime-genai is not installed.
    """
    if layout == "optimum":
        return export_optimum(source, output_dir)
    if layout == "genai":
        return export_genai(source, output_dir)
    if layout == "torch":
        return export_torch(source, output_dir)
    raise ValueError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")


def export_optimum(source: str | Path, output_dir: str | Path, *, opset: int = OPTIMUM_OPSET) -> Path:
    """Export in optimum's ``text-generation-with-past`` layout (see the module docstring).

    Args:
        source: A transformers causal LM folder.
        output_dir: Where to write; must be missing or empty.
        opset: ONNX opset version; optimum writes 18.

    Returns:
        ``output_dir`` as a ``Path``.
    """
    source, target = Path(source), Path(output_dir)
    require_missing_or_empty(target)  # before the seconds of loading and tracing
    model = _load_model(source)
    wrapper = _FlatCacheDecoder(model)
    layers = wrapper.num_layers
    past_names = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    present_names = [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    input_ids, attention_mask, position_ids, past = _sample_inputs(model)
    batch, sequence = torch.export.Dim("batch_size"), torch.export.Dim("sequence_length")
    past_length, total = torch.export.Dim("past_sequence_length"), torch.export.Dim("total_sequence_length")
    with publish_atomically(target) as staging:
        path = staging / "model.onnx"
        program = torch.onnx.export(
            wrapper,
            (input_ids, attention_mask, position_ids, past),
            input_names=["input_ids", "attention_mask", "position_ids", *past_names],
            output_names=["logits", *present_names],
            dynamic_shapes=(
                {0: batch, 1: sequence},
                {0: batch, 1: total},
                {0: batch, 1: sequence},
                [{0: batch, 2: past_length}] * len(past),
            ),
            opset_version=opset,
            dynamo=True,
        )
        if program is None:  # only the legacy exporter returns None
            raise RuntimeError("torch.onnx.export returned no program")
        program.save(path)
        _rename_dims_as_optimum(path, model, past_names, present_names)
        copy_side_files(source, staging)
    return target


def export_torch(source: str | Path, output_dir: str | Path) -> Path:
    """Export with a plain ``torch.onnx.export(..., dynamo=True)``, names left to torch (see the module docstring).

    Args:
        source: A transformers causal LM folder.
        output_dir: Where to write; must be missing or empty.

    Returns:
        ``output_dir`` as a ``Path``.
    """
    from transformers import DynamicCache  # noqa: PLC0415

    source, target = Path(source), Path(output_dir)
    require_missing_or_empty(target)
    model = _load_model(source)
    _register_cache_pytrees(model)
    input_ids, attention_mask, position_ids, past = _sample_inputs(model)
    cache = DynamicCache(ddp_cache_data=list(zip(past[0::2], past[1::2], strict=True)), config=model.config)
    cache_argument = _cache_argument(model)
    batch, sequence = torch.export.Dim("batch_size"), torch.export.Dim("sequence_length")
    past_length, total = torch.export.Dim("past_sequence_length"), torch.export.Dim("total_sequence_length")
    with publish_atomically(target) as staging:
        program = torch.onnx.export(
            model,
            (),
            kwargs={
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "position_ids": position_ids,
                # use_cache is left to the config (True): a bool kwarg counts as an input to torch's
                # dim renaming, which then gives up and leaves its own symbols (s10, ...).
                cache_argument: cache,
            },
            dynamic_shapes={
                "input_ids": {0: batch, 1: sequence},
                "attention_mask": {0: batch, 1: total},
                "position_ids": {0: batch, 1: sequence},
                cache_argument: [{0: batch, 2: past_length}] * len(past),
            },
            dynamo=True,
        )
        if program is None:
            raise RuntimeError("torch.onnx.export returned no program")
        program.save(staging / "model.onnx")
        copy_side_files(source, staging)
    return target


def genai_available() -> bool:
    """Whether onnxruntime-genai can be imported (without importing it: that loads its native library)."""
    return importlib.util.find_spec("onnxruntime_genai") is not None


def export_genai(
    source: str | Path, output_dir: str | Path, *, precision: str = "fp32", execution_provider: str = "cpu"
) -> Path:
    """Export with onnxruntime-genai's model builder (see the module docstring).

    Runs ``python -m onnxruntime_genai.models.builder -i SOURCE -o OUTPUT -p PRECISION -e PROVIDER``
    offline, then adds the source's ``config.json`` and ``generation_config.json`` (the builder
    writes ``genai_config.json`` and the tokenizer only).

    Args:
        source: A transformers causal LM folder; the builder needs its tokenizer.
        output_dir: Where to write; must be missing or empty.
        precision: The builder's ``-p`` (``fp32``, ``fp16``, ``int4``, ...).
        execution_provider: The builder's ``-e`` (``cpu``, ``cuda``, ...): the provider the graph is made for.

    Returns:
        ``output_dir`` as a ``Path``.

    Raises:
        ModuleNotFoundError: onnxruntime-genai is not installed (the message says how to install it).
        ValueError: A layer other than the LM head has vocabulary-many outputs, which the builder
            (0.18) would export as the LM head: its graph would compute something else.
        RuntimeError: The builder failed; the message holds the end of its output.
    """
    if not genai_available():
        raise ModuleNotFoundError(GENAI_INSTALL_HINT, name="onnxruntime_genai")
    source, target = Path(source), Path(output_dir)
    require_missing_or_empty(target)
    _refuse_layers_the_builder_takes_for_the_lm_head(source)
    with publish_atomically(target) as staging, tempfile.TemporaryDirectory(prefix="genai-builder-cache-") as cache:
        command = [
            sys.executable,
            "-m",
            "onnxruntime_genai.models.builder",
            *("-i", str(source), "-o", str(staging), "-p", precision, "-e", execution_provider, "-c", cache),
        ]
        # The builder reads the local folder; offline, a missing file fails here instead of reaching for the hub.
        environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        result = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise RuntimeError(
                f"onnxruntime-genai's model builder failed on {source} (exit status {result.returncode}):\n{tail}"
            )
        # The builder's own tokenizer files stay: they are what its export holds.
        copy_side_files(source, staging, overwrite=False)
    return target


def _refuse_layers_the_builder_takes_for_the_lm_head(source: Path) -> None:
    """Refuse a model the builder would export wrong.

    onnxruntime-genai 0.18's builder recognises the LM head as any ``nn.Linear`` whose
    ``out_features`` is the vocabulary size (``Model.has_lm_head``), so a model whose MLP, query or
    key/value projection is that wide gets those weights as its head, and its logits are unrelated
    to the model's (seen with a Llama of MLP width 512 and vocabulary 512: logits off by 15).
    """
    config_path = source / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # the builder reports a folder it cannot read in its own words
    vocab = config.get("vocab_size")
    heads = config.get("num_attention_heads")
    head_dim = config.get("head_dim") or (config.get("hidden_size", 0) // heads if heads else None)
    widths = {
        "hidden_size": config.get("hidden_size"),
        "intermediate_size": config.get("intermediate_size"),
        "num_attention_heads * head_dim": heads * head_dim if heads and head_dim else None,
        "num_key_value_heads * head_dim": (
            config["num_key_value_heads"] * head_dim if config.get("num_key_value_heads") and head_dim else None
        ),
    }
    clashes = [name for name, width in widths.items() if vocab is not None and width == vocab]
    if clashes:
        raise ValueError(
            f"{config_path}: {' and '.join(clashes)} {'equals' if len(clashes) == 1 else 'equal'} vocab_size "
            f"({vocab}): onnxruntime-genai's model builder "
            "takes every linear layer with vocab_size outputs for the LM head and would export wrong logits; "
            "use another width or vocabulary size"
        )


class _FlatCacheDecoder(torch.nn.Module):
    """A causal LM whose cache goes in and out as flat tensors: layer 0's key, its value, layer 1's key, ...

    This is the signature optimum's exporter gives the model (its past as separate inputs, its
    present as separate outputs), written for transformers 5's ``cache`` argument.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model
        self.num_layers: int = model.config.get_text_config(decoder=True).num_hidden_layers
        self._cache_argument = _cache_argument(model)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past: list[torch.Tensor],
    ) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache  # noqa: PLC0415

        cache = DynamicCache(ddp_cache_data=list(zip(past[0::2], past[1::2], strict=True)), config=self.model.config)
        output = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **{self._cache_argument: cache},
        )
        present = output.cache if hasattr(output, "cache") else output.past_key_values
        flat = [tensor for layer in present.layers for tensor in (layer.keys, layer.values)]
        return (output.logits, *flat)


def _load_model(source: Path) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(source, local_files_only=True)
    if "position_ids" not in inspect.signature(model.forward).parameters:
        raise ValueError(
            f"{source}: {type(model).__name__}.forward takes no position_ids; only decoders that take them are exported"
        )
    model.eval()  # type: ignore[no-untyped-call]
    return model


def _cache_argument(model: PreTrainedModel) -> str:
    # transformers 5 names the cache argument `cache`; 4.x (and 5.x until 5.40, deprecated) `past_key_values`.
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _sample_inputs(model: PreTrainedModel) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    config = model.config.get_text_config(decoder=True)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    total = _SAMPLE_PAST + _SAMPLE_SEQUENCE
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, config.vocab_size, (_SAMPLE_BATCH, _SAMPLE_SEQUENCE), generator=generator)
    attention_mask = torch.ones(_SAMPLE_BATCH, total, dtype=torch.int64)
    position_ids = torch.arange(_SAMPLE_PAST, total).expand(_SAMPLE_BATCH, -1).contiguous()
    dtype = next(model.parameters()).dtype
    past = [
        torch.randn(_SAMPLE_BATCH, kv_heads, _SAMPLE_PAST, head_dim, generator=generator).to(dtype)
        for _ in range(2 * config.num_hidden_layers)
    ]
    return input_ids, attention_mask, position_ids, past


def _register_cache_pytrees(model: PreTrainedModel) -> None:
    """Let ``torch.export`` take and return the model's caches, as transformers' own exporter does.

    A ``DynamicCache`` flattens to its tensors in attribute order: layer 0's keys, its values,
    layer 1's keys, ... (the tests check this order through the exported graph's results).
    """
    from transformers.exporters.exporter_dynamo import register_cache_pytrees_for_model  # noqa: PLC0415

    register_cache_pytrees_for_model(model)


def _rename_dims_as_optimum(path: Path, model: PreTrainedModel, past: list[str], present: list[str]) -> None:
    """Give the graph's inputs and outputs optimum's declared dims and input order; drop inner shape notes.

    The dynamo exporter names dims by its own symbols (``s10``, ``s54 + s70``); optimum writes
    ``batch_size``, ``sequence_length``, ``past_sequence_length`` and ``past_sequence_length +
    sequence_length``. The inner ``value_info`` entries carry the exporter's symbols, which would
    no longer match: they are only hints, and ONNX Runtime infers shapes without them.
    """
    proto = onnx.load(str(path), load_external_data=False)
    graph = proto.graph
    symbolic = {
        "input_ids": (_BATCH, _SEQUENCE),
        "attention_mask": (_BATCH, _TOTAL),
        "position_ids": (_BATCH, _SEQUENCE),
        "logits": (_BATCH, _SEQUENCE, None),
        **{name: (_BATCH, None, _PAST, None) for name in past},
        **{name: (_BATCH, None, _TOTAL, None) for name in present},
    }
    for value in [*graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        wanted = symbolic[value.name]
        if len(dims) != len(wanted):
            raise RuntimeError(f"{path}: {value.name} has rank {len(dims)}, expected {len(wanted)}")
        for dim, name in zip(dims, wanted, strict=True):
            if name is not None:
                dim.dim_param = name
            elif not dim.HasField("dim_value"):
                raise RuntimeError(
                    f"{path}: {value.name} has a symbolic dim ({dim.dim_param}) where a fixed size was expected"
                )
    del graph.value_info[:]
    # optimum's (TorchScript) exporter orders inputs as the model's forward arguments.
    order = {name: index for index, name in enumerate(inspect.signature(model.forward).parameters)}
    cache_position = order[_cache_argument(model)]

    def rank(value: onnx.ValueInfoProto) -> tuple[int, int]:
        if value.name in past:
            return cache_position, past.index(value.name)
        return order[value.name], 0

    inputs = sorted(graph.input, key=rank)
    del graph.input[:]
    graph.input.extend(inputs)
    # The weights stay where the exporter put them (inside, or an external file beside it for > 2 GB).
    path.write_bytes(proto.SerializeToString())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line: export SRC to DST in one layout.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The process exit status: 0 on success, 1 when the export failed with a clear error.
    """
    parser = argparse.ArgumentParser(
        prog="python -m examples.text_generation.build.export",
        description="Export a transformers causal LM folder to ONNX: optimum's, onnxruntime-genai's or torch's layout.",
    )
    parser.add_argument("src", type=Path, help="transformers model folder (save_pretrained), with its tokenizer")
    parser.add_argument("dst", type=Path, help="output folder, missing or empty")
    parser.add_argument("--layout", choices=LAYOUTS, required=True, help="which folder layout to write")
    args = parser.parse_args(argv)
    try:
        print(export_decoder(args.src, args.dst, layout=args.layout))
    except (FileExistsError, ModuleNotFoundError, RuntimeError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
