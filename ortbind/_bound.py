"""BoundCall: a call checked and bound once, then only run (fixed shapes; the floor of per-call cost).

Loops with fixed shapes (a denoising loop) pay for checks, binds and output allocation once
instead of on every call, and CUDA graphs, which replay fixed addresses, become possible. Loops
whose inputs change a little each step (a decoder: new token ids, a longer mask) re-bind just
those with :meth:`BoundCall.rebind`. :meth:`ortbind.TorchSession.bind` makes one; it runs through
the session's engine like every call, with the same checks.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import onnxruntime as ort
import torch

from . import _binding, _held, _overlap
from ._binding import dispatch_modes, function_mode_enabled, without_modes
from ._plan import INDEX, NAME, PASSTHROUGH, SHAPE, Slot
from ._prepared import BoundState, Uncopyable, busy
from .errors import ConfigError, InputError, RunError, ShapeError

if TYPE_CHECKING:
    from ._engine import Engine
    from ._held import Held
    from ._plan import Plan
    from ._prepared import Prepared

__all__ = ["BoundCall"]


class BoundCall(Uncopyable):
    """A call of a :class:`~ortbind.TorchSession` bound once and run many times.

    Made by :meth:`TorchSession.bind`, which checks everything a call checks. Every input and
    output stays bound at a fixed address:

    - :meth:`run` only runs, and returns **the same output tensors every time**, overwritten by
      each run (their autograd versions bumped, so a graph that saved one raises instead of
      computing with overwritten values): clone what must survive the next run.
    - Inputs are updated in place (``bound.inputs["sample"].copy_(new)``), or re-bound with
      :meth:`rebind`, which checks the inputs it is given like a call and re-plans the outputs
      for the new shapes, keeping every output whose shape did not change.
    - An input copied because of ``allow_copy`` is copied again from the caller's tensor before
      each run, so updating the caller's tensor in place is seen.
    - Outputs whose shape cannot be known ahead (rule d: data-dependent shapes) are allocated by
      ORT on every run and come back as new tensors each time; in a ``cuda_graph`` session such
      an output is an error at :meth:`TorchSession.bind`.
    - The bound call keeps every bound tensor, and its storage, alive until it is re-bound or
      dropped, and checks before each run that each is still where and as it was bound (an
      in-place ``resize_``, ``set_``, ``.data =``, ``t_()`` or a storage resized under it is an
      error, never a stale or freed address, or a stale shape, handed to ORT).
    - It is not for concurrent use: a second thread calling :meth:`run` or :meth:`rebind` while
      one runs gets a :class:`~ortbind.RunError`. Bind one per thread.
    - In a ``cuda_graph`` session it owns one CUDA graph (:attr:`graph_id`), captured by ORT
      on its first runs and replayed after. Re-binding a different buffer after capture is
      refused: the graph replays the addresses it captured. Copy new values into the bound
      tensors instead. Inputs a CUDA session keeps in host memory are refused there (a replay
      reuses the values read when the graph was captured).

    Attributes:
        graph_id: The ``gpu_graph_id`` of this call's CUDA graph, or ``None`` outside
            ``cuda_graph`` sessions.
    """

    def __init__(
        self,
        engine: Engine,
        feeds: Mapping[str, torch.Tensor],
        output_names: Sequence[str] | None,
        out: Mapping[str, torch.Tensor] | None,
        share: Mapping[str, str] | None,
    ) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self.graph_id: int | None = engine.next_graph_id() if engine.cuda_graph else None
        self._graph = None if self.graph_id is None else engine.policy.graph_options(self.graph_id)
        # What a run given no options uses (None in a cuda_graph session: its own graph's options).
        self._defaults = None if self._graph is not None else (engine.policy.default, engine.policy.asynchronous)
        self._indices = engine.outputs.all if output_names is None else engine.outputs.select(output_names)
        given_out, _, given_share = engine.outputs.snapshot(out, None, share)
        self._out: dict[str, torch.Tensor] = given_out or {}
        self._share: dict[str, str] = given_share or {}
        self._runs = 0
        self._broken: str | None = None
        given = engine.inputs.named(feeds, "feeds")
        binding = engine.executor.bindings.new()
        tensors, signature, _ = engine.inputs.check(given, binding)
        self._state = self._prepare(given, tensors, signature, binding, keep={})

    # ------------------------------------------------------------------ binding

    def _plan(
        self, tensors: list[torch.Tensor], signature: tuple[torch.Size, ...], feeds: Mapping[str, torch.Tensor]
    ) -> tuple[Plan, list[Any], dict[str, torch.Tensor] | None, dict[str, int] | None]:
        """Plan and check the outputs for these inputs (bound as ``tensors``, given as ``feeds``); binds nothing."""
        engine = self._engine
        plan = engine.plans.plan(signature)
        if not plan.verified and any(plan.unchecked(i) for i in self._indices):
            plan = engine.verify(dict(zip(engine.inputs.names, tensors)), self._indices, signature, self._out or None)
        given = [feeds[name] for name in engine.inputs.names]
        slots, buffers, shared = engine.outputs_for(
            plan, self._indices, tensors, given, self._out or None, None, self._share or None
        )
        if self.graph_id is not None:
            self._check_graph(slots, plan)
        return plan, slots, buffers, shared

    def _prepare(
        self,
        feeds: dict[str, torch.Tensor],
        tensors: list[torch.Tensor],
        signature: tuple[torch.Size, ...],
        binding: _binding.Binding,
        keep: Mapping[str, torch.Tensor],
    ) -> BoundState:
        plan, slots, buffers, shared = self._plan(tensors, signature, feeds)
        prepared = self._engine.executor.prepare(binding, tensors, slots, buffers, shared, keep=keep)
        return self._state_for(feeds, signature, plan, prepared)

    def _state_for(
        self, feeds: dict[str, torch.Tensor], signature: tuple[torch.Size, ...], plan: Plan, prepared: Prepared
    ) -> BoundState:
        names = self._engine.inputs.names
        held: list[Held] = []
        held_at: dict[int, int] = {}
        refresh: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        subclassed: list[tuple[str, torch.Tensor, int, torch.Size, torch.dtype]] = []
        for index, (name, tensor) in enumerate(zip(names, prepared.tensors)):
            caller = feeds[name]
            if tensor is not caller:
                given = _binding.plain(caller)
                if given.data_ptr() != tensor.data_ptr():  # a copy (allow_copy): refreshed per run, from the
                    refresh.append((index, caller, tensor))  # caller's tensor as it is then (it may be re-pointed)
                    continue
                subclassed.append((name, caller, tensor.data_ptr(), tensor.shape, tensor.dtype))
            if tensor.numel():
                held_at[index] = len(held)
            # An empty one too: grown in place (resize_), it would move, and the run would not see it.
            held.append(_held.hold("input", name, tensor))
        shared = prepared.shared or {}
        for name, output in prepared.results.items():
            if output is not None and output.numel() and name not in shared:
                held.append(_held.hold("out", name, output))
        reads = None
        if not (prepared.pending or prepared.passthrough or refresh or subclassed):
            outputs = [slot[INDEX] for slot in prepared.slots if slot[NAME] not in shared]
            reads = self._engine.plans.reads(plan, outputs)
            if reads is not None:
                for index in shared.values():
                    del reads[index]  # a shared buffer's output must follow it: the general path
        state = BoundState(feeds, signature, plan, prepared, held, held_at, tuple(refresh), tuple(subclassed), reads)
        state.written_at = _overlap.spans(prepared.written) if reads is not None else ()
        return state

    def _check_graph(self, slots: Sequence[Slot], plan: Plan) -> None:
        engine = self._engine
        for index in sorted(engine.host_inputs):
            name = engine.inputs.names[index]
            raise InputError(
                f"input {name!r}: the CUDA session keeps it in host memory, and a CUDA graph reads such an input "
                f"only when it is captured (replays reuse that value, so a later copy_() into it would be ignored "
                f"silently); run this model in a session without cuda_graph",
                kind="input",
                name=name,
            )
        for slot in slots:
            why = None
            if slot[PASSTHROUGH] is not None:
                why = "it passes an input through, which ortbind copies per run"
            elif slot[SHAPE] is None and slot[NAME] not in self._out and slot[NAME] not in self._share:
                rule_reason = plan.entries[slot[INDEX]][2] or "no rule applies"
                why = f"its shape cannot be known before the run ({rule_reason})"
            if why is not None:
                raise ShapeError(
                    f"output {slot[NAME]!r}: a CUDA-graph bound call needs every output at a fixed address, but {why}; "
                    f"bind it with out={{{slot[NAME]!r}: buffer}}, leave it out of output_names, or use a session "
                    f"without cuda_graph",
                    kind="output",
                    name=slot[NAME],
                )

    def rebind(self, feeds: Mapping[str, torch.Tensor] | None = None, /, **more: torch.Tensor) -> None:
        """Bind other tensors for some inputs, checked like a call; the outputs follow the new shapes.

        Inputs not named keep their tensors (and are not checked or bound again). Outputs the
        bound call allocated keep their tensors while their shape is unchanged, and are
        re-allocated when it changes (the old tensors are then no longer written); ``out=``
        buffers given to :meth:`TorchSession.bind` stay bound and must still fit; shared outputs
        follow their inputs. Cheap enough for every step of a decoder loop.

        Raises:
            ConfigError: This call's CUDA graph was captured and an address or shape would change.
            RunError: Another thread is running this bound call.
            InputError, DTypeError, ShapeError, DeviceError: As for a call.
        """
        if function_mode_enabled() or dispatch_modes():
            with without_modes():
                return self.rebind(feeds, **more)
        engine = self._engine
        # Read once: the names, the tensors and the feeds kept must come from one pass over the mapping.
        changes: dict[str, Any] = more if feeds is None else engine.inputs.named(feeds, "rebind")
        if feeds is not None and more:
            changes.update(more)
        if not self._lock.acquire(blocking=False):
            raise busy("rebind")
        try:
            self._rebind(changes)
        finally:
            self._lock.release()

    def resize(self, **shapes: Sequence[int]) -> None:
        """Bind inputs to the first elements of the memory they are bound at, with new shapes.

        For a buffer allocated once at its largest and bound growing: a decoder's attention mask
        of one row, ``bound.resize(attention_mask=(1, width))`` each step, with no tensor made and
        nothing copied (a view costs a few microseconds on a CPU; this binds the new shape). The
        new extent must lie within the bound tensor's storage, from its bound address; contiguous,
        row-major, as ``buffer.view(-1)[:numel].view(shape)`` would be. Checked like
        :meth:`rebind` (declared rank and fixed dims; the outputs re-planned if their shapes
        follow). :attr:`inputs` gives the views.

        Raises:
            ShapeError: A shape that is not a sequence of sizes, breaks the declared rank or fixed
                dims, or reaches past the storage.
            InputError: An unknown input.
            RunError: Another thread is running this bound call.
        """
        if function_mode_enabled() or dispatch_modes():
            with without_modes():
                return self.resize(**shapes)
        if not self._lock.acquire(blocking=False):
            raise busy("resize")
        try:
            state = self._state
            for index, _, _ in state.refresh:
                name = self._engine.inputs.names[index]
                if name in shapes:
                    raise InputError(
                        f"resize {name!r}: it is bound as a copy of the caller's tensor (allow_copy), which a resize "
                        f"would leave behind; rebind() it with a tensor of the new shape",
                        kind="input",
                        name=name,
                    )
            wanted = {}
            for name, dims in shapes.items():  # read once, checked: no caller's code runs from here on
                self._engine.inputs.require(name)
                wanted[name] = _overlap.resize_shape(name, dims)
            if self.graph_id is None and self._resize_in_place(state, wanted):
                return
            self._rebind({name: self._view(state, name, shape) for name, shape in wanted.items()})
        finally:
            self._lock.release()

    def _view(self, state: BoundState, name: str, shape: torch.Size) -> torch.Tensor:
        """The bound input ``name``'s memory with ``shape`` (a view, checked against its storage)."""
        tensor = state.prepared.tensors[self._engine.inputs.index[name]]
        _overlap.fits_storage(name, tensor, shape)
        strides = [1] * len(shape)
        for axis in range(len(shape) - 2, -1, -1):
            strides[axis] = strides[axis + 1] * shape[axis + 1]
        return torch.as_strided(tensor, shape, strides, tensor.storage_offset())

    def _resize_in_place(self, state: BoundState, shapes: Mapping[str, torch.Size]) -> bool:
        """Bind the new shapes at the same addresses when no output's shape follows them; whether it did
        (not after a rebind that failed halfway: only the general path binds everything again)."""
        if state.reads is None or self._broken is not None:
            return False
        inputs = self._engine.inputs
        signature = list(state.signature)
        changes = []
        for name, shape in shapes.items():
            index = inputs.index[name]
            if not self._keeps_outputs(state, index, shape, signature[index]):
                return False
            tensor = state.prepared.tensors[index]
            end = _overlap.fits_storage(name, tensor, shape)
            address = tensor.data_ptr()
            if end == address:
                return False  # empty: the general path binds it as ORT takes empty tensors
            if _overlap.overlaps(tensor, address, end, state.written_at):
                return False  # grown into an output's memory: the general path says why not
            signature[index] = shape
            changes.append((index, shape, address, _held.hold("input", name, tensor, end)))
        self._broken = "its last resize() failed halfway"
        binding = state.prepared.binding
        for index, shape, address, record in changes:
            inputs.bind_at(binding, index, address, shape)
            state.held[state.held_at[index]] = record
            state.resized[index] = shape
        state.signature = tuple(signature)
        self._broken = None
        return True

    def _rebind(self, changes: Mapping[str, Any]) -> None:
        """The body of :meth:`rebind`, under its lock."""
        engine = self._engine
        state = self._state
        indices = [engine.inputs.require(name) for name in changes]
        values = list(changes.values())
        given, given_shapes = engine.inputs.accept(indices, values)
        if self.graph_id is None and self._step(state, changes, indices, values, given, given_shapes):
            return
        # The state is made anew below from the tensors themselves: one that moved since bind() must
        # be an error first, or its new address would be recorded while ORT keeps the old one.
        _held.check_held([r for r in state.held if r[-2] != "input" or r[-1] not in changes])
        tensors, feeds = self._as_bound(state)
        shapes = list(state.signature)
        for index, tensor, shape in zip(indices, given, given_shapes):
            tensors[index], shapes[index] = tensor, shape
        accepted = list(zip(indices, given))
        if self.graph_id is not None and self._runs:
            moved = [
                engine.inputs.names[i]
                for i, t in accepted
                if t.data_ptr() != state.prepared.tensors[i].data_ptr() or t.shape != state.signature[i]
            ]
            if moved:
                raise ConfigError(
                    f"rebind: input {moved[0]!r} would move, but this bound call's CUDA graph was captured with "
                    f"the old addresses and shapes and replays them; copy the new values into the bound tensor "
                    f"(bound.inputs[{moved[0]!r}].copy_(value)) instead, or make a new bind()",
                    kind="input",
                    name=moved[0],
                )
        signature = tuple(shapes)
        feeds.update(changes)
        plan, slots, buffers, shared = self._plan(tensors, signature, feeds)
        binding = state.prepared.binding
        keep = {n: t for n, t in state.prepared.results.items() if t is not None}
        # Everything above only checked; from here the binding changes, and a failure (ORT
        # refusing a bind, memory running out) leaves the call unusable until the next
        # successful rebind: never half-bound and runnable.
        self._broken = "its last rebind() failed halfway"
        for index, tensor in enumerate(tensors):  # every input: a failed rebind may have bound others
            engine.inputs.bind(binding, index, tensor)  # (a no-op where the binding holds it already)
        prepared = engine.executor.prepare(binding, tensors, slots, buffers, shared, keep=keep)
        self._state = self._state_for(feeds, signature, plan, prepared)
        self._broken = None

    def _keeps_outputs(self, state: BoundState, index: int, shape: tuple[int, ...], old: tuple[int, ...]) -> bool:
        """Whether input ``index`` can take ``shape`` (was ``old``) with the plan and outputs as bound.

        It must be held by this call (not a shared output's buffer), keep its rank and fixed dims,
        and equal ``old`` in every axis the outputs' shapes read (``state.reads``, not ``None``).
        """
        axes = state.reads.get(index)  # type: ignore[union-attr]
        if axes is None or index not in state.held_at or len(shape) != len(old):
            return False
        if not self._engine.plans.program.fits(index, shape):
            return False
        return all(shape[axis] == old[axis] for axis in axes)

    def _step(
        self,
        state: BoundState,
        changes: Mapping[str, Any],
        indices: Sequence[int],
        values: Sequence[Any],
        tensors: Sequence[torch.Tensor],
        shapes: Sequence[torch.Size],
    ) -> bool:
        """Rebind without a new plan when the changes leave every output as it is bound; whether it did.

        A decoder step: new ids, a longer mask. ``tensors`` and ``shapes`` are the changed inputs
        as checked. Each must be a plain tensor (no copy, no alias), not a shared output's buffer,
        of its old rank and fixed dims, and equal in every axis the outputs' shapes read. Then
        only those inputs are bound again; the plan, the outputs and their bindings stay. Not after
        a rebind that failed halfway: only the general path binds everything again.
        """
        if state.reads is None or self._broken is not None:
            return False
        signature = list(state.signature)
        for index, value, tensor, shape in zip(indices, values, tensors, shapes):
            if tensor is not value or not self._keeps_outputs(state, index, shape, signature[index]):
                return False
            start = tensor.data_ptr()
            if _overlap.overlaps(tensor, start, start + tensor.nbytes, state.written_at):
                return False  # an output's memory: the general path allocates another or says why not
            signature[index] = shape
        inputs = self._engine.inputs
        accepted = list(zip(indices, changes, tensors))
        self._broken = "its last rebind() failed halfway"
        prepared, held = state.prepared, state.held
        for index, name, tensor in accepted:
            inputs.bind(prepared.binding, index, tensor)
            prepared.tensors[index] = tensor
            state.feeds[name] = tensor
            state.resized.pop(index, None)
            held[state.held_at[index]] = _held.hold("input", name, tensor)
        state.signature = tuple(signature)
        self._broken = None
        return True

    # ------------------------------------------------------------------ running

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        """Input name -> the caller's tensor bound for it (write new values into these in place).

        An input given a new shape by :meth:`resize` is a view of its memory with that shape.
        """
        if function_mode_enabled() or dispatch_modes():
            with without_modes():
                return self.inputs
        state = self._state
        feeds = dict(state.feeds)
        for index, shape in state.resized.items():
            name = self._engine.inputs.names[index]
            feeds[name] = self._view(state, name, shape)
        return feeds

    @property
    def outputs(self) -> dict[str, torch.Tensor | None]:
        """Output name -> the bound tensor; ``None`` for outputs ORT allocates on each run."""
        return dict(self._state.prepared.results)

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
            InputError, OutputError: A bound tensor moved or lost its memory since it was bound.
        """
        if function_mode_enabled() or dispatch_modes():  # a mode would answer the checks' reads itself
            with without_modes():
                return self.run(run_options=run_options, synchronize=synchronize)
        if not self._lock.acquire(False):
            raise busy("run")
        try:
            if self._broken is not None:
                raise RunError(f"bound call: {self._broken}; rebind() again before running", kind="run")
            state = self._state
            if state.subclassed:
                _held.check_subclassed(state.subclassed)
            engine = self._engine
            defaults = self._defaults
            if run_options is None and synchronize is None and defaults is not None:
                options, asynchronous = defaults
            else:
                graph_id = -1 if self.graph_id is None else self.graph_id
                options, asynchronous = engine.policy.choose(run_options, synchronize, self._graph, graph_id)
            prepared = state.prepared
            binding, bound = prepared.binding, prepared.results  # a retry re-binds them in place
            results, plan = engine.executor.execute(
                prepared,
                state.signature,
                state.plan,
                options,
                asynchronous,
                False,
                defaults is not None,  # a CUDA graph's outputs stay at their addresses: no retry
                state.held,
                state.refresh,
            )
            self._runs += 1
            if plan is not state.plan or prepared.binding is not binding:
                # The run taught the plan (a refused or checked prediction): bind the outputs it now
                # knows, and hand back this run's values in them.
                self._rebind_outputs(state, prepared, bound)
                for name, tensor in self._state.prepared.results.items():
                    value = results.get(name)
                    if tensor is not None and value is not None and value is not tensor and value.shape == tensor.shape:
                        results[name] = tensor.copy_(value)
            return results
        finally:
            self._lock.release()

    def _rebind_outputs(self, state: BoundState, prepared: Prepared, bound: Mapping[str, torch.Tensor | None]) -> None:
        """Bind the outputs the plan now knows; those ``bound`` before the run stay where their shapes do."""
        tensors, feeds = self._as_bound(state)
        plan, slots, buffers, shared = self._plan(tensors, state.signature, feeds)
        keep = {n: t for n, t in bound.items() if t is not None}
        again = self._engine.executor.prepare(prepared.binding, tensors, slots, buffers, shared, keep=keep)
        self._state = self._state_for(feeds, state.signature, plan, again)

    def _as_bound(self, state: BoundState) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """The bound tensors and the caller's feeds, an input :meth:`resize` bound as a view of that shape
        (for a state made anew: the plan, held records and :attr:`inputs` then follow what is bound)."""
        tensors, feeds = list(state.prepared.tensors), dict(state.feeds)
        for index, shape in state.resized.items():
            name = self._engine.inputs.names[index]
            tensors[index] = feeds[name] = self._view(state, name, shape)
        return tensors, feeds
