"""The exceptions and warnings that ortbind raises.

Every exception derives from :class:`OrtbindError`, and each leaf also derives from the builtin a
caller would naturally catch, so ``except ValueError`` keeps working in code that does not know
ortbind::

    OrtbindError                          base of everything below
    ├── ModelError(ValueError)            the model cannot be loaded or uses IO that cannot be bound
    ├── InputError(ValueError)            a feed is missing, unknown, not a tensor, or not contiguous
    │   └── DTypeError(TypeError)         a feed has the wrong dtype (ortbind never casts)
    ├── ShapeError(ValueError)            a feed or an ``out=`` buffer has the wrong shape
    ├── DeviceError(ValueError)           a tensor lives on another device than the session
    ├── ProviderError(RuntimeError)       the execution provider asked for is not the one in use
    └── RunError(RuntimeError)            ONNX Runtime failed during a run (its message is kept)

Warnings derive from :class:`OrtbindWarning` (a ``UserWarning``): :class:`CopyWarning` when an
opt-in copy of a non-contiguous input is made, :class:`ProviderFallbackWarning` when an opt-in
fallback to the CPU provider is taken.

Messages name the subject, what was expected, what was found and the fix, for example::

    input 'sample': expected dtype torch.float16 (ONNX FLOAT16), got torch.float32; cast with .to(torch.float16)
"""

from __future__ import annotations

__all__ = [
    "CopyWarning",
    "DTypeError",
    "DeviceError",
    "InputError",
    "ModelError",
    "OrtbindError",
    "OrtbindWarning",
    "ProviderError",
    "ProviderFallbackWarning",
    "RunError",
    "ShapeError",
]


class OrtbindError(Exception):
    """Base class of every exception raised by ortbind."""


class ModelError(OrtbindError, ValueError):
    """The model cannot be loaded, or declares inputs/outputs that ortbind cannot bind."""


class InputError(OrtbindError, ValueError):
    """A feed is missing, unknown, not a dense tensor, or laid out in a way that cannot be bound."""


class DTypeError(InputError, TypeError):
    """A feed or ``out=`` buffer has another dtype than the model declares."""


class ShapeError(OrtbindError, ValueError):
    """A feed or ``out=`` buffer has a shape that does not fit the model."""


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
