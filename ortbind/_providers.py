"""Devices and execution providers: what to ask ONNX Runtime for, and why it may refuse.

Loading concerns only; nothing here runs a model.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import onnxruntime as ort
import torch
from onnxruntime.capi import build_and_package_info as _build_info

from ._typecheck import is_mapping
from .errors import ConfigError

__all__ = [
    "CPU",
    "CUDA",
    "GPU_PROVIDERS",
    "ProviderPlan",
    "ProviderSpec",
    "device_id",
    "diagnose",
    "parse_device",
    "plan_providers",
    "uses_gpu",
]

CPU: Final = "CPUExecutionProvider"
CUDA: Final = "CUDAExecutionProvider"
TENSORRT: Final = "TensorrtExecutionProvider"
GPU_PROVIDERS: Final = frozenset({CUDA, TENSORRT, "NvTensorRTRTXExecutionProvider"})
"""Providers that run on a CUDA device and therefore take ``device_id`` and a compute stream."""


def uses_gpu(providers: Sequence[str]) -> bool:
    """Whether any of ``providers`` runs on a CUDA device."""
    return any(p in GPU_PROVIDERS for p in providers)


ProviderSpec = str | tuple[str, Mapping[str, Any]]
"""A provider name, or ``(name, options)`` as ``onnxruntime.InferenceSession`` takes it."""

_LIBRARY_STEMS: Final = {CUDA: "onnxruntime_providers_cuda", TENSORRT: "onnxruntime_providers_tensorrt"}


def parse_device(device: str | torch.device) -> torch.device:
    """Normalize ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device`` to one with an index.

    Raises:
        ConfigError: Another device type, or an unparsable string.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(
            f"device {device!r}: not a device ({exc}); pass 'cpu', 'cuda' or 'cuda:N'", kind="device", name=str(device)
        ) from exc
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "cuda":
        return torch.device("cuda", 0 if dev.index is None else dev.index)
    raise ConfigError(
        f"device {str(dev)!r}: ortbind runs on 'cpu' or 'cuda[:N]'; pass one of those", kind="device", name=str(dev)
    )


@dataclass
class ProviderPlan:
    """The providers and options to create a session with, and the device tensors must live on.

    Attributes:
        device: Where inputs must be and outputs are allocated.
        providers: Provider names, highest priority first.
        options: One options dict per provider, all values as strings.
        user_stream: The ``user_compute_stream`` handle the caller chose, if any.
    """

    device: torch.device
    providers: list[str]
    options: list[dict[str, str]] = field(default_factory=list)
    user_stream: int | None = None

    @property
    def requested(self) -> list[str]:
        """The providers that must be active for the request to be honoured (all but CPU)."""
        return [p for p in self.providers if p != CPU]


def _options(where: str, given: object) -> dict[str, str]:
    """One provider's options as strings; ``None`` means none (as ORT takes it)."""
    if given is None:
        return {}
    if not is_mapping(given):
        raise ConfigError(
            f"{where}: expected a mapping of option name -> value, got {type(given).__name__}",
            kind="option",
            name=where,
        )
    return {str(k): str(v) for k, v in given.items()}


def _provider_entries(providers: object) -> list[tuple[str, dict[str, str]]]:
    if isinstance(providers, str):
        raise ConfigError(
            f"providers: expected a list of provider names, got the string {providers!r}; pass [{providers!r}]",
            kind="option",
            name="providers",
        )
    if not isinstance(providers, Sequence):
        raise ConfigError(
            f"providers: expected a list of provider names, got {providers!r}; pass e.g. ['CUDAExecutionProvider']",
            kind="option",
            name="providers",
        )
    entries: list[tuple[str, dict[str, str]]] = []
    for entry in providers:
        if isinstance(entry, str):
            entries.append((entry, {}))
        elif isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str):
            entries.append((entry[0], _options(f"providers[{entry[0]!r}]", entry[1])))
        else:
            raise ConfigError(
                f"providers: expected names or (name, options) pairs, got {entry!r}", kind="option", name="providers"
            )
    return entries


def _named_options(provider_options: object, names: list[str] | None) -> dict[str, dict[str, str]]:
    """``provider_options`` by provider name; ORT's own spelling (a list parallel to ``providers``) too."""
    if provider_options is None:
        return {}
    if is_mapping(provider_options):
        result = {}
        for name, opts in provider_options.items():
            if names is not None and name not in names:
                raise ConfigError(
                    f"provider_options[{name!r}]: {name} is not among providers {names}; add it there",
                    kind="option",
                    name=str(name),
                )
            result[str(name)] = _options(f"provider_options[{name!r}]", opts)
        return result
    if isinstance(provider_options, Sequence) and not isinstance(provider_options, str):
        if names is None or len(names) != len(provider_options):
            raise ConfigError(
                f"provider_options: a list ({len(provider_options)} entries) is read as ONNX Runtime does, one options "
                f"dict per entry of providers, but providers are {names}; pass a dict of provider name -> options",
                kind="option",
                name="provider_options",
            )
        return {n: _options(f"provider_options[{i}]", o) for i, (n, o) in enumerate(zip(names, provider_options))}
    raise ConfigError(
        f"provider_options: expected a dict of provider name -> options, got {type(provider_options).__name__}",
        kind="option",
        name="provider_options",
    )


def plan_providers(
    device: str | torch.device | None,
    providers: Sequence[ProviderSpec] | None,
    provider_options: object,
) -> ProviderPlan:
    """Decide providers and device from the caller's arguments.

    ``device`` alone picks CUDA (then CPU for the nodes CUDA lacks) or CPU. Explicit
    ``providers`` are taken as given; without ``device`` they decide it (a CUDA or TensorRT
    provider means ``cuda:<device_id>``). ``provider_options`` maps provider name to options (or,
    as ONNX Runtime takes it, is a list parallel to ``providers``) and overrides options given
    inline. ``None`` options mean none.
    """
    names: list[str] = []
    options: dict[str, dict[str, str]] = {}
    if providers is not None:
        for name, opts in _provider_entries(providers):
            names.append(name)
            options[name] = opts
    for name, opts in _named_options(provider_options, names if providers is not None else None).items():
        options.setdefault(name, {}).update(opts)

    if device is not None:
        dev = parse_device(device)
    else:
        gpu = next((n for n in names if n in GPU_PROVIDERS), None)
        if gpu is None:
            dev = torch.device("cpu")
        else:
            dev = torch.device("cuda", device_id(gpu, options.get(gpu, {}).get("device_id", "0")))

    if providers is None:
        names = [CUDA, CPU] if dev.type == "cuda" else [CPU]
        unused = [n for n in options if n not in names]
        if unused:
            raise ConfigError(
                f"provider_options[{unused[0]!r}]: {unused[0]} is not used for device {dev} (providers {names}); "
                f"pass the device it runs on (device='cuda' for CUDAExecutionProvider), or providers=[...]",
                kind="option",
                name=unused[0],
            )

    user_stream: int | None = None
    for name in names:
        if name not in GPU_PROVIDERS:
            continue
        opts = options.setdefault(name, {})
        if dev.type == "cuda":
            given = opts.get("device_id")
            if given is not None and device_id(name, given) != dev.index:
                raise ConfigError(
                    f"provider_options[{name!r}]['device_id'] is {given}, but device is {dev}; "
                    f"make them agree or leave device_id out",
                    kind="option",
                    name="device_id",
                )
            opts["device_id"] = str(dev.index)
        for flag in CUDA_GRAPH_OPTIONS:
            if opts.get(flag, "0").strip().lower() not in ("0", "false", ""):
                raise ConfigError(
                    f"provider_options[{name!r}][{flag!r}]: CUDA graphs replay the addresses they captured, "
                    f"while each ortbind call binds fresh buffers, so ORT would read and write freed memory; "
                    f"pass cuda_graph=True to TorchSession instead, which gives each bound call its own graph",
                    kind="option",
                    name=flag,
                )
        if "user_compute_stream" in opts:
            user_stream = _integer_option(name, "user_compute_stream", opts["user_compute_stream"])
            if user_stream == 0:
                # ORT reads a 0 handle as "no stream given" and makes its own, which ortbind could
                # not order against torch's: the caller asked for ordering that would not happen.
                raise ConfigError(
                    f"provider_options[{name!r}]['user_compute_stream']: 0 is CUDA's legacy default stream, which "
                    f"ONNX Runtime reads as no stream at all; pass a stream's handle "
                    f"(str(torch.cuda.Stream().cuda_stream)) or leave it out so ortbind makes one",
                    kind="option",
                    name="user_compute_stream",
                )
    return ProviderPlan(dev, names, [options.get(n, {}) for n in names], user_stream)


CUDA_GRAPH_OPTIONS: Final = ("enable_cuda_graph", "trt_cuda_graph_enable")
"""Provider options that turn on CUDA-graph capture and replay."""


_INT64: Final = 1 << 63


def _integer_option(provider: str, key: str, value: str) -> int:
    """An integer option (ORT parses it as a 64-bit integer); anything else is a ConfigError."""
    try:
        number = int(value)
    except ValueError:
        number = _INT64
    if -_INT64 <= number < _INT64:
        return number
    raise ConfigError(
        f"provider_options[{provider!r}][{key!r}]: expected a 64-bit integer, got {value!r}",
        kind="option",
        name=key,
    )


def device_id(provider: str, value: str) -> int:
    index = _integer_option(provider, "device_id", value)
    if not 0 <= index < 1 << 31:  # ORT keeps it as a 32-bit OrtDevice::DeviceId
        raise ConfigError(
            f"provider_options[{provider!r}]['device_id']: expected a device index (a non-negative integer), "
            f"got {value!r}",
            kind="option",
            name="device_id",
        )
    return index


def _library_path(provider: str) -> Path | None:
    stem = _LIBRARY_STEMS.get(provider)
    if stem is None:
        return None
    filename = f"{stem}.dll" if sys.platform == "win32" else f"lib{stem}.so"
    return Path(ort.__file__).parent / "capi" / filename


def _cuda_version() -> str:
    return str(getattr(_build_info, "cuda_version", "") or "")


def diagnose(provider: str) -> str:
    """Why ONNX Runtime did not activate ``provider``, as precisely as can be found out."""
    if provider not in ort.get_available_providers():
        return (
            f"this onnxruntime build ({ort.__version__}) does not include it; "
            f"install onnxruntime-gpu instead of onnxruntime"
        )
    library = _library_path(provider)
    if library is not None and library.exists():
        try:
            ctypes.CDLL(str(library))
        except OSError as exc:
            cuda = _cuda_version()
            needs = f"CUDA {cuda.split('.')[0]}.x and cuDNN 9" if cuda else "CUDA and cuDNN"
            return (
                f"its library failed to load ({exc}); install {needs}, e.g. a torch CUDA build "
                f"imported before onnxruntime, or call onnxruntime.preload_dlls()"
            )
    return "ONNX Runtime could not create it; its log above says why"
