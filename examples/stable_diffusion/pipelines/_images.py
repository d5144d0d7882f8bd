"""Images in and out of the pipelines: pixels and masks as diffusers prepares them, VAE latents both ways."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

import ortbind

from ._folder import VaeSettings
from ._loop import RunClock
from ._specs import input_dtype

__all__ = ["ImageInput", "decode_latents", "encode_pixels", "preprocess", "preprocess_mask", "to_output"]

ImageInput = Image.Image | torch.Tensor | Sequence[Image.Image]
"""An image: PIL, a list of PIL images, or a float tensor (C, H, W) or (N, C, H, W) in [0, 1]."""


def preprocess(
    image: ImageInput,
    height: int | None,
    width: int | None,
    *,
    multiple: int,
    device: torch.device,
    name: str = "image",
) -> torch.Tensor:
    """An image as a float32 tensor (N, 3, H, W) in [-1, 1] on ``device``, as diffusers prepares it.

    PIL images are resized (Lanczos, as diffusers' ``VaeImageProcessor``) to ``height`` x
    ``width``, which default to the image's size rounded down to ``multiple`` (the sizes the
    model runs). Tensors must already have such a size.

    Raises:
        ValueError: A tensor of the wrong shape, size or range, or something that is not an image.
    """
    if isinstance(image, Image.Image):
        image = [image]
    if isinstance(image, torch.Tensor):
        tensor = image.unsqueeze(0) if image.dim() == 3 else image
        if tensor.dim() != 4 or tensor.shape[1] != 3 or not tensor.is_floating_point():
            raise ValueError(
                f"{name}: expected a float tensor (3, H, W) or (N, 3, H, W) in [0, 1], "
                f"got {tensor.dtype} of shape {tuple(image.shape)}"
            )
        h, w = int(tensor.shape[-2]), int(tensor.shape[-1])
        if (height or h, width or w) != (h, w) or h % multiple or w % multiple:
            raise ValueError(
                f"{name}: a tensor of {h}x{w} pixels for a {height or h}x{width or w} image; pass a tensor "
                f"of that size, a multiple of {multiple} (the sizes the model runs), or a PIL image to resize"
            )
        low, high = float(tensor.min()), float(tensor.max())
        if low < 0 or high > 1:
            raise ValueError(f"{name}: tensor values must be in [0, 1], got [{low:.3g}, {high:.3g}]")
        pixels = tensor.to(device=device, dtype=torch.float32)
    elif isinstance(image, Sequence) and image and all(isinstance(i, Image.Image) for i in image):
        w, h = image[0].size
        size = (width or w - w % multiple, height or h - h % multiple)
        if size[0] < multiple or size[1] < multiple or size[0] % multiple or size[1] % multiple:
            raise ValueError(
                f"{name}: makes a {size[1]}x{size[0]} picture; height and width must be positive multiples "
                f"of {multiple} (the sizes the model runs); pass a larger image"
            )
        arrays = [np.asarray(_resized(i.convert("RGB"), size), dtype=np.float32) / 255.0 for i in image]
        # NHWC pixels to the NCHW layout the VAE encoder binds (ortbind refuses strided tensors).
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous().to(device)
    else:
        raise ValueError(f"{name}: expected a PIL image, a list of them or a tensor, got {type(image).__name__}")
    return pixels * 2.0 - 1.0


def preprocess_mask(mask_image: ImageInput, height: int, width: int, *, device: torch.device) -> torch.Tensor:
    """The mask as float (N, 1, H, W) of 0 and 1 on ``device``, as diffusers' mask processor makes it.

    Raises:
        ValueError: A tensor of the wrong shape or size, or something that is not an image.
    """
    if isinstance(mask_image, Image.Image):
        mask_image = [mask_image]
    if isinstance(mask_image, torch.Tensor):
        mask = mask_image
        while mask.dim() < 4:
            mask = mask.unsqueeze(0)
        if mask.shape[1] != 1 or tuple(mask.shape[-2:]) != (height, width) or not mask.is_floating_point():
            raise ValueError(
                f"mask_image: expected a float tensor (H, W), (1, H, W) or (N, 1, H, W) of {height}x{width}, "
                f"got {mask_image.dtype} of shape {tuple(mask_image.shape)}"
            )
        mask = mask.to(device=device, dtype=torch.float32)
    elif isinstance(mask_image, Sequence) and mask_image and all(isinstance(m, Image.Image) for m in mask_image):
        arrays = [np.asarray(_resized(m.convert("L"), (width, height)), dtype=np.float32) / 255.0 for m in mask_image]
        mask = torch.from_numpy(np.stack(arrays)).unsqueeze(1).to(device)
    else:
        raise ValueError(
            f"mask_image: expected a PIL image, a list of them or a tensor, got {type(mask_image).__name__}"
        )
    return (mask >= 0.5).to(torch.float32)


def encode_pixels(
    vae_encoder: ortbind.TorchSession,
    pixels: torch.Tensor,
    generator: torch.Generator | None,
    vae: VaeSettings,
    clock: RunClock,
) -> torch.Tensor:
    """Scaled VAE latents of ``pixels``, sampled with ``generator`` as diffusers' torch VAE does.

    An encoder that outputs ``latent_parameters`` (mean and log-variance) is sampled here:
    ``mean + exp(logvar / 2) * noise``, the noise drawn from ``generator`` like diffusers'
    ``DiagonalGaussianDistribution.sample``. One that outputs ``latent_sample`` sampled inside
    the model (diffusers' convert script) is taken as it is.

    Raises:
        ValueError: The encoder has neither output.
    """
    device = vae_encoder.device
    out = clock.timed(vae_encoder, sample=pixels.to(input_dtype(vae_encoder, "sample")))
    if "latent_parameters" in out:
        mean, logvar = out["latent_parameters"].float().chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        noise = randn_tensor(mean.shape, generator=generator, device=device, dtype=mean.dtype)
        latents: torch.Tensor = mean + std * noise
    elif "latent_sample" in out:
        latents = out["latent_sample"].float()
    else:
        raise ValueError(
            f"{vae_encoder.path}: expected an output 'latent_parameters' or 'latent_sample', found {', '.join(out)}"
        )
    if vae.latents_mean is not None and vae.latents_std is not None:
        mean_t = torch.tensor(vae.latents_mean, device=device).view(1, -1, 1, 1)
        std_t = torch.tensor(vae.latents_std, device=device).view(1, -1, 1, 1)
        return (latents - mean_t) * vae.scaling_factor / std_t
    return latents * vae.scaling_factor


def decode_latents(
    vae_decoder: ortbind.TorchSession, latents: torch.Tensor, vae: VaeSettings, clock: RunClock
) -> torch.Tensor:
    """Decode every latent in one VAE run; return NHWC float in [0, 1] on the CPU.

    The ``.cpu()`` here is the one host transfer of a pipeline call.
    """
    device = vae_decoder.device
    if vae.latents_mean is not None and vae.latents_std is not None:
        mean = torch.tensor(vae.latents_mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(vae.latents_std, device=device).view(1, -1, 1, 1)
        latents = latents * std / vae.scaling_factor + mean
    else:
        latents = latents / vae.scaling_factor

    image = clock.timed(vae_decoder, latent_sample=latents.to(input_dtype(vae_decoder, "latent_sample")))["sample"]
    return (image.float() * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu()


def to_output(image: torch.Tensor, output_type: str) -> Any:
    """NHWC float pixels as the caller asked: the tensor (``"pt"``), a numpy array (``"np"``) or PIL images."""
    if output_type == "pt":
        return image
    array = image.numpy()
    if output_type == "np":
        return array
    return [Image.fromarray((a * 255).round().astype("uint8")) for a in array]


def _resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image if image.size == size else image.resize(size, resample=Image.Resampling.LANCZOS)
