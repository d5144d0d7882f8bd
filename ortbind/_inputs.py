"""Inputs: check a call's feeds and bind them, in one pass.

Every call, bound call and rebind checks its tensors here, with the same errors: the common tensor
passes a few cheap tests; anything else takes :func:`~._binding.check_input`, which raises (or
copies, with ``allow_copy``) with a message saying why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from . import _binding
from ._binding import Binding
from ._metadata import TensorSpec
from ._ort import BindRefusedError, OrtCalls
from ._typecheck import is_mapping, named
from .errors import InputError

__all__ = ["InputChecker"]

_BIND = OrtCalls("bind")


class InputChecker:
    """Checks feeds against the model's inputs and binds them into a :class:`~._binding.Binding`.

    Args:
        specs: The model's inputs, in order.
        devices: Per input, where its tensor must live (the session's device, or the CPU for an
            input a CUDA session keeps in host memory).
        allow_copy: Copy (with a warning) an input that cannot be bound as it is, instead of refusing.
        overridable: Graph inputs with an initializer, which ortbind does not take (for messages).
    """

    def __init__(
        self,
        specs: Sequence[TensorSpec],
        devices: Sequence[torch.device],
        allow_copy: bool,
        overridable: Sequence[str] = (),
    ) -> None:
        self.specs = tuple(specs)
        self.overridable = frozenset(overridable)
        self.devices = tuple(devices)
        self.allow_copy = allow_copy
        self.index = {s.name: i for i, s in enumerate(specs)}
        self.ort_devices = tuple(_binding.make_ort_device(d) for d in devices)
        self.names = tuple(s.name for s in specs)
        self.every = tuple(range(len(self.names)))
        # (index, dtype, required address multiple, CUDA index or -1) per input.
        self._rows = tuple(
            (
                i,
                s.dtype,
                _binding.CUDA_ALIGNMENT if d.type == "cuda" else max(1, s.dtype.itemsize if s.dtype else 1),
                d.index if d.type == "cuda" else -1,
            )
            for i, (s, d) in enumerate(zip(specs, devices))
        )

    def check(
        self, feeds: Mapping[str, Any], binding: Binding | None = None
    ) -> tuple[list[torch.Tensor], tuple[torch.Size, ...], list[Any]]:
        """Check every feed; the tensors to bind, in input order, their shapes (the signature), and the
        caller's values they came from (read from ``feeds`` once).

        With ``binding``, each input is bound there in the same pass, unless the binding already
        holds exactly its address and shape (all a binding keeps of an input besides its fixed
        type and device), which saves a bind for an unchanged input.

        Raises:
            InputError, DTypeError, DeviceError: A feed is missing, unknown or cannot be bound.
        """
        try:
            values = [feeds[name] for name in self.names]
        except KeyError:
            first = next(s.name for s in self.specs if s.name not in feeds)
            raise InputError(self.missing_message(feeds), kind="input", name=first) from None
        except TypeError:
            self.mapping(feeds, "feeds")
            raise
        if len(feeds) != len(values):
            unknown = next(n for n in feeds if n not in self.index)
            raise InputError(self.unknown_message(str(unknown)), kind="input", name=str(unknown))
        tensors, shapes = self.accept(self.every, values, binding)
        return tensors, tuple(shapes), values

    def accept(
        self, indices: Sequence[int], values: Sequence[Any], binding: Binding | None = None
    ) -> tuple[list[torch.Tensor], list[torch.Size]]:
        """Check the tensors given for inputs ``indices``; the tensors to bind (each itself, a plain alias
        or a copy) and their shapes. With ``binding``, each is bound there unless held already.

        The common tensor passes a few cheap tests: a plain, dense, contiguous tensor of the right
        dtype and device, at an aligned address inside its own storage. (A sparse or MKL-DNN layout
        raises in ``data_ptr()`` or ``untyped_storage()``.) Anything else takes the checked path,
        which raises (or copies, with ``allow_copy``) saying why. Every input of every call passes
        here: plain calls, bind(), rebind() and resize().
        """
        tensors: list[torch.Tensor] = []
        shapes: list[torch.Size] = []
        rows = self._rows if indices is self.every else [self._rows[i] for i in indices]
        if binding is not None:
            addresses, held = binding.addresses, binding.shapes
        for (index, dtype, align, cuda_index), value in zip(rows, values):
            try:
                if (
                    type(value) is torch.Tensor
                    and value.dtype is dtype
                    and (value.is_cuda and value.get_device() == cuda_index if cuda_index >= 0 else value.is_cpu)
                    and value.is_contiguous()
                    and not value.is_neg()
                ):
                    address = value.data_ptr()
                    storage = value.untyped_storage()
                    shape = value.shape
                    if (
                        address != 0
                        and not address % align
                        and address + value.nbytes <= storage.data_ptr() + storage.nbytes()
                    ):
                        tensors.append(value)
                        shapes.append(shape)
                        if binding is not None and (addresses[index] != address or held[index] != shape):
                            self.bind_at(binding, index, address, shape)
                        continue
            except RuntimeError:  # a functionalized, nested or other tensor without plain memory
                pass
            spec = self.specs[index]
            tensor = _binding.check_input(spec.name, spec, value, self.devices[index], self.allow_copy)
            tensors.append(tensor)
            shapes.append(tensor.shape)
            if binding is not None:
                self.bind(binding, index, tensor)
        return tensors, shapes

    def bind(self, binding: Binding, index: int, tensor: torch.Tensor) -> None:
        """Bind one checked input (no-op when the binding holds it already)."""
        self.bind_at(binding, index, tensor.data_ptr(), tensor.shape)

    def bind_at(self, binding: Binding, index: int, address: int, shape: torch.Size) -> None:
        """Bind input ``index`` to ``shape`` at ``address``, memory the caller checked (no-op when held already)."""
        if binding.addresses[index] == address and binding.shapes[index] == shape:
            return
        binding.addresses[index] = -1
        name = self.specs[index].name
        try:
            with _BIND:
                binding.io.bind_input(name, self.ort_devices[index], self.specs[index].elem_type, shape, address)
        except BindRefusedError as exc:
            raise exc.named("input", name) from exc.__cause__
        binding.addresses[index], binding.shapes[index] = address, shape

    @staticmethod
    def mapping(feeds: object, what: str) -> Mapping[str, Any]:
        """``feeds`` if it is a mapping, else an :class:`~ortbind.InputError` saying ``what`` needed one."""
        if not is_mapping(feeds):
            raise InputError(
                f"{what}: expected a mapping of input name -> torch.Tensor, got {type(feeds).__name__}", kind="input"
            )
        return feeds

    def named(self, feeds: object, what: str) -> dict[str, Any]:
        """``feeds`` read once into a dict keyed by plain ``str`` names (see :func:`~._typecheck.named`)."""
        return named(
            self.mapping(feeds, what),
            what,
            lambda message, key: InputError(self.unknown_message(str(key)), kind="input", name=str(key)),
        )

    def missing_message(self, feeds: Mapping[str, Any]) -> str:
        missing = [s for s in self.specs if s.name not in feeds]
        names = ", ".join(repr(s.name) for s in missing)
        needs = "; ".join(str(s) for s in missing)
        return f"missing input{'s' if len(missing) > 1 else ''} {names}; the model needs {needs}"

    def unknown_message(self, name: str) -> str:
        known = ", ".join(repr(s.name) for s in self.specs) or "none"
        if name in self.overridable:
            return (
                f"input {name!r}: an initializer the model lets callers override; ortbind runs with the model's "
                f"value and takes only its other inputs ({known}); to override it, run the model with "
                f"onnxruntime.InferenceSession"
            )
        return f"input {name!r}: the model has no such input; its inputs are {known}"

    def require(self, name: object) -> int:
        """The index of input ``name``; an :class:`~ortbind.InputError` naming the inputs if there is none."""
        index = self.index.get(name) if isinstance(name, str) else None
        if index is None:
            raise InputError(self.unknown_message(str(name)), kind="input", name=str(name))
        return index
