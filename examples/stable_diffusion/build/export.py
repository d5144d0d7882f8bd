"""Export a diffusers Stable Diffusion torch folder (SD 1.x/2.x, inpainting, SDXL) to ONNX.

SD 1.x/2.x and inpainting folders get diffusers' ONNX layout (what ``OnnxStableDiffusionPipeline``
and ``OnnxStableDiffusionInpaintPipeline`` load, diffusers < 0.43); SDXL, which diffusers has no
ONNX pipeline for, gets optimum's (``ORTStableDiffusionXLPipeline``)::

    model_index.json            the ONNX pipeline class, one entry per component
    text_encoder/model.onnx     input_ids (int32) -> last_hidden_state, pooler_output[, hidden_states.N]
    text_encoder_2/model.onnx   SDXL: input_ids -> text_embeds, last_hidden_state, hidden_states.N
    unet/model.onnx             sample, timestep, encoder_hidden_states[, text_embeds, time_ids] -> out_sample
    vae_encoder/model.onnx      sample -> latent_parameters (mean and log-variance, as optimum writes)
    vae_decoder/model.onnx      latent_sample -> sample
    */config.json               the torch component's config (the VAE one holds scaling_factor)
    tokenizer*/, scheduler/     copied from the source pipeline

The VAE encoder outputs the latent distribution's parameters rather than a sample, so the model
is deterministic and the pipeline draws the sample with the caller's generator, in the order
diffusers' torch pipelines do. (diffusers' own convert script writes a sampled ``latent_sample``;
the pipelines here accept both.)

Models are exported with the dynamo exporter, so the declared output dims are symbolic
expressions over the input dims (for example ``8*height`` for the VAE decoder). A model whose
weights pass the protobuf limit is written as ``model.onnx`` plus one ``weights.pb`` data file,
the name diffusers' ``OnnxRuntimeModel.save_pretrained`` copies along::

    python -m examples.stable_diffusion.export SRC DST [--fp16] [--opset N]
    python -m examples.stable_diffusion.export --tiny DST [--kind sd|inpaint|sdxl]
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import onnx
import onnx_ir
import torch
from tqdm import tqdm

from ._files import publish_atomically, require_missing_or_empty

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

# diffusers and transformers are imported inside the functions that use them: together they take
# seconds to import and print torchvision notices, which a caller that only wants a cached model's
# path should not pay for. The diffusers classes come from their defining modules because its
# top-level names resolve, for mypy, to placeholder classes without methods; from there they are
# untyped (Any), hence the Any annotations on diffusers models below.

__all__ = ["SOURCE_PIPELINES", "export_onnx", "export_optimized", "export_vae"]

# diffusers' own names (diffusers.utils.constants): OnnxRuntimeModel loads ONNX_WEIGHTS_NAME and
# copies ONNX_EXTERNAL_WEIGHTS_NAME along when it saves, so other data file names get lost.
_ONNX_FILENAME: Final = "model.onnx"
_EXTERNAL_DATA_FILENAME: Final = "weights.pb"

# A protobuf message cannot exceed 2 GiB. The graph itself also takes room, so switch to external
# data a little before the weights alone reach the limit.
_EXTERNAL_DATA_THRESHOLD_BYTES: int = 2**31 - 128 * 2**20


@dataclass(frozen=True)
class _SourceKind:
    """What one kind of torch pipeline folder holds and which ONNX pipeline class it becomes."""

    onnx_class: str
    components: dict[str, tuple[str, ...]]


_SD_COMPONENTS: Final = {
    "text_encoder": ("CLIPTextModel",),
    "unet": ("UNet2DConditionModel",),
    "vae": ("AutoencoderKL",),
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
}
_SDXL_COMPONENTS: Final = {
    **_SD_COMPONENTS,
    "text_encoder_2": ("CLIPTextModelWithProjection",),
    "tokenizer_2": ("CLIPTokenizer", "CLIPTokenizerFast"),
}
SOURCE_PIPELINES: Final[dict[str, _SourceKind]] = {
    "StableDiffusionPipeline": _SourceKind("OnnxStableDiffusionPipeline", _SD_COMPONENTS),
    "StableDiffusionImg2ImgPipeline": _SourceKind("OnnxStableDiffusionImg2ImgPipeline", _SD_COMPONENTS),
    "StableDiffusionInpaintPipeline": _SourceKind("OnnxStableDiffusionInpaintPipeline", _SD_COMPONENTS),
    "StableDiffusionXLPipeline": _SourceKind("ORTStableDiffusionXLPipeline", _SDXL_COMPONENTS),
    "StableDiffusionXLImg2ImgPipeline": _SourceKind("ORTStableDiffusionXLImg2ImgPipeline", _SDXL_COMPONENTS),
}
"""Torch pipeline classes :func:`export_onnx` reads -> the ONNX pipeline class it writes."""

# Pipeline settings (diffusers' register_to_config) that the ONNX pipelines read from model_index.json.
_PIPELINE_SETTINGS: Final = ("force_zeros_for_empty_prompt", "requires_aesthetics_score", "requires_safety_checker")


# ---------------------------------------------------------------------------------------------
# Export wrappers: each exposes exactly the inputs and outputs the ONNX pipelines use, with the
# forward parameter names equal to the ONNX input names (dynamic_shapes is keyed on them).
# ---------------------------------------------------------------------------------------------


class _TextEncoder(torch.nn.Module):
    def __init__(self, text_encoder: Any, *, hidden_states: bool) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.hidden_states = hidden_states

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.text_encoder(input_ids=input_ids, output_hidden_states=self.hidden_states, return_dict=True)
        # CLIPTextModel gives last_hidden_state first, CLIPTextModelWithProjection text_embeds.
        head = (output[0], output[1])
        return (*head, *output.hidden_states) if self.hidden_states else head


class _UNet(torch.nn.Module):
    def __init__(self, unet: Any) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        output: torch.Tensor = self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]
        return output


class _UNetXL(torch.nn.Module):
    def __init__(self, unet: Any) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        text_embeds: torch.Tensor,
        time_ids: torch.Tensor,
    ) -> torch.Tensor:
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        output: torch.Tensor = self.unet(
            sample, timestep, encoder_hidden_states, added_cond_kwargs=added, return_dict=False
        )[0]
        return output


class _VaeEncoder(torch.nn.Module):
    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        # The distribution's parameters (mean and log-variance stacked on the channel axis), not a
        # sample: the pipeline samples with the caller's generator, as diffusers' torch pipelines do.
        parameters: torch.Tensor = self.vae.encode(sample, return_dict=True).latent_dist.parameters
        return parameters


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
    """Export a local diffusers Stable Diffusion torch folder to ONNX.

    Reads what ``save_pretrained`` of one of :data:`SOURCE_PIPELINES` writes (SD 1.x/2.x,
    img2img, inpainting with a 9-channel UNet, SDXL and SDXL img2img). Every model is traced with
    ``torch.onnx.export(dynamo=True)``; batch, height and width are dynamic everywhere, and so is
    the token sequence length. Inputs and outputs are named as diffusers' and optimum's ONNX
    pipelines feed and read them:

    * ``text_encoder``: ``input_ids`` (int32) -> ``last_hidden_state``, ``pooler_output``, and
      for SDXL every layer's ``hidden_states.N`` (SDXL conditions on the penultimate one).
    * ``text_encoder_2`` (SDXL): ``input_ids`` -> ``text_embeds`` (the pooled projection),
      ``last_hidden_state``, ``hidden_states.N``.
    * ``unet``: ``sample``, ``timestep``, ``encoder_hidden_states`` and for SDXL ``text_embeds``
      and ``time_ids`` -> ``out_sample``. The timestep is a 1-D float tensor in the weights' dtype,
      as in diffusers' convert script.
    * ``vae_encoder``: ``sample`` -> ``latent_parameters`` (mean and log-variance, unscaled).
    * ``vae_decoder``: ``latent_sample`` -> ``sample``.

    The output folder is assembled in a temporary sibling and moved into place at the end, so an
    interrupted export leaves no half-written ``output_dir``.

    Args:
        pipeline_dir: A folder written by ``save_pretrained`` of a diffusers Stable Diffusion pipeline.
        output_dir: Where to write the ONNX layout; must be missing or empty.
        fp16: Export half-precision weights, so every float input and output is float16.
        opset: ONNX opset version to export with.
        progress: Show a tqdm progress bar over the models.

    Returns:
        ``output_dir`` as a ``Path``.

    Raises:
        FileNotFoundError: ``pipeline_dir``, its ``model_index.json`` or a component folder is missing.
        ValueError: ``pipeline_dir`` is not one of the supported pipelines, or a component has an
            unexpected class.
        FileExistsError: ``output_dir`` exists and is not empty.
    """
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL  # noqa: PLC0415
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel  # noqa: PLC0415
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: PLC0415

    source = Path(pipeline_dir)
    target = Path(output_dir)
    source_index, kind = _read_source_index(source)
    require_missing_or_empty(target)
    xl = "text_encoder_2" in kind.components

    dtype = torch.float16 if fp16 else torch.float32
    tokenizer = CLIPTokenizer.from_pretrained(source / "tokenizer")
    # Loading in the target dtype (rather than .to() afterwards) lets diffusers keep the modules
    # that it must keep in float32; low_cpu_mem_usage=False only silences an accelerate notice.
    text_encoders: list[Any] = [CLIPTextModel.from_pretrained(source / "text_encoder", dtype=dtype)]
    if xl:
        text_encoders.append(CLIPTextModelWithProjection.from_pretrained(source / "text_encoder_2", dtype=dtype))
    unet = UNet2DConditionModel.from_pretrained(source / "unet", torch_dtype=dtype, low_cpu_mem_usage=False)
    vae = AutoencoderKL.from_pretrained(source / "vae", torch_dtype=dtype, low_cpu_mem_usage=False)
    components = [
        *_text_components(source, tokenizer, text_encoders, hidden_states=xl),
        _unet_component(source, tokenizer, unet, dtype, xl=xl, pooled_dim=_pooled_dim(text_encoders)),
        *_vae_components(source / "vae" / "config.json", vae, dtype, latent_size=int(unet.config.sample_size)),
    ]

    with publish_atomically(target) as staging:
        _export_all(components, staging, opset, progress)
        for folder in ("tokenizer", *(["tokenizer_2"] if xl else []), "scheduler"):
            shutil.copytree(source / folder, staging / folder)
        _write_onnx_index(staging / "model_index.json", source_index, kind, [c.name for c in components])
    return target


def export_vae(vae_dir: str | Path, output_dir: str | Path, *, latent_size: int = 8, opset: int = 20) -> list[Path]:
    """Export a torch ``AutoencoderKL`` folder to ``vae_encoder/`` and ``vae_decoder/`` in ``output_dir``.

    For swapping the VAE of an exported pipeline (any number of blocks: the pipelines read the
    scale factor from the ``config.json`` written beside each model).

    Args:
        vae_dir: A folder written by ``AutoencoderKL.save_pretrained``.
        output_dir: The ONNX pipeline folder; its ``vae_encoder/`` and ``vae_decoder/`` must be
            missing or empty.
        latent_size: Latent height of the example inputs.
        opset: ONNX opset version.

    Returns:
        The two model paths.
    """
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL  # noqa: PLC0415

    source = Path(vae_dir)
    vae = AutoencoderKL.from_pretrained(source, low_cpu_mem_usage=False)
    components = _vae_components(source / "config.json", vae, torch.float32, latent_size=latent_size)
    for component in components:
        require_missing_or_empty(Path(output_dir) / component.name)
    return _export_all(components, Path(output_dir), opset, progress=False)


def _export_all(components: list[_Component], root: Path, opset: int, progress: bool) -> list[Path]:
    paths = []
    bar = tqdm(components, desc="Exporting to ONNX", unit="model", disable=not progress)
    for component in bar:
        bar.set_postfix_str(component.name)
        model_path = root / component.name / _ONNX_FILENAME
        _export_component(component, model_path, opset)
        # The path form of the checker reads external data from beside the model; the in-memory
        # form would fail on models over 2 GB.
        onnx.checker.check_model(str(model_path))
        _check_io_names(component, model_path)
        shutil.copyfile(component.config_file, model_path.parent / "config.json")
        paths.append(model_path)
    return paths


def _read_source_index(pipeline_dir: Path) -> tuple[dict[str, Any], _SourceKind]:
    """Read ``model_index.json`` and check that it describes a supported torch pipeline."""
    expected = f"a folder written by save_pretrained of {', '.join(SOURCE_PIPELINES)}"
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
    if isinstance(pipeline_class, str) and pipeline_class.startswith(("Onnx", "ORT")):
        raise ValueError(f"{index_path}: {pipeline_class} is an ONNX pipeline already; expected {expected}")
    kind = SOURCE_PIPELINES.get(str(pipeline_class))
    if kind is None:
        raise ValueError(f"{index_path}: pipeline class {pipeline_class!r} is not supported; expected {expected}")

    for component in (*kind.components, "scheduler"):
        entry = index.get(component)
        if entry is None:
            raise ValueError(f"{index_path}: no {component!r} component; expected {expected}")
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) for x in entry)):
            raise ValueError(f"{index_path}: component {component!r} should be a [library, class] pair, got {entry!r}")
        accepted = kind.components.get(component)
        if accepted is not None and entry[1] not in accepted:
            raise ValueError(
                f"{index_path}: component {component!r} has class {entry[1]}, expected {' or '.join(accepted)}"
            )
        if not (pipeline_dir / component).is_dir():
            raise FileNotFoundError(
                f"{pipeline_dir / component} not found; model_index.json lists {component!r} as {entry[1]}"
            )
    return index, kind


# Example dims are chosen pairwise distinct (batch 2, width = height + one downsampling step) so
# that the tracer cannot mistake two independent dims for one. The values come from private
# generators, so exporting leaves the caller's torch RNG alone.
_BATCH: Final = 2


def _example_ids(tokenizer: CLIPTokenizer) -> torch.Tensor:
    ids: torch.Tensor = tokenizer(
        ["a photo of a cat", "a drawing of a dog"],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(torch.int32)
    return ids


def _pooled_dim(text_encoders: list[Any]) -> int:
    return int(text_encoders[-1].config.projection_dim)


def _text_components(
    source: Path, tokenizer: CLIPTokenizer, text_encoders: list[Any], *, hidden_states: bool
) -> list[_Component]:
    components = []
    for index, encoder in enumerate(text_encoders):
        name = "text_encoder" if index == 0 else f"text_encoder_{index + 1}"
        head = ("text_embeds", "last_hidden_state") if index else ("last_hidden_state", "pooler_output")
        layers = int(encoder.config.num_hidden_layers)
        tail = tuple(f"hidden_states.{i}" for i in range(layers + 1)) if hidden_states else ()
        components.append(
            _Component(
                name=name,
                module=_TextEncoder(encoder, hidden_states=hidden_states).eval(),
                example_inputs=(_example_ids(tokenizer),),
                input_names=("input_ids",),
                output_names=(*head, *tail),
                dynamic_shapes={"input_ids": {0: "batch", 1: "sequence"}},
                config_file=source / name / "config.json",
            )
        )
    return components


def _unet_component(
    source: Path, tokenizer: CLIPTokenizer, unet: Any, dtype: torch.dtype, *, xl: bool, pooled_dim: int
) -> _Component:
    generator = torch.Generator().manual_seed(0)
    factor = 2 ** (len(unet.config.block_out_channels) - 1)
    height = int(unet.config.sample_size)
    width = height + factor
    sequence: int = tokenizer.model_max_length
    latents = torch.randn(_BATCH, int(unet.config.in_channels), height, width, generator=generator, dtype=dtype)
    timestep = torch.full((_BATCH,), 981.0, dtype=dtype)
    hidden = torch.randn(_BATCH, sequence, int(unet.config.cross_attention_dim), generator=generator, dtype=dtype)
    image_dims = {0: "batch", 2: "height", 3: "width"}
    dynamic = {
        "sample": image_dims,
        "timestep": {0: "batch"},
        "encoder_hidden_states": {0: "batch", 1: "sequence"},
    }
    if not xl:
        return _Component(
            name="unet",
            module=_UNet(unet).eval(),
            example_inputs=(latents, timestep, hidden),
            input_names=("sample", "timestep", "encoder_hidden_states"),
            # The output must not reuse an input name; diffusers calls it out_sample.
            output_names=("out_sample",),
            dynamic_shapes=dynamic,
            config_file=source / "unet" / "config.json",
        )
    text_embeds = torch.randn(_BATCH, pooled_dim, generator=generator, dtype=dtype)
    time_ids = torch.tensor([[64.0, 72.0, 0.0, 0.0, 64.0, 72.0]] * _BATCH, dtype=dtype)
    return _Component(
        name="unet",
        module=_UNetXL(unet).eval(),
        example_inputs=(latents, timestep, hidden, text_embeds, time_ids),
        input_names=("sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"),
        output_names=("out_sample",),
        dynamic_shapes={**dynamic, "text_embeds": {0: "batch"}, "time_ids": {0: "batch"}},
        config_file=source / "unet" / "config.json",
    )


def _vae_components(config_file: Path, vae: Any, dtype: torch.dtype, *, latent_size: int) -> list[_Component]:
    generator = torch.Generator().manual_seed(1)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    height, width = latent_size, latent_size + 2
    image = torch.randn(
        _BATCH, int(vae.config.in_channels), height * factor, width * factor, generator=generator, dtype=dtype
    )
    latents = torch.randn(_BATCH, int(vae.config.latent_channels), height, width, generator=generator, dtype=dtype)
    image_dims = {0: "batch", 2: "height", 3: "width"}
    return [
        _Component(
            name="vae_encoder",
            module=_VaeEncoder(vae).eval(),
            example_inputs=(image,),
            input_names=("sample",),
            output_names=("latent_parameters",),
            dynamic_shapes={"sample": image_dims},
            config_file=config_file,
        ),
        _Component(
            name="vae_decoder",
            module=_VaeDecoder(vae).eval(),
            example_inputs=(latents,),
            input_names=("latent_sample",),
            output_names=("sample",),
            dynamic_shapes={"latent_sample": image_dims},
            config_file=config_file,
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


def _write_onnx_index(path: Path, source_index: dict[str, Any], kind: _SourceKind, models: list[str]) -> None:
    xl = kind.onnx_class.startswith("ORT")
    # optimum's loader ignores these entries' classes; diffusers' needs OnnxRuntimeModel.
    onnx_model = ["diffusers", "OnnxRuntimeModel"]
    index: dict[str, Any] = {
        "_class_name": kind.onnx_class,
        "_diffusers_version": importlib.metadata.version("diffusers"),
        "scheduler": source_index["scheduler"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        **{name: onnx_model for name in models},
    }
    if xl:
        index["tokenizer_2"] = ["transformers", "CLIPTokenizer"]
    else:
        index |= {"feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False}
    for setting in _PIPELINE_SETTINGS:
        if setting in source_index:
            index[setting] = source_index[setting]
    path.write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def export_optimized(src: Path, dst: Path, target: str, *, fp16: bool, opset: int) -> Path:
    """Export into a scratch folder beside ``dst``, then write the optimized copy to ``dst``."""
    from .optimize import optimize_folder  # noqa: PLC0415  (imports onnxruntime.transformers)

    require_missing_or_empty(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{dst.name}-raw-", dir=dst.parent))
    try:
        export_onnx(src, scratch / "onnx", fp16=fp16, opset=opset, progress=False)
        if dst.exists():
            dst.rmdir()  # checked empty above
        optimize_folder(scratch / "onnx", dst, target=target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return dst
