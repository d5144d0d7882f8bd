"""Per-call overhead of TorchSession against plain ONNX Runtime, side by side in one run.

For each tiny model, prints microseconds per call for:

- ``numpy run``: ``InferenceSession.run`` with numpy arrays prepared beforehand (no torch at all);
- ``numpy from torch``: the same from torch code: ``t.numpy()`` in, ``torch.from_numpy`` out (CPU
  tensors share memory with numpy, so this is the cheapest a CPU torch user gets without binding);
- ``floor``: a hand-written IOBinding bound once, then only ``run_with_iobinding`` in the loop
  (outputs are overwritten every call, so this is a lower bound, not a usable pattern);
- ``fresh floor``: the pybind layer directly with a new binding, inputs re-bound and a fresh
  ``torch.empty`` output every call: the least any safe torch-in/torch-out call can do;
- ``TorchSession``: ``sess(**feeds)``, all checks included;
- ``bound``: ``sess.bind(feeds)`` once, then ``bound.run()`` in the loop (same outputs every run);

and the ratios the targets are stated in. Single-threaded (ORT and torch both set to one
thread) so the figures measure Python and binding overhead, not kernel scaling. Times are the
calling thread's CPU time (ORT runs in that thread), so other processes on a busy machine disturb
them less than wall time would; the rounds of all paths are interleaved.

Run from the repo root: ``python -m benchmarks.overhead [--repeat 7] [--number 2000]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import timeit
from collections.abc import Callable

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
import torch
from onnxruntime.capi import _pybind_state as ort_c

import ortbind

F = onnx.TensorProto.FLOAT


def _model(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, list[int]],
    outputs: dict[str, list[int]],
    initializers: list[onnx.TensorProto] | None = None,
) -> bytes:
    graph = oh.make_graph(
        nodes,
        "bench",
        [oh.make_tensor_value_info(n, F, s) for n, s in inputs.items()],
        [oh.make_tensor_value_info(n, F, s) for n, s in outputs.items()],
        initializer=initializers or [],
    )
    model: onnx.ModelProto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
    return bytes(model.SerializeToString())


def models() -> dict[str, tuple[bytes, dict[str, list[int]], dict[str, list[int]]]]:
    rng = np.random.default_rng(0)
    add = _model([oh.make_node("Add", ["a", "b"], ["y"])], {"a": [1, 16], "b": [1, 16]}, {"y": [1, 16]})
    three = _model(
        [oh.make_node("Mul", ["a", "b"], ["t"]), oh.make_node("Add", ["t", "c"], ["y"])],
        {"a": [1, 16], "b": [1, 16], "c": [1, 16]},
        {"y": [1, 16]},
    )
    weight = onnx.numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "w")
    conv = _model(
        [oh.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        {"x": [1, 4, 64, 64]},
        {"y": [1, 4, 64, 64]},
        [weight],
    )
    return {
        "Add [1,16]": (add, {"a": [1, 16], "b": [1, 16]}, {"y": [1, 16]}),
        "3-input [1,16]": (three, {"a": [1, 16], "b": [1, 16], "c": [1, 16]}, {"y": [1, 16]}),
        "Conv 1x4x64x64": (conv, {"x": [1, 4, 64, 64]}, {"y": [1, 4, 64, 64]}),
    }


def _time_all(fns: dict[str, Callable[[], object]], repeat: int, number: int) -> dict[str, float]:
    """Median over ``repeat`` interleaved rounds of µs per call, for each path."""
    rounds: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeat):
        for name, fn in fns.items():
            rounds[name].append(timeit.timeit(fn, number=number, timer=time.thread_time) / number * 1e6)
    return {name: statistics.median(values) for name, values in rounds.items()}


def bench(
    name: str, model: bytes, inputs: dict[str, list[int]], outputs: dict[str, list[int]], repeat: int, number: int
) -> dict[str, float]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    plain = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    feeds_t = {n: torch.randn(*s) for n, s in inputs.items()}
    feeds_np = {n: t.numpy() for n, t in feeds_t.items()}

    # floor: bound once, outputs reused (overwritten) every call
    binding = plain.io_binding()
    for n, t in feeds_t.items():
        binding.bind_input(n, "cpu", 0, F, list(t.shape), t.data_ptr())
    held = {n: torch.empty(*s) for n, s in outputs.items()}
    for n, t in held.items():
        binding.bind_output(n, "cpu", 0, F, list(t.shape), t.data_ptr())

    c_sess = plain._sess
    run_options = ort.RunOptions()  # reused: passing None builds a fresh one on every call
    device = ort_c.OrtDevice(ort_c.OrtDevice.cpu(), ort_c.OrtDevice.default_memory(), 0)
    out_items = list(outputs.items())
    in_items = list(feeds_t.items())

    def fresh() -> dict[str, torch.Tensor]:
        b = ort_c.SessionIOBinding(c_sess)
        for n, t in in_items:
            b.bind_input(n, device, F, t.shape, t.data_ptr())
        result = {}
        for n, s in out_items:
            y = torch.empty(s)
            b.bind_output(n, device, F, y.shape, y.data_ptr())
            result[n] = y
        c_sess.run_with_iobinding(b, run_options)
        return result

    sess = ortbind.TorchSession(model, "cpu", session_options=options)
    expected = plain.run(None, feeds_np)[0]
    got = sess(**feeds_t)[next(iter(outputs))]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)

    out_names = list(outputs)

    def numpy_from_torch() -> dict[str, torch.Tensor]:
        values = plain.run(out_names, {n: t.numpy() for n, t in feeds_t.items()})
        return {n: torch.from_numpy(v) for n, v in zip(out_names, values, strict=True)}

    bound = sess.bind(feeds_t)
    np.testing.assert_allclose(bound.run()[next(iter(outputs))].numpy(), expected, rtol=1e-6, atol=1e-6)

    return _time_all(
        {
            "numpy run": lambda: plain.run(None, feeds_np),
            "numpy from torch": numpy_from_torch,
            "floor": lambda: plain.run_with_iobinding(binding),
            "fresh floor": fresh,
            "TorchSession": lambda: sess(**feeds_t),
            "bound": bound.run,
        },
        repeat,
        number,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timing rounds (median is shown)")
    parser.add_argument("--number", type=int, default=2000, help="calls per round")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(
        f"onnxruntime {ort.__version__}, torch {torch.__version__}, python {sys.version.split()[0]}, "
        f"one thread; µs per call, median of {args.repeat} rounds × {args.number} calls"
    )
    header = (
        f"{'model':<16} {'numpy run':>10} {'numpy+torch':>12} {'floor':>8} {'fresh floor':>12} "
        f"{'TorchSession':>13} {'bound':>8} {'TS/numpy':>9} {'TS/fresh':>9} {'bound/floor':>12} {'bound/numpy':>12}"
    )
    print(header)
    print("-" * len(header))
    first: dict[str, float] | None = None
    for name, (model, inputs, outputs) in models().items():
        number = args.number if "Conv" not in name else max(args.number // 10, 50)
        r = bench(name, model, inputs, outputs, args.repeat, number)
        first = first or r
        print(
            f"{name:<16} {r['numpy run']:>10.2f} {r['numpy from torch']:>12.2f} {r['floor']:>8.2f} "
            f"{r['fresh floor']:>12.2f} {r['TorchSession']:>13.2f} {r['bound']:>8.2f} "
            f"{r['TorchSession'] / r['numpy run']:>9.2f} {r['TorchSession'] / r['fresh floor']:>9.2f} "
            f"{r['bound'] / r['floor']:>12.2f} {r['bound'] / r['numpy run']:>12.2f}"
        )
    assert first is not None
    print()
    print("Targets on Add [1,16]:")
    for label, ratio, target in (
        ("bound run / bound-once floor", first["bound"] / first["floor"], 1.10),
        ("bound run / numpy sess.run", first["bound"] / first["numpy run"], 0.60),
        ("plain call / fresh-output floor", first["TorchSession"] / first["fresh floor"], 1.05),
        ("plain call / numpy sess.run", first["TorchSession"] / first["numpy run"], 1.00),
    ):
        print(f"  {label:<34} {ratio:5.2f}  (target <= {target:.2f}: {'met' if ratio <= target else 'NOT met'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
