"""Command line: ``ortbind inspect model.onnx [--shape name=2x3x64x64 ...]``.

Prints a model's inputs and outputs with element types and declared (symbolic) dims; with
``--shape`` for the inputs, also the output shapes ortbind would allocate and which rule
decided each: (a) override, (b) declared, (c) inferred, (d) allocated by ORT at run time.
No ONNX Runtime session is created, so it works for any model on any machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence

import torch

from ._binding import device_capacity
from ._inference import ShapeInferencer
from ._metadata import TensorSpec, load_model, read_spec
from ._plan import PlanCache
from ._shapes import ShapeProgram, format_dims, format_shape
from .errors import OrtbindError

__all__ = ["main"]


def _parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=DIMS, e.g. sample=2x4x64x64")
    if dims in ("", "scalar", "()"):
        return name, ()
    try:
        shape = tuple(int(d) for d in dims.lower().replace(",", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: dims must be integers joined by 'x', e.g. {name}=2x4x64x64"
        ) from None
    if any(not 0 <= d < 1 << 63 for d in shape):
        raise argparse.ArgumentTypeError(f"{text!r}: dims must be sizes in [0, 2**63)")
    return name, shape


def _printable(text: str) -> str:
    """``text`` with control and other non-printable characters escaped: names come from model files,
    and a model must not be able to send escape sequences to the terminal (clear it, set its title)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _type_name(spec: TensorSpec) -> str:
    return str(spec.dtype).removeprefix("torch.") if spec.dtype is not None else spec.type_str


def _inspect(args: argparse.Namespace) -> int:
    loaded = load_model(args.model)
    spec = read_spec(loaded.proto)
    given: dict[str, tuple[int, ...]] = {}
    for name, shape in args.shape or []:
        if name in given:
            raise OrtbindError(
                f"--shape {name}: given twice ({format_shape(given[name])} and {format_shape(shape)}); give each "
                f"input's shape once",
                kind="input",
                name=name,
            )
        given[name] = shape
    unknown = [n for n in given if n not in {s.name for s in spec.inputs}]
    if unknown:
        known = ", ".join(repr(s.name) for s in spec.inputs)
        raise OrtbindError(
            f"--shape {unknown[0]}: the model has no such input; its inputs are {known}", kind="input", name=unknown[0]
        )

    resolved: dict[str, tuple[str, str, str]] = {}
    if given:
        shapes = []
        for s in spec.inputs:
            if s.name in given:
                shapes.append(given[s.name])
            elif s.dims is not None and all(isinstance(d, int) for d in s.dims):
                shapes.append(tuple(d for d in s.dims if isinstance(d, int)))
            else:
                raise OrtbindError(
                    f"--shape: input {s.name!r} has dims {format_dims(s.dims)}; give it too, e.g. --shape {s.name}=...",
                    kind="input",
                    name=s.name,
                )
        # The plans a CPU session makes (resolve_shapes gives the same), its output size limit included.
        program = ShapeProgram.for_specs(spec.inputs, spec.outputs, strict=args.strict)
        index = {s.name: i for i, s in enumerate(spec.inputs)}
        plans = PlanCache(
            program,
            spec.outputs,
            [index.get(s.name) for s in spec.outputs],
            infer=ShapeInferencer(loaded.proto),
            max_output_bytes=device_capacity(torch.device("cpu")),
            verify=False,
            size=1,
        )
        for plan in plans.get(shapes).outputs():
            shape_text = "decided by ORT at run time" if plan.shape is None else format_shape(plan.shape)
            resolved[plan.name] = (shape_text, plan.rule.label, plan.reason)

    if args.json:

        def row(s: TensorSpec, output: bool) -> dict[str, object]:
            item: dict[str, object] = {
                "name": s.name,
                "type": s.type_str,
                "elem_type": s.elem_type,
                "dtype": None if s.dtype is None else str(s.dtype),
                "dims": None if s.dims is None else list(s.dims),
            }
            if s.unsupported:
                item["unsupported"] = s.unsupported
            if output and s.name in resolved:  # an output named like an input (passed through) is a row of each
                item["resolved"] = {
                    "shape": resolved[s.name][0],
                    "rule": resolved[s.name][1],
                    "reason": resolved[s.name][2],
                }
            return item

        print(
            json.dumps(
                {
                    "model": args.model,
                    "producer": spec.producer,
                    "ir_version": spec.ir_version,
                    "opsets": dict(spec.opsets),
                    "inputs": [row(s, False) for s in spec.inputs],
                    "outputs": [row(s, True) for s in spec.outputs],
                },
                indent=2,
            )
        )
        return 0

    opsets = ", ".join(f"{_printable(d)} {v}" for d, v in spec.opsets)
    print(f"model: {_printable(args.model)}")
    print(f"  producer: {_printable(spec.producer) or 'unknown'}; IR {spec.ir_version}; opsets: {opsets}")
    width = max([len(_printable(s.name)) for s in (*spec.inputs, *spec.outputs)] + [4])
    for title, specs in (("inputs", spec.inputs), ("outputs", spec.outputs)):
        print(f"{title}:")
        for s in specs:
            dims = _printable(format_dims(s.dims))
            line = f"  {_printable(s.name):<{width}}  {s.elem_type_name:<14} {_type_name(s):<16} {dims}"
            if title == "inputs" and s.name in given:
                line += f"  <- {format_shape(given[s.name])}"
            if title == "outputs" and s.name in resolved:
                shape_text, rule, reason = resolved[s.name]
                line += f"  -> {shape_text}  {rule}"
                if reason and args.verbose:
                    line += f"  [{_printable(reason)}]"
            if s.unsupported:
                line += f"  (cannot bind: {_printable(s.unsupported)})"
            print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ortbind`` command."""
    parser = argparse.ArgumentParser(prog="ortbind", description="Inspect ONNX models the way ortbind binds them.")
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser(
        "inspect",
        help="print inputs, outputs, element types and symbolic dims",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inspect.add_argument("model", help="path to a .onnx file")
    inspect.add_argument(
        "--shape",
        action="append",
        type=_parse_shape,
        metavar="NAME=DIMS",
        help="an input's shape, e.g. sample=2x4x64x64 (repeat per input; 'x=' for a scalar); "
        "shows the resolved output shapes",
    )
    inspect.add_argument("--strict", action="store_true", help="reject symbols that inputs bind to different sizes")
    inspect.add_argument("-v", "--verbose", action="store_true", help="say why earlier rules did not apply")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.set_defaults(handler=_inspect)
    return parser


def _show_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
    print(f"ortbind: warning: {_printable(str(message))}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ortbind`` console script and ``python -m ortbind``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for stream in (sys.stdout, sys.stderr):  # a name the terminal cannot encode is printed escaped
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning  # one line, not ortbind's source
            code = int(args.handler(args))
        if sys.stdout is not None:  # None when started with stdout closed
            sys.stdout.flush()
        return code
    except OrtbindError as exc:
        print(f"ortbind: error: {_printable(str(exc))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `ortbind inspect ... | head`: the reader is gone, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 1
    except OSError as exc:  # stdout full or closed
        print(f"ortbind: error: cannot write the output: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
