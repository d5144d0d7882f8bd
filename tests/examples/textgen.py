"""Tiny decoders for the text-generation tests: each torch folder and export built once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from examples.text_generation.build import export as export_module
from examples.text_generation.build.cache import ensure_tiny_decoder, tiny_source_dir
from examples.text_generation.build.export import Layout, export_decoder, genai_available
from examples.text_generation.build.tiny import TINY_SHAPES, TinyKind
from examples.text_generation.folder import DecoderFolder

DATA = Path(__file__).parent / "data"
PROMPTS = ("Hello world", "The quick brown fox jumps over", "a")
NEW_TOKENS = 16
# ORT and torch sum in different orders; float32 logits of the tiny models agree to about 1e-6.
LOGITS_TOLERANCE = 1e-4

needs_genai = pytest.mark.skipif(not genai_available(), reason=export_module.GENAI_INSTALL_HINT)

# (folder id, torch source kind or fixture, layout): the folders the greedy tests run on.
FOLDERS: dict[str, tuple[str, Layout | None]] = {
    "optimum-llama": ("llama", "optimum"),
    "optimum-gpt2": ("fixture-gpt2", "optimum"),
    "genuine-optimum-gpt2": ("fixture-gpt2", None),
    "torch-llama": ("llama", "torch"),
    "genai-llama": ("llama", "genai"),
}


class Builds:
    """Torch folders and exports, each built on first use and kept for the session."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def source(self, kind: str) -> Path:
        if kind == "fixture-gpt2":
            # The committed model optimum exported (tests/examples/data/README.md).
            return DATA / "tiny-gpt2"
        return tiny_source_dir(self.root, kind=_tiny_kind(kind))

    def folder(self, folder_id: str) -> Path:
        kind, layout = FOLDERS[folder_id]
        if layout is None:
            return DATA / "tiny-gpt2-optimum"
        if layout == "genai" and not genai_available():
            pytest.skip(export_module.GENAI_INSTALL_HINT)
        if kind != "fixture-gpt2":
            return ensure_tiny_decoder(self.root, layout=layout, kind=_tiny_kind(kind))
        target = self.root / folder_id
        if not target.exists():
            export_decoder(self.source(kind), target, layout=layout)
        return target


def _tiny_kind(kind: str) -> TinyKind:
    assert kind in TINY_SHAPES, kind
    return kind


@pytest.fixture(scope="session")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    return Builds(tmp_path_factory.mktemp("textgen"))


def _prompts(folder: DecoderFolder, count: int) -> tuple[np.ndarray, np.ndarray]:
    encoded = folder.tokenizer(list(PROMPTS[:count]), return_tensors="np", padding=True)
    return encoded["input_ids"].astype(np.int64), encoded["attention_mask"].astype(np.int64)
