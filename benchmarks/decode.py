"""Per-token time of a decode loop: ortbind against a numpy loop and onnxruntime-genai's C++ generator.

On the same onnxruntime-genai builder export (GroupQueryAttention, a shared past/present buffer),
greedy, batch 1, the same prompt tokens and the same number of new tokens, side by side in one
run (rounds interleaved, the best round of each path shown):

- ``genai``: onnxruntime-genai's ``Generator`` (its C++ loop, the shared buffer);
- ``ortbind bound``: :class:`~examples.text_generation.generator.TextGenerator` with one bound
  call, rebound each step, the cache shared in place (``share=``);
- ``ortbind plain``: the same loop with a plain ``TorchSession.run`` per step (shared buffer);
- ``ortbind plain, concat``: plain calls with the cache concatenated by the model each step (a new
  past length per step, as a numpy loop must run it);
- ``numpy run``: ``InferenceSession.run`` with numpy arrays, the cache concatenated each step.

Every path is checked to choose the same tokens. ORT runs on one intra-op thread in every path
(genai's session options are set to match), so the figures compare loops, not thread pools.

Run from the repo root: ``python -m benchmarks.decode [--rounds 5] [--new-tokens 95]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from examples.text_generation.build.cache import ensure_tiny_decoder
from examples.text_generation.build.export import genai_available
from examples.text_generation.build.tiny import TinyKind
from examples.text_generation.folder import DecoderFolder, read_decoder_folder
from examples.text_generation.generator import GenerationConfig, TextGenerator, cpu_session_options

PROMPT = "Once upon"


def one_thread_copy(source: Path, target: Path) -> Path:
    """The genai folder with its session options set to one intra-op thread (no pool to spin)."""
    shutil.copytree(source, target)
    config_path = target / "genai_config.json"
    config = json.loads(config_path.read_text())
    options = config["model"]["decoder"]["session_options"]
    options["intra_op_num_threads"] = 1
    options["inter_op_num_threads"] = 1
    config_path.write_text(json.dumps(config, indent=4))
    return target


def numpy_loop(folder: DecoderFolder, prompt: list[int], new_tokens: int) -> Callable[[], tuple[list[int], float]]:
    options = cpu_session_options(threads=1)
    session = ort.InferenceSession(str(folder.model_file), options, providers=["CPUExecutionProvider"])
    kv = folder.kv_type.numpy

    def run() -> tuple[list[int], float]:
        ids = np.array([prompt], dtype=np.int64)
        mask = np.ones_like(ids)
        past = {n: np.zeros((1, folder.num_kv_heads, 0, folder.head_dim), kv) for n in folder.past_names}
        names = [folder.logits, *folder.present_names]
        tokens: list[int] = []
        start = 0.0
        for step in range(new_tokens):
            out = session.run(names, {folder.input_ids: ids, folder.attention_mask: mask, **past})
            token = int(out[0][0, -1].argmax())
            tokens.append(token)
            if step == 0:
                start = time.perf_counter()  # the prompt's run is not a decode step
            past = dict(zip(folder.past_names, out[1:], strict=True))
            ids = np.array([[token]], dtype=np.int64)
            mask = np.ones((1, mask.shape[1] + 1), dtype=np.int64)
        return tokens, (time.perf_counter() - start) / (new_tokens - 1)

    return run


def ortbind_loop(
    folder: DecoderFolder, prompt: list[int], new_tokens: int, *, bound: bool
) -> Callable[[], tuple[list[int], float]]:
    generator = TextGenerator(folder, bound=bound, session_options=cpu_session_options(threads=1))
    ids = torch.tensor([prompt])
    mask = torch.ones_like(ids)
    config = GenerationConfig(max_new_tokens=new_tokens)

    def run() -> tuple[list[int], float]:
        out = generator.generate_ids(ids, mask, config)
        return out.tokens[0], out.ms_per_token / 1e3

    return run


def genai_loop(folder: Path, prompt: list[int], new_tokens: int) -> Callable[[], tuple[list[int], float]]:
    import onnxruntime_genai as og

    model = og.Model(str(folder))

    def run() -> tuple[list[int], float]:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(prompt) + new_tokens, min_length=0)
        generator = og.Generator(model, params)
        generator.append_tokens(np.array([prompt], dtype=np.int64))
        generator.generate_next_token()  # the token chosen from the prompt's run
        start = time.perf_counter()
        steps = 0
        while not generator.is_done():
            generator.generate_next_token()
            steps += 1
        elapsed = time.perf_counter() - start
        tokens = [int(t) for t in generator.get_sequence(0)[len(prompt) :]]
        return tokens, elapsed / max(steps, 1)

    return run


def bench(kind: TinyKind, rounds: int, new_tokens: int, cache: Path | None) -> dict[str, float]:
    source = ensure_tiny_decoder(cache, layout="genai", kind=kind)
    with tempfile.TemporaryDirectory() as scratch:
        path = one_thread_copy(source, Path(scratch) / "model")
        # No end token: every path runs exactly new_tokens steps.
        folder = dataclasses.replace(read_decoder_folder(path), eos_token_ids=())
        prompt = folder.tokenizer(PROMPT)["input_ids"]
        paths = {
            "genai": genai_loop(path, prompt, new_tokens),
            "ortbind bound": ortbind_loop(folder, prompt, new_tokens, bound=True),
            "ortbind plain": ortbind_loop(folder, prompt, new_tokens, bound=False),
            "ortbind plain, concat": ortbind_loop(
                dataclasses.replace(folder, shared_buffer=False), prompt, new_tokens, bound=False
            ),
            "numpy run": numpy_loop(folder, prompt, new_tokens),
        }
        times: dict[str, list[float]] = {name: [] for name in paths}
        reference: list[int] | None = None
        for run in paths.values():
            run()  # warm up
        for _ in range(rounds):
            for name, run in paths.items():
                tokens, per_token = run()
                reference = reference or tokens
                if tokens != reference:
                    raise AssertionError(f"{name} chose other tokens: {tokens[:10]} vs {reference[:10]}")
                times[name].append(per_token * 1e6)
    return {name: min(values) for name, values in times.items()} | {
        f"{name} median": statistics.median(values) for name, values in times.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=95)
    parser.add_argument(
        "--cache", type=Path, default=None, help="where the tiny decoders are built (default: ~/.cache/ortbind)"
    )
    args = parser.parse_args(argv)
    if not genai_available():
        print("onnxruntime-genai is not installed: pip install '.[genai]'", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    print(
        f"onnxruntime {ort.__version__}, torch {torch.__version__}; greedy, batch 1, prompt {PROMPT!r}, "
        f"{args.new_tokens} new tokens; µs per token after the prompt, best of {args.rounds} interleaved rounds "
        f"(median in brackets)"
    )
    targets = {"tiny": 1.3, "small": 1.05}
    for label, kind in (("tiny", "llama"), ("small", "llama-small")):
        r = bench(kind, args.rounds, args.new_tokens, args.cache)  # type: ignore[arg-type]
        print(f"\n{label} ({kind})")
        for name in ("genai", "ortbind bound", "ortbind plain", "ortbind plain, concat", "numpy run"):
            print(f"  {name:<24} {r[name]:8.1f}   ({r[name + ' median']:.1f})")
        bound_ratio = r["ortbind bound"] / r["genai"]
        plain_ratio = r["ortbind plain, concat"] / r["numpy run"]
        print(
            f"  ortbind bound / genai           {bound_ratio:5.2f}  "
            f"(target <= {targets[label]:.2f}: {'met' if bound_ratio <= targets[label] else 'NOT met'})"
        )
        print(
            f"  ortbind plain (concat) / numpy  {plain_ratio:5.2f}  "
            f"(target <= 1.10: {'met' if plain_ratio <= 1.10 else 'NOT met'})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
