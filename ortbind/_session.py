"""TorchSession: torch tensors in, torch tensors out, through ONNX Runtime IO binding.

Construction and introspection; every call goes through the session's :class:`~._engine.Engine`
(checks, plans, the executor), which bound calls share. Loading (the ORT session, device, stream)
is :mod:`._loader`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch

from . import _binding, _loader
from ._bound import BoundCall
from ._engine import Engine
from ._execute import Executor
from ._inference import ShapeInferencer
from ._inputs import InputChecker
from ._interface import check_flags, check_interface, host_memory_inputs
from ._metadata import ModelSource, ModelSpec, TensorSpec, read_spec
from ._outputs import OutputChecker, mapping_of
from ._plan import DEFAULT_SIZE, PlanCache
from ._prepared import Uncopyable
from ._providers import ProviderSpec
from ._runoptions import RunPolicy
from ._shapes import OutputPlan, ShapeProgram
from .errors import ConfigError, ShapeError

__all__ = ["BoundCall", "TorchSession"]


class TorchSession(Uncopyable):
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

    One session may be called from many threads at once; each call has its own binding. In a
    ``cuda_graph`` session runs take turns (ORT captures graphs on one shared stream).

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
        verify_shapes: Whether the first run of each input signature lets ORT allocate the
            outputs whose shapes were predicted (rules b and c) and compares, before binding
            them by pointer. Defaults to on for CUDA sessions, where an output computed on
            another device is copied into a bound buffer after a check of element counts only;
            on CPU, ORT checks a bound buffer's shape itself before writing it.
        plan_cache_size: How many input signatures' plans to keep (least recently used go first).

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
        provider_options: Mapping[str, Mapping[str, Any] | None] | Sequence[Mapping[str, Any]] | None = None,
        session_options: ort.SessionOptions | None = None,
        output_shapes: Mapping[str, Sequence[int | str]] | None = None,
        strict: bool = False,
        allow_copy: bool = False,
        allow_cpu_fallback: bool = False,
        max_output_bytes: int | None = None,
        cuda_graph: bool = False,
        synchronize: bool = True,
        verify_shapes: bool | None = None,
        plan_cache_size: int = DEFAULT_SIZE,
    ) -> None:
        check_flags(
            strict=strict,
            allow_copy=allow_copy,
            allow_cpu_fallback=allow_cpu_fallback,
            cuda_graph=cuda_graph,
            synchronize=synchronize,
            verify_shapes=verify_shapes,
        )
        loaded = _loader.load(
            model, device, providers, provider_options, session_options, allow_cpu_fallback, cuda_graph=cuda_graph
        )
        self._setup(
            loaded,
            output_shapes,
            strict,
            allow_copy,
            max_output_bytes,
            cuda_graph,
            synchronize,
            verify_shapes,
            plan_cache_size,
        )

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
        verify_shapes: bool | None = None,
        plan_cache_size: int = DEFAULT_SIZE,
    ) -> TorchSession:
        """Run a session that the caller built with ``onnxruntime.InferenceSession``.

        The session's providers decide the device (its CUDA provider's ``device_id``); a given
        ``device`` must agree. The model's metadata is read from the file or bytes the session
        was built from, or from ``model``. On CUDA, a session built without
        ``user_compute_stream`` runs on a stream ortbind does not know, so each run first waits
        for the caller's current stream on the CPU and blocks until ORT is done
        (``synchronize=False`` is refused); build it with a ``user_compute_stream`` to order by
        events instead.

        Args:
            session: The built session.
            device: Where tensors live; defaults to the session's device.
            model: The model the session was built from, when the session cannot tell.
            output_shapes: As for :class:`TorchSession`.
            strict: As for :class:`TorchSession`.
            allow_copy: As for :class:`TorchSession`.
            max_output_bytes: As for :class:`TorchSession`.
            synchronize: As for :class:`TorchSession`.
            verify_shapes: As for :class:`TorchSession`.
            plan_cache_size: As for :class:`TorchSession`.

        Raises:
            ConfigError: Not an InferenceSession, ``device`` disagrees with its providers,
                CUDA-graph capture is on, or ``synchronize=False`` without a known stream.
            ModelError: The model cannot be found or read.
        """
        check_flags(strict=strict, allow_copy=allow_copy, synchronize=synchronize, verify_shapes=verify_shapes)
        self = cls.__new__(cls)
        loaded = _loader.adopt(session, device, model)
        self._setup(
            loaded,
            output_shapes,
            strict,
            allow_copy,
            max_output_bytes,
            False,
            synchronize,
            verify_shapes,
            plan_cache_size,
        )
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
        verify_shapes: bool | None,
        plan_cache_size: int,
    ) -> None:
        self._spec = spec = read_spec(loaded.proto)
        self._path = loaded.path
        self._session = loaded.session
        self._device = device = loaded.device
        self._stream = loaded.stream
        check_interface(spec, loaded.session)
        on_cuda = device.type == "cuda"
        for name, value in (("max_output_bytes", max_output_bytes), ("plan_cache_size", plan_cache_size)):
            if (value is not None or name == "plan_cache_size") and (
                isinstance(value, bool) or not isinstance(value, int) or value <= 0
            ):
                raise ConfigError(f"{name}: expected a positive int, got {value!r}", kind="option", name=name)
        if output_shapes is not None:
            mapping_of(output_shapes, "output_shapes", "output", ShapeError, "output name -> dims (ints or symbols)")
        if cuda_graph and not on_cuda:
            raise ConfigError(
                f"cuda_graph=True: CUDA graphs need a CUDA session, but this one runs on {device}; "
                f"pass device='cuda' or leave cuda_graph out",
                kind="option",
                name="cuda_graph",
            )
        self._max_output_bytes = max_output_bytes or _binding.device_capacity(device)
        host = host_memory_inputs(loaded.session) if on_cuda else frozenset()
        cpu = torch.device("cpu")
        devices = [cpu if s.name in host else device for s in spec.inputs]
        inputs = InputChecker(spec.inputs, devices, allow_copy, spec.overridable)
        passthrough = [inputs.index.get(s.name) for s in spec.outputs]
        program = ShapeProgram.for_specs(spec.inputs, spec.outputs, output_shapes, strict)
        plans = PlanCache(
            program,
            spec.outputs,
            passthrough,
            infer=ShapeInferencer(loaded.proto),
            max_output_bytes=self._max_output_bytes,
            verify=on_cuda if verify_shapes is None else bool(verify_shapes),
            size=plan_cache_size,
        )
        order = _binding.CudaStreamOrder(loaded.stream, device) if on_cuda else None
        policy = RunPolicy(
            synchronize=synchronize, cuda_graph=cuda_graph, can_defer=not on_cuda or loaded.stream is not None
        )
        executor = Executor(loaded.session._sess, spec, device, inputs, plans, order, serial=cuda_graph)
        self._engine = Engine(
            inputs,
            OutputChecker(spec, device, plans),
            plans,
            policy,
            executor,
            cuda_graph=cuda_graph,
            host_inputs=frozenset(inputs.index[n] for n in host),
        )

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

    @property
    def stream(self) -> torch.cuda.Stream | None:
        """The CUDA stream ONNX Runtime computes on (``None`` on CPU, or for an adopted session built
        without a ``user_compute_stream``). Runs are ordered against torch's current stream by events."""
        return self._stream

    @property
    def input_devices(self) -> tuple[torch.device, ...]:
        """Where each input must live: the session's device, or the CPU for an input a CUDA session keeps
        in host memory (shape tensors and the like)."""
        return self._engine.inputs.devices

    @property
    def plans(self) -> PlanCache:
        """The per-signature plans this session made and learned (see :meth:`resolve_shapes`)."""
        return self._engine.plans

    @property
    def run_options(self) -> ort.RunOptions:
        """The ``RunOptions`` plain calls use by default (ORT's log level 4: errors come back as exceptions).

        Change it to change later calls' defaults, e.g. ``sess.run_options.log_severity_level = 2``.
        A call given ``synchronize=`` other than the session's uses ortbind's own options for that.
        """
        return self._engine.policy.default

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

        Raises:
            InputError: A shape is missing, or an input is unknown.
            ShapeError: A shape is not a sequence of sizes, or breaks the declared rank or fixed dims.
        """
        return self._engine.resolve(input_shapes)

    # ------------------------------------------------------------------ running

    def __call__(self, /, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run with inputs given by name; returns every output, by name, in model order.

        Use :meth:`run` for input names that are not Python identifiers, for a subset of
        outputs, for ``out=`` buffers, shared buffers or per-call ``output_shapes``.
        """
        return self._engine.call(feeds, None, None, None, None, None, None)

    def run(
        self,
        feeds: Mapping[str, torch.Tensor],
        output_names: Sequence[str] | None = None,
        *,
        out: Mapping[str, torch.Tensor] | None = None,
        output_shapes: Mapping[str, Sequence[int]] | None = None,
        share: Mapping[str, str] | None = None,
        run_options: ort.RunOptions | None = None,
        synchronize: bool | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run the model once.

        Args:
            feeds: Input name -> tensor, for every input. Each must have the declared dtype, live
                on :attr:`device`, be contiguous, without lazy negation, aligned (16 bytes on
                CUDA), inside its own storage, and match the declared rank and fixed dims. Inputs
                are only read (but see ``share``), and are referenced until the run returns.
            output_names: The outputs to compute, in the order wanted; all by default.
            out: Output name -> caller-owned buffer to write into. Each must have the output's
                dtype, the session's device, be contiguous, not require grad and have the
                output's shape (or, where that is unknown ahead, its declared rank); the returned
                dict holds these very tensors (a tensor subclass's buffer as a plain
                ``torch.Tensor`` alias of its memory: no subclass code runs after the checks),
                and their autograd version counters are bumped.
            output_shapes: Output name -> concrete shape for this call (rule a).
            share: Output name -> input name, **only for models that write that output in place
                into that input's buffer** (ORT's ``GroupQueryAttention`` with a past/present KV
                buffer shared, as onnxruntime-genai's builder makes them): the output is bound to
                the input tensor itself, with the input's shape, and comes back as that tensor
                (its version bumped). Checked for dtype, device, rank and overlap; an input bound
                as an ``allow_copy`` copy, or also asked for as a pass-through output, is refused.
                A model that computes another shape for the output fails with a
                :class:`~ortbind.RunError` naming it. The model is never run twice in such a call
                (a second run would read what the first wrote): a refused prediction of another
                output is a :class:`~ortbind.RunError` naming it, and ORT allocates it from then
                on. Never implied.
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
        return self._engine.call(feeds, output_names, out, output_shapes, share, run_options, synchronize)

    def bind(
        self,
        feeds: Mapping[str, torch.Tensor],
        output_names: Sequence[str] | None = None,
        *,
        out: Mapping[str, torch.Tensor] | None = None,
        share: Mapping[str, str] | None = None,
    ) -> BoundCall:
        """Check and bind a call once, to run it many times with :meth:`BoundCall.run`.

        Everything a call checks is checked here, with the same errors. Outputs whose shape is
        known ahead are allocated now (or taken from ``out=``, or shared with an input) and bound
        for good; the bound call returns those very tensors from every run, overwritten each time.
        Update inputs in place (``tensor.copy_(new)``) or with :meth:`BoundCall.rebind`. On a
        session that verifies shapes (CUDA), binding a new input signature runs the model once
        to check the predicted output shapes.

        Args:
            feeds: Input name -> tensor, for every input; they stay referenced by the bound call.
            output_names: The outputs to compute; all by default.
            out: Output name -> caller-owned buffer to bind instead of allocating one.
            share: Output name -> input name, as for :meth:`run` (only for models that write in place).

        Returns:
            The :class:`~ortbind.BoundCall`.
        """
        if _binding.function_mode_enabled() or _binding.dispatch_modes():
            with _binding.without_modes():
                return BoundCall(self._engine, feeds, output_names, out, share)
        return BoundCall(self._engine, feeds, output_names, out, share)
