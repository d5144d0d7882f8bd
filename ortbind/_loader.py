"""Loading: build (or adopt) the ONNX Runtime session, its device, CUDA stream and fallback policy.

Nothing here runs a model. :func:`load` builds a session from a model and the caller's device and
provider choices; :func:`adopt` takes a session the caller built. Both return a :class:`Loaded`
that :class:`~ortbind.TorchSession` runs.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import torch

from ._metadata import ModelSource, load_model
from ._ort import OrtCalls
from ._providers import (
    CUDA,
    CUDA_GRAPH_OPTIONS,
    GPU_PROVIDERS,
    ProviderSpec,
    device_id,
    diagnose,
    parse_device,
    plan_providers,
    uses_gpu,
)
from .errors import ConfigError, ModelError, ProviderError, ProviderFallbackWarning, _warn

__all__ = ["Loaded", "adopt", "load"]


@dataclass
class Loaded:
    """A built session and what running it needs to know.

    Attributes:
        session: The ONNX Runtime session.
        proto: The model graph (weights not loaded), for metadata and shape inference.
        path: The model file, or ``None`` for a model from memory.
        device: Where inputs must live and outputs are allocated.
        stream: The CUDA stream ORT computes on (``user_compute_stream``), or ``None`` where ORT
            picks its own (CPU, or an adopted session without one).
    """

    session: ort.InferenceSession
    proto: onnx.ModelProto
    path: Path | None
    device: torch.device
    stream: torch.cuda.Stream | None


def _check_cuda_device(device: torch.device) -> str:
    """Why torch cannot hold tensors on ``device`` (``""`` if it can); raises for a bad index."""
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else "unable to see a GPU"
        return f"torch {torch.__version__} is {build}, so no tensor can live on {device}"
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"device {device}: torch sees {torch.cuda.device_count()} CUDA device(s); pass an index below that",
            kind="device",
            name=str(device),
        )
    return ""


def _create(
    source: str | bytes, where: str, options: ort.SessionOptions | None, providers: Any, device: torch.device
) -> Any:
    """Build the ORT session; on CUDA with the session's device current, and the caller's restored after.

    ORT's CUDA provider calls ``cudaSetDevice`` while it is created and leaves it set; a session
    on ``cuda:1`` must not move the caller's current device.
    """
    with _cuda_device(device), OrtCalls("create", subject=where):
        return ort.InferenceSession(source, sess_options=options, providers=providers)


@contextlib.contextmanager
def _cuda_device(device: torch.device) -> Iterator[None]:
    if device.type != "cuda" or not torch.cuda.is_available() or device.index is None:
        yield
        return
    previous = torch.cuda._exchange_device(device.index)
    try:
        yield
    finally:
        torch.cuda._exchange_device(previous)


def _dedicated_stream(device: torch.device) -> torch.cuda.Stream:
    """A CUDA stream for ORT alone.

    ``torch.cuda.Stream()`` hands out streams from a small per-device pool, round robin, so user
    code making its own ``torch.cuda.Stream()`` could get ORT's, and its work would then be
    serialized with ORT's and its ordering assumptions broken. A stream made with
    ``cudaStreamCreate`` belongs to nobody else; it is destroyed when the session is.
    """
    cudart = torch.cuda.cudart()  # type: ignore[no-untyped-call]
    create = getattr(cudart, "cudaStreamCreate", None)
    if create is None:  # a torch without the binding: a pooled stream still orders correctly
        return torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]
    handle = torch.zeros(1, dtype=torch.int64)
    with _cuda_device(device):
        status = create(handle.data_ptr())
    if int(status) != 0:
        return torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]
    stream = torch.cuda.ExternalStream(int(handle.item()), device=device)  # type: ignore[no-untyped-call]
    destroy = cudart.cudaStreamDestroy
    weakref.finalize(stream, destroy, int(handle.item()))
    return stream


def load(
    model: ModelSource,
    device: str | torch.device | None,
    providers: Sequence[ProviderSpec] | None,
    provider_options: object,
    session_options: ort.SessionOptions | None,
    allow_cpu_fallback: bool,
    *,
    cuda_graph: bool = False,
) -> Loaded:
    """Build the session for ``model`` on the device and providers asked for.

    Raises:
        ModelError: The model cannot be read or loaded.
        ConfigError: The arguments contradict each other or ask for what ortbind cannot honour.
        ProviderError: A requested provider is not active (and ``allow_cpu_fallback`` is off).
    """
    if session_options is not None and not isinstance(session_options, ort.SessionOptions):
        raise ConfigError(
            f"session_options: expected an onnxruntime.SessionOptions, got {type(session_options).__name__}; "
            f"build one (options = onnxruntime.SessionOptions(); options.intra_op_num_threads = 1; "
            f"options.add_session_config_entry(key, value)) and pass it",
            kind="option",
            name="session_options",
        )
    loaded = load_model(model)
    where = f"model {str(loaded.path)!r}" if loaded.path else "model from memory"
    if not loaded.path and any(t.data_location == onnx.TensorProto.EXTERNAL for t in loaded.proto.graph.initializer):
        where += (
            " (its weights are in external data files, which ONNX Runtime looks for next to a model path; "
            "pass the path of the .onnx file)"
        )
    plan = plan_providers(device, providers, provider_options)
    if plan.device.type == "cuda" and not uses_gpu(plan.providers):
        # Binding CUDA memory to a session without a CUDA provider can crash the process.
        raise ConfigError(
            f"device {plan.device}: needs a CUDA or TensorRT provider, but providers are {plan.providers}; "
            f"add 'CUDAExecutionProvider' or use device='cpu'",
            kind="device",
            name=str(plan.device),
        )
    stream: torch.cuda.Stream | None = None
    cuda_problem = ""
    if plan.device.type == "cuda":
        cuda_problem = _check_cuda_device(plan.device)
        if not cuda_problem and plan.user_stream is not None:
            stream = torch.cuda.ExternalStream(plan.user_stream, device=plan.device)  # type: ignore[no-untyped-call]
        elif not cuda_problem:
            # A dedicated stream: torch's legacy default stream has handle 0, which ORT takes to
            # mean "no stream" and replaces with one of its own.
            stream = _dedicated_stream(plan.device)
            for name, opts in zip(plan.providers, plan.options):
                if name in GPU_PROVIDERS:
                    opts["user_compute_stream"] = str(stream.cuda_stream)

    if cuda_graph:
        for name, opts in zip(plan.providers, plan.options):
            if name == CUDA:
                opts["enable_cuda_graph"] = "1"
    session = _create(loaded.ort_source, where, session_options, list(zip(plan.providers, plan.options)), plan.device)
    active = session.get_providers()
    missing = [p for p in plan.requested if p not in active]
    device_now = plan.device
    if missing or cuda_problem:
        reasons = [f"{p}: {diagnose(p)}" for p in missing]
        if cuda_problem:
            reasons.insert(0, cuda_problem)
        wanted = ", ".join(plan.requested) or str(plan.device)
        message = f"{wanted} was requested for {plan.device}, but ONNX Runtime runs on {active}: " + "; ".join(reasons)
        if not allow_cpu_fallback:
            raise ProviderError(
                message + "; or pass allow_cpu_fallback=True to run on CPU", kind="device", name=str(plan.device)
            )
        if cuda_problem and uses_gpu(active):
            # ORT's GPU provider loaded, but torch cannot hold CUDA tensors to feed it.
            session = _create(loaded.ort_source, where, session_options, ["CPUExecutionProvider"], torch.device("cpu"))
            active = session.get_providers()
        if not uses_gpu(active):
            device_now = torch.device("cpu")
            stream = None
        _warn(
            f"{message}; running on {active} with tensors on {device_now} (allow_cpu_fallback=True)",
            ProviderFallbackWarning,
        )
    return Loaded(session, loaded.proto, loaded.path, device_now, stream)


def _session_model(session: Any, model: ModelSource | None) -> tuple[onnx.ModelProto, Path | None]:
    if model is not None:
        loaded = load_model(model)
        return loaded.proto, loaded.path
    # InferenceSession keeps what it was built from; one built from bytes keeps the bytes.
    path = getattr(session, "_model_path", None)
    if path:
        loaded = load_model(path)
        return loaded.proto, loaded.path
    data = getattr(session, "_model_bytes", None)
    if data:
        return load_model(data).proto, None
    raise ModelError(
        "session: cannot find the model it was built from; pass model=<path, bytes or ModelProto>",
        kind="model",
    )


def adopt(session: Any, device: str | torch.device | None, model: ModelSource | None) -> Loaded:
    """Wrap a session the caller built; its providers decide the device unless ``device`` is given.

    Raises:
        ConfigError: ``session`` is not an InferenceSession, ``device`` disagrees with its
            providers, or it has CUDA-graph capture enabled.
        ModelError: The model it was built from cannot be found or read.
    """
    if not isinstance(session, ort.InferenceSession):
        raise ConfigError(
            f"session: expected an onnxruntime.InferenceSession, got {type(session).__module__}."
            f"{type(session).__qualname__}",
            kind="option",
            name="session",
        )
    active = session.get_providers()
    options = session.get_provider_options()
    gpu = next((p for p in active if p in GPU_PROVIDERS), None)
    gpu_options = {k: str(v) for k, v in options.get(gpu, {}).items()} if gpu else {}
    for flag in CUDA_GRAPH_OPTIONS:
        if gpu_options.get(flag, "0").strip().lower() not in ("0", "false", ""):
            raise ConfigError(
                f"session: its {gpu} has {flag} on; CUDA graphs replay the addresses they captured, while "
                f"each ortbind call binds fresh buffers; build the session without it",
                kind="option",
                name=flag,
            )
    own = torch.device("cuda", device_id(gpu, gpu_options.get("device_id", "0"))) if gpu else torch.device("cpu")
    wanted = own if device is None else parse_device(device)
    if wanted != own:
        raise ConfigError(
            f"device {wanted}: the session runs on {active}, whose tensors live on {own}; pass device={str(own)!r}",
            kind="device",
            name=str(wanted),
        )
    stream: torch.cuda.Stream | None = None
    if own.type == "cuda":
        problem = _check_cuda_device(own)
        if problem:
            raise ProviderError(f"session on {own}: {problem}", kind="device", name=str(own))
        handle = int(gpu_options.get("user_compute_stream", "0") or 0)
        if handle:
            stream = torch.cuda.ExternalStream(handle, device=own)  # type: ignore[no-untyped-call]
    proto, path = _session_model(session, model)
    return Loaded(session, proto, path, own, stream)
