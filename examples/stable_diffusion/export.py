"""Export a diffusers Stable Diffusion pipeline to the diffusers ONNX folder layout.

The layout is the one diffusers' ``OnnxStableDiffusionPipeline`` loads (diffusers < 0.43)::

    model_index.json          OnnxStableDiffusionPipeline, four OnnxRuntimeModel entries
    text_encoder/model.onnx   input_ids (int32) -> last_hidden_state, pooler_output
    unet/model.onnx           sample, timestep, encoder_hidden_states -> out_sample
    vae_encoder/model.onnx    sample -> latent_sample (sampled, not the mean)
    vae_decoder/model.onnx    latent_sample -> sample
    */config.json             the torch component's config (the VAE one holds scaling_factor)
    tokenizer/, scheduler/    copied from the source pipeline

Models are exported with the dynamo exporter, so the declared output dims are symbolic
expressions over the input dims (for example ``8*height`` for the VAE decoder) rather than
opaque names. A model whose weights pass the protobuf limit is written as ``model.onnx`` plus one
``weights.pb`` data file, the name diffusers' ``OnnxRuntimeModel.save_pretrained`` copies along.

The module also builds a tiny Stable Diffusion with random weights, fully offline, for tests::

    python -m examples.stable_diffusion.export SRC DST [--fp16] [--opset N]
    python -m examples.stable_diffusion.export --tiny DST
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import onnx
import onnx_ir
import torch
from tqdm import tqdm

if TYPE_CHECKING:
    from transformers import CLIPTextModel, CLIPTokenizer

# diffusers and transformers are imported inside the functions that use them: together they take
# seconds to import and StableDiffusionPipeline prints torchvision notices, which a caller that only
# wants a cached model's path should not pay for. The diffusers classes come from their defining
# modules because its top-level names resolve, for mypy, to placeholder classes without methods;
# from there they are untyped (Any), hence the Any annotations on diffusers models below.

__all__ = [
    "build_tiny_pipeline",
    "default_cache_dir",
    "ensure_tiny_model",
    "export_onnx",
    "main",
    "tiny_torch_pipeline_dir",
]

TINY_TORCH_DIRNAME: Final = "tiny-sd-torch"
TINY_ONNX_DIRNAME: Final = "tiny-sd-onnx"

# diffusers' own names (diffusers.utils.constants): OnnxRuntimeModel loads ONNX_WEIGHTS_NAME and
# copies ONNX_EXTERNAL_WEIGHTS_NAME along when it saves, so other data file names get lost.
_ONNX_FILENAME: Final = "model.onnx"
_EXTERNAL_DATA_FILENAME: Final = "weights.pb"

# A protobuf message cannot exceed 2 GiB. The graph itself also takes room, so switch to external
# data a little before the weights alone reach the limit.
_EXTERNAL_DATA_THRESHOLD_BYTES: int = 2**31 - 128 * 2**20

# Component classes the export knows how to wrap; anything else would export with wrong names.
_SOURCE_CLASSES: Final[dict[str, tuple[str, ...]]] = {
    "text_encoder": ("CLIPTextModel",),
    "unet": ("UNet2DConditionModel",),
    "vae": ("AutoencoderKL",),
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
}

_TINY_MODEL_MAX_LENGTH: Final = 77
_TINY_MERGES: Final = ("t h", "th e</w>", "o f</w>", "a n</w>", "i n", "in g</w>", "c a", "ca t</w>")
_BOS_TOKEN: Final = "<|startoftext|>"
_EOS_TOKEN: Final = "<|endoftext|>"


# ---------------------------------------------------------------------------------------------
# Export wrappers: each exposes exactly the inputs and outputs diffusers' ONNX pipeline uses, with
# the forward parameter names equal to the ONNX input names (dynamic_shapes is keyed on them).
# ---------------------------------------------------------------------------------------------


class _TextEncoder(torch.nn.Module):
    def __init__(self, text_encoder: CLIPTextModel) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.text_encoder(input_ids=input_ids, return_dict=True)
        return output.last_hidden_state, output.pooler_output


class _UNet(torch.nn.Module):
    def __init__(self, unet: Any) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        output: torch.Tensor = self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]
        return output


class _VaeEncoder(torch.nn.Module):
    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        posterior = self.vae.encode(sample, return_dict=True).latent_dist
        # DiagonalGaussianDistribution.sample() draws with torch.randn(shape), which cannot take
        # symbolic sizes; randn_like exports as RandomNormalLike and follows the input's shape.
        latent: torch.Tensor = posterior.mean + posterior.std * torch.randn_like(posterior.mean)
        return latent


class _VaeDecoder(torch.nn.Module):
    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        image: torch.Tensor = self.vae.decode(latent_sample, return_dict=False)[0]
        return image


@dataclass(frozen=True)
class _Component:
    """One ONNX model to write: what to trace, with which names and dynamic dims."""

    name: str
    module: torch.nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    # Channel axes stay static: the convolution weights fix them, and torch.export rejects a
    # dynamic channel dim as a conflict between the requested and the inferred range.
    dynamic_shapes: dict[str, dict[int, str]]
    config_file: Path


# ---------------------------------------------------------------------------------------------
# export_onnx
# ---------------------------------------------------------------------------------------------


def export_onnx(
    pipeline_dir: str | Path,
    output_dir: str | Path,
    *,
    fp16: bool = False,
    opset: int = 20,
    progress: bool = True,
) -> Path:
    """Export a local diffusers Stable Diffusion pipeline to diffusers' ONNX folder layout.

    The four models are traced with ``torch.onnx.export(dynamo=True)``. Batch, height and width
    are dynamic everywhere, and so is the token sequence length of the text encoder and of the
    UNet's ``encoder_hidden_states``. The inputs and outputs are named as
    ``OnnxStableDiffusionPipeline`` feeds and reads them:

    * ``text_encoder``: ``input_ids`` (int32, as the ONNX pipeline casts it) ->
      ``last_hidden_state``, ``pooler_output``.
    * ``unet``: ``sample``, ``timestep``, ``encoder_hidden_states`` -> ``out_sample``. The timestep
      is traced, as in diffusers' convert script, as a 1-D float tensor in the weights' dtype, so
      it is declared float32 (float16 with ``fp16=True``); the ONNX pipeline reads that type from
      the model and casts to it. Its dim carries the ``batch`` symbol because the UNet expands the
      timestep to the sample batch, yet diffusers sends shape ``(1,)`` with any batch and ONNX
      Runtime accepts it.
    * ``vae_encoder``: ``sample`` -> ``latent_sample``, drawn from the posterior with
      ``RandomNormalLike`` (unscaled: the pipeline applies the VAE scaling factor).
    * ``vae_decoder``: ``latent_sample`` -> ``sample``.

    The output folder is assembled in a temporary sibling and moved into place at the end, so an
    interrupted export leaves no half-written ``output_dir``.

    Args:
        pipeline_dir: A folder written by ``StableDiffusionPipeline.save_pretrained``
            (``model_index.json``, ``text_encoder/``, ``unet/``, ``vae/``, ``tokenizer/``,
            ``scheduler/``).
        output_dir: Where to write the ONNX layout; must be missing or empty.
        fp16: Export half-precision weights, so every float input and output is float16. Tracing
            runs on the CPU; whether ONNX Runtime's CPU provider can run every float16 op is up to
            the runtime, a GPU provider can.
        opset: ONNX opset version to export with.
        progress: Show a tqdm progress bar over the four models.

    Returns:
        ``output_dir`` as a ``Path``.

    Raises:
        FileNotFoundError: ``pipeline_dir``, its ``model_index.json`` or a component folder is
            missing.
        ValueError: ``pipeline_dir`` is not a diffusers Stable Diffusion pipeline with the
            expected component classes.
        FileExistsError: ``output_dir`` exists and is not empty.
    """
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL  # noqa: PLC0415
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel  # noqa: PLC0415
    from transformers import CLIPTextModel, CLIPTokenizer  # noqa: PLC0415

    source = Path(pipeline_dir)
    target = Path(output_dir)
    source_index = _read_source_index(source)
    _require_missing_or_empty(target)

    dtype = torch.float16 if fp16 else torch.float32
    tokenizer = CLIPTokenizer.from_pretrained(source / "tokenizer")
    # Loading in the target dtype (rather than .to() afterwards) lets diffusers keep the modules
    # that it must keep in float32; low_cpu_mem_usage=False only silences an accelerate notice.
    # The export wrappers put everything in eval mode.
    text_encoder = CLIPTextModel.from_pretrained(source / "text_encoder", dtype=dtype)
    unet = UNet2DConditionModel.from_pretrained(source / "unet", torch_dtype=dtype, low_cpu_mem_usage=False)
    vae = AutoencoderKL.from_pretrained(source / "vae", torch_dtype=dtype, low_cpu_mem_usage=False)
    components = _components(source, tokenizer, text_encoder, unet, vae, dtype)

    with _publish_atomically(target) as staging:
        bar = tqdm(components, desc="Exporting to ONNX", unit="model", disable=not progress)
        for component in bar:
            bar.set_postfix_str(component.name)
            model_path = staging / component.name / _ONNX_FILENAME
            _export_component(component, model_path, opset)
            # The path form of the checker reads external data from beside the model; the
            # in-memory form would fail on models over 2 GB.
            onnx.checker.check_model(str(model_path))
            _check_io_names(component, model_path)
            shutil.copyfile(component.config_file, model_path.parent / "config.json")
        shutil.copytree(source / "tokenizer", staging / "tokenizer")
        shutil.copytree(source / "scheduler", staging / "scheduler")
        _write_onnx_index(staging / "model_index.json", source_index)
    return target


def _read_source_index(pipeline_dir: Path) -> dict[str, Any]:
    """Read ``model_index.json`` and check that it describes a Stable Diffusion pipeline."""
    expected = "a folder written by StableDiffusionPipeline.save_pretrained"
    if not pipeline_dir.is_dir():
        raise FileNotFoundError(f"pipeline folder {pipeline_dir} does not exist; expected {expected}")
    index_path = pipeline_dir / "model_index.json"
    if not index_path.is_file():
        raise FileNotFoundError(f"{index_path} not found; expected {expected}")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{index_path} is not valid JSON ({error}); expected {expected}") from error
    if not isinstance(index, dict):
        raise ValueError(f"{index_path}: expected a JSON object, got {type(index).__name__}")

    pipeline_class = index.get("_class_name")
    if isinstance(pipeline_class, str) and pipeline_class.startswith("Onnx"):
        raise ValueError(f"{index_path}: {pipeline_class} is an ONNX pipeline already; expected {expected}")

    for component in (*_SOURCE_CLASSES, "scheduler"):
        entry = index.get(component)
        if entry is None:
            raise ValueError(f"{index_path}: no {component!r} component; expected {expected}")
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) for x in entry)):
            raise ValueError(f"{index_path}: component {component!r} should be a [library, class] pair, got {entry!r}")
        accepted = _SOURCE_CLASSES.get(component)
        if accepted is not None and entry[1] not in accepted:
            raise ValueError(
                f"{index_path}: component {component!r} has class {entry[1]}, expected {' or '.join(accepted)}"
            )
        if not (pipeline_dir / component).is_dir():
            raise FileNotFoundError(
                f"{pipeline_dir / component} not found; model_index.json lists {component!r} as {entry[1]}"
            )
    return index


def _require_missing_or_empty(path: Path) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"output folder {path} already exists and is not empty; remove it or pick a new path")


def _components(
    source: Path,
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    unet: Any,
    vae: Any,
    dtype: torch.dtype,
) -> list[_Component]:
    """Describe the four models with example inputs shaped like a real pipeline call.

    Example dims are chosen pairwise distinct (batch 2, width = height + one downsampling step)
    so that the tracer cannot mistake two independent dims for one. The values come from a
    private generator, so exporting leaves the caller's torch RNG alone.
    """
    generator = torch.Generator().manual_seed(0)
    sequence_length: int = tokenizer.model_max_length
    input_ids = tokenizer(
        ["a photo of a cat", "a drawing of a dog"],
        padding="max_length",
        max_length=sequence_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(torch.int32)

    unet_factor = 2 ** (len(unet.config.block_out_channels) - 1)
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    latent_height = int(unet.config.sample_size)
    latent_width = latent_height + unet_factor
    batch = input_ids.shape[0]
    latent_channels = int(vae.config.latent_channels)

    latents = torch.randn(
        batch, int(unet.config.in_channels), latent_height, latent_width, generator=generator, dtype=dtype
    )
    timestep = torch.full((batch,), 981.0, dtype=dtype)
    hidden_states = torch.randn(
        batch, sequence_length, int(unet.config.cross_attention_dim), generator=generator, dtype=dtype
    )
    image = torch.randn(
        batch,
        int(vae.config.in_channels),
        latent_height * vae_factor,
        latent_width * vae_factor,
        generator=generator,
        dtype=dtype,
    )
    vae_latents = torch.randn(batch, latent_channels, latent_height, latent_width, generator=generator, dtype=dtype)

    image_dims = {0: "batch", 2: "height", 3: "width"}
    return [
        _Component(
            name="text_encoder",
            module=_TextEncoder(text_encoder).eval(),
            example_inputs=(input_ids,),
            input_names=("input_ids",),
            output_names=("last_hidden_state", "pooler_output"),
            dynamic_shapes={"input_ids": {0: "batch", 1: "sequence"}},
            config_file=source / "text_encoder" / "config.json",
        ),
        _Component(
            name="unet",
            module=_UNet(unet).eval(),
            example_inputs=(latents, timestep, hidden_states),
            input_names=("sample", "timestep", "encoder_hidden_states"),
            # The output must not reuse an input name; diffusers calls it out_sample.
            output_names=("out_sample",),
            dynamic_shapes={
                "sample": image_dims,
                "timestep": {0: "batch"},
                "encoder_hidden_states": {0: "batch", 1: "sequence"},
            },
            config_file=source / "unet" / "config.json",
        ),
        _Component(
            name="vae_encoder",
            module=_VaeEncoder(vae).eval(),
            example_inputs=(image,),
            input_names=("sample",),
            output_names=("latent_sample",),
            dynamic_shapes={"sample": image_dims},
            config_file=source / "vae" / "config.json",
        ),
        _Component(
            name="vae_decoder",
            module=_VaeDecoder(vae).eval(),
            example_inputs=(vae_latents,),
            input_names=("latent_sample",),
            output_names=("sample",),
            dynamic_shapes={"latent_sample": image_dims},
            config_file=source / "vae" / "config.json",
        ),
    ]


def _export_component(component: _Component, model_path: Path, opset: int) -> None:
    """Trace one model with the dynamo exporter and save it, with external data if it is large."""
    model_path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.onnx.export(
            component.module,
            component.example_inputs,
            dynamo=True,
            input_names=list(component.input_names),
            output_names=list(component.output_names),
            dynamic_shapes=component.dynamic_shapes,
            opset_version=opset,
            verbose=False,
        )
    if program is None:
        raise RuntimeError(f"torch.onnx.export returned no program for {component.name}")
    model = program.model
    for node in model.graph.all_nodes():
        # Per-node debug metadata holds stack traces with absolute source paths and this wrapper's
        # module name (``__main__`` under ``python -m``): without it, the same weights give the same
        # bytes wherever and however the export runs, and no local paths ship inside the model.
        node.metadata_props.clear()
    weight_bytes = sum(
        value.const_value.nbytes for value in model.graph.initializers.values() if value.const_value is not None
    )
    if weight_bytes > _EXTERNAL_DATA_THRESHOLD_BYTES:
        # One data file next to model.onnx, relative to it, so the folder can be moved as a whole.
        onnx_ir.save(model, model_path, external_data=_EXTERNAL_DATA_FILENAME)
    else:
        onnx_ir.save(model, model_path)


def _check_io_names(component: _Component, model_path: Path) -> None:
    """Fail loudly if the exporter renamed an input or output diffusers will ask for by name."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    inputs = tuple(value.name for value in graph.input)
    outputs = tuple(value.name for value in graph.output)
    if inputs != component.input_names or outputs != component.output_names:
        raise RuntimeError(
            f"{model_path}: expected inputs {component.input_names} and outputs "
            f"{component.output_names}, the exporter wrote inputs {inputs} and outputs {outputs}"
        )


def _write_onnx_index(path: Path, source_index: dict[str, Any]) -> None:
    onnx_model = ["diffusers", "OnnxRuntimeModel"]
    index = {
        "_class_name": "OnnxStableDiffusionPipeline",
        "_diffusers_version": importlib.metadata.version("diffusers"),
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": source_index["scheduler"],
        "text_encoder": onnx_model,
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": onnx_model,
        "vae_decoder": onnx_model,
        "vae_encoder": onnx_model,
    }
    path.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


@contextlib.contextmanager
def _publish_atomically(target: Path) -> Iterator[Path]:
    """Yield an empty sibling folder of ``target`` that replaces ``target`` only on success.

    A rename is atomic within one filesystem, so readers see either no folder or a whole one.

    Raises:
        FileExistsError: ``target`` was filled by someone else in the meantime.
    """
    _require_missing_or_empty(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield staging
        # mkdtemp makes the folder private (0700); the result is an ordinary shared folder.
        staging.chmod(0o755)
        try:
            staging.replace(target)
        except OSError as error:
            if target.is_dir() and any(target.iterdir()):
                raise FileExistsError(f"{target} was written by another process meanwhile") from error
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Tiny offline pipeline
# ---------------------------------------------------------------------------------------------


def build_tiny_pipeline(output_dir: str | Path, *, seed: int = 0) -> Path:
    """Build a tiny Stable Diffusion torch pipeline with random weights, fully offline.

    The components are as small as diffusers allows while keeping the real structure: a 2-layer
    CLIP text encoder (hidden size 32), a ~1M-parameter two-level UNet (latent height and width
    must be even, so images are multiples of 16 pixels), a four-block VAE that scales by 8 like
    the real one, SD 1.5's PNDM scheduler settings with ``skip_prk_steps``, and a CLIP BPE
    tokenizer over the 256 byte characters, so any prompt tokenizes. The images are noise.

    The global torch RNG state is left as it was. The same seed gives byte-identical weights.

    Args:
        output_dir: Where to save the pipeline; must be missing or empty.
        seed: Seed for the random weights.

    Returns:
        ``output_dir`` as a ``Path``; it holds what ``StableDiffusionPipeline.save_pretrained``
        writes and loads back with ``StableDiffusionPipeline.from_pretrained``.

    Raises:
        FileExistsError: ``output_dir`` exists and is not empty.
    """
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL  # noqa: PLC0415
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel  # noqa: PLC0415
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (  # noqa: PLC0415
        StableDiffusionPipeline,
    )
    from diffusers.schedulers.scheduling_pndm import PNDMScheduler  # noqa: PLC0415
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: PLC0415

    target = Path(output_dir)
    with _publish_atomically(target) as staging:
        tokenizer_files = staging / ".tokenizer-source"
        vocab = _write_tiny_tokenizer_files(tokenizer_files)
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_files)
        shutil.rmtree(tokenizer_files)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            text_encoder = CLIPTextModel(
                CLIPTextConfig(
                    vocab_size=1000,
                    hidden_size=32,
                    intermediate_size=37,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    max_position_embeddings=_TINY_MODEL_MAX_LENGTH,
                    projection_dim=32,
                    bos_token_id=vocab[_BOS_TOKEN],
                    eos_token_id=vocab[_EOS_TOKEN],
                    pad_token_id=vocab[_EOS_TOKEN],
                )
            )
            unet = UNet2DConditionModel(
                sample_size=8,
                block_out_channels=(32, 64),
                layers_per_block=1,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                cross_attention_dim=32,
                attention_head_dim=2,
                norm_num_groups=32,
            )
            # Four blocks, three downsamplings: the VAE scales by 8 like SD's. With fewer,
            # diffusers' ONNX pipeline (which assumes 8) silently returns smaller images.
            vae = AutoencoderKL(
                in_channels=3,
                out_channels=3,
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(32, 32, 64, 64),
                layers_per_block=1,
                latent_channels=4,
                norm_num_groups=32,
                sample_size=64,
            )
        scheduler = PNDMScheduler(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            skip_prk_steps=True,
            set_alpha_to_one=False,
            steps_offset=1,
        )
        pipeline = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            # diffusers documents None for these optional components but annotates them as required.
            safety_checker=None,  # type: ignore[arg-type]
            feature_extractor=None,  # type: ignore[arg-type]
            requires_safety_checker=False,
        )
        pipeline.save_pretrained(staging)
    return target


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible map from each byte to a printable character."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\N{INVERTED EXCLAMATION MARK}"), ord("\N{NOT SIGN}") + 1),
        *range(ord("\N{REGISTERED SIGN}"), ord("\N{LATIN SMALL LETTER Y WITH DIAERESIS}") + 1),
    ]
    mapping = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + shifted)
            shifted += 1
    return dict(sorted(mapping.items()))


def _write_tiny_tokenizer_files(folder: Path) -> dict[str, int]:
    """Write a minimal CLIP BPE tokenizer (vocab, merges, config) and return its vocab."""
    characters = list(_bytes_to_unicode().values())
    tokens = [
        *characters,
        *(f"{character}</w>" for character in characters),
        *(merge.replace(" ", "") for merge in _TINY_MERGES),
        _BOS_TOKEN,
        _EOS_TOKEN,
    ]
    vocab = {token: index for index, token in enumerate(tokens)}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": _TINY_MODEL_MAX_LENGTH,
        "bos_token": _BOS_TOKEN,
        "eos_token": _EOS_TOKEN,
        "pad_token": _EOS_TOKEN,
        "unk_token": _EOS_TOKEN,
    }
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges = "\n".join(("#version: 0.2", *_TINY_MERGES)) + "\n"
    (folder / "merges.txt").write_text(merges, encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return vocab


def default_cache_dir() -> Path:
    """Return ``$ORTBIND_CACHE`` if set, else ``~/.cache/ortbind``."""
    configured = os.environ.get("ORTBIND_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "ortbind"


def ensure_tiny_model(cache_dir: str | Path | None = None, *, progress: bool = False) -> Path:
    """Return the tiny random-weight model in diffusers' ONNX layout, building it if missing.

    The torch pipeline goes to ``<cache>/tiny-sd-torch`` (see :func:`build_tiny_pipeline`, seed 0)
    and its export to ``<cache>/tiny-sd-onnx`` (see :func:`export_onnx`, float32, opset 20). Each
    folder is written beside its final place and moved in whole, so an interrupted build leaves
    nothing half-done and the next call starts over. Two processes building at once both finish;
    the first folder to land is kept.

    Args:
        cache_dir: Folder for both pipelines; defaults to :func:`default_cache_dir`.
        progress: Show the export progress bar.

    Returns:
        The ONNX folder, loadable with ``OnnxStableDiffusionPipeline.from_pretrained``.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    torch_dir = cache / TINY_TORCH_DIRNAME
    onnx_dir = cache / TINY_ONNX_DIRNAME
    if _is_pipeline_dir(onnx_dir) and _is_pipeline_dir(torch_dir):
        return onnx_dir

    print(
        f"Building the tiny random-weight Stable Diffusion model in {cache} (it makes noise, not art)",
        file=sys.stderr,
    )
    with _quiet_libraries():
        if not _is_pipeline_dir(torch_dir):
            # The export would be of other weights than the ones the torch folder will hold.
            shutil.rmtree(onnx_dir, ignore_errors=True)
            _build_unless_present(torch_dir, lambda: build_tiny_pipeline(torch_dir, seed=0))
        if not _is_pipeline_dir(onnx_dir):
            _build_unless_present(onnx_dir, lambda: export_onnx(torch_dir, onnx_dir, progress=progress))
    return onnx_dir


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Silence the notices the libraries print while the tiny model is built.

    The build is an internal step of the demo: the exporter's notes on skipped torchvision ops,
    its deprecation warnings and the loaders' progress bars say nothing to someone who asked for
    an image. Errors still propagate; only warnings and info output are held back.
    """
    import diffusers.utils.logging as diffusers_logging  # noqa: PLC0415  (lazy: see the module note)
    import transformers.utils.logging as transformers_logging  # noqa: PLC0415

    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        diffusers_logging.enable_progress_bar()
        transformers_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
        transformers_logging.set_verbosity(verbosity)


def tiny_torch_pipeline_dir(cache_dir: str | Path | None = None) -> Path:
    """Return the torch pipeline the tiny ONNX model was exported from, building both if missing.

    Load it with ``StableDiffusionPipeline.from_pretrained`` to compare against the ONNX run on
    the same weights.

    Args:
        cache_dir: As for :func:`ensure_tiny_model`.

    Returns:
        ``<cache>/tiny-sd-torch``.
    """
    return ensure_tiny_model(cache_dir).parent / TINY_TORCH_DIRNAME


def _is_pipeline_dir(path: Path) -> bool:
    # Folders only appear whole (see _publish_atomically), so the index file marks a complete one.
    return (path / "model_index.json").is_file()


def _build_unless_present(target: Path, build: Callable[[], object]) -> None:
    if target.exists() and not _is_pipeline_dir(target):
        # Left by a version of this module that wrote in place, or by hand; never by an
        # interrupted build, which only leaves hidden .partial- siblings behind.
        shutil.rmtree(target)
    try:
        build()
    except FileExistsError:
        if not _is_pipeline_dir(target):
            raise


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line: export SRC to DST, or build the tiny model with ``--tiny DST``.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The process exit status: 0 on success, 1 when the export failed with a clear error.
    """
    parser = argparse.ArgumentParser(
        prog="python -m examples.stable_diffusion.export",
        description="Export a diffusers Stable Diffusion pipeline folder to diffusers' ONNX layout.",
    )
    parser.add_argument("src", nargs="?", type=Path, help="torch pipeline folder (save_pretrained)")
    parser.add_argument("dst", nargs="?", type=Path, help="output folder, missing or empty")
    parser.add_argument(
        "--tiny",
        metavar="DST",
        type=Path,
        help=f"build the tiny random-weight pipeline into DST/{TINY_TORCH_DIRNAME} "
        f"and export it to DST/{TINY_ONNX_DIRNAME}",
    )
    parser.add_argument("--fp16", action="store_true", help="export float16 weights and tensors")
    parser.add_argument("--opset", type=int, default=20, help="ONNX opset version (default: 20)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)

    try:
        if args.tiny is not None:
            if args.src is not None or args.fp16 or args.opset != 20:
                parser.error("--tiny takes no SRC, DST, --fp16 or --opset")
            onnx_dir = ensure_tiny_model(args.tiny, progress=not args.no_progress)
            print(f"torch pipeline: {onnx_dir.parent / TINY_TORCH_DIRNAME}")
            print(f"ONNX pipeline:  {onnx_dir}")
            return 0
        if args.src is None or args.dst is None:
            parser.error("expected SRC and DST, or --tiny DST")
        output = export_onnx(args.src, args.dst, fp16=args.fp16, opset=args.opset, progress=not args.no_progress)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"ONNX pipeline written to {output}")
    for path in sorted(output.rglob("*")):
        if path.is_file():
            print(f"  {path.relative_to(output)}  ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
