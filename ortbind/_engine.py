"""The engine of a session: checks, plans and the executor composed into calls.

:class:`Engine` is what every call goes through. A plain call (``sess(...)``, ``sess.run(...)``)
is :meth:`Engine.call`; a bound call (:class:`~ortbind.BoundCall`) uses the same pieces
(:meth:`Engine.outputs_for`, the input checker, the executor) to bind once and run many times.

    feeds ──► InputChecker.check ──► signature ──► PlanCache.get ──► Plan (slots)
                 (bind inputs)                                         │
    output_names, output_shapes, out=, share= ──► Engine.outputs_for ◄─┘
                                                       │ slots, buffers, shared
                                                       ▼
                          Executor.prepare (bind outputs) ──► Executor.execute
                          (held tensors checked, copies refreshed, run under the stream order,
                           a refused prediction rerun once and learned, outputs ORT allocated
                           collected, written buffers' versions bumped)
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import onnxruntime as ort
import torch

from ._binding import dispatch_modes, function_mode_enabled, without_modes
from ._execute import Executor
from ._inputs import InputChecker
from ._outputs import OutputChecker
from ._plan import NAME, Plan, PlanCache, Signature, Slot, fixed
from ._runoptions import RunPolicy
from ._shapes import OutputPlan
from ._typecheck import as_shape, is_mapping, shape_of
from .errors import InputError, OutputError

__all__ = ["Engine"]


class Engine:
    """Runs calls of one session.

    Args:
        inputs: Checks and binds feeds.
        outputs: Chooses and checks outputs, ``out=`` and ``share=``.
        plans: Per-signature plans.
        policy: Run options.
        executor: Binds outputs, runs, collects.
        cuda_graph: The session captures CUDA graphs (one per bound call).
        host_inputs: Indices of inputs a CUDA session keeps in host memory.
    """

    def __init__(
        self,
        inputs: InputChecker,
        outputs: OutputChecker,
        plans: PlanCache,
        policy: RunPolicy,
        executor: Executor,
        *,
        cuda_graph: bool,
        host_inputs: frozenset[int],
    ) -> None:
        self.inputs = inputs
        self.outputs = outputs
        self.plans = plans
        self.policy = policy
        self.executor = executor
        self.bindings = executor.bindings
        self.cuda_graph = cuda_graph
        self.host_inputs = host_inputs
        self._graph_ids = itertools.count()

    def next_graph_id(self) -> int:
        """A new ``gpu_graph_id`` for a bound call of a CUDA-graph session."""
        return next(self._graph_ids)

    def call(
        self,
        feeds: Mapping[str, torch.Tensor],
        output_names: Sequence[str] | None,
        out: Mapping[str, torch.Tensor] | None,
        output_shapes: Mapping[str, Sequence[int]] | None,
        share: Mapping[str, str] | None,
        run_options: ort.RunOptions | None,
        synchronize: bool | None,
    ) -> dict[str, torch.Tensor]:
        """One plain call: fresh outputs (or the caller's buffers), inputs only read."""
        if function_mode_enabled() or dispatch_modes():
            with without_modes():
                return self.call(feeds, output_names, out, output_shapes, share, run_options, synchronize)
        policy = self.policy
        if run_options is None and synchronize is None:
            options, asynchronous = policy.default, policy.asynchronous
        else:
            options, asynchronous = policy.choose(run_options, synchronize)
        executor = self.executor
        every = self.outputs.all
        indices = every if output_names is None else self.outputs.select(output_names)
        shapes = None
        if out is not None or output_shapes is not None or share is not None:
            out, shapes, share = self.outputs.snapshot(out, output_shapes, share)
        binding = self.bindings.take(indices)
        try:
            binding.busy = True  # in the try: an interrupt just before it cannot leave it busy for good
            tensors, signature, given = self.inputs.check(feeds, binding)
            plan = self.plans.plan(signature)
            if indices is every and out is None and shapes is None and share is None:
                if plan.simple:
                    return executor.fresh(binding, tensors, signature, plan, options, asynchronous)
                prepared = executor.prepare(binding, tensors, plan.slots, None)
            else:
                if (
                    share is not None
                    and not plan.verified
                    and any(plan.unchecked(i) and not executor.dlpack_ok[i] for i in indices)
                ):
                    # A float8 prediction is checked by a run that gives its shape only, then a second run:
                    # with shared buffers, that second run would read what the first wrote. Check it apart.
                    plan = self.verify(dict(zip(self.inputs.names, tensors)), indices, signature, out)
                slots, buffers, shared = self.outputs_for(plan, indices, tensors, given, out, shapes, share)
                prepared = executor.prepare(binding, tensors, slots, buffers, shared)
            results, _ = executor.execute(prepared, signature, plan, options, asynchronous, transient=True)
            return results
        except BaseException:
            self.bindings.drop(binding)  # a failed call may leave it half-bound
            raise
        finally:
            binding.busy = False

    def outputs_for(
        self,
        plan: Plan,
        indices: Sequence[int],
        tensors: Sequence[torch.Tensor],
        given: Sequence[object],
        out: object,
        output_shapes: Mapping[str, tuple[int, ...]] | None,
        share: object,
    ) -> tuple[list[Slot], dict[str, torch.Tensor] | None, dict[str, int] | None]:
        """The slots, checked ``out=`` buffers and shared outputs of a call with this plan
        (``output_shapes`` as :meth:`~._outputs.OutputChecker.snapshot` checked them).

        ``tensors``: the inputs as bound; ``given``: the caller's values they came from (a shared
        output must be written into the caller's very memory, not into a copy of it).
        """
        slots = [plan.slots[i] for i in indices]
        if output_shapes is not None:
            slots = self.outputs.overrides(slots, output_shapes)
        shared = None
        if share is not None:
            shared = self.outputs.shared(share, slots, tensors, given, self.inputs.index) or None
            if shared and output_shapes is not None:
                both = next((name for name in shared if name in output_shapes), None)
                if both is not None:
                    raise OutputError(
                        f"output_shapes[{both!r}]: it is shared with input "
                        f"{self.inputs.names[shared[both]]!r} (share=), whose shape it takes; give it one or the other",
                        kind="output",
                        name=both,
                    )
            if shared:
                slots = [fixed(s, tuple(tensors[shared[s[NAME]]].shape)) if s[NAME] in shared else s for s in slots]
        buffers = None
        if out is not None:
            names = [s.name for s in self.inputs.specs]
            buffers = self.outputs.buffers(out, slots, tensors, names, shared, given) or None
        return slots, buffers, shared

    def verify(
        self,
        feeds: Mapping[str, torch.Tensor],
        indices: Sequence[int],
        signature: Signature,
        out: Mapping[str, torch.Tensor] | None = None,
    ) -> Plan:
        """Run once with ORT allocating the predicted outputs, so the plan learns their true shapes (``out=``
        buffers receive the values: a float8 output comes back through its buffer only)."""
        self.call(feeds, [self.outputs.spec.outputs[i].name for i in indices], out, None, None, None, True)
        return self.plans.plan(signature)

    def resolve(self, input_shapes: object) -> dict[str, OutputPlan]:
        """How each output would be allocated for inputs of these shapes, without running."""
        if not is_mapping(input_shapes):
            raise InputError(
                f"input_shapes: expected a mapping of input name -> shape, got {type(input_shapes).__name__}",
                kind="input",
            )
        shapes: list[tuple[int, ...]] = []
        for name in self.inputs.names:
            if name not in input_shapes:
                raise InputError(
                    f"input_shapes: missing input {name!r}; give a shape for every input",
                    kind="input",
                    name=name,
                )
            dims = input_shapes[name]
            shape = as_shape(dims)  # shape_of only to raise: its message is not built for every input (decoder loops)
            shapes.append(shape if shape is not None else shape_of(dims, f"input_shapes[{name!r}]", "input", name))
        if len(input_shapes) != len(shapes):
            for name in input_shapes:
                self.inputs.require(name)
        plan = self.plans.plan(tuple(shapes))  # type: ignore[arg-type]  # tuples hash and compare as torch.Size
        return dict(zip(self.outputs.names, plan.outputs()))
