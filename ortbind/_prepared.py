"""What a binding holds between runs: a prepared call, and the state of a bound call.

:class:`Prepared` is one call's binding ready to run (plain calls make one per call, bound calls
one per bind); :class:`BoundState` is what a :class:`~ortbind.BoundCall` keeps besides it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ._binding import Binding
from ._held import Held
from ._overlap import Span
from ._plan import Plan, Slot
from .errors import ConfigError, RunError

__all__ = ["BoundState", "Prepared", "Uncopyable", "busy"]


class Prepared:
    """A binding ready to run: its inputs, its outputs and what each run must do besides running.

    Attributes:
        binding: The binding (inputs and outputs bound).
        tensors: The input tensors as bound (the caller's, plain aliases or copies), kept alive.
        slots: The outputs, in the order asked for.
        buffers: Caller-owned ``out=`` buffers by name (written in place).
        shared: Output name -> index of the input whose buffer it writes (``share=``).
        results: Output name -> bound tensor, ``None`` for one ORT allocates on each run.
        pending: ``(position among bound outputs, slot, caller's buffer or None)`` per output ORT allocates.
        passthrough: ``(slot, target or None)`` per output that is an input (copied after the run).
        written: Tensors ORT writes into (versions bumped after each run).
        bound: How many outputs are bound to ORT (none: only pass-through outputs, no run).
        common: Outputs are bound and every one by pointer: a run has nothing to collect or copy.
        runs: Runs so far (ORT-allocated outputs are re-bound before every run but the first).
    """

    __slots__ = (
        "binding",
        "bound",
        "buffers",
        "common",
        "passthrough",
        "pending",
        "results",
        "runs",
        "shared",
        "slots",
        "tensors",
        "written",
    )

    def __init__(
        self,
        binding: Binding,
        tensors: list[torch.Tensor],
        slots: Sequence[Slot],
        buffers: Mapping[str, torch.Tensor] | None,
        shared: Mapping[str, int] | None,
    ) -> None:
        self.binding = binding
        self.tensors = tensors
        self.slots = slots
        self.buffers = buffers
        self.shared = shared
        self.results: dict[str, torch.Tensor | None] = {}
        self.pending: list[tuple[int, Slot, torch.Tensor | None]] = []
        self.passthrough: list[tuple[Slot, torch.Tensor | None]] = []
        self.written: tuple[torch.Tensor, ...] = ()
        self.bound = 0
        self.common = False
        self.runs = 0


class BoundState:
    """What one bind produced: replaced by a rebind that changes the outputs, updated in place by one that does not.

    Attributes:
        reads: Input index -> the axes of it that the bound outputs' shapes read, when every
            (non-shared) output's shape comes from declared dims or overrides; a rebind that leaves
            those axes alone keeps the plan and the outputs. ``None``: every rebind re-plans.
        held_at: Input index -> its record's position in ``held``.
        resized: Input index -> the shape :meth:`BoundCall.resize` bound it with.
        written_at: Where the outputs ORT writes lie (:func:`~._overlap.spans`), for the steps that
            keep them (``reads`` not ``None``): an input must not be re-bound over them.
    """

    __slots__ = (
        "feeds",
        "held",
        "held_at",
        "plan",
        "prepared",
        "reads",
        "refresh",
        "resized",
        "signature",
        "subclassed",
        "written_at",
    )

    def __init__(
        self,
        feeds: dict[str, torch.Tensor],
        signature: tuple[torch.Size, ...],
        plan: Plan,
        prepared: Prepared,
        held: list[Held],
        held_at: dict[int, int],
        refresh: tuple[tuple[int, torch.Tensor, torch.Tensor], ...],
        subclassed: tuple[tuple[str, torch.Tensor, int, torch.Size, torch.dtype], ...],
        reads: dict[int, tuple[int, ...]] | None,
    ) -> None:
        self.feeds = feeds
        self.signature = signature
        self.plan = plan
        self.prepared = prepared
        self.held = held
        self.held_at = held_at
        self.refresh = refresh
        self.subclassed = subclassed
        self.reads = reads
        self.resized: dict[int, torch.Size] = {}
        self.written_at: tuple[Span, ...] = ()


class Uncopyable:
    """Refuses ``copy.copy``, ``copy.deepcopy`` and pickling with an ortbind error that says why.

    A copy would share ORT's session and bindings (a copy's rebind() would re-point the
    original's binding, and ORT would write into tensors only the copy keeps alive); ORT's
    objects cannot be pickled either.
    """

    __slots__ = ()

    def _refuse(self, *_: object) -> Any:
        what = type(self).__name__
        raise ConfigError(
            f"{what}: cannot be copied or pickled, as it holds ONNX Runtime's session and bindings; make a new "
            f"one instead ({'sess.bind(...)' if what == 'BoundCall' else 'TorchSession(model, device)'})",
            kind="option",
            name="copy",
        )

    __copy__ = __deepcopy__ = __reduce_ex__ = __reduce__ = _refuse


def busy(what: str) -> RunError:
    """The error for a bound call used by a second thread while one uses it."""
    return RunError(
        f"bound call: {what}() while another thread uses it; a BoundCall is not for concurrent use, "
        f"bind one per thread",
        kind="run",
    )
