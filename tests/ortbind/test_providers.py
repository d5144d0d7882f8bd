"""Provider planning, and no silent fallback when a GPU provider cannot be used."""

from __future__ import annotations

import re

import onnxruntime as ort
import pytest
import torch

import ortbind
from ortbind import _providers
from ortbind._providers import plan_providers

from ..models import parse
from ..reference import cuda_provider_loads

MODEL = parse("""<ir_version: 8, opset_import: ["" : 17]>
g (float[N] x) => (float[N] y) {
    y = Neg(x)
}""")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
TRT = "TensorrtExecutionProvider"


needs_no_cuda = pytest.mark.skipif(cuda_provider_loads(), reason="CUDA works here; these test the failure path")


def test_device_alone_picks_providers() -> None:
    plan = plan_providers("cpu", None, None)
    assert (plan.device, plan.providers, plan.options) == (torch.device("cpu"), [CPU], [{}])
    plan = plan_providers("cuda:1", None, None)
    assert plan.device == torch.device("cuda", 1)
    assert plan.providers == [CUDA, CPU]
    assert plan.options == [{"device_id": "1"}, {}]
    assert plan_providers(torch.device("cuda"), None, None).device == torch.device("cuda", 0)
    assert plan_providers(None, None, None).device == torch.device("cpu")


def test_explicit_providers_decide_the_device() -> None:
    plan = plan_providers(None, [(TRT, {"device_id": 2, "trt_fp16_enable": True}), CUDA, CPU], None)
    assert plan.device == torch.device("cuda", 2)
    assert plan.providers == [TRT, CUDA, CPU]
    assert plan.options[0] == {"device_id": "2", "trt_fp16_enable": "True"}
    assert plan.options[1] == {"device_id": "2"}
    assert plan.requested == [TRT, CUDA]


def test_provider_options_merge_over_inline_ones() -> None:
    plan = plan_providers(
        "cuda:0", [(CUDA, {"arena_extend_strategy": "kNextPowerOfTwo"})], {CUDA: {"gpu_mem_limit": 1 << 30}}
    )
    assert plan.options == [
        {"arena_extend_strategy": "kNextPowerOfTwo", "gpu_mem_limit": "1073741824", "device_id": "0"}
    ]
    plan = plan_providers("cuda:0", None, {CUDA: {"user_compute_stream": "12345"}})
    assert plan.user_stream == 12345


def test_provider_argument_errors() -> None:
    with pytest.raises(
        ortbind.ConfigError,
        match=re.escape(
            "provider_options['CUDAExecutionProvider']['device_id'] is 1, but device is cuda:0; "
            "make them agree or leave device_id out"
        ),
    ):
        plan_providers("cuda:0", None, {CUDA: {"device_id": 1}})
    with pytest.raises(
        ortbind.ConfigError,
        match=re.escape(
            "providers: expected a list of provider names, got the string 'CPUExecutionProvider'; "
            "pass ['CPUExecutionProvider']"
        ),
    ):
        plan_providers(None, CPU, None)  # type: ignore[arg-type]
    with pytest.raises(
        ortbind.ConfigError,
        match=re.escape(
            "provider_options['CUDAExecutionProvider']: CUDAExecutionProvider is not among providers "
            "['CPUExecutionProvider']; add it there"
        ),
    ):
        plan_providers(None, [CPU], {CUDA: {}})
    with pytest.raises(
        ortbind.ConfigError, match=re.escape("providers: expected names or (name, options) pairs, got 3")
    ):
        plan_providers(None, [3], None)  # type: ignore[list-item]


@needs_no_cuda
def test_cuda_request_without_cuda_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ortbind._loader.diagnose", lambda p: f"<why {p}>")
    torch_part = ""
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else "unable to see a GPU"
        torch_part = f"torch {torch.__version__} is {build}, so no tensor can live on cuda:0; "
    active = [CPU]
    with pytest.raises(ortbind.ProviderError) as info:
        ortbind.TorchSession(MODEL, "cuda")
    assert str(info.value) == (
        f"CUDAExecutionProvider was requested for cuda:0, but ONNX Runtime runs on {active}: {torch_part}"
        f"CUDAExecutionProvider: <why CUDAExecutionProvider>; or pass allow_cpu_fallback=True to run on CPU"
    )


@needs_no_cuda
def test_explicit_gpu_providers_that_do_not_load_raise() -> None:
    for providers in ([CUDA, CPU], [TRT, CUDA, CPU]):
        with pytest.raises(ortbind.ProviderError, match=r"^TensorrtExecutionProvider, |^CUDAExecutionProvider was"):
            ortbind.TorchSession(MODEL, "cpu", providers=providers)


@needs_no_cuda
def test_diagnosis_names_the_missing_library() -> None:
    why = _providers.diagnose(CUDA)
    if CUDA not in ort.get_available_providers():
        assert why.startswith("this onnxruntime build")
    else:
        assert why.startswith("its library failed to load (")
        assert "cannot open shared object file" in why or "not found" in why.lower()
        assert why.endswith("or call onnxruntime.preload_dlls()")


@needs_no_cuda
def test_cpu_fallback_is_opt_in_and_visible() -> None:
    with pytest.warns(
        ortbind.ProviderFallbackWarning, match=r"running on \['CPUExecutionProvider'\] with tensors on cpu"
    ):
        sess = ortbind.TorchSession(MODEL, "cuda", allow_cpu_fallback=True)
    assert sess.device == torch.device("cpu")
    assert sess.providers == [CPU]
    assert torch.equal(sess(x=torch.ones(2))["y"], -torch.ones(2))


def test_cpu_session_reports_its_providers() -> None:
    sess = ortbind.TorchSession(MODEL, "cpu")
    assert sess.providers == [CPU]
    assert sess.session.get_providers() == [CPU]
    assert repr(sess) == (
        "TorchSession('<in memory>', device='cpu', providers=['CPUExecutionProvider'], inputs=['x'], outputs=['y'])"
    )


def test_cuda_device_without_a_gpu_provider_is_refused() -> None:
    with pytest.raises(
        ortbind.ConfigError,
        match=re.escape(
            "device cuda:0: needs a CUDA or TensorRT provider, but providers are ['CPUExecutionProvider']; "
            "add 'CUDAExecutionProvider' or use device='cpu'"
        ),
    ):
        ortbind.TorchSession(MODEL, "cuda", providers=[CPU])
