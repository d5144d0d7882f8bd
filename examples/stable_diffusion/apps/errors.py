"""The errors every surface answers with, each carrying whose fault it is: its HTTP status.

====================  ======  ==========================================================
error                 status  whose fault
====================  ======  ==========================================================
:class:`BodyError`    400/413 the caller's: a body that is not a JSON object, or too large
:class:`RequestError` 422     the caller's: a field missing, of the wrong type or out of range
:class:`CallerGoneError`   499     nobody's: the caller left, and the run was stopped for it
:class:`ModelFailedError` 500     the server's: the model or the machine failed a valid request
:class:`RunTimeoutError`     503     the server's: the run took longer than this server allows
====================  ======  ==========================================================

The command lines print the message, the page shows it, the server sends :meth:`AppError.as_json`;
none of them shows a traceback.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = ["AppError", "BodyError", "CallerGoneError", "ModelFailedError", "RequestError", "RunTimeoutError"]


class AppError(Exception):
    """An answer other than pictures.

    Attributes:
        status: The HTTP status the server answers with.
        field: The request field at fault, or None when it is not one field's.
        message: What happened and what to do, as the caller sees it.
    """

    default_status: ClassVar[int] = 500

    def __init__(self, message: str, field: str | None = None, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status or self.default_status

    def as_json(self) -> dict[str, str | None]:
        """The server's JSON answer: ``{"error": message, "field": field}``."""
        return {"error": self.message, "field": self.field}


class RequestError(AppError, ValueError):
    """A request field is missing, of the wrong type or out of range; the message starts with its name."""

    default_status = 422

    def __init__(self, field: str, message: str, *, status: int | None = None) -> None:
        super().__init__(f"{field}: {message}", field, status=status)


class BodyError(RequestError):
    """The HTTP body is not a JSON object (400), or is larger than the server takes (413)."""

    default_status = 400

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__("body", message, status=413 if too_large else None)


class ModelFailedError(AppError, RuntimeError):
    """The model or the machine failed a request that was valid: the server's fault, not the caller's."""

    default_status = 500


class RunTimeoutError(AppError):
    """The run went past the time this server gives one request, and was stopped."""

    default_status = 503


class CallerGoneError(AppError):
    """Every caller of a run left before it finished, and the run was stopped."""

    default_status = 499
