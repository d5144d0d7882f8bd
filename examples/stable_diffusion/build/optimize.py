"""ONNX Runtime's transformer optimizer over an exported Stable Diffusion folder.

``onnxruntime.transformers.optimizer`` fuses the patterns of CLIP, UNet and VAE graphs into ORT's
contrib ops (fused multi-head attention, LayerNorm/SkipLayerNorm, Gelu/BiasGelu and, for CUDA,
GroupNorm, BiasSplitGelu, NhwcConv, packed QKV) and can convert the weights to float16. This is
what makes a GPU export the fast one. Fusions that only the CUDA provider implements are left out
for ``target="cpu"``, so an optimized CPU export still runs on ``CPUExecutionProvider``.

Used by ``python -m examples.stable_diffusion.export SRC DST --optimize``; on its own::

    python -m examples.stable_diffusion.optimize sd-onnx sd-onnx-opt --target cuda --fp16
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import onnx
from onnxruntime.transformers.fusion_options import FusionOptions
from onnxruntime.transformers.optimizer import optimize_model

__all__ = ["COMPONENTS", "fusion_options", "optimize_folder"]

COMPONENTS: Mapping[str, str] = {
    "text_encoder": "clip",
    "text_encoder_2": "clip",
    "unet": "unet",
    "vae_encoder": "vae",
    "vae_decoder": "vae",
}
"""Component folder -> the optimizer's model type."""

# Files above this size must keep their weights in external data (protobuf's 2 GB limit).
_EXTERNAL_DATA_BYTES = 1 << 30


def fusion_options(model_type: str, *, target: str, fp16: bool) -> FusionOptions:
    """The optimizer's FusionOptions for a component on ``target`` (``"cpu"`` or ``"cuda"``)."""
    options = FusionOptions(model_type)
    if target == "cpu":
        # Contrib ops the CPU provider has no kernel for.
        for name in (
            "enable_nhwc_conv",
            "enable_group_norm",
            "enable_skip_group_norm",
            "enable_bias_splitgelu",
            "enable_bias_add",
            "enable_packed_qkv",
            "enable_packed_kv",
        ):
            setattr(options, name, False)
    else:
        # Packed Q/K/V kernels exist for float16 only (as ORT's own SD pipeline script decides).
        options.enable_packed_kv = fp16 and options.enable_packed_kv
        options.enable_packed_qkv = fp16 and options.enable_packed_qkv
    return options


def _is_float32(model: onnx.ModelProto) -> bool:
    return any(t.data_type == onnx.TensorProto.FLOAT for t in model.graph.initializer)


def optimize_folder(
    source: str | Path,
    target_dir: str | Path,
    *,
    target: str = "cuda",
    fp16: bool = False,
    progress: bool = True,
) -> dict[str, dict[str, int]]:
    """Write an optimized copy of an exported SD folder (diffusers or optimum layout).

    Args:
        source: The exported folder (``model_index.json``, ``unet/model.onnx``, ...).
        target_dir: Where the optimized copy goes; must not exist yet.
        target: ``"cuda"`` (every fusion ORT's CUDA provider runs) or ``"cpu"``.
        fp16: Convert float32 weights and IO to float16 (CUDA only; an fp16 export is kept as is).
        progress: Print one line per component.

    Returns:
        Component -> fused operator counts, as the optimizer reports them.

    Raises:
        ValueError: ``target`` is neither, fp16 for CPU, or ``target_dir`` exists.
    """
    if target not in ("cpu", "cuda"):
        raise ValueError(f"target: expected 'cpu' or 'cuda', got {target!r}")
    if fp16 and target == "cpu":
        raise ValueError("fp16: ORT's CPU provider has few, slow float16 kernels; optimize fp16 for target='cuda'")
    src, dst = Path(source), Path(target_dir)
    if dst.exists():
        raise ValueError(f"{dst}: already exists; pass a new folder")
    # Tokenizers, scheduler and configs are copied as they are; the models are rewritten below.
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.onnx", "*.onnx_data", "*.onnx.data", "*.pb"))
    stats: dict[str, dict[str, int]] = {}
    for component, model_type in COMPONENTS.items():
        path = src / component / "model.onnx"
        if not path.is_file():
            continue
        header = onnx.load(str(path), load_external_data=False)
        convert = fp16 and _is_float32(header)
        model = optimize_model(
            str(path),
            model_type=model_type,
            num_heads=0,  # deduced from the graph
            hidden_size=0,
            opt_level=0,  # the Python fusions only; ORT optimizes again when the session loads
            optimization_options=fusion_options(model_type, target=target, fp16=fp16),
            use_gpu=target == "cuda",
        )
        if convert:
            model.convert_float_to_float16(keep_io_types=False)
        out = dst / component / "model.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        external = sum(f.stat().st_size for f in path.parent.iterdir() if f.is_file()) > _EXTERNAL_DATA_BYTES
        model.save_model_to_file(str(out), use_external_data_format=external)
        fused = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
        stats[component] = fused
        if progress:
            summary = ", ".join(f"{k} {v}" for k, v in sorted(fused.items())) or "nothing fused"
            print(f"optimized {component} ({model_type}, {target}{', fp16' if convert else ''}): {summary}")
    if not stats:
        raise ValueError(f"{src}: no component model found (expected e.g. unet/model.onnx)")
    return stats
