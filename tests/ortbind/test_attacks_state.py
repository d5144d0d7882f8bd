"""Attacks on what a call keeps between its steps: the thread's binding, a bound call's state.

A call made from user code inside another call, a copied bound call, a caller's tensor changed
under an ``allow_copy`` input, an input that aliases the call's own outputs after ``rebind()`` or
``resize()``, a refused prediction after ``resize()``, a bound tensor reshaped in place. Each once
crashed the process or returned stale or wrong numbers silently; each test states the exact outcome.
"""

from __future__ import annotations

import copy
import gc
import pickle
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import torch

import ortbind
from ortbind import Rule

from ..helpers import raises
from ..models import parse, with_dims
from ..reference import assert_equal_reference, reference

OPSET = '<ir_version: 8, opset_import: ["" : 17]>'

NEG_RELU = parse(f"{OPSET} g (float[N] x) => (float[N] y, float[N] z) {{ y = Neg(x)\n z = Relu(x) }}")
ADD = parse(f"{OPSET} g (float[N] a, float[N] b) => (float[N] y) {{ y = Add(a, b) }}")
TRANSPOSE = parse(f"{OPSET} g (float[6, 6] x) => (float[6, 6] y) {{ y = Transpose(x) }}")
NEG_4 = parse(f"{OPSET} g (float[N, 4] x) => (float[N, 4] y) {{ y = Neg(x) }}")
NEG_2D = parse(f"{OPSET} g (float[B, 3] x) => (float[B, 3] y) {{ y = Neg(x) }}")


def _lying() -> bytes:
    """Z is declared [2, 4] but is x itself: wrong once B != 2, and ORT refuses a bound buffer of that shape."""
    return parse(f"""{OPSET}
g (float[B, 4] x) => (float[4] s, float[2, 4] z) {{
    axes = Constant <value = int64[1] {{0}}> ()
    s = ReduceSum <keepdims = 0> (x, axes)
    z = Identity(x)
}}""")


# --------------------------------------------------------------------------- a call inside a call


class _Hooked(Mapping[str, torch.Tensor]):
    """A mapping whose iteration runs ``hook`` first (user code ortbind runs in the middle of a call)."""

    def __init__(self, items: dict[str, torch.Tensor], hook: Any) -> None:
        self._items, self._hook = items, hook

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._items[key]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        self._hook()
        return iter(self._items)


def test_a_call_made_inside_another_on_the_same_thread_has_a_binding_of_its_own() -> None:
    """The inner call asks for more outputs and frees them; the outer run writes only its own."""
    sess = ortbind.TorchSession(NEG_RELU)
    victims: list[torch.Tensor] = []

    def inner() -> None:
        result = sess(x=torch.zeros(1024))  # both outputs; freed at once
        del result
        gc.collect()
        victims.extend(torch.full((1024,), 7.0) for _ in range(20))  # live tensors where they were

    x = torch.full((1024,), 3.0)
    y = sess.run({"x": x}, ["y"], out=_Hooked({"y": torch.empty(1024)}, inner))["y"]
    assert torch.equal(y, torch.full((1024,), -3.0))
    assert all(torch.equal(v, torch.full((1024,), 7.0)) for v in victims)


def test_a_subclass_input_runs_no_code_of_its_class_inside_the_call() -> None:
    """Were its ``__torch_function__`` run while b is checked, it could call the session (or re-point a,
    checked and bound already); ortbind reads a subclass through a plain alias only."""
    sess = ortbind.TorchSession(ADD)

    class Hooking(torch.Tensor):
        fired = False

        @classmethod
        def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if not Hooking.fired:
                Hooking.fired = True
                sess(a=torch.full((1024,), 1000.0), b=torch.full((1024,), 1000.0))
                gc.collect()
                reuse = [torch.full((1024,), -5.0) for _ in range(50)]  # noqa: F841  (the freed memory, reused)
            return super().__torch_function__(func, types, args, kwargs or {})

    a = torch.ones(1024)
    b = torch.full((1024,), 2.0).as_subclass(Hooking)
    assert torch.equal(sess(a=a, b=b)["y"], torch.full((1024,), 3.0))
    assert not Hooking.fired


# --------------------------------------------------------------------------- copies


@pytest.mark.parametrize("how", [copy.copy, copy.deepcopy, pickle.dumps], ids=["copy", "deepcopy", "pickle"])
@pytest.mark.parametrize("what", ["TorchSession", "BoundCall"])
def test_sessions_and_bound_calls_cannot_be_copied(how: Any, what: str) -> None:
    """A copy would share ORT's binding: the copy's rebind() would re-point the original's."""
    sess = ortbind.TorchSession(NEG_RELU)
    target = sess if what == "TorchSession" else sess.bind({"x": torch.ones(4)})
    fix = "sess.bind(...)" if what == "BoundCall" else "TorchSession(model, device)"
    message = (
        f"{what}: cannot be copied or pickled, as it holds ONNX Runtime's session and bindings; make a new one "
        f"instead ({fix})"
    )
    with raises(ortbind.ConfigError, message, kind="option", name="copy"):
        how(target)


# --------------------------------------------------------------------------- allow_copy inputs read again


def _copied_bound() -> tuple[ortbind.BoundCall, torch.Tensor]:
    sess = ortbind.TorchSession(NEG_2D, allow_copy=True)
    x = torch.arange(6.0).reshape(3, 2).t()  # not contiguous: copied before each run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ortbind.CopyWarning)
        bound = sess.bind({"x": x})
    assert torch.equal(bound.run()["y"], -x)
    return bound, x


def test_a_copied_inputs_tensor_whose_storage_was_freed_is_refused() -> None:
    bound, x = _copied_bound()
    x.untyped_storage().resize_(0)
    message = (
        "input 'x': its data pointer is null; ONNX Runtime needs a tensor backed by real memory, e.g. "
        "torch.empty(...) or .clone() of a real tensor, outside fake/meta tracing"
    )
    with raises(ortbind.InputError, message, kind="input", name="x"):
        bound.run()


def test_a_copied_inputs_tensor_of_another_dtype_is_refused_not_cast() -> None:
    bound, x = _copied_bound()
    x.data = torch.arange(6).reshape(3, 2).t()  # int64 now
    message = "input 'x': expected dtype torch.float32 (ONNX FLOAT), got torch.int64; cast with .to(torch.float32)"
    with raises(ortbind.DTypeError, message, kind="input", name="x"):
        bound.run()


# --------------------------------------------------------------------------- inputs over outputs


def test_rebind_to_the_calls_own_output_gets_a_new_output() -> None:
    """x <- f(x): the output fed back is an input now; the next run writes a new output tensor."""
    sess = ortbind.TorchSession(TRANSPOSE)
    x = torch.arange(36.0).reshape(6, 6)
    bound = sess.bind({"x": x})
    y = bound.run()["y"]
    for _ in range(3):
        bound.rebind(x=y)
        expected = reference(TRANSPOSE, {"x": y})
        new = bound.run()
        assert new["y"] is not y
        assert_equal_reference(new, expected)
        y = new["y"]


@pytest.mark.parametrize("given", ["buffer", "view"])
def test_rebind_to_an_out_buffer_is_refused(given: str) -> None:
    sess = ortbind.TorchSession(TRANSPOSE)
    buffer = torch.empty(6, 6)
    bound = sess.bind({"x": torch.randn(6, 6)}, out={"y": buffer})
    value = buffer if given == "buffer" else buffer.view(36).view(6, 6)
    message = "out 'y': buffer overlaps input 'x' in memory; outputs need memory of their own, pass a separate tensor"
    with raises(ortbind.OutputError, message, kind="out", name="y"):
        bound.rebind(x=value)


def test_resize_into_an_out_buffer_is_refused() -> None:
    """The input grows, in its storage, into the memory of a buffer the run writes."""
    model = parse(f"""{OPSET}
g (float[B, 4] x) => (float[2, 4] y) {{
    rows = Constant <value = int64[2] {{-1, -2}}> ()
    y = Gather(x, rows)
}}""")
    sess = ortbind.TorchSession(model)
    arena = torch.arange(16.0)
    bound = sess.bind({"x": arena[:8].view(2, 4)}, out={"y": arena[8:].view(2, 4)})
    message = "out 'y': buffer overlaps input 'x' in memory; outputs need memory of their own, pass a separate tensor"
    with raises(ortbind.OutputError, message, kind="out", name="y"):
        bound.resize(x=(4, 4))


# --------------------------------------------------------------------------- resize() and what follows


def test_a_refused_prediction_after_resize_reruns_with_the_resized_shape() -> None:
    model = _lying()
    sess = ortbind.TorchSession(model)
    buffer = torch.arange(16.0)
    bound = sess.bind({"x": buffer[:8].view(2, 4)})
    bound.resize(x=(3, 4))
    expected = reference(model, {"x": buffer[:12].view(3, 4)})
    for _ in range(2):
        assert_equal_reference(bound.run(), expected)
    assert bound.inputs["x"].shape == (3, 4)
    assert torch.equal(bound.inputs["x"], buffer[:12].view(3, 4))


def test_rebind_of_another_input_keeps_a_resized_input_as_bound() -> None:
    model = parse(f"""{OPSET}
g (float[N] a, float[M] b) => (float[M] y) {{
    s = ReduceSum <keepdims = 1> (a)
    y = Add(s, b)
}}""")
    sess = ortbind.TorchSession(model)
    buffer = torch.ones(8)
    bound = sess.bind({"a": buffer[:4], "b": torch.zeros(2)})
    bound.resize(a=(8,))
    bound.rebind(b=torch.zeros(3))
    assert bound.inputs["a"].shape == (8,)
    expected = reference(model, {"a": buffer, "b": torch.zeros(3)})
    assert_equal_reference(bound.run(), expected)


# --------------------------------------------------------------------------- bound tensors reshaped in place


@pytest.mark.parametrize("trick", ["resize_ smaller", "t_", "set_ smaller", "data = view"])
def test_a_bound_tensor_reshaped_in_place_is_refused(trick: str) -> None:
    """The memory is still there, so nothing crashes; but ORT would compute with the bound shape."""
    sess = ortbind.TorchSession(NEG_2D)
    x = torch.arange(6.0).reshape(2, 3)
    bound = sess.bind({"x": x})
    if trick == "resize_ smaller":
        x.resize_(1, 3)
    elif trick == "t_":
        x.t_()
    elif trick == "set_ smaller":
        x.set_(x.untyped_storage(), 0, (1, 3))
    else:
        x.data = x.view(3, 2)
    now = tuple(x.shape)
    message = (
        f"input 'x': the tensor bound for it changed shape in place since bind() (from (2, 3) to "
        f"({now[0]}, {now[1]}): resize_, set_, .data= or t_()), so ORT would use the bound shape, not the "
        f"tensor's; write new values with copy_(), or rebind()"
    )
    with raises(ortbind.InputError, message, kind="input", name="x"):
        bound.run()


def test_an_empty_bound_input_grown_in_place_is_refused() -> None:
    sess = ortbind.TorchSession(NEG_2D)
    x = torch.empty(0, 3)
    bound = sess.bind({"x": x})
    assert bound.run()["y"].shape == (0, 3)
    x.resize_(2, 3)
    message = (
        "input 'x': the tensor bound for it moved to other memory since bind() (an in-place resize_, set_ or "
        ".data=; now shape (2, 3)), so ORT would use a stale address; write new values with copy_(), or rebind()"
    )
    with raises(ortbind.InputError, message, kind="input", name="x"):
        bound.run()


def test_a_bound_tensor_retyped_in_place_is_refused() -> None:
    """Same address, storage and shape, another dtype: ORT would read the new bytes as the old type."""
    sess = ortbind.TorchSession(NEG_2D)
    x = torch.arange(6.0).reshape(2, 3)
    bound = sess.bind({"x": x})
    x.data = x.view(torch.int32)
    message = (
        "input 'x': the tensor bound for it changed dtype in place since bind() (from torch.float32 to "
        "torch.int32: .data= or set_), so ORT would read its bytes as torch.float32; write new values with "
        "copy_(), or rebind()"
    )
    with raises(ortbind.InputError, message, kind="input", name="x"):
        bound.run()


@pytest.mark.parametrize("role", ["input", "out"])
def test_a_square_bound_tensor_transposed_in_place_is_refused(role: str) -> None:
    """Same address and shape, other strides: ORT reads memory row-major, as bound."""
    sess = ortbind.TorchSession(TRANSPOSE)
    x, y = torch.randn(6, 6), torch.empty(6, 6)
    bound = sess.bind({"x": x}, out={"y": y})
    (x if role == "input" else y).t_()
    kind, name = ("input", "x") if role == "input" else ("out", "y")
    message = (
        f"{kind} {name!r}: the tensor bound for it is no longer contiguous (strides (1, 6) since bind(): t_(), "
        f"as_strided_ or .data=), so ORT would read its memory in the bound row-major order; write new values "
        f"with copy_(), or rebind()"
    )
    with raises(ortbind.InputError if role == "input" else ortbind.OutputError, message, kind=kind, name=name):
        bound.run()


def test_resize_from_an_empty_binding_is_checked_against_the_storage() -> None:
    """An empty tensor's data_ptr() is null: the room is counted from its place in the storage."""
    sess = ortbind.TorchSession(NEG_4)
    bound = sess.bind({"x": torch.randn(4, 4)})  # a 64-byte storage
    bound.resize(x=(0, 4))
    assert bound.run()["y"].shape == (0, 4)
    message = (
        "resize 'x': shape (6, 4) needs 96 bytes from where the input is bound, but its storage holds 64 from "
        "there; bind a tensor of a larger buffer first"
    )
    with raises(ortbind.ShapeError, message, kind="input", name="x"):
        bound.resize(x=(6, 4))
    bound.resize(x=(3, 4))
    assert torch.equal(bound.run()["y"], -bound.inputs["x"])


# --------------------------------------------------------------------------- between the checks and the run


TWO_RELU = parse(f"""{OPSET}
g (float[N] x, float[M] b) => (float[N] y, float[M] z) {{
    y = Relu(x)
    z = Relu(b)
}}""")


@pytest.mark.parametrize("trick", ["set_", "data", "resize_"])
def test_a_replanning_rebind_refuses_an_input_that_moved(trick: str) -> None:
    """The state is made anew from the tensors: a moved one would be recorded at its new address
    while ORT's binding kept the old, freed one."""
    sess = ortbind.TorchSession(TWO_RELU)
    x = torch.full((8,), 7.0)
    bound = sess.bind({"x": x, "b": torch.ones(4)})
    bound.run()
    if trick == "set_":
        x.set_(torch.full((8,), 3.0))
    elif trick == "data":
        x.data = torch.full((8,), 3.0)
    else:
        x.resize_(1 << 16)
    with pytest.raises(ortbind.InputError) as info:
        bound.rebind(b=torch.ones(6))  # z's shape changes: a new plan
    assert (info.value.kind, info.value.name) == ("input", "x")
    assert "the tensor bound for it moved to other memory since bind()" in str(info.value)


def test_an_out_mapping_that_moves_an_input_runs_before_the_input_is_checked() -> None:
    """The caller's mappings are read before anything is checked or bound: x is checked as it then is."""
    sess = ortbind.TorchSession(NEG_RELU)
    x = torch.full((1024,), -3.0)

    def move() -> None:
        x.set_(torch.full((1024,), 5.0))  # the old storage is freed

    out = sess.run({"x": x}, ["y"], out=_Hooked({"y": torch.empty(1024)}, move))
    assert torch.equal(out["y"], torch.full((1024,), -5.0))


def test_a_bound_subclass_input_changed_in_place_is_refused() -> None:
    class Sub(torch.Tensor):
        pass

    sess = ortbind.TorchSession(NEG_2D)
    x = torch.arange(6.0).reshape(2, 3).as_subclass(Sub)
    bound = sess.bind({"x": x})
    x.data = x.data.view(torch.int32)
    message = (
        "input 'x': the tensor bound for it changed since it was bound (now at the same address, shape (2, 3), "
        "torch.int32, contiguous; bound: shape (2, 3), torch.float32); write new values with copy_(), or rebind()"
    )
    with raises(ortbind.InputError, message, kind="input", name="x"):
        bound.run()


def test_a_copied_subclass_input_is_copied_from_the_callers_tensor_as_it_is_now() -> None:
    class Sub(torch.Tensor):
        pass

    sess = ortbind.TorchSession(NEG_2D, allow_copy=True)
    x = torch.arange(6.0).reshape(3, 2).t().as_subclass(Sub)  # not contiguous: copied before each run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ortbind.CopyWarning)
        bound = sess.bind({"x": x})
    x.data = torch.full((3, 2), 4.0).t()  # re-pointed: the copy must follow
    assert torch.equal(bound.run()["y"], torch.full((2, 3), -4.0))
    message = (
        "resize 'x': it is bound as a copy of the caller's tensor (allow_copy), which a resize would leave "
        "behind; rebind() it with a tensor of the new shape"
    )
    with raises(ortbind.InputError, message, kind="input", name="x"):
        bound.resize(x=(1, 3))


# --------------------------------------------------------------------------- after a rebind that failed halfway

# big's declared dims come to ~3.6 PB for a = 10 elements, beyond any address space: the rebind binds a,
# then cannot allocate big.
_HUGE_FOR_TEN = with_dims(
    parse(f"""{OPSET}
g (float[N] a, float[M] b) => (float[N] z, float[N] big, float[M] q) {{
    z = Add(a, a)
    big = Identity(a)
    q = Concat <axis = 0> (b, b)
}}"""),
    {"big": ["(N-1)*100000000000000+N"], "q": ["2*M"]},
)


@pytest.mark.parametrize(
    "recover",
    [
        lambda bound, b: bound.rebind(b=b[:5]),  # q reads M: the general path
        lambda bound, b: bound.resize(b=(5,)),
    ],
    ids=["rebind of another input", "resize of another input"],
)
@pytest.mark.parametrize("outputs", [["z", "big"], None], ids=["outputs that ignore b", "every output"])
def test_a_rebind_that_failed_halfway_is_undone_by_the_next_one(recover: Any, outputs: list[str] | None) -> None:
    """The next rebind of another input cleared the mark while the binding still held the failed rebind's
    (then freed) tensor: runs read freed memory."""
    sess = ortbind.TorchSession(_HUGE_FOR_TEN, max_output_bytes=2**60)
    a, b = torch.tensor([1.0]), torch.ones(8)
    bound = sess.bind({"a": a, "b": b[:3]}, outputs)
    bound.run()
    doomed = torch.arange(10.0) + 100
    with pytest.raises(RuntimeError, match="allocate"):
        bound.rebind(a=doomed)  # torch cannot allocate big: its own error, not ORT's
    with raises(
        ortbind.RunError, "bound call: its last rebind() failed halfway; rebind() again before running", kind="run"
    ):
        bound.run()
    recover(bound, b)
    del doomed
    gc.collect()
    noise = [torch.full((10,), 7.0) for _ in range(50)]
    got = bound.run()
    assert torch.equal(got["z"], torch.tensor([2.0])) and torch.equal(got["big"], a)
    if outputs is None:
        assert torch.equal(got["q"], torch.ones(10))
    del noise


def test_a_step_that_keeps_the_plan_learns_for_its_own_signature() -> None:
    """A step changes axes that none of the bound outputs read and keeps its plan; a refusal learned
    then stored that plan under the new signature, with the old shapes of the outputs it does not compute."""
    model = with_dims(
        parse(f"""{OPSET}
    g (float[N] a, float[M] b) => (float[N] y, float[M] q) {{
        y = Mul(a, b)
        q = Concat <axis = 0> (b, b)
    }}"""),
        {"q": ["2*M"]},
    )
    sess = ortbind.TorchSession(model)
    bound = sess.bind({"a": torch.ones(1), "b": torch.ones(1)}, ["y"])
    bound.run()
    bound.rebind(b=torch.full((4,), 2.0))  # y's declared dims read a only: the plan stays
    assert torch.equal(bound.run()["y"], torch.full((4,), 2.0))  # y is really [M]: refused, rerun, learned
    assert sess.resolve_shapes({"a": (1,), "b": (4,)})["q"] == ortbind.OutputPlan("q", Rule.DECLARED, (8,))
    assert sess.resolve_shapes({"a": (2,), "b": (3,)})["q"] == ortbind.OutputPlan("q", Rule.DECLARED, (6,))
