"""TorchSession: torch tensors in, torch tensors out, through ONNX Runtime IO binding.

Composes the other modules: metadata (what the model declares), shapes (what the outputs will
be), providers (where it runs) and binding (pointers, checks, DLPack, streams).
"""

from __future__ import annotations

import logging
import operator
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch

from . import _binding
from ._inference import ShapeInferencer
from ._metadata import ModelSource, ModelSpec, TensorSpec, load_model, read_spec
from ._providers import GPU_PROVIDERS, ProviderSpec, diagnose, plan_providers, uses_gpu
from ._shapes import OutputPlan, Rule, ShapeProgram, format_shape
from .errors import (
    DeviceError,
    InputError,
    ModelError,
    ProviderError,
    ProviderFallbackWarning,
    RunError,
    ShapeError,
)

__all__ = ["TorchSession"]

_log = logging.getLogger("ortbind")

# Per-signature plans are tiny; the bound only stops a caller that feeds ever-new shapes from
# growing memory without limit.
_MAX_PLANS = 4096


def _is_shape_mismatch(exc: BaseException) -> bool:
    text = str(exc)
    return "computed output shape" in text or "Shape mismatch" in text


class TorchSession:
    """Runs an ONNX model on ONNX Runtime with torch tensors, binding their memory directly.

    Inputs are bound by ``data_ptr`` after they are checked (dtype, device, contiguity, rank,
    fixed dims); nothing is cast, copied or moved behind the caller's back. Outputs are allocated
    by ortbind with ``torch.empty`` on the session's device when their shape can be known before
    the run, else ONNX Runtime allocates them and they are handed over through DLPack. Either way
    each call returns fresh tensors that the caller owns: a later call never writes into them.

    Output shapes are resolved per call, in this order: (a) ``output_shapes`` overrides, (b) the
    model's declared dims evaluated with symbols bound from the inputs, (c) ONNX shape inference
    on the concrete input shapes, (d) allocation by ONNX Runtime. The outcome is cached per input
    signature. A declared shape that proves wrong at run time is detected (ORT refuses the bound
    buffer before writing it) and that output moves to rule (d) for the signature.

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
        allow_copy: Copy non-contiguous inputs instead of rejecting them; each copy emits a
            :class:`~ortbind.CopyWarning`. Dtype and device are never converted.
        allow_cpu_fallback: If the requested GPU provider cannot be used, run on CPU (with a
            :class:`~ortbind.ProviderFallbackWarning`) instead of raising
            :class:`~ortbind.ProviderError`.

    Raises:
        ModelError: The model cannot be read or loaded, or an input cannot be bound.
        ProviderError: A requested provider is not active in ONNX Runtime.
        DeviceError: The device or provider options are inconsistent.

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
    ) -> None:
        loaded = load_model(model)
        self._spec = read_spec(loaded.proto)
        self._path = loaded.path
        self._inferencer = ShapeInferencer(loaded.proto)
        for spec in self._spec.inputs:
            if spec.unsupported:
                raise ModelError(
                    f"input {spec.name!r}: {spec.unsupported}; run this model with onnxruntime.InferenceSession instead"
                )

        plan = plan_providers(device, providers, provider_options)
        if plan.device.type == "cuda" and not uses_gpu(plan.providers):
            # Binding CUDA memory to a session without a CUDA provider can crash the process.
            raise DeviceError(
                f"device {plan.device}: needs a CUDA or TensorRT provider, but providers are {plan.providers}; "
                f"add 'CUDAExecutionProvider' or use device='cpu'"
            )
        self._stream: torch.cuda.Stream | None = None
        cuda_problem = ""
        if plan.device.type == "cuda":
            if not torch.cuda.is_available():
                build = "a CPU-only build" if torch.version.cuda is None else "unable to see a GPU"
                cuda_problem = f"torch {torch.__version__} is {build}, so no tensor can live on {plan.device}"
            elif plan.device.index is not None and plan.device.index >= torch.cuda.device_count():
                raise DeviceError(
                    f"device {plan.device}: torch sees {torch.cuda.device_count()} CUDA device(s); "
                    f"pass an index below that"
                )
            elif plan.user_stream is not None:
                self._stream = torch.cuda.ExternalStream(plan.user_stream, device=plan.device)  # type: ignore[no-untyped-call]
            else:
                # A dedicated stream: torch's legacy default stream has handle 0, which ORT
                # takes to mean "no stream" and replaces with one of its own.
                self._stream = torch.cuda.Stream(device=plan.device)  # type: ignore[no-untyped-call]
                for name, opts in zip(plan.providers, plan.options):
                    if name in GPU_PROVIDERS:
                        opts["user_compute_stream"] = str(self._stream.cuda_stream)

        try:
            self._session = ort.InferenceSession(
                loaded.ort_source,
                sess_options=session_options,
                providers=list(zip(plan.providers, plan.options)),
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            where = repr(str(loaded.path)) if loaded.path else "from memory"
            raise ModelError(f"model {where}: ONNX Runtime could not load it: {str(exc).strip()}") from exc

        active = self._session.get_providers()
        missing = [p for p in plan.requested if p not in active]
        if missing or cuda_problem:
            reasons = [f"{p}: {diagnose(p)}" for p in missing]
            if cuda_problem:
                reasons.insert(0, cuda_problem)
            wanted = ", ".join(plan.requested) or str(plan.device)
            message = f"{wanted} was requested for {plan.device}, but ONNX Runtime runs on {active}: " + "; ".join(
                reasons
            )
            if not allow_cpu_fallback:
                raise ProviderError(message + "; or pass allow_cpu_fallback=True to run on CPU")
            if cuda_problem and uses_gpu(active):
                # ORT's GPU provider loaded, but torch cannot hold CUDA tensors to feed it.
                self._session = ort.InferenceSession(
                    loaded.ort_source, sess_options=session_options, providers=["CPUExecutionProvider"]
                )
                active = self._session.get_providers()
            if not uses_gpu(active):
                plan.device = torch.device("cpu")
                self._stream = None
            warnings.warn(
                f"{message}; running on {active} with tensors on {plan.device} (allow_cpu_fallback=True)",
                ProviderFallbackWarning,
                stacklevel=2,
            )
        del loaded
        self._device = plan.device
        self._c_session = self._session._sess
        self._ort_device = _binding.make_ort_device(self._device)
        self._stream_order = _binding.CudaStreamOrder(self._stream, self._device) if self._stream else None
        self._allow_copy = allow_copy

        ort_inputs = [i.name for i in self._session.get_inputs()]
        if ort_inputs != [s.name for s in self._spec.inputs]:
            raise ModelError(
                f"model: its graph declares inputs {[s.name for s in self._spec.inputs]} but ONNX "
                f"Runtime reports {ort_inputs}; the model file is inconsistent"
            )

        specs = self._spec
        self._program = ShapeProgram.for_specs(specs.inputs, specs.outputs, output_shapes, strict)
        self._plans: dict[tuple[torch.Size, ...], _SignaturePlan] = {}
        self._local = threading.local()
        self._run_options = ort.RunOptions()
        # Every run error reaches the caller as a RunError carrying ORT's message; ORT's own log
        # line for it would only repeat that (and would fire for the handled shape retry).
        self._run_options.log_severity_level = 4
        self._input_checks = tuple((s.name, s.dtype, s.elem_type) for s in specs.inputs)
        self._input_index = {s.name: i for i, s in enumerate(specs.inputs)}
        self._output_index = {s.name: i for i, s in enumerate(specs.outputs)}
        self._dlpack_ok = tuple(_binding.dlpack_supported(s) for s in specs.outputs)
        self._all_outputs = tuple(range(len(specs.outputs)))
        self._cuda_index = self._device.index if self._device.type == "cuda" else -1
        self._empty_kwargs: dict[str, Any] = {} if self._cuda_index < 0 else {"device": self._device}

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
        for name, _, _ in self._input_checks:
            if name not in input_shapes:
                raise InputError(f"input_shapes: missing input {name!r}; give a shape for every input")
            shapes.append(torch.Size(input_shapes[name]))
        unknown = [n for n in input_shapes if n not in self._input_index]
        if unknown:
            raise InputError(self._unknown_message(unknown[0]))
        plan = self._plans.get(tuple(shapes)) or self._plan(tuple(shapes))
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
    ) -> dict[str, torch.Tensor]:
        """Run the model once.

        Args:
            feeds: Input name -> tensor, for every input. Each must have the declared dtype, live
                on :attr:`device`, be contiguous and match the declared rank and fixed dims.
                Inputs are only read, and are referenced until the run returns.
            output_names: The outputs to compute, in the order wanted; all by default.
            out: Output name -> caller-owned buffer to write into. Each must have the output's
                dtype, the session's device, be contiguous and have the output's shape; the
                returned dict holds these very tensors.
            output_shapes: Output name -> concrete shape for this call (rule a).

        Returns:
            Output name -> tensor on :attr:`device`, in ``output_names`` order.

        Raises:
            InputError: A feed is missing, unknown, not a tensor, or not contiguous.
            DTypeError: A feed or buffer has the wrong dtype.
            ShapeError: A feed breaks the declared rank or a fixed dim, or a buffer's shape is
                wrong.
            DeviceError: A tensor is on another device.
            RunError: ONNX Runtime failed; its message is kept.
        """
        tensors, signature = self._collect(feeds)
        plan = self._plans.get(signature)
        if plan is None:
            plan = self._plan(signature)
        fast = plan.fast
        if fast is not None and output_names is None and out is None and output_shapes is None:
            # The common call, kept lean: every output's shape is known and ortbind allocates it.
            binding = self._binding(self._all_outputs)
            ort_device, empty = self._ort_device, torch.empty
            for (name, _, elem_type), tensor in zip(self._input_checks, tensors):
                binding.bind_input(name, ort_device, elem_type, tensor.shape, tensor.data_ptr())
            results: dict[str, torch.Tensor] = {}
            kwargs = self._empty_kwargs
            for name, elem_type, shape, dtype in fast:
                # Sizes as separate ints: torch parses them faster than one tuple.
                buffer = empty(*shape, dtype=dtype, **kwargs) if shape else empty((), dtype=dtype, **kwargs)
                binding.bind_output(name, ort_device, elem_type, shape, buffer.data_ptr())
                results[name] = buffer
            try:
                self._run(binding)
            except _ShapeMismatchError as mismatch:
                if not plan.guessed:
                    raise self._run_error(mismatch.__cause__) from mismatch.__cause__
                entries = list(plan.outputs)
                return self._retry(tensors, signature, self._all_outputs, entries, None, mismatch.__cause__)
            return results

        indices = self._all_outputs if output_names is None else self._select(output_names)
        entries = [plan.outputs[i] for i in indices]
        if output_shapes:
            entries = self._call_overrides(entries, output_shapes)
        buffers = self._check_out(out, indices, entries, tensors) if out else None
        try:
            return self._execute(tensors, indices, entries, buffers, speculative=True)
        except _ShapeMismatchError as mismatch:
            return self._retry(tensors, signature, indices, entries, buffers, mismatch.__cause__)

    # ------------------------------------------------------------------ internals

    def _collect(self, feeds: Mapping[str, torch.Tensor]) -> tuple[list[torch.Tensor], tuple[torch.Size, ...]]:
        """The tensors to bind, in input order, and their shapes (the signature)."""
        tensors: list[torch.Tensor] = []
        shapes: list[torch.Size] = []
        cuda_index = self._cuda_index
        strided = torch.strided
        for name, dtype, _ in self._input_checks:
            try:
                t = feeds[name]
            except KeyError:
                raise InputError(self._missing_message(feeds)) from None
            except TypeError:
                raise InputError(
                    f"feeds: expected a mapping of input name -> torch.Tensor, got {type(feeds).__name__}"
                ) from None
            if (
                type(t) is not torch.Tensor
                or t.dtype is not dtype
                or t.layout is not strided
                or (not t.is_cuda or t.get_device() != cuda_index if cuda_index >= 0 else not t.is_cpu)
                or not t.is_contiguous()
            ):
                t = _binding.check_input(
                    name, self._spec.inputs[self._input_index[name]], t, self._device, self._allow_copy
                )
                if not t.is_contiguous():  # a subclass that passed the checks above
                    raise InputError(f"input {name!r}: tensor is not contiguous; pass .contiguous()")
            tensors.append(t)
            shapes.append(t.shape)
        if len(feeds) != len(tensors):
            unknown = next(n for n in feeds if n not in self._input_index)
            raise InputError(self._unknown_message(unknown))
        return tensors, tuple(shapes)

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
        elif local.outputs != outputs:
            binding.clear_binding_outputs()
            local.outputs = outputs
        return binding

    def _run(self, binding: Any) -> None:
        """Run a bound call, ordered against torch's current CUDA stream when on CUDA."""
        order = self._stream_order
        current = order.before() if order is not None else None
        try:
            self._c_session.run_with_iobinding(binding, self._run_options)
        except Exception as exc:
            # A failed run may leave the binding half-bound; the next call starts a fresh one.
            self._local.binding = None
            if _is_shape_mismatch(exc):
                raise _ShapeMismatchError() from exc
            raise self._run_error(exc) from exc
        finally:
            if order is not None:
                order.after(current)

    @staticmethod
    def _run_error(exc: BaseException | None) -> RunError:
        return RunError(f"ONNX Runtime failed during the run: {str(exc).strip()}")

    def _missing_message(self, feeds: Mapping[str, Any]) -> str:
        missing = [s for s in self._spec.inputs if s.name not in feeds]
        names = ", ".join(repr(s.name) for s in missing)
        needs = "; ".join(str(s) for s in missing)
        return f"missing input{'s' if len(missing) > 1 else ''} {names}; the model needs {needs}"

    def _unknown_message(self, name: str) -> str:
        known = ", ".join(repr(s.name) for s in self._spec.inputs) or "none"
        return f"input {name!r}: the model has no such input; its inputs are {known}"

    def _plan(self, signature: tuple[torch.Size, ...]) -> _SignaturePlan:
        outputs = self._program.plan([tuple(s) for s in signature], infer=self._inferencer)
        return self._remember(signature, outputs)

    def _remember(self, signature: tuple[torch.Size, ...], outputs: tuple[OutputPlan, ...]) -> _SignaturePlan:
        fast: list[tuple[str, int, tuple[int, ...], torch.dtype]] | None = []
        for spec, entry in zip(self._spec.outputs, outputs):
            if entry.shape is None or spec.dtype is None or 0 in entry.shape or fast is None:
                fast = None
                continue
            fast.append((spec.name, spec.elem_type, entry.shape, spec.dtype))
        plan = _SignaturePlan(
            outputs,
            None if fast is None else tuple(fast),
            any(e.rule in (Rule.DECLARED, Rule.INFERRED) for e in outputs),
        )
        if len(self._plans) >= _MAX_PLANS:
            self._plans.clear()
        self._plans[signature] = plan
        return plan

    def _select(self, output_names: Sequence[str]) -> tuple[int, ...]:
        if isinstance(output_names, str):
            raise InputError(
                f"output_names: expected a sequence of names, got the string {output_names!r}; pass [{output_names!r}]"
            )
        indices = []
        for name in output_names:
            index = self._output_index.get(name)
            if index is None:
                known = ", ".join(repr(s.name) for s in self._spec.outputs)
                raise InputError(f"output {name!r}: the model has no such output; its outputs are {known}")
            indices.append(index)
        if len(set(indices)) != len(indices):
            raise InputError(f"output_names: {list(output_names)} names an output twice")
        return tuple(indices)

    def _call_overrides(
        self, entries: list[OutputPlan], output_shapes: Mapping[str, Sequence[int]]
    ) -> list[OutputPlan]:
        wanted = {e.name for e in entries}
        for name in output_shapes:
            if name not in wanted:
                raise ShapeError(
                    f"output_shapes[{name!r}]: not among the outputs of this call "
                    f"({', '.join(repr(n) for n in wanted)})"
                )
        result = []
        for entry in entries:
            dims = output_shapes.get(entry.name)
            if dims is None:
                result.append(entry)
                continue
            shape = _as_shape(dims)
            if shape is None:
                raise ShapeError(
                    f"output_shapes[{entry.name!r}]: expected a sequence of non-negative ints, got {dims!r}"
                )
            result.append(OutputPlan(entry.name, Rule.OVERRIDE, shape))
        return result

    def _check_out(
        self,
        out: Mapping[str, torch.Tensor],
        indices: Sequence[int],
        entries: Sequence[OutputPlan],
        tensors: Sequence[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        by_name = {e.name: (i, e) for i, e in zip(indices, entries)}
        buffers: dict[str, torch.Tensor] = {}
        for name, value in out.items():
            if name not in by_name:
                if name in self._output_index:
                    raise InputError(
                        f"out {name!r}: not among output_names of this call; add it there or drop the buffer"
                    )
                known = ", ".join(repr(s.name) for s in self._spec.outputs)
                raise InputError(f"out {name!r}: the model has no such output; its outputs are {known}")
            index, entry = by_name[name]
            spec = self._spec.outputs[index]
            if spec.unsupported:
                raise ModelError(self._unsupported_output_message(spec))
            buffers[name] = _binding.check_out_buffer(name, spec, value, self._device, entry.shape)
        _binding.check_no_overlap(buffers.items(), ((s.name, t) for s, t in zip(self._spec.inputs, tensors)))
        return buffers

    def _execute(
        self,
        tensors: Sequence[torch.Tensor],
        indices: Sequence[int],
        entries: Sequence[OutputPlan],
        buffers: Mapping[str, torch.Tensor] | None,
        speculative: bool,
    ) -> dict[str, torch.Tensor]:
        binding = self._binding(tuple(indices))
        device = self._ort_device
        for (name, _, elem_type), tensor in zip(self._input_checks, tensors):
            binding.bind_input(name, device, elem_type, tensor.shape, tensor.data_ptr())

        results: dict[str, Any] = {}
        pending: list[tuple[int, int, torch.Tensor | None]] = []
        guessed = False
        for position, (index, entry) in enumerate(zip(indices, entries)):
            spec = self._spec.outputs[index]
            name = spec.name
            if spec.unsupported:
                raise ModelError(self._unsupported_output_message(spec))
            buffer = buffers.get(name) if buffers else None
            if buffer is None and entry.shape is not None:
                buffer = torch.empty(entry.shape, dtype=spec.dtype, device=self._device)
                guessed = guessed or entry.rule is Rule.DECLARED or entry.rule is Rule.INFERRED
            if buffer is not None and buffer.numel():
                binding.bind_output(name, device, spec.elem_type, buffer.shape, buffer.data_ptr())
                results[name] = buffer
                continue
            # ORT allocates: the shape is unknown ahead, or the tensor is empty (torch gives empty
            # tensors a null pointer, which ORT refuses to bind).
            if buffer is None and not self._dlpack_ok[index]:
                raise ShapeError(
                    f"output {name!r}: its shape cannot be resolved before the run "
                    f"({entry.reason or 'no rule applies'}), and ONNX Runtime cannot hand "
                    f"{spec.elem_type_name} tensors over through DLPack; pass "
                    f"output_shapes={{{name!r}: (...)}} or out={{{name!r}: buffer}}"
                )
            binding.bind_output(name, device)
            results[name] = None
            pending.append((position, index, buffer))

        try:
            self._run(binding)
        except _ShapeMismatchError as mismatch:
            if speculative and guessed:
                raise
            raise self._run_error(mismatch.__cause__) from mismatch.__cause__
        # `tensors` (and any copies made in _collect) stay referenced by the caller's frame until
        # here, so no input memory was released while ORT read it.

        if pending:
            values = binding.get_outputs()  # a view into the binding: convert before clearing it
            produced = [
                _binding.tensor_from_ortvalue(values[p], self._spec.outputs[i], self._device) for p, i, _ in pending
            ]
            del values
            # The binding holds a reference to what ORT allocated; drop it so the memory lives
            # exactly as long as the caller's tensors, not until this thread's next call.
            binding.clear_binding_outputs()
            self._local.outputs = None
            for (_, index, buffer), tensor in zip(pending, produced):
                spec = self._spec.outputs[index]
                if buffer is not None and tensor.shape != buffer.shape:
                    raise ShapeError(
                        f"output {spec.name!r}: the run produced shape {format_shape(tensor.shape)}, "
                        f"not the expected {format_shape(buffer.shape)}"
                    )
                results[spec.name] = tensor if buffer is None else buffer
        return results

    def _retry(
        self,
        tensors: Sequence[torch.Tensor],
        signature: tuple[torch.Size, ...],
        indices: Sequence[int],
        entries: Sequence[OutputPlan],
        buffers: Mapping[str, torch.Tensor] | None,
        cause: BaseException | None,
    ) -> dict[str, torch.Tensor]:
        """Rerun with the predicted (rule b/c) outputs left to ORT; demote the ones that were wrong."""
        loose = [
            OutputPlan(e.name, Rule.ORT, None, "predicted shape proved wrong")
            if e.rule in (Rule.DECLARED, Rule.INFERRED) and not (buffers and e.name in buffers)
            else e
            for e in entries
        ]
        try:
            results = self._execute(tensors, indices, loose, buffers, speculative=False)
        except RunError as exc:
            raise RunError(f"{exc} (first attempt: {str(cause).strip()})") from exc
        known = self._plans.get(signature)
        plan = list(known.outputs if known is not None else self._plan(signature).outputs)
        changed = False
        for index, entry in zip(indices, entries):
            if entry.rule not in (Rule.DECLARED, Rule.INFERRED):
                continue
            actual = tuple(results[entry.name].shape)
            if actual != entry.shape:
                assert entry.shape is not None
                reason = (
                    f"{'declared' if entry.rule is Rule.DECLARED else 'inferred'} shape "
                    f"{format_shape(entry.shape)} proved wrong at run time (ORT produced {format_shape(actual)})"
                )
                _log.info("output %r: %s; ORT allocates it for this input signature", entry.name, reason)
                plan[index] = OutputPlan(entry.name, Rule.ORT, None, reason)
                changed = True
        if changed:
            self._remember(signature, tuple(plan))
        return results

    @staticmethod
    def _unsupported_output_message(spec: TensorSpec) -> str:
        return (
            f"output {spec.name!r}: {spec.unsupported}; request the other outputs with run(feeds, output_names=[...])"
        )


@dataclass(frozen=True)
class _SignaturePlan:
    """What one input signature needs: each output's plan, and the lean path when it applies.

    Attributes:
        outputs: One plan per model output.
        fast: (name, elem type, shape, dtype) per output when ortbind allocates every output
            with a non-empty shape, else ``None``.
        guessed: Whether any output relies on a declared or inferred shape (worth a retry).
    """

    outputs: tuple[OutputPlan, ...]
    fast: tuple[tuple[str, int, tuple[int, ...], torch.dtype], ...] | None
    guessed: bool


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
        if size < 0:
            return None
        shape.append(size)
    return tuple(shape)


class _ShapeMismatchError(Exception):
    """Internal: ORT refused a buffer whose shape ortbind predicted; the run is retried."""
