"""One table for ONNX Runtime's errors, and the one place that applies it: :class:`OrtCalls`.

ORT raises its own exception types (``Fail``, ``InvalidArgument``, ``RuntimeException``, ...) from
the pybind layer, with the meaning in the text. Every call into ORT (session creation, each
``bind_*``, each run, ``get_outputs``, ``clear_binding_outputs``, ``to_dlpack``) sits inside a
``with OrtCalls(...)`` block holding nothing but such calls, so a caller only ever sees ortbind's
exception tree with ORT's text kept, and an error in ortbind's own work (a torch allocation that
runs out of memory, a bug) is never reported as something ORT refused.

The spellings ORT uses to refuse a caller-allocated output whose shape is not the one the run
computes live in :data:`OUTPUT_REFUSALS`; ortbind reruns such a call with ORT allocating the
outputs whose shapes it had predicted. They are tested against each supported ORT version.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from types import TracebackType
from typing import Final

from .errors import ConfigError, ModelError, OrtbindError, RunError, ShapeError

__all__ = [
    "NOT_REFUSALS",
    "OUTPUT_REFUSALS",
    "BindRefusedError",
    "OrtCalls",
    "OutputRefusedError",
    "from_ort",
    "is_output_refusal",
    "not_rerun",
    "refused_output",
    "translate",
    "unretried",
]

OUTPUT_REFUSALS: Final = (
    # OpKernelContext::OutputMLValue: "The output OrtValue provided for output 'y' of node ... has
    # shape {3,2} but the computed output shape for this run is {2,3}" (most kernels).
    "computed output shape",
    # ExecutionFrame, older releases: "OrtValue shape verification failed. Current shape:..."
    "OrtValue shape verification failed",
    # The graph-level output check against ORT's own inferred output shape: "Got invalid dimensions
    # for output: Y for the following indices ..." (constant outputs; ONNX Attention-23 with
    # symbolic dims, where ORT infers 0 for a dim) and its rank twin.
    "Got invalid dimensions for output",
    "Invalid rank for output",
    # DataTransferManager::CopyTensor, for an output computed on another device than its bound
    # buffer: it compares element counts only, so it fires when the counts differ.
    "Tensor size mismatch",
)
"""Substrings of ORT's error text that mean "the output buffer you bound has the wrong shape"."""

NOT_REFUSALS: Final = (
    # The allocation planner reusing one of ORT's own buffers inside the graph: a model or ORT bug,
    # not a verdict on a caller's buffer, and rerunning would not help.
    "attempting to re-use buffer",
)


def from_ort(exc: BaseException) -> bool:
    """Whether ``exc`` came out of ONNX Runtime (its own types, or pybind's RuntimeError family).

    Anything else (a bug in ortbind, a KeyboardInterrupt) propagates untranslated.
    """
    return type(exc).__module__.startswith("onnxruntime") or isinstance(exc, (RuntimeError, ValueError, TypeError))


def is_output_refusal(exc: BaseException) -> bool:
    """Whether ORT refused a caller-allocated output because of its shape."""
    text = str(exc)
    return any(s in text for s in OUTPUT_REFUSALS) and not any(s in text for s in NOT_REFUSALS)


_NAMED: Final = re.compile(r"provided for output '([^']*)'|for output: (\S+) (?:for|Got)")


def refused_output(exc: BaseException) -> str | None:
    """The output a refusal names, where its spelling names one."""
    match = _NAMED.search(str(exc))
    if match is None:
        return None
    return match.group(1) if match.group(1) is not None else match.group(2)


def _ort_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


_CONFIG_SPELLINGS: Final = (
    "provider option",
    "Unknown option",
    "unknown option",
    "user_compute_stream",
    "device_id",
)


def translate(exc: BaseException, phase: str, *, subject: str = "", name: str | None = None) -> OrtbindError:
    """The ortbind exception for an exception ORT raised.

    Args:
        exc: What ORT raised.
        phase: ``"create"`` (building the session) or ``"run"``.
        subject: Who the call was about, for the message: ``"model 'unet.onnx'"``, ``"input 'x'"``.
        name: The input or output name, when there is one.
    """
    if isinstance(exc, OrtbindError):
        return exc
    text = _ort_text(exc)
    if phase == "create":
        where = subject or "model"
        if any(s in text for s in _CONFIG_SPELLINGS):
            return ConfigError(
                f"{where}: ONNX Runtime refused the session options: {text}; check provider_options and "
                f"session_options",
                kind="option",
                name=name,
            )
        return ModelError(f"{where}: ONNX Runtime could not load it: {text}", kind="model", name=name)
    return RunError(f"ONNX Runtime failed during the run: {text}", kind="run", name=name)


class OutputRefusedError(RunError):
    """ORT refused a caller-allocated output because of its shape (before writing anything).

    Attributes:
        refused: The output ORT's text names, or ``None``.
        text: ORT's own text.
    """

    def __init__(self, message: str, *, refused: str | None, text: str) -> None:
        super().__init__(message, kind="run", name=refused)
        self.refused = refused
        self.text = text


class BindRefusedError(RunError):
    """ORT refused a ``bind_*`` call; :attr:`text` is its own text, for a message naming the tensor."""

    def __init__(self, message: str, *, text: str) -> None:
        super().__init__(message, kind="run")
        self.text = text

    def named(self, kind: str, name: str) -> RunError:
        """The error to raise: ``kind`` (``"input"`` or ``"output"``) ``name`` could not be bound."""
        return RunError(f"{kind} {name!r}: ONNX Runtime refused to bind it: {self.text}", kind=kind, name=name)


def unretried(
    refusal: OutputRefusedError, first: OutputRefusedError | None, shared_with: str | None, given: str | None = None
) -> OrtbindError:
    """The error for a refused output buffer that is not rerun.

    Args:
        refusal: ORT's refusal.
        first: The refusal of the first attempt, when this was the rerun.
        shared_with: The input the refused output is shared with (``share=``), if it is.
        given: Where the caller fixed the refused output's shape (``"out"``, ``"output_shapes"``), if it did.
    """
    name = refusal.refused
    if name is not None and given is not None and shared_with is None:
        where = f"out {name!r}" if given == "out" else f"output_shapes[{name!r}]"
        return ShapeError(
            f"{where}: ONNX Runtime refused a buffer of the shape given ({refusal.text}); give the shape the model "
            f"produces, or leave {name!r} out of {given}= so that ORT allocates it",
            kind="out" if given == "out" else "output",
            name=name,
        )
    if name is not None and shared_with is not None:
        return RunError(
            f"output {name!r}: shared with input {shared_with!r}, but ONNX Runtime computed another shape for it "
            f"({refusal.text}); this model does not write {name!r} in place; leave it out of share=",
            kind="output",
            name=name,
        )
    if first is not None:
        return RunError(f"{refusal} (first attempt: {first.text})", kind="run", name=name)
    return RunError(str(refusal), kind="run", name=name)


def not_rerun(shared: Sequence[str], outputs: Sequence[str], why: str, later: str) -> RunError:
    """The error for a call that shares buffers (``shared``: the inputs written in place), whose run would
    have to be repeated to give ``outputs``: a rerun would read what the first run wrote."""
    inputs = ", ".join(map(repr, shared))
    return RunError(
        f"output {', '.join(map(repr, outputs))}: {why}; this run had already written the shared input "
        f"{inputs} in place (share=), and a rerun would read what it wrote, so the call was not rerun and "
        f"its outputs are lost. Later calls {later}: put {inputs} back as it was and call again",
        kind="output",
        name=outputs[0] if len(outputs) == 1 else None,
    )


class OrtCalls:
    """``with OrtCalls(phase):`` around calls into ORT maps what they raise to ortbind's errors.

    Stateless and reusable: one instance per phase serves every thread. Exceptions that did not
    come from ORT (see :func:`from_ort`) and ortbind's own errors pass through untouched. The hot
    paths (a run, a bind in the per-call loop) use the same mapping through ``try: ... except
    Exception as exc: raise calls.mapped(exc) from exc``, which costs nothing until ORT raises.

    Args:
        phase: ``"create"``, ``"bind"`` or ``"run"``; a run's refusal of a caller's buffer becomes
            :class:`OutputRefusedError`, a bind's failure :class:`BindRefusedError`.
        subject: Who the calls are about, for ``"create"`` messages.
    """

    __slots__ = ("phase", "subject")

    def __init__(self, phase: str, subject: str = "") -> None:
        self.phase = phase
        self.subject = subject

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is not None and isinstance(exc, Exception):
            mapped = self.mapped(exc)
            if mapped is not exc:
                raise mapped from exc

    def mapped(self, exc: Exception) -> Exception:
        """The ortbind error for what an ORT call raised; ``exc`` itself when it did not come from ORT."""
        if isinstance(exc, OrtbindError) or not from_ort(exc):
            return exc
        text = _ort_text(exc)
        if self.phase == "bind":
            return BindRefusedError(f"ONNX Runtime refused to bind it: {text}", text=text)
        if self.phase == "run" and is_output_refusal(exc):
            return OutputRefusedError(
                f"ONNX Runtime failed during the run: {text}", refused=refused_output(exc), text=text
            )
        return translate(exc, self.phase, subject=self.subject)
