"""The exceptions and warnings that ortbind raises.

Every exception derives from :class:`OrtbindError`, and each leaf also derives from the builtin a
caller would naturally catch, so ``except ValueError`` keeps working in code that does not know
ortbind::

    OrtbindError                          base of everything below
    ├── ModelError(ValueError)            the model cannot be loaded or uses IO that cannot be bound
    ├── ConfigError(ValueError)           session arguments are contradictory or unsupported
    ├── InputError(ValueError)            a feed is missing, unknown, not a real dense tensor, or
    │                                     laid out in a way that cannot be bound
    ├── OutputError(ValueError)           an output name or an ``out=`` buffer cannot be used
    ├── DTypeError(TypeError)             a feed or ``out=`` buffer has the wrong dtype (never cast)
    ├── ShapeError(ValueError)            a feed, ``out=`` buffer or resolved output shape is wrong
    ├── DeviceError(ValueError)           a tensor lives on another device than the session
    ├── ProviderError(RuntimeError)       the execution provider asked for is not the one in use
    └── RunError(RuntimeError)            ONNX Runtime failed during a run (its message is kept)

Each exception carries its subject: ``err.kind`` says what it is about (``"input"``, ``"out"``,
``"output"``, ``"option"``, ``"model"``, ``"device"`` or ``"run"``) and ``err.name`` names it (the
input, output or option name; ``None`` where there is no single one), so callers need not parse
messages. Messages name the subject, what was expected, what was found and the fix, for example::

    input 'sample': expected dtype torch.float16 (ONNX FLOAT16), got torch.float32; cast with .to(torch.float16)

Warnings derive from :class:`OrtbindWarning` (a ``UserWarning``): :class:`CopyWarning` when an
opt-in copy of an input is made (``allow_copy=True``), :class:`ProviderFallbackWarning` when an
opt-in fallback to the CPU provider is taken (``allow_cpu_fallback=True``).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

__all__ = [
    "ConfigError",
    "CopyWarning",
    "DTypeError",
    "DeviceError",
    "InputError",
    "ModelError",
    "OrtbindError",
    "OrtbindWarning",
    "OutputError",
    "ProviderError",
    "ProviderFallbackWarning",
    "RunError",
    "ShapeError",
]


class OrtbindError(Exception):
    """Base class of every exception raised by ortbind.

    Args:
        message: The whole message: subject, expected, found, fix.
        kind: What the error is about: ``"input"``, ``"out"`` (a caller's buffer), ``"output"``,
            ``"option"``, ``"model"``, ``"device"`` or ``"run"``.
        name: The input, output or option name, or ``None``.

    Attributes:
        kind: As given.
        name: As given.
    """

    def __init__(self, message: str, *, kind: str | None = None, name: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.name = name


class ModelError(OrtbindError, ValueError):
    """The model cannot be loaded, or declares inputs/outputs that ortbind cannot bind."""


class ConfigError(OrtbindError, ValueError):
    """Session arguments contradict each other, are malformed, or ask for what ortbind cannot honour."""


class InputError(OrtbindError, ValueError):
    """A feed is missing, unknown, not a real dense tensor, or laid out in a way that cannot be bound."""


class OutputError(OrtbindError, ValueError):
    """An output name is unknown, or an ``out=`` buffer cannot be written safely."""


class DTypeError(OrtbindError, TypeError):
    """A feed or ``out=`` buffer has another dtype than the model declares."""


class ShapeError(OrtbindError, ValueError):
    """A feed or ``out=`` buffer has a shape that does not fit the model, or an output's is unusable."""


class DeviceError(OrtbindError, ValueError):
    """A tensor lives on another device than the session runs on."""


class ProviderError(OrtbindError, RuntimeError):
    """The execution provider that was asked for is not the one ONNX Runtime uses."""


class RunError(OrtbindError, RuntimeError):
    """ONNX Runtime raised an error while running the model; the message keeps ORT's own text."""


class OrtbindWarning(UserWarning):
    """Base class of the warnings ortbind emits."""


class CopyWarning(OrtbindWarning):
    """An input was copied because the caller opted in to copies (``allow_copy=True``)."""


class ProviderFallbackWarning(OrtbindWarning):
    """The session fell back to the CPU provider because the caller opted in to that."""


def _warn(message: str, category: type[OrtbindWarning]) -> None:
    """Warn, naming the first line outside ortbind (the caller's), however deep in ortbind this runs."""
    package = str(Path(__file__).parent) + os.sep
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
