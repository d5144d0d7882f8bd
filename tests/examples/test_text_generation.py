"""TextGenerator on ortbind: token for token what transformers' generate and onnxruntime-genai choose.

Every layout (optimum, torch.onnx, genai with its shared buffer), plain and bound calls, one prompt
and a left-padded batch of three; sampling is reproducible; the loop moves nothing to the host but
each step's new token ids; the command line streams, stops and prints JSON.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch

from examples.text_generation.folder import read_decoder_folder
from examples.text_generation.generator import GenerationConfig, TextGenerator

from .helpers import forbid_host_transfers, run_python
from .reference_decode import genai_greedy, transformers_greedy
from .textgen import NEW_TOKENS, PROMPTS, Builds, _prompts, needs_genai

pytestmark = pytest.mark.slow

LAYOUT_FOLDERS = ("optimum-llama", "optimum-gpt2", "genuine-optimum-gpt2", "torch-llama", "genai-llama")


def _generate(builds: Builds, folder_id: str, count: int, bound: bool, **config: Any) -> tuple[Any, Any, Any]:
    folder = read_decoder_folder(builds.folder(folder_id))
    ids, mask = _prompts(folder, count)
    generator = TextGenerator(folder, bound=bound)
    out = generator.generate_ids(
        torch.from_numpy(ids), torch.from_numpy(mask), GenerationConfig(max_new_tokens=NEW_TOKENS, **config)
    )
    return folder, (ids, mask), out


def _trimmed(row: np.ndarray, eos: tuple[int, ...]) -> list[int]:
    """transformers' row of new tokens up to and including its end token (then padding follows)."""
    tokens: list[int] = []
    for token in row.tolist():
        tokens.append(token)
        if token in eos:
            break
    return tokens


@pytest.mark.parametrize("bound", [True, False], ids=["bound", "plain"])
@pytest.mark.parametrize("count", [1, 3], ids=["batch1", "padded-batch3"])
@pytest.mark.parametrize("folder_id", LAYOUT_FOLDERS)
def test_greedy_tokens_equal_transformers(builds: Builds, folder_id: str, count: int, bound: bool) -> None:
    folder, (ids, mask), out = _generate(builds, folder_id, count, bound)
    reference = transformers_greedy(builds.source(builds_kind(folder_id)), ids, mask, NEW_TOKENS)
    expected = [_trimmed(row, folder.eos_token_ids) for row in reference.tokens]
    assert out.tokens == expected
    assert len(set(expected[0])) > 3  # the tiny model does not just repeat one token


def builds_kind(folder_id: str) -> str:
    from .textgen import FOLDERS

    return FOLDERS[folder_id][0]


@needs_genai
@pytest.mark.parametrize("count", [1, 3])
def test_greedy_tokens_equal_onnxruntime_genai_on_its_own_export(builds: Builds, count: int) -> None:
    folder, (ids, mask), out = _generate(builds, "genai-llama", count, bound=True)
    theirs = genai_greedy(folder, ids, mask, NEW_TOKENS)
    assert out.tokens == [_trimmed(row, folder.eos_token_ids) for row in theirs]


@pytest.mark.parametrize("folder_id", ["optimum-llama", "genai-llama"])
def test_sampling_is_reproducible_and_matches_plain_and_bound(builds: Builds, folder_id: str) -> None:
    settings = {"do_sample": True, "temperature": 0.8, "top_k": 50, "top_p": 0.9, "repetition_penalty": 1.3}
    first = _generate(builds, folder_id, 3, True, seed=7, **settings)[2]
    again = _generate(builds, folder_id, 3, True, seed=7, **settings)[2]
    plain = _generate(builds, folder_id, 3, False, seed=7, **settings)[2]
    other = _generate(builds, folder_id, 3, True, seed=8, **settings)[2]
    assert first.tokens == again.tokens == plain.tokens
    assert first.tokens != other.tokens


def test_repetition_penalty_matches_transformers(builds: Builds) -> None:
    from transformers import AutoModelForCausalLM

    folder, (ids, mask), out = _generate(builds, "optimum-llama", 3, True, repetition_penalty=1.5)
    model = AutoModelForCausalLM.from_pretrained(builds.source("llama"), local_files_only=True).eval()
    with torch.no_grad():
        sequences = model.generate(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            do_sample=False,
            max_new_tokens=NEW_TOKENS,
            repetition_penalty=1.5,
        )
    new = sequences[:, ids.shape[1] :].numpy()
    assert out.tokens == [_trimmed(row, folder.eos_token_ids) for row in new]


@pytest.mark.parametrize("folder_id", ["optimum-llama", "genai-llama"])
def test_no_host_copy_of_the_cache_or_logits_in_the_loop(builds: Builds, folder_id: str) -> None:
    folder = read_decoder_folder(builds.folder(folder_id))
    ids, mask = (torch.from_numpy(a) for a in _prompts(folder, 3))
    generator = TextGenerator(folder)
    expected = generator.generate_ids(ids, mask, GenerationConfig(max_new_tokens=8)).tokens
    with forbid_host_transfers(allow_tokens=3) as seen:
        got = generator.generate_ids(ids, mask, GenerationConfig(max_new_tokens=8)).tokens
    assert got == expected
    assert seen and all(s == "Tensor.tolist of (3, 1)" for s in seen)
    with pytest.raises(AssertionError, match="host transfer"), forbid_host_transfers(allow_tokens=3):
        torch.zeros(4).tolist()  # the guard does refuse more than a step's tokens


@needs_genai
def test_a_generation_longer_than_the_model_holds_is_refused(builds: Builds) -> None:
    folder = read_decoder_folder(builds.folder("genai-llama"))
    assert folder.max_length == folder.context_length == 256
    generator = TextGenerator(folder)
    with pytest.raises(
        ValueError,
        match=r"^prompt of 2 tokens \+ max_new_tokens 300 = 302: the model's positions cover 256; ask for fewer",
    ):
        generator.generate(["a"], GenerationConfig(max_new_tokens=300))


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match=r"^max_new_tokens must be a positive int, got 0; top_p must be in \(0, 1\]"):
        GenerationConfig(max_new_tokens=0, top_p=0)


def test_command_line_streams_and_prints_json(builds: Builds) -> None:
    path = builds.folder("optimum-llama")
    folder = read_decoder_folder(path)
    streamed = run_python(
        "-m",
        "examples.text_generation.generate",
        "--model",
        str(path),
        "--prompt",
        PROMPTS[0],
        "--max-new-tokens",
        "6",
        timeout=300,
    )
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout.startswith(PROMPTS[0])
    assert "tokens/s" in streamed.stderr
    as_json = run_python(
        "-m",
        "examples.text_generation.generate",
        "--model",
        str(path),
        "--prompt",
        PROMPTS[0],
        "--prompt",
        PROMPTS[2],
        "--max-new-tokens",
        "6",
        "--json",
        timeout=300,
    )
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    ids, mask = _prompts(folder, 3)
    reference = transformers_greedy(builds.source("llama"), ids[[0, 2]], mask[[0, 2]], 6)
    assert report["tokens"] == [_trimmed(row, folder.eos_token_ids) for row in reference.tokens]
    assert len(report["text"]) == 2 and report["ms_per_token"] > 0
    refused = run_python(
        "-m", "examples.text_generation.generate", "--model", str(path), "--greedy", "--top-p", "0.5", timeout=300
    )
    assert refused.returncode == 2
    assert "--greedy takes the most likely token; top_p only apply to sampling" in refused.stderr
