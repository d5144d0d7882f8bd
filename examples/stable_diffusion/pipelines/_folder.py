"""Reading an ONNX Stable Diffusion folder: diffusers' layout and optimum's.

Both put one ``model.onnx`` per component folder beside ``model_index.json``, ``tokenizer/`` and
``scheduler/``. They differ in what else is there: optimum writes each component's ``config.json``
beside its model, a ``vae_encoder`` whose output is the latent distribution's parameters
(``latent_parameters``), SDXL's ``text_encoder_2/`` and ``tokenizer_2/``, and ``ORT…`` pipeline
class names; diffusers' convert script writes no configs and a sampled ``latent_sample``. This
module answers the questions the pipelines ask of a folder whichever wrote it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import CLIPTokenizer

import ortbind

__all__ = ["DEFAULT_VAE_SCALING_FACTOR", "ModelFolder", "VaeSettings"]

# SD 1.x/2.x VAEs all use this; a VAE config.json next to the decoder overrides it.
DEFAULT_VAE_SCALING_FACTOR = 0.18215
# What diffusers' ONNX pipelines assume when nothing in the folder says otherwise.
DEFAULT_VAE_SCALE_FACTOR = 8


@dataclass
class VaeSettings:
    """What the pipelines need to know of a VAE besides its two ONNX models.

    Attributes:
        scaling_factor: Latents are multiplied by it after encoding and divided before decoding.
        scale_factor: Image pixels per latent pixel, ``2 ** (len(block_out_channels) - 1)``.
        latents_mean: Per-channel mean some VAEs normalize latents with, or None.
        latents_std: Per-channel standard deviation paired with ``latents_mean``, or None.
    """

    scaling_factor: float = DEFAULT_VAE_SCALING_FACTOR
    scale_factor: int = DEFAULT_VAE_SCALE_FACTOR
    latents_mean: list[float] | None = None
    latents_std: list[float] | None = None


class ModelFolder:
    """An ONNX Stable Diffusion folder, in diffusers' or optimum's layout.

    Args:
        root: The folder holding ``model_index.json``.

    Raises:
        FileNotFoundError: There is no ``model_index.json``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        index = self.root / "model_index.json"
        if not index.is_file():
            raise FileNotFoundError(
                f"{self.root}: no model_index.json; expected an ONNX Stable Diffusion folder "
                f"(as written by `python -m examples.stable_diffusion.export`, diffusers or optimum)"
            )
        self.index: dict[str, Any] = json.loads(index.read_text(encoding="utf-8"))

    @property
    def class_name(self) -> str:
        """The pipeline class ``model_index.json`` names (``OnnxStableDiffusionPipeline``, ``ORT…``)."""
        return str(self.index.get("_class_name", ""))

    def has_model(self, name: str) -> bool:
        """Whether the folder has ``name/model.onnx``."""
        return (self.root / name / "model.onnx").is_file()

    def require(self, names: list[str], pipeline: str) -> None:
        """Raise a ``FileNotFoundError`` naming every part of ``names`` the folder lacks."""
        parts = [_part(name) for name in names]
        missing = [part for part in parts if not (self.root / part).exists()]
        if missing:
            raise FileNotFoundError(f"{self.root}: missing {', '.join(missing)}; {pipeline} needs {', '.join(parts)}")

    def session(self, name: str, device: str | Any, **session_kwargs: Any) -> ortbind.TorchSession:
        """A :class:`ortbind.TorchSession` of ``name/model.onnx``."""
        return ortbind.TorchSession(self.root / name / "model.onnx", device, **session_kwargs)

    def config(self, name: str) -> dict[str, Any] | None:
        """``name/config.json`` (for the VAE models also the torch ``vae/config.json``), or None."""
        candidates = [self.root / name / "config.json"]
        if name.startswith("vae"):
            candidates += [self.root / other / "config.json" for other in ("vae_decoder", "vae_encoder", "vae")]
        for candidate in candidates:
            if candidate.is_file():
                loaded: dict[str, Any] = json.loads(candidate.read_text(encoding="utf-8"))
                return loaded
        return None

    def tokenizer(self, name: str = "tokenizer") -> CLIPTokenizer:
        """The CLIP tokenizer in ``name/``."""
        tokenizer: CLIPTokenizer = CLIPTokenizer.from_pretrained(self.root / name)
        return tokenizer

    def scheduler_config(self) -> dict[str, Any]:
        """``scheduler/scheduler_config.json``."""
        path = self.root / "scheduler" / "scheduler_config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{self.root}: missing scheduler/scheduler_config.json")
        config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return config

    def vae_settings(self, vae_decoder: ortbind.TorchSession) -> VaeSettings:
        """The VAE's scaling factor and spatial scale factor, from its config or its decoder.

        The scale factor comes, in order, from ``block_out_channels`` in the VAE's ``config.json``
        (as diffusers' torch pipelines derive it), from the decoder's declared output dims when
        they are expressions such as ``8*height`` (the dynamo exporter writes those), or else is
        8, the value diffusers' ONNX pipelines assume.
        """
        config = self.config("vae_decoder") or {}
        settings = VaeSettings(
            scaling_factor=float(config.get("scaling_factor", DEFAULT_VAE_SCALING_FACTOR)),
            latents_mean=config.get("latents_mean"),
            latents_std=config.get("latents_std"),
        )
        blocks = config.get("block_out_channels")
        if isinstance(blocks, list) and blocks:
            settings.scale_factor = 2 ** (len(blocks) - 1)
        else:
            settings.scale_factor = _declared_scale_factor(vae_decoder) or DEFAULT_VAE_SCALE_FACTOR
        return settings

    def unet_sample_size(self) -> int | None:
        """The UNet's ``sample_size`` (latent pixels of the default image size), when its config says."""
        size = (self.config("unet") or {}).get("sample_size")
        return int(size) if isinstance(size, int) else None

    def unet_downsampling(self) -> int | None:
        """How many times the UNet halves the latents (``2 ** (len(block_out_channels) - 1)``), when its config says."""
        blocks = (self.config("unet") or {}).get("block_out_channels")
        return 2 ** (len(blocks) - 1) if isinstance(blocks, list) and blocks else None


_FOLDERS = ("tokenizer", "tokenizer_2", "scheduler")


def _part(name: str) -> str:
    """The path a component lives at: ``unet/model.onnx``, or ``tokenizer/`` for the non-models."""
    return f"{name}/" if name in _FOLDERS else f"{name}/model.onnx"


_MULTIPLE = re.compile(r"^\s*(\d+)\s*\*\s*[A-Za-z_]\w*\s*$")


def _declared_scale_factor(vae_decoder: ortbind.TorchSession) -> int | None:
    """``8`` from a decoder whose output height is declared ``8*height``; None if not that form."""
    try:
        dims = vae_decoder.spec.output("sample").dims
    except KeyError:
        return None
    if dims is None or len(dims) != 4:
        return None
    factors = {match.group(1) for dim in dims[2:] if isinstance(dim, str) and (match := _MULTIPLE.match(dim))}
    return int(factors.pop()) if len(factors) == 1 else None
