"""Tiny Stable Diffusion torch pipelines with random weights, built fully offline: random weights, for shapes.

The command lines, the page and the server draw with the trained digits model (``models/``);
these are for what it does not cover: SDXL's two text encoders, SD's VAE factor 8, and tests that
compare the pipelines with diffusers on every shape. They keep the real structure (CLIP text
encoders, a UNet2DConditionModel, an AutoencoderKL, a CLIP BPE tokenizer over the 256 byte
characters, so any prompt tokenizes) at a size that exports in seconds and runs a whole pipeline
on a CPU in milliseconds. Their images are noise.

Three kinds, each what the matching diffusers ``save_pretrained`` writes:

* ``"sd"``: SD 1.x-like text-to-image (``StableDiffusionPipeline``; img2img uses it too).
* ``"inpaint"``: an inpainting UNet with 9 input channels (``StableDiffusionInpaintPipeline``).
* ``"sdxl"``: two text encoders, the second with projection, and a UNet with the
  ``text_time`` added conditions (``StableDiffusionXLPipeline``).

Every builder leaves the global torch RNG state as it was; the same seed gives byte-identical weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Final, Literal

import torch

from ._files import publish_atomically

# diffusers and transformers are imported inside the functions: see the note in export.py.

__all__ = ["TINY_KINDS", "TinyKind", "build_tiny_pipeline", "tiny_vae"]

TinyKind = Literal["sd", "inpaint", "sdxl"]
TINY_KINDS: Final[tuple[TinyKind, ...]] = ("sd", "inpaint", "sdxl")

_TINY_MODEL_MAX_LENGTH: Final = 77
_TINY_MERGES: Final = ("t h", "th e</w>", "o f</w>", "a n</w>", "i n", "in g</w>", "c a", "ca t</w>")
_BOS_TOKEN: Final = "<|startoftext|>"
_EOS_TOKEN: Final = "<|endoftext|>"
_HIDDEN: Final = 32


def build_tiny_pipeline(output_dir: str | Path, *, kind: TinyKind = "sd", seed: int = 0) -> Path:
    """Build a tiny Stable Diffusion torch pipeline with random weights, fully offline.

    The UNet has two resolution levels, so latent height and width must be even (images are
    multiples of 16 pixels); the four-block VAE scales by 8 like SD's. The scheduler is SD 1.5's
    PNDM with ``skip_prk_steps``.

    Args:
        output_dir: Where to save the pipeline; must be missing or empty.
        kind: ``"sd"``, ``"inpaint"`` or ``"sdxl"`` (see the module docstring).
        seed: Seed for the random weights.

    Returns:
        ``output_dir`` as a ``Path``, loadable with the diffusers pipeline class of that kind.

    Raises:
        FileExistsError: ``output_dir`` exists and is not empty.
        ValueError: ``kind`` is not one of :data:`TINY_KINDS`.
    """
    from diffusers.schedulers.scheduling_pndm import PNDMScheduler  # noqa: PLC0415
    from transformers import CLIPTokenizer  # noqa: PLC0415

    if kind not in TINY_KINDS:
        raise ValueError(f"kind: expected one of {', '.join(TINY_KINDS)}, got {kind!r}")
    target = Path(output_dir)
    with publish_atomically(target) as staging:
        tokenizer_files = staging / ".tokenizer-source"
        vocab = _write_tiny_tokenizer_files(tokenizer_files)
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_files)
        shutil.rmtree(tokenizer_files)
        scheduler = PNDMScheduler(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            skip_prk_steps=True,
            set_alpha_to_one=False,
            steps_offset=1,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if kind == "sdxl":
                pipeline = _sdxl(tokenizer, vocab, scheduler)
            else:
                pipeline = _sd(tokenizer, vocab, scheduler, inpaint=kind == "inpaint")
        pipeline.save_pretrained(staging)
    return target


def tiny_vae(blocks: int = 4) -> Any:
    """A tiny ``AutoencoderKL`` with ``blocks`` blocks: it scales images by ``2 ** (blocks - 1)``.

    Uses the global torch RNG; callers fork it (see :func:`build_tiny_pipeline`).
    """
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL  # noqa: PLC0415

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=(32, 32, 64, 64, 64)[:blocks],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    )


def _text_config(vocab: dict[str, int]) -> Any:
    from transformers import CLIPTextConfig  # noqa: PLC0415

    return CLIPTextConfig(
        vocab_size=1000,
        hidden_size=_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_TINY_MODEL_MAX_LENGTH,
        projection_dim=_HIDDEN,
        bos_token_id=vocab[_BOS_TOKEN],
        eos_token_id=vocab[_EOS_TOKEN],
        pad_token_id=vocab[_EOS_TOKEN],
    )


def _sd(tokenizer: Any, vocab: dict[str, int], scheduler: Any, *, inpaint: bool) -> Any:
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel  # noqa: PLC0415
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (  # noqa: PLC0415
        StableDiffusionPipeline,
    )
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint import (  # noqa: PLC0415
        StableDiffusionInpaintPipeline,
    )
    from transformers import CLIPTextModel  # noqa: PLC0415

    text_encoder = CLIPTextModel(_text_config(vocab))
    unet = UNet2DConditionModel(
        sample_size=8,
        # Inpainting UNets take the latents, the mask and the masked image's latents stacked.
        in_channels=9 if inpaint else 4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=_HIDDEN,
        attention_head_dim=2,
        norm_num_groups=32,
    )
    # Four blocks, three downsamplings: the VAE scales by 8 like SD's.
    vae = tiny_vae(4)
    cls: Any = StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
    return cls(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _sdxl(tokenizer: Any, vocab: dict[str, int], scheduler: Any) -> Any:
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel  # noqa: PLC0415
    from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (  # noqa: PLC0415
        StableDiffusionXLPipeline,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection  # noqa: PLC0415

    text_encoder = CLIPTextModel(_text_config(vocab))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(vocab))
    time_embed_dim = 8
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        # Both encoders' penultimate hidden states, concatenated.
        cross_attention_dim=2 * _HIDDEN,
        attention_head_dim=2,
        norm_num_groups=32,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        # Six time ids (original size, crop corner, target size) plus the pooled text embedding.
        projection_class_embeddings_input_dim=6 * time_embed_dim + _HIDDEN,
    )
    return StableDiffusionXLPipeline(
        vae=tiny_vae(4),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )


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
