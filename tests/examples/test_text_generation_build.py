"""The text-generation example's fixtures: tiny decoders, their three ONNX layouts, and reading them.

Each layout's folder is proved right by a greedy loop over plain ONNX Runtime (``reference_decode``)
that chooses the same tokens as transformers' ``generate`` on the same weights, from logits that
agree, for one prompt and for a left-padded batch of three; the genai export also agrees with
onnxruntime-genai's own generator. Everything is built once per session (about a minute on two cores).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.helper
import pytest

from examples.text_generation.build import cache as cache_module
from examples.text_generation.build import export as export_module
from examples.text_generation.build.cache import ensure_tiny_decoder, tiny_cache_key
from examples.text_generation.build.export import export_decoder
from examples.text_generation.build.tiny import TINY_SHAPES, build_tiny_decoder
from examples.text_generation.folder import DecoderFolder, FolderError, read_decoder_folder

from .data.onnx_signature import signature
from .reference_decode import genai_greedy, onnx_greedy, pack_rows_from_start, transformers_greedy
from .textgen import DATA, FOLDERS, LOGITS_TOLERANCE, NEW_TOKENS, Builds, _prompts, needs_genai

pytestmark = pytest.mark.slow


# --- the tiny decoders ---------------------------------------------------------------------------------------------


def test_tiny_decoder_is_the_same_for_the_same_seed_and_tokenizes_any_text(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    first = build_tiny_decoder(tmp_path / "a", kind="llama", seed=0)
    second = build_tiny_decoder(tmp_path / "b", kind="llama", seed=0)
    other = build_tiny_decoder(tmp_path / "c", kind="llama", seed=1)
    weights = (first / "model.safetensors").read_bytes()
    assert weights == (second / "model.safetensors").read_bytes()
    assert weights != (other / "model.safetensors").read_bytes()

    tokenizer = AutoTokenizer.from_pretrained(first, local_files_only=True)
    assert len(tokenizer) == TINY_SHAPES["llama"].vocab_size
    text = "".join(chr(code) for code in range(32, 127)) + "\ttabs\nand lines, naïve café ☕"
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id == 1
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    # Every id the model can emit decodes to text.
    assert all(tokenizer.decode([i]) for i in range(4, len(tokenizer)))
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 2)


def test_tiny_decoder_refuses_a_folder_in_use(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("")
    with pytest.raises(FileExistsError, match="already exists and is not empty"):
        build_tiny_decoder(tmp_path, kind="gpt2")


def test_tiny_decoders_are_built_once_per_cache_key(builds: Builds, monkeypatch: pytest.MonkeyPatch) -> None:
    first = builds.folder("optimum-llama")
    assert first == builds.root / f"textgen-llama-optimum-{tiny_cache_key()}"

    def must_not_build(*args: object, **kwargs: object) -> Path:
        raise AssertionError("rebuilt a folder the cache holds")

    monkeypatch.setattr(cache_module, "export_decoder", must_not_build)
    monkeypatch.setattr(cache_module, "build_tiny_decoder", must_not_build)
    assert ensure_tiny_decoder(builds.root, layout="optimum", kind="llama") == first


# --- the optimum layout, as optimum writes it --------------------------------------------------------------------


def test_optimum_export_of_llama_declares_what_optimum_declares(builds: Builds) -> None:
    recorded = json.loads((DATA / "optimum-llama-io.json").read_text())
    assert signature(str(builds.folder("optimum-llama") / "model.onnx")) == recorded


def test_optimum_export_of_gpt2_declares_what_optimum_declared_for_the_same_model(builds: Builds) -> None:
    ours = signature(str(builds.folder("optimum-gpt2") / "model.onnx"))
    genuine = signature(str(DATA / "tiny-gpt2-optimum" / "model.onnx"))
    assert ours == genuine
    # optimum keeps the forward's argument order: GPT-2 takes its past before the mask.
    assert [name for name, _, _ in ours["inputs"]][:2] == ["input_ids", "past_key_values.0.key"]


def test_each_export_carries_the_configs_and_the_tokenizer(builds: Builds) -> None:
    for folder_id in ("optimum-llama", "torch-llama"):
        names = {path.name for path in builds.folder(folder_id).iterdir()}
        assert {
            "model.onnx",
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
        } <= names


# --- reading the folders ---------------------------------------------------------------------------------------


def test_reads_optimum_folders(builds: Builds) -> None:
    for folder_id, kv_heads, vocab, context in (
        ("optimum-llama", 2, 512, 256),
        ("genuine-optimum-gpt2", 2, 320, 128),
    ):
        folder = read_decoder_folder(builds.folder(folder_id))
        assert folder.layout == "optimum"
        assert (folder.input_ids, folder.attention_mask, folder.position_ids, folder.logits) == (
            "input_ids",
            "attention_mask",
            "position_ids",
            "logits",
        )
        assert folder.past == (
            ("past_key_values.0.key", "past_key_values.0.value"),
            ("past_key_values.1.key", "past_key_values.1.value"),
        )
        assert folder.present == (("present.0.key", "present.0.value"), ("present.1.key", "present.1.value"))
        assert (folder.num_layers, folder.num_kv_heads, folder.head_dim, folder.vocab_size) == (2, kv_heads, 16, vocab)
        assert folder.kv_type.name == "FLOAT"
        assert (folder.shared_buffer, folder.max_length, folder.context_length) == (False, None, context)
        assert folder.prompt_padding == "left"
        assert (folder.eos_token_ids, folder.pad_token_id, folder.bos_token_id) == ((2,), 0, 1)
        assert folder.tokenizer.padding_side == "left"


def test_reads_torch_folders_by_position(builds: Builds) -> None:
    folder = read_decoder_folder(builds.folder("torch-llama"))
    model = onnx.load(str(folder.model_file), load_external_data=False)
    outputs = [value.name for value in model.graph.output]
    assert folder.layout == "torch"
    assert folder.past == (("cache_0", "cache_1"), ("cache_2", "cache_3"))
    assert folder.position_ids == "position_ids"
    assert folder.logits == outputs[0]
    assert folder.present_names == tuple(outputs[1:])
    assert (folder.num_layers, folder.num_kv_heads, folder.head_dim, folder.vocab_size) == (2, 2, 16, 512)
    assert folder.prompt_padding == "left"


@needs_genai
def test_reads_genai_folders(builds: Builds) -> None:
    path = builds.folder("genai-llama")
    folder = read_decoder_folder(path)
    genai = json.loads((path / "genai_config.json").read_text())
    assert folder.layout == "genai"
    assert folder.position_ids is None
    # The graph lists all keys before all values; the description pairs them by layer.
    assert folder.past == (
        ("past_key_values.0.key", "past_key_values.0.value"),
        ("past_key_values.1.key", "past_key_values.1.value"),
    )
    assert folder.present == (("present.0.key", "present.0.value"), ("present.1.key", "present.1.value"))
    # Its head size is declared symbolic (kv_cache_dim) and read from genai_config.json.
    assert (folder.num_layers, folder.num_kv_heads, folder.head_dim, folder.vocab_size) == (2, 2, 16, 512)
    assert folder.shared_buffer is genai["search"]["past_present_share_buffer"] is True
    assert folder.max_length == genai["search"]["max_length"] == 256
    assert folder.prompt_padding == "right"
    assert (folder.eos_token_ids, folder.pad_token_id, folder.bos_token_id) == ((2,), 0, 1)


# --- greedy decoding: plain ONNX Runtime against transformers ----------------------------------------------------

GREEDY_CASES = [
    pytest.param("optimum-llama", False, id="optimum-llama"),
    pytest.param("optimum-gpt2", False, id="optimum-gpt2"),
    pytest.param("genuine-optimum-gpt2", False, id="genuine-optimum-gpt2"),
    pytest.param("torch-llama", False, id="torch-llama"),
    pytest.param("genai-llama", False, id="genai-llama-concatenated", marks=needs_genai),
    pytest.param("genai-llama", True, id="genai-llama-shared-buffer", marks=needs_genai),
]


@pytest.mark.parametrize("count", [1, 3], ids=["one-prompt", "left-padded-batch-of-3"])
@pytest.mark.parametrize(("folder_id", "shared"), GREEDY_CASES)
def test_greedy_tokens_equal_transformers_generate(builds: Builds, folder_id: str, shared: bool, count: int) -> None:
    folder = read_decoder_folder(builds.folder(folder_id))
    input_ids, attention_mask = _prompts(folder, count)
    if count > 1:
        assert (attention_mask == 0).any(), "the batch has padding"
    got = onnx_greedy(folder, input_ids, attention_mask, NEW_TOKENS, shared_buffer=shared)
    expected = transformers_greedy(builds.source(FOLDERS[folder_id][0]), input_ids, attention_mask, NEW_TOKENS)
    np.testing.assert_array_equal(got.tokens, expected.tokens)
    assert got.tokens.shape == (count, NEW_TOKENS)
    np.testing.assert_allclose(got.logits, expected.logits, rtol=0, atol=LOGITS_TOLERANCE)
    # Greedy text from random weights can get stuck on one token; this comparison needs varied text.
    assert all(len(set(row)) > NEW_TOKENS // 2 for row in got.tokens.tolist())


@pytest.mark.parametrize(("folder_id", "shared"), GREEDY_CASES)
def test_a_row_that_ends_gets_padding_and_the_others_go_on(builds: Builds, folder_id: str, shared: bool) -> None:
    folder = read_decoder_folder(builds.folder(folder_id))
    input_ids, attention_mask = _prompts(folder, 3)
    source = builds.source(FOLDERS[folder_id][0])
    free = transformers_greedy(source, input_ids, attention_mask, NEW_TOKENS)
    # Make the middle row's fourth token the end token: it ends there, the others run on.
    end = int(free.tokens[1, 3])
    assert end not in free.tokens[[0, 2], :].tolist() and end not in free.tokens[1, :3].tolist()
    expected = transformers_greedy(source, input_ids, attention_mask, NEW_TOKENS, eos_token_ids=(end,))
    got = onnx_greedy(folder, input_ids, attention_mask, NEW_TOKENS, shared_buffer=shared, eos_token_ids=(end,))
    np.testing.assert_array_equal(got.tokens, expected.tokens)
    assert (got.tokens[1, 4:] == folder.pad_token_id).all()


def test_padding_positions_do_not_matter(builds: Builds) -> None:
    """transformers gives padding position 0, optimum's ORTModelForCausalLM 1: the mask hides them either way."""
    folder = read_decoder_folder(builds.folder("optimum-llama"))
    input_ids, attention_mask = _prompts(folder, 3)
    zero = onnx_greedy(folder, input_ids, attention_mask, 4, padding_position=0)
    one = onnx_greedy(folder, input_ids, attention_mask, 4, padding_position=1)
    np.testing.assert_array_equal(zero.tokens, one.tokens)
    np.testing.assert_allclose(zero.logits, one.logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("folder_id", "positions_matter"),
    [
        # GPT-2 adds a learned embedding of the absolute position: a padded row's positions must start at 0.
        ("genuine-optimum-gpt2", True),
        # Llama's rotary embedding makes attention depend on position differences only: shifting a
        # row's positions by its padding changes nothing (to rounding).
        ("optimum-llama", False),
    ],
)
def test_positions_that_count_padding(builds: Builds, folder_id: str, positions_matter: bool) -> None:
    """Positions counted from the batch's first column, as if there were no padding, against cumsum(mask) - 1."""
    folder = read_decoder_folder(builds.folder(folder_id))
    input_ids, attention_mask = _prompts(folder, 3)
    right = onnx_greedy(folder, input_ids, attention_mask, 1)
    naive = _greedy_with_unpadded_positions(folder, input_ids, attention_mask)
    full_row = int(np.flatnonzero((attention_mask == 1).all(axis=1))[0])
    np.testing.assert_allclose(naive[full_row], right.logits[0, full_row], rtol=0, atol=1e-6)
    for row in np.flatnonzero((attention_mask == 0).any(axis=1)):
        difference = float(np.abs(naive[row] - right.logits[0, row]).max())
        assert difference > 1e-2 if positions_matter else difference < 1e-4


def _greedy_with_unpadded_positions(
    folder: DecoderFolder, input_ids: np.ndarray, attention_mask: np.ndarray
) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder.model_file), providers=["CPUExecutionProvider"])
    batch, width = input_ids.shape
    feeds = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": np.broadcast_to(np.arange(width), (batch, width)).astype(np.int64),
        **{name: np.zeros((batch, folder.num_kv_heads, 0, folder.head_dim), np.float32) for name in folder.past_names},
    }
    (logits,) = session.run([folder.logits], feeds)
    return np.asarray(logits)[:, -1]


@needs_genai
def test_genai_model_reads_rows_from_position_0(builds: Builds) -> None:
    """GroupQueryAttention takes a row's tokens to start at position 0: a left-padded prompt is misread."""
    folder = read_decoder_folder(builds.folder("genai-llama"))
    input_ids, attention_mask = _prompts(folder, 3)
    left = onnx_greedy(folder, input_ids, attention_mask, 1, prompt_padding="left")
    packed = onnx_greedy(folder, input_ids, attention_mask, 1)
    full_row = int(np.flatnonzero((attention_mask == 1).all(axis=1))[0])
    np.testing.assert_allclose(left.logits[0, full_row], packed.logits[0, full_row], rtol=0, atol=1e-6)
    for row in np.flatnonzero((attention_mask == 0).any(axis=1)):
        assert np.abs(left.logits[0, row] - packed.logits[0, row]).max() > 1e-2


# --- onnxruntime-genai's own generator ---------------------------------------------------------------------------


@needs_genai
@pytest.mark.parametrize("count", [1, 3], ids=["one-prompt", "batch-of-3"])
def test_genai_generator_chooses_the_same_tokens(builds: Builds, count: int) -> None:
    folder = read_decoder_folder(builds.folder("genai-llama"))
    input_ids, attention_mask = _prompts(folder, count)
    theirs = genai_greedy(folder, input_ids, attention_mask, NEW_TOKENS)
    ours = onnx_greedy(folder, input_ids, attention_mask, NEW_TOKENS, shared_buffer=True)
    reference = transformers_greedy(builds.source("llama"), input_ids, attention_mask, NEW_TOKENS)
    np.testing.assert_array_equal(theirs, ours.tokens)
    np.testing.assert_array_equal(theirs, reference.tokens)


def test_pack_rows_from_start() -> None:
    ids = np.array([[0, 0, 5, 6], [7, 8, 9, 10]])
    mask = np.array([[0, 0, 1, 1], [1, 1, 1, 1]])
    packed_ids, packed_mask = pack_rows_from_start(ids, mask, pad_token_id=0)
    np.testing.assert_array_equal(packed_ids, [[5, 6, 0, 0], [7, 8, 9, 10]])
    np.testing.assert_array_equal(packed_mask, [[1, 1, 0, 0], [1, 1, 1, 1]])


# --- errors --------------------------------------------------------------------------------------------------


def test_genai_export_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(export_module, "genai_available", lambda: False)
    with pytest.raises(ModuleNotFoundError) as caught:
        export_decoder(tmp_path / "src", tmp_path / "out", layout="genai")
    assert str(caught.value) == export_module.GENAI_INSTALL_HINT
    assert "pip install 'ortbind[genai]'" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_genai_export_refuses_a_model_the_builder_would_get_wrong(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The builder (0.18) takes any linear layer with vocab_size outputs for the LM head."""
    monkeypatch.setattr(export_module, "genai_available", lambda: True)
    source = tmp_path / "src"
    source.mkdir()
    config = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 512, "num_attention_heads": 4}
    (source / "config.json").write_text(json.dumps({**config, "num_key_value_heads": 2}))
    with pytest.raises(ValueError) as caught:
        export_decoder(source, tmp_path / "out", layout="genai")
    assert str(caught.value) == (
        f"{source / 'config.json'}: intermediate_size equals vocab_size (512): onnxruntime-genai's model builder "
        "takes every linear layer with vocab_size outputs for the LM head and would export wrong logits; "
        "use another width or vocabulary size"
    )
    assert not (tmp_path / "out").exists()


def test_export_refuses_an_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^layout: expected one of optimum, genai, torch, got 'onnx'$"):
        export_decoder(tmp_path, tmp_path / "out", layout="onnx")  # type: ignore[arg-type]


def test_export_command_line_reports_a_folder_in_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    assert export_module.main([str(DATA / "tiny-gpt2"), str(tmp_path / "out"), "--layout", "optimum"]) == 1
    assert capsys.readouterr().err == (
        f"error: output folder {tmp_path / 'out'} already exists and is not empty; remove it or pick a new path\n"
    )


def _decoder_graph(
    inputs: list[tuple[str, int, list[Any]]], outputs: list[tuple[str, int, list[Any]]]
) -> onnx.ModelProto:
    """A graph with the given IO (its nodes only pass a tensor through): enough for reading, not for running."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", [inputs[0][0]], [name]) for name, _, _ in outputs],
        "decoder",
        [onnx.helper.make_tensor_value_info(name, kind, dims) for name, kind, dims in inputs],
        [onnx.helper.make_tensor_value_info(name, kind, dims) for name, kind, dims in outputs],
    )
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])


FLOAT, INT64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
IDS = ("input_ids", INT64, ["batch", "sequence"])
MASK = ("attention_mask", INT64, ["batch", "total"])
LOGITS = ("logits", FLOAT, ["batch", "sequence", 320])


def _kv(name: str, heads: Any = 2, head_dim: Any = 16) -> tuple[str, int, list[Any]]:
    return (name, FLOAT, ["batch", heads, "past", head_dim])


@pytest.fixture
def folder_with(tmp_path: Path) -> Callable[..., Path]:
    """A folder holding the fixture's tokenizer and configs and a given model.onnx."""

    def make(model: onnx.ModelProto | None, *, configs: bool = True) -> Path:
        folder = tmp_path / "folder"
        shutil.copytree(
            DATA / "tiny-gpt2-optimum",
            folder,
            ignore=shutil.ignore_patterns("*.onnx", *(() if configs else ("config.json",))),
        )
        if model is not None:
            onnx.save(model, str(folder / "model.onnx"))
        return folder

    return make


def test_error_no_folder(tmp_path: Path) -> None:
    with pytest.raises(FolderError) as caught:
        read_decoder_folder(tmp_path / "missing")
    assert (
        str(caught.value)
        == f"{tmp_path / 'missing'}: expected a decoder folder (model.onnx with its tokenizer), found no such folder"
    )


def test_error_no_model_file(folder_with: Callable[..., Path]) -> None:
    folder = folder_with(None)
    (folder / "decoder_model_merged.onnx").write_bytes(b"")
    with pytest.raises(FolderError) as caught:
        read_decoder_folder(folder)
    assert str(caught.value) == (
        f"{folder}: expected model.onnx (an optimum, genai or torch.onnx decoder export), "
        "found decoder_model_merged.onnx"
    )


def test_error_not_onnx(folder_with: Callable[..., Path]) -> None:
    folder = folder_with(None)
    (folder / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(FolderError, match=r"model\.onnx: expected an ONNX model, could not parse it: "):
        read_decoder_folder(folder)


def test_error_no_cache_inputs(folder_with: Callable[..., Path]) -> None:
    folder = folder_with(_decoder_graph([IDS, MASK], [LOGITS]))
    with pytest.raises(FolderError) as caught:
        read_decoder_folder(folder)
    assert str(caught.value) == (
        f"{folder / 'model.onnx'}: expected cache inputs past_key_values.{{i}}.key|value (optimum, genai) or "
        "cache_{n} (torch.onnx), found inputs input_ids, attention_mask; export it with "
        "python -m examples.text_generation.build.export"
    )


def test_error_a_layer_without_its_value(folder_with: Callable[..., Path]) -> None:
    model = _decoder_graph(
        [IDS, MASK, _kv("past_key_values.0.key"), _kv("past_key_values.0.value"), _kv("past_key_values.1.key")],
        [LOGITS, _kv("present.0.key"), _kv("present.0.value"), _kv("present.1.key"), _kv("present.1.value")],
    )
    folder = folder_with(model)
    with pytest.raises(FolderError) as caught:
        read_decoder_folder(folder)
    assert str(caught.value) == (
        f"{folder / 'model.onnx'}: expected inputs past_key_values.1.key|value for layers 0 to 1, "
        "found layers [0, 1] with ['key'] for layer 1"
    )


def test_error_an_input_a_loop_does_not_feed(folder_with: Callable[..., Path]) -> None:
    model = _decoder_graph(
        [
            IDS,
            MASK,
            ("use_cache_branch", onnx.TensorProto.BOOL, [1]),
            _kv("past_key_values.0.key"),
            _kv("past_key_values.0.value"),
        ],
        [LOGITS, _kv("present.0.key"), _kv("present.0.value")],
    )
    folder = folder_with(model)
    with pytest.raises(FolderError) as caught:
        read_decoder_folder(folder)
    assert str(caught.value) == (
        f"{folder / 'model.onnx'}: input 'use_cache_branch' is not one a decode loop feeds (expected the token ids, "
        "the attention mask, the position ids and the cache: attention_mask, input_ids, past_key_values.0.key, "
        "past_key_values.0.value)"
    )


def test_error_torch_outputs_do_not_match_the_cache(folder_with: Callable[..., Path]) -> None:
    model = _decoder_graph([IDS, MASK, _kv("cache_0"), _kv("cache_1")], [LOGITS, _kv("cat")])
    folder = folder_with(model)
    with pytest.raises(FolderError) as caught:
        read_decoder_folder(folder)
    assert str(caught.value) == (
        f"{folder / 'model.onnx'}: expected 3 outputs (the logits, then a present per cache input), found 2"
    )


def test_error_symbolic_head_size_without_config(folder_with: Callable[..., Path]) -> None:
    model = _decoder_graph(
        [IDS, MASK, _kv("past_key_values.0.key", head_dim="d"), _kv("past_key_values.0.value", head_dim="d")],
        [LOGITS, _kv("present.0.key", head_dim="d"), _kv("present.0.value", head_dim="d")],
    )
    folder = folder_with(model, configs=False)
    with pytest.raises(FolderError) as caught:
        read_decoder_folder(folder)
    assert str(caught.value) == (
        f"{folder / 'model.onnx'}: 'past_key_values.0.key': its head size is symbolic ('d'): expected it in "
        "genai_config.json or config.json, found none"
    )


def test_error_cache_of_integers(folder_with: Callable[..., Path]) -> None:
    model = _decoder_graph(
        [
            IDS,
            MASK,
            ("past_key_values.0.key", INT64, ["b", 2, "p", 16]),
            ("past_key_values.0.value", INT64, ["b", 2, "p", 16]),
        ],
        [LOGITS, _kv("present.0.key"), _kv("present.0.value")],
    )
    folder = folder_with(model)
    with pytest.raises(FolderError) as caught:
        read_decoder_folder(folder)
    assert str(caught.value) == (
        f"{folder / 'model.onnx'}: cache input 'past_key_values.0.key': expected FLOAT, FLOAT16 or BFLOAT16, "
        "found INT64"
    )


def test_error_no_tokenizer(folder_with: Callable[..., Path]) -> None:
    model = _decoder_graph(
        [IDS, MASK, _kv("past_key_values.0.key"), _kv("past_key_values.0.value")],
        [LOGITS, _kv("present.0.key"), _kv("present.0.value")],
    )
    folder = folder_with(model)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink()
    with pytest.raises(FolderError) as caught:
        read_decoder_folder(folder)
    assert str(caught.value) == (
        f"{folder}: expected the model's tokenizer files (tokenizer.json, tokenizer_config.json, tokenizer.model, "
        "vocab.json: any of them), found none"
    )


def test_reads_a_minimal_folder(folder_with: Callable[..., Path]) -> None:
    """The reader needs only the graph's IO, the configs and the tokenizer; the graph is never run."""
    model = _decoder_graph(
        [IDS, MASK, _kv("past_key_values.0.key"), _kv("past_key_values.0.value")],
        [LOGITS, _kv("present.0.key"), _kv("present.0.value")],
    )
    folder = read_decoder_folder(folder_with(model))
    assert (folder.layout, folder.position_ids, folder.num_layers, folder.vocab_size) == ("optimum", None, 1, 320)
