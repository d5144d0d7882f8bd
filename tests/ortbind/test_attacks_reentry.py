"""Attacks by the caller's code that runs while ortbind works: keys, descriptors, sequences, modes.

A ``str`` subclass used as a name runs its ``__hash__`` whenever it is looked up; a descriptor set as
a subclass's ``__torch_dispatch__`` runs when the attribute is read; a dims sequence runs on each
iteration; a torch mode answers ``tensor.shape`` itself. Each of these once ran after a tensor had
been checked and bound, and freed or re-typed it: ORT then read freed memory. Also here: writes
torch forbids (an input that requires grad, an inference tensor) and the caller's memory behind an
input bound as a copy.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import ortbind
from ortbind.__main__ import main

from ..helpers import raises
from ..models import parse

OPSET = '<ir_version: 10, opset_import: ["" : 21]>'
NEG = parse(f"{OPSET} g (float[N] x) => (float[N] y) {{ y = Neg(x) }}")
ADD = parse(f"{OPSET} g (float[N] a, float[N] b) => (float[N] y) {{ y = Add(a, b) }}")
NEG_2D = parse(f"{OPSET} g (float[A, B] x) => (float[A, B] y) {{ y = Neg(x) }}")
PASSTHROUGH = parse(f"{OPSET} g (float[N] x) => (float[N] x, float[N] y) {{ y = Neg(x) }}")
SIZE = 4096


def _repoint(tensor: torch.Tensor, value: float) -> None:
    """Point ``tensor`` at new memory holding ``value``, free its old memory and fill that with noise."""
    tensor.set_(torch.full((SIZE,), value))
    gc.collect()
    _noise.extend(torch.full((SIZE,), 1234.0) for _ in range(20))


_noise: list[torch.Tensor] = []


def _key(on_hash: Callable[[], None]) -> type[str]:
    class Key(str):
        __slots__ = ()

        def __hash__(self) -> int:
            on_hash()
            return str.__hash__(self)

        def __eq__(self, other: object) -> bool:
            on_hash()
            return str.__eq__(self, other)

    return Key


@pytest.mark.parametrize(
    "call",
    [
        lambda s, x, k: s.run({"x": x}, out={k("y"): torch.empty(SIZE)})["y"],
        lambda s, x, k: s.run({"x": x}, output_shapes={k("y"): (SIZE,)})["y"],
        lambda s, x, k: s.bind({k("x"): x}).run()["y"],
        lambda s, x, k: s.bind({"x": x}, out={k("y"): torch.empty(SIZE)}).run()["y"],
    ],
    ids=["out=", "output_shapes=", "bind feeds", "bind out="],
)
def test_a_name_that_is_a_str_subclass_runs_no_code_after_binding(call: Any) -> None:
    sess = ortbind.TorchSession(NEG)
    x = torch.full((SIZE,), 3.0)
    value = [3.0]

    def repoint() -> None:  # every time the name is hashed or compared: x moves, its old memory is freed
        value[0] += 1
        _repoint(x, value[0])

    got = call(sess, x, _key(repoint))
    assert torch.equal(got, -x)  # computed from x as it was when bound, never from freed memory
    _noise.clear()


def test_rebind_with_a_str_subclass_name_runs_no_code_after_binding() -> None:
    sess = ortbind.TorchSession(NEG)
    bound = sess.bind({"x": torch.zeros(SIZE)})
    t = torch.full((SIZE,), 3.0)
    value = [3.0]

    def repoint() -> None:
        value[0] += 1
        _repoint(t, value[0])

    bound.rebind({_key(repoint)("x"): t})
    for _ in range(2):
        assert torch.equal(bound.run()["y"], -t)
    _noise.clear()


def test_a_name_that_is_not_a_str_is_refused_before_anything_is_bound() -> None:
    sess = ortbind.TorchSession(NEG)
    with raises(ortbind.OutputError, "out: expected names (str) as keys, got int 1", kind="out", name=None):
        sess.run({"x": torch.ones(2)}, out={1: torch.empty(2)})  # type: ignore[dict-item]
    with raises(
        ortbind.InputError, "input '1': the model has no such input; its inputs are 'x'", kind="input", name="1"
    ):
        sess.bind({1: torch.ones(2)})  # type: ignore[dict-item]


def test_a_descriptor_as_a_subclass_dispatch_is_never_run() -> None:
    """Reading ``cls.__torch_dispatch__`` ran the descriptor, which re-typed an input checked already."""
    sess = ortbind.TorchSession(ADD)
    a = torch.full((SIZE,), 1.0)
    fired: list[int] = []

    class Descriptor:
        def __get__(self, obj: object, cls: type) -> Any:
            fired.append(1)
            a.data = torch.full((SIZE,), 1, dtype=torch.int8)
            return torch.Tensor.__torch_dispatch__

    class Sub(torch.Tensor):
        pass

    b = torch.full((SIZE,), 2.0).as_subclass(Sub)
    Sub.__torch_dispatch__ = Descriptor()  # type: ignore[assignment]
    message = (
        f"input 'b': it is a {__name__}.{Sub.__qualname__}, a tensor subclass without plain memory of its own; ONNX "
        f"Runtime needs a tensor backed by real memory, e.g. torch.empty(...) or .clone() of a real tensor, outside "
        f"fake/meta tracing"
    )
    with raises(ortbind.InputError, message, kind="input", name="b"):
        sess(a=a, b=b)
    bound = sess.bind({"a": torch.zeros(SIZE), "b": torch.zeros(SIZE)})
    with raises(ortbind.InputError, message, kind="input", name="b"):
        bound.rebind(a=a, b=b)
    assert fired == [] and a.dtype is torch.float32
    assert torch.equal(bound.run()["y"], torch.zeros(SIZE))


class _Dims(Sequence[int]):
    """Dims whose second reading frees the input ``x`` (the caller's code, run on each iteration)."""

    def __init__(self, dims: tuple[int, ...], x: torch.Tensor) -> None:
        self._dims, self._x, self.reads = dims, x, 0

    def __len__(self) -> int:
        return len(self._dims)

    def __getitem__(self, index: Any) -> Any:
        return self._dims[index]

    def __iter__(self) -> Iterator[int]:
        self.reads += 1
        if self.reads > 1:
            _repoint(self._x, 5.0)
        return iter(self._dims)


def test_output_shapes_dims_are_read_once() -> None:
    sess = ortbind.TorchSession(NEG)
    x = torch.full((SIZE,), 3.0)
    dims = _Dims((SIZE,), x)
    assert torch.equal(sess.run({"x": x}, output_shapes={"y": dims})["y"], torch.full((SIZE,), -3.0))
    assert dims.reads == 1
    empty = _Dims((), x)  # a wrong shape that is falsy: it was kept as the caller's object and read again
    with raises(
        ortbind.ShapeError,
        "output_shapes['y']: shape () has rank 0, but the model declares rank 1 ['N'], and ONNX Runtime refuses a "
        "buffer of another rank; leave 'y' out of out= and output_shapes= so that ORT allocates it",
        kind="output",
        name="y",
    ):
        sess.run({"x": x}, output_shapes={"y": empty})
    assert empty.reads == 1
    _noise.clear()


# --------------------------------------------------------------------------- writes torch forbids


def test_an_out_buffer_over_the_callers_input_bound_as_a_copy_is_refused() -> None:
    sess = ortbind.TorchSession(NEG_2D, allow_copy=True)
    memory = torch.arange(1.0, 5.0).reshape(2, 2)
    message = "out 'y': buffer overlaps input 'x' in memory; outputs need memory of their own, pass a separate tensor"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ortbind.CopyWarning)
        with raises(ortbind.OutputError, message, kind="out", name="y"):
            sess.run({"x": memory.t()}, out={"y": memory})
        with raises(ortbind.OutputError, message, kind="out", name="y"):
            sess.bind({"x": memory.t()}, out={"y": memory})
    assert torch.equal(memory, torch.arange(1.0, 5.0).reshape(2, 2))


def test_share_refuses_an_input_that_requires_grad() -> None:
    sess = ortbind.TorchSession(NEG)
    x = torch.ones(3, requires_grad=True)
    with raises(
        ortbind.InputError,
        "share['y']: input 'x' requires grad, and the run writes it in place outside autograd (torch's in-place ops "
        "refuse that too); pass a tensor that does not require grad (e.g. .detach())",
        kind="input",
        name="x",
    ):
        sess.run({"x": x}, share={"y": "x"})
    assert torch.equal(x.detach(), torch.ones(3))


def test_an_inference_tensor_is_not_written_outside_inference_mode() -> None:
    sess = ortbind.TorchSession(NEG)
    with torch.inference_mode():
        frozen = torch.zeros(3)
    written = (
        "is an inference tensor (made under torch.inference_mode()), which torch lets no one write outside inference "
        "mode; pass a tensor made outside it, or make the call inside torch.inference_mode()"
    )
    x = torch.ones(3)
    with raises(ortbind.OutputError, f"out 'y': buffer {written}", kind="out", name="y"):
        sess.run({"x": x}, out={"y": frozen})
    with raises(ortbind.OutputError, f"out 'y': buffer {written}", kind="out", name="y"):
        sess.bind({"x": x}, out={"y": frozen})
    with raises(ortbind.InputError, f"share['y']: input 'x' {written}", kind="input", name="x"):
        sess.run({"x": frozen}, share={"y": "x"})
    assert torch.equal(frozen, torch.zeros(3))
    with torch.inference_mode():
        assert sess.run({"x": x}, out={"y": frozen})["y"] is frozen
    assert torch.equal(frozen, -x)


def test_a_copy_made_under_inference_mode_is_refreshed_outside_it() -> None:
    sess = ortbind.TorchSession(NEG_2D, allow_copy=True)
    x = torch.arange(8.0).reshape(2, 4).t()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ortbind.CopyWarning)
        with torch.inference_mode():
            bound = sess.bind({"x": x})
    assert torch.equal(bound.run()["y"], -x)
    x.mul_(2)
    assert torch.equal(bound.run()["y"], -x)


# --------------------------------------------------------------------------- modes


def test_bound_calls_work_under_fake_and_function_modes() -> None:
    """Plain calls turned modes off; bind, rebind, resize and run did not (a FakeTensor came back, a
    null pointer reached ORT, and a mode could answer the per-run checks' reads itself)."""
    sess = ortbind.TorchSession(PASSTHROUGH)
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    with FakeTensorMode():
        bound = sess.bind({"x": x})
        got = bound.run()
    assert all(type(t) is torch.Tensor for t in got.values())
    assert torch.equal(got["x"], x) and torch.equal(got["y"], -x)
    memory = torch.arange(8.0)
    head = memory[:4]
    with FakeTensorMode(allow_non_fake_inputs=True):
        bound.rebind(x=head)
        bound.resize(x=(6,))
        views = bound.inputs
        got = bound.run()
    assert type(views["x"]) is torch.Tensor and torch.equal(views["x"], memory[:6])
    assert torch.equal(got["y"], -memory[:6])
    with torch.device("meta"):
        assert torch.equal(bound.run()["x"], memory[:6])


# --------------------------------------------------------------------------- the command line


def test_inspect_keeps_a_passed_through_inputs_rows_apart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(PASSTHROUGH)
    assert main(["inspect", str(path), "--shape", "x=3"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert rows == [
        "inputs:",
        "  x     FLOAT          float32          ['N']  <- (3,)",
        "outputs:",
        "  x     FLOAT          float32          ['N']  -> (3,)  (b) declared",
        "  y     FLOAT          float32          ['N']  -> (3,)  (b) declared",
    ]


class _NotAShapeFirst(Sequence[Any]):
    """Not a shape on its first reading; a shape, that frees the input ``x``, on the next."""

    def __init__(self, x: torch.Tensor) -> None:
        self._x, self.reads = x, 0

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: Any) -> Any:
        if index >= 1:
            raise IndexError(index)
        self.reads += 1
        if self.reads == 1:
            return "not an int"
        self._x.untyped_storage().resize_(0)
        return SIZE


def test_output_shapes_that_are_no_shape_are_refused_at_once() -> None:
    """Kept as the caller's object for the error, it was read again after the inputs were bound."""
    sess = ortbind.TorchSession(NEG)
    x = torch.arange(1.0, SIZE + 1)
    dims = _NotAShapeFirst(x)
    with raises(ortbind.ShapeError, f"output_shapes['y']: expected a sequence of ints in [0, 2**63), got {dims!r}"):
        sess.run({"x": x}, output_shapes={"y": dims})
    assert dims.reads == 1 and x.untyped_storage().nbytes() == SIZE * 4


def test_a_session_made_under_a_fake_mode_allocates_real_outputs() -> None:
    with FakeTensorMode():
        sess = ortbind.TorchSession(NEG)
    x = torch.ones(4)
    got = sess(x=x)["y"]
    assert type(got) is torch.Tensor and torch.equal(got, -x)
