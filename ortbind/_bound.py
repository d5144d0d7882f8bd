"""BoundCall: a call checked and bound once, then only run (fixed shapes; the floor of per-call cost).

Loops with fixed shapes (a denoising loop, a decoder step) pay for checks, binds and output
allocation once instead of on every call, and CUDA graphs, which replay fixed addresses, become
possible. :meth:`ortbind.TorchSession.bind` makes one.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import onnxruntime as ort
import torch

from . import _binding
from ._ort import from_ort, is_output_refusal, translate
from ._runoptions import default_run_options as _default_run_options
from ._shapes import format_shape
from .errors import ConfigError, InputError, ModelError, OutputError, RunError, ShapeError

if TYPE_CHECKING:
    from ._session import TorchSession, _Slot

__all__ = ["BoundCall"]


class BoundCall:
    """A call of a :class:`~ortbind.TorchSession` bound once and run many times.

    Made by :meth:`TorchSession.bind`, which checks everything a call checks. Every input and
    output stays bound at a fixed address:

    - :meth:`run` only runs, and returns **the same output tensors every time**, overwritten by
      each run: clone what must survive the next one.
    - Inputs are updated in place (``bound.inputs["sample"].copy_(new)``), or re-bound with
      :meth:`rebind`, which checks like a call and re-plans the outputs if a shape changed.
    - Outputs whose shape cannot be known ahead (rule d: data-dependent shapes) are allocated by
      ORT on every run and come back as new tensors each time; in a ``cuda_graph`` session such
      an output is an error at :meth:`TorchSession.bind`.
    - The bound call keeps every bound tensor alive (the caller's inputs and ``out=`` buffers
      included) until it is re-bound or dropped.
    - It is not for concurrent use: a second thread calling :meth:`run` while one runs gets a
      :class:`~ortbind.RunError`. Bind one per thread.
    - In a ``cuda_graph`` session it owns one CUDA graph (:attr:`graph_id`), captured by ORT
      on its first runs and replayed after. Re-binding a different buffer after capture is
      refused: the graph replays the addresses it captured. Copy new values into the bound
      tensors instead.
    - On CUDA, the first run of a signature whose output shapes were predicted is a checked
      (verifying) run: ORT allocates those outputs and their values are copied into the bound
      buffers once; if a prediction proves wrong, the bound outputs are re-planned then, and
      :attr:`outputs` holds the new tensors from that run on.

    Attributes:
        graph_id: The ``gpu_graph_id`` of this call's CUDA graph, or ``None`` outside
            ``cuda_graph`` sessions.
    """

    def __init__(
        self,
        session: TorchSession,
        feeds: Mapping[str, torch.Tensor],
        output_names: Sequence[str] | None,
        out: Mapping[str, torch.Tensor] | None,
    ) -> None:
        self._session = session
        self._lock = threading.Lock()
        self.graph_id: int | None = next(session._graph_ids) if session._cuda_graph else None
        self._runs = 0
        self._output_names = None if output_names is None else tuple(output_names)
        self._graph_options = (
            None
            if self.graph_id is None
            else _default_run_options(synchronize=session._synchronize, cuda_graph=True, graph_id=self.graph_id)
        )
        self._bind(dict(feeds), dict(out or {}))

    # ------------------------------------------------------------------ binding

    def _bind(self, feeds: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> None:
        s = self._session
        tensors, signature = s._collect(feeds)
        plan = s._lookup(signature)
        indices = s._all_outputs if self._output_names is None else s._select(self._output_names)
        slots = [plan.slots[i] for i in indices]
        buffers = s._check_out(out, slots, tensors) if out else {}
        outputs: dict[str, torch.Tensor | None] = {}
        dynamic: list[tuple[int, _Slot]] = []  # (position among bound outputs, slot): ORT allocates per run
        passthrough: list[_Slot] = []
        binding = _binding.new_binding(s._c_session)
        s._bind_inputs(binding, tensors)
        try:
            position = 0
            for slot in slots:
                if slot.problem is not None:
                    raise ModelError(
                        s._unsupported_output_message(s._spec.outputs[slot.index]), kind="output", name=slot.name
                    )
                buffer = buffers.get(slot.name)
                if slot.passthrough is not None:
                    self._refuse_under_graph(slot.name, "it passes an input through, which ortbind copies per run")
                    outputs[slot.name] = buffer if buffer is not None else torch.empty_like(tensors[slot.passthrough])
                    passthrough.append(slot)
                    continue
                if buffer is None and slot.expected is not None and 0 not in slot.expected:
                    buffer = torch.empty(slot.expected, dtype=slot.dtype, device=s._device)
                if buffer is not None and buffer.numel():
                    binding.bind_output(slot.name, s._ort_device, slot.elem_type, buffer.shape, buffer.data_ptr())
                    outputs[slot.name] = buffer
                else:
                    if buffer is None:
                        reason = plan.outputs[slot.index].reason or "no rule applies"
                        self._refuse_under_graph(slot.name, f"its shape cannot be known before the run ({reason})")
                        if not s._dlpack_ok[slot.index]:
                            raise ShapeError(
                                f"output {slot.name!r}: its shape cannot be known before the run ({reason}), and "
                                f"ONNX Runtime cannot hand {s._spec.outputs[slot.index].elem_type_name} tensors "
                                f"over through DLPack; pass out={{{slot.name!r}: buffer}} to bind()",
                                kind="output",
                                name=slot.name,
                            )
                    binding.bind_output(slot.name, s._ort_device)
                    outputs[slot.name] = buffer  # None, or an empty caller buffer
                    dynamic.append((position, slot))
                position += 1
        except Exception as exc:
            if not from_ort(exc) or isinstance(exc, (ShapeError, ModelError, ConfigError)):
                raise
            raise translate(exc, "bind", subject="bound call", name=None) from exc
        self._feeds = feeds
        self._out = out
        self._tensors = tensors  # what ORT reads: the caller's tensors, or checked copies
        self._signature = signature
        self._slots = slots
        self._buffers = buffers
        self._outputs = outputs
        self._dynamic = dynamic
        self._passthrough = passthrough
        self._binding = binding
        # The address the binding holds for each bound tensor. An in-place resize_ beyond its
        # storage, set_ or .data= after bind() moves the memory and would leave ORT a stale, maybe
        # freed, address, so every run compares first. (A shape changed in place at the same
        # address stays within the storage: ORT then reads and writes the bound shape.)
        self._held = tuple(
            (t, t.data_ptr(), kind, name)
            for kind, pairs in (("input", zip((c[0] for c in s._input_checks), tensors)), ("out", outputs.items()))
            for name, t in pairs
            if t is not None and t.numel() and not (kind == "out" and any(p.name == name for p in passthrough))
        )
        # On CUDA, the first run of a signature whose predictions are unverified is a checked run.
        self._verify = not plan.verified and any(slot.predicted for slot in slots)

    def _refuse_under_graph(self, name: str, why: str) -> None:
        if self.graph_id is not None:
            raise ShapeError(
                f"output {name!r}: a CUDA-graph bound call needs every output at a fixed address, but {why}; "
                f"bind it with out={{{name!r}: buffer}}, leave it out of output_names, or use a session "
                f"without cuda_graph",
                kind="output",
                name=name,
            )

    def rebind(self, feeds: Mapping[str, torch.Tensor] | None = None, /, **more: torch.Tensor) -> None:
        """Bind other input tensors, checked like a call; a new shape re-plans the outputs.

        Inputs not named keep their tensors. Outputs the bound call allocated are re-allocated
        when the input shapes change (the old tensors are no longer written); ``out=`` buffers given
        to :meth:`TorchSession.bind` stay bound and must still fit.

        Raises:
            ConfigError: This call's CUDA graph was captured and an address would change.
            InputError, DTypeError, ShapeError, DeviceError: As for a call.
        """
        changes = {**(feeds or {}), **more}
        unknown = [n for n in changes if n not in self._session._input_index]
        if unknown:
            raise InputError(self._session._unknown_message(unknown[0]), kind="input", name=unknown[0])
        if self.graph_id is not None and self._runs:
            moved = [
                name
                for name, tensor in changes.items()
                if not isinstance(tensor, torch.Tensor)
                or tensor.data_ptr() != self._feeds[name].data_ptr()
                or tensor.shape != self._feeds[name].shape
            ]
            if moved:
                raise ConfigError(
                    f"rebind: input {moved[0]!r} would move, but this bound call's CUDA graph was captured with "
                    f"the old addresses and shapes and replays them; copy the new values into the bound tensor "
                    f"(bound.inputs[{moved[0]!r}].copy_(value)) instead, or make a new bind()",
                    kind="input",
                    name=moved[0],
                )
        self._bind({**self._feeds, **changes}, self._out)

    # ------------------------------------------------------------------ running

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        """Input name -> the tensor bound for it (write new values into these in place)."""
        return dict(self._feeds)

    @property
    def outputs(self) -> dict[str, torch.Tensor | None]:
        """Output name -> the bound tensor; ``None`` for outputs ORT allocates on each run."""
        return dict(self._outputs)

    def run(
        self, *, run_options: ort.RunOptions | None = None, synchronize: bool | None = None
    ) -> dict[str, torch.Tensor]:
        """Run the bound call once; returns the bound output tensors, overwritten by this run.

        Args:
            run_options: ORT's ``RunOptions`` for this run, used as given (in a ``cuda_graph``
                session they must carry this call's ``gpu_graph_id``).
            synchronize: Overrides the session's ``synchronize`` for this run.

        Raises:
            RunError: ONNX Runtime failed, the run was terminated, or another thread is running
                this bound call right now.
        """
        if not self._lock.acquire(blocking=False):
            raise RunError(
                "bound call: already running in another thread; a BoundCall is not for concurrent use, "
                "bind one per thread",
                kind="run",
            )
        try:
            s = self._session
            if run_options is None and synchronize is None:
                options = (
                    self._graph_options if self._graph_options is not None and not self._verify else s._run_options
                )
            else:
                graph = -1 if self.graph_id is None or self._verify else self.graph_id
                options = s._options_for(run_options, synchronize, graph_id=graph)
            for tensor, address, kind, name in self._held:
                if tensor.data_ptr() != address:
                    raise (InputError if kind == "input" else OutputError)(
                        f"{kind} {name!r}: the tensor bound for it moved to other memory since bind() (an in-place "
                        f"resize_, set_ or .data=; now shape {format_shape(tensor.shape)}), so ORT would use a "
                        f"stale address; write new values with copy_(), or rebind()",
                        kind=kind,
                        name=name,
                    )
            if self._verify:
                return self._checked_run(options)
            binding = self._binding
            for _, slot in self._dynamic:
                binding.bind_output(slot.name, s._ort_device)  # ORT would reuse its last allocation
            order = s._stream_order
            state = order.before(self._tensors, s._asynchronous(options)) if order is not None else None
            try:
                s._c_session.run_with_iobinding(binding, options)
            except Exception as exc:
                if not from_ort(exc):
                    raise
                if self.graph_id is None and is_output_refusal(exc) and any(x.predicted for x in self._slots):
                    return self._checked_run(options)
                raise translate(exc, "run") from exc
            finally:
                if state is not None:
                    order.after(state)  # type: ignore[union-attr]
            self._runs += 1
            return self._finish()
        finally:
            self._lock.release()

    def _finish(self) -> dict[str, torch.Tensor]:
        results: dict[str, Any] = dict(self._outputs)
        if self._dynamic:
            values = self._binding.get_outputs()
            s = self._session
            for position, slot in self._dynamic:
                value = _binding.tensor_from_ortvalue(values[position], s._spec.outputs[slot.index], s._device)
                buffer = self._outputs[slot.name]
                if buffer is not None:  # an empty caller buffer
                    if value.shape != buffer.shape:
                        raise ShapeError(
                            f"out {slot.name!r}: the run produced shape {format_shape(value.shape)}, "
                            f"not the bound {format_shape(buffer.shape)}",
                            kind="out",
                            name=slot.name,
                        )
                    value = buffer
                results[slot.name] = value
            del values
        for slot in self._passthrough:
            assert slot.passthrough is not None
            results[slot.name].copy_(self._tensors[slot.passthrough])
        if self._buffers:
            torch.autograd.graph.increment_version(tuple(self._buffers.values()))
        return results

    def _checked_run(self, options: ort.RunOptions) -> dict[str, torch.Tensor]:
        """A run through the session's own path, which verifies predictions and learns; then re-bind.

        Used for the first run of an unverified signature (CUDA) and after ORT refused a predicted
        buffer. The session writes into the bound buffers where the shapes held; where one did
        not, the outputs are re-planned and this run's values land in the new buffers.
        """
        s = self._session
        fixed = {name: t for name, t in self._outputs.items() if t is not None and t.numel()}
        try:
            results = s.run(self._feeds, self._output_names, out=fixed, run_options=options)
        except ShapeError as exc:
            if exc.kind != "out" or exc.name in self._out:
                raise
            # A prediction proved wrong for a buffer the bound call allocated: the plan has
            # learned; let the session allocate this run's outputs, then re-bind from the new plan.
            results = s.run(self._feeds, self._output_names, out={n: t for n, t in fixed.items() if n in self._out})
        self._bind(self._feeds, self._out)
        self._runs += 1
        for name, value in results.items():
            bound = self._outputs.get(name)
            if bound is not None and bound is not value and bound.shape == value.shape:
                bound.copy_(value)
                results[name] = bound
        return results
