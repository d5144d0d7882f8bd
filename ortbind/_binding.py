"""Torch tensors <-> ONNX Runtime bindings: validation, pointers, devices, DLPack, streams.

ONNX Runtime trusts a bound pointer blindly: a wrong dtype, a non-contiguous layout or a buffer
smaller than the declared shape reads or writes out of bounds. Every check that protects memory
lives here and runs before anything is bound.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final

import torch
import torch.utils._python_dispatch
import torch.utils.dlpack
from onnxruntime.capi import _pybind_state as ort_c
from onnxruntime.capi.onnxruntime_inference_collection import OrtDevice

from ._metadata import TensorSpec
from ._ort import OrtCalls
from ._shapes import format_shape
from ._typecheck import is_tensor
from .errors import CopyWarning, DeviceError, DTypeError, InputError, OutputError, ShapeError, _warn

__all__ = [
    "CUDA_ALIGNMENT",
    "Binding",
    "CudaStreamOrder",
    "ThreadBindings",
    "check_input",
    "check_out_buffer",
    "check_tensor",
    "device_capacity",
    "dispatch_modes",
    "function_mode_enabled",
    "make_ort_device",
    "plain",
    "short_storage",
    "unwritable",
    "without_modes",
]


_BIND = OrtCalls("bind")


def device_capacity(device: torch.device) -> int:
    """Bytes a single output may take on ``device`` by default: all of its memory."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX
        return 1 << 62


def make_ort_device(device: torch.device) -> Any:
    """The ORT device object for a torch device; built once per session (it costs ~0.4 µs)."""
    kind = "cuda" if device.type == "cuda" else "cpu"
    return OrtDevice.make(kind, device.index or 0)._get_c_device()


def _device_str(device: torch.device) -> str:
    return str(device)


def _where(kind: str, name: str) -> str:
    return f"{kind} {name!r}"


CUDA_ALIGNMENT: Final = 16
"""Bytes a bound CUDA buffer's address must be a multiple of.

Several CUDA kernels of ONNX Runtime load 16 bytes at a time (``int4``/``float4``/``half2`` casts in
Transpose, GroupNorm, FastGelu, AddBiasTranspose) without checking the pointer, trusting ORT's own
allocator (256-byte aligned). A torch view at an element offset is aligned only to its element
size; a misaligned 16-byte access is a CUDA "misaligned address" fault that poisons the context.
"""


function_mode_enabled = torch._C._is_torch_function_mode_enabled
dispatch_modes = torch._C._len_torch_dispatch_stack
"""Whether torch function modes, and how many dispatch modes, are active: ``if function_mode_enabled() or
dispatch_modes(): with without_modes(): ...`` at each entry point (two C calls where no mode is on)."""


@contextlib.contextmanager
def without_modes() -> Iterator[None]:
    """Torch function and dispatch modes off, for ortbind's own work on tensors.

    Under ``torch.set_default_device(...)`` (a torch function mode) ``torch.empty`` would allocate
    elsewhere than the session's device; under a fake or meta dispatch mode it would allocate no
    memory at all, and ORT would write through whatever pointer came back; and a function mode
    answers ``tensor.shape`` or ``data_ptr()`` itself, so the checks would read what it says.
    """
    with torch._C.DisableTorchFunction(), torch.utils._python_dispatch._disable_current_modes():
        yield


def plain(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as a plain ``torch.Tensor`` whose methods and properties cannot be overridden.

    A subclass may override ``data_ptr``, ``shape`` or ``is_contiguous`` in Python, or answer them
    from ``__torch_function__``; ORT must be handed what the memory really is. A plain tensor is
    returned as it is; a subclass gets an alias of the same memory made with torch function off.
    """
    if type(tensor) is torch.Tensor:
        return tensor
    with torch._C.DisableTorchFunctionSubclass():
        return torch.Tensor.as_subclass(tensor, torch.Tensor)


_PLAIN_DISPATCH = inspect.getattr_static(torch.Tensor, "__torch_dispatch__")


def _dispatches(cls: type) -> bool:
    """Whether a tensor subclass has a ``__torch_dispatch__`` of its own (a wrapper subclass).

    Read statically: ``cls.__torch_dispatch__`` would run a descriptor of the caller's, code that
    could re-point a tensor checked and bound already.
    """
    return cls is not torch.Tensor and inspect.getattr_static(cls, "__torch_dispatch__", None) is not _PLAIN_DISPATCH


def _storage_problem(tensor: torch.Tensor) -> str | None:
    """Why ``tensor`` has no real memory ORT could read or write, or ``None`` if it has."""
    cls = type(tensor)
    if _dispatches(cls):
        # FakeTensor, FunctionalTensor, DTensor and other wrapper subclasses: their data_ptr is
        # null or belongs to something else; ORT would dereference garbage.
        return f"it is a {cls.__module__}.{cls.__qualname__}, a tensor subclass without plain memory of its own"
    tensor = plain(tensor)
    if tensor.is_nested:
        return "it is a nested (jagged) tensor, whose rows are not one dense block"
    if tensor.is_meta:
        return "it is a meta tensor (shape and dtype only, no memory)"
    if torch._C._functorch.is_functorch_wrapped_tensor(tensor) or torch._is_functional_tensor(tensor):
        return "it is a functionalized or functorch-wrapped tensor (torch.func / torch.compile tracing)"
    if tensor._is_zerotensor():
        return "it is an efficient zero tensor (no memory behind it)"
    if tensor.numel() and not tensor.data_ptr():
        return "its data pointer is null"
    return short_storage(tensor)


def short_storage(tensor: torch.Tensor) -> str | None:
    """Why a plain tensor's storage does not hold all its elements (a storage resized under it), or ``None``.

    ``untyped_storage().resize_(0)`` (how FSDP frees parameters) leaves every view of it pointing
    at base + offset with nothing behind it; ORT would read or write past the allocation.
    """
    if not tensor.numel():
        return None
    storage = tensor.untyped_storage()
    # The last element's offset follows the strides (an expanded or transposed view reaches less
    # or other memory than numel elements), then one element more.
    last = sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()))
    end = tensor.data_ptr() + (last + 1) * tensor.element_size()
    available = storage.data_ptr() + storage.nbytes()
    if end <= available:
        return None
    return (
        f"its storage holds {storage.nbytes()} bytes, but its elements reach byte "
        f"{end - storage.data_ptr()} (the storage was resized under it)"
    )


def check_tensor(
    kind: str,
    name: str,
    spec: TensorSpec,
    value: object,
    device: torch.device,
) -> torch.Tensor:
    """Check everything but contiguity, lazy bits and alignment: type, storage, dtype, device.

    Returns:
        The tensor to bind: ``value`` itself, or for a subclass a plain alias of its memory (see
        :func:`plain`).

    Args:
        kind: ``"input"`` or ``"out"``, for messages.
        name: The input or output name.
        spec: Its declared spec.
        value: What the caller passed.
        device: The session's device.
    """
    where = _where(kind, name)
    error = InputError if kind == "input" else OutputError
    if not is_tensor(value):
        hint = " convert it with torch.from_numpy(...)" if type(value).__module__ == "numpy" else ""
        raise error(
            f"{where}: expected a torch.Tensor, got {type(value).__module__}.{type(value).__qualname__};"
            f"{hint or ' wrap it with torch.as_tensor(...)'}",
            kind=kind,
            name=name,
        )
    cls = type(value)
    if not _dispatches(cls):
        # From here on the plain alias: no Python override of the caller's class runs (it could
        # re-point a tensor already checked and bound, between the check and the run).
        value = plain(value)
        if value.layout is not torch.strided:
            raise error(
                f"{where}: expected a dense (strided) tensor, got layout {value.layout}; convert it with .to_dense()",
                kind=kind,
                name=name,
            )
    problem = _storage_problem(value)
    if problem is not None:
        raise error(
            f"{where}: {problem}; ONNX Runtime needs a tensor backed by real memory, "
            f"e.g. torch.empty(...) or .clone() of a real tensor, outside fake/meta tracing",
            kind=kind,
            name=name,
        )
    if value.dtype is not spec.dtype:
        raise DTypeError(
            f"{where}: expected dtype {spec.dtype} (ONNX {spec.elem_type_name}), got {value.dtype}; "
            f"cast with .to({spec.dtype})",
            kind=kind,
            name=name,
        )
    if value.device != device:
        raise DeviceError(
            f"{where}: expected a tensor on {_device_str(device)} (the session's device), "
            f"got {_device_str(value.device)}; move it with .to({_device_str(device)!r})",
            kind=kind,
            name=name,
        )
    return value


def layout_problem(tensor: torch.Tensor, device: torch.device) -> tuple[str, str] | None:
    """Why ORT would read ``tensor``'s memory wrongly, and the fix; ``None`` if it reads it right.

    Covers what the dtype/device checks do not: a strided layout (ORT reads one dense block), a
    lazy negation or conjugation bit (ORT reads the memory without applying it), and an address
    not aligned for the kernels that may read it.
    """
    if not tensor.is_contiguous():
        return (
            f"tensor is not contiguous (shape {format_shape(tensor.shape)}, strides {tuple(tensor.stride())})",
            ".contiguous()",
        )
    if tensor.is_neg():
        return "tensor has torch's lazy negation bit set (ORT would read the un-negated memory)", ".resolve_neg()"
    if tensor.is_conj():
        return "tensor has torch's lazy conjugation bit set (ORT would read the unconjugated memory)", ".resolve_conj()"
    if tensor.numel():
        address = tensor.data_ptr()
        if address % tensor.element_size():
            return (
                f"its address is {address % tensor.element_size()} bytes off a multiple of its "
                f"{tensor.element_size()}-byte element size",
                ".clone()",
            )
        if device.type == "cuda" and address % CUDA_ALIGNMENT:
            return (
                f"its address is {address % CUDA_ALIGNMENT} bytes past a {CUDA_ALIGNMENT}-byte boundary "
                f"(a view at an element offset); CUDA kernels may load {CUDA_ALIGNMENT} bytes at a time",
                ".clone()",
            )
    return None


def check_input(
    name: str,
    spec: TensorSpec,
    value: object,
    device: torch.device,
    allow_copy: bool,
) -> torch.Tensor:
    """The slow path for an input that failed the fast checks: raise, or copy if allowed.

    Returns:
        The tensor to bind: ``value`` itself, or a fresh contiguous, resolved, aligned copy when
        ``allow_copy`` is set (with a :class:`CopyWarning`). The caller must keep it alive until
        the run returns.
    """
    tensor = check_tensor("input", name, spec, value, device)
    problem = layout_problem(tensor, device)
    if problem is None:
        return tensor
    why, fix = problem
    if not allow_copy:
        raise InputError(
            f"input {name!r}: {why}; pass {fix}, or create the session with allow_copy=True to have "
            f"ortbind copy it (with a CopyWarning)",
            kind="input",
            name=name,
        )
    _warn(f"input {name!r}: copied because {why} (allow_copy=True)", CopyWarning)
    # clone() gives fresh, dense, resolved memory from torch's allocator (aligned to >= 64 bytes); a
    # normal tensor even under inference mode, as a bound call refreshes it in place outside it too.
    with torch.inference_mode(False):
        copy = tensor.resolve_conj().resolve_neg().clone(memory_format=torch.contiguous_format)
    assert layout_problem(copy, device) is None
    return copy


def unwritable(tensor: torch.Tensor) -> str | None:
    """Why torch would not let ``tensor`` be written in place here (ORT writes it so), or ``None``."""
    if tensor.is_inference() and not torch.is_inference_mode_enabled():
        return (
            "is an inference tensor (made under torch.inference_mode()), which torch lets no one write outside "
            "inference mode; pass a tensor made outside it, or make the call inside torch.inference_mode()"
        )
    return None


def check_out_buffer(
    name: str,
    spec: TensorSpec,
    value: object,
    device: torch.device,
    shape: Sequence[int] | None,
    predicted: bool = False,
) -> torch.Tensor:
    """Validate a caller's ``out=`` buffer; it is written in place, so it is never copied.

    ``shape``: the shape it must have (``None``: unknown ahead); ``predicted``: that shape comes from
    the model's declared or inferred dims, which the message then says.
    """
    tensor = check_tensor("out", name, spec, value, device)
    if tensor.requires_grad:
        raise OutputError(
            f"out {name!r}: buffer requires grad; ONNX Runtime writes it outside autograd, as torch's own "
            f"out= ops refuse to; pass a tensor that does not require grad (e.g. torch.empty_like(t))",
            kind="out",
            name=name,
        )
    written = unwritable(tensor)
    if written is not None:
        raise OutputError(f"out {name!r}: buffer {written}", kind="out", name=name)
    problem = layout_problem(tensor, device)
    if problem is not None:
        why, _ = problem
        raise OutputError(
            f"out {name!r}: buffer cannot be written as it is: {why}; pass a fresh buffer from torch.empty(...)",
            kind="out",
            name=name,
        )
    if shape is not None and tuple(tensor.shape) != tuple(shape):
        raise ShapeError(
            f"out {name!r}: expected shape {format_shape(shape)} for these inputs"
            f"{' (from the dims the model declares or infers for it)' if predicted else ''}, "
            f"got {format_shape(tensor.shape)}; allocate it with that shape",
            kind="out",
            name=name,
        )
    return tensor


class CudaStreamOrder:
    """Orders ORT's compute stream against torch's current stream with events, never a full sync.

    ORT runs its kernels on ``stream`` (given to it as ``user_compute_stream``). Before a run,
    that stream waits for work already queued on the caller's current stream (which produced the
    inputs); after the run, the caller's stream waits for ORT's, so whatever reads the outputs
    next is ordered after ORT wrote them. When the caller already works on ``stream`` itself,
    both waits are skipped.

    With ``stream=None`` (an adopted session whose ORT stream is unknown) the caller's stream is
    synchronized before the run instead, and runs must be synchronous (ORT then blocks until its
    own stream is done); ortbind refuses ``synchronize=False`` for such sessions.

    The session's device is made current for the run and the caller's restored after: ORT does
    not call ``cudaSetDevice`` when a run starts on a user compute stream, so without this a
    session on ``cuda:1`` would launch its kernels while device 0 is current.
    """

    def __init__(self, stream: torch.cuda.Stream | None, device: torch.device) -> None:
        self.stream = stream
        self.device = device
        self.index = device.index if device.index is not None else 0

    def before(self, tensors: Iterable[torch.Tensor], asynchronous: bool) -> tuple[torch.cuda.Stream | None, int]:
        """Make the session's device current and ORT's stream wait for the caller's.

        For an asynchronous run (``disable_synchronize_execution_providers``), every tensor the
        run reads or writes is recorded as in use on ORT's stream, so torch's caching allocator
        does not hand its memory out again while ORT may still use it.
        """
        previous = torch.cuda._exchange_device(self.index)
        current = torch.cuda.current_stream(self.device)
        if self.stream is None:
            current.synchronize()
            return None, previous
        if asynchronous:
            for tensor in tensors:
                if tensor.is_cuda:
                    tensor.record_stream(self.stream)
        if current == self.stream:
            return None, previous
        self.stream.wait_stream(current)
        return current, previous

    def after(self, state: tuple[torch.cuda.Stream | None, int]) -> None:
        """Make the caller's stream wait for ORT's; restore the caller's current device."""
        current, previous = state
        if current is not None and self.stream is not None:
            current.wait_stream(self.stream)
        torch.cuda._exchange_device(previous)


class Binding:
    """An ORT IOBinding and what it holds, so an unchanged input is not bound again.

    Attributes:
        io: The ORT ``SessionIOBinding`` (creating one costs about 0.35 µs).
        addresses: Per input, the address it holds (-1: nothing).
        shapes: Per input, the shape it holds.
        outputs: The output indices last bound by a plain call (``None``: nothing kept).
        busy: A plain call is using it (a call made inside that one takes another binding).
        bound_outputs: Output name -> ``(address, shape)`` a bound call's binding holds, so
            re-binding it after a rebind() skips outputs that did not change.
    """

    __slots__ = ("addresses", "bound_outputs", "busy", "io", "outputs", "shapes")

    def __init__(self, session: Any, inputs: int) -> None:
        self.io = ort_c.SessionIOBinding(session)
        self.addresses: list[int] = [-1] * inputs
        self.shapes: list[torch.Size | None] = [None] * inputs
        self.outputs: tuple[int, ...] | None = None
        self.busy = False
        self.bound_outputs: dict[str, tuple[int, torch.Size]] = {}


class ThreadBindings:
    """Each thread's binding for the plain calls of one session.

    Reused by its thread (making one costs about as much as the rest of a tiny call): every call
    re-binds each output it asks for and each input whose address or shape changed, and clears
    the old outputs first when it asks for others. A call made from user code inside a busy one
    (a subclass's ``__torch_function__``, a mapping's methods) gets its own.

    Args:
        session: ORT's C session object.
        inputs: How many inputs the model has.
    """

    def __init__(self, session: Any, inputs: int) -> None:
        self._session, self._inputs = session, inputs
        self._local = threading.local()

    def take(self, outputs: tuple[int, ...]) -> Binding:
        """This thread's binding for one call, for these outputs; the caller marks it busy (and clears
        that, or :meth:`drop`s it if the call fails)."""
        local = self._local
        binding: Binding | None = getattr(local, "binding", None)
        if binding is None or binding.busy:
            fresh = Binding(self._session, self._inputs)
            fresh.outputs = outputs
            if binding is None:
                local.binding = fresh
            return fresh
        if binding.outputs is not outputs and binding.outputs != outputs:
            if binding.outputs is not None:
                with _BIND:
                    binding.io.clear_binding_outputs()
            binding.outputs = outputs
        return binding

    def drop(self, binding: Binding) -> None:
        """Forget ``binding`` if it is this thread's (a call that failed with it)."""
        if getattr(self._local, "binding", None) is binding:
            self._local.binding = None

    def new(self) -> Binding:
        """A fresh binding, nothing bound, of no thread (a bound call's, a retry's)."""
        return Binding(self._session, self._inputs)
