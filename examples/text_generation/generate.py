"""Generate text from a decoder folder: ``python -m examples.text_generation.generate``.

Without ``--model`` it builds a tiny random-weight Llama offline on first run (cached in
``~/.cache/ortbind`` or ``$ORTBIND_CACHE``): it babbles, but runs the real loop end to end.

    python -m examples.text_generation.generate --prompt "Once upon a time"
    python -m examples.text_generation.generate --model DIR --prompt "a" --prompt "b" --sample --top-p 0.9
    python -m examples.text_generation.generate --model DIR --prompt "hi" --json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .build.cache import ensure_tiny_decoder
from .build.export import Layout, genai_available
from .folder import FolderError
from .generator import GenerationConfig, TextGenerator

__all__ = ["build_parser", "main"]

_DEFAULTS = GenerationConfig()
DEFAULT_PROMPT = "Once upon a time"


def build_parser() -> argparse.ArgumentParser:
    """The command line's arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.text_generation.generate",
        description="Generate text with a decoder on ONNX Runtime through ortbind (the KV cache stays on the device).",
    )
    parser.add_argument(
        "--model",
        help="a decoder folder: an optimum text-generation-with-past export, an onnxruntime-genai builder export, "
        "or a torch.onnx export, with its tokenizer (default: a tiny random-weight model built offline)",
    )
    parser.add_argument(
        "--layout",
        choices=("optimum", "genai", "torch"),
        default=None,
        help="the layout of the built-in tiny model (default: genai where onnxruntime-genai is installed, "
        "else optimum); ignored with --model",
    )
    parser.add_argument("--prompt", action="append", help=f"a prompt; repeat for a batch (default: {DEFAULT_PROMPT!r})")
    parser.add_argument("--max-new-tokens", type=int, default=_DEFAULTS.max_new_tokens, help="most tokens per prompt")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--greedy", action="store_true", help="always take the most likely token (the default)")
    choice.add_argument("--sample", action="store_true", help="draw tokens (implied by the options below)")
    parser.add_argument("--temperature", type=float, help=f"sampling temperature (default {_DEFAULTS.temperature})")
    parser.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    parser.add_argument("--top-p", type=float, help="sample among the most likely tokens reaching probability p")
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="seed of the draws (sampling is reproducible)")
    parser.add_argument(
        "--repetition-penalty", type=float, default=_DEFAULTS.repetition_penalty, help="penalise repeated tokens"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--plain", action="store_true", help="plain calls each step instead of one bound call")
    parser.add_argument("--json", action="store_true", help='print {"tokens": ..., "text": ..., "ms_per_token": ...}')
    return parser


def _config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> GenerationConfig:
    sampling = {
        name: value
        for name, value in (("temperature", args.temperature), ("top_k", args.top_k), ("top_p", args.top_p))
        if value is not None
    }
    if args.greedy and sampling:
        parser.error(f"--greedy takes the most likely token; {', '.join(sampling)} only apply to sampling")
    try:
        return GenerationConfig(
            max_new_tokens=args.max_new_tokens,
            do_sample=args.sample or bool(sampling),
            seed=args.seed,
            repetition_penalty=args.repetition_penalty,
            **sampling,
        )
    except ValueError as exc:
        parser.error(str(exc))


def _shown(text: str) -> str:
    """``text`` for a terminal: control characters escaped (a model's bytes must not drive the terminal)."""
    return "".join(c if c.isprintable() or c in "\n\t" else ascii(c)[1:-1] for c in text)


def _model_folder(args: argparse.Namespace) -> str:
    if args.model:
        return str(args.model)
    layout: Layout = args.layout or ("genai" if genai_available() else "optimum")
    print(f"No --model: the tiny random-weight Llama ({layout} layout); it babbles.", file=sys.stderr)
    return str(ensure_tiny_decoder(layout=layout))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    parser = build_parser()
    args = parser.parse_args(argv)
    config = _config(args, parser)
    prompts = args.prompt or [DEFAULT_PROMPT]

    try:
        generator = TextGenerator(_model_folder(args), args.device, bound=not args.plain)
    except (FolderError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stream = len(prompts) == 1 and not args.json
    shown: list[int] = []
    printed = ""

    def on_tokens(new: list[int]) -> None:
        nonlocal printed
        shown.append(new[0])
        text = generator.tokenizer.decode(shown, skip_special_tokens=True)
        if text.startswith(printed):  # print only what is new (a token may complete a character)
            sys.stdout.write(_shown(text[len(printed) :]))
            sys.stdout.flush()
            printed = text

    if stream:
        sys.stdout.write(_shown(prompts[0]))
    try:
        result = generator.generate(prompts, config, on_tokens=on_tokens if stream else None)
    except ValueError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"tokens": result.tokens, "text": result.text, "ms_per_token": result.ms_per_token}))
        return 0
    if stream:
        sys.stdout.write("\n")
    else:
        for prompt, text in zip(prompts, result.text):
            print(_shown(f"{prompt}{text}"))
    rate = 1e3 / result.ms_per_token * len(prompts) if result.steps else 0.0
    print(
        f"{sum(map(len, result.tokens))} tokens; prompt {result.prefill_ms:.1f} ms; "
        f"{result.ms_per_token:.3f} ms per step ({rate:.0f} tokens/s over {len(prompts)} prompt(s))",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
