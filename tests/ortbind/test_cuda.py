"""CUDA behaviour: device index, streams, ORT-allocated outputs, device errors.

Marked ``cuda`` and skipped unless torch sees a GPU and onnxruntime's CUDA provider loads.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ortbind

from ..models import parse
from ..reference import cuda_provider_loads, reference

MODEL = parse("""<ir_version: 8, opset_import: ["" : 17]>
g (float[N, M] x, float[N, M] y) => (float[N, M] s, int64[2, K] nz) {
    s = Add(x, y)
    zero = Constant<value = float {0.0}>()
    mask = Greater(s, zero)
    nz = NonZero(mask)
}""")

MATMUL = parse("""<ir_version: 8, opset_import: ["" : 17]>
g (float[N, N] a) => (float[N, N] b) {
    b = MatMul(a, a)
}""")


pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not cuda_provider_loads(), reason="needs a CUDA GPU and onnxruntime's CUDA provider"),
]


def test_runs_on_cuda_and_matches_cpu_reference() -> None:
    sess = ortbind.TorchSession(MODEL, "cuda:0")
    assert sess.providers[0] == "CUDAExecutionProvider"
    assert sess.device == torch.device("cuda", 0)
    x = torch.randn(64, 32, device="cuda")
    y = torch.randn(64, 32, device="cuda")
    out = sess(x=x, y=y)
    assert out["s"].device == torch.device("cuda", 0)
    assert out["nz"].device == torch.device("cuda", 0)  # rule d, handed over via DLPack
    expected = reference(MODEL, {"x": x.cpu(), "y": y.cpu()})
    np.testing.assert_allclose(out["s"].cpu().numpy(), expected["s"], rtol=0, atol=0)
    np.testing.assert_array_equal(out["nz"].cpu().numpy(), expected["nz"])


def test_cpu_tensor_to_cuda_session_and_cuda_tensor_to_cpu_session() -> None:
    gpu = ortbind.TorchSession(MODEL, "cuda")
    with pytest.raises(
        ortbind.DeviceError, match=r"^input 'x': expected a tensor on cuda:0 \(the session's device\), got cpu"
    ):
        gpu(x=torch.ones(2, 2), y=torch.ones(2, 2, device="cuda"))
    cpu = ortbind.TorchSession(MODEL, "cpu")
    with pytest.raises(
        ortbind.DeviceError, match=r"^input 'x': expected a tensor on cpu \(the session's device\), got cuda:0"
    ):
        cpu(x=torch.ones(2, 2, device="cuda"), y=torch.ones(2, 2))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_device_index_must_match() -> None:
    sess = ortbind.TorchSession(MODEL, "cuda:1")
    x = torch.ones(2, 2, device="cuda:1")
    assert sess(x=x, y=x)["s"].device == torch.device("cuda", 1)
    with pytest.raises(ortbind.DeviceError, match=r"got cuda:0"):
        sess(x=torch.ones(2, 2, device="cuda:0"), y=x)


def test_inputs_written_on_a_side_stream_are_read_after_they_are_ready() -> None:
    """No whole-device sync: ORT's stream waits for the caller's current stream by an event."""
    sess = ortbind.TorchSession(MATMUL, "cuda")
    side = torch.cuda.Stream()
    n = 2048
    with torch.cuda.stream(side):
        base = torch.randn(n, n, device="cuda")
        torch.cuda._sleep(50_000_000)  # keep the stream busy so a race would show
        a = base * 0.01
        out = sess(a=a)["b"]
        result = out.clone()  # ordered after ORT's write on this stream
    side.synchronize()
    torch.testing.assert_close(result, a @ a, rtol=1e-3, atol=1e-3)


def test_outputs_are_ready_for_the_current_stream() -> None:
    sess = ortbind.TorchSession(MATMUL, "cuda")
    a = torch.randn(1024, 1024, device="cuda") * 0.01
    results = [sess(a=a)["b"] for _ in range(5)]
    total = torch.stack(results).sum(0)  # runs on the current stream right after the calls
    torch.testing.assert_close(total, 5 * (a @ a), rtol=1e-3, atol=1e-3)


def test_bfloat16_and_float16_bind_on_cuda() -> None:
    for onnx_type, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        model = parse(
            '<ir_version: 8, opset_import: ["" : 17]>\n'
            f"g ({onnx_type}[N] x) => ({onnx_type}[N] y) {{ y = Identity(x) }}"
        )
        sess = ortbind.TorchSession(model, "cuda")
        x = torch.randn(1000, device="cuda").to(dtype)
        assert torch.equal(sess(x=x)["y"].view(torch.int16), x.view(torch.int16))


def test_user_stream_from_provider_options_is_used() -> None:
    stream = torch.cuda.Stream()
    sess = ortbind.TorchSession(
        MATMUL, "cuda", provider_options={"CUDAExecutionProvider": {"user_compute_stream": str(stream.cuda_stream)}}
    )
    assert sess.stream is not None and sess.stream.cuda_stream == stream.cuda_stream
    a = torch.randn(256, 256, device="cuda")
    torch.testing.assert_close(sess(a=a)["b"], a @ a, rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_a_run_on_cuda_1_leaves_torchs_current_device_alone() -> None:
    sess = ortbind.TorchSession(MODEL, "cuda:1")
    x = torch.ones(2, 2, device="cuda:1")
    torch.cuda.set_device(0)
    sess(x=x, y=x)
    assert torch.cuda.current_device() == 0


def test_misaligned_cuda_views_are_refused_or_copied() -> None:
    half = parse('<ir_version: 8, opset_import: ["" : 17]> g (float16[N] x) => (float16[N] y) { y = Neg(x) }')
    base = torch.randn(64, device="cuda").half()
    view = base[3:]
    assert view.data_ptr() % 16
    with pytest.raises(ortbind.InputError, match=r"^input 'x': its address is 6 bytes past a 16-byte boundary"):
        ortbind.TorchSession(half, "cuda")(x=view)
    with pytest.warns(ortbind.CopyWarning):
        out = ortbind.TorchSession(half, "cuda", allow_copy=True)(x=view)
    assert torch.equal(out["y"], -view)


def test_first_call_of_a_signature_verifies_predicted_shapes() -> None:
    sess = ortbind.TorchSession(MODEL, "cuda")
    x = torch.randn(8, 4, device="cuda")
    first = sess(x=x, y=x)
    assert sess.plans.get((x.shape, x.shape)).verified
    second = sess(x=x, y=x)
    assert torch.equal(first["s"], second["s"])


def test_from_session_on_cuda_orders_by_synchronizing() -> None:
    import onnxruntime as ort

    built = ort.InferenceSession(MATMUL, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    sess = ortbind.TorchSession.from_session(built)
    assert sess.device == torch.device("cuda", 0)
    a = torch.randn(512, 512, device="cuda") * 0.01
    torch.testing.assert_close(sess(a=a)["b"], a @ a, rtol=1e-3, atol=1e-3)


def test_bound_call_with_a_cuda_graph_captures_and_replays() -> None:
    sess = ortbind.TorchSession(MATMUL, "cuda", cuda_graph=True)
    a = torch.randn(256, 256, device="cuda") * 0.1
    bound = sess.bind({"a": a})
    assert bound.graph_id is not None
    for _ in range(4):  # ORT runs a few times before capturing, then replays
        a.copy_(torch.randn(256, 256, device="cuda") * 0.1)
        b = bound.run()["b"]
        torch.testing.assert_close(b, a @ a, rtol=1e-3, atol=1e-3)
    other = sess.bind({"a": torch.randn(64, 64, device="cuda")})
    assert other.graph_id != bound.graph_id
    torch.testing.assert_close(sess(a=a)["b"], a @ a, rtol=1e-3, atol=1e-3)  # plain call: no graph
    with pytest.raises(ortbind.ConfigError, match=r"^rebind: input 'a' would move"):
        bound.rebind(a=torch.randn(256, 256, device="cuda"))


def test_cuda_graph_refuses_outputs_without_fixed_addresses() -> None:
    sess = ortbind.TorchSession(MODEL, "cuda", cuda_graph=True)
    x = torch.randn(4, 4, device="cuda")
    with pytest.raises(ortbind.ShapeError, match=r"^output 'nz': a CUDA-graph bound call needs every output"):
        sess.bind({"x": x, "y": x})
    with pytest.raises(ortbind.OutputError, match=r"^out 's': buffer overlaps input 'x'"):
        sess.bind({"x": x, "y": x}, ["s"], out={"s": x})


def test_host_memory_inputs_take_cpu_tensors() -> None:
    reshape = parse("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[N] x, int64[2] shape) => (float[A, B] y) { y = Reshape(x, shape) }""")
    sess = ortbind.TorchSession(reshape, "cuda")
    x = torch.arange(6.0, device="cuda")
    if sess.input_devices[1].type != "cpu":
        pytest.skip("this ORT keeps the shape input on the device")
    y = sess(x=x, shape=torch.tensor([2, 3]))["y"]
    assert torch.equal(y, x.reshape(2, 3))
    with pytest.raises(ortbind.DeviceError, match=r"^input 'x': expected a tensor on cuda:0"):
        sess(x=x.cpu(), shape=torch.tensor([2, 3]))


def test_asynchronous_runs_are_ordered_by_events() -> None:
    sess = ortbind.TorchSession(MATMUL, "cuda", synchronize=False)
    a = torch.randn(1024, 1024, device="cuda") * 0.01
    b = sess(a=a)["b"]
    total = b.sum()  # on the current stream, which waits for ORT's by an event
    torch.testing.assert_close(total, (a @ a).sum(), rtol=1e-3, atol=1e-2)


# --------------------------------------------------------------------------- reasoned from the sources (docs/design.md)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_the_sessions_device_is_current_during_creation_and_runs_and_the_callers_after() -> None:
    torch.cuda.set_device(0)
    sess = ortbind.TorchSession(MATMUL, "cuda:1")
    assert torch.cuda.current_device() == 0  # ORT's CUDA provider set device 1 while it was created
    a = torch.randn(512, 512, device="cuda:1") * 0.01
    with torch.cuda.device(1):
        expected = a @ a
    torch.testing.assert_close(sess(a=a)["b"], expected, rtol=1e-3, atol=1e-3)
    assert torch.cuda.current_device() == 0


def test_an_adopted_session_without_a_stream_cannot_run_asynchronously() -> None:
    import onnxruntime as ort

    built = ort.InferenceSession(MATMUL, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(ortbind.ConfigError, match=r"^synchronize=False: this session was built without"):
        ortbind.TorchSession.from_session(built, synchronize=False)
    sess = ortbind.TorchSession.from_session(built)
    a = torch.randn(64, 64, device="cuda")
    with pytest.raises(ortbind.ConfigError, match=r"^synchronize=False: this session was built without"):
        sess.run({"a": a}, synchronize=False)


def test_the_sessions_stream_is_its_own() -> None:
    sess = ortbind.TorchSession(MATMUL, "cuda")
    assert sess.stream is not None
    pooled = {torch.cuda.Stream().cuda_stream for _ in range(200)}  # torch hands out 32 per priority, round robin
    assert sess.stream.cuda_stream not in pooled


def test_float8_outputs_with_predicted_shapes_run_on_cuda() -> None:
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("torch has no float8")
    model = parse(
        '<ir_version: 10, opset_import: ["" : 21]> g (float[N] x) => (float8e4m3fn[N] y) { y = Cast<to = 17>(x) }'
    )
    sess = ortbind.TorchSession(model, "cuda")
    x = torch.randn(64, device="cuda")
    for _ in range(2):
        y = sess(x=x)["y"]
        assert torch.equal(y.view(torch.uint8), x.to(torch.float8_e4m3fn).view(torch.uint8))


def test_graph_captures_in_two_threads_do_not_interleave() -> None:
    import threading

    sess = ortbind.TorchSession(MATMUL, "cuda", cuda_graph=True)
    failures: list[BaseException] = []

    def work(size: int) -> None:
        try:
            a = torch.randn(size, size, device="cuda") * 0.05
            bound = sess.bind({"a": a})
            for _ in range(6):
                a.copy_(torch.randn(size, size, device="cuda") * 0.05)
                torch.testing.assert_close(bound.run()["b"], a @ a, rtol=1e-3, atol=1e-3)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(size,)) for size in (128, 192, 256, 320)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_host_memory_inputs_are_refused_under_cuda_graphs() -> None:
    reshape = parse("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[N] x, int64[2] shape) => (float[A, B] y) { y = Reshape(x, shape) }""")
    sess = ortbind.TorchSession(reshape, "cuda", cuda_graph=True)
    if sess.input_devices[1].type != "cpu":
        pytest.skip("this ORT keeps the shape input on the device")
    with pytest.raises(ortbind.InputError, match=r"^input 'shape': the CUDA session keeps it in host memory"):
        sess.bind(
            {"x": torch.arange(6.0, device="cuda"), "shape": torch.tensor([2, 3])},
            out={"y": torch.empty(2, 3, device="cuda")},
        )


def test_run_options_naming_the_graph_are_taken_from_the_first_run() -> None:
    import onnxruntime as ort

    sess = ortbind.TorchSession(MATMUL, "cuda", cuda_graph=True)
    a = torch.randn(128, 128, device="cuda") * 0.1
    bound = sess.bind({"a": a})
    options = ort.RunOptions()
    options.add_run_config_entry("gpu_graph_id", str(bound.graph_id))
    for _ in range(3):
        torch.testing.assert_close(bound.run(run_options=options)["b"], a @ a, rtol=1e-3, atol=1e-3)


def test_ort_allocated_outputs_of_plain_calls_survive_graph_replays() -> None:
    sess = ortbind.TorchSession(MODEL, "cuda", cuda_graph=True)
    x = torch.randn(64, 64, device="cuda")
    s_buf = torch.empty(64, 64, device="cuda")
    bound = sess.bind({"x": x, "y": x}, ["s"], out={"s": s_buf})
    for _ in range(3):
        bound.run()
    nz = sess(x=x, y=x)["nz"]  # allocated by ORT in a session whose arena graphs share
    kept = nz.clone()
    for _ in range(5):
        x.copy_(torch.randn(64, 64, device="cuda"))
        bound.run()
    torch.cuda.synchronize()
    assert torch.equal(nz, kept)


def test_asynchronous_runs_keep_outputs_allocated_on_another_stream_alive() -> None:
    sess = ortbind.TorchSession(MATMUL, "cuda", synchronize=False)
    a = torch.randn(1024, 1024, device="cuda") * 0.01
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        out = torch.empty(1024, 1024, device="cuda")
    result = sess.run({"a": a}, out={"b": out})["b"]
    total = result.sum()
    del out, result
    with torch.cuda.stream(side):
        junk = torch.full((1024, 1024), 7.0, device="cuda")  # may reuse the block only after ORT is done
    torch.testing.assert_close(total, (a @ a).sum(), rtol=1e-3, atol=1e-2)
    del junk
