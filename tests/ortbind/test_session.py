"""TorchSession against plain InferenceSession.run: sources, shape rules, ownership, out=, subsets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import ortbind
from ortbind import Rule

from ..models import parse
from ..reference import assert_equal_reference, reference

OPSET = '<ir_version: 8, opset_import: ["" : 17]>'

TWO_OUTPUTS = parse(f"""{OPSET}
g (float[N, M] x, float s) => (float[N, M] y, float[M, N] z) {{
    y = Mul(x, s)
    z = Transpose(x)
}}""")

# Legacy exporters write opaque output names no input binds; only shape inference can tell.
OPAQUE = parse(f"""{OPSET}
g (float[N, 4] a, float[N, 4] b) => (float[Concat_dim_0, unk__1] y) {{
    y = Concat<axis = 0>(a, b)
}}""")

# Declared output dims that lie: the transpose is declared with the input's order.
LYING = parse(f"""{OPSET}
g (float[N, M] x) => (float[N, M] y, float[N, M] z) {{
    y = Relu(x)
    z = Transpose(x)
}}""")

DATA_DEPENDENT = parse("""<ir_version: 8, opset_import: ["" : 17]>
g (float[N] x) => (int64[2, K] nz, float[U] uniq, float[N] relu) {
    zero = Constant<value = float {0.0}>()
    mask = Greater(x, zero)
    nz = NonZero(mask)
    uniq = Unique<sorted = 1>(x)
    relu = Relu(x)
}""")

# A diffusers-like UNet signature: timestep tied to the batch symbol but fed with shape (1,).
UNET_LIKE = parse(f"""{OPSET}
g (float[batch, 4, H, W] sample, float[batch] timestep) => (float[batch, 4, H, W] out) {{
    out = Mul(sample, timestep)
}}""")


def test_path_bytes_and_proto_sources_agree(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(TWO_OUTPUTS)
    feeds = {"x": torch.randn(3, 5), "s": torch.tensor(1.5)}
    expected = reference(TWO_OUTPUTS, feeds)
    for source in (path, str(path), TWO_OUTPUTS, onnx.load_model_from_string(TWO_OUTPUTS)):
        sess = ortbind.TorchSession(source, "cpu")
        assert_equal_reference(sess(**feeds), expected)
    assert ortbind.TorchSession(path).path == path
    assert ortbind.TorchSession(TWO_OUTPUTS).path is None


def test_specs_are_read_from_the_model() -> None:
    sess = ortbind.TorchSession(TWO_OUTPUTS)
    assert [(s.name, s.elem_type, s.dtype, s.dims) for s in sess.inputs] == [
        ("x", 1, torch.float32, ("N", "M")),
        ("s", 1, torch.float32, ()),
    ]
    assert [(s.name, s.dims, s.type_str) for s in sess.outputs] == [
        ("y", ("N", "M"), "tensor(float)"),
        ("z", ("M", "N"), "tensor(float)"),
    ]
    assert str(sess.outputs[1]) == "z: tensor(float) ['M', 'N']"
    assert sess.device == torch.device("cpu")
    assert sess.providers == ["CPUExecutionProvider"]
    with pytest.raises(AttributeError):
        sess.inputs[0].name = "other"  # type: ignore[misc]


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (7, 4), (0, 3)])
def test_declared_symbolic_shapes(shape: tuple[int, int]) -> None:
    sess = ortbind.TorchSession(TWO_OUTPUTS)
    feeds = {"x": torch.randn(*shape), "s": torch.tensor(-2.0)}
    assert_equal_reference(sess(**feeds), reference(TWO_OUTPUTS, feeds))
    plan = sess.resolve_shapes({"x": shape, "s": ()})
    assert plan["z"] == ortbind.OutputPlan("z", Rule.DECLARED, (shape[1], shape[0]))


def test_opaque_dims_are_inferred_once_per_signature() -> None:
    sess = ortbind.TorchSession(OPAQUE)
    for _ in range(3):
        feeds = {"a": torch.randn(2, 4), "b": torch.randn(2, 4)}
        assert_equal_reference(sess(**feeds), reference(OPAQUE, feeds))
    assert sess.plans.inferences == 1
    feeds = {"a": torch.randn(5, 4), "b": torch.randn(5, 4)}
    assert_equal_reference(sess(**feeds), reference(OPAQUE, feeds))
    assert sess.plans.inferences == 2
    assert sess.resolve_shapes({"a": (5, 4), "b": (5, 4)})["y"].rule is Rule.INFERRED


def test_data_dependent_outputs_are_allocated_by_ort() -> None:
    sess = ortbind.TorchSession(DATA_DEPENDENT)
    plan = sess.resolve_shapes({"x": (6,)})
    assert plan["nz"].rule is Rule.ORT
    assert plan["uniq"].rule is Rule.ORT
    assert plan["relu"].rule is Rule.DECLARED
    x = torch.tensor([1.0, -1.0, 2.0, 2.0, 0.0, 3.0])
    assert_equal_reference(sess(x=x), reference(DATA_DEPENDENT, {"x": x}))


def test_returned_tensors_survive_later_calls() -> None:
    """A later run never writes into a tensor an earlier run returned (rules b and d)."""
    sess = ortbind.TorchSession(DATA_DEPENDENT)
    first_x = torch.tensor([1.0, -1.0, 2.0, 5.0])
    first = sess(x=first_x)
    kept = {k: v.clone() for k, v in first.items()}
    second = sess(x=torch.tensor([-4.0, 6.0, 7.0, -8.0]))
    for name in first:
        assert torch.equal(first[name], kept[name]), name
        assert first[name].data_ptr() != second[name].data_ptr(), name
    assert_equal_reference(first, reference(DATA_DEPENDENT, {"x": first_x}))


def test_wrong_declared_shape_falls_back_to_ort_and_is_remembered() -> None:
    sess = ortbind.TorchSession(LYING)
    x = torch.randn(2, 3)
    for _ in range(2):
        assert_equal_reference(sess(x=x), reference(LYING, {"x": x}))
        plan = sess.resolve_shapes({"x": (2, 3)})
        assert plan["y"].rule is Rule.DECLARED
        assert plan["z"] == ortbind.OutputPlan(
            "z", Rule.ORT, None, "declared shape (2, 3) proved wrong at run time (ORT produced (3, 2))"
        )
    # Dims that lied once are not trusted for other signatures either, even where they would fit.
    square = torch.randn(3, 3)
    assert_equal_reference(sess(x=square), reference(LYING, {"x": square}))
    assert sess.resolve_shapes({"x": (3, 3)})["z"] == ortbind.OutputPlan(
        "z", Rule.ORT, None, "its declared dims proved wrong for an earlier input signature"
    )
    assert sess.resolve_shapes({"x": (3, 3)})["y"].rule is Rule.DECLARED


def test_wrong_declared_shape_with_a_subset_of_outputs() -> None:
    sess = ortbind.TorchSession(LYING)
    x = torch.randn(4, 1)
    out = sess.run({"x": x}, ["z"])
    assert list(out) == ["z"]
    assert torch.equal(out["z"], x.T)


def test_conflicting_symbol_goes_to_inference() -> None:
    sess = ortbind.TorchSession(UNET_LIKE)
    feeds = {"sample": torch.randn(2, 4, 8, 6), "timestep": torch.tensor([3.0])}
    assert_equal_reference(sess(**feeds), reference(UNET_LIKE, feeds))
    plan = sess.resolve_shapes({"sample": (2, 4, 8, 6), "timestep": (1,)})["out"]
    assert plan.rule is Rule.INFERRED
    assert plan.shape == (2, 4, 8, 6)
    assert plan.reason == "dim 0 ('batch') uses 'batch', which inputs bind to [1, 2]"


def test_out_buffers_are_filled_in_place() -> None:
    sess = ortbind.TorchSession(TWO_OUTPUTS)
    feeds = {"x": torch.randn(2, 3), "s": torch.tensor(3.0)}
    y = torch.full((2, 3), float("nan"))
    z = torch.full((3, 2), float("nan"))
    out = sess.run(feeds, out={"y": y, "z": z})
    assert out["y"] is y and out["z"] is z
    ptr = y.data_ptr()
    assert_equal_reference(out, reference(TWO_OUTPUTS, feeds))
    out = sess.run(feeds, out={"y": y})
    assert out["y"] is y and y.data_ptr() == ptr
    assert out["z"] is not z


def test_out_buffer_for_an_ort_allocated_output_and_empty_buffers() -> None:
    sess = ortbind.TorchSession(DATA_DEPENDENT)
    x = torch.tensor([1.0, 2.0, 2.0])
    uniq = torch.empty(2)
    out = sess.run({"x": x}, ["uniq"], out={"uniq": uniq})
    assert out["uniq"] is uniq
    assert torch.equal(uniq, torch.tensor([1.0, 2.0]))
    empty = torch.empty(0)
    out = sess.run({"x": torch.empty(0)}, ["relu"], out={"relu": empty})
    assert out["relu"] is empty


def test_output_names_select_and_order() -> None:
    sess = ortbind.TorchSession(TWO_OUTPUTS)
    feeds = {"x": torch.randn(2, 3), "s": torch.tensor(0.5)}
    expected = reference(TWO_OUTPUTS, feeds)
    out = sess.run(feeds, ["z", "y"])
    assert list(out) == ["z", "y"]
    np.testing.assert_array_equal(out["z"].numpy(), expected["z"])
    assert list(sess.run(feeds, ["y"])) == ["y"]
    assert list(sess(**feeds)) == ["y", "z"]


def test_output_shape_overrides_at_construction_and_per_call() -> None:
    model = parse(f"""{OPSET}
    g (float[N] x) => (float[?] y) {{
        y = Concat<axis = 0>(x, x)
    }}""")
    sess = ortbind.TorchSession(model, output_shapes={"y": ["2*N"]})
    x = torch.randn(5)
    assert sess.resolve_shapes({"x": (5,)})["y"] == ortbind.OutputPlan("y", Rule.OVERRIDE, (10,))
    assert torch.equal(sess(x=x)["y"], torch.cat([x, x]))
    plain = ortbind.TorchSession(model)
    assert torch.equal(plain.run({"x": x}, output_shapes={"y": (10,)})["y"], torch.cat([x, x]))
    # The caller's shape, refused: said at once (no rerun can help), naming output_shapes and the fix.
    with pytest.raises(ortbind.ShapeError, match="computed output shape for this run is \\{10\\}") as info:
        plain.run({"x": x}, output_shapes={"y": (9,)})
    assert (info.value.kind, info.value.name) == ("output", "y")
    assert str(info.value).startswith("output_shapes['y']: ONNX Runtime refused a buffer of the shape given (")
    assert str(info.value).endswith(
        "; give the shape the model produces, or leave 'y' out of output_shapes= so that ORT allocates it"
    )
    with pytest.raises(ortbind.ShapeError) as info:
        plain.run({"x": x}, output_shapes={"y": (9,)}, out={"y": torch.empty(9)})
    assert (info.value.kind, info.value.name) == ("out", "y")
    assert str(info.value).startswith("out 'y': ONNX Runtime refused a buffer of the shape given (")


def test_scalars_and_empty_tensors() -> None:
    model = parse(f"""{OPSET}
    g (float a, float[N, 3] b) => (float c, float[N, 3] d) {{
        c = Neg(a)
        d = Mul(b, a)
    }}""")
    sess = ortbind.TorchSession(model)
    for b in (torch.randn(4, 3), torch.empty(0, 3)):
        feeds = {"a": torch.tensor(2.5), "b": b}
        out = sess(**feeds)
        assert_equal_reference(out, reference(model, feeds))
        assert out["c"].shape == ()


def test_errors_from_ort_keep_its_message() -> None:
    model = parse(f"""{OPSET}
    g (float[N] x, int64[2] shape) => (float[?, ?] y) {{
        y = Reshape(x, shape)
    }}""")
    sess = ortbind.TorchSession(model)
    with pytest.raises(ortbind.RunError) as info:
        sess(x=torch.randn(6), shape=torch.tensor([4, 4]))
    assert str(info.value).startswith("ONNX Runtime failed during the run: ")
    assert "The input tensor cannot be reshaped to the requested shape" in str(info.value)
    assert isinstance(info.value, RuntimeError)
    # The session is still usable afterwards.
    assert sess(x=torch.arange(6.0), shape=torch.tensor([2, 3]))["y"].shape == (2, 3)


def test_allow_copy_copies_non_contiguous_inputs_with_a_warning() -> None:
    sess = ortbind.TorchSession(TWO_OUTPUTS, allow_copy=True)
    x = torch.randn(3, 2).T
    with pytest.warns(
        ortbind.CopyWarning,
        match=r"^input 'x': copied because tensor is not contiguous \(shape \(2, 3\), strides \(1, 2\)\) "
        r"\(allow_copy=True\)$",
    ):
        out = sess(x=x, s=torch.tensor(1.0))
    assert torch.equal(out["y"], x)


def test_external_data_model_from_a_path(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((64, 32)).astype(np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["B", 64])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(weight, "w")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    assert (tmp_path / "weights.bin").stat().st_size == weight.nbytes
    assert path.stat().st_size < weight.nbytes
    sess = ortbind.TorchSession(path)
    x = torch.randn(3, 64)
    assert sess.resolve_shapes({"x": (3, 64)})["y"] == ortbind.OutputPlan(
        "y", Rule.INFERRED, (3, 32), "declared rank unknown"
    )
    out = sess(x=x)
    np.testing.assert_array_equal(out["y"].numpy(), reference(str(path), {"x": x})["y"])


@pytest.mark.slow
def test_dynamo_export_expressions_resolve_without_inference() -> None:
    """A real torch.onnx.export(dynamo=True) model: strided conv then 2x upsample."""
    pytest.importorskip("onnxscript")

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.interpolate(self.conv(x), scale_factor=2.0, mode="nearest")

    net = Net().eval()
    program = torch.onnx.export(
        net,
        (torch.randn(1, 3, 17, 23),),
        dynamo=True,
        dynamic_shapes={"x": {0: "batch", 2: "H", 3: "W"}},
        input_names=["x"],
        output_names=["y"],
        verbose=False,
    )
    model = program.model_proto
    assert ortbind.TorchSession(model).outputs[0].dims == ("batch", 8, "2*(((H - 1)//2)) + 2", "2*(((W - 1)//2)) + 2")
    sess = ortbind.TorchSession(model)
    for shape in [(2, 3, 17, 23), (1, 3, 8, 8), (3, 3, 31, 5)]:
        x = torch.randn(*shape)
        y = sess(x=x)["y"]
        assert sess.resolve_shapes({"x": shape})["y"].rule is Rule.DECLARED
        np.testing.assert_array_equal(y.numpy(), reference(model.SerializeToString(), {"x": x})["y"])
        torch.testing.assert_close(y, net(x), rtol=1e-5, atol=1e-5)
    assert sess.plans.inferences == 0


def test_ort_allocated_outputs_stay_valid_after_later_calls() -> None:
    """The thread's reused binding lets go of what ORT allocated once it is handed over."""
    sess = ortbind.TorchSession(DATA_DEPENDENT)
    out = sess(x=torch.tensor([1.0, -2.0, 3.0]))
    assert torch.equal(out["nz"], torch.tensor([[0, 2]]))
    # ... and the next call still binds every output afresh.
    again = sess(x=torch.tensor([-1.0, 2.0]))
    assert torch.equal(again["nz"], torch.tensor([[1]]))
    assert torch.equal(out["nz"], torch.tensor([[0, 2]]))
