"""BoundCall (bind once, run many), run options, and the CUDA-graph guards that run without a GPU."""

from __future__ import annotations

import gc
import threading
from typing import Any

import onnxruntime as ort
import pytest
import torch

import ortbind
from ortbind import Rule, _execute

from ..helpers import raises
from ..models import parse
from ..reference import assert_equal_reference, reference

OPSET = '<ir_version: 8, opset_import: ["" : 17]>'

TWO = parse(f"""{OPSET}
g (float[N, M] x, float s) => (float[N, M] y, float[M, N] z) {{
    y = Mul(x, s)
    z = Transpose(x)
}}""")

DYNAMIC = parse(f"""{OPSET}
g (float[N] x) => (int64[1, K] nz, float[N] relu) {{
    zero = Constant<value = float {{0.0}}>()
    mask = Greater(x, zero)
    nz = NonZero(mask)
    relu = Relu(x)
}}""")

LYING = parse(f"""{OPSET}
g (float[N, M] x) => (float[N, M] y, float[N, M] z) {{
    y = Relu(x)
    z = Transpose(x)
}}""")


def feeds(n: int = 3, m: int = 4, scale: float = 2.0) -> dict[str, torch.Tensor]:
    return {"x": torch.randn(n, m), "s": torch.tensor(scale)}


def test_run_returns_the_same_tensors_every_run_and_sees_inputs_updated_in_place() -> None:
    sess = ortbind.TorchSession(TWO)
    inputs = feeds()
    bound = sess.bind(inputs)
    first = bound.run()
    assert_equal_reference(first, reference(TWO, inputs))
    y = first["y"]
    inputs["x"].copy_(torch.randn(3, 4))
    second = bound.run()
    assert second["y"] is y and second["z"] is first["z"]
    assert_equal_reference(second, reference(TWO, inputs))
    assert set(bound.outputs) == {"y", "z"} and bound.outputs["y"] is y
    assert bound.inputs["x"] is inputs["x"]


def test_bind_checks_like_a_call() -> None:
    sess = ortbind.TorchSession(TWO)
    with raises(
        ortbind.DTypeError,
        "input 's': expected dtype torch.float32 (ONNX FLOAT), got torch.float64; cast with .to(torch.float32)",
    ):
        sess.bind({"x": torch.randn(3, 4), "s": torch.tensor(1.0, dtype=torch.float64)})
    with raises(ortbind.OutputError, "output 'q': the model has no such output; its outputs are 'y', 'z'"):
        sess.bind(feeds(), ["q"])
    with raises(ortbind.InputError, "missing input 's'; the model needs s: tensor(float) []"):
        sess.bind({"x": torch.randn(3, 4)})


def test_out_buffers_are_bound_and_their_versions_bumped_each_run() -> None:
    sess = ortbind.TorchSession(TWO)
    inputs = feeds()
    y = torch.empty(3, 4)
    bound = sess.bind(inputs, ["y"], out={"y": y})
    for run in range(2):
        version = y._version
        out = bound.run()
        assert list(out) == ["y"] and out["y"] is y
        assert y._version > version, run
    assert torch.equal(y, inputs["x"] * 2)


def test_rebind_checks_and_replans_on_a_new_shape() -> None:
    sess = ortbind.TorchSession(TWO)
    bound = sess.bind(feeds())
    old_y = bound.run()["y"]
    same_shape = torch.randn(3, 4)
    bound.rebind(x=same_shape)
    assert torch.equal(bound.run()["y"], same_shape * 2)
    bigger = feeds(5, 2, 3.0)
    bound.rebind(bigger)
    out = bound.run()
    assert out["y"] is not old_y
    assert_equal_reference(out, reference(TWO, bigger))
    with raises(
        ortbind.ShapeError, "input 'x': expected 2 dims ['N', 'M'], got shape (5,); reshape it to the declared rank"
    ):
        bound.rebind(x=torch.randn(5))
    with raises(ortbind.InputError, "input 'q': the model has no such input; its inputs are 'x', 's'"):
        bound.rebind(q=torch.randn(5))
    assert_equal_reference(bound.run(), reference(TWO, bigger))  # a refused rebind changed nothing


def test_data_dependent_outputs_are_allocated_by_ort_on_each_run() -> None:
    sess = ortbind.TorchSession(DYNAMIC)
    x = torch.randn(16)
    bound = sess.bind({"x": x})
    assert bound.outputs["nz"] is None
    first = bound.run()
    assert_equal_reference(first, reference(DYNAMIC, {"x": x}))
    x.copy_(-x)
    second = bound.run()
    assert second["relu"] is first["relu"]
    assert second["nz"] is not first["nz"]
    assert_equal_reference(second, reference(DYNAMIC, {"x": x}))
    assert first["nz"].shape[1] + second["nz"].shape[1] == int((x != 0).sum())  # the first was not overwritten


def test_bound_tensors_are_kept_alive() -> None:
    sess = ortbind.TorchSession(TWO)
    inputs = feeds()
    expected = reference(TWO, inputs)
    bound = sess.bind(inputs)
    del inputs
    gc.collect()
    for _ in range(50):  # churn the allocator
        torch.randn(3, 4)
    assert_equal_reference(bound.run(), expected)


def test_a_bound_call_is_not_for_concurrent_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """run() and rebind() while another thread is inside run() get a RunError (rebind once corrupted memory)."""
    sess = ortbind.TorchSession(TWO, allow_copy=True)
    x = torch.randn(4, 3).t()  # not contiguous: copied at bind, and copied again inside each run
    with pytest.warns(ortbind.CopyWarning):
        bound = sess.bind({"x": x, "s": torch.tensor(2.0)})
    inside, release = threading.Event(), threading.Event()
    check_held = _execute.check_held
    runner_thread: list[threading.Thread] = []

    def held_inside_run(held: Any) -> None:  # the check of the held tensors, under the run's lock
        if threading.current_thread() in runner_thread:
            inside.set()
            assert release.wait(60)
        check_held(held)

    monkeypatch.setattr(_execute, "check_held", held_inside_run)
    results: list[dict[str, torch.Tensor]] = []

    def runner() -> None:
        results.append(bound.run())

    thread = threading.Thread(target=runner)
    runner_thread.append(thread)
    thread.start()
    try:
        assert inside.wait(60)
        for what, call in (("run", bound.run), ("rebind", lambda: bound.rebind(x=torch.randn(3, 4)))):
            with raises(
                ortbind.RunError,
                f"bound call: {what}() while another thread uses it; a BoundCall is not for concurrent use, "
                f"bind one per thread",
            ) as info:
                call()
            assert (info.value.kind, info.value.name) == ("run", None)
    finally:
        release.set()
        thread.join()
    assert torch.equal(results[0]["y"], x * 2)
    assert torch.equal(bound.run()["y"], x * 2)


def test_a_wrong_prediction_in_a_bound_call_is_learned_on_its_first_run() -> None:
    sess = ortbind.TorchSession(LYING)
    x = torch.randn(2, 3)
    bound = sess.bind({"x": x})
    expected = reference(LYING, {"x": x})
    assert_equal_reference(bound.run(), expected)
    assert sess.resolve_shapes({"x": (2, 3)})["z"].rule is Rule.ORT
    y = bound.run()["y"]
    assert_equal_reference(bound.run(), expected)
    assert bound.run()["y"] is y


def test_first_run_verification_in_a_bound_call() -> None:
    sess = ortbind.TorchSession(LYING, verify_shapes=True)  # what CUDA sessions do
    x = torch.randn(2, 3)
    bound = sess.bind({"x": x})  # runs once to check the predicted shapes
    assert sess.plans.get((x.shape,)).verified
    assert bound.outputs["z"] is None and bound.outputs["y"] is not None
    expected = reference(LYING, {"x": x})
    first = bound.run()
    assert_equal_reference(first, expected)
    assert bound.outputs["y"] is first["y"]
    second = bound.run()
    assert second["y"] is first["y"]
    assert_equal_reference(second, expected)


def test_passthrough_outputs_in_a_bound_call() -> None:
    model = parse(f"""{OPSET}
    g (float[N] x) => (float[N] y, float[N] x) {{
        y = Neg(x)
    }}""")
    x = torch.randn(4)
    bound = ortbind.TorchSession(model).bind({"x": x})
    out = bound.run()
    assert torch.equal(out["x"], x) and out["x"].data_ptr() != x.data_ptr()
    x.add_(1)
    assert torch.equal(bound.run()["x"], x)


# --------------------------------------------------------------------------- run options


def test_terminated_runs_raise_run_error() -> None:
    sess = ortbind.TorchSession(TWO)
    options = ort.RunOptions()
    options.terminate = True
    options.log_severity_level = 4
    with pytest.raises(ortbind.RunError, match=r"^ONNX Runtime failed during the run: .*terminate"):
        sess.run(feeds(), run_options=options)
    bound = sess.bind(feeds())
    with pytest.raises(ortbind.RunError, match=r"^ONNX Runtime failed during the run: .*terminate"):
        bound.run(run_options=options)
    options.terminate = False
    assert bound.run(run_options=options)["y"].shape == (3, 4)


def test_run_options_are_used_as_given_and_the_default_can_be_changed() -> None:
    sess = ortbind.TorchSession(TWO)
    assert sess.run_options.log_severity_level == 4
    sess.run_options.log_severity_level = 3
    inputs = feeds()
    assert_equal_reference(sess.run(inputs), reference(TWO, inputs))
    tagged = ort.RunOptions()
    tagged.logid = "step-7"
    assert_equal_reference(sess.run(inputs, run_options=tagged), reference(TWO, inputs))
    with raises(ortbind.ConfigError, "run_options: expected an onnxruntime.RunOptions, got dict"):
        sess.run(inputs, run_options={"terminate": True})  # type: ignore[arg-type]


def test_synchronize_is_a_no_op_on_cpu_and_checked_against_run_options() -> None:
    sess = ortbind.TorchSession(TWO, synchronize=False)
    inputs = feeds()
    assert_equal_reference(sess.run(inputs), reference(TWO, inputs))
    assert_equal_reference(sess.run(inputs, synchronize=True), reference(TWO, inputs))
    with raises(
        ortbind.ConfigError,
        "synchronize=False: the run_options given say disable_synchronize_execution_providers=0; set it there, "
        "or leave run_options out",
    ):
        sess.run(inputs, run_options=ort.RunOptions(), synchronize=False)


def test_cuda_graph_needs_a_cuda_session() -> None:
    with raises(
        ortbind.ConfigError,
        "cuda_graph=True: CUDA graphs need a CUDA session, but this one runs on cpu; pass device='cuda' or leave "
        "cuda_graph out",
    ) as info:
        ortbind.TorchSession(TWO, cuda_graph=True)
    assert (info.value.kind, info.value.name) == ("option", "cuda_graph")


def test_a_bound_tensor_moved_in_place_is_refused_not_read_stale() -> None:
    sess = ortbind.TorchSession(TWO)
    inputs = feeds()
    bound = sess.bind(inputs)
    inputs["x"].resize_(1000, 1000)  # reallocates: the bound address would be freed memory
    with raises(
        ortbind.InputError,
        "input 'x': the tensor bound for it moved to other memory since bind() (an in-place resize_, set_ or "
        ".data=; now shape (1000, 1000)), so ORT would use a stale address; write new values with copy_(), "
        "or rebind()",
    ) as info:
        bound.run()
    assert (info.value.kind, info.value.name) == ("input", "x")
    bound.rebind(x=torch.randn(3, 4))
    bound.run()["y"].data = torch.empty(3, 4)  # the output tensor now points elsewhere
    with pytest.raises(ortbind.OutputError, match=r"^out 'y': the tensor bound for it moved to other memory"):
        bound.run()


def test_resize_binds_a_longer_prefix_of_the_same_memory() -> None:
    """A decoder's mask grows inside one buffer: bound at a new shape, no view made, checked like a rebind."""
    model = parse(f"""{OPSET}
    g (float[1, T] mask, float[1, 4] x) => (float[1, 4] y, float[1] total) {{
        y = Neg(x)
        total = ReduceSum<keepdims = 0>(mask)
    }}""")
    sess = ortbind.TorchSession(model)
    table = torch.ones(1, 16)
    x = torch.randn(1, 4)
    bound = sess.bind({"mask": table[:, :3], "x": x})
    y = bound.run()["y"]
    assert float(bound.run()["total"]) == 3.0
    for width in (4, 9, 16):
        bound.resize(mask=(1, width))
        out = bound.run()
        assert float(out["total"]) == width and out["y"] is y  # the plan and outputs stayed
        assert bound.inputs["mask"].shape == (1, width)
        assert bound.inputs["mask"].data_ptr() == table.data_ptr()
    with raises(
        ortbind.ShapeError,
        "resize 'mask': shape (1, 17) needs 68 bytes from where the input is bound, but its storage holds 64 from "
        "there; bind a tensor of a larger buffer first",
        kind="input",
        name="mask",
    ):
        bound.resize(mask=(1, 17))
    with raises(
        ortbind.ShapeError,
        "input 'mask': dim 0 must be 1 (declared [1, 'T']), got shape (2, 3)",
        kind="input",
        name="mask",
    ):
        bound.resize(mask=(2, 3))
    with raises(ortbind.InputError, "input 'q': the model has no such input; its inputs are 'mask', 'x'"):
        bound.resize(q=(1, 2))
    assert float(bound.run()["total"]) == 16.0  # refused resizes changed nothing
    table.untyped_storage().resize_(8)
    with pytest.raises(
        ortbind.InputError, match=r"^input 'mask': the storage of the tensor bound for it was resized since bind\(\)"
    ):
        bound.run()
