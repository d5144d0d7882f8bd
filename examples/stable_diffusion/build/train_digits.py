"""Train the digits model: a tiny Stable Diffusion that draws the handwritten digit its prompt names.

Everything is trained from scratch, on a CPU, from scikit-learn's bundled handwritten digits
(``sklearn.datasets.load_digits``: 1797 grayscale 8×8 images with labels, no download), upscaled
bilinearly to 32×32, grey copied to three channels:

1. a VAE: diffusers' ``AutoencoderKL`` with 3 blocks, so it scales by 4 (latents 4×8×8);
2. a ``UNet2DConditionModel`` with cross-attention and a tiny ``CLIPTextModel``, trained jointly on
   epsilon prediction with 10% of the prompts dropped to ``""`` (for classifier-free guidance);
   the weights kept are an exponential moving average (EMA);
3. an inpainting UNet (9 input channels: latents, mask, masked-image latents), started from the
   UNet of step 2 with the 5 new input channels at zero, as SD's inpainting models were made.

The tokenizer is a ``CLIPTokenizer`` over a hand-written vocabulary: the 256 byte characters (so
any prompt tokenizes) plus one token for each word of the training prompts ("seven", "handwritten").

Two diffusers folders come out, in float16 safetensors::

    digits/           StableDiffusionPipeline (text-to-image, image-to-image)
    digits-inpaint/   StableDiffusionInpaintPipeline; its vae/, text_encoder/ and tokenizer/ are
                      relative symbolic links to those of digits/ (the same weights, stored once)

Both load offline with ``from_pretrained(dir, torch_dtype=torch.float32)``. The script ends by
scoring the saved weights as the test suite's quality gate does: an ``SVC`` trained on the real
digits classifies generated ones (see :func:`classify`)::

    OMP_WAIT_POLICY=PASSIVE python -m examples.stable_diffusion.build.train_digits [--out DIR] [--inpaint-out DIR]

With the same arguments, thread count and library versions, a run writes the same weights.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812  (torch's own convention)

__all__ = [
    "DIGIT_WORDS",
    "IMAGE_SIZE",
    "classify",
    "digit_classifier",
    "digit_features",
    "digit_images",
    "gate_latents",
    "gate_prompts",
    "img2img_sources",
    "inpaint_sources",
    "lower_half_mask",
    "main",
    "to_pixels",
]

IMAGE_SIZE: Final = 32
"""Side of the images the model is trained on and draws, in pixels (the digits' 8 times 4)."""
LATENT_SIZE: Final = 8
"""Side of the latents: the VAE has three blocks, two downsamplings, so it scales by 4."""
DIGIT_WORDS: Final = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Twelve ways to ask for a digit; {n} is the numeral, {w} the word, {a} "a" or "an".
_TEMPLATES: Final = (
    "{n}",
    "{w}",
    "{a} {n}",
    "{a} {w}",
    "a handwritten {n}",
    "a handwritten {w}",
    "the digit {n}",
    "the digit {w}",
    "the number {n}",
    "the number {w}",
    "handwritten digit {n}",
    "handwritten {w}",
)
_MODEL_MAX_LENGTH: Final = 16
"""Tokens per prompt, start and end tokens included; the longest training prompt takes 5."""
_BOS: Final = "<|startoftext|>"
_EOS: Final = "<|endoftext|>"
_TEXT_HIDDEN: Final = 64

# SD 1.x's noise schedule, so every diffusers scheduler configures itself for the model as for SD.
_SCHEDULE: Final[dict[str, Any]] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}
_EMA_DECAY: Final = 0.999
_DROP_PROMPT: Final = 0.1
_INPAINT_CHANNELS: Final = 9


# ---------------------------------------------------------------------------------------------
# Data, prompts and the classifier (the quality gate in tests/ uses these too)
# ---------------------------------------------------------------------------------------------


def digit_images() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1797 handwritten digits as the model sees them, and their labels.

    Returns:
        Images as float32 (N, 3, 32, 32) in [-1, 1] (upscaled bilinearly from 8×8, grey in all
        three channels) and labels as int64 (N,).
    """
    from sklearn.datasets import load_digits  # noqa: PLC0415  (lazy: sklearn imports take a second)

    digits = load_digits()
    small = torch.from_numpy(np.asarray(digits.images, dtype=np.float32) / 16.0).unsqueeze(1)
    large = F.interpolate(small, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    images = (large.clamp(0, 1) * 2 - 1).repeat(1, 3, 1, 1).contiguous()
    return images, torch.from_numpy(np.asarray(digits.target, dtype=np.int64))


def to_pixels(images: torch.Tensor) -> np.ndarray:
    """Images (N, 3, H, W) in [-1, 1] as a pipeline's ``output_type="np"`` gives them: (N, H, W, 3) in [0, 1]."""
    array: np.ndarray = ((images + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return array


def digit_features(pixels: np.ndarray) -> np.ndarray:
    """What the classifier reads of an image: its grey levels average-pooled to 8×8, scaled to 0-16.

    Args:
        pixels: (N, H, W, 3) in [0, 1], H and W multiples of 8 (a pipeline's ``"np"`` output).

    Returns:
        float64 (N, 64), the layout and range of ``load_digits().data``.
    """
    grey = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).mean(dim=3, keepdim=True)
    pooled = F.adaptive_avg_pool2d(grey.permute(0, 3, 1, 2), (8, 8))
    features: np.ndarray = (pooled.flatten(1) * 16).double().numpy()
    return features


def digit_classifier() -> Any:
    """An ``SVC(gamma=0.001, C=10)`` fitted on all 1797 real digits, seen through :func:`digit_features`.

    It is fitted on the digits as the model sees them (upscaled to 32×32, then pooled back), so a
    generated image and a real one go through the same steps. Fitting takes well under a second.
    """
    from sklearn.svm import SVC  # noqa: PLC0415

    images, labels = digit_images()
    classifier = SVC(gamma=0.001, C=10)
    classifier.fit(digit_features(to_pixels(images)), labels.numpy())
    return classifier


def classify(classifier: Any, pixels: np.ndarray) -> np.ndarray:
    """The digit ``classifier`` sees in each image of ``pixels`` ((N, H, W, 3) in [0, 1]), int64 (N,)."""
    predicted: np.ndarray = np.asarray(classifier.predict(digit_features(pixels)), dtype=np.int64)
    return predicted


def prompt_for(digit: int, template: int) -> str:
    """Training prompt number ``template`` (of 12) for ``digit``: "7", "a handwritten seven", "an 8"..."""
    word = DIGIT_WORDS[digit]
    return _TEMPLATES[template].format(n=digit, w=word, a="an" if digit == 8 else "a")


def gate_prompts(seeds: int = 10) -> tuple[list[str], list[int]]:
    """Prompts for every digit times ``seeds``: half "a handwritten 7", half "seven"; and their digits.

    Ordered seed-major: entry ``s * 10 + d`` asks for digit ``d`` with seed ``s``.
    """
    prompts, digits = [], []
    for seed in range(seeds):
        for digit in range(10):
            prompts.append(f"a handwritten {digit}" if seed % 2 == 0 else DIGIT_WORDS[digit])
            digits.append(digit)
    return prompts, digits


def gate_latents(seeds: int = 10, channels: int = 4) -> torch.Tensor:
    """Initial latents for :func:`gate_prompts`: seed ``s`` draws the noise all ten digits of row ``s`` start from."""
    rows = [
        torch.randn(1, channels, LATENT_SIZE, LATENT_SIZE, generator=torch.Generator().manual_seed(seed))
        for seed in range(seeds)
    ]
    return torch.cat([row.repeat(10, 1, 1, 1) for row in rows])


def img2img_sources(digits: Sequence[int]) -> torch.Tensor:
    """A real digit of another class for each entry of ``digits``: (N, 3, 32, 32) in [0, 1].

    Entry ``i`` asking for digit ``d`` starts from the ``i``-th real image (in dataset order) of
    digit ``(d + 1 + i % 9) % 10``, so every target is reached from all nine other digits.
    """
    images, labels = digit_images()
    chosen = []
    for i, digit in enumerate(digits):
        source = (digit + 1 + i % 9) % 10
        chosen.append(images[torch.nonzero(labels == source)[i, 0]])
    return (torch.stack(chosen) + 1) / 2


def inpaint_sources(digits: Sequence[int]) -> torch.Tensor:
    """A real image of each entry of ``digits`` (the ``i``-th of its class in entry ``i``): (N, 3, 32, 32) in [0, 1]."""
    images, labels = digit_images()
    chosen = [images[torch.nonzero(labels == digit)[i, 0]] for i, digit in enumerate(digits)]
    return (torch.stack(chosen) + 1) / 2


def lower_half_mask(count: int) -> torch.Tensor:
    """An inpainting mask, float (N, 1, 32, 32): 1 (repaint) on the lower 16 rows, 0 on the upper ones."""
    mask = torch.zeros(count, 1, IMAGE_SIZE, IMAGE_SIZE)
    mask[:, :, IMAGE_SIZE // 2 :] = 1.0
    return mask


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------


def _bytes_to_unicode() -> list[str]:
    """CLIP's (and GPT-2's) printable stand-in for each of the 256 bytes, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    mapping = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + shifted)
            shifted += 1
    return [mapping[byte] for byte in range(256)]


def _prompt_words() -> list[str]:
    words = {word for template in _TEMPLATES for word in template.split() if not word.startswith("{")}
    return sorted(words | {"a", "an"} | set(DIGIT_WORDS))


def write_tokenizer_files(folder: Path) -> None:
    """Write a CLIP BPE tokenizer in which each word of the training prompts is one token.

    Each word is built by merges from its left end (``s e``, ``se v``, ``sev e``, ``seve n</w>``),
    every step also a vocabulary entry; single characters (digits among them) are tokens already.
    """
    import json  # noqa: PLC0415

    characters = _bytes_to_unicode()
    merges: list[str] = []
    pieces: list[str] = []
    for word in _prompt_words():
        if len(word) < 2:
            continue
        symbols = [*word[:-1], word[-1] + "</w>"]
        merged = symbols[0]
        for symbol in symbols[1:]:
            merge = f"{merged} {symbol}"
            merged += symbol
            if merge not in merges:
                merges.append(merge)
                pieces.append(merged)
    tokens = [*characters, *(f"{c}</w>" for c in characters), *dict.fromkeys(pieces), _BOS, _EOS]
    vocab = {token: index for index, token in enumerate(tokens)}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": _MODEL_MAX_LENGTH,
        "bos_token": _BOS,
        "eos_token": _EOS,
        "pad_token": _EOS,
        "unk_token": _EOS,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("\n".join(["#version: 0.2", *merges]) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def build_tokenizer(scratch: Path) -> Any:
    """The digits tokenizer, checked: every prompt word must come out as exactly one token."""
    from transformers import CLIPTokenizer  # noqa: PLC0415

    write_tokenizer_files(scratch)
    tokenizer = CLIPTokenizer.from_pretrained(scratch)
    for word in [*_prompt_words(), *(str(d) for d in range(10))]:
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise RuntimeError(f"tokenizer: {word!r} became {len(ids)} tokens {ids}, expected one")
    return tokenizer


def _token_ids(tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """Token ids padded to the model length, exactly as the pipelines tokenize prompts."""
    ids: torch.Tensor = tokenizer(
        texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return ids


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def _new_vae() -> Any:
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL  # noqa: PLC0415

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=IMAGE_SIZE,
    )


def _new_text_encoder(tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel  # noqa: PLC0415

    vocab = tokenizer.get_vocab()
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=_TEXT_HIDDEN,
        intermediate_size=2 * _TEXT_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_MODEL_MAX_LENGTH,
        projection_dim=_TEXT_HIDDEN,
        bos_token_id=vocab[_BOS],
        eos_token_id=vocab[_EOS],
        pad_token_id=vocab[_EOS],
    )
    return CLIPTextModel(config)


def _new_unet() -> Any:
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel  # noqa: PLC0415

    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=_TEXT_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def _inpainting_unet(unet: Any) -> Any:
    """A copy of ``unet`` taking 9 input channels; the 5 new ones (mask, masked latents) start at zero."""
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel  # noqa: PLC0415

    config = {**dict(unet.config), "in_channels": _INPAINT_CHANNELS}
    inpaint = UNet2DConditionModel.from_config(config)
    state = unet.state_dict()
    weight = state["conv_in.weight"]
    widened = torch.zeros(weight.shape[0], _INPAINT_CHANNELS, *weight.shape[2:], dtype=weight.dtype)
    widened[:, : weight.shape[1]] = weight
    state["conv_in.weight"] = widened
    inpaint.load_state_dict(state)
    return inpaint


def _new_scheduler() -> Any:
    """SD 1.x's DDIM settings: the folder's default scheduler, and the base the others configure from."""
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler  # noqa: PLC0415

    return DDIMScheduler(**_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def _parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class _Ema:
    """An exponential moving average of a module's weights, with diffusers' EMAModel warm-up."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.average = copy.deepcopy(module).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.updates += 1
        # Early on the average follows the weights closely; else it would keep the random start.
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for average, current in zip(self.average.parameters(), module.parameters(), strict=True):
            average.lerp_(current.detach(), 1 - decay)


class _LossLog:
    """Prints the mean loss of every ``every`` steps with the elapsed time; keeps the means."""

    def __init__(self, name: str, steps: int, every: int) -> None:
        self.name, self.steps, self.every = name, steps, every
        self.started = time.perf_counter()
        self.window: list[float] = []
        self.means: list[float] = []

    def add(self, step: int, loss: float) -> None:
        self.window.append(loss)
        if (step + 1) % self.every == 0 or step + 1 == self.steps:
            mean = sum(self.window) / len(self.window)
            self.means.append(mean)
            self.window = []
            print(
                f"{self.name} step {step + 1:5d}/{self.steps}  loss {mean:.5f}  {self.elapsed():6.0f} s",
                flush=True,
            )

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def train_vae(images: torch.Tensor, *, steps: int, batch: int, seed: int) -> tuple[Any, float]:
    """Train the VAE to reconstruct ``images``; return it and its latent scaling factor.

    The loss is MSE plus half the L1 distance plus a tiny KL term (which only keeps the
    posterior's variance from collapsing). The scaling factor is 1 / std of the latents the
    trained encoder samples over all images, so the UNet sees latents of unit variance, as SD's do.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    vae = _new_vae()
    print(f"VAE: {_parameter_count(vae):,} parameters", flush=True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    log = _LossLog("vae", steps, every=25)
    vae.train()
    for step in range(steps):
        pixels = images[torch.randint(0, len(images), (batch,), generator=generator)]
        posterior = vae.encode(pixels).latent_dist
        reconstruction = vae.decode(posterior.sample(generator=generator)).sample
        loss = (
            F.mse_loss(reconstruction, pixels) + 0.5 * F.l1_loss(reconstruction, pixels) + 1e-6 * posterior.kl().mean()
        )
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        optimizer.step()
        log.add(step, float(loss))
    vae.eval()
    with torch.no_grad():
        posterior = vae.encode(images).latent_dist
        latents = posterior.sample(generator=generator)
        mse = float(F.mse_loss(vae.decode(posterior.mean).sample, images))
    scaling_factor = round(1.0 / float(latents.std()), 4)
    vae.register_to_config(scaling_factor=scaling_factor)
    print(
        f"VAE: {log.elapsed():.0f} s; reconstruction MSE {mse:.5f} (all digits, [-1, 1] scale); "
        f"latent scaling factor {scaling_factor}",
        flush=True,
    )
    return vae, scaling_factor


def _latent_statistics(vae: Any, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image's posterior mean and std: training draws a fresh latent sample from them each step."""
    with torch.no_grad():
        posterior = vae.encode(images).latent_dist
    return posterior.mean.detach(), posterior.std.detach()


def train_unet(
    tokenizer: Any,
    mean: torch.Tensor,
    std: torch.Tensor,
    labels: torch.Tensor,
    scaling_factor: float,
    *,
    steps: int,
    batch: int,
    seed: int,
) -> tuple[Any, Any]:
    """Train the UNet and the text encoder jointly on epsilon prediction; return their EMAs.

    Each step takes ``batch`` random digits, a random training prompt for each (one in ten
    replaced by ``""``, the unconditional prompt classifier-free guidance subtracts), a fresh
    latent sample, noise and a random timestep of SD's 1000-step schedule.
    """
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler  # noqa: PLC0415

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    text_encoder, unet = _new_text_encoder(tokenizer), _new_unet()
    print(
        f"UNet: {_parameter_count(unet):,} parameters; text encoder: {_parameter_count(text_encoder):,}",
        flush=True,
    )
    noise_schedule = DDPMScheduler(**_SCHEDULE, prediction_type="epsilon")
    prompt_ids = torch.stack(
        [_token_ids(tokenizer, [prompt_for(d, t) for t in range(len(_TEMPLATES))]) for d in range(10)]
    )
    empty_ids = _token_ids(tokenizer, [""])[0]
    parameters = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=1e-3)
    unet_ema, text_ema = _Ema(unet, _EMA_DECAY), _Ema(text_encoder, _EMA_DECAY)
    log = _LossLog("unet", steps, every=100)
    unet.train()
    text_encoder.train()
    for step in range(steps):
        index = torch.randint(0, len(labels), (batch,), generator=generator)
        templates = torch.randint(0, len(_TEMPLATES), (batch,), generator=generator)
        ids = prompt_ids[labels[index], templates]
        dropped = torch.rand(batch, generator=generator) < _DROP_PROMPT
        ids = torch.where(dropped[:, None], empty_ids[None, :], ids)
        latents = (mean[index] + std[index] * torch.randn(mean[index].shape, generator=generator)) * scaling_factor
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, noise_schedule.config.num_train_timesteps, (batch,), generator=generator)
        noisy = noise_schedule.add_noise(latents, noise, timesteps)
        hidden = text_encoder(ids, return_dict=False)[0]
        loss = F.mse_loss(unet(noisy, timesteps, hidden, return_dict=False)[0], noise)
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        unet_ema.update(unet)
        text_ema.update(text_encoder)
        log.add(step, float(loss))
    print(f"UNet and text encoder: {log.elapsed():.0f} s", flush=True)
    return unet_ema.average, text_ema.average


def _training_masks(batch: int, generator: torch.Generator) -> torch.Tensor:
    """Random inpainting masks (1: repaint), float (B, 1, 32, 32), on the 4-pixel latent grid.

    One sixth each: the lower half, the upper half, the left half, the right half, a random
    rectangle, the whole image (which keeps the model able to draw from nothing).
    """
    cell = IMAGE_SIZE // LATENT_SIZE
    masks = torch.zeros(batch, 1, IMAGE_SIZE, IMAGE_SIZE)
    kinds = torch.randint(0, 6, (batch,), generator=generator)
    corners = torch.randint(0, LATENT_SIZE - 1, (batch, 2), generator=generator)
    sizes = torch.randint(2, LATENT_SIZE + 1, (batch, 2), generator=generator)
    half = IMAGE_SIZE // 2
    for i, kind in enumerate(kinds.tolist()):
        if kind == 0:
            masks[i, :, half:] = 1
        elif kind == 1:
            masks[i, :, :half] = 1
        elif kind == 2:
            masks[i, :, :, :half] = 1
        elif kind == 3:
            masks[i, :, :, half:] = 1
        elif kind == 4:
            top, left = (int(v) * cell for v in corners[i])
            height, width = (int(v) * cell for v in sizes[i])
            masks[i, :, top : top + height, left : left + width] = 1
        else:
            masks[i] = 1
    return masks


def train_inpainting_unet(
    unet: Any,
    text_encoder: Any,
    vae: Any,
    tokenizer: Any,
    images: torch.Tensor,
    labels: torch.Tensor,
    scaling_factor: float,
    *,
    steps: int,
    batch: int,
    seed: int,
    lr: float,
) -> Any:
    """Fine-tune a 9-channel copy of ``unet`` for inpainting; the VAE and text encoder stay frozen.

    The extra channels are what diffusers' inpainting pipeline stacks after the latents: the mask
    at latent size (nearest) and the VAE latents of the image with the masked part set to 0
    (mid-grey). Returns the EMA of the fine-tuned UNet.
    """
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler  # noqa: PLC0415

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    inpaint = _inpainting_unet(unet).train()
    noise_schedule = DDPMScheduler(**_SCHEDULE, prediction_type="epsilon")
    with torch.no_grad():
        prompt_hidden = torch.stack(
            [
                text_encoder(_token_ids(tokenizer, [prompt_for(d, t) for t in range(len(_TEMPLATES))]))[0]
                for d in range(10)
            ]
        )
        empty_hidden = text_encoder(_token_ids(tokenizer, [""]))[0][0]
    mean, std = _latent_statistics(vae, images)
    optimizer = torch.optim.AdamW(inpaint.parameters(), lr=lr)
    ema = _Ema(inpaint, _EMA_DECAY)
    log = _LossLog("inpaint", steps, every=100)
    for step in range(steps):
        index = torch.randint(0, len(labels), (batch,), generator=generator)
        templates = torch.randint(0, len(_TEMPLATES), (batch,), generator=generator)
        hidden = prompt_hidden[labels[index], templates]
        dropped = torch.rand(batch, generator=generator) < _DROP_PROMPT
        hidden = torch.where(dropped[:, None, None], empty_hidden[None], hidden)
        masks = _training_masks(batch, generator)
        with torch.no_grad():
            masked_pixels = images[index] * (masks < 0.5)
            masked_latents = vae.encode(masked_pixels).latent_dist.sample(generator=generator) * scaling_factor
        latents = (mean[index] + std[index] * torch.randn(mean[index].shape, generator=generator)) * scaling_factor
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, noise_schedule.config.num_train_timesteps, (batch,), generator=generator)
        noisy = noise_schedule.add_noise(latents, noise, timesteps)
        small_masks = F.interpolate(masks, size=(LATENT_SIZE, LATENT_SIZE))
        model_input = torch.cat([noisy, small_masks, masked_latents], dim=1)
        loss = F.mse_loss(inpaint(model_input, timesteps, hidden, return_dict=False)[0], noise)
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(inpaint.parameters(), 1.0)
        optimizer.step()
        ema.update(inpaint)
        log.add(step, float(loss))
    print(f"inpainting UNet: {log.elapsed():.0f} s", flush=True)
    return ema.average


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------

_SHARED_COMPONENTS: Final = ("vae", "text_encoder", "tokenizer")


def save_folders(
    vae: Any, text_encoder: Any, tokenizer: Any, unet: Any, inpaint_unet: Any, out: Path, inpaint_out: Path
) -> None:
    """Write both diffusers folders in float16; the inpainting one links to the shared components.

    Both are written complete first; the inpainting folder's copies of the shared components are
    then checked byte for byte against the text-to-image folder's before links replace them.
    """
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (  # noqa: PLC0415
        StableDiffusionPipeline,
    )
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint import (  # noqa: PLC0415
        StableDiffusionInpaintPipeline,
    )

    common = {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": _new_scheduler(),
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }
    for folder in (out, inpaint_out):
        folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline(unet=unet, **common).to(torch.float16).save_pretrained(out)
    StableDiffusionInpaintPipeline(unet=inpaint_unet, **common).to(torch.float16).save_pretrained(inpaint_out)
    for name in _SHARED_COMPONENTS:
        copied, original = inpaint_out / name, out / name
        copied_files = sorted(p.relative_to(copied) for p in copied.rglob("*") if p.is_file())
        original_files = sorted(p.relative_to(original) for p in original.rglob("*") if p.is_file())
        if copied_files != original_files or any(
            (copied / f).read_bytes() != (original / f).read_bytes() for f in copied_files
        ):
            raise RuntimeError(f"{copied} differs from {original}; cannot link one to the other")
        shutil.rmtree(copied)
        copied.symlink_to(os.path.relpath(original, inpaint_out), target_is_directory=True)


# ---------------------------------------------------------------------------------------------
# Scoring the saved weights
# ---------------------------------------------------------------------------------------------


def _share(hits: np.ndarray) -> str:
    return f"{int(hits.sum())}/{hits.size} ({100 * hits.mean():.1f}%)"


def _per_digit(predicted: np.ndarray, wanted: np.ndarray) -> str:
    return " ".join(f"{d}:{int((predicted[wanted == d] == d).sum())}/{int((wanted == d).sum())}" for d in range(10))


def score(out: Path, inpaint_out: Path, *, steps: int = 25, guidance: float = 5.0) -> dict[str, float]:
    """Score the saved folders with diffusers' torch pipelines and the digit classifier.

    Runs the quality gate's three tasks (tests/examples/test_digits_quality.py runs the same ones
    through ortbind on the ONNX export): text-to-image for 10 digits × 10 seeds, image-to-image
    from real digits of other classes at strength 0.8, inpainting the lower half of real digits.
    Prints and returns the share of images classified as the prompted digit for each.
    """
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (  # noqa: PLC0415
        StableDiffusionPipeline,
    )
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import (  # noqa: PLC0415
        StableDiffusionImg2ImgPipeline,
    )
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint import (  # noqa: PLC0415
        StableDiffusionInpaintPipeline,
    )

    started = time.perf_counter()
    classifier = digit_classifier()
    prompts, digits = gate_prompts()
    wanted = np.asarray(digits)
    common: dict[str, Any] = {"num_inference_steps": steps, "guidance_scale": guidance, "output_type": "np"}
    results: dict[str, float] = {}

    def report(task: str, images: np.ndarray) -> None:
        predicted = classify(classifier, images)
        hits = predicted == wanted
        results[task] = float(hits.mean())
        per_digit = _per_digit(predicted, wanted)
        print(f"score {task}: {_share(hits)} classified as the prompted digit; per digit {per_digit}", flush=True)

    # diffusers' pipelines are typed in part only; they are handled as Any here.
    text_to_image: Any = StableDiffusionPipeline.from_pretrained(out, torch_dtype=torch.float32)
    text_to_image.set_progress_bar_config(disable=True)
    report(
        "txt2img",
        text_to_image(prompts, latents=gate_latents(), generator=torch.Generator().manual_seed(0), **common).images,
    )
    image_to_image: Any = StableDiffusionImg2ImgPipeline(**text_to_image.components)
    image_to_image.set_progress_bar_config(disable=True)
    sources = img2img_sources(digits)
    report(
        "img2img",
        image_to_image(
            prompts, image=sources, strength=0.8, generator=torch.Generator().manual_seed(0), **common
        ).images,
    )
    inpainting: Any = StableDiffusionInpaintPipeline.from_pretrained(inpaint_out, torch_dtype=torch.float32)
    inpainting.set_progress_bar_config(disable=True)
    originals = inpaint_sources(digits)
    mask = lower_half_mask(len(digits))
    inpainted: np.ndarray = inpainting(
        prompts,
        image=originals,
        mask_image=mask,
        height=IMAGE_SIZE,
        width=IMAGE_SIZE,
        generator=torch.Generator().manual_seed(0),
        **common,
    ).images
    report("inpaint", inpainted)
    half = IMAGE_SIZE // 2
    upper = np.abs(inpainted[:, :half] - originals.permute(0, 2, 3, 1).numpy()[:, :half]).mean(axis=(1, 2, 3))
    results["inpaint_upper_half_mean_abs"] = float(upper.mean())
    print(f"inpaint: upper half (kept) mean |difference| {upper.mean():.4f}, worst image {upper.max():.4f}")
    half_blank = originals.permute(0, 2, 3, 1).numpy().copy()
    half_blank[:, IMAGE_SIZE // 2 :] = 0.0
    blank_hits = classify(classifier, half_blank) == wanted
    print(f"baseline: the same digits with the lower half blanked are classified right {_share(blank_hits)}")
    print(f"scoring: {time.perf_counter() - started:.0f} s (DDIM {steps} steps, guidance {guidance})", flush=True)
    return results


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

_MODELS: Final = Path(__file__).resolve().parents[1] / "models"


def main(argv: Sequence[str] | None = None) -> int:
    """Train the digits model, write both folders and print the classifier's scores.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        0 on success; 1 if an output folder already holds files.
    """
    parser = argparse.ArgumentParser(
        prog="python -m examples.stable_diffusion.build.train_digits",
        description="Train a tiny Stable Diffusion on scikit-learn's handwritten digits (CPU, about half an hour).",
    )
    parser.add_argument("--out", type=Path, default=_MODELS / "digits", help="text-to-image folder (missing or empty)")
    parser.add_argument(
        "--inpaint-out", type=Path, default=_MODELS / "digits-inpaint", help="inpainting folder (missing or empty)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: 0)")
    parser.add_argument("--vae-steps", type=int, default=320, help="VAE steps of batch 64 (default: 320)")
    parser.add_argument("--unet-steps", type=int, default=2000, help="UNet steps of batch 128 (default: 2000)")
    parser.add_argument(
        "--inpaint-steps", type=int, default=1200, help="inpainting UNet steps of batch 128 (default: 1200)"
    )
    parser.add_argument("--inpaint-lr", type=float, default=1e-3, help="inpainting UNet learning rate (default: 0.001)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--no-score", action="store_true", help="skip scoring the saved weights")
    args = parser.parse_args(argv)

    for folder in (args.out, args.inpaint_out):
        if folder.exists() and any(folder.iterdir()):
            print(f"error: {folder} already holds files; remove it to train afresh", file=sys.stderr)
            return 1
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        # Measured here: with other work on the 2 cores, spinning OpenMP threads made a UNet step
        # 3-10x slower (0.7 s passive, 2.5-3 s spinning). It must be set before torch loads.
        print("note: OMP_WAIT_POLICY=PASSIVE in the environment makes training far faster on a busy CPU")
    # Results depend on the thread count (it changes the order of float sums), so it is fixed.
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    images, labels = digit_images()
    print(f"data: {len(images)} digits, {IMAGE_SIZE}x{IMAGE_SIZE}; seed {args.seed}; {args.threads} threads")

    vae, scaling_factor = train_vae(images, steps=args.vae_steps, batch=64, seed=args.seed)
    mean, std = _latent_statistics(vae, images)
    tokenizer = build_tokenizer(args.out / ".tokenizer-source")
    shutil.rmtree(args.out / ".tokenizer-source")
    unet, text_encoder = train_unet(
        tokenizer, mean, std, labels, scaling_factor, steps=args.unet_steps, batch=128, seed=args.seed + 1
    )
    inpaint_unet = train_inpainting_unet(
        unet,
        text_encoder,
        vae,
        tokenizer,
        images,
        labels,
        scaling_factor,
        steps=args.inpaint_steps,
        batch=128,
        seed=args.seed + 2,
        lr=args.inpaint_lr,
    )
    save_folders(vae, text_encoder, tokenizer, unet, inpaint_unet, args.out, args.inpaint_out)
    print(f"training: {time.perf_counter() - started:.0f} s in all; wrote {args.out} and {args.inpaint_out}")
    # The inpainting folder's other weights are links to the text-to-image folder's.
    weights = [*sorted(args.out.glob("*/*.safetensors")), *sorted((args.inpaint_out / "unet").glob("*.safetensors"))]
    sizes = [(path, path.stat().st_size) for path in weights]
    for path, size in sizes:
        print(f"  {path}  {size:,} bytes")
    print(f"  weights in all: {sum(size for _, size in sizes):,} bytes")
    if not args.no_score:
        score(args.out, args.inpaint_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
