"""Hostile tensors, hostile models and ORT's refusals: each binds correctly or is a clear error.

Every case here once crashed the process, returned wrong numbers silently, or let a raw error
through. Each test states the exact outcome: the right answer (compared with plain
``InferenceSession.run``) or the exact message, raised before ONNX Runtime saw a pointer.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import ortbind
from ortbind import Rule, _binding, _ort
from ortbind._providers import plan_providers

from ..helpers import raises
from ..models import parse
from ..reference import assert_equal_reference, reference

OPSET = '<ir_version: 8, opset_import: ["" : 17]>'

NEG = parse(f"{OPSET} g (float[N] x) => (float[N] y) {{ y = Neg(x) }}")
HALF = parse(f"{OPSET} g (float16[N] x) => (float16[N] y) {{ y = Neg(x) }}")


NO_STORAGE_FIX = (
    "ONNX Runtime needs a tensor backed by real memory, e.g. torch.empty(...) or .clone() of a real tensor, "
    "outside fake/meta tracing"
)


# --------------------------------------------------------------------------- tensors without storage


def test_efficient_zero_tensor_is_refused() -> None:
    sess = ortbind.TorchSession(NEG)
    zero = torch._efficientzerotensor(3)
    assert zero.data_ptr() == 0 and zero.numel() == 3  # what would reach ORT
    with raises(
        ortbind.InputError, f"input 'x': it is an efficient zero tensor (no memory behind it); {NO_STORAGE_FIX}"
    ):
        sess(x=zero)


def test_fake_tensor_is_refused() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    sess = ortbind.TorchSession(NEG)
    with FakeTensorMode():
        fake = torch.empty(3)
    with raises(
        ortbind.InputError,
        "input 'x': it is a torch._subclasses.fake_tensor.FakeTensor, a tensor subclass without plain memory of "
        f"its own; {NO_STORAGE_FIX}",
    ) as info:
        sess(x=fake)
    assert (info.value.kind, info.value.name) == ("input", "x")


class _Wrapper(torch.Tensor):
    """A wrapper subclass, as DTensor and friends are: the outer tensor has no memory of its own."""

    @staticmethod
    def __new__(cls, inner: torch.Tensor) -> _Wrapper:
        return torch.Tensor._make_wrapper_subclass(cls, inner.shape, dtype=inner.dtype, device=inner.device)  # type: ignore[attr-defined,no-any-return]

    def __init__(self, inner: torch.Tensor) -> None:
        self.inner = inner

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        unwrap = torch.utils._pytree.tree_map_only(_Wrapper, lambda t: t.inner, (args, kwargs or {}))
        return func(*unwrap[0], **unwrap[1])


def test_wrapper_subclass_is_refused() -> None:
    sess = ortbind.TorchSession(NEG)
    wrapped = _Wrapper(torch.ones(3))
    with raises(
        ortbind.InputError,
        f"input 'x': it is a {__name__}._Wrapper, a tensor subclass without plain memory of its own; {NO_STORAGE_FIX}",
    ):
        sess(x=wrapped)


def test_plain_subclasses_with_real_memory_bind() -> None:
    sess = ortbind.TorchSession(NEG)
    parameter = torch.nn.Parameter(torch.randn(4), requires_grad=False)
    assert torch.equal(sess(x=parameter)["y"], -parameter.detach())


def test_functional_and_vmap_tensors_are_refused() -> None:
    sess = ortbind.TorchSession(NEG)
    message = (
        "input 'x': it is a functionalized or functorch-wrapped tensor (torch.func / torch.compile tracing); "
        f"{NO_STORAGE_FIX}"
    )

    def call(x: torch.Tensor) -> torch.Tensor:
        return sess(x=x)["y"]

    with raises(ortbind.InputError, message):
        torch.func.functionalize(call)(torch.ones(3))
    with raises(ortbind.InputError, message):
        torch.func.vmap(call)(torch.ones(2, 3))


def test_meta_tensor_out_buffer_is_refused() -> None:
    sess = ortbind.TorchSession(NEG)
    with raises(
        ortbind.OutputError,
        f"out 'y': it is a meta tensor (shape and dtype only, no memory); {NO_STORAGE_FIX}",
    ):
        sess.run({"x": torch.ones(3)}, out={"y": torch.empty(3, device="meta")})


# --------------------------------------------------------------------------- lazy negation


def test_negative_view_is_refused_not_read_unnegated() -> None:
    sess = ortbind.TorchSession(NEG)
    base = torch.arange(4.0)
    negated = torch._neg_view(base)
    assert negated.is_neg() and negated.is_contiguous()
    with raises(
        ortbind.InputError,
        "input 'x': tensor has torch's lazy negation bit set (ORT would read the un-negated memory); pass "
        ".resolve_neg(), or create the session with allow_copy=True to have ortbind copy it (with a CopyWarning)",
    ):
        sess(x=negated)


def test_imaginary_part_of_a_conjugate_is_refused_or_resolved() -> None:
    imag = torch.complex(torch.zeros(3), torch.arange(1.0, 4.0)).conj().imag
    assert imag.is_neg()
    with pytest.raises(ortbind.InputError, match=r"^input 'x': tensor is not contiguous"):
        ortbind.TorchSession(NEG)(x=imag)
    with pytest.warns(ortbind.CopyWarning):
        out = ortbind.TorchSession(NEG, allow_copy=True)(x=imag)
    assert torch.equal(out["y"], torch.arange(1.0, 4.0))  # -(imag of the conjugate)


def test_negative_view_with_allow_copy_is_resolved_with_a_warning() -> None:
    sess = ortbind.TorchSession(NEG, allow_copy=True)
    negated = torch._neg_view(torch.arange(4.0))
    with pytest.warns(
        ortbind.CopyWarning,
        match=r"^input 'x': copied because tensor has torch's lazy negation bit set \(ORT would read the "
        r"un-negated memory\) \(allow_copy=True\)$",
    ):
        out = sess(x=negated)
    assert torch.equal(out["y"], torch.arange(4.0))  # -(-x)
    assert_equal_reference(out, reference(NEG, {"x": negated.resolve_neg()}))


def test_negative_view_out_buffer_is_refused() -> None:
    sess = ortbind.TorchSession(NEG)
    with raises(
        ortbind.OutputError,
        "out 'y': buffer cannot be written as it is: tensor has torch's lazy negation bit set (ORT would read the "
        "un-negated memory); pass a fresh buffer from torch.empty(...)",
    ):
        sess.run({"x": torch.ones(3)}, out={"y": torch._neg_view(torch.empty(3))})


# --------------------------------------------------------------------------- alignment


@pytest.mark.parametrize("offset", [1, 2, 3, 5])
def test_views_at_element_offsets_bind_exactly_on_cpu(offset: int) -> None:
    sess = ortbind.TorchSession(HALF)
    base = torch.randn(16).half()
    view = base[offset:]
    assert view.data_ptr() % 16  # not 16-byte aligned
    assert_equal_reference(sess(x=view), reference(HALF, {"x": view.clone()}))


def test_address_off_the_element_size_is_refused() -> None:
    sess = ortbind.TorchSession(NEG)
    raw = bytearray(4 * 5)
    misaligned = torch.frombuffer(raw, dtype=torch.float32, offset=1, count=4)
    assert misaligned.data_ptr() % 4
    with raises(
        ortbind.InputError,
        f"input 'x': its address is {misaligned.data_ptr() % 4} bytes off a multiple of its 4-byte element size; "
        "pass .clone(), or create the session with allow_copy=True to have ortbind copy it (with a CopyWarning)",
    ):
        sess(x=misaligned)


def test_cuda_rule_needs_sixteen_byte_addresses() -> None:
    # The rule itself, without a GPU: what would be refused on a CUDA session.
    base = torch.zeros(8, dtype=torch.float16)
    assert _binding.layout_problem(base, torch.device("cuda", 0)) is None
    assert _binding.layout_problem(base[8:], torch.device("cuda", 0)) is None  # empty: nothing is read
    assert _binding.layout_problem(base[2:], torch.device("cuda", 0)) == (
        "its address is 4 bytes past a 16-byte boundary (a view at an element offset); CUDA kernels may load "
        "16 bytes at a time",
        ".clone()",
    )
    assert _binding.layout_problem(base[2:], torch.device("cpu")) is None


# --------------------------------------------------------------------------- out= buffers


def test_out_buffer_that_requires_grad_is_refused() -> None:
    sess = ortbind.TorchSession(NEG)
    with raises(
        ortbind.OutputError,
        "out 'y': buffer requires grad; ONNX Runtime writes it outside autograd, as torch's own out= ops refuse to; "
        "pass a tensor that does not require grad (e.g. torch.empty_like(t))",
    ) as info:
        sess.run({"x": torch.ones(3)}, out={"y": torch.empty(3, requires_grad=True)})
    assert (info.value.kind, info.value.name) == ("out", "y")


def test_out_buffers_get_their_version_bumped() -> None:
    sess = ortbind.TorchSession(NEG)
    buffer = torch.empty(3)
    before = buffer._version
    sess.run({"x": torch.ones(3)}, out={"y": buffer})
    assert buffer._version > before
    assert torch.equal(buffer, -torch.ones(3))


def test_autograd_sees_the_write_into_a_saved_buffer() -> None:
    sess = ortbind.TorchSession(NEG)
    weight = torch.ones(3, requires_grad=True)
    saved = torch.ones(3)
    loss = (weight * saved).sum()  # autograd saves `saved` for the backward pass
    sess.run({"x": torch.ones(3)}, out={"y": saved})
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


# --------------------------------------------------------------------------- hostile models


def test_negative_dim_value_means_unknown() -> None:
    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    sess = ortbind.TorchSession(model)
    assert sess.inputs[0].dims == (None, 3)
    x = torch.randn(5, 3)
    assert_equal_reference(sess(x=x), reference(model, {"x": x}))
    with raises(ortbind.ShapeError, "input 'x': dim 1 must be 3 (declared [?, 3]), got shape (5, 4)"):
        sess(x=torch.randn(5, 4))


def _huge_output_model() -> bytes:
    """Declares its output as N * 10^12 elements; the graph really produces N."""
    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N*1000000000000"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def test_absurd_declared_output_size_is_never_allocated() -> None:
    model = _huge_output_model()
    sess = ortbind.TorchSession(model)
    x = torch.randn(3)
    assert_equal_reference(sess(x=x), reference(model, {"x": x}))
    plan = sess.resolve_shapes({"x": (3,)})["y"]
    assert plan.rule is Rule.ORT
    assert plan.reason.startswith(
        "shape (3000000000000,) (declared ['N*1000000000000']) needs 10.9 TiB, more than max_output_bytes ("
    )


def test_max_output_bytes_limits_predicted_outputs_and_overrides() -> None:
    sess = ortbind.TorchSession(NEG, max_output_bytes=64)
    assert sess.max_output_bytes == 64
    small, large = torch.randn(16), torch.randn(17)
    assert sess.resolve_shapes({"x": (16,)})["y"].rule is Rule.DECLARED
    assert sess.resolve_shapes({"x": (17,)})["y"] == ortbind.OutputPlan(
        "y", Rule.ORT, None, "shape (17,) (declared ['N']) needs 68 B, more than max_output_bytes (64 B)"
    )
    assert_equal_reference(sess(x=large), reference(NEG, {"x": large}))
    assert_equal_reference(sess(x=small), reference(NEG, {"x": small}))
    with raises(
        ortbind.ShapeError,
        "output_shapes['y']: shape (17,) (declared ['N']) needs 68 B, more than max_output_bytes (64 B); "
        "pass a smaller shape or raise max_output_bytes",
    ):
        sess.run({"x": large}, output_shapes={"y": (17,)})
    for bad in (0, -1, 1.5, True):
        with raises(ortbind.ConfigError, f"max_output_bytes: expected a positive int, got {bad!r}"):
            ortbind.TorchSession(NEG, max_output_bytes=bad)  # type: ignore[arg-type]


def test_output_that_is_an_input_is_a_fresh_copy() -> None:
    # ORT neither writes a bound buffer for such an output nor copies it when it allocates:
    # its own result aliases the caller's input.
    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    sess = ortbind.TorchSession(model)
    x = torch.randn(4)
    out = sess(x=x)
    assert list(out) == ["y", "x"]
    assert torch.equal(out["x"], x) and out["x"].data_ptr() != x.data_ptr()
    assert torch.equal(out["y"], -x)
    buffer = torch.empty(4)
    assert sess.run({"x": x}, ["x"], out={"x": buffer})["x"] is buffer
    assert torch.equal(buffer, x)


# --------------------------------------------------------------------------- ORT's refusals


def test_attention_23_refusal_is_retried_with_ort_allocating() -> None:
    # ORT infers 0 for the symbolic head dim and refuses a correct buffer ("Got invalid dimensions
    # for output: Y"), while plain InferenceSession.run succeeds.
    q = helper.make_tensor_value_info("Q", TensorProto.FLOAT, ["B", "S", "D"])
    k = helper.make_tensor_value_info("K", TensorProto.FLOAT, ["B", "L", "D"])
    v = helper.make_tensor_value_info("V", TensorProto.FLOAT, ["B", "L", "D"])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["B", "S", "D"])
    node = helper.make_node("Attention", ["Q", "K", "V"], ["Y"], q_num_heads=2, kv_num_heads=2)
    graph = helper.make_graph([node], "g", [q, k, v], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10).SerializeToString()
    gen = torch.Generator().manual_seed(0)
    feeds = {"Q": torch.randn(1, 4, 8, generator=gen), "K": torch.randn(1, 5, 8, generator=gen)}
    feeds["V"] = torch.randn(1, 5, 8, generator=gen)
    sess = ortbind.TorchSession(model)
    for _ in range(2):
        assert_equal_reference(sess.run(feeds), reference(model, feeds))
    plan = sess.resolve_shapes({n: tuple(t.shape) for n, t in feeds.items()})["Y"]
    assert plan == ortbind.OutputPlan(
        "Y", Rule.ORT, None, "ONNX Runtime refuses a caller-allocated buffer of the right shape (1, 4, 8) for it"
    )


@pytest.mark.parametrize(
    "text",
    [
        "The output OrtValue provided for output 'y' of node '' (Relu) has shape {3,2} but the computed output "
        "shape for this run is {2,3}.",
        "OrtValue shape verification failed. Current shape:{3,2} Requested shape:{2,3}",
        "Got invalid dimensions for output: Y for the following indices\n index: 2 Got: 8 Expected: 0",
        "Invalid rank for output: y Got: 1 Expected: 2 Please fix either the inputs/outputs or the model.",
        "Tensor size mismatch. From: {6} To: {7}",
    ],
)
def test_every_known_refusal_spelling_is_recognised(text: str) -> None:
    assert _ort.is_output_refusal(RuntimeError(text))


def test_refusals_name_their_output() -> None:
    assert _ort.refused_output(RuntimeError("Got invalid dimensions for output: Y for the following")) == "Y"
    assert _ort.refused_output(RuntimeError("Invalid rank for output: y Got: 1 Expected: 2")) == "y"
    assert _ort.refused_output(RuntimeError("The output OrtValue provided for output 'a b' of node")) == "a b"
    assert _ort.refused_output(RuntimeError("Tensor size mismatch")) is None


def test_buffer_reuse_mismatch_is_not_a_refusal() -> None:
    text = "Shape mismatch attempting to re-use buffer. {1,3} != {3,1}. Validate usage of dim_value"
    assert not _ort.is_output_refusal(RuntimeError(text))
    assert not _ort.is_output_refusal(RuntimeError("Invalid rank for input: x Got: 2 Expected: 1"))


def test_refusals_of_this_ort_are_in_the_list() -> None:
    """Provoke each refusal ORT raises here and check the list knows its spelling."""
    relu = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "M"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "M"])],
    )
    model = helper.make_model(relu, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    x = np.ones((2, 3), np.float32)
    seen = []
    for wrong in [(3, 2), (6,)]:
        binding = session.io_binding()
        binding.bind_cpu_input("x", x)
        buffer = np.empty(wrong, np.float32)
        binding.bind_output("y", "cpu", 0, np.float32, list(wrong), buffer.ctypes.data)
        with pytest.raises(Exception) as info:
            session.run_with_iobinding(binding)
        seen.append(info.value)
    assert all(_ort.is_output_refusal(e) for e in seen), [str(e) for e in seen]


def test_bind_errors_are_mapped(monkeypatch: pytest.MonkeyPatch) -> None:
    class Refusing:
        def __init__(self, session: object) -> None:
            pass

        def bind_input(self, *args: object) -> None:
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : unsupported element type")

    sess = ortbind.TorchSession(NEG)
    monkeypatch.setattr(_binding.ort_c, "SessionIOBinding", Refusing)
    with raises(
        ortbind.RunError,
        "input 'x': ONNX Runtime refused to bind it: [ONNXRuntimeError] : 1 : FAIL : unsupported element type",
    ) as info:
        sess(x=torch.ones(3))
    assert (info.value.kind, info.value.name) == ("input", "x")
    with raises(
        ortbind.RunError,
        "input 'x': ONNX Runtime refused to bind it: [ONNXRuntimeError] : 1 : FAIL : unsupported element type",
    ):
        sess.bind({"x": torch.ones(3)})


def test_first_run_verification_lets_ort_allocate_predicted_outputs_once(caplog: pytest.LogCaptureFixture) -> None:
    # CUDA sessions verify each signature's predicted shapes on its first run (there, ORT may copy an
    # output into a bound buffer after comparing element counts only). The mechanism, on CPU:
    lying = parse(f"""{OPSET}
    g (float[N, M] x) => (float[N, M] y, float[N, M] z) {{
        y = Relu(x)
        z = Transpose(x)
    }}""")
    sess = ortbind.TorchSession(lying, verify_shapes=True)
    x = torch.randn(2, 3)
    expected = reference(lying, {"x": x})
    buffer = torch.empty(2, 3)
    with caplog.at_level(logging.DEBUG, logger="ortbind"):
        assert_equal_reference(sess.run({"x": x}, out={"y": buffer}), expected)
        assert torch.equal(buffer, torch.relu(x))
        plan = sess.resolve_shapes({"x": (2, 3)})
        assert plan["y"].rule is Rule.DECLARED
        assert plan["z"].reason == "declared shape (2, 3) proved wrong at run time (ORT produced (3, 2))"
        assert_equal_reference(sess(x=x), expected)
    assert not [r for r in caplog.records if "rerunning" in r.getMessage()]  # nothing predicted was ever refused


# --------------------------------------------------------------------------- configuration


def test_cuda_graph_provider_options_are_refused() -> None:
    for provider, flag in [
        ("CUDAExecutionProvider", "enable_cuda_graph"),
        ("TensorrtExecutionProvider", "trt_cuda_graph_enable"),
    ]:
        with raises(
            ortbind.ConfigError,
            f"provider_options[{provider!r}][{flag!r}]: CUDA graphs replay the addresses they captured, while each "
            f"ortbind call binds fresh buffers, so ORT would read and write freed memory; pass cuda_graph=True to "
            f"TorchSession instead, which gives each bound call its own graph",
        ) as info:
            plan_providers("cuda:0", [provider, "CPUExecutionProvider"], {provider: {flag: "1"}})
        assert (info.value.kind, info.value.name) == ("option", flag)
    assert plan_providers("cuda:0", None, {"CUDAExecutionProvider": {"enable_cuda_graph": "0"}}).device.index == 0


def test_non_integer_device_id_is_a_config_error() -> None:
    with raises(
        ortbind.ConfigError,
        "provider_options['CUDAExecutionProvider']['device_id']: expected a 64-bit integer, got 'one'",
    ):
        plan_providers(None, [("CUDAExecutionProvider", {"device_id": "one"})], None)
    with raises(
        ortbind.ConfigError,
        "provider_options['CUDAExecutionProvider']['device_id']: expected a device index (a non-negative integer), "
        "got '-1'",
    ):
        plan_providers("cuda:0", None, {"CUDAExecutionProvider": {"device_id": -1}})


def test_from_session_runs_a_session_built_by_the_caller(tmp_path: Any) -> None:
    path = tmp_path / "neg.onnx"
    path.write_bytes(NEG)
    x = torch.randn(5)
    for source in (str(path), NEG):
        built = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
        sess = ortbind.TorchSession.from_session(built)
        assert sess.session is built and sess.device == torch.device("cpu")
        assert_equal_reference(sess(x=x), reference(NEG, {"x": x}))
    assert ortbind.TorchSession.from_session(built, model=onnx.load_model_from_string(NEG)).outputs[0].name == "y"


def test_from_session_errors() -> None:
    built = ort.InferenceSession(NEG, providers=["CPUExecutionProvider"])
    with raises(
        ortbind.ConfigError,
        "device cuda:0: the session runs on ['CPUExecutionProvider'], whose tensors live on cpu; pass device='cpu'",
    ):
        ortbind.TorchSession.from_session(built, device="cuda")
    with raises(ortbind.ConfigError, "session: expected an onnxruntime.InferenceSession, got builtins.str"):
        ortbind.TorchSession.from_session("neg.onnx")  # type: ignore[arg-type]
    other = parse(f"{OPSET} g (float[N] x) => (float[N] z) {{ z = Neg(x) }}")
    with raises(
        ortbind.ModelError,
        "model: its graph declares outputs ['z'] but the ONNX Runtime session has ['y']; the model file is "
        "inconsistent, or another model was passed to from_session(model=...)",
    ):
        ortbind.TorchSession.from_session(built, model=other)


# --------------------------------------------------------------------------- the plan cache


def test_plan_cache_evicts_the_least_recently_used_and_keeps_what_it_learned() -> None:
    lying = parse(f"""{OPSET}
    g (float[N, M] x) => (float[N, M] z) {{
        z = Transpose(x)
    }}""")
    sess = ortbind.TorchSession(lying, plan_cache_size=3)
    sess(x=torch.randn(2, 3))  # learns that z's declared dims lie
    for n in (4, 5, 6):
        sess(x=torch.randn(n, n))
    assert len(sess.plans) == 3
    assert (torch.Size([2, 3]),) not in sess.plans
    sess(x=torch.randn(4, 4))  # used again: now the most recent
    sess(x=torch.randn(7, 7))
    assert sess.plans.signatures() == [(torch.Size([6, 6]),), (torch.Size([4, 4]),), (torch.Size([7, 7]),)]
    x = torch.randn(2, 3)
    assert_equal_reference(sess(x=x), reference(lying, {"x": x}))
    assert sess.resolve_shapes({"x": (2, 3)})["z"].reason == (
        "its declared dims proved wrong for an earlier input signature"
    )


def test_shape_inference_skeleton_holds_no_large_constants() -> None:
    from ortbind._inference import _make_skeleton

    weight = helper.make_tensor("w", TensorProto.FLOAT, [64, 64], np.ones(64 * 64, np.float32).tolist())
    shape = helper.make_tensor("s", TensorProto.INT64, [2], [64, 64])
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["w"], value=weight),
            helper.make_node("Constant", [], ["s"], value=shape),
            helper.make_node("Reshape", ["x", "s"], ["r"]),
            helper.make_node("MatMul", ["r", "w"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    skeleton = _make_skeleton(model)
    assert [n.output[0] for n in skeleton.graph.node] == ["s", "r", "y"]  # the weight became an input
    assert skeleton.ByteSize() < 1000 < model.ByteSize()
    sess = ortbind.TorchSession(model)
    plan = sess.resolve_shapes({"x": (64 * 64,)})["y"]
    assert (plan.rule, plan.shape) == (Rule.INFERRED, (64, 64))
    x = torch.randn(64 * 64)
    assert_equal_reference(sess(x=x), reference(model.SerializeToString(), {"x": x}))
