"""Attacks on a session's options and interface: checks of predictions, per-call shapes, adopted
sessions, flags and overridable initializers.

A call that computes some outputs once marked every prediction checked; an ``output_shapes`` that ORT
had no bound buffer to refuse was dropped silently; ``from_session`` adopted a model of other types;
``synchronize="no"`` synchronised. Each test states the exact outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest
import torch

import ortbind
from ortbind import Rule

from ..helpers import raises
from ..models import ACCUMULATE_LYING, parse
from ..reference import assert_equal_reference, reference

OPSET = '<ir_version: 10, opset_import: ["" : 21]>'

RELU = parse(f"{OPSET} g (float[N, 3] x) => (float[N, 3] r) {{ r = Relu(x) }}")
RELU_AND_INPUT = parse(f"{OPSET} g (float[N] x) => (float[N] y, float[N] x) {{ y = Relu(x) }}")
RELU_INT32 = parse(f"{OPSET} g (float[N] x) => (int32[N] y) {{ y = Cast <to = 6> (x) }}")
CAST_FROM_INT32 = parse(f"{OPSET} g (int32[N] x) => (float[N] y) {{ y = Cast <to = 1> (x) }}")
RELU_1D = parse(f"{OPSET} g (float[N] x) => (float[N] y) {{ y = Relu(x) }}")
RELU_2D = parse(f"{OPSET} g (float[N, 3] x) => (float[N, 3] y) {{ y = Relu(x) }}")
ADD_DEFAULT = parse(f"""{OPSET}
g (float[3] x, float[3] w) => (float[3] y)
<float[3] w = {{10.0, 20.0, 30.0}}>
{{ y = Add(x, w) }}""")

# --------------------------------------------------------------------------- checks of predictions


@pytest.mark.parametrize(
    "first",
    [
        lambda s, f: s.run(f, ["acc_out"]),
        lambda s, f: s.bind(f, ["acc_out"]).run(),
        lambda s, f: s.run(f, output_shapes={"z": (5,)}),
    ],
    ids=["a plain call of one output", "a bound call of one output", "output_shapes for z"],
)
def test_a_call_that_computes_some_outputs_checks_only_those(first: Callable[..., Any]) -> None:
    """z's declared dims were marked checked by a call that never computed z: the next call bound a
    buffer of the declared shape (on CUDA, an element-count copy would reshape it silently)."""
    sess = ortbind.TorchSession(ACCUMULATE_LYING, verify_shapes=True)
    first(sess, {"x": torch.ones(4), "acc": torch.zeros(4)})
    assert not sess.plans.get((torch.Size([4]), torch.Size([4]))).verified
    feeds = {"x": torch.ones(4), "acc": torch.zeros(4)}
    expected = reference(ACCUMULATE_LYING, feeds)
    got = sess.run(feeds, share={"acc_out": "acc"})  # no refusal: z is checked by this run
    assert_equal_reference(got, expected)
    assert torch.equal(feeds["acc"], torch.ones(4))
    plan = sess.plans.get((torch.Size([4]), torch.Size([4])))
    assert plan.verified and sess.resolve_shapes({"x": (4,), "acc": (4,)})["z"].rule is Rule.ORT


# --------------------------------------------------------------------------- shapes the caller gives


@pytest.mark.parametrize("given", [(0, 3), (5, 0)])
def test_an_empty_output_shape_given_for_a_full_output_is_an_error(given: tuple[int, int]) -> None:
    """An empty output is left to ORT (nothing to bind): no bound buffer for ORT to refuse."""
    sess = ortbind.TorchSession(RELU)
    message = (
        f"output_shapes['r']: the run produced shape (5, 3), not the {given} given; give the shape the model "
        f"produces, or leave 'r' out of output_shapes= so that it follows the model"
    )
    with raises(ortbind.ShapeError, message, kind="output", name="r"):
        sess.run({"x": torch.ones(5, 3)}, output_shapes={"r": given})
    made = ortbind.TorchSession(RELU, output_shapes={"r": ["N", 0] if given[1] == 0 else [0, 3]})
    with raises(ortbind.ShapeError, message, kind="output", name="r"):
        made(x=torch.ones(5, 3))


def test_a_shape_given_for_a_passed_through_input_must_be_the_input_s() -> None:
    sess = ortbind.TorchSession(RELU_AND_INPUT)
    message = (
        "output_shapes['x']: the run produced shape (3,), not the (5,) given; give the shape the model produces, "
        "or leave 'x' out of output_shapes= so that it follows the model"
    )
    with raises(ortbind.ShapeError, message, kind="output", name="x"):
        sess.run({"x": torch.ones(3)}, output_shapes={"x": (5,)})
    with raises(ortbind.ShapeError, message, kind="output", name="x"):
        ortbind.TorchSession(RELU_AND_INPUT, output_shapes={"x": ["N+2"]})(x=torch.ones(3))
    assert torch.equal(sess.run({"x": torch.ones(3)}, output_shapes={"x": (3,)})["x"], torch.ones(3))


def test_a_shared_output_takes_no_output_shapes() -> None:
    sess = ortbind.TorchSession(ACCUMULATE_LYING)
    feeds = {"x": torch.ones(4), "acc": torch.zeros(4)}
    with raises(
        ortbind.OutputError,
        "output_shapes['acc_out']: it is shared with input 'acc' (share=), whose shape it takes; give it one or the "
        "other",
        kind="output",
        name="acc_out",
    ):
        sess.run(feeds, ["acc_out"], share={"acc_out": "acc"}, output_shapes={"acc_out": (7,)})
    assert torch.equal(feeds["acc"], torch.zeros(4))


# --------------------------------------------------------------------------- adopted sessions


@pytest.mark.parametrize(
    ("other", "what", "declared", "its", "feeds"),
    [
        (RELU_INT32, "output 'y'", "tensor(int32)", "tensor(float)", {"x": torch.ones(3)}),
        (CAST_FROM_INT32, "input 'x'", "tensor(int32)", "tensor(float)", {"x": torch.ones(3, dtype=torch.int32)}),
    ],
    ids=["output type", "input type"],
)
def test_from_session_refuses_a_model_of_other_types(
    other: bytes, what: str, declared: str, its: str, feeds: dict[str, torch.Tensor]
) -> None:
    session = ort.InferenceSession(RELU_1D, providers=["CPUExecutionProvider"])
    message = (
        f"{what}: the model declares {declared} but the ONNX Runtime session has {its}; another model was passed to "
        f"from_session(model=...), or the session's model file was found elsewhere (a relative path read from "
        f"another working directory)"
    )
    with raises(ortbind.ModelError, message, kind="model", name=what.split("'")[1]):
        ortbind.TorchSession.from_session(session, model=other)


def test_from_session_refuses_a_model_of_another_input_rank() -> None:
    session = ort.InferenceSession(RELU_2D, providers=["CPUExecutionProvider"])
    with raises(
        ortbind.ModelError,
        "input 'x': the model declares 1 dims ['N'] but the ONNX Runtime session has 2 (['N', 3]); another model "
        "was passed to from_session(model=...), or the session's model file was found elsewhere",
        kind="model",
        name="x",
    ):
        ortbind.TorchSession.from_session(session, model=RELU_1D)


def test_from_session_of_a_relative_path_read_from_another_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "m.onnx").write_bytes(RELU_1D)
    (second / "m.onnx").write_bytes(RELU_INT32)
    monkeypatch.chdir(first)
    session = ort.InferenceSession("m.onnx", providers=["CPUExecutionProvider"])
    monkeypatch.chdir(second)
    with pytest.raises(ortbind.ModelError, match=r"^output 'y': the model declares tensor\(int32\)"):
        ortbind.TorchSession.from_session(session)
    monkeypatch.chdir(first)
    assert torch.equal(ortbind.TorchSession.from_session(session)(x=-torch.ones(2))["y"], torch.zeros(2))


# --------------------------------------------------------------------------- flags


@pytest.mark.parametrize("value", ["False", "no", 0, 1.5, None])
def test_on_off_options_are_bools(value: object) -> None:
    for name in ("strict", "allow_copy", "allow_cpu_fallback", "cuda_graph", "synchronize"):
        with raises(ortbind.ConfigError, f"{name}: expected True or False, got {value!r}", kind="option", name=name):
            ortbind.TorchSession(RELU_1D, **{name: value})
    if value is not None:
        with raises(
            ortbind.ConfigError,
            f"verify_shapes: expected True or False, or None for the device's default, got {value!r}",
            kind="option",
            name="verify_shapes",
        ):
            ortbind.TorchSession(RELU_1D, verify_shapes=value)  # type: ignore[arg-type]
    session = ort.InferenceSession(RELU_1D, providers=["CPUExecutionProvider"])
    with raises(
        ortbind.ConfigError, f"synchronize: expected True or False, got {value!r}", kind="option", name="synchronize"
    ):
        ortbind.TorchSession.from_session(session, synchronize=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["False", "no", 0, 1.5, []])
def test_synchronize_per_call_is_a_bool_or_none(value: object) -> None:
    sess = ortbind.TorchSession(RELU_1D)
    message = f"synchronize: expected True, False or None (the session's default), got {value!r}"
    x = torch.ones(2)
    with raises(ortbind.ConfigError, message, kind="option", name="synchronize"):
        sess.run({"x": x}, synchronize=value)  # type: ignore[arg-type]
    with raises(ortbind.ConfigError, message, kind="option", name="synchronize"):
        sess.run({"x": x}, run_options=ort.RunOptions(), synchronize=value)  # type: ignore[arg-type]
    bound = sess.bind({"x": x})
    with raises(ortbind.ConfigError, message, kind="option", name="synchronize"):
        bound.run(synchronize=value)  # type: ignore[arg-type]
    assert torch.equal(bound.run(synchronize=True)["y"], torch.ones(2))


# --------------------------------------------------------------------------- overridable initializers


def test_feeding_an_overridable_initializer_says_what_it_is() -> None:
    sess = ortbind.TorchSession(ADD_DEFAULT)
    assert torch.equal(sess(x=torch.ones(3))["y"], torch.tensor([11.0, 21.0, 31.0]))
    with raises(
        ortbind.InputError,
        "input 'w': an initializer the model lets callers override; ortbind runs with the model's value and takes "
        "only its other inputs ('x'); to override it, run the model with onnxruntime.InferenceSession",
        kind="input",
        name="w",
    ):
        sess.run({"x": torch.ones(3), "w": torch.zeros(3)})


# --------------------------------------------------------------------------- output names, out= and predictions

DOUBLED = parse(f"{OPSET} g (float[N] x) => (float[N] y) {{ y = Concat <axis = 0> (x, x) }}")  # really 2N
DOUBLED_FLOAT8 = parse(f"""{OPSET}
g (float[N] x) => (float8e4m3fn[N] y) {{
    c = Concat <axis = 0> (x, x)
    y = Cast <to = 17> (c)
}}""")
TWO_OUTPUTS = parse(f"{OPSET} g (float[N] x) => (float[N] a, float[N] b) {{ a = Relu(x)\n b = Neg(x) }}")


def test_output_names_are_read_as_plain_strings() -> None:
    class LyingName(str):
        """Reads 'a' but hashes and compares as 'b'."""

        __slots__ = ()

        def __hash__(self) -> int:
            return hash("b")

        def __eq__(self, other: object) -> bool:
            return other == "b"

    sess = ortbind.TorchSession(TWO_OUTPUTS)
    x = torch.tensor([1.0, -2.0])
    assert list(sess.run({"x": x}, [LyingName("a")])) == ["a"]
    assert torch.equal(sess.bind({"x": x}, [LyingName("a")]).run()["a"], torch.relu(x))


@pytest.mark.parametrize(
    ("names", "message", "name"),
    [
        (["a", "b", "a"], "output_names: 'a' is named twice; name each output once", "a"),
        (
            (n for n in ["a"]),
            "output_names: expected a sequence of output names, got generator; pass a list of names",
            None,
        ),
        ({"a"}, "output_names: expected a sequence of output names, got set; pass a list of names", None),
    ],
    ids=["twice", "generator", "set"],
)
def test_output_names_errors_name_the_output_and_the_fix(names: object, message: str, name: str | None) -> None:
    sess = ortbind.TorchSession(TWO_OUTPUTS)
    with raises(ortbind.OutputError, message, kind="output", name=name):
        sess.run({"x": torch.ones(2)}, names)  # type: ignore[arg-type]


def test_an_out_buffer_of_the_true_shape_is_taken_while_a_prediction_is_unconfirmed() -> None:
    """With verify_shapes, a buffer was refused for differing from a prediction no run had checked, and
    the advice was to pass the predicted (wrong) shape."""
    sess = ortbind.TorchSession(DOUBLED, verify_shapes=True)
    x = torch.tensor([1.0, 2.0, 3.0])
    buffer = torch.empty(6)
    assert sess.run({"x": x}, out={"y": buffer})["y"] is buffer
    assert torch.equal(buffer, torch.cat([x, x]))
    with raises(
        ortbind.ShapeError,
        "out 'y': the run produced shape (6,), not the expected (3,) that the dims the model declares or infers "
        "gave; pass a buffer of shape (6,) (later calls take it)",
        kind="out",
        name="y",
    ):
        ortbind.TorchSession(DOUBLED, verify_shapes=True).run({"x": x}, out={"y": torch.empty(3)})


def test_a_float8_output_is_bound_to_its_out_buffer_when_its_prediction_proves_wrong() -> None:
    x = torch.tensor([1.0, 2.0, 448.0])
    expected = torch.cat([x, x]).to(torch.float8_e4m3fn).view(torch.uint8)
    sess = ortbind.TorchSession(DOUBLED_FLOAT8, verify_shapes=True)
    for _ in range(2):  # the first bind checks the prediction (the float8 values come back in the buffer)
        buffer = torch.empty(6, dtype=torch.float8_e4m3fn)
        got = sess.bind({"x": x}, out={"y": buffer}).run()["y"]
        assert got is buffer and torch.equal(buffer.view(torch.uint8), expected)


def test_a_float8_output_over_the_size_limit_gets_the_advice_that_works() -> None:
    sess = ortbind.TorchSession(
        parse(f"{OPSET} g (float[N, 3] x) => (float8e4m3fn[N, 3] y) {{ y = Cast <to = 17> (x) }}"), max_output_bytes=8
    )
    x = torch.randn(5, 3)
    with raises(
        ortbind.ShapeError,
        "output 'y': its shape is known but left to ONNX Runtime (shape (5, 3) (declared ['N', 3]) needs 15 B, more "
        "than max_output_bytes (8 B)), which cannot hand FLOAT8E4M3FN tensors over through DLPack; pass "
        "out={'y': buffer} or raise max_output_bytes",
        kind="output",
        name="y",
    ):
        sess(x=x)
    buffer = torch.empty(5, 3, dtype=torch.float8_e4m3fn)
    assert sess.run({"x": x}, out={"y": buffer})["y"] is buffer
    assert torch.equal(buffer.view(torch.uint8), x.to(torch.float8_e4m3fn).view(torch.uint8))


@pytest.mark.parametrize(
    ("signature", "message", "name"),
    [
        (((2,),), "signature: expected one shape per input ('x', 'acc'), in that order, got ((2,),)", None),
        (
            ((2,), (2,), (1,)),
            "signature: expected one shape per input ('x', 'acc'), in that order, got ((2,), (2,), (1,))",
            None,
        ),
        (((-2,), (2,)), "signature: input 'x': expected a sequence of ints in [0, 2**63), got (-2,)", "x"),
        ("xy", "signature: expected one shape per input ('x', 'acc'), in that order, got 'xy'", None),
    ],
    ids=["too few", "too many", "negative", "a string"],
)
def test_plans_get_checks_the_signature(signature: object, message: str, name: str | None) -> None:
    sess = ortbind.TorchSession(ACCUMULATE_LYING)
    with raises(ortbind.ShapeError, message, kind="input", name=name):
        sess.plans.get(signature)
    assert sess.plans.signatures() == []
    assert sess.plans.get([[2], [2]]).entries[0] == ("b", (2,), "")


def test_a_float8_out_buffer_of_the_wrong_shape_is_refused_without_spoiling_the_plan() -> None:
    model = parse(f"{OPSET} g (float[N, K] x) => (float8e4m3fn[N, K] y) {{ y = Cast <to = 17> (x) }}")
    sess = ortbind.TorchSession(model, verify_shapes=True)
    x = torch.arange(6.0).reshape(2, 3)
    with raises(
        ortbind.ShapeError,
        "out 'y': the run produced shape (2, 3), not the expected (3, 2) that the dims the model declares or infers "
        "gave; pass a buffer of shape (2, 3) (later calls take it)",
        kind="out",
        name="y",
    ):
        sess.run({"x": x}, out={"y": torch.empty(3, 2, dtype=torch.float8_e4m3fn)})
    assert sess.resolve_shapes({"x": (2, 3)})["y"] == ortbind.OutputPlan("y", Rule.DECLARED, (2, 3))
    got = sess(x=x)["y"]
    assert torch.equal(got.view(torch.uint8), x.to(torch.float8_e4m3fn).view(torch.uint8))


def test_an_out_buffer_for_an_empty_output_is_checked_before_the_run() -> None:
    sess = ortbind.TorchSession(RELU)
    with raises(
        ortbind.ShapeError,
        "out 'r': expected shape (0, 3) for these inputs (from the dims the model declares or infers for it), got "
        "(5, 3); allocate it with that shape",
        kind="out",
        name="r",
    ):
        sess.run({"x": torch.ones(0, 3)}, out={"r": torch.full((5, 3), 7.0)})
