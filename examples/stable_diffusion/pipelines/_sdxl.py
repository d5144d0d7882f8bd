"""What the two SDXL pipelines share: two text encoders, pooled embeddings, size and crop conditions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

import ortbind

from ._base import OrtPipelineBase
from ._folder import ModelFolder, VaeSettings
from ._loop import RunClock
from ._schedulers import Scheduler
from ._specs import input_dtype
from ._text import encode_clip, negative_list, penultimate_output

__all__ = ["OrtXLPipelineBase", "SizePair"]

SizePair = tuple[int, int]
"""(height, width) or (top, left), as diffusers' SDXL conditioning arguments."""


class OrtXLPipelineBase(OrtPipelineBase):
    """The SDXL parts: ``text_encoder`` (may be None, as in the refiner) and ``text_encoder_2``
    with projection, conditioned on their penultimate hidden states, the pooled ``text_embeds``
    and six (or, with an aesthetic score, five) ``time_ids``.

    Args:
        text_encoder: Session of ``text_encoder/model.onnx`` with ``hidden_states.N`` outputs, or None.
        text_encoder_2: Session of ``text_encoder_2/model.onnx`` (``text_embeds``, ``hidden_states.N``).
        unet: Session of ``unet/model.onnx`` (``sample``, ``timestep``, ``encoder_hidden_states``,
            ``text_embeds``, ``time_ids`` -> ``out_sample``).
        vae_decoder: Session of ``vae_decoder/model.onnx``.
        tokenizer: The first CLIP tokenizer (None with ``text_encoder=None``).
        tokenizer_2: The second CLIP tokenizer.
        scheduler: Any diffusers scheduler.
        vae: The VAE's :class:`VaeSettings`.
        vae_encoder: Session of ``vae_encoder/model.onnx`` (image-to-image needs it).
        force_zeros_for_empty_prompt: Without a negative prompt, guide against zero embeddings
            rather than the encoded empty prompt (``model_index.json`` says which; SDXL base: True).
        requires_aesthetics_score: Condition on an aesthetic score instead of the target size
            (the SDXL refiner).
        default_sample_size: Latent size of the default image (the UNet's ``sample_size``).
        unet_downsampling: How many times the UNet halves the latents (see :class:`OrtPipelineBase`).
    """

    _sessions: ClassVar[tuple[str, ...]] = ("text_encoder", "text_encoder_2", "unet", "vae_decoder")
    _default_size: ClassVar[int] = 1024
    _default_unet_downsampling: ClassVar[int] = 4

    def __init__(
        self,
        text_encoder: ortbind.TorchSession | None,
        text_encoder_2: ortbind.TorchSession,
        unet: ortbind.TorchSession,
        vae_decoder: ortbind.TorchSession,
        tokenizer: Any,
        tokenizer_2: Any,
        scheduler: Scheduler,
        vae: VaeSettings | None = None,
        *,
        vae_encoder: ortbind.TorchSession | None = None,
        force_zeros_for_empty_prompt: bool = True,
        requires_aesthetics_score: bool = False,
        default_sample_size: int | None = None,
        unet_downsampling: int | None = None,
    ) -> None:
        self.text_encoder_2 = text_encoder_2
        self.tokenizer_2 = tokenizer_2
        super().__init__(
            text_encoder,
            unet,
            vae_decoder,
            tokenizer,
            scheduler,
            vae or VaeSettings(),
            vae_encoder=vae_encoder,
            default_sample_size=default_sample_size,
            unet_downsampling=unet_downsampling,
        )
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        self.requires_aesthetics_score = requires_aesthetics_score
        self._pooled_dtype = input_dtype(unet, "text_embeds")
        self._time_ids_spec = unet.spec.input("time_ids")

    @classmethod
    def _session_names(cls, folder: ModelFolder) -> list[str]:
        # The SDXL refiner has only the second text encoder.
        return [name for name in cls._sessions if name != "text_encoder" or folder.has_model(name)]

    @classmethod
    def _folders(cls, folder: ModelFolder) -> list[str]:
        return ["tokenizer_2", *(["tokenizer"] if folder.has_model("text_encoder") else [])]

    @classmethod
    def _from_folder(cls, folder: ModelFolder, sessions: dict[str, ortbind.TorchSession], scheduler: Scheduler) -> Any:
        first = sessions.get("text_encoder")
        return cls(
            first,
            sessions["text_encoder_2"],
            sessions["unet"],
            sessions["vae_decoder"],
            folder.tokenizer() if first is not None else None,
            folder.tokenizer("tokenizer_2"),
            scheduler,
            folder.vae_settings(sessions["vae_decoder"]),
            vae_encoder=sessions.get("vae_encoder"),
            force_zeros_for_empty_prompt=bool(folder.index.get("force_zeros_for_empty_prompt", True)),
            requires_aesthetics_score=bool(folder.index.get("requires_aesthetics_score", False)),
            default_sample_size=folder.unet_sample_size(),
            unet_downsampling=folder.unet_downsampling() or cls._default_unet_downsampling,
        )

    def _xl_embeddings(
        self,
        prompts: list[str],
        prompt_2: str | Sequence[str] | None,
        negative_prompt: str | Sequence[str] | None,
        negative_prompt_2: str | Sequence[str] | None,
        per_prompt: int,
        do_guidance: bool,
        clock: RunClock,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt embeddings and pooled embeddings, negative half first when guiding, as diffusers makes them.

        Each encoder runs once, on the negatives and the prompts together.
        """
        count = len(prompts)
        prompts_2 = negative_list(prompt_2, count) if prompt_2 is not None else prompts
        zero_negative = negative_prompt is None and self.force_zeros_for_empty_prompt
        with_negatives = do_guidance and not zero_negative
        negatives = negative_list(negative_prompt or "", count)
        negatives_2 = negative_list(negative_prompt_2 or negative_prompt or "", count)
        for name, given in (("prompt_2", prompts_2), ("negative_prompt_2", negatives_2)):
            if len(given) != count:
                raise ValueError(f"{name}: got {len(given)} for {count} prompts; pass one string, or one per prompt")

        encoders = [(self.text_encoder, self.tokenizer, negatives, prompts)] if self.text_encoder is not None else []
        encoders.append((self.text_encoder_2, self.tokenizer_2, negatives_2, prompts_2))
        hidden_parts, pooled = [], None
        for session, tokenizer, negative_texts, texts in encoders:
            assert session is not None
            both = (negative_texts if with_negatives else []) + texts
            out = encode_clip(session, tokenizer, both, input_dtype(session, "input_ids"), clock)
            hidden_parts.append(out[penultimate_output(session, out)])
            if pooled is None and "text_embeds" in out:
                pooled = out["text_embeds"]
        if pooled is None:
            raise ValueError(f"{self.text_encoder_2.path}: expected an output 'text_embeds' (the pooled projection)")
        hidden = torch.cat(hidden_parts, dim=-1).repeat_interleave(per_prompt, dim=0)
        pooled = pooled.repeat_interleave(per_prompt, dim=0)
        if do_guidance and zero_negative:
            hidden = torch.cat([torch.zeros_like(hidden), hidden])
            pooled = torch.cat([torch.zeros_like(pooled), pooled])
        return hidden.to(self._embeds_dtype), pooled.to(self._pooled_dtype)

    def _time_ids(self, values: list[float]) -> torch.Tensor:
        """One row of ``time_ids``, checked against the UNet's declared width."""
        dims = self._time_ids_spec.dims
        if dims is not None and len(dims) == 2 and isinstance(dims[1], int) and dims[1] != len(values):
            hint = (
                "set requires_aesthetics_score in model_index.json to match the model"
                if abs(int(dims[1]) - len(values)) == 1
                else "check the UNet export"
            )
            raise ValueError(f"{self.unet.path}: input 'time_ids' takes {dims[1]} values, got {len(values)}; {hint}")
        assert self._time_ids_spec.dtype is not None
        return torch.tensor([values], dtype=self._time_ids_spec.dtype, device=self.device)

    def _xl_timesteps(self, timesteps: torch.Tensor, denoising_end: float | None) -> torch.Tensor:
        """Cut the schedule at ``denoising_end`` (a fraction of the training timesteps), as diffusers does."""
        if denoising_end is None or not 0 < denoising_end < 1:
            return timesteps
        train = int(self.scheduler.config.num_train_timesteps)
        cutoff = round(train - denoising_end * train)
        return timesteps[: int((timesteps >= cutoff).sum())]
