"""One table for ONNX Runtime's errors: every call into ORT maps its exception here.

ORT raises its own exception types (``Fail``, ``InvalidArgument``, ``RuntimeException``, ...) from
the pybind layer, with the meaning in the text. Session creation, each ``bind_*`` and each run go
through :func:`translate`, so a caller only ever sees ortbind's exception tree, with ORT's text kept.

The spellings ORT uses to refuse a caller-allocated output whose shape is not the one the run
computes live in :data:`OUTPUT_REFUSALS`; ortbind reruns such a call with ORT allocating the
outputs whose shapes it had predicted. They are tested against each supported ORT version.
"""

from __future__ import annotations

import re
from typing import Final

from .errors import ConfigError, ModelError, OrtbindError, RunError

__all__ = ["NOT_REFUSALS", "OUTPUT_REFUSALS", "from_ort", "is_output_refusal", "refused_output", "translate"]

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
        phase: ``"create"`` (building the session), ``"bind"`` or ``"run"``.
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
    if phase == "bind":
        return RunError(
            f"{subject}: ONNX Runtime refused to bind it: {text}",
            kind="input" if subject.startswith("input") else "output",
            name=name,
        )
    return RunError(f"ONNX Runtime failed during the run: {text}", kind="run", name=name)
