"""Attacks on ``share=`` (an output written in place into an input) and on what a call reads from the caller.

A shared input is written while the model runs, so the call must neither run the model twice (the
second run reads what the first wrote), nor write into a copy of the caller's tensor, nor hand
back a pass-through of that input after writing it. Each case once returned wrong numbers silently.
Also here: mappings and tensors that lie through ``__class__``, a mapping read twice by
``rebind()``, and paths that are not files.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

import ortbind
from ortbind import Rule

from ..helpers import raises
from ..models import ACCUMULATE_LYING, parse
from ..reference import assert_equal_reference, reference

OPSET = '<ir_version: 10, opset_import: ["" : 21]>'

ACCUMULATE = parse(f"{OPSET} g (float[N] x, float[N] acc) => (float[N] acc_out) {{ acc_out = Add(acc, x) }}")
ACCUMULATE_FLOAT8 = parse(f"""{OPSET}
g (float[N] x, float[N] acc) => (float[N] acc_out, float8e4m3fn[N] f8) {{
    acc_out = Add(acc, x)
    f8 = Cast <to = 17> (x)
}}""")
# The input acc is also a graph output (passed through), beside acc_out written into it.
ACCUMULATE_PASSTHROUGH = parse(f"""{OPSET}
g (float[N] x, float[N] acc) => (float[N] acc_out, float[N] acc) {{ acc_out = Add(acc, x) }}""")
SUB = parse(
    f"{OPSET} g (float[N] a, float[N] b, float[K] c) => (float[N] y, float[K] z) {{ y = Sub(a, b)\n z = Neg(c) }}"
)

SHARE = {"acc_out": "acc"}


def _refused_message(output: str) -> str:
    return (
        rf"^output '{output}': ONNX Runtime refused its predicted buffer \(.*\); this run had already written the "
        rf"shared input 'acc' in place \(share=\), and a rerun would read what it wrote, so the call was not "
        rf"rerun and its outputs are lost\. Later calls let ONNX Runtime allocate it: put 'acc' back as it was "
        rf"and call again$"
    )


# --------------------------------------------------------------------------- never run twice


def test_a_refused_prediction_in_a_call_that_shares_is_an_error_not_a_second_run() -> None:
    sess = ortbind.TorchSession(ACCUMULATE_LYING)
    x, acc = torch.ones(4), torch.zeros(4)
    with pytest.raises(ortbind.RunError, match=_refused_message("z")) as info:
        sess.run({"x": x, "acc": acc}, share=SHARE)
    assert (info.value.kind, info.value.name) == ("output", "z")
    assert torch.equal(acc, torch.ones(4))  # written once, by the one run (a rerun made it 2)
    plan = sess.resolve_shapes({"x": (4,), "acc": (4,)})["z"]
    assert plan.rule is Rule.ORT and "refused its predicted buffer in a call that shares buffers" in plan.reason
    acc.zero_()
    expected = reference(ACCUMULATE_LYING, {"x": x, "acc": acc})
    got = sess.run({"x": x, "acc": acc}, share=SHARE)
    assert got["acc_out"] is acc
    assert_equal_reference(got, expected)
    # The declared dims of z are not trusted for other signatures either: no refusal there.
    feeds = {"x": torch.ones(6), "acc": torch.zeros(6)}
    expected = reference(ACCUMULATE_LYING, feeds)
    assert_equal_reference(sess.run(feeds, share=SHARE), expected)
    assert torch.equal(feeds["acc"], torch.ones(6))


def test_a_refused_prediction_in_a_bound_call_that_shares_is_an_error_then_runs_right() -> None:
    sess = ortbind.TorchSession(ACCUMULATE_LYING)
    x, acc = torch.ones(4), torch.zeros(4)
    bound = sess.bind({"x": x, "acc": acc}, share=SHARE)
    with pytest.raises(ortbind.RunError, match=_refused_message("z")):
        bound.run()
    assert torch.equal(acc, torch.ones(4))
    assert bound.outputs["z"] is None  # ORT allocates it now
    acc.zero_()
    for step in range(1, 4):
        got = bound.run()
        assert torch.equal(acc, torch.full((4,), float(step)))
        assert torch.equal(got["z"], torch.cat([acc, torch.ones(1)]))


def test_a_float8_prediction_checked_in_a_call_that_shares_runs_the_model_once() -> None:
    """verify_shapes checks a prediction by letting ORT allocate it; ORT hands a float8 output's
    shape over, not its values, which once took a second run that added x to acc again."""
    sess = ortbind.TorchSession(ACCUMULATE_FLOAT8, verify_shapes=True)
    x, acc = torch.ones(4), torch.zeros(4)
    got = sess.run({"x": x, "acc": acc}, share=SHARE)
    assert torch.equal(acc, torch.ones(4)) and got["acc_out"] is acc
    assert torch.equal(got["f8"].view(torch.uint8), x.to(torch.float8_e4m3fn).view(torch.uint8))


# --------------------------------------------------------------------------- what is written


def test_share_refuses_an_input_bound_as_a_copy() -> None:
    """With allow_copy, a non-contiguous input is bound as a copy: the output went into the copy."""
    sess = ortbind.TorchSession(ACCUMULATE, allow_copy=True)
    acc = torch.zeros(8)[::2]
    message = (
        "share['acc_out']: input 'acc' cannot be bound as it is and is bound as a copy (allow_copy), so 'acc_out' "
        "would be written into the copy, never into your tensor; pass 'acc' as a contiguous tensor on cpu (e.g. "
        ".contiguous()), and keep using that one"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ortbind.CopyWarning)
        with raises(ortbind.InputError, message, kind="input", name="acc"):
            sess.run({"x": torch.ones(4), "acc": acc}, share=SHARE)
        with raises(ortbind.InputError, message, kind="input", name="acc"):
            sess.bind({"x": torch.ones(4), "acc": acc}, share=SHARE)
        bound = sess.bind({"x": torch.ones(4), "acc": torch.zeros(4)}, share=SHARE)
        with raises(ortbind.InputError, message, kind="input", name="acc"):
            bound.rebind(acc=acc)
    contiguous = torch.zeros(4)
    bound.rebind(acc=contiguous)
    for _ in range(3):
        bound.run()
    assert torch.equal(contiguous, torch.full((4,), 3.0))


def test_share_refuses_an_input_the_call_also_returns_as_a_pass_through() -> None:
    sess = ortbind.TorchSession(ACCUMULATE_PASSTHROUGH)
    message = (
        "share['acc_out']: the run writes input 'acc' in place, and this call also returns 'acc' as an output (the "
        "input passed through), which would then be the written values, not the input's; leave 'acc' out of "
        "output_names, or do not share"
    )
    acc = torch.full((3,), 10.0)
    with raises(ortbind.OutputError, message, kind="output", name="acc"):
        sess.run({"x": torch.ones(3), "acc": acc}, share=SHARE)
    with raises(ortbind.OutputError, message, kind="output", name="acc"):
        sess.bind({"x": torch.ones(3), "acc": acc}, share=SHARE)
    assert torch.equal(acc, torch.full((3,), 10.0))
    got = sess.run({"x": torch.ones(3), "acc": acc}, ["acc_out"], share=SHARE)
    assert got["acc_out"] is acc and torch.equal(acc, torch.full((3,), 11.0))
    fresh = {"x": torch.ones(3), "acc": torch.full((3,), 10.0)}
    assert_equal_reference(sess.run(fresh), reference(ACCUMULATE_PASSTHROUGH, fresh))  # no share: both right


# --------------------------------------------------------------------------- what is read from the caller


class _Flipping(Mapping[str, torch.Tensor]):
    """A mapping whose order of iteration reverses after the first pass."""

    def __init__(self, items: dict[str, torch.Tensor]) -> None:
        self._items, self._passes = items, 0

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        self._passes += 1
        keys = list(self._items)
        return iter(keys if self._passes == 1 else keys[::-1])

    def __len__(self) -> int:
        return len(self._items)


def test_rebind_reads_a_mapping_once() -> None:
    """Names and tensors came from separate passes: a and b were bound swapped, and a later re-planning
    rebind took one for a copy of the other and wrote a's values into b."""
    sess = ortbind.TorchSession(SUB)
    bound = sess.bind({"a": torch.zeros(3), "b": torch.zeros(3), "c": torch.ones(2)})
    a, b = torch.full((3,), 10.0), torch.full((3,), 1.0)
    bound.rebind(_Flipping({"a": a, "b": b}))
    assert bound.inputs["a"] is a and bound.inputs["b"] is b
    assert torch.equal(bound.run()["y"], torch.full((3,), 9.0))
    bound.rebind(c=torch.ones(5))  # re-plans: the outputs follow K
    assert torch.equal(bound.run()["y"], torch.full((3,), 9.0))
    assert torch.equal(a, torch.full((3,), 10.0)) and torch.equal(b, torch.full((3,), 1.0))


class _ClaimsTensor:
    """Not a tensor, but ``isinstance(x, torch.Tensor)`` says it is."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return torch.Tensor


class _ClaimsDict:
    """Not a mapping, but ``isinstance(x, Mapping)`` says it is."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return dict


def test_an_object_claiming_to_be_a_tensor_through_its_class_is_refused() -> None:
    sess = ortbind.TorchSession(ACCUMULATE)
    liar = _ClaimsTensor()
    assert isinstance(liar, torch.Tensor)
    expected = f"expected a torch.Tensor, got {__name__}._ClaimsTensor; wrap it with torch.as_tensor(...)"
    with raises(ortbind.InputError, f"input 'acc': {expected}", kind="input", name="acc"):
        sess(x=torch.ones(2), acc=liar)  # type: ignore[arg-type]
    with raises(ortbind.OutputError, f"out 'acc_out': {expected}", kind="out", name="acc_out"):
        sess.run({"x": torch.ones(2), "acc": torch.ones(2)}, out={"acc_out": liar})  # type: ignore[dict-item]
    bound = sess.bind({"x": torch.ones(2), "acc": torch.ones(2)})
    with raises(ortbind.InputError, f"input 'acc': {expected}", kind="input", name="acc"):
        bound.rebind(acc=liar)  # type: ignore[arg-type]
    assert torch.equal(bound.run()["acc_out"], torch.full((2,), 2.0))


@pytest.mark.parametrize(
    ("call", "error", "message", "kind"),
    [
        (
            lambda s: s.run(_ClaimsDict()),
            ortbind.InputError,
            "feeds: expected a mapping of input name -> torch.Tensor, got _ClaimsDict",
            "input",
        ),
        (
            lambda s: s.run({"x": torch.ones(2), "acc": torch.ones(2)}, out=_ClaimsDict()),
            ortbind.OutputError,
            "out: expected a mapping of output name -> tensor, got _ClaimsDict; pass a dict",
            "out",
        ),
        (
            lambda s: s.run({"x": torch.ones(2), "acc": torch.ones(2)}, share=_ClaimsDict()),
            ortbind.OutputError,
            "share: expected a mapping of output name -> input name, got _ClaimsDict; pass a dict",
            "output",
        ),
        (
            lambda s: s.resolve_shapes(_ClaimsDict()),
            ortbind.InputError,
            "input_shapes: expected a mapping of input name -> shape, got _ClaimsDict",
            "input",
        ),
        (
            lambda s: s.bind({"x": torch.ones(2), "acc": torch.ones(2)}).rebind(_ClaimsDict()),
            ortbind.InputError,
            "rebind: expected a mapping of input name -> torch.Tensor, got _ClaimsDict",
            "input",
        ),
    ],
)
def test_an_object_claiming_to_be_a_mapping_through_its_class_is_refused(
    call: Any, error: type[Exception], message: str, kind: str
) -> None:
    assert isinstance(_ClaimsDict(), Mapping)
    with raises(error, message, kind=kind, name=None):
        call(ortbind.TorchSession(ACCUMULATE))


def test_an_out_buffer_refused_for_a_predicted_shape_says_where_the_shape_came_from() -> None:
    sess = ortbind.TorchSession(ACCUMULATE_LYING)
    feeds = {"x": torch.ones(4), "acc": torch.zeros(4)}
    with raises(
        ortbind.ShapeError,
        "out 'z': expected shape (4,) for these inputs (from the dims the model declares or infers for it), got (5,); "
        "allocate it with that shape",
        kind="out",
        name="z",
    ):
        sess.run(feeds, out={"z": torch.empty(5)})
    with raises(
        ortbind.ShapeError,
        "out 'z': the run produced shape (5,), not the expected (4,) that the dims the model declares or infers "
        "gave; pass a buffer of shape (5,) (later calls take it)",
        kind="out",
        name="z",
    ):
        sess.run(feeds, out={"z": torch.empty(4)})
    buffer = torch.empty(5)
    assert sess.run(feeds, out={"z": buffer})["z"] is buffer
    assert torch.equal(buffer, torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0]))


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.symlink_to(p.with_name("nowhere")), "is a symbolic link to nothing (or a loop)"),
        (lambda p: p.symlink_to(p), "is a symbolic link to nothing (or a loop)"),
        (os.mkfifo, "is not a regular file"),
    ],
    ids=["directory", "dangling link", "link loop", "fifo"],
)
def test_a_model_path_that_is_not_a_file_says_what_it_is(tmp_path: Path, make: Any, what: str) -> None:
    path = tmp_path / "model.onnx"
    make(path)
    message = f"model file {str(path)!r} {what}; pass the path of a .onnx file"
    with raises(ortbind.ModelError, message, kind="model", name=str(path)):
        ortbind.TorchSession(path)


def test_a_call_that_shares_and_fails_after_its_run_still_bumps_versions() -> None:
    """The run wrote acc in place before the refusal: a graph that saved acc must raise in backward."""
    sess = ortbind.TorchSession(ACCUMULATE_LYING)
    acc = torch.zeros(4)
    w = torch.ones(4, requires_grad=True)
    loss = (w * acc).sum()  # saves acc for backward
    with pytest.raises(ortbind.RunError):
        sess.run({"x": torch.ones(4), "acc": acc}, share=SHARE)
    assert torch.equal(acc, torch.ones(4))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_a_bound_call_keeps_its_output_tensors_through_a_refused_prediction() -> None:
    """The rerun let ORT allocate every prediction, and the outputs were then bound anew: a chained
    call holding bound.outputs read a tensor no longer written."""
    model = parse(f"""{OPSET}
    g (float[N] x) => (float[N] z, float[N] w) {{
        one = Constant <value = float[1] {{1.0}}> ()
        z = Concat <axis = 0> (x, one)
        w = Neg(x)
    }}""")
    x = torch.ones(4)
    bound = ortbind.TorchSession(model).bind({"x": x})
    w = bound.outputs["w"]
    assert bound.run()["w"] is w  # z refused, rerun, learned
    x.fill_(5.0)
    assert bound.run()["w"] is w and bound.outputs["w"] is w
    assert torch.equal(w, torch.full((4,), -5.0))
