"""Per-signature plans: how each output of a call with these input shapes is allocated and bound.

A :class:`PlanCache` turns an input signature (the tuple of input shapes) into a :class:`Plan`,
made once by the :class:`~._shapes.ShapeProgram` (rules a-c, then d) and kept in an LRU. It is
also where ortbind learns: when a run shows that a predicted shape was wrong, or that ONNX Runtime
refuses a caller's buffer of the right shape, :meth:`PlanCache.learn` records it for the signature
(and distrusts a wrong declared shape for later signatures). One lock covers everything it learns.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from math import prod
from typing import Any, Final

import torch

from ._metadata import TensorSpec
from ._shapes import RULES, InferFn, OutputPlan, Rule, Shape, ShapeProgram, format_dims, format_shape
from ._typecheck import shape_of
from .errors import ShapeError

__all__ = [
    "BEYOND_LIMIT",
    "DEFAULT_SIZE",
    "DTYPE",
    "ELEM_TYPE",
    "EXPECTED",
    "INDEX",
    "NAME",
    "PASSTHROUGH",
    "PREDICTED",
    "PROBLEM",
    "REASON",
    "SHAPE",
    "SIZES",
    "Plan",
    "PlanCache",
    "Signature",
    "Slot",
    "fixed",
    "loosened",
    "make_slot",
]

OVERRIDE, DECLARED, INFERRED, ORT = (rule.value for rule in (Rule.OVERRIDE, Rule.DECLARED, Rule.INFERRED, Rule.ORT))
_PREDICTED = frozenset((DECLARED, INFERRED))

_log = logging.getLogger("ortbind")

DEFAULT_SIZE: Final = 4096
"""Input signatures whose plans a session keeps; the least recently used one goes first."""

Signature = tuple[torch.Size, ...]
"""The shapes of a call's inputs, in the model's input order."""


Slot = tuple[
    int,
    str,
    int,
    "torch.dtype | None",
    "Shape | None",
    "Shape | None",
    bool,
    "int | None",
    "str | None",
    str,
    "tuple[Any, ...]",
]
"""One output of one call, worked out ahead: how it is allocated and bound.

A plain tuple, read through the index constants below: a session keeps thousands of plans, and a
tuple of ints, strings and dtypes is invisible to Python's garbage collector where an object is
not (objects made a decoder's new-signature cost several times its planning cost in collections).

The common output has ``SHAPE`` set and nothing else to do: ortbind allocates it and binds it by
pointer. Every other case (ORT allocates, an empty tensor, a pass-through, an unsupported type, a
prediction still to be checked) has ``SHAPE`` ``None`` and takes the longer branch.

Fields:
    INDEX: Position among the model's outputs.
    NAME: Its name.
    ELEM_TYPE: ONNX element type int, as bound.
    DTYPE: Its torch dtype (``None`` for an output ortbind cannot bind).
    SHAPE: The non-empty shape ortbind allocates and binds, or ``None``.
    EXPECTED: The shape the plan resolved (what an ``out=`` buffer must have and what a verifying
        run compares against), or ``None`` when it is unknown ahead.
    PREDICTED: ``EXPECTED`` comes from declared dims or inference (rules b/c), so ORT may refuse
        it; a refusal reruns the call with ORT allocating this output.
    PASSTHROUGH: Index of the input this output is (a graph output named like an input), or
        ``None``. ORT neither writes a bound buffer for it nor copies it when it allocates.
    PROBLEM: Why it cannot be produced (an unsupported type), or ``None``.
    REASON: Why no earlier rule gave its shape (for messages about rule d).
    SIZES: What ``new_empty(*sizes)`` takes to allocate ``SHAPE`` (separate ints parse faster
        than one tuple; a scalar's are ``((),)``).
"""

BEYOND_LIMIT: Final = "more than max_output_bytes"
"""In the reason of an output left to ORT because its known shape is over the size limit."""

INDEX: Final = 0
NAME: Final = 1
ELEM_TYPE: Final = 2
DTYPE: Final = 3
SHAPE: Final = 4
EXPECTED: Final = 5
PREDICTED: Final = 6
PASSTHROUGH: Final = 7
PROBLEM: Final = 8
REASON: Final = 9
SIZES: Final = 10


def make_slot(
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
) -> Slot:
    """A slot; ``SIZES`` derived from ``shape``."""
    sizes: tuple[Any, ...] = (shape or ((),)) if shape is not None else ()
    return (index, name, elem_type, dtype, shape, expected, predicted, passthrough, problem, reason, sizes)


def loosened(slot: Slot) -> Slot:
    """``slot`` with ORT allocating the output (a prediction to check, or one ORT refused)."""
    if slot[PASSTHROUGH] is not None:
        return slot
    return (*slot[:SHAPE], None, *slot[EXPECTED:SIZES], ())


def fixed(slot: Slot, shape: Shape) -> Slot:
    """``slot`` with a shape the caller fixed (``output_shapes=`` for a call, or a shared buffer)."""
    bindable = 0 not in shape and slot[PASSTHROUGH] is None and slot[PROBLEM] is None
    return make_slot(
        slot[INDEX],
        slot[NAME],
        slot[ELEM_TYPE],
        slot[DTYPE],
        shape if bindable else None,
        shape,
        False,
        slot[PASSTHROUGH],
        slot[PROBLEM],
    )


class Plan:
    """Everything one input signature needs.

    Attributes:
        entries: Per output ``(rule letter, shape, reason)``, what :meth:`outputs` reports.
        slots: One slot per model output, in model order.
        verified: Whether every predicted shape is trusted: confirmed by a run, or the session does
            not verify. Sessions on CUDA start unverified: there, an output computed on another
            device is copied into its bound buffer after a check of element counts only, so a
            wrong prediction would come back silently reshaped. The first run of each signature
            that computes a predicted output lets ORT allocate it and compares.
        checked: The outputs whose predicted shapes a run confirmed (``None``: the session trusts
            every prediction). A call that computes some outputs checks those only.
    """

    __slots__ = ("checked", "entries", "simple", "slots", "verified")

    def __init__(
        self,
        entries: tuple[tuple[str, Shape | None, str], ...],
        slots: tuple[Slot, ...],
        verified: bool,
        simple: bool,
        checked: frozenset[int] | None = None,
    ):
        self.entries = entries
        self.slots = slots
        self.verified = verified
        self.checked = checked
        self.simple = simple
        """Every output is allocated by ortbind and bound by pointer (the common plain call)."""

    def unchecked(self, index: int) -> bool:
        """Whether output ``index`` has a predicted shape that no run has confirmed yet."""
        checked, (rule, shape, _) = self.checked, self.entries[index]
        return checked is not None and index not in checked and rule in _PREDICTED and shape is not None

    def outputs(self) -> tuple[OutputPlan, ...]:
        """One :class:`~ortbind.OutputPlan` per output, in model order (made on each call: plans are many)."""
        make = tuple.__new__  # what OutputPlan(...) does, without its Python-level __new__
        return tuple([make(OutputPlan, (s[NAME], RULES[e[0]], e[1], e[2])) for s, e in zip(self.slots, self.entries)])


def _with(checked: frozenset[int] | None, observed: Mapping[int, Shape]) -> frozenset[int] | None:
    """``checked`` and the outputs a run just observed (``None`` stays: every prediction trusted)."""
    return None if checked is None else checked | observed.keys()


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

    def get(self, signature: object) -> Plan:
        """The plan for these input shapes (one per input, in the model's order), made on first use.

        Raises:
            ShapeError: Not one shape (a sequence of ints in ``[0, 2**63)``) per input, or as :meth:`plan`.
        """
        names = self._program.input_names
        if isinstance(signature, (str, bytes)) or not isinstance(signature, Sequence) or len(signature) != len(names):
            raise ShapeError(
                f"signature: expected one shape per input ({', '.join(map(repr, names))}), in that order, got "
                f"{signature!r}",
                kind="input",
            )
        shapes = [shape_of(dims, f"signature: input {name!r}", "input", name) for name, dims in zip(names, signature)]
        return self.plan(tuple(shapes))  # type: ignore[arg-type]  # tuples hash and compare as torch.Size

    def plan(self, signature: Signature) -> Plan:
        """The plan of a checked signature, made on first use; a use makes it the most recently used.

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
        for index in self._distrusted:
            if entries[index][0] == DECLARED:
                entries[index] = (ORT, None, "its declared dims proved wrong for an earlier input signature")
        return self._store(signature, entries, frozenset() if self._verify else None)

    def _counted_infer(self, shapes: Mapping[str, Shape]) -> Mapping[str, tuple[int | None, ...] | None]:
        self.inferences += 1
        assert self._infer is not None
        return self._infer(shapes)

    def _beyond_limit(self, index: int, rule: str, shape: Shape, size: int) -> tuple[str, None, str]:
        spec = self._specs[index]
        reason = (
            f"shape {format_shape(shape)} (declared {format_dims(spec.dims)}) needs {_format_bytes(size)}, "
            f"{BEYOND_LIMIT} ({_format_bytes(self.max_output_bytes)})"
        )
        if rule == OVERRIDE:
            raise ShapeError(
                f"output_shapes[{spec.name!r}]: {reason}; pass a smaller shape or raise max_output_bytes",
                kind="output",
                name=spec.name,
            )
        _log.info("output %r: %s; ORT allocates it", spec.name, reason)
        return ORT, None, reason

    @property
    def program(self) -> ShapeProgram:
        """The shape program plans are made with."""
        return self._program

    def reads(self, plan: Plan, outputs: Sequence[int]) -> dict[int, tuple[int, ...]] | None:
        """Input index -> the axes ``outputs``' shapes read under ``plan``; ``None`` if any may read anything.

        ``None`` when an output's shape came from shape inference or run time (rules c, d), or in
        strict mode (where every symbol conflict is an error). Inputs absent from the result are
        read by no output at all.
        """
        program = self._program
        if program.strict:
            return None
        entries, reads = plan.entries, program.reads
        axes: dict[int, set[int]] = {i: set() for i in range(len(program.input_names))}
        for output in outputs:
            used = reads[output]
            if used is None or entries[output][0] not in (OVERRIDE, DECLARED):
                return None
            for index, axis in used:
                axes[index].add(axis)
        return {index: tuple(sorted(found)) for index, found in axes.items()}

    def check_override(self, index: int, shape: Shape) -> None:
        """Raise :class:`~ortbind.ShapeError` if a per-call ``output_shapes`` entry is beyond the limit."""
        size = self._static[index][6]
        for dim in shape:
            size *= dim
        if size > self.max_output_bytes:
            self._beyond_limit(index, OVERRIDE, shape, size)

    def _store(
        self, signature: Signature, entries: list[tuple[str, Shape | None, str]], checked: frozenset[int] | None
    ) -> Plan:
        """The plan for ``entries`` (outputs beyond the size limit moved to rule d), kept as the most recent.

        ``checked``: the outputs whose predictions a run confirmed (``None``: every prediction trusted).
        A prediction not confirmed is not bound by pointer: the run lets ORT allocate it and compares.

        On a decoder's every token (a new signature each time), so written for speed: ``prod``
        in C, what is fixed per output worked out once (``_static``), the key hashed as few times
        as the dict needs.
        """
        slots: list[Slot] = []
        limit = self.max_output_bytes
        simple = verified = True
        for (index, name, elem_type, dtype, passthrough, problem, itemsize), entry in zip(self._static, entries):
            rule, shape, reason = entry
            if shape is not None:
                size = itemsize * prod(shape)
                trusted = checked is None or rule not in _PREDICTED or index in checked
                if size > limit:
                    rule, shape, reason = entries[index] = self._beyond_limit(index, rule, shape, size)
                elif not trusted:
                    verified = False
                elif size and passthrough is None and problem is None:
                    # By pointer (an unverified prediction is checked by letting ORT allocate).
                    predicted, sizes = rule in _PREDICTED, shape or ((),)  # a scalar's new_empty takes ()
                    slots.append((index, name, elem_type, dtype, shape, shape, predicted, None, None, reason, sizes))
                    continue
            simple = False
            predicted = rule in _PREDICTED
            slots.append((index, name, elem_type, dtype, None, shape, predicted, passthrough, problem, reason, ()))
        plan = Plan(tuple(entries), tuple(slots), verified, simple, checked)
        # Keyed by plain tuples: torch.Size objects would be kept alive and tracked by the collector.
        key = tuple(map(tuple, signature))
        with self._lock:
            plans = self._plans
            count = len(plans)
            plans[key] = plan  # type: ignore[index]
            if len(plans) == count:  # replaced a plan: now the most recent (a new key is last already)
                plans.move_to_end(key)  # type: ignore[arg-type]
            elif count >= self._size:
                plans.popitem(last=False)
        return plan

    def unpredicted(self, signature: Signature, plan: Plan, indices: Sequence[int], why: str) -> Plan:
        """Leave outputs ``indices`` to ORT for this signature, and their declared dims for every other: a
        refused prediction that no rerun could check (a call that shares buffers). Returns the new plan.

        ``plan``: the plan the call ran with; what is stored builds on the plan of ``signature`` (not the
        same one after a bound call's step, which keeps its plan while axes no output reads change).
        """
        plan = self.plan(signature)
        entries = list(plan.entries)
        distrust = set()
        for index in indices:
            if entries[index][0] == DECLARED:
                distrust.add(index)
            entries[index] = (ORT, None, f"{why} in a call that shares buffers")
        if distrust:
            with self._lock:
                self._distrusted = self._distrusted | distrust
        return self._store(signature, entries, plan.checked)

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

        What is stored builds on the plan of ``signature``, not on ``plan``: a bound call's step keeps
        its plan while axes that none of its outputs read change, and the outputs it does not compute
        may read them.
        """
        plan = self.plan(signature)
        entries = list(plan.entries)
        # Only what is still a prediction there (another thread may have learned, or the plan been made anew).
        wrong = {i: s for i, s in observed.items() if entries[i][0] in _PREDICTED and s != entries[i][1]}
        if refusal and not wrong:
            for index, shape in observed.items():
                if entries[index][0] in _PREDICTED and (refused is None or self._static[index][1] == refused):
                    entries[index] = (
                        ORT,
                        None,
                        f"ONNX Runtime refuses a caller-allocated buffer of the right shape "
                        f"{format_shape(shape)} for it",
                    )
            return self._store(signature, entries, _with(plan.checked, observed))
        distrust = set()
        for index, actual in wrong.items():
            rule, expected, _ = entries[index]
            assert expected is not None
            reason = (
                f"{'declared' if rule == DECLARED else 'inferred'} shape {format_shape(expected)} proved wrong "
                f"at run time (ORT produced {format_shape(actual)})"
            )
            _log.info("output %r: %s; ORT allocates it for this input signature", self._static[index][1], reason)
            entries[index] = (ORT, None, reason)
            if rule == DECLARED:
                distrust.add(index)
        if distrust:
            with self._lock:
                self._distrusted = self._distrusted | distrust
        return self._store(signature, entries, _with(plan.checked, observed))
