"""Every validation error, with its exact message, raised before ONNX Runtime touches memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import ortbind

from ..helpers import raises
from ..models import parse

OPSET = '<ir_version: 8, opset_import: ["" : 17]>'

MODEL = parse(f"""{OPSET}
g (float16[batch, 3, H, W] sample, int64 step) => (float16[batch, 3, H, W] y, float16[W, H] t) {{
    zero = Constant<value = int64 {{0}}>()
    s = Cast<to = 10>(step)
    y = Mul(sample, s)
    first = Gather<axis = 0>(sample, zero)
    chan = Gather<axis = 0>(first, zero)
    t = Transpose(chan)
}}""")


@pytest.fixture(scope="module")
def sess() -> ortbind.TorchSession:
    return ortbind.TorchSession(MODEL, "cpu")


def feeds(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "sample": torch.randn(2, 3, 4, 5, dtype=torch.float16),
        "step": torch.tensor(3),
    }
    base.update(changes)
    return base


def test_the_fixture_feeds_are_valid(sess: ortbind.TorchSession) -> None:
    out = sess.run(feeds())  # type: ignore[arg-type]
    assert out["y"].shape == (2, 3, 4, 5) and out["t"].shape == (5, 4)


def test_missing_input(sess: ortbind.TorchSession) -> None:
    with raises(ortbind.InputError, "missing input 'step'; the model needs step: tensor(int64) []"):
        sess(sample=torch.randn(2, 3, 4, 5, dtype=torch.float16))
    with raises(
        ortbind.InputError,
        "missing inputs 'sample', 'step'; the model needs sample: tensor(float16) ['batch', 3, 'H', 'W']; "
        "step: tensor(int64) []",
    ):
        sess()


def test_unknown_input(sess: ortbind.TorchSession) -> None:
    with raises(ortbind.InputError, "input 'steps': the model has no such input; its inputs are 'sample', 'step'"):
        sess.run(feeds(steps=torch.tensor(1)))  # type: ignore[arg-type]


def test_not_a_tensor(sess: ortbind.TorchSession) -> None:
    with raises(
        ortbind.InputError,
        "input 'sample': expected a torch.Tensor, got numpy.ndarray; convert it with torch.from_numpy(...)",
    ):
        sess.run(feeds(sample=np.zeros((2, 3, 4, 5), np.float16)))  # type: ignore[arg-type]
    with raises(
        ortbind.InputError, "input 'step': expected a torch.Tensor, got builtins.int; wrap it with torch.as_tensor(...)"
    ):
        sess.run(feeds(step=3))  # type: ignore[arg-type]
    with raises(ortbind.InputError, "feeds: expected a mapping of input name -> torch.Tensor, got list"):
        sess.run([torch.zeros(1)])  # type: ignore[arg-type]


def test_dtype_mismatch_is_never_cast(sess: ortbind.TorchSession) -> None:
    with raises(
        ortbind.DTypeError,
        "input 'sample': expected dtype torch.float16 (ONNX FLOAT16), got torch.float32; cast with .to(torch.float16)",
    ) as info:
        sess.run(feeds(sample=torch.randn(2, 3, 4, 5)))  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError)
    assert (info.value.kind, info.value.name) == ("input", "sample")
    with raises(
        ortbind.DTypeError,
        "input 'step': expected dtype torch.int64 (ONNX INT64), got torch.int32; cast with .to(torch.int64)",
    ):
        sess.run(feeds(step=torch.tensor(3, dtype=torch.int32)))  # type: ignore[arg-type]


def test_rank_and_fixed_dims(sess: ortbind.TorchSession) -> None:
    with raises(
        ortbind.ShapeError,
        "input 'sample': expected 4 dims ['batch', 3, 'H', 'W'], got shape (3, 4, 5); reshape it to the declared rank",
    ):
        sess.run(feeds(sample=torch.randn(3, 4, 5, dtype=torch.float16)))  # type: ignore[arg-type]
    with raises(
        ortbind.ShapeError, "input 'sample': dim 1 must be 3 (declared ['batch', 3, 'H', 'W']), got shape (2, 4, 4, 5)"
    ):
        sess.run(feeds(sample=torch.randn(2, 4, 4, 5, dtype=torch.float16)))  # type: ignore[arg-type]
    with raises(
        ortbind.ShapeError, "input 'step': expected 0 dims [], got shape (1,); reshape it to the declared rank"
    ):
        sess.run(feeds(step=torch.tensor([3])))  # type: ignore[arg-type]


def test_wrong_device_is_never_moved(sess: ortbind.TorchSession) -> None:
    meta = torch.empty(2, 3, 4, 5, dtype=torch.float16, device="meta")
    with raises(
        ortbind.InputError,
        "input 'sample': it is a meta tensor (shape and dtype only, no memory); ONNX Runtime needs a tensor "
        "backed by real memory, e.g. torch.empty(...) or .clone() of a real tensor, outside fake/meta tracing",
    ):
        sess.run(feeds(sample=meta))  # type: ignore[arg-type]


def test_non_contiguous_inputs_are_rejected(sess: ortbind.TorchSession) -> None:
    transposed = torch.randn(2, 3, 5, 4, dtype=torch.float16).transpose(2, 3)
    with raises(
        ortbind.InputError,
        "input 'sample': tensor is not contiguous (shape (2, 3, 4, 5), strides (60, 20, 1, 4)); pass .contiguous(), "
        "or create the session with allow_copy=True to have ortbind copy it (with a CopyWarning)",
    ):
        sess.run(feeds(sample=transposed))  # type: ignore[arg-type]
    expanded = torch.randn(1, 3, 4, 5, dtype=torch.float16).expand(2, 3, 4, 5)
    with raises(
        ortbind.InputError,
        "input 'sample': tensor is not contiguous (shape (2, 3, 4, 5), strides (0, 20, 5, 1)); pass .contiguous(), "
        "or create the session with allow_copy=True to have ortbind copy it (with a CopyWarning)",
    ):
        sess.run(feeds(sample=expanded))  # type: ignore[arg-type]


def test_sparse_tensors_are_rejected(sess: ortbind.TorchSession) -> None:
    sparse = torch.zeros(2, 3, 4, 5, dtype=torch.float16).to_sparse()
    with raises(
        ortbind.InputError,
        "input 'sample': expected a dense (strided) tensor, got layout torch.sparse_coo; convert it with .to_dense()",
    ):
        sess.run(feeds(sample=sparse))  # type: ignore[arg-type]


def test_out_buffer_errors(sess: ortbind.TorchSession) -> None:
    good = feeds()
    y = torch.empty(2, 3, 4, 5, dtype=torch.float16)
    with raises(
        ortbind.DTypeError,
        "out 'y': expected dtype torch.float16 (ONNX FLOAT16), got torch.float32; cast with .to(torch.float16)",
    ):
        sess.run(good, out={"y": torch.empty(2, 3, 4, 5)})  # type: ignore[arg-type]
    with raises(
        ortbind.ShapeError,
        "out 'y': expected shape (2, 3, 4, 5) for these inputs (from the dims the model declares or infers for it), "
        "got (2, 3, 5, 4); allocate it with that shape",
    ):
        sess.run(good, out={"y": torch.empty(2, 3, 5, 4, dtype=torch.float16)})  # type: ignore[arg-type]
    with raises(
        ortbind.OutputError,
        "out 'y': buffer cannot be written as it is: tensor is not contiguous (shape (2, 3, 4, 5), "
        "strides (60, 20, 1, 4)); pass a fresh buffer from torch.empty(...)",
    ):
        sess.run(good, out={"y": torch.empty(2, 3, 5, 4, dtype=torch.float16).transpose(2, 3)})  # type: ignore[arg-type]
    with raises(ortbind.OutputError, "out 'q': the model has no such output; its outputs are 'y', 't'"):
        sess.run(good, out={"q": y})  # type: ignore[arg-type]
    with raises(ortbind.OutputError, "out 'y': not among output_names of this call; add it there or drop the buffer"):
        sess.run(good, ["t"], out={"y": y})  # type: ignore[arg-type]


def test_out_buffers_must_not_alias(sess: ortbind.TorchSession) -> None:
    good = feeds()
    with raises(
        ortbind.OutputError,
        "out 'y': buffer overlaps input 'sample' in memory; outputs need memory of their own, pass a separate tensor",
    ):
        sess.run(good, out={"y": good["sample"]})  # type: ignore[arg-type]
    block = torch.empty(2 * 3 * 4 * 5 + 10, dtype=torch.float16)
    with raises(
        ortbind.OutputError,
        "out 'y': buffer overlaps out 't' in memory; outputs need memory of their own, pass a separate tensor",
    ):
        sess.run(good, out={"y": block[:120].view(2, 3, 4, 5), "t": block[110:130].view(5, 4)})  # type: ignore[arg-type]


def test_output_selection_errors(sess: ortbind.TorchSession) -> None:
    good = feeds()
    with raises(ortbind.OutputError, "output 'q': the model has no such output; its outputs are 'y', 't'"):
        sess.run(good, ["q"])  # type: ignore[arg-type]
    with raises(
        ortbind.OutputError, "output_names: 'y' is named twice; name each output once", kind="output", name="y"
    ):
        sess.run(good, ["y", "y"])  # type: ignore[arg-type]
    with raises(ortbind.OutputError, "output_names: expected a sequence of names, got the string 'y'; pass ['y']"):
        sess.run(good, "y")  # type: ignore[arg-type]
    with raises(ortbind.ShapeError, "output_shapes['t']: not among the outputs of this call ('y')"):
        sess.run(good, ["y"], output_shapes={"t": (5, 4)})  # type: ignore[arg-type]
    with raises(ortbind.ShapeError, "output_shapes['t']: expected a sequence of ints in [0, 2**63), got (5, -4)"):
        sess.run(good, output_shapes={"t": (5, -4)})  # type: ignore[arg-type]


def test_construction_overrides_are_checked() -> None:
    with raises(ortbind.ShapeError, "output_shapes['q']: the model has no output 'q'; its outputs are 'y', 't'"):
        ortbind.TorchSession(MODEL, output_shapes={"q": [1]})
    with raises(
        ortbind.ShapeError,
        "output_shapes['t']: symbol 'Q' is not a dim of any input; the inputs declare 'H', 'W', 'batch'",
    ):
        ortbind.TorchSession(MODEL, output_shapes={"t": ["W", "Q"]})


def test_strict_rejects_symbols_bound_to_different_sizes() -> None:
    model = parse(f"""{OPSET}
    g (float[batch, 4] sample, float[batch] timestep) => (float[batch, 4] out) {{
        axes = Constant<value = int64[1] {{1}}>()
        t = Unsqueeze(timestep, axes)
        out = Mul(sample, t)
    }}""")
    sess = ortbind.TorchSession(model, strict=True)
    with raises(
        ortbind.ShapeError,
        "input 'timestep': dim 0 ('batch') is 1, but input 'sample' dim 0 binds 'batch' to 2; make them equal, "
        "or create the session with strict=False",
    ):
        sess(sample=torch.randn(2, 4), timestep=torch.tensor([1.0]))
    assert sess(sample=torch.randn(2, 4), timestep=torch.tensor([1.0, 2.0]))["out"].shape == (2, 4)


def test_unbindable_inputs_fail_at_construction() -> None:
    model = parse(f"""{OPSET}
    g (string[N] text) => (int64[1] n) {{
        n = Shape(text)
    }}""")
    with raises(
        ortbind.ModelError,
        "input 'text': its element type STRING has no torch dtype that ONNX Runtime can bind; "
        "run this model with onnxruntime.InferenceSession instead",
    ):
        ortbind.TorchSession(model)


def test_unbindable_outputs_fail_at_call_and_the_others_still_run() -> None:
    model = parse(f"""{OPSET}
    g (float[N] x) => (seq(float[N]) parts, float[N] y) {{
        parts = SequenceConstruct(x, x)
        y = Neg(x)
    }}""")
    sess = ortbind.TorchSession(model)
    assert sess.outputs[0].type_str == "seq(tensor(float))"
    with raises(
        ortbind.ModelError,
        "output 'parts': it is a seq(tensor(float)); ortbind binds dense tensors only; request the other outputs "
        "with run(feeds, output_names=[...])",
    ):
        sess(x=torch.ones(3))
    assert torch.equal(sess.run({"x": torch.ones(3)}, ["y"])["y"], -torch.ones(3))


def test_model_loading_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.onnx"
    with raises(ortbind.ModelError, f"model file {str(missing)!r} does not exist; pass the path of a .onnx file"):
        ortbind.TorchSession(missing)
    with pytest.raises(ortbind.ModelError, match=r"^model bytes: not a serialized ONNX model \("):
        ortbind.TorchSession(b"\x08\x07garbage that is not protobuf\xff")
    with raises(ortbind.ModelError, "model: expected a path, bytes or onnx.ModelProto, got int"):
        ortbind.TorchSession(3)  # type: ignore[arg-type]
    broken = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("NoSuchOp", ["x"], ["y"])],
            "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        ),
        opset_imports=[onnx.helper.make_opsetid("", 17)],
        ir_version=8,
    )
    with pytest.raises(ortbind.ModelError, match=r"^model from memory: ONNX Runtime could not load it: .*NoSuchOp"):
        ortbind.TorchSession(broken)


def test_bad_devices() -> None:
    with raises(ortbind.ConfigError, "device 'mps': ortbind runs on 'cpu' or 'cuda[:N]'; pass one of those"):
        ortbind.TorchSession(MODEL, "mps")
    with pytest.raises(
        ortbind.ConfigError, match=r"^device 'gpu0': not a device \(.*\); pass 'cpu', 'cuda' or 'cuda:N'$"
    ):
        ortbind.TorchSession(MODEL, "gpu0")


def test_every_error_is_an_ortbind_error_and_a_builtin() -> None:
    for error, builtin in [
        (ortbind.ModelError, ValueError),
        (ortbind.ConfigError, ValueError),
        (ortbind.InputError, ValueError),
        (ortbind.OutputError, ValueError),
        (ortbind.DTypeError, TypeError),
        (ortbind.ShapeError, ValueError),
        (ortbind.DeviceError, ValueError),
        (ortbind.ProviderError, RuntimeError),
        (ortbind.RunError, RuntimeError),
    ]:
        assert issubclass(error, ortbind.OrtbindError)
        assert issubclass(error, builtin)
    assert issubclass(ortbind.CopyWarning, ortbind.OrtbindWarning)
    assert issubclass(ortbind.ProviderFallbackWarning, UserWarning)
