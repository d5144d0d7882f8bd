"""Attacks on every path: plain call, out=, bind(), rebind(), BoundCall.run().

Each case once crashed the process, read or wrote freed memory, returned stale or wrong numbers
silently, or let a raw error through, on at least one path. Each test states the exact outcome:
the right answer (compared with plain ``InferenceSession.run``) or the exact error and subject.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import ortbind
from ortbind import Rule

from ..helpers import raises
from ..models import parse
from ..reference import assert_equal_reference, reference

OPSET = '<ir_version: 8, opset_import: ["" : 17]>'

NEG = parse(f"{OPSET} g (float[N] x) => (float[N] y) {{ y = Neg(x) }}")
TWO = parse(f"""{OPSET}
g (float[N, M] x, float s) => (float[N, M] y, float[M, N] z) {{
    y = Mul(x, s)
    z = Transpose(x)
}}""")


# --------------------------------------------------------------------------- memory that moved or shrank


@pytest.mark.parametrize("trick", ["data", "set_", "storage_resize"])
@pytest.mark.parametrize("role", ["input", "out"])
def test_allocator_address_reuse_is_caught(trick: str, role: str) -> None:
    """A bound tensor re-pointed to a smaller block, even at the very same address, is never used."""
    sess = ortbind.TorchSession(NEG)
    x, y = torch.randn(1000), torch.empty(1000)
    bound = sess.bind({"x": x}, out={"y": y})
    assert torch.equal(bound.run()["y"], -x)
    victim = x if role == "input" else y
    if trick == "data":
        victim.data = torch.empty(0)
        victim.data = torch.empty(4)
    elif trick == "set_":
        victim.set_(torch.empty(0))
        victim.set_(torch.empty(4))
    else:
        victim.untyped_storage().resize_(0)
        victim.untyped_storage().resize_(16)
    kind = "input" if role == "input" else "out"
    name = "x" if role == "input" else "y"
    with pytest.raises(ortbind.InputError if role == "input" else ortbind.OutputError) as info:
        bound.run()
    assert (info.value.kind, info.value.name) == (kind, name)  # type: ignore[attr-defined]
    assert "so ORT would use a stale address; write new values with copy_(), or rebind()" in str(info.value)
    if trick == "storage_resize":
        why = "the storage of the tensor bound for it was resized since bind() (untyped_storage().resize_; now 16 bytes"
    else:
        why = "the tensor bound for it moved to other memory since bind() (an in-place resize_, set_ or .data=; now "
        why += "shape (4,))"
    assert why in str(info.value)


def test_a_view_of_a_freed_storage_is_refused_everywhere() -> None:
    """How FSDP frees parameters: the storage resized to 0 under a view at an offset (pointer not null)."""
    sess = ortbind.TorchSession(NEG)
    base = torch.randn(100)
    view = base[10:20]
    base.untyped_storage().resize_(0)
    message = (
        "input 'x': its storage holds 0 bytes, but its elements reach byte 80 (the storage was resized under it); "
        "ONNX Runtime needs a tensor backed by real memory, e.g. torch.empty(...) or .clone() of a real tensor, "
        "outside fake/meta tracing"
    )
    with raises(ortbind.InputError, message, kind="input", name="x"):
        sess(x=view)
    with raises(ortbind.InputError, message, kind="input", name="x"):
        sess.bind({"x": view})
    bound = sess.bind({"x": torch.randn(10)})
    with raises(ortbind.InputError, message, kind="input", name="x"):
        bound.rebind(x=view)
    with raises(ortbind.OutputError, message.replace("input 'x'", "out 'y'"), kind="out", name="y"):
        sess.run({"x": torch.randn(10)}, out={"y": view})
    with raises(ortbind.OutputError, message.replace("input 'x'", "out 'y'"), kind="out", name="y"):
        sess.bind({"x": torch.randn(10)}, out={"y": view})


def test_a_shrunk_storage_is_refused() -> None:
    sess = ortbind.TorchSession(NEG)
    x = torch.randn(1000)
    x.untyped_storage().resize_(16)  # the tensor still claims 1000 elements
    with raises(
        ortbind.InputError,
        "input 'x': its storage holds 16 bytes, but its elements reach byte 4000 (the storage was resized under "
        "it); ONNX Runtime needs a tensor backed by real memory, e.g. torch.empty(...) or .clone() of a real "
        "tensor, outside fake/meta tracing",
        kind="input",
        name="x",
    ):
        sess(x=x)


def test_a_subclass_cannot_lie_about_its_pointer_or_shape() -> None:
    class Liar(torch.Tensor):
        def data_ptr(self) -> int:  # type: ignore[override]
            return 16

        @property
        def shape(self) -> torch.Size:  # type: ignore[override]
            return torch.Size([1_000_000])

    sess = ortbind.TorchSession(NEG)
    x = torch.randn(5)
    liar = x.as_subclass(Liar)
    assert liar.data_ptr() == 16
    assert torch.equal(sess(x=liar)["y"], -x)
    bound = sess.bind({"x": liar})
    x.add_(1)
    assert torch.equal(bound.run()["y"], -x)
    y = torch.empty(5).as_subclass(Liar)
    sess.run({"x": x}, out={"y": y})
    assert torch.equal(torch.Tensor.as_subclass(y, torch.Tensor), -x)


# --------------------------------------------------------------------------- rule (c) on hostile models


SPLIT_MISMATCH = """<ir_version: 8, opset_import: ["" : 18]>
g (float[N, 6] x) => (float[A, 6] a, float[B, 6] b, float[C, 6] c) {
    a, b, c = Split<axis = 0, num_outputs = 2>(x)
}"""


def _onnx_inference_aborts_on(text: str) -> bool:
    """Whether this onnx's C++ shape inference takes its process down on ``text`` with a concrete input."""
    code = (
        "import onnx, onnx.parser, onnx.shape_inference, sys\n"
        "m = onnx.parser.parse_model(sys.argv[1])\n"
        "m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 6\n"
        "onnx.shape_inference.infer_shapes(m, check_type=False, strict_mode=False, data_prop=True)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, text], capture_output=True, timeout=120, check=False)
    return proc.returncode < 0


def test_a_model_that_aborts_onnx_shape_inference_runs() -> None:
    """onnx's C++ inference aborts the process on this Split (onnx 1.23); ORT runs it. Rule (c) runs out of process."""
    model = parse(SPLIT_MISMATCH)
    sess = ortbind.TorchSession(model)
    x = torch.randn(6, 6)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = sess(x=x)
    assert_equal_reference(out, reference(model, {"x": x}))
    crashed = [w for w in seen if str(w.message).startswith("ONNX shape inference failed on this model")]
    if _onnx_inference_aborts_on(SPLIT_MISMATCH):
        assert len(crashed) == 1 and issubclass(crashed[0].category, ortbind.OrtbindWarning)
        assert "the inference worker exited with code -6" in str(crashed[0].message)
        assert sess.resolve_shapes({"x": (6, 6)})["a"].rule is Rule.ORT
        x = torch.randn(9, 6)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once per session, then rule (d) quietly
            assert_equal_reference(sess(x=x), reference(model, {"x": x}))
    other = ortbind.TorchSession(parse(f"{OPSET} g (float[N] x) => (float[K] y) {{ y = Relu(x) }}"))
    assert other.resolve_shapes({"x": (4,)})["y"].shape == (4,)  # other models still infer


# --------------------------------------------------------------------------- silently wrong answers


def test_allow_copy_bound_input_follows_the_callers_tensor() -> None:
    sess = ortbind.TorchSession(TWO, allow_copy=True)
    x = torch.randn(4, 3).t()
    with pytest.warns(ortbind.CopyWarning):
        bound = sess.bind({"x": x, "s": torch.tensor(2.0)})
    assert bound.inputs["x"] is x
    assert torch.equal(bound.run()["y"], x * 2)
    x.copy_(torch.randn(3, 4))  # updated in place, as the docs say
    assert torch.equal(bound.run()["y"], x * 2)
    x.resize_(2, 2)
    with raises(
        ortbind.InputError,
        "input 'x': its shape changed from (3, 4) to (2, 2) since it was bound; rebind() it",
        kind="input",
        name="x",
    ):
        bound.run()


def test_bound_outputs_get_their_versions_bumped() -> None:
    sess = ortbind.TorchSession(NEG)
    bound = sess.bind({"x": torch.randn(4)})
    y = bound.run()["y"]
    version = y._version
    bound.run()
    assert y._version > version
    w = torch.randn(4, requires_grad=True)
    loss = (w * y).sum() * (w * y).sum()  # saves y for backward
    bound.run()  # overwrites y
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_rebind_with_the_same_shapes_keeps_the_output_tensors() -> None:
    sess = ortbind.TorchSession(TWO)
    bound = sess.bind({"x": torch.randn(3, 4), "s": torch.tensor(2.0)})
    first = bound.run()
    x = torch.randn(3, 4)
    bound.rebind(x=x)
    second = bound.run()
    assert second["y"] is first["y"] and second["z"] is first["z"]
    assert torch.equal(second["y"], x * 2)
    bound.rebind(x=torch.randn(3, 5))  # a new shape: new outputs
    assert bound.run()["y"] is not first["y"]


def test_passthrough_out_buffer_is_checked_like_any_out() -> None:
    model = parse(f"""{OPSET}
    g (float[N] x) => (float[N] y, float[N] x) {{
        y = Neg(x)
    }}""")
    sess = ortbind.TorchSession(model)
    x = torch.randn(300)
    with raises(
        ortbind.ShapeError,
        "out 'x': expected shape (300,) for these inputs, got (44,); allocate it with that shape",
        kind="out",
        name="x",
    ):
        sess.run({"x": x}, out={"x": torch.empty(44)})
    with raises(
        ortbind.DTypeError,
        "out 'x': expected dtype torch.float32 (ONNX FLOAT), got torch.float64; cast with .to(torch.float32)",
        kind="out",
        name="x",
    ):
        sess.run({"x": x}, out={"x": torch.empty(300, dtype=torch.float64)})
    buffer = torch.empty(300)
    assert sess.run({"x": x}, out={"x": buffer})["x"] is buffer
    assert torch.equal(buffer, x)


def test_passthrough_declared_with_another_type_is_a_model_error() -> None:
    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("x", TensorProto.INT64, ["N"]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:
        pytest.skip("this ONNX Runtime refuses the model itself")
    with raises(
        ortbind.ModelError,
        "output 'x': it is input 'x' passed through, but the model declares it INT64 and the input FLOAT; "
        "fix the model's declarations",
        kind="model",
        name="x",
    ):
        ortbind.TorchSession(model)


def test_an_output_listed_twice_is_one_output() -> None:
    graph = helper.make_graph(
        [
            helper.make_node("NonZero", ["x"], ["nz"]),
            helper.make_node("Relu", ["x"], ["r"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
        [
            helper.make_tensor_value_info("r", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("nz", TensorProto.INT64, [1, "K"]),
            helper.make_tensor_value_info("r", TensorProto.FLOAT, ["N"]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    sess = ortbind.TorchSession(model)
    assert [s.name for s in sess.outputs] == ["r", "nz"]
    x = torch.tensor([1.0, -2.0, 0.0, 3.0])
    for out in (sess(x=x), sess.bind({"x": x}).run()):
        assert torch.equal(out["r"], torch.relu(x))
        assert torch.equal(out["nz"], torch.tensor([[0, 1, 3]]))


# --------------------------------------------------------------------------- raw errors become ortbind errors


def test_ort_spellings_of_provider_options_are_understood() -> None:
    sess = ortbind.TorchSession(NEG, providers=["CPUExecutionProvider"], provider_options=[{}])
    assert torch.equal(sess(x=torch.ones(2))["y"], -torch.ones(2))
    ortbind.TorchSession(NEG, providers=[("CPUExecutionProvider", None)])  # type: ignore[list-item]
    ortbind.TorchSession(NEG, provider_options={"CPUExecutionProvider": None})
    with raises(
        ortbind.ConfigError,
        "provider_options: a list (2 entries) is read as ONNX Runtime does, one options dict per entry of "
        "providers, but providers are ['CPUExecutionProvider']; pass a dict of provider name -> options",
        kind="option",
        name="provider_options",
    ):
        ortbind.TorchSession(NEG, providers=["CPUExecutionProvider"], provider_options=[{}, {}])


@pytest.mark.parametrize(
    ("make", "error", "message", "kind", "name"),
    [
        (
            lambda: ortbind.TorchSession(NEG, session_options={"intra_op_num_threads": 1}),  # type: ignore[arg-type]
            ortbind.ConfigError,
            "session_options: expected an onnxruntime.SessionOptions, got dict; build one (options = "
            "onnxruntime.SessionOptions(); options.intra_op_num_threads = 1; options.add_session_config_entry(key, "
            "value)) and pass it",
            "option",
            "session_options",
        ),
        (
            lambda: ortbind.TorchSession(
                NEG, device="cuda", provider_options={"CUDAExecutionProvider": {"device_id": 10**30}}
            ),
            ortbind.ConfigError,
            f"provider_options['CUDAExecutionProvider']['device_id']: expected a 64-bit integer, got '{10**30}'",
            "option",
            "device_id",
        ),
        (
            lambda: ortbind.TorchSession(
                NEG, device="cuda", provider_options={"CUDAExecutionProvider": {"user_compute_stream": "0"}}
            ),
            ortbind.ConfigError,
            "provider_options['CUDAExecutionProvider']['user_compute_stream']: 0 is CUDA's legacy default stream, "
            "which ONNX Runtime reads as no stream at all; pass a stream's handle "
            "(str(torch.cuda.Stream().cuda_stream)) or leave it out so ortbind makes one",
            "option",
            "user_compute_stream",
        ),
        (
            lambda: ortbind.TorchSession(NEG, providers=[("CPUExecutionProvider", 5)]),  # type: ignore[list-item]
            ortbind.ConfigError,
            "providers['CPUExecutionProvider']: expected a mapping of option name -> value, got int",
            "option",
            "providers['CPUExecutionProvider']",
        ),
        (
            lambda: ortbind.TorchSession(NEG, provider_options={"CUDAExecutionProvider": {"device_id": 1}}),
            ortbind.ConfigError,
            "provider_options['CUDAExecutionProvider']: CUDAExecutionProvider is not used for device cpu (providers "
            "['CPUExecutionProvider']); pass the device it runs on (device='cuda' for CUDAExecutionProvider), or "
            "providers=[...]",
            "option",
            "CUDAExecutionProvider",
        ),
        (
            lambda: ortbind.TorchSession(NEG, device=5.5),  # type: ignore[arg-type]
            ortbind.ConfigError,
            None,
            "device",
            "5.5",
        ),
    ],
)
def test_session_argument_errors(make: Any, error: type[Exception], message: str | None, kind: str, name: str) -> None:
    with pytest.raises(error) as info:
        make()
    if message is not None:
        assert str(info.value) == message
    assert (info.value.kind, info.value.name) == (kind, name)  # type: ignore[attr-defined]


def test_containers_of_the_wrong_kind() -> None:
    sess = ortbind.TorchSession(TWO)
    feeds = {"x": torch.randn(3, 4), "s": torch.tensor(2.0)}
    cases: list[tuple[Any, type[Exception], str, str, str | None]] = [
        (
            lambda: sess.run(feeds, out=[torch.empty(3, 4)]),  # type: ignore[arg-type]
            ortbind.OutputError,
            "out: expected a mapping of output name -> tensor, got list; pass a dict",
            "out",
            None,
        ),
        (
            lambda: sess.run(feeds, output_shapes="y"),  # type: ignore[arg-type]
            ortbind.ShapeError,
            "output_shapes: expected a mapping of output name -> shape, got str; pass a dict",
            "output",
            None,
        ),
        (
            lambda: sess.run(feeds, output_shapes=[("y", (3, 4))]),  # type: ignore[arg-type]
            ortbind.ShapeError,
            "output_shapes: expected a mapping of output name -> shape, got list; pass a dict",
            "output",
            None,
        ),
        (
            lambda: sess.bind(feeds, out=[torch.empty(3, 4)]),  # type: ignore[arg-type]
            ortbind.OutputError,
            "out: expected a mapping of output name -> tensor, got list; pass a dict",
            "out",
            None,
        ),
        (
            lambda: sess.bind(feeds).rebind([torch.randn(3, 4)]),  # type: ignore[arg-type]
            ortbind.InputError,
            "rebind: expected a mapping of input name -> torch.Tensor, got list",
            "input",
            None,
        ),
        (
            lambda: sess.run([feeds["x"], feeds["s"]]),  # type: ignore[arg-type]
            ortbind.InputError,
            "feeds: expected a mapping of input name -> torch.Tensor, got list",
            "input",
            None,
        ),
        (
            lambda: sess.resolve_shapes({"x": (2, 1 << 63), "s": ()}),
            ortbind.ShapeError,
            f"input_shapes['x']: expected a sequence of ints in [0, 2**63), got (2, {1 << 63})",
            "input",
            "x",
        ),
        (
            lambda: sess.resolve_shapes({"x": (2, "3"), "s": ()}),
            ortbind.ShapeError,
            "input_shapes['x']: expected a sequence of ints in [0, 2**63), got (2, '3')",
            "input",
            "x",
        ),
        (
            lambda: sess.resolve_shapes([("x", (2, 3))]),  # type: ignore[arg-type]
            ortbind.InputError,
            "input_shapes: expected a mapping of input name -> shape, got list",
            "input",
            None,
        ),
    ]
    for call, error, message, kind, name in cases:
        with raises(error, message, kind=kind, name=name):
            call()


def test_nested_tensors_are_refused() -> None:
    sess = ortbind.TorchSession(NEG)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's prototype warning for strided nested tensors
        nested = torch.nested.nested_tensor([torch.randn(2), torch.randn(3)])
    jagged = torch.nested.nested_tensor([torch.randn(2), torch.randn(3)], layout=torch.jagged)
    for value in (nested, jagged):
        with pytest.raises(ortbind.InputError) as info:
            sess(x=value)
        assert (info.value.kind, info.value.name) == ("input", "x")
        with pytest.raises(ortbind.OutputError) as out_info:
            sess.run({"x": torch.randn(5)}, out={"y": value})
        assert (out_info.value.kind, out_info.value.name) == ("out", "y")


def test_an_out_buffer_of_another_rank_than_declared_is_refused_before_the_run() -> None:
    # A real OCR model declares [1, 'seqlen'] for a [T, 1, 8210] output; ORT refuses any caller buffer
    # of the true rank. The shape is unknown ahead here (rule d), so the buffer's rank is what is checked.
    model = parse(f"""{OPSET}
    g (float[N] x) => (int64[1, K] nz) {{
        nz = NonZero(x)
    }}""")
    sess = ortbind.TorchSession(model)
    with raises(
        ortbind.ShapeError,
        "out 'nz': shape (1, 2, 1) has rank 3, but the model declares rank 2 [1, 'K'], and ONNX Runtime refuses a "
        "buffer of another rank; leave 'nz' out of out= and output_shapes= so that ORT allocates it",
        kind="out",
        name="nz",
    ):
        sess.run({"x": torch.tensor([1.0, 0.0, 2.0])}, out={"nz": torch.empty(1, 2, 1, dtype=torch.int64)})
    with raises(
        ortbind.ShapeError,
        "output_shapes['nz']: shape (2,) has rank 1, but the model declares rank 2 [1, 'K'], and ONNX Runtime "
        "refuses a buffer of another rank; leave 'nz' out of out= and output_shapes= so that ORT allocates it",
        kind="output",
        name="nz",
    ):
        sess.run({"x": torch.tensor([1.0, 0.0, 2.0])}, output_shapes={"nz": (2,)})


def test_ortbinds_own_failures_are_not_reported_as_ort_refusals() -> None:
    """torch failing to allocate a predicted output (4 TB here) is torch's error, not a RunError."""
    outer = parse(f"""{OPSET}
    g (float[N] x) => (float[N, N] y) {{
        rows = Constant<value = int64[1] {{1}}>()
        cols = Constant<value = int64[1] {{0}}>()
        column = Unsqueeze(x, rows)
        row = Unsqueeze(x, cols)
        y = Mul(column, row)
    }}""")
    sess = ortbind.TorchSession(outer, max_output_bytes=2**60)  # ortbind allocates it, not ORT
    with pytest.raises(RuntimeError, match="can't allocate memory") as raised:
        sess(x=torch.ones(10**6))
    assert not isinstance(raised.value, ortbind.OrtbindError)
    x = torch.arange(3.0)
    assert torch.equal(sess(x=x)["y"], torch.outer(x, x))  # the thread's binding recovered


def test_concurrent_learning_is_safe() -> None:
    """Many threads learning that declared dims lie, each for its own signatures, at once."""
    lying = parse(f"""{OPSET}
    g (float[N, M] x) => (float[N, M] z) {{
        z = Transpose(x)
    }}""")
    sess = ortbind.TorchSession(lying, plan_cache_size=8)
    failures: list[BaseException] = []
    start = threading.Barrier(8)

    def work(seed: int) -> None:
        start.wait()
        try:
            for n in range(2, 40):
                x = torch.randn(n, n + seed + 1)
                assert torch.equal(sess(x=x)["z"], x.t())
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# --------------------------------------------------------------------------- shared (in-place) outputs


ACCUMULATE = parse(f"""{OPSET}
g (float[N] x, float[N] acc) => (float[N] y, float[N] acc_out) {{
    y = Neg(x)
    acc_out = Add(acc, x)
}}""")


def test_share_binds_an_output_into_its_input_buffer() -> None:
    """ORT's CPU Add writes in place when its output is bound to its input's memory (same shape, element-wise)."""
    sess = ortbind.TorchSession(ACCUMULATE)
    x, acc = torch.randn(5), torch.zeros(5)
    out = sess.run({"x": x, "acc": acc}, share={"acc_out": "acc"})
    assert out["acc_out"] is acc and torch.equal(acc, x)
    bound = sess.bind({"x": x, "acc": acc}, share={"acc_out": "acc"})
    for step in range(2, 5):
        version = acc._version
        assert bound.run()["acc_out"] is acc
        assert torch.allclose(acc, x * step)
        assert acc._version > version


def test_share_is_checked() -> None:
    sess = ortbind.TorchSession(ACCUMULATE)
    x, acc = torch.randn(5), torch.zeros(5)
    feeds = {"x": x, "acc": acc}
    with raises(
        ortbind.InputError,
        "share['acc_out']: 'nope' is not an input of the model; name the input whose buffer 'acc_out' is written into",
        kind="input",
        name="nope",
    ):
        sess.run(feeds, share={"acc_out": "nope"})
    with raises(
        ortbind.OutputError,
        "output 'q': the model has no such output; its outputs are 'y', 'acc_out'",
        kind="output",
        name="q",
    ):
        sess.run(feeds, share={"q": "acc"})
    with raises(
        ortbind.OutputError,
        "out 'acc_out': it is shared with input 'acc' (share=); give it one or the other",
        kind="out",
        name="acc_out",
    ):
        sess.run(feeds, out={"acc_out": torch.empty(5)}, share={"acc_out": "acc"})
    with raises(
        ortbind.OutputError,
        "share 'acc_out': buffer overlaps input 'x' in memory; outputs need memory of their own, pass a separate "
        "tensor",
        kind="output",
        name="acc_out",
    ):
        sess.run({"x": x, "acc": x}, share={"acc_out": "acc"})
    with raises(
        ortbind.DTypeError,
        "share['y']: output 'y' is torch.float32 (ONNX FLOAT), input 'acc' is torch.float64; only an input of the "
        "output's type can hold it",
        kind="output",
        name="y",
    ):
        cast = parse(f"""{OPSET}
        g (float[N] x, double[N] acc) => (float[N] y) {{
            y = Neg(x)
        }}""")
        ortbind.TorchSession(cast).run({"x": x, "acc": acc.double()}, share={"y": "acc"})


def test_share_on_a_model_that_does_not_write_in_place_fails_clearly() -> None:
    grow = parse(f"""{OPSET}
    g (float[N] past, float[K] new) => (float[T] present) {{
        present = Concat<axis = 0>(past, new)
    }}""")
    sess = ortbind.TorchSession(grow)
    past = torch.randn(4)
    with pytest.raises(ortbind.RunError) as info:
        sess.run({"past": past, "new": torch.randn(1)}, share={"present": "past"})
    assert str(info.value).startswith(
        "output 'present': shared with input 'past', but ONNX Runtime computed another shape for it ("
    )
    assert str(info.value).endswith("); this model does not write 'present' in place; leave it out of share=")
    assert (info.value.kind, info.value.name) == ("output", "present")


def test_reference_of_share_matches_plain_run() -> None:
    sess = ortbind.TorchSession(ACCUMULATE)
    x, acc = torch.randn(5), torch.randn(5)
    expected = reference(ACCUMULATE, {"x": x, "acc": acc.clone()})
    out = sess.run({"x": x, "acc": acc}, share={"acc_out": "acc"})
    np.testing.assert_array_equal(out["acc_out"].numpy(), expected["acc_out"])
    np.testing.assert_array_equal(out["y"].numpy(), expected["y"])


def test_model_is_unchanged_by_onnx_check() -> None:
    onnx.checker.check_model(onnx.load_model_from_string(ACCUMULATE))


# --------------------------------------------------------------------------- the CUDA mechanisms, exercised on CPU


def test_float8_predictions_are_verified_by_shape_then_bound() -> None:
    """ORT cannot hand float8 over through DLPack, so a verifying run compares shapes only, then binds."""
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("torch has no float8")
    model = parse(
        '<ir_version: 10, opset_import: ["" : 21]> g (float[N] x) => (float8e4m3fn[N] y) { y = Cast<to = 17>(x) }'
    )
    sess = ortbind.TorchSession(model, verify_shapes=True)
    x = torch.randn(64)
    for _ in range(2):
        y = sess(x=x)["y"]
        assert torch.equal(y.view(torch.uint8), x.to(torch.float8_e4m3fn).view(torch.uint8))
    assert sess.plans.get((x.shape,)).verified
    bound = ortbind.TorchSession(model, verify_shapes=True).bind({"x": x})
    assert torch.equal(bound.run()["y"].view(torch.uint8), x.to(torch.float8_e4m3fn).view(torch.uint8))


def test_outputs_are_real_memory_on_the_sessions_device_under_torch_modes() -> None:
    sess = ortbind.TorchSession(NEG)
    x = torch.randn(5)
    with torch.device("meta"):  # what torch.set_default_device installs
        y = sess(x=x)["y"]
    assert y.device == torch.device("cpu") and torch.equal(y, -x)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        y = sess(x=x)["y"]
    assert type(y) is torch.Tensor and torch.equal(y, -x)


def test_outputs_keep_their_dtype_and_device_whatever_the_defaults_when_built_or_called() -> None:
    old = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        with torch.device("meta"):
            sess = ortbind.TorchSession(NEG)  # its output allocators are made here
        x = torch.randn(5, dtype=torch.float32)
        for y in (sess(x=x)["y"], sess.bind({"x": x}).run()["y"]):
            assert (y.dtype, y.device) == (torch.float32, torch.device("cpu")) and torch.equal(y, -x)
    finally:
        torch.set_default_dtype(old)


def test_a_per_call_synchronize_is_honoured_both_ways() -> None:
    from ortbind._runoptions import NO_SYNC, RunPolicy, config_entry

    deferred = RunPolicy(synchronize=False, cuda_graph=False, can_defer=True)
    options, asynchronous = deferred.choose(None, True)
    assert not asynchronous and config_entry(options, NO_SYNC) is None
    options, asynchronous = deferred.choose(None, None)
    assert asynchronous and config_entry(options, NO_SYNC) == "1"
    waiting = RunPolicy(synchronize=True, cuda_graph=False, can_defer=True)
    options, asynchronous = waiting.choose(None, False)
    assert asynchronous and config_entry(options, NO_SYNC) == "1"
    with raises(
        ortbind.ConfigError,
        "synchronize=False: this session was built without a user_compute_stream, so ORT runs on a stream ortbind "
        "cannot order against torch's; its runs must block until they are done; build it with "
        "provider_options={'CUDAExecutionProvider': {'user_compute_stream': str(stream.cuda_stream)}}",
        kind="option",
        name="synchronize",
    ):
        RunPolicy(synchronize=True, cuda_graph=False, can_defer=False).choose(None, False)


# --------------------------------------------------------------------------- models and arguments, once more


def test_an_output_without_a_declared_type_is_refused_saying_so() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [onnx.ValueInfoProto(name="y")],  # ORT infers its type; the model does not say it
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    sess = ortbind.TorchSession(model.SerializeToString())
    message = (
        "output 'y': the model does not declare its type (ortbind binds by declared type); declare it in the graph; "
        "request the other outputs with run(feeds, output_names=[...])"
    )
    with raises(ortbind.ModelError, message, kind="output", name="y"):
        sess(x=torch.ones(2, 3))


def test_constructor_output_shapes_of_another_rank_are_refused_up_front() -> None:
    """ORT would refuse the buffer on every run, after running the whole graph."""
    model = parse(f"{OPSET} g (float[N, 3] x) => (float[N, 3] y) {{ y = Relu(x) }}")
    message = (
        "output_shapes['y']: 1 dims, but the model declares rank 2 ['N', 3], and ONNX Runtime refuses a buffer "
        "of another rank; leave 'y' out of output_shapes"
    )
    with raises(ortbind.ShapeError, message, kind="output", name="y"):
        ortbind.TorchSession(model, output_shapes={"y": ["N*3"]})


def test_a_model_path_the_file_system_cannot_take_is_a_model_error(tmp_path: Any) -> None:
    path = str(tmp_path / ("d" * 300 + ".onnx"))  # longer than a file name may be
    with pytest.raises(ortbind.ModelError) as info:
        ortbind.TorchSession(path)
    assert (info.value.kind, info.value.name) == ("model", path)
    assert str(info.value).startswith(f"model file {path!r}: cannot be read ([Errno 36] File name too long")


def test_an_ort_format_model_is_named_as_such(tmp_path: Any) -> None:
    model = parse(f"{OPSET} g (float[N, 3] x) => (float[N, 3] y) {{ y = Relu(x) }}")
    path = str(tmp_path / "model.ort")
    options = ort.SessionOptions()
    options.optimized_model_filepath = path
    options.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])  # writes the .ort file
    message = (
        f"model file {path!r}: an ONNX Runtime format (.ort) model, which ortbind cannot read (it reads the "
        f"interface from ONNX); pass the .onnx file it was made from, or wrap a session built from the .ort file "
        f"with TorchSession.from_session(session, model='model.onnx')"
    )
    with raises(ortbind.ModelError, message, kind="model", name=path):
        ortbind.TorchSession(path)
    with raises(ortbind.ModelError, message.replace(f"model file {path!r}", "model bytes"), kind="model", name=None):
        ortbind.TorchSession(Path(path).read_bytes())


def test_a_model_from_memory_whose_weights_are_external_says_to_pass_its_path(tmp_path: Any) -> None:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        initializer=[onnx.numpy_helper.from_array(np.arange(4, dtype=np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, size_threshold=0)
    with pytest.raises(ortbind.ModelError) as info:
        ortbind.TorchSession(path.read_bytes())
    assert str(info.value).startswith(
        "model from memory (its weights are in external data files, which ONNX Runtime looks for next to a model "
        "path; pass the path of the .onnx file): ONNX Runtime could not load it: "
    )
    sess = ortbind.TorchSession(str(path))  # as the message says
    assert torch.equal(sess(x=torch.ones(4))["y"], torch.arange(1.0, 5.0))
