"""The one engine: bind outputs, run, retry a refused prediction, collect, bump versions, order streams.

Every run of a session goes through :class:`Executor`: a plain call prepares a binding for one
run and executes it; a bound call prepares once and executes many times. Preparing binds each
output: a fresh ``torch.empty`` for a shape known ahead, the caller's buffer, the input of a shared
output, or nothing (ORT allocates; the result comes back through DLPack). Executing checks that
every held tensor is still where it was bound, refreshes copied inputs, runs under the session's
stream ordering (and, in a CUDA-graph session, its one-run-at-a-time lock), and, when ORT refuses a
predicted output's buffer, reruns once with ORT allocating it and teaches the plan cache.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any

import onnxruntime as ort
import torch

from . import _binding, _overlap
from ._binding import Binding, CudaStreamOrder, ThreadBindings
from ._handover import collect, dlpack_supported
from ._held import Held, check_held
from ._inputs import InputChecker
from ._metadata import ModelSpec
from ._ort import BindRefusedError, OrtCalls, OutputRefusedError, not_rerun, unretried
from ._outputs import allocators, check_fits, check_given, deliver, no_dlpack, unsupported_output
from ._plan import (
    ELEM_TYPE,
    EXPECTED,
    INDEX,
    NAME,
    PASSTHROUGH,
    PREDICTED,
    PROBLEM,
    REASON,
    SHAPE,
    SIZES,
    Plan,
    PlanCache,
    Signature,
    Slot,
    loosened,
)
from ._prepared import Prepared
from ._shapes import format_shape
from .errors import InputError

__all__ = ["Executor", "Prepared"]

_log = logging.getLogger("ortbind")

_BIND = OrtCalls("bind")
_RUN = OrtCalls("run")

_increment_version = torch._C._increment_version
"""What ``torch.autograd.graph.increment_version`` calls, without its Python wrapper (0.2 µs a run)."""


class Executor:
    """Runs one session's calls; shared by its plain calls and bound calls.

    Args:
        session: ORT's C session object (``InferenceSession._sess``).
        spec: The model's interface.
        device: Where outputs are allocated.
        inputs: The session's input checker (for re-binding inputs after a failed run).
        plans: The session's plan cache (to learn from runs).
        order: CUDA stream ordering, or ``None`` on CPU.
        serial: Run one call at a time (CUDA-graph sessions: ORT captures on one shared stream and
            supports graphs from one thread; and ORT-allocated outputs are copied out before the next
            run, since a graph replay may write into arena memory they were handed).
    """

    def __init__(
        self,
        session: Any,
        spec: ModelSpec,
        device: torch.device,
        inputs: InputChecker,
        plans: PlanCache,
        order: CudaStreamOrder | None,
        serial: bool,
    ) -> None:
        self.session = session
        self.spec = spec
        self.device = device
        self.inputs = inputs
        self.plans = plans
        self.order = order
        # Reentrant: a run of a prepared call holds it through the collection of ORT's outputs.
        self.lock = threading.RLock() if serial else None
        self.ort_device = _binding.make_ort_device(device)
        self.dlpack_ok = tuple(dlpack_supported(s) for s in spec.outputs)
        self.allocate = allocators(spec, device)
        self.bindings = ThreadBindings(session, len(inputs.specs))

    # ------------------------------------------------------------------ preparing

    def prepare(
        self,
        binding: Binding,
        tensors: list[torch.Tensor],
        slots: Sequence[Slot],
        buffers: Mapping[str, torch.Tensor] | None,
        shared: Mapping[str, int] | None = None,
        *,
        keep: Mapping[str, torch.Tensor] | None = None,
    ) -> Prepared:
        """Bind every output of a call (inputs are bound already).

        Args:
            binding: The binding.
            tensors: The checked inputs.
            slots: The outputs, in the order asked for.
            buffers: ``out=`` buffers by name, checked.
            shared: Output name -> input index, for outputs bound to an input's buffer.
            keep: Tensors a bound call allocated earlier, reused where an output's shape is unchanged.
        """
        prepared = Prepared(binding, tensors, slots, buffers, shared)
        results = prepared.results
        io = binding.io
        device = self.ort_device
        written: list[torch.Tensor] = []
        position = 0
        slot: Slot | None = None
        try:
            for slot in slots:
                name = slot[NAME]
                if slot[PROBLEM] is not None:
                    raise unsupported_output(self.spec.outputs[slot[INDEX]])
                buffer = buffers.get(name) if buffers else None
                if shared and name in shared:
                    buffer = tensors[shared[name]]
                if slot[PASSTHROUGH] is not None:
                    prepared.passthrough.append((slot, buffer))
                    results[name] = buffer
                    continue
                shape = slot[SHAPE]
                if buffer is None and shape is not None:
                    kept = keep.get(name) if keep else None
                    # Not where an input now is (a loop feeding an output back): ORT would read what it writes.
                    if kept is not None and kept.shape == shape:
                        start = kept.data_ptr()
                        if not _overlap.overlaps(kept, start, start + kept.nbytes, _overlap.spans(tensors)):
                            buffer = kept
                    if buffer is None:
                        buffer = self.allocate[slot[INDEX]](*slot[SIZES])
                if buffer is not None and buffer.numel() and (shape is not None or not slot[PREDICTED]):
                    if keep is None:
                        with _BIND:
                            io.bind_output(name, device, slot[ELEM_TYPE], tuple(buffer.shape), buffer.data_ptr())
                    else:  # a bound call's binding: skip an output it holds already
                        where = (buffer.data_ptr(), buffer.shape)
                        if binding.bound_outputs.get(name) != where:
                            binding.bound_outputs.pop(name, None)
                            with _BIND:
                                io.bind_output(name, device, slot[ELEM_TYPE], tuple(where[1]), where[0])
                            binding.bound_outputs[name] = where
                    results[name] = buffer
                    written.append(buffer)
                    position += 1
                    continue
                # ORT allocates: the shape is unknown ahead, the tensor is empty (torch gives
                # empty tensors a null pointer, which ORT refuses to bind), or a prediction is
                # being checked (a caller's buffer then receives a copy of what ORT produced).
                if buffer is None and slot[EXPECTED] is None and not self.dlpack_ok[slot[INDEX]]:
                    raise no_dlpack(self.spec.outputs[slot[INDEX]], slot[REASON])
                binding.bound_outputs.pop(name, None)
                with _BIND:
                    io.bind_output(name, device)
                results[name] = buffer
                if buffer is not None:
                    written.append(buffer)
                prepared.pending.append((position, slot, buffer))
                position += 1
        except BindRefusedError as exc:
            assert slot is not None
            raise exc.named("output", slot[NAME]) from exc.__cause__
        prepared.written = tuple(written)
        prepared.bound = position
        prepared.common = bool(position) and not prepared.pending and not prepared.passthrough
        return prepared

    # ------------------------------------------------------------------ executing

    def fresh(
        self,
        binding: Binding,
        tensors: list[torch.Tensor],
        signature: Signature,
        plan: Plan,
        options: ort.RunOptions,
        asynchronous: bool,
    ) -> dict[str, torch.Tensor]:
        """The common plain call: every output's shape is known, so each is a fresh tensor bound by pointer.

        :meth:`prepare` and :meth:`execute` with nothing else to do; a refused prediction goes on
        in :meth:`execute`'s retry.
        """
        io, device, allocate = binding.io, self.ort_device, self.allocate
        results: dict[str, torch.Tensor] = {}
        for slot in plan.slots:
            tensor = allocate[slot[INDEX]](*slot[SIZES])
            try:
                io.bind_output(slot[NAME], device, slot[ELEM_TYPE], slot[SHAPE], tensor.data_ptr())
            except Exception as exc:
                mapped = _BIND.mapped(exc)
                raise (mapped.named("output", slot[NAME]) if isinstance(mapped, BindRefusedError) else mapped) from exc
            results[slot[NAME]] = tensor
        try:
            self._run(io, tensors, (), options, asynchronous)
        except OutputRefusedError as refusal:
            prepared = Prepared(binding, tensors, plan.slots, None, None)
            prepared.bound = len(plan.slots)
            return self._execute(
                prepared, signature, plan, options, asynchronous, transient=True, retry=True, refused=refusal
            )[0]
        return results

    def execute(
        self,
        prepared: Prepared,
        signature: Signature,
        plan: Plan,
        options: ort.RunOptions,
        asynchronous: bool,
        transient: bool,
        retry: bool = True,
        held: Sequence[Held] = (),
        refresh: Sequence[tuple[int, torch.Tensor, torch.Tensor]] = (),
        refused: OutputRefusedError | None = None,
    ) -> tuple[dict[str, torch.Tensor], Plan]:
        """Run a prepared call; the outputs by name and the plan as the run left it.

        Args:
            prepared: The binding; a retry may re-bind it in place.
            signature: The input signature.
            plan: Its plan.
            options: RunOptions for this run.
            asynchronous: Whether the run returns before ORT's stream is done.
            transient: A plain call's binding: release ORT's outputs from it after collecting.
            retry: Rerun once with ORT allocating a predicted output it refused (off for CUDA-graph
                bound calls, whose outputs must stay at fixed addresses).
            held: Tensors a bound call holds, checked before the run (see :func:`~._held.hold`).
            refresh: ``(input index, caller's tensor, bound copy)`` for a bound call's copied
                inputs, refreshed before the run.
            refused: A refusal that already happened for this call (:meth:`fresh`): retry at once.

        Raises:
            InputError, OutputError: A held tensor moved or lost its memory since it was bound.
            InputError: A copied input's tensor changed shape.
            RunError: ONNX Runtime failed.
            ShapeError: A checked prediction proved wrong for a caller's ``out=`` buffer.
        """
        if held:
            check_held(held)
        for index, given, copy in refresh:
            # The caller's tensor is read again: checked again (dtype, device, storage), as a call would.
            spec = self.inputs.specs[index]
            caller = _binding.check_tensor("input", spec.name, spec, given, self.inputs.devices[index])
            if caller.shape != copy.shape:
                name = spec.name
                raise InputError(
                    f"input {name!r}: its shape changed from {format_shape(copy.shape)} to "
                    f"{format_shape(caller.shape)} since it was bound; rebind() it",
                    kind="input",
                    name=name,
                )
            copy.copy_(caller)
        if prepared.common and refused is None:
            # The common run: every output bound by pointer, nothing to collect.
            try:
                self._run(prepared.binding.io, prepared.tensors, prepared.written, options, asynchronous)
            except OutputRefusedError as refusal:
                refused = refusal
            except BaseException:
                _written(prepared, transient)  # ORT may have written some before it failed
                raise
            else:
                if transient:
                    if prepared.buffers or prepared.shared:
                        _increment_version(prepared.written)
                    return prepared.results, plan  # type: ignore[return-value]
                _increment_version(prepared.written)
                return dict(prepared.results), plan  # type: ignore[arg-type]
        return self._execute(
            prepared, signature, plan, options, asynchronous, transient=transient, retry=retry, refused=refused
        )

    def _execute(
        self,
        prepared: Prepared,
        signature: Signature,
        plan: Plan,
        options: ort.RunOptions,
        asynchronous: bool,
        *,
        transient: bool,
        retry: bool,
        refused: OutputRefusedError | None,
    ) -> tuple[dict[str, torch.Tensor], Plan]:
        """:meth:`execute` beyond the common run: outputs to collect or pass through, refusals to retry."""
        ran = refused is not None
        try:
            return self._retried(prepared, signature, plan, options, asynchronous, transient, retry, refused)
        except BaseException:
            if ran or prepared.runs:
                _written(prepared, transient)  # a run wrote the caller's buffers before this failed
            raise

    def _retried(
        self,
        prepared: Prepared,
        signature: Signature,
        plan: Plan,
        options: ort.RunOptions,
        asynchronous: bool,
        transient: bool,
        retry: bool,
        refused: OutputRefusedError | None,
    ) -> tuple[dict[str, torch.Tensor], Plan]:
        """The body of :meth:`_execute`, which bumps the written buffers' versions if this raises."""
        first: OutputRefusedError | None = None
        while True:
            try:
                if refused is not None:
                    pending_refusal, refused = refused, None
                    raise pending_refusal
                if prepared.runs and prepared.pending:
                    io, device = prepared.binding.io, self.ort_device
                    with _BIND:
                        for _, slot, _ in prepared.pending:
                            io.bind_output(slot[NAME], device)  # ORT would write into its last allocation
                prepared.runs += 1  # counted as it starts: a run that fails may have written buffers
                produced = self._run_prepared(prepared, options, asynchronous, transient)
            except OutputRefusedError as refusal:
                loosen = [s for s in prepared.slots if s[SHAPE] is not None and s[PREDICTED]]
                # A shape the caller fixed (output_shapes=, an out= buffer for it): a rerun cannot help.
                given = any(s[NAME] == refusal.refused and not s[PREDICTED] for s in prepared.slots)
                if first is not None or not loosen or not retry or given:
                    shared_index = (prepared.shared or {}).get(refusal.refused or "")
                    shared_with = None if shared_index is None else self.inputs.specs[shared_index].name
                    given_in = "out" if prepared.buffers and refusal.refused in prepared.buffers else "output_shapes"
                    raise unretried(refusal, first, shared_with, given_in if given else None) from refusal.__cause__
                if prepared.shared:
                    # The run wrote the shared inputs before the refusing node (a rerun would read that): not
                    # rerun; the refused outputs are ORT's from now on, for the next call or run.
                    names = sorted({s[NAME] for s in loosen} if refusal.refused is None else {refusal.refused})
                    loosen = [s for s in loosen if s[NAME] in names]
                    plan = self.plans.unpredicted(
                        signature, plan, [s[INDEX] for s in loosen], "ONNX Runtime refused its predicted buffer"
                    )
                    self._reprepare(prepared, [loosened(s) if s in loosen else s for s in prepared.slots], transient)
                    raise not_rerun(
                        self._shared_names(prepared),
                        names,
                        f"ONNX Runtime refused its predicted buffer ({refusal.text})",
                        "let ONNX Runtime allocate it",
                    ) from refusal.__cause__
                first = refusal
                _log.debug("ORT refused a predicted output buffer (%s); rerunning with ORT allocating it", refusal.text)
                self._reprepare(prepared, [loosened(s) if s in loosen else s for s in prepared.slots], transient)
                continue
            if not produced and first is None:
                results: dict[str, Any] = prepared.results if transient else dict(prepared.results)
                break
            got = list(zip(prepared.pending, produced))
            observed = {s[INDEX]: shape for (_, s, _), (shape, _) in got if s[PREDICTED] and s[EXPECTED] is not None}
            # Learned before anything is delivered: a caller's buffer that proves wrong is an error, and
            # later calls must know the shape it names.
            if first is not None:
                plan = self.plans.learn(signature, plan, observed, refused=first.refused, refusal=True)
            elif observed and (not plan.verified or any(plan.entries[i][1] != s for i, s in observed.items())):
                plan = self.plans.learn(signature, plan, observed)
            shape_only: list[int] = []
            results = dict(prepared.results)
            for (_, slot, buffer), (shape, value) in got:
                if value is None:  # float8: ORT can hand over its shape only
                    if buffer is not None:
                        check_fits(slot, buffer, shape)  # before a run binds it: ORT would refuse it then
                    shape_only.append(slot[INDEX])
                    continue
                results[slot[NAME]] = deliver(slot, buffer, shape, value)
            if shape_only:
                # Only the shapes came back; the plan now knows them: bind buffers and run again.
                verified = {s[INDEX]: s for s in plan.slots}
                slots = [verified[s[INDEX]] if s[INDEX] in shape_only else s for s in prepared.slots]
                self._reprepare(prepared, slots, transient)
                if prepared.shared:  # the run wrote the shared inputs: a rerun would read that
                    names = [self.spec.outputs[i].name for i in shape_only]
                    raise not_rerun(
                        self._shared_names(prepared),
                        names,
                        "its shape was not known before this run, and ONNX Runtime cannot hand over a float8 "
                        "output it allocated",
                        "bind it with the shape this run found",
                    )
                continue
            break
        for slot, target in prepared.passthrough:
            source = prepared.tensors[slot[PASSTHROUGH]]  # type: ignore[index]
            check_given(slot, tuple(source.shape))
            results[slot[NAME]] = source.clone() if target is None else target.copy_(source)
        _written(prepared, transient)
        return results, plan

    def _shared_names(self, prepared: Prepared) -> list[str]:
        return sorted(self.inputs.specs[i].name for i in (prepared.shared or {}).values())

    def _reprepare(self, prepared: Prepared, slots: list[Slot], transient: bool) -> None:
        """Re-bind ``prepared`` in place on a fresh binding with other slots (after a refusal); inputs
        as the old binding holds them (``BoundCall.resize`` binds shapes no tensor has). A bound call
        (not ``transient``) keeps the output tensors whose shapes stay: a caller may hold them."""
        old = prepared.binding
        binding = self.bindings.new()
        for index, (address, shape) in enumerate(zip(old.addresses, old.shapes)):
            assert shape is not None and address >= 0, "a binding that ran has every input bound"
            self.inputs.bind_at(binding, index, address, shape)
        keep = None if transient else {n: t for n, t in prepared.results.items() if t is not None}
        fresh = self.prepare(binding, prepared.tensors, slots, prepared.buffers, prepared.shared, keep=keep)
        for field in ("binding", "slots", "results", "pending", "passthrough", "written", "bound", "common"):
            setattr(prepared, field, getattr(fresh, field))
        prepared.runs = 0

    def _run_prepared(
        self, prepared: Prepared, options: ort.RunOptions, asynchronous: bool, transient: bool
    ) -> list[tuple[tuple[int, ...], torch.Tensor | None]]:
        """One run of a prepared call; then the outputs ORT allocated."""
        if not prepared.bound:
            return []  # only pass-through outputs: nothing for ORT to compute (and it refuses to run)
        lock = self.lock
        if lock is not None:
            lock.acquire()
        try:
            self._run(prepared.binding.io, prepared.tensors, prepared.written, options, asynchronous)
            if not prepared.pending:
                return []
            stream = None if self.order is None else self.order.stream
            return collect(prepared, transient, self.dlpack_ok, self.spec, self.device, self.lock is not None, stream)
        finally:
            if lock is not None:
                lock.release()

    def _run(
        self,
        io: Any,
        tensors: Sequence[torch.Tensor],
        written: Sequence[torch.Tensor],
        options: ort.RunOptions,
        asynchronous: bool,
    ) -> None:
        """ORT's run, ordered against torch's stream (CUDA); ORT's errors mapped."""
        order = self.order
        if order is None:
            try:
                self.session.run_with_iobinding(io, options)
            except Exception as exc:
                raise _RUN.mapped(exc) from exc
            return
        lock = self.lock
        if lock is not None:
            lock.acquire()
        try:
            state = order.before(chain(tensors, written), asynchronous)
            try:
                self.session.run_with_iobinding(io, options)
            except Exception as exc:
                raise _RUN.mapped(exc) from exc
            finally:
                order.after(state)
        finally:
            if lock is not None:
                lock.release()


def _written(prepared: Prepared, transient: bool) -> None:
    """Bump the autograd versions of what a run wrote that the caller holds (``out=`` buffers, shared
    inputs, a bound call's outputs), also when the call fails after the run: a graph that saved one
    must raise in backward, not use what ORT wrote over it."""
    if prepared.written and (prepared.buffers or prepared.shared or not transient):
        _increment_version(prepared.written)
