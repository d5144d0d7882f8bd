"""The element-type table, and every type through a real run against a reference run."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto

import ortbind
from ortbind._dtypes import element_type_name, from_onnx, from_torch

from ..models import as_bytes, cast_model, identity_model, parse, random_tensor, single_node_model
from ..reference import reference as reference_outputs

ROWS = list(ortbind.ELEMENT_TYPES.values())
ROW_IDS = [row.name for row in ROWS]
# ORT 1.31's CPU provider has no Identity kernel for FLOAT8E8M0; test_cast_to_float covers it.
IDENTITY_ROWS = [row for row in ROWS if row.onnx != TensorProto.FLOAT8E8M0]
NUMPYLESS_ROWS = [row for row in ROWS if row.numpy is None]


# --------------------------------------------------------------------------- the table


@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_row_is_consistent(row: ortbind.ElementType) -> None:
    assert row.torch.itemsize == row.itemsize
    assert row.name == onnx.TensorProto.DataType.Name(row.onnx)
    assert from_torch(row.torch) is row
    assert from_onnx(row.onnx) is row
    assert str(row) == row.name


@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_row_agrees_with_onnx_numpy_mapping(row: ortbind.ElementType) -> None:
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(row.onnx)  # ml_dtypes where numpy has none
    assert np_dtype.itemsize == row.itemsize
    if row.numpy is not None:
        assert row.numpy == np_dtype
        assert row.numpy.itemsize == row.itemsize


@pytest.mark.parametrize(
    "torch_name",
    ["bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu"],
)
def test_bfloat16_and_float8_are_present(torch_name: str) -> None:
    dtype = getattr(torch, torch_name)
    row = from_torch(dtype)
    assert row is not None
    assert row.numpy is None


@pytest.mark.parametrize(
    "onnx_type",
    [
        TensorProto.UNDEFINED,
        TensorProto.STRING,
        TensorProto.COMPLEX64,
        TensorProto.COMPLEX128,
        TensorProto.UINT4,
        TensorProto.INT4,
        TensorProto.FLOAT4E2M1,
        TensorProto.UINT2,
        TensorProto.INT2,
    ],
    ids=onnx.TensorProto.DataType.Name,
)
def test_unbindable_types_are_absent(onnx_type: int) -> None:
    assert onnx_type not in ortbind.ELEMENT_TYPES
    assert from_onnx(onnx_type) is None


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128, torch.float4_e2m1fn_x2, torch.quint8])
def test_torch_dtypes_without_a_row(dtype: torch.dtype) -> None:
    assert from_torch(dtype) is None


@pytest.mark.parametrize(
    "onnx_type", [pytest.param(value, id=name) for name, value in onnx.TensorProto.DataType.items()]
)
def test_element_type_name_matches_onnx(onnx_type: int) -> None:
    assert element_type_name(onnx_type) == onnx.TensorProto.DataType.Name(onnx_type)


def test_element_type_name_of_an_unknown_int() -> None:
    assert element_type_name(1000) == "<1000>"


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("row", IDENTITY_ROWS, ids=[row.name for row in IDENTITY_ROWS])
def test_identity_round_trip_is_bit_exact(row: ortbind.ElementType) -> None:
    model = identity_model(row.onnx, ["batch", "n"])
    x = random_tensor(row.torch, (3, 5), seed=row.onnx)
    y = ortbind.TorchSession(model, "cpu")(x=x)["y"]
    assert y.dtype is row.torch
    assert y.shape == (3, 5)
    if row.numpy is not None:
        (reference,) = reference_outputs(model, {"x": x}).values()
        assert reference.dtype == row.numpy
        assert as_bytes(y) == reference.tobytes()
    else:
        # numpy cannot hold the reference's output; Identity must give back the input bits.
        assert as_bytes(y) == as_bytes(x)


@pytest.mark.parametrize("row", NUMPYLESS_ROWS, ids=[row.name for row in NUMPYLESS_ROWS])
def test_cast_to_float_matches_reference_and_torch(row: ortbind.ElementType) -> None:
    # Every bit pattern of the 1-byte types; random ones for bfloat16.
    if row.itemsize == 1:
        x = torch.arange(256, dtype=torch.int16).to(torch.uint8).view(row.torch)
    else:
        x = random_tensor(row.torch, (4096,), seed=row.onnx)
    model = cast_model(row.onnx, TensorProto.FLOAT, ["N"])
    y = ortbind.TorchSession(model, "cpu")(x=x)["y"]

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    bits = x.view(torch.uint8 if row.itemsize == 1 else torch.int16).numpy()
    feed = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bits, row.onnx)
    (reference,) = session.run_with_ort_values(["y"], {"x": feed})
    assert as_bytes(y) == reference.numpy().tobytes()
    torch.testing.assert_close(y, x.float(), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("op", ["Add", "Mul"])
def test_float16_arithmetic_matches_torch(op: str) -> None:
    model = parse(f"""
        <ir_version: 10, opset_import: ["" : 21]>
        g (float16[N] a, float16[N] b) => (float16[N] c) {{ c = {op}(a, b) }}
    """)
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 1000, generator=generator).half()
    c = ortbind.TorchSession(model, "cpu")(a=a, b=b)["c"]
    torch.testing.assert_close(c, a + b if op == "Add" else a * b)


@pytest.mark.parametrize("op", ["Add", "Mul"])
def test_bfloat16_arithmetic_matches_torch(op: str) -> None:
    # ORT's CPU provider has no bfloat16 Add/Mul, so the graph computes in float and rounds back,
    # which is what torch does for bfloat16 on CPU.
    model = parse(f"""
        <ir_version: 10, opset_import: ["" : 21]>
        g (bfloat16[N] a, bfloat16[N] b) => (bfloat16[N] c) {{
            af = Cast<to=1>(a)
            bf = Cast<to=1>(b)
            cf = {op}(af, bf)
            c = Cast<to=16>(cf)
        }}
    """)
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 1000, generator=generator).bfloat16()
    c = ortbind.TorchSession(model, "cpu")(a=a, b=b)["c"]
    assert c.dtype is torch.bfloat16
    torch.testing.assert_close(c, a + b if op == "Add" else a * b)


@pytest.mark.parametrize(("dims", "shape"), [([], ()), (["N", 3], (0, 3))], ids=["scalar", "zero-size"])
def test_float32_scalar_and_empty_round_trip(dims: list[int | str], shape: tuple[int, ...]) -> None:
    model = identity_model(TensorProto.FLOAT, dims)
    x = torch.randn(shape)
    y = ortbind.TorchSession(model, "cpu")(x=x)["y"]
    (reference,) = reference_outputs(model, {"x": x}).values()
    assert y.shape == shape == reference.shape
    assert y.dtype is torch.float32
    torch.testing.assert_close(y, torch.from_numpy(reference), rtol=0, atol=0)


def test_comparison_output_is_bool() -> None:
    model = parse("""
        <ir_version: 10, opset_import: ["" : 21]>
        g (float[N] a, float[N] b) => (bool[N] c) { c = Greater(a, b) }
    """)
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 64, generator=generator)
    c = ortbind.TorchSession(model, "cpu")(a=a, b=b)["c"]
    assert c.dtype is torch.bool
    assert torch.equal(c, a > b)
    (reference,) = reference_outputs(model, {"a": a, "b": b}).values()
    assert torch.equal(c, torch.from_numpy(reference))


# --------------------------------------------------------------------------- rule d (ORT allocates)


@pytest.mark.parametrize(
    ("elem_type", "x"),
    [
        (TensorProto.INT64, torch.tensor([[0, 3, 0], [7, 0, -1]])),
        (TensorProto.FLOAT, torch.tensor([[0.0, 0.5, -0.0], [float("nan"), 0.0, 2.0]])),
        (TensorProto.BOOL, torch.tensor([[True, False, False], [False, True, True]])),
    ],
    ids=["INT64", "FLOAT", "BOOL"],
)
def test_nonzero_is_allocated_by_ort(elem_type: int, x: torch.Tensor) -> None:
    model = single_node_model("NonZero", [("x", elem_type, ["A", "B"])], [("y", TensorProto.INT64, [2, "nnz"])])
    session = ortbind.TorchSession(model, "cpu")
    assert session.resolve_shapes({"x": x.shape})["y"].rule is ortbind.Rule.ORT
    y = session(x=x)["y"]
    assert y.dtype is torch.int64
    assert torch.equal(y, torch.nonzero(x).T)
    (reference,) = reference_outputs(model, {"x": x}).values()
    assert torch.equal(y, torch.from_numpy(reference))


@pytest.mark.parametrize(
    ("elem_type", "x"),
    [
        (TensorProto.INT64, torch.tensor([5, 1, 5, -2, 1, 9])),
        (TensorProto.FLOAT, torch.tensor([2.5, -1.0, 2.5, 0.0, -1.0])),
        (TensorProto.INT8, torch.tensor([3, 3, -7, 0], dtype=torch.int8)),
    ],
    ids=["INT64", "FLOAT", "INT8"],
)
def test_unique_is_allocated_by_ort(elem_type: int, x: torch.Tensor) -> None:
    model = single_node_model("Unique", [("x", elem_type, ["N"])], [("y", elem_type, ["U"])], sorted=1)
    session = ortbind.TorchSession(model, "cpu")
    assert session.resolve_shapes({"x": x.shape})["y"].rule is ortbind.Rule.ORT
    y = session(x=x)["y"]
    assert y.dtype is x.dtype
    assert torch.equal(y, torch.unique(x, sorted=True))
    (reference,) = reference_outputs(model, {"x": x}).values()
    assert torch.equal(y, torch.from_numpy(reference))


def test_bool_output_allocated_by_ort_is_bool() -> None:
    # DLPack hands bool over as uint8; ortbind must give back torch.bool.
    model = parse("""
        <ir_version: 10, opset_import: ["" : 21]>
        g (bool[N] x, bool[N] keep) => (bool[M] y) { y = Compress<axis=0>(x, keep) }
    """)
    x = torch.tensor([True, False, True, True, False])
    keep = torch.tensor([True, True, False, True, True])
    session = ortbind.TorchSession(model, "cpu")
    assert session.resolve_shapes({"x": (5,), "keep": (5,)})["y"].rule is ortbind.Rule.ORT
    y = session(x=x, keep=keep)["y"]
    assert y.dtype is torch.bool
    assert torch.equal(y, x[keep])
    (reference,) = reference_outputs(model, {"x": x, "keep": keep}).values()
    assert torch.equal(y, torch.from_numpy(reference))


FLOAT8_RESHAPE = """
    <ir_version: 10, opset_import: ["" : 21]>
    g (float8e4m3fn[N] x, int64[2] shape) => (float8e4m3fn[A, B] y) { y = Reshape(x, shape) }
"""


def test_float8_output_of_unknown_shape_is_refused() -> None:
    session = ortbind.TorchSession(parse(FLOAT8_RESHAPE), "cpu")
    x = random_tensor(torch.float8_e4m3fn, (8,))
    with pytest.raises(ortbind.ShapeError) as info:
        session(x=x, shape=torch.tensor([2, 4]))
    assert str(info.value) == (
        "output 'y': its shape cannot be resolved before the run "
        "(dim 0 ('A') is not bound by any input; shape inference could not tell), "
        "and ONNX Runtime cannot hand FLOAT8E4M3FN tensors over through DLPack; "
        "pass output_shapes={'y': (...)} or out={'y': buffer}"
    )


def test_float8_output_of_unknown_shape_with_output_shapes() -> None:
    session = ortbind.TorchSession(parse(FLOAT8_RESHAPE), "cpu")
    x = random_tensor(torch.float8_e4m3fn, (8,))
    y = session.run({"x": x, "shape": torch.tensor([2, 4])}, output_shapes={"y": (2, 4)})["y"]
    assert y.dtype is torch.float8_e4m3fn
    assert y.shape == (2, 4)
    assert as_bytes(y) == as_bytes(x)
