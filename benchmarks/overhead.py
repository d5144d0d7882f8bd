"""Per-call overhead of TorchSession against plain ONNX Runtime, side by side in one run.

For each tiny model, prints microseconds per call for:

- ``numpy run``: ``InferenceSession.run`` with numpy arrays prepared beforehand (no torch at all);
- ``numpy from torch``: the same from torch code: ``t.numpy()`` in, ``torch.from_numpy`` out (CPU
  tensors share memory with numpy, so this is the cheapest a CPU torch user gets without binding);
- ``floor``: an IOBinding bound once through the pybind layer, then only ``run_with_iobinding``
  in the loop (outputs are overwritten every call, so this is a lower bound, not a usable pattern);
- ``fresh floor``: the pybind layer directly with a new binding, inputs re-bound and a fresh
  ``torch.empty`` output every call, shapes passed as precomputed lists of ints: the least any
  torch-in/torch-out call that returns fresh outputs can do;
- ``checked fresh`` and ``checked``: the two floors plus the checks ortbind owes on each path,
  written out by hand with no layers (see :func:`_checked_floors`): what the checks cost, apart
  from ortbind's structure;
- ``TorchSession``: ``sess(**feeds)``, all checks included;
- ``bound``: ``sess.bind(feeds)`` once, then ``bound.run()`` in the loop (same outputs every run);

and the ratios the targets are stated in. Then the cost of planning a new input signature, the
price a decoder loop pays on every token (its past length grows): ``resolve_shapes`` on signatures
never seen before, for a 2-layer GPT-2 decoder's declared interface (optimum's
``text-generation-with-past`` export: outputs declared ``past_sequence_length + sequence_length``)
and for models with 8 and 64 outputs declared ``[a, 'b + c']``. Single-threaded (ORT and torch both set to one
thread) so the figures measure Python and binding overhead, not kernel scaling. Times are the
calling thread's CPU time (ORT runs in that thread), so other processes on a busy machine disturb
them less than wall time would; the rounds of all paths are interleaved.

Run from the repo root: ``python -m benchmarks.overhead [--repeat 7] [--number 2000]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
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
function_mode_enabled = torch._C._is_torch_function_mode_enabled
dispatch_modes = torch._C._len_torch_dispatch_stack


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

    c_sess = plain._sess
    run_options = ort.RunOptions()  # reused: passing None builds a fresh one on every call
    device = ort_c.OrtDevice(ort_c.OrtDevice.cpu(), ort_c.OrtDevice.default_memory(), 0)
    # Shapes as precomputed lists of ints: pybind converts a torch.Size more slowly.
    in_items = [(n, list(t.shape), t.data_ptr()) for n, t in feeds_t.items()]
    out_items = [(n, list(s), tuple(s)) for n, s in outputs.items()]

    # floor: bound once through the pybind layer, then only run (outputs overwritten every call)
    binding = ort_c.SessionIOBinding(c_sess)
    for n, shape, address in in_items:
        binding.bind_input(n, device, F, shape, address)
    held = {n: torch.empty(*dims) for n, _, dims in out_items}
    for n, shape, _ in out_items:
        binding.bind_output(n, device, F, shape, held[n].data_ptr())

    def fresh() -> dict[str, torch.Tensor]:
        b = ort_c.SessionIOBinding(c_sess)
        for n, shape, address in in_items:
            b.bind_input(n, device, F, shape, address)
        result = {}
        for n, shape, dims in out_items:
            y = torch.empty(*dims)
            b.bind_output(n, device, F, shape, y.data_ptr())
            result[n] = y
        c_sess.run_with_iobinding(b, run_options)
        return result

    checked_fresh, checked = _checked_floors(c_sess, device, feeds_t, outputs, run_options)

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
            "floor": lambda: c_sess.run_with_iobinding(binding, run_options),
            "fresh floor": fresh,
            "checked floor": checked,
            "checked fresh floor": checked_fresh,
            "TorchSession": lambda: sess(**feeds_t),
            "bound": bound.run,
        },
        repeat,
        number,
    )


def _checked_floors(
    c_sess: ort_c.InferenceSession,
    device: ort_c.OrtDevice,
    feeds: dict[str, torch.Tensor],
    outputs: dict[str, list[int]],
    run_options: ort.RunOptions,
) -> tuple[Callable[[], dict[str, torch.Tensor]], Callable[[], dict[str, torch.Tensor]]]:
    """The two floors plus the checks ortbind owes on each path, written out by hand with no layers.

    Both first check that no torch mode is on (a mode would answer the checks' reads itself).
    ``checked fresh``: a reused binding (as ortbind keeps one per thread); per call, each input
    passes the fast checks (plain tensor, dtype, device, contiguous, no lazy negation, non-null
    aligned address inside its storage) and is re-bound only if its address or shape changed; the
    output shapes come from a dict keyed by the input signature; each output is a fresh tensor
    bound by pointer. ``checked``: a bound call's run: its lock, every bound tensor still as bound
    (its address, its storage's base and size, its shape, dtype and contiguity: six reads), the
    outputs' autograd versions bumped, a new result dict. The gap from these to ortbind is what its
    structure costs; the gap from the plain floors to these is what the checks cost.
    """
    names = list(feeds)
    binding = ort_c.SessionIOBinding(c_sess)
    addresses = [0] * len(names)
    shapes: list[torch.Size | None] = [None] * len(names)
    plans = {tuple(tuple(t.shape) for t in feeds.values()): [(n, tuple(s), list(s)) for n, s in outputs.items()]}

    def checked_fresh() -> dict[str, torch.Tensor]:
        if function_mode_enabled() or dispatch_modes():
            raise RuntimeError("a torch mode is on")
        values = [feeds[n] for n in names]
        signature = []
        for index, value in enumerate(values):
            if not (
                type(value) is torch.Tensor
                and value.dtype is torch.float32
                and value.is_cpu
                and value.is_contiguous()
                and not value.is_neg()
            ):
                raise TypeError(names[index])
            address, storage, shape = value.data_ptr(), value.untyped_storage(), value.shape
            if not address or address % 4 or address + value.nbytes > storage.data_ptr() + storage.nbytes():
                raise ValueError(names[index])
            if addresses[index] != address or shapes[index] != shape:
                binding.bind_input(names[index], device, F, list(shape), address)
                addresses[index], shapes[index] = address, shape
            signature.append(shape)
        result = {}
        for n, dims, out_shape in plans[tuple(signature)]:
            y = torch.empty(*dims)
            binding.bind_output(n, device, F, out_shape, y.data_ptr())
            result[n] = y
        c_sess.run_with_iobinding(binding, run_options)
        return result

    bound = ort_c.SessionIOBinding(c_sess)
    for n, t in feeds.items():
        bound.bind_input(n, device, F, list(t.shape), t.data_ptr())
    results = {n: torch.empty(*s) for n, s in outputs.items()}
    for n, y in results.items():
        bound.bind_output(n, device, F, list(y.shape), y.data_ptr())
    held = []
    for t in [*feeds.values(), *results.values()]:
        storage = t.untyped_storage()
        start = torch.Tensor.data_ptr(t)
        base = storage.data_ptr()
        reach = start + t.nbytes - base
        held.append((t.data_ptr, storage.data_ptr, storage.nbytes, start, base, reach, t.shape, t.dtype, t))
    written = tuple(results.values())
    lock = threading.Lock()
    increment_version = torch._C._increment_version

    def checked() -> dict[str, torch.Tensor]:
        if function_mode_enabled() or dispatch_modes():
            raise RuntimeError("a torch mode is on")
        if not lock.acquire(False):
            raise RuntimeError("busy")
        try:
            for data_ptr, storage_ptr, storage_size, address, base, reach, shape, dtype, tensor in held:
                if (
                    data_ptr() != address
                    or storage_ptr() != base
                    or storage_size() < reach
                    or tensor.shape != shape
                    or tensor.dtype is not dtype
                    or not tensor.is_contiguous()
                ):
                    raise ValueError("moved")
            c_sess.run_with_iobinding(bound, run_options)
            increment_version(written)
            return dict(results)
        finally:
            lock.release()

    return checked_fresh, checked


def decoder_interface(layers: int, heads: int = 4, head_dim: int = 8, vocab: int = 64) -> bytes:
    """A decoder with the declared interface of optimum's GPT-2 ``text-generation-with-past`` export.

    Token embeddings stand in for the transformer; each layer's present key and value are the
    past concatenated with the new tokens' embeddings, as a KV cache grows.
    """
    i64 = onnx.TensorProto.INT64
    width = heads * head_dim
    past_dims: list[int | str] = ["batch_size", heads, "past_sequence_length", head_dim]
    present_dims: list[int | str] = ["batch_size", heads, "past_sequence_length + sequence_length", head_dim]
    inputs = [
        oh.make_tensor_value_info("input_ids", i64, ["batch_size", "sequence_length"]),
        oh.make_tensor_value_info("attention_mask", i64, ["batch_size", "past_sequence_length + sequence_length"]),
        oh.make_tensor_value_info("position_ids", i64, ["batch_size", "sequence_length"]),
    ]
    outputs = [oh.make_tensor_value_info("logits", F, ["batch_size", "sequence_length", vocab])]
    rng = np.random.default_rng(0)
    weights = [
        onnx.numpy_helper.from_array(rng.standard_normal((vocab, width)).astype(np.float32), "embed"),
        onnx.numpy_helper.from_array(rng.standard_normal((width, vocab)).astype(np.float32), "head"),
        onnx.numpy_helper.from_array(np.array([0, 0, heads, head_dim], np.int64), "split_heads"),
    ]
    nodes = [
        oh.make_node("Gather", ["embed", "input_ids"], ["hidden"]),
        oh.make_node("MatMul", ["hidden", "head"], ["logits"]),
        oh.make_node("Reshape", ["hidden", "split_heads"], ["by_head"]),
        oh.make_node("Transpose", ["by_head"], ["new_kv"], perm=[0, 2, 1, 3]),
    ]
    for layer in range(layers):
        for part in ("key", "value"):
            past, present = f"past_key_values.{layer}.{part}", f"present.{layer}.{part}"
            inputs.append(oh.make_tensor_value_info(past, F, past_dims))
            outputs.append(oh.make_tensor_value_info(present, F, present_dims))
            nodes.append(oh.make_node("Concat", [past, "new_kv"], [present], axis=2))
    graph = oh.make_graph(nodes, "decoder", inputs, outputs, initializer=weights)
    model: onnx.ModelProto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
    return bytes(model.SerializeToString())


def sum_outputs(count: int) -> bytes:
    """``count`` outputs declared ``[a, 'b + c']``: a 32-layer decoder's present keys and values, in effect."""
    inputs = [oh.make_tensor_value_info("x", F, ["a", "b"]), oh.make_tensor_value_info("y", F, ["a", "c"])]
    nodes, outputs = [], []
    for k in range(count):
        nodes.append(oh.make_node("Concat", ["x", "y"], [f"out{k}"], axis=1))
        outputs.append(oh.make_tensor_value_info(f"out{k}", F, ["a", "b + c"]))
    graph = oh.make_graph(nodes, "sums", inputs, outputs)
    model: onnx.ModelProto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
    return bytes(model.SerializeToString())


def planning(repeat: int, count: int = 2000) -> dict[str, tuple[float, float]]:
    """µs per ``resolve_shapes`` of a never-seen signature, and of a repeated one, per model."""
    models = {
        "GPT-2 decoder (5 outputs)": (decoder_interface(2), "decoder"),
        "[a, 'b + c'] x 8": (sum_outputs(8), "sums"),
        "[a, 'b + c'] x 64": (sum_outputs(64), "sums"),
    }
    results = {}
    for label, (model, kind) in models.items():
        sess = ortbind.TorchSession(model, "cpu", plan_cache_size=count * (repeat + 2))

        def shapes(length: int, kind: str = kind, sess: ortbind.TorchSession = sess) -> dict[str, tuple[int, ...]]:
            if kind == "sums":
                return {"x": (2, length), "y": (2, 3)}
            past = {s.name: (1, 4, length, 8) for s in sess.inputs if s.name.startswith("past")}
            return {"input_ids": (1, 1), "attention_mask": (1, length + 1), "position_ids": (1, 1), **past}

        novel, seen = [], []
        next_length = 1
        for _ in range(repeat):
            batch = [shapes(next_length + k) for k in range(count)]
            next_length += count
            start = time.thread_time()
            for given in batch:
                sess.resolve_shapes(given)
            novel.append((time.thread_time() - start) / count * 1e6)
            start = time.thread_time()
            for given in batch:
                sess.resolve_shapes(given)
            seen.append((time.thread_time() - start) / count * 1e6)
        results[label] = (min(novel), min(seen))
    return results


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
        f"{'model':<16} {'numpy run':>10} {'numpy+torch':>12} {'floor':>8} {'checked':>8} {'fresh floor':>12} "
        f"{'checked fresh':>14} {'TorchSession':>13} {'bound':>8} {'TS/numpy':>9} {'TS/fresh':>9} "
        f"{'TS/checked':>11} {'bound/floor':>12} {'bound/checked':>14} {'bound/numpy':>12}"
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
            f"{r['checked floor']:>8.2f} {r['fresh floor']:>12.2f} {r['checked fresh floor']:>14.2f} "
            f"{r['TorchSession']:>13.2f} {r['bound']:>8.2f} "
            f"{r['TorchSession'] / r['numpy run']:>9.2f} {r['TorchSession'] / r['fresh floor']:>9.2f} "
            f"{r['TorchSession'] / r['checked fresh floor']:>11.2f} "
            f"{r['bound'] / r['floor']:>12.2f} {r['bound'] / r['checked floor']:>14.2f} "
            f"{r['bound'] / r['numpy run']:>12.2f}"
        )
    assert first is not None
    print()
    print("Planning a new input signature (resolve_shapes), µs; best of the rounds:")
    plans = planning(args.repeat)
    for label, (novel, seen) in plans.items():
        print(f"  {label:<28} new {novel:7.2f}   seen {seen:6.2f}   planning (new - seen) {novel - seen:7.2f}")
    slope = (plans["[a, 'b + c'] x 64"][0] - plans["[a, 'b + c'] x 8"][0]) / 56
    print()
    print("Targets on Add [1,16]:")
    for label, ratio, target in (
        ("bound run / bound-once floor", first["bound"] / first["floor"], 1.10),
        ("bound run / numpy sess.run", first["bound"] / first["numpy run"], 0.60),
        ("plain call / fresh-output floor", first["TorchSession"] / first["fresh floor"], 1.10),
        ("plain call / numpy sess.run", first["TorchSession"] / first["numpy run"], 1.00),
    ):
        print(f"  {label:<34} {ratio:5.2f}  (target <= {target:.2f}: {'met' if ratio <= target else 'NOT met'})")
    print("  (for comparison, the floors with ortbind's checks written out by hand and no layers:")
    print(f"   checked fresh floor / fresh floor {first['checked fresh floor'] / first['fresh floor']:5.2f}, ", end="")
    print(f"checked floor / floor {first['checked floor'] / first['floor']:5.2f})")
    print("Targets for planning:")
    for label, value, target in (
        ("new signature, GPT-2 decoder (µs)", plans["GPT-2 decoder (5 outputs)"][0], 15.0),
        ("each further output (µs)", slope, 1.0),
    ):
        print(f"  {label:<34} {value:5.2f}  (target <= {target:.2f}: {'met' if value <= target else 'NOT met'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
