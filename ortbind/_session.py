"""TorchSession: torch tensors in, torch tensors out, through ONNX Runtime IO binding.

Composes the other modules: loading (:mod:`._loader`: session, device, stream), metadata (what the
model declares), shapes (what the outputs will be), binding (checks, pointers, DLPack, streams) and
ORT's error table (:mod:`._ort`). There is one execution path, :meth:`TorchSession._execute`; what
can be worked out once per input signature is, as a tuple of output slots.
"""

from __future__ import annotations

import itertools
import logging
import operator
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch

from . import _binding, _loader
from ._bound import BoundCall
from ._inference import ShapeInferencer
from ._metadata import ModelSource, ModelSpec, TensorSpec, read_spec
from ._ort import from_ort, is_output_refusal, refused_output, translate
from ._providers import ProviderSpec
from ._runoptions import GRAPH_ID as _GRAPH_ID
from ._runoptions import NO_SYNC as _NO_SYNC
from ._runoptions import config_entry, default_run_options
from ._shapes import OutputPlan, Rule, ShapeProgram, format_dims, format_shape
from .errors import ConfigError, InputError, ModelError, OrtbindError, OutputError, RunError, ShapeError

__all__ = ["BoundCall", "TorchSession"]

_log = logging.getLogger("ortbind")

PLAN_CACHE_SIZE = 4096
"""Input signatures whose plans a session keeps; the least recently used one goes first."""


@dataclass(frozen=True, slots=True)
class _Slot:
    """One output of one call, worked out ahead: how it is allocated and bound.

    The common output has ``shape`` set and nothing else to do: ortbind allocates it and binds it
    by pointer. Every other case (ORT allocates, an empty tensor, a pass-through, an unsupported
    type, a caller's buffer) has ``shape=None`` and takes the longer branch.

    Attributes:
        index: Position among the model's outputs.
        name: Its name.
        elem_type: ONNX element type int, as bound.
        dtype: Its torch dtype (``None`` for an output ortbind cannot bind).
        shape: The non-empty shape ortbind allocates and binds, or ``None``.
        expected: The shape the plan resolved (what an ``out=`` buffer must have and what a
            verifying run compares against), or ``None`` when it is unknown ahead.
        predicted: ``expected`` comes from declared dims or inference (rules b/c), so ORT may
            refuse it; a refusal reruns the call with ORT allocating this output.
        passthrough: Index of the input this output is (a graph output named like an input), or
            ``None``. ORT neither writes a bound buffer for it nor copies it when it allocates.
        problem: Why it cannot be produced (an unsupported type), or ``None``.
        sizes: What ``torch.empty(*sizes)`` takes to allocate ``shape`` (derived).
    """

    index: int
    name: str
    elem_type: int
    dtype: torch.dtype | None
    shape: tuple[int, ...] | None
    expected: tuple[int, ...] | None
    predicted: bool
    passthrough: int | None
    problem: str | None
    sizes: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        # torch.empty parses sizes given as separate ints faster than one tuple; a scalar's are ((),).
        object.__setattr__(self, "sizes", (self.shape or ((),)) if self.shape is not None else ())


@dataclass(frozen=True)
class _SignaturePlan:
    """Everything one input signature needs.

    Attributes:
        outputs: One plan per model output (what :meth:`TorchSession.resolve_shapes` reports).
        slots: One slot per model output, in model order.
        verified: Whether a run has confirmed the predicted shapes. Sessions on CUDA start
            unverified: there, an output computed on another device is copied into its bound
            buffer after a check of element counts only, so a wrong prediction would come back
            silently reshaped. The first run of each signature lets ORT allocate predicted outputs
            and compares.
    """

    outputs: tuple[OutputPlan, ...]
    slots: tuple[_Slot, ...]
    verified: bool


def _device_capacity(device: torch.device) -> int:
    """Bytes a single output may take on ``device`` by default: all of its memory."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX
        return 1 << 62


def _format_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class TorchSession:
    """Runs an ONNX model on ONNX Runtime with torch tensors, binding their memory directly.

    Inputs are bound by ``data_ptr`` after they are checked (type, real storage, dtype, device,
    contiguity, lazy negation, alignment, rank, fixed dims); nothing is cast, copied or moved
    behind the caller's back. Outputs are allocated by ortbind with ``torch.empty`` on the
    session's device when their shape can be known before the run, else ONNX Runtime allocates
    them and they are handed over through DLPack. Either way each call returns fresh tensors that
    the caller owns: a later call never writes into them.

    Output shapes are resolved per call, in this order: (a) ``output_shapes`` overrides, (b) the
    model's declared dims evaluated with symbols bound from the inputs, (c) ONNX shape inference
    on the concrete input shapes, (d) allocation by ONNX Runtime. The outcome is cached per input
    signature. A declared shape that proves wrong at run time is detected (ORT refuses the bound
    buffer before writing it), that output moves to rule (d) for the signature, and its declared
    dims are not trusted again by this session. An output larger than ``max_output_bytes`` is
    never allocated from a prediction: ORT allocates what the run really produces.

    One session may be called from many threads at once; each call has its own binding.

    Args:
        model: A path to a ``.onnx`` file (external weight files next to it are loaded by ONNX
            Runtime), serialized model bytes, or an ``onnx.ModelProto``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device``. Picks the CUDA
            provider (with CPU for nodes CUDA lacks) or the CPU provider. Defaults to what
            ``providers`` implies, else ``"cpu"``.
        providers: Execution providers as ``onnxruntime.InferenceSession`` takes them, for
            experts (TensorRT, say). Without ``device``, a CUDA or TensorRT provider means
            ``cuda:<device_id>``.
        provider_options: Provider name -> options, merged over ortbind's defaults.
        session_options: An ``onnxruntime.SessionOptions``, passed through untouched.
        output_shapes: Output name -> dims (ints, input symbols, or expressions over them),
            used before the model's declared dims (rule a).
        strict: Reject inputs that bind one declared symbol to different sizes. By default such
            outputs go to shape inference instead, since real exports tie e.g. a UNet's
            ``timestep`` to the batch symbol while pipelines feed shape ``(1,)``.
        allow_copy: Copy inputs that cannot be bound as they are (non-contiguous, lazily
            negated, misaligned for CUDA) instead of rejecting them; each copy emits a
            :class:`~ortbind.CopyWarning`. Dtype and device are never converted.
        allow_cpu_fallback: If the requested GPU provider cannot be used, run on CPU (with a
            :class:`~ortbind.ProviderFallbackWarning`) instead of raising
            :class:`~ortbind.ProviderError`.
        max_output_bytes: The largest output ortbind allocates from a predicted shape; larger
            ones are left to ORT, and an ``output_shapes`` override beyond it is a
            :class:`~ortbind.ShapeError`. Defaults to the device's memory.
        cuda_graph: Turn on ORT's CUDA-graph capture (``enable_cuda_graph``). Each
            :class:`~ortbind.BoundCall` then captures its own graph on its first runs and replays
            it after; plain calls run without graphs. CUDA sessions only.
        synchronize: On CUDA, whether a run blocks the CPU until ORT's stream is done (ORT's
            default, the safe choice). ``False`` returns as soon as the work is queued; ordering
            against torch's current stream stays by events. No effect on CPU sessions.

    Raises:
        ModelError: The model cannot be read or loaded, or an input cannot be bound.
        ConfigError: The arguments contradict each other or ask for what ortbind cannot honour
            (CUDA-graph provider options, a malformed ``device_id``).
        ProviderError: A requested provider is not active in ONNX Runtime.

    Example:
        >>> sess = TorchSession("unet.onnx", device="cuda:0")  # doctest: +SKIP
        >>> out = sess(sample=latents, timestep=t, encoder_hidden_states=emb)  # doctest: +SKIP
        >>> out["out_sample"].shape  # doctest: +SKIP
        torch.Size([2, 4, 64, 64])
    """

    def __init__(
        self,
        model: ModelSource,
        device: str | torch.device | None = None,
        *,
        providers: Sequence[ProviderSpec] | None = None,
        provider_options: Mapping[str, Mapping[str, Any]] | None = None,
        session_options: ort.SessionOptions | None = None,
        output_shapes: Mapping[str, Sequence[int | str]] | None = None,
        strict: bool = False,
        allow_copy: bool = False,
        allow_cpu_fallback: bool = False,
        max_output_bytes: int | None = None,
        cuda_graph: bool = False,
        synchronize: bool = True,
    ) -> None:
        loaded = _loader.load(
            model, device, providers, provider_options, session_options, allow_cpu_fallback, cuda_graph=cuda_graph
        )
        self._setup(loaded, output_shapes, strict, allow_copy, max_output_bytes, cuda_graph, synchronize)

    @classmethod
    def from_session(
        cls,
        session: ort.InferenceSession,
        device: str | torch.device | None = None,
        *,
        model: ModelSource | None = None,
        output_shapes: Mapping[str, Sequence[int | str]] | None = None,
        strict: bool = False,
        allow_copy: bool = False,
        max_output_bytes: int | None = None,
        synchronize: bool = True,
    ) -> TorchSession:
        """Run a session that the caller built with ``onnxruntime.InferenceSession``.

        The session's providers decide the device (its CUDA provider's ``device_id``); a given
        ``device`` must agree. The model's metadata is read from the file or bytes the session
        was built from, or from ``model``. On CUDA, a session built without
        ``user_compute_stream`` runs on a stream ortbind does not know, so each run first waits
        for the caller's current stream on the CPU; build it with a ``user_compute_stream`` to
        order by events instead.

        Args:
            session: The built session.
            device: Where tensors live; defaults to the session's device.
            model: The model the session was built from, when the session cannot tell.
            output_shapes: As for :class:`TorchSession`.
            strict: As for :class:`TorchSession`.
            allow_copy: As for :class:`TorchSession`.
            max_output_bytes: As for :class:`TorchSession`.
            synchronize: As for :class:`TorchSession`.

        Raises:
            ConfigError: Not an InferenceSession, ``device`` disagrees with its providers, or
                CUDA-graph capture is on.
            ModelError: The model cannot be found or read.
        """
        self = cls.__new__(cls)
        loaded = _loader.adopt(session, device, model)
        self._setup(loaded, output_shapes, strict, allow_copy, max_output_bytes, False, synchronize)
        return self

    def _setup(
        self,
        loaded: _loader.Loaded,
        output_shapes: Mapping[str, Sequence[int | str]] | None,
        strict: bool,
        allow_copy: bool,
        max_output_bytes: int | None,
        cuda_graph: bool,
        synchronize: bool,
    ) -> None:
        self._spec = specs = read_spec(loaded.proto)
        self._path = loaded.path
        for spec in specs.inputs:
            if spec.unsupported:
                raise ModelError(
                    f"input {spec.name!r}: {spec.unsupported}; "
                    f"run this model with onnxruntime.InferenceSession instead",
                    kind="input",
                    name=spec.name,
                )
        self._session = loaded.session
        self._c_session = loaded.session._sess
        ort_inputs = [i.name for i in loaded.session.get_inputs()]
        ort_outputs = [o.name for o in loaded.session.get_outputs()]
        for what, ours, theirs in (
            ("inputs", [s.name for s in specs.inputs], ort_inputs),
            ("outputs", [s.name for s in specs.outputs], ort_outputs),
        ):
            if ours != theirs:
                raise ModelError(
                    f"model: its graph declares {what} {ours} but the ONNX Runtime session has {theirs}; "
                    f"the model file is inconsistent, or another model was passed to from_session(model=...)",
                    kind="model",
                )
        if max_output_bytes is not None and (
            isinstance(max_output_bytes, bool) or not isinstance(max_output_bytes, int) or max_output_bytes <= 0
        ):
            raise ConfigError(
                f"max_output_bytes: expected a positive int, got {max_output_bytes!r}",
                kind="option",
                name="max_output_bytes",
            )
        self._device = loaded.device
        self._max_output_bytes = max_output_bytes or _device_capacity(loaded.device)
        self._inferencer = ShapeInferencer(loaded.proto)
        self._ort_device = _binding.make_ort_device(self._device)
        on_cuda = self._device.type == "cuda"
        self._stream = loaded.stream
        self._stream_order = _binding.CudaStreamOrder(loaded.stream, self._device) if on_cuda else None
        self._allow_copy = allow_copy
        self._program = ShapeProgram.for_specs(specs.inputs, specs.outputs, output_shapes, strict)
        self._plans: OrderedDict[tuple[torch.Size, ...], _SignaturePlan] = OrderedDict()
        self._plans_lock = threading.Lock()
        self._distrusted: set[int] = set()  # outputs whose declared dims proved wrong once
        self._local = threading.local()
        if cuda_graph and not on_cuda:
            raise ConfigError(
                f"cuda_graph=True: CUDA graphs need a CUDA session, but this one runs on {self._device}; "
                f"pass device='cuda' or leave cuda_graph out",
                kind="option",
                name="cuda_graph",
            )
        self._cuda_graph = cuda_graph
        self._graph_ids = itertools.count()
        self._synchronize = synchronize
        self._run_options = default_run_options(synchronize=synchronize, cuda_graph=cuda_graph)
        self._async_options = (
            self._run_options if not synchronize else default_run_options(synchronize=False, cuda_graph=cuda_graph)
        )
        host_inputs = _host_memory_inputs(loaded.session) if on_cuda else frozenset()
        cpu = torch.device("cpu")
        self._input_devices = tuple(cpu if s.name in host_inputs else self._device for s in specs.inputs)
        cpu_ort_device = _binding.make_ort_device(cpu)
        # (name, dtype, elem type, required address multiple, CUDA index or -1, ORT device) per input.
        self._input_checks = tuple(
            (
                s.name,
                s.dtype,
                s.elem_type,
                _binding.CUDA_ALIGNMENT if where.type == "cuda" else max(1, s.dtype.itemsize),
                where.index if where.type == "cuda" else -1,
                self._ort_device if where.type == "cuda" else cpu_ort_device,
            )
            for s, where in zip(specs.inputs, self._input_devices)
            if s.dtype is not None
        )
        self._input_index = {s.name: i for i, s in enumerate(specs.inputs)}
        self._output_index = {s.name: i for i, s in enumerate(specs.outputs)}
        self._passthrough = {i: self._input_index.get(s.name) for i, s in enumerate(specs.outputs)}
        self._dlpack_ok = tuple(_binding.dlpack_supported(s) for s in specs.outputs)
        self._all_outputs = tuple(range(len(specs.outputs)))
        self._verify_first_run = on_cuda
        self._cuda_index = self._device.index if on_cuda else -1
        self._empty_kwargs: dict[str, Any] = {"device": self._device} if on_cuda else {}

    # ------------------------------------------------------------------ introspection

    @property
    def spec(self) -> ModelSpec:
        """The model's declared interface."""
        return self._spec

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """The inputs a call must feed, in declaration order."""
        return self._spec.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """The outputs, in declaration order."""
        return self._spec.outputs

    @property
    def device(self) -> torch.device:
        """Where inputs must live and outputs are allocated."""
        return self._device

    @property
    def providers(self) -> list[str]:
        """The execution providers ONNX Runtime actually uses, highest priority first."""
        return list(self._session.get_providers())

    @property
    def session(self) -> ort.InferenceSession:
        """The underlying ``onnxruntime.InferenceSession``, for what ortbind does not cover."""
        return self._session

    @property
    def path(self) -> Path | None:
        """The model file, or ``None`` when the model came from memory."""
        return self._path

    @property
    def max_output_bytes(self) -> int:
        """The largest output ortbind allocates from a predicted shape."""
        return self._max_output_bytes

    def __repr__(self) -> str:
        source = str(self._path) if self._path else "<in memory>"
        return (
            f"TorchSession({source!r}, device={str(self._device)!r}, providers={self.providers}, "
            f"inputs={[s.name for s in self.inputs]}, outputs={[s.name for s in self.outputs]})"
        )

    def resolve_shapes(self, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, OutputPlan]:
        """How each output would be allocated for inputs of these shapes, without running.

        Args:
            input_shapes: Input name -> shape, for every input.

        Returns:
            Output name -> :class:`OutputPlan` (rule, shape or ``None``, and why).
        """
        shapes: list[torch.Size] = []
        for name, *_ in self._input_checks:
            if name not in input_shapes:
                raise InputError(
                    f"input_shapes: missing input {name!r}; give a shape for every input", kind="input", name=name
                )
            shapes.append(torch.Size(input_shapes[name]))
        unknown = [n for n in input_shapes if n not in self._input_index]
        if unknown:
            raise InputError(self._unknown_message(unknown[0]), kind="input", name=unknown[0])
        plan = self._lookup(tuple(shapes))
        return {p.name: p for p in plan.outputs}

    # ------------------------------------------------------------------ running

    def __call__(self, /, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run with inputs given by name; returns every output, by name, in model order.

        Use :meth:`run` for input names that are not Python identifiers, for a subset of
        outputs, for ``out=`` buffers or per-call ``output_shapes``.
        """
        return self.run(feeds)

    def run(
        self,
        feeds: Mapping[str, torch.Tensor],
        output_names: Sequence[str] | None = None,
        *,
        out: Mapping[str, torch.Tensor] | None = None,
        output_shapes: Mapping[str, Sequence[int]] | None = None,
        run_options: ort.RunOptions | None = None,
        synchronize: bool | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run the model once.

        Args:
            feeds: Input name -> tensor, for every input. Each must have the declared dtype, live
                on :attr:`device`, be contiguous, without lazy negation, aligned (16 bytes on
                CUDA) and match the declared rank and fixed dims. Inputs are only read, and are
                referenced until the run returns.
            output_names: The outputs to compute, in the order wanted; all by default.
            out: Output name -> caller-owned buffer to write into. Each must have the output's
                dtype, the session's device, be contiguous, not require grad and have the
                output's shape; the returned dict holds these very tensors, and their autograd
                version counters are bumped.
            output_shapes: Output name -> concrete shape for this call (rule a).
            run_options: ORT's ``RunOptions`` for this call (terminate, run tag, log level),
                used as given instead of :attr:`run_options`.
            synchronize: Overrides the session's ``synchronize`` for this call.

        Returns:
            Output name -> tensor on :attr:`device`, in ``output_names`` order.

        Raises:
            InputError: A feed is missing, unknown, not a real tensor, or cannot be bound as is.
            OutputError: An output name is unknown, or an ``out=`` buffer cannot be written.
            DTypeError: A feed or buffer has the wrong dtype.
            ShapeError: A feed breaks the declared rank or a fixed dim, or a buffer's shape is
                wrong.
            DeviceError: A tensor is on another device.
            RunError: ONNX Runtime failed (or was terminated); its message is kept.
            ConfigError: ``run_options`` contradict the session (see :meth:`bind`).
        """
        options = self._run_options if run_options is None and synchronize is None else None
        if options is None:
            options = self._options_for(run_options, synchronize, graph_id=-1)
        indices = self._all_outputs if output_names is None else self._select(output_names)
        binding = self._binding(indices)
        tensors, signature = self._collect(feeds, binding)
        plan = self._lookup(signature)
        if output_names is None and out is None and output_shapes is None:
            return self._execute(binding, tensors, signature, plan, plan.slots, indices, None, options)
        slots = [plan.slots[i] for i in indices]
        if output_shapes:
            slots = self._call_overrides(slots, output_shapes)
        buffers = self._check_out(out, slots, tensors) if out else None
        return self._execute(binding, tensors, signature, plan, slots, indices, buffers, options)

    def bind(
        self,
        feeds: Mapping[str, torch.Tensor],
        output_names: Sequence[str] | None = None,
        *,
        out: Mapping[str, torch.Tensor] | None = None,
    ) -> BoundCall:
        """Check and bind a call once, to run it many times with :meth:`BoundCall.run`.

        Everything a call checks is checked here, with the same errors. Outputs whose shape is
        known ahead are allocated now (or taken from ``out=``) and bound for good; the bound call
        returns those very tensors from every run, overwritten each time. Update inputs in place
        (``tensor.copy_(new)``) or with :meth:`BoundCall.rebind`.

        Args:
            feeds: Input name -> tensor, for every input; they stay referenced by the bound call.
            output_names: The outputs to compute; all by default.
            out: Output name -> caller-owned buffer to bind instead of allocating one.

        Returns:
            The :class:`~ortbind.BoundCall`.
        """
        return BoundCall(self, feeds, output_names, out)

    @property
    def run_options(self) -> ort.RunOptions:
        """The ``RunOptions`` plain calls use (ORT's log level 4: errors come back as exceptions).

        Change it to change every later call's defaults, e.g. ``sess.run_options.log_severity_level = 2``.
        """
        return self._run_options

    def _options_for(
        self, run_options: ort.RunOptions | None, synchronize: bool | None, *, graph_id: int
    ) -> ort.RunOptions:
        """The RunOptions for a call: the caller's (checked), or the session's defaults."""
        if run_options is None:
            asynchronous = not (self._synchronize if synchronize is None else synchronize)
            if graph_id < 0:
                return self._async_options if asynchronous else self._run_options
            return default_run_options(synchronize=not asynchronous, cuda_graph=True, graph_id=graph_id)
        if not isinstance(run_options, ort.RunOptions):
            raise ConfigError(
                f"run_options: expected an onnxruntime.RunOptions, got {type(run_options).__name__}",
                kind="option",
                name="run_options",
            )
        if synchronize is not None:
            given = config_entry(run_options, _NO_SYNC) == "1"
            if given == synchronize:
                raise ConfigError(
                    f"synchronize={synchronize}: the run_options given say {_NO_SYNC}="
                    f"{'1' if given else '0'}; set it there, or leave run_options out",
                    kind="option",
                    name="synchronize",
                )
        if self._cuda_graph:
            entry = config_entry(run_options, _GRAPH_ID)
            if entry != str(graph_id):
                raise ConfigError(
                    f"run_options: this call needs gpu_graph_id {graph_id} in a cuda_graph session, the options "
                    f"given have {entry or 'none'}; add run_options.add_run_config_entry('gpu_graph_id', "
                    f"'{graph_id}')",
                    kind="option",
                    name="gpu_graph_id",
                )
        return run_options

    def _asynchronous(self, options: ort.RunOptions) -> bool:
        if options is self._run_options:
            return not self._synchronize
        if options is self._async_options:
            return True
        return config_entry(options, _NO_SYNC) == "1"

    # ------------------------------------------------------------------ inputs

    def _collect(
        self, feeds: Mapping[str, torch.Tensor], binding: Any = None
    ) -> tuple[list[torch.Tensor], tuple[torch.Size, ...]]:
        """Check the feeds; the tensors to bind, in input order, and their shapes (the signature).

        With ``binding`` (this thread's), each checked input is bound there in the same pass,
        unless the binding already holds exactly its address and shape (all a binding keeps of an
        input besides its fixed type and device), which saves a bind for an unchanged input.
        """
        tensors: list[torch.Tensor] = []
        shapes: list[torch.Size] = []
        strided, plain = torch.strided, torch.Tensor
        held = self._local.inputs if binding is not None else None
        for index, (name, dtype, elem_type, align, cuda_index, where) in enumerate(self._input_checks):
            try:
                t = feeds[name]
            except KeyError:
                raise InputError(self._missing_message(feeds), kind="input", name=name) from None
            except TypeError:
                raise InputError(
                    f"feeds: expected a mapping of input name -> torch.Tensor, got {type(feeds).__name__}",
                    kind="input",
                ) from None
            # The common case passes these cheap tests; anything else takes the checked path,
            # which raises (or copies, with allow_copy) with a message saying why.
            try:
                common = (
                    type(t) is plain
                    and t.dtype is dtype
                    and t.layout is strided
                    and (t.is_cuda and t.get_device() == cuda_index if cuda_index >= 0 else t.is_cpu)
                    and t.is_contiguous()
                    and not t.is_neg()
                    and (address := t.data_ptr()) != 0
                    and not address % align
                )
            except RuntimeError:  # data_ptr() of a functionalized or other storage-less tensor
                common = False
            if not common:
                t = _binding.check_input(
                    name, self._spec.inputs[index], t, self._input_devices[index], self._allow_copy
                )
                address = t.data_ptr()
            tensors.append(t)
            shape = t.shape
            shapes.append(shape)
            if held is not None:
                bound = (address, shape)
                if held[index] != bound:
                    held[index] = None
                    try:
                        binding.bind_input(name, where, elem_type, shape, address)
                    except Exception as exc:
                        self._local.binding = None
                        if not from_ort(exc):
                            raise
                        raise translate(exc, "bind", subject=f"input {name!r}", name=name) from exc
                    held[index] = bound
        if len(feeds) != len(tensors):
            unknown = next(n for n in feeds if n not in self._input_index)
            raise InputError(self._unknown_message(unknown), kind="input", name=unknown)
        return tensors, tuple(shapes)

    def _missing_message(self, feeds: Mapping[str, Any]) -> str:
        missing = [s for s in self._spec.inputs if s.name not in feeds]
        names = ", ".join(repr(s.name) for s in missing)
        needs = "; ".join(str(s) for s in missing)
        return f"missing input{'s' if len(missing) > 1 else ''} {names}; the model needs {needs}"

    def _unknown_message(self, name: str) -> str:
        known = ", ".join(repr(s.name) for s in self._spec.inputs) or "none"
        return f"input {name!r}: the model has no such input; its inputs are {known}"

    # ------------------------------------------------------------------ plans

    def _lookup(self, signature: tuple[torch.Size, ...]) -> _SignaturePlan:
        """The signature's plan, made on first use; a use makes it the most recently used."""
        plan = self._plans.get(signature)
        if plan is None:
            return self._plan(signature)
        try:
            self._plans.move_to_end(signature)  # the least recently used goes first
        except KeyError:  # evicted by another thread just now; the plan in hand is still right
            self._remember(signature, plan.outputs, verified=plan.verified)
        return plan

    def _plan(self, signature: tuple[torch.Size, ...]) -> _SignaturePlan:
        entries = list(self._program.plan([tuple(s) for s in signature], infer=self._inferencer))
        for index in self._distrusted:
            entry = entries[index]
            if entry.rule is Rule.DECLARED:
                entries[index] = OutputPlan(
                    entry.name, Rule.ORT, None, "its declared dims proved wrong for an earlier input signature"
                )
        entries = [self._within_limit(entry) for entry in entries]
        return self._remember(signature, tuple(entries), verified=not self._verify_first_run)

    def _within_limit(self, entry: OutputPlan) -> OutputPlan:
        """The entry, or rule (d) when its predicted size is beyond :attr:`max_output_bytes`."""
        if entry.shape is None:
            return entry
        spec = self._spec.outputs[self._output_index[entry.name]]
        size = spec.dtype.itemsize if spec.dtype is not None else 1
        for dim in entry.shape:
            size *= dim
        if size <= self._max_output_bytes:
            return entry
        what = f"{format_shape(entry.shape)} (declared {format_dims(spec.dims)})"
        reason = (
            f"shape {what} needs {_format_bytes(size)}, more than max_output_bytes "
            f"({_format_bytes(self._max_output_bytes)})"
        )
        if entry.rule is Rule.OVERRIDE:
            raise ShapeError(
                f"output_shapes[{entry.name!r}]: {reason}; pass a smaller shape or raise max_output_bytes",
                kind="output",
                name=entry.name,
            )
        _log.info("output %r: %s; ORT allocates it", entry.name, reason)
        return OutputPlan(entry.name, Rule.ORT, None, reason)

    def _slot(self, index: int, entry: OutputPlan, *, verified: bool) -> _Slot:
        spec = self._spec.outputs[index]
        predicted = entry.rule is Rule.DECLARED or entry.rule is Rule.INFERRED
        passthrough = self._passthrough[index]
        bindable = (
            entry.shape is not None
            and 0 not in entry.shape
            and passthrough is None
            and spec.unsupported is None
            and (verified or not predicted)  # an unverified prediction is checked by letting ORT allocate
        )
        return _Slot(
            index,
            spec.name,
            spec.elem_type,
            spec.dtype,
            entry.shape if bindable else None,
            entry.shape,
            predicted,
            passthrough,
            spec.unsupported,
        )

    def _remember(
        self, signature: tuple[torch.Size, ...], outputs: tuple[OutputPlan, ...], *, verified: bool
    ) -> _SignaturePlan:
        slots = tuple(self._slot(i, entry, verified=verified) for i, entry in enumerate(outputs))
        plan = _SignaturePlan(outputs, slots, verified)
        with self._plans_lock:
            self._plans[signature] = plan
            self._plans.move_to_end(signature)
            while len(self._plans) > PLAN_CACHE_SIZE:
                self._plans.popitem(last=False)
        return plan

    def _learn(
        self,
        signature: tuple[torch.Size, ...],
        plan: _SignaturePlan,
        predicted: Sequence[_Slot],
        results: Mapping[str, torch.Tensor],
        refusal: BaseException | None = None,
    ) -> None:
        """Record what a run that let ORT allocate predicted outputs showed about the predictions.

        After a refusal where every prediction proved right, ORT's own check disagrees with the
        true shape (it infers 0 for a dim of ONNX Attention-23, say): the output it names (or, if
        it names none, every retried one) is left to ORT for this signature, so later calls do not
        pay for a refused run each time.
        """
        outputs = list(plan.outputs)
        wrong = [s for s in predicted if tuple(results[s.name].shape) != s.expected]
        if refusal is not None and not wrong:
            named = refused_output(refusal)
            for slot in predicted:
                if named is None or slot.name == named:
                    outputs[slot.index] = OutputPlan(
                        slot.name,
                        Rule.ORT,
                        None,
                        f"ONNX Runtime refuses a caller-allocated buffer of the right shape "
                        f"{format_shape(results[slot.name].shape)} for it",
                    )
            self._remember(signature, tuple(outputs), verified=True)
            return
        for slot in wrong:
            actual = tuple(results[slot.name].shape)
            entry = outputs[slot.index]
            assert slot.expected is not None
            reason = (
                f"{'declared' if entry.rule is Rule.DECLARED else 'inferred'} shape "
                f"{format_shape(slot.expected)} proved wrong at run time (ORT produced {format_shape(actual)})"
            )
            _log.info("output %r: %s; ORT allocates it for this input signature", slot.name, reason)
            outputs[slot.index] = OutputPlan(slot.name, Rule.ORT, None, reason)
            if entry.rule is Rule.DECLARED:
                self._distrusted.add(slot.index)
        self._remember(signature, tuple(outputs), verified=True)

    # ------------------------------------------------------------------ outputs

    def _select(self, output_names: Sequence[str]) -> tuple[int, ...]:
        if isinstance(output_names, str):
            raise OutputError(
                f"output_names: expected a sequence of names, got the string {output_names!r}; pass [{output_names!r}]",
                kind="output",
                name=output_names,
            )
        indices = []
        for name in output_names:
            index = self._output_index.get(name)
            if index is None:
                raise OutputError(self._unknown_output_message(name), kind="output", name=name)
            indices.append(index)
        if len(set(indices)) != len(indices):
            raise OutputError(f"output_names: {list(output_names)} names an output twice", kind="output")
        return tuple(indices)

    def _unknown_output_message(self, name: str) -> str:
        known = ", ".join(repr(s.name) for s in self._spec.outputs)
        return f"output {name!r}: the model has no such output; its outputs are {known}"

    def _call_overrides(self, slots: list[_Slot], output_shapes: Mapping[str, Sequence[int]]) -> list[_Slot]:
        wanted = {s.name for s in slots}
        for name in output_shapes:
            if name not in wanted:
                raise ShapeError(
                    f"output_shapes[{name!r}]: not among the outputs of this call "
                    f"({', '.join(repr(n) for n in wanted)})",
                    kind="output",
                    name=name,
                )
        result = []
        for slot in slots:
            dims = output_shapes.get(slot.name)
            if dims is None:
                result.append(slot)
                continue
            shape = _as_shape(dims)
            if shape is None:
                raise ShapeError(
                    f"output_shapes[{slot.name!r}]: expected a sequence of non-negative ints, got {dims!r}",
                    kind="output",
                    name=slot.name,
                )
            self._within_limit(OutputPlan(slot.name, Rule.OVERRIDE, shape))
            bindable = 0 not in shape and slot.passthrough is None and slot.problem is None
            result.append(replace(slot, shape=shape if bindable else None, expected=shape, predicted=False))
        return result

    def _check_out(
        self, out: Mapping[str, torch.Tensor], slots: Sequence[_Slot], tensors: Sequence[torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        by_name = {s.name: s for s in slots}
        buffers: dict[str, torch.Tensor] = {}
        for name, value in out.items():
            slot = by_name.get(name)
            if slot is None:
                if name in self._output_index:
                    raise OutputError(
                        f"out {name!r}: not among output_names of this call; add it there or drop the buffer",
                        kind="out",
                        name=name,
                    )
                raise OutputError(self._unknown_output_message(name).replace("output", "out", 1), kind="out", name=name)
            spec = self._spec.outputs[slot.index]
            if slot.problem:
                raise ModelError(self._unsupported_output_message(spec), kind="output", name=name)
            buffers[name] = _binding.check_out_buffer(name, spec, value, self._device, slot.expected)
        _binding.check_no_overlap(buffers.items(), ((s.name, t) for s, t in zip(self._spec.inputs, tensors)))
        return buffers

    @staticmethod
    def _unsupported_output_message(spec: TensorSpec) -> str:
        return (
            f"output {spec.name!r}: {spec.unsupported}; request the other outputs with run(feeds, output_names=[...])"
        )

    # ------------------------------------------------------------------ the one execution path

    def _binding(self, outputs: tuple[int, ...]) -> Any:
        """This thread's IOBinding, ready to bind ``outputs``.

        A binding is reused by the thread that made it (creating one costs about as much as the
        rest of a tiny call). Reuse is safe because every call re-binds every input and every
        output it asks for; when the set of outputs differs from the previous call's, the old
        output bindings are cleared first, so ORT never writes into a buffer handed out earlier.
        """
        local = self._local
        binding = getattr(local, "binding", None)
        if binding is None:
            binding = local.binding = _binding.new_binding(self._c_session)
            local.outputs = outputs
            local.inputs = [None] * len(self._input_checks)
        elif local.outputs != outputs:
            binding.clear_binding_outputs()
            local.outputs = outputs
        return binding

    def _execute(
        self,
        binding: Any,
        tensors: Sequence[torch.Tensor],
        signature: tuple[torch.Size, ...],
        plan: _SignaturePlan,
        slots: Sequence[_Slot],
        key: tuple[int, ...],
        buffers: Mapping[str, torch.Tensor] | None,
        options: ort.RunOptions,
        *,
        first_attempt: BaseException | None = None,
    ) -> dict[str, torch.Tensor]:
        """Bind, run, collect: every call goes through here, the common one with least to do.

        A slot with a shape gets a fresh ``torch.empty`` bound by pointer; a caller's buffer is
        bound as it is; anything else is left for ORT to allocate and comes back through DLPack.
        When ORT refuses a predicted shape, the call is rerun once with ORT allocating the
        predicted outputs, and the plan learns from what it produced.
        """
        device = self._ort_device
        empty = torch.empty
        kwargs = self._empty_kwargs
        results: dict[str, Any] = {}
        pending: list[tuple[int, _Slot, torch.Tensor | None]] | None = None  # ORT allocates these
        passthrough: list[tuple[_Slot, torch.Tensor | None]] | None = None
        position = 0  # outputs bound so far
        try:
            for slot in slots:
                shape = slot.shape
                if shape is not None and buffers is None:
                    fresh = empty(*slot.sizes, dtype=slot.dtype, **kwargs)
                    binding.bind_output(slot.name, device, slot.elem_type, shape, fresh.data_ptr())
                    results[slot.name] = fresh
                    position += 1
                    continue
                name = slot.name
                if slot.problem is not None:
                    raise ModelError(
                        self._unsupported_output_message(self._spec.outputs[slot.index]), kind="output", name=name
                    )
                buffer = buffers.get(name) if buffers else None
                if slot.passthrough is not None:
                    passthrough = passthrough or []
                    passthrough.append((slot, buffer))
                    results[name] = None
                    continue
                if buffer is None and shape is not None:
                    buffer = empty(shape, dtype=slot.dtype, **kwargs)
                if buffer is not None and buffer.numel() and (shape is not None or not slot.predicted):
                    binding.bind_output(name, device, slot.elem_type, buffer.shape, buffer.data_ptr())
                    results[name] = buffer
                    position += 1
                    continue
                # ORT allocates: the shape is unknown ahead, the tensor is empty (torch gives
                # empty tensors a null pointer, which ORT refuses to bind), or a prediction is
                # being checked (a caller's buffer then receives a copy of what ORT produced).
                if buffer is None and slot.expected is None and not self._dlpack_ok[slot.index]:
                    raise ShapeError(
                        f"output {name!r}: its shape cannot be resolved before the run "
                        f"({plan.outputs[slot.index].reason or 'no rule applies'}), and ONNX Runtime cannot hand "
                        f"{self._spec.outputs[slot.index].elem_type_name} tensors over through DLPack; pass "
                        f"output_shapes={{{name!r}: (...)}} or out={{{name!r}: buffer}}",
                        kind="output",
                        name=name,
                    )
                binding.bind_output(name, device)
                results[name] = None
                pending = pending or []
                pending.append((position, slot, buffer))
                position += 1
        except Exception as exc:
            self._local.binding = None  # half-bound: the next call starts a fresh one
            if isinstance(exc, OrtbindError) or not from_ort(exc):
                raise
            name = self._bind_failure(slots, buffers)
            raise translate(exc, "bind", subject=f"output {name!r}", name=name) from exc

        if position:
            order = self._stream_order
            state = order.before(tensors, self._asynchronous(options)) if order is not None else None
            try:
                self._c_session.run_with_iobinding(binding, options)
            except Exception as exc:
                self._local.binding = None  # a failed run may leave the binding half-bound
                retry = [s for s in slots if s.shape is not None and s.predicted]
                if not from_ort(exc):
                    raise
                if first_attempt is None and retry and is_output_refusal(exc):
                    loose = [replace(s, shape=None) if s in retry else s for s in slots]
                    fresh_binding = self._binding(key)
                    self._bind_inputs(fresh_binding, tensors, self._local.inputs)
                    results = self._execute(
                        fresh_binding, tensors, signature, plan, loose, key, buffers, options, first_attempt=exc
                    )
                    self._learn(signature, plan, retry, results, refusal=exc)
                    return results
                error = translate(exc, "run")
                if first_attempt is not None:
                    error = RunError(f"{error} (first attempt: {str(first_attempt).strip()})", kind="run")
                raise error from exc
            finally:
                if state is not None:
                    order.after(state)  # type: ignore[union-attr]
        # `tensors` (and any copies made in _collect) stay referenced by the caller's frame until
        # here, so no input memory was released while ORT read it.

        if pending:
            self._collect_pending(binding, pending, results)
            if not plan.verified and first_attempt is None:
                self._learn(signature, plan, [s for _, s, _ in pending if s.predicted and s.expected], results)
        for slot, target in passthrough or ():
            assert slot.passthrough is not None
            source = tensors[slot.passthrough]
            results[slot.name] = source.clone() if target is None else target.copy_(source)
        if buffers:
            torch.autograd.graph.increment_version(tuple(buffers.values()))
        return results

    def _bind_inputs(self, binding: Any, tensors: Sequence[torch.Tensor], held: list[Any] | None = None) -> None:
        """Bind checked inputs into a binding that holds none of them yet.

        Used for a thread's fresh binding after a failed run (``held``: its record of what it
        holds) and for a bound call's own binding. The common call binds in :meth:`_collect`,
        in the same pass as the checks.
        """
        for index, ((name, _, elem_type, _, _, where), tensor) in enumerate(zip(self._input_checks, tensors)):
            try:
                binding.bind_input(name, where, elem_type, tensor.shape, tensor.data_ptr())
            except Exception as exc:
                if not from_ort(exc):
                    raise
                raise translate(exc, "bind", subject=f"input {name!r}", name=name) from exc
            if held is not None:
                held[index] = (tensor.data_ptr(), tensor.shape)

    def _bind_failure(self, slots: Sequence[_Slot], buffers: Mapping[str, torch.Tensor] | None) -> str:
        """Which output bind ORT refused, replayed one by one on a scratch binding (errors only).

        Inputs are bound (and their errors translated) while they are checked, in :meth:`_collect`.
        """
        scratch = _binding.new_binding(self._c_session)
        device = self._ort_device
        for slot in slots:
            buffer = buffers.get(slot.name) if buffers else None
            try:
                if buffer is not None and buffer.numel():
                    scratch.bind_output(slot.name, device, slot.elem_type, buffer.shape, buffer.data_ptr())
                else:
                    scratch.bind_output(slot.name, device)
            except Exception:  # the one that failed
                return slot.name
        return slots[-1].name if slots else "?"

    def _collect_pending(
        self, binding: Any, pending: Sequence[tuple[int, _Slot, torch.Tensor | None]], results: dict[str, Any]
    ) -> None:
        """Take over the outputs ORT allocated, through DLPack, and release them from the binding."""
        values = binding.get_outputs()  # a view into the binding: convert before clearing it
        produced = [
            _binding.tensor_from_ortvalue(values[position], self._spec.outputs[slot.index], self._device)
            for position, slot, _ in pending
        ]
        del values
        # The binding holds a reference to what ORT allocated; drop it so the memory lives
        # exactly as long as the caller's tensors, not until this thread's next call.
        binding.clear_binding_outputs()
        self._local.outputs = None
        for (_, slot, buffer), value in zip(pending, produced):
            if buffer is not None:
                if value.shape != buffer.shape:
                    raise ShapeError(
                        f"out {slot.name!r}: the run produced shape {format_shape(value.shape)}, "
                        f"not the expected {format_shape(buffer.shape)}",
                        kind="out",
                        name=slot.name,
                    )
                if buffer.numel():  # a prediction being checked: ORT wrote its own memory
                    buffer.copy_(value)
            results[slot.name] = value if buffer is None else buffer


def _host_memory_inputs(session: ort.InferenceSession) -> frozenset[str]:
    """Inputs a CUDA session keeps in host memory (shape tensors and the like); ORT >= 1.23."""
    infos = getattr(session, "get_input_memory_infos", None)
    if infos is None:
        return frozenset()
    try:
        located = infos()
    except Exception:  # an ORT that has the method but cannot answer for this session
        return frozenset()
    names = [i.name for i in session.get_inputs()]
    return frozenset(name for name, info in zip(names, located) if getattr(info, "name", "") == "Cpu")


def _as_shape(dims: object) -> tuple[int, ...] | None:
    """``dims`` as a tuple of non-negative ints (numpy and torch ints accepted), or ``None``."""
    if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence | torch.Size):
        return None
    shape = []
    for dim in dims:
        if isinstance(dim, bool):
            return None
        try:
            size = operator.index(dim)
        except TypeError:
            return None
        if size < 0 or size >= 1 << 63:
            return None
        shape.append(size)
    return tuple(shape)
