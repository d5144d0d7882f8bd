"""Per-signature plans: how each output of a call with these input shapes is allocated and bound.

A :class:`PlanCache` turns an input signature (the tuple of input shapes) into a :class:`Plan`,
made once by the :class:`~._shapes.ShapeProgram` (rules a-c, then d) and kept in an LRU. It is
also where ortbind learns: when a run shows that a predicted shape was wrong, or that ONNX Runtime
refuses a caller's buffer of the right shape, :meth:`PlanCache.learn` records it for the signature
(and distrusts a wrong declared shape for later signatures). One lock covers everything it learns.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Final

import torch

from ._metadata import TensorSpec
from ._shapes import InferFn, OutputPlan, Rule, Shape, ShapeProgram, format_dims, format_shape
from .errors import ShapeError

__all__ = ["DEFAULT_SIZE", "Plan", "PlanCache", "Signature", "Slot", "device_capacity"]

_log = logging.getLogger("ortbind")

DEFAULT_SIZE: Final = 4096
"""Input signatures whose plans a session keeps; the least recently used one goes first."""

Signature = tuple[torch.Size, ...]
"""The shapes of a call's inputs, in the model's input order."""


class Slot:
    """One output of one call, worked out ahead: how it is allocated and bound.

    The common output has ``shape`` set and nothing else to do: ortbind allocates it and binds it
    by pointer. Every other case (ORT allocates, an empty tensor, a pass-through, an unsupported
    type, a prediction still to be checked) has ``shape=None`` and takes the longer branch.

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
        reason: Why no earlier rule gave its shape (for messages about rule d).
        sizes: What ``torch.empty(*sizes)`` takes to allocate ``shape``.
    """

    __slots__ = (
        "dtype",
        "elem_type",
        "expected",
        "index",
        "name",
        "passthrough",
        "predicted",
        "problem",
        "reason",
        "shape",
        "sizes",
    )

    def __init__(
        self,
        index: int,
        name: str,
        elem_type: int,
        dtype: torch.dtype | None,
        shape: Shape | None,
        expected: Shape | None,
        predicted: bool,
        passthrough: int | None,
        problem: str | None,
        reason: str = "",
    ) -> None:
        self.index = index
        self.name = name
        self.elem_type = elem_type
        self.dtype = dtype
        self.shape = shape
        self.expected = expected
        self.predicted = predicted
        self.passthrough = passthrough
        self.problem = problem
        self.reason = reason
        # torch.empty parses sizes given as separate ints faster than one tuple; a scalar's are ((),).
        self.sizes: tuple[Any, ...] = (shape or ((),)) if shape is not None else ()

    def loosened(self) -> Slot:
        """This slot with ORT allocating the output (a prediction to check, or one ORT refused)."""
        return (
            Slot(
                self.index,
                self.name,
                self.elem_type,
                self.dtype,
                None,
                self.expected,
                self.predicted,
                None,
                self.problem,
            )
            if self.passthrough is None
            else self
        )

    def fixed(self, shape: Shape) -> Slot:
        """This slot with a shape the caller fixed (``output_shapes=`` for a call, or a shared buffer)."""
        bindable = 0 not in shape and self.passthrough is None and self.problem is None
        return Slot(
            self.index,
            self.name,
            self.elem_type,
            self.dtype,
            shape if bindable else None,
            shape,
            False,
            self.passthrough,
            self.problem,
        )

    def __repr__(self) -> str:
        return f"Slot({self.name!r}, shape={self.shape}, expected={self.expected}, predicted={self.predicted})"


class Plan:
    """Everything one input signature needs.

    Attributes:
        entries: Per output ``(rule, shape, reason)``, what :attr:`outputs` reports.
        slots: One slot per model output, in model order.
        verified: Whether a run has confirmed the predicted shapes. Sessions on CUDA start
            unverified: there, an output computed on another device is copied into its bound
            buffer after a check of element counts only, so a wrong prediction would come back
            silently reshaped. The first run of each signature lets ORT allocate predicted outputs
            and compares.
    """

    __slots__ = ("entries", "simple", "slots", "verified")

    def __init__(self, entries: tuple[tuple[Rule, Shape | None, str], ...], slots: tuple[Slot, ...], verified: bool):
        self.entries = entries
        self.slots = slots
        self.verified = verified
        self.simple = all(s.shape is not None for s in slots)
        """Every output is allocated by ortbind and bound by pointer (the common plain call)."""

    def outputs(self) -> tuple[OutputPlan, ...]:
        """One :class:`~ortbind.OutputPlan` per output, in model order."""
        return tuple(
            OutputPlan(s.name, rule, shape, reason) for s, (rule, shape, reason) in zip(self.slots, self.entries)
        )


def device_capacity(device: torch.device) -> int:
    """Bytes a single output may take on ``device`` by default: all of its memory."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX
        return 1 << 62


def _format_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"


class PlanCache:
    """The plans of one session's input signatures: made on first use, kept in an LRU, corrected by runs.

    Args:
        program: The model's shape program.
        outputs: The model's output specs, in order.
        passthrough: Per output, the index of the input it is (an output named like an input), or ``None``.
        infer: Shape inference for rule (c), or ``None``.
        max_output_bytes: The largest output allocated from a prediction; larger ones go to ORT.
        verify: Whether new plans start unverified (their predictions checked by the first run).
        size: How many signatures to keep.
    """

    def __init__(
        self,
        program: ShapeProgram,
        outputs: Sequence[TensorSpec],
        passthrough: Sequence[int | None],
        *,
        infer: InferFn | None,
        max_output_bytes: int,
        verify: bool,
        size: int = DEFAULT_SIZE,
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size: expected a positive int, got {size!r}")
        self._program = program
        self._specs = tuple(outputs)
        self._static = tuple(
            (i, s.name, s.elem_type, s.dtype, p, s.unsupported, s.dtype.itemsize if s.dtype is not None else 1)
            for i, (s, p) in enumerate(zip(outputs, passthrough))
        )
        self._infer = infer
        self.max_output_bytes = max_output_bytes
        self._verify = verify
        self._size = size
        self._plans: OrderedDict[Signature, Plan] = OrderedDict()
        self._lock = threading.Lock()
        self._distrusted: frozenset[int] = frozenset()  # outputs whose declared dims proved wrong once
        self.inferences = 0
        """How many signatures needed shape inference (rule c) so far."""

    def __len__(self) -> int:
        return len(self._plans)

    def __contains__(self, signature: object) -> bool:
        return signature in self._plans

    def signatures(self) -> list[Signature]:
        """The signatures kept, least recently used first."""
        with self._lock:
            return list(self._plans)

    def get(self, signature: Signature) -> Plan:
        """The signature's plan, made on first use; a use makes it the most recently used.

        Raises:
            ShapeError: An input breaks its declared rank or fixed dims (or, in strict mode,
                inputs disagree on a symbol), or an override is beyond ``max_output_bytes``.
        """
        plans = self._plans
        plan = plans.get(signature)
        if plan is None:
            return self._make(signature)
        try:  # noqa: SIM105  (contextlib.suppress costs a third of a microsecond here)
            plans.move_to_end(signature)  # atomic under the GIL
        except KeyError:  # evicted by another thread just now; the plan in hand is still right
            pass
        return plan

    def _make(self, signature: Signature) -> Plan:
        entries = self._program.resolve(signature, self._counted_infer if self._infer is not None else None)
        distrusted = self._distrusted
        for index in distrusted:
            if entries[index][0] is Rule.DECLARED:
                entries[index] = (Rule.ORT, None, "its declared dims proved wrong for an earlier input signature")
        limit = self.max_output_bytes
        for index, (rule, shape, _) in enumerate(entries):
            if shape is None:
                continue
            size = self._static[index][6]
            for dim in shape:
                size *= dim
            if size > limit:
                entries[index] = self._beyond_limit(index, rule, shape, size)
        return self._store(signature, tuple(entries), verified=not self._verify)

    def _counted_infer(self, shapes: Mapping[str, Shape]) -> Mapping[str, tuple[int | None, ...] | None]:
        self.inferences += 1
        assert self._infer is not None
        return self._infer(shapes)

    def _beyond_limit(self, index: int, rule: Rule, shape: Shape, size: int) -> tuple[Rule, None, str]:
        spec = self._specs[index]
        reason = (
            f"shape {format_shape(shape)} (declared {format_dims(spec.dims)}) needs {_format_bytes(size)}, "
            f"more than max_output_bytes ({_format_bytes(self.max_output_bytes)})"
        )
        if rule is Rule.OVERRIDE:
            raise ShapeError(
                f"output_shapes[{spec.name!r}]: {reason}; pass a smaller shape or raise max_output_bytes",
                kind="output",
                name=spec.name,
            )
        _log.info("output %r: %s; ORT allocates it", spec.name, reason)
        return Rule.ORT, None, reason

    def check_override(self, index: int, shape: Shape) -> None:
        """Raise :class:`~ortbind.ShapeError` if a per-call ``output_shapes`` entry is beyond the limit."""
        size = self._static[index][6]
        for dim in shape:
            size *= dim
        if size > self.max_output_bytes:
            self._beyond_limit(index, Rule.OVERRIDE, shape, size)

    def _store(
        self, signature: Signature, entries: tuple[tuple[Rule, Shape | None, str], ...], *, verified: bool
    ) -> Plan:
        slots = []
        for (index, name, elem_type, dtype, passthrough, problem, _), (rule, shape, reason) in zip(
            self._static, entries
        ):
            predicted = rule is Rule.DECLARED or rule is Rule.INFERRED
            bindable = (
                shape is not None
                and 0 not in shape
                and passthrough is None
                and problem is None
                and (verified or not predicted)  # an unverified prediction is checked by letting ORT allocate
            )
            slots.append(
                Slot(
                    index,
                    name,
                    elem_type,
                    dtype,
                    shape if bindable else None,
                    shape,
                    predicted,
                    passthrough,
                    problem,
                    reason,
                )
            )
        plan = Plan(entries, tuple(slots), verified)
        with self._lock:
            plans = self._plans
            plans[signature] = plan
            plans.move_to_end(signature)
            while len(plans) > self._size:
                plans.popitem(last=False)
        return plan

    def learn(
        self,
        signature: Signature,
        plan: Plan,
        observed: Mapping[int, Shape],
        refused: str | None = None,
        refusal: bool = False,
    ) -> Plan:
        """Record what a run that let ORT allocate predicted outputs showed; returns the new plan.

        Args:
            signature: The call's signature.
            plan: The plan the call ran with.
            observed: Output index -> the shape ORT produced, for each predicted output it allocated.
            refused: The output an ORT refusal named, if it named one.
            refusal: The run was a retry after ORT refused a predicted buffer.

        After a refusal where every prediction proved right, ORT's own check disagrees with the
        true shape (it infers 0 for a dim of ONNX Attention-23, say): the output it names (or, if
        it names none, every retried one) is left to ORT for this signature, so later calls do not
        pay for a refused run each time.
        """
        entries = list(plan.entries)
        wrong = {i: s for i, s in observed.items() if s != entries[i][1]}
        if refusal and not wrong:
            for index, shape in observed.items():
                if refused is None or self._static[index][1] == refused:
                    entries[index] = (
                        Rule.ORT,
                        None,
                        f"ONNX Runtime refuses a caller-allocated buffer of the right shape "
                        f"{format_shape(shape)} for it",
                    )
            return self._store(signature, tuple(entries), verified=True)
        distrust = set()
        for index, actual in wrong.items():
            rule, expected, _ = entries[index]
            assert expected is not None
            reason = (
                f"{'declared' if rule is Rule.DECLARED else 'inferred'} shape {format_shape(expected)} proved wrong "
                f"at run time (ORT produced {format_shape(actual)})"
            )
            _log.info("output %r: %s; ORT allocates it for this input signature", self._static[index][1], reason)
            entries[index] = (Rule.ORT, None, reason)
            if rule is Rule.DECLARED:
                distrust.add(index)
        if distrust:
            with self._lock:
                self._distrusted = self._distrusted | distrust
        return self._store(signature, tuple(entries), verified=True)
