"""Outputs of a call: which are asked for, per-call shapes, caller buffers and shared buffers, checked.

Plain calls and bound calls choose and check their outputs here, with the same errors, before
anything is bound; the executor allocates fresh outputs with :func:`allocators` and hands over
ORT-allocated ones with :func:`deliver`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from . import _binding, _overlap
from ._metadata import ModelSpec, TensorSpec
from ._plan import BEYOND_LIMIT, EXPECTED, INDEX, NAME, PASSTHROUGH, PREDICTED, PROBLEM, SHAPE, PlanCache, Slot, fixed
from ._shapes import format_dims, format_shape
from ._typecheck import is_mapping, is_tensor, named, plain_str, shape_of
from .errors import DTypeError, InputError, ModelError, OrtbindError, OutputError, ShapeError

__all__ = ["OutputChecker", "allocators", "deliver", "mapping_of", "no_dlpack", "unsupported_output"]


def unsupported_output(spec: TensorSpec) -> ModelError:
    """The error for an output whose type ortbind cannot bind, asked for by a call."""
    return ModelError(
        f"output {spec.name!r}: {spec.unsupported}; request the other outputs with run(feeds, output_names=[...])",
        kind="output",
        name=spec.name,
    )


def no_dlpack(spec: TensorSpec, reason: str) -> ShapeError:
    """The error for an output of a type ORT cannot hand over (float8) whose shape is unknown ahead, or
    known but beyond ``max_output_bytes``."""
    if BEYOND_LIMIT in reason:
        return ShapeError(
            f"output {spec.name!r}: its shape is known but left to ONNX Runtime ({reason}), which cannot hand "
            f"{spec.elem_type_name} tensors over through DLPack; pass out={{{spec.name!r}: buffer}} or raise "
            f"max_output_bytes",
            kind="output",
            name=spec.name,
        )
    return ShapeError(
        f"output {spec.name!r}: its shape cannot be resolved before the run ({reason or 'no rule applies'}), and "
        f"ONNX Runtime cannot hand {spec.elem_type_name} tensors over through DLPack; pass "
        f"output_shapes={{{spec.name!r}: (...)}} or out={{{spec.name!r}: buffer}}",
        kind="output",
        name=spec.name,
    )


def _not_an_input(output: str, source: object) -> InputError:
    """The error for a ``share=`` pair whose input is not one of the model's."""
    return InputError(
        f"share[{output!r}]: {source!r} is not an input of the model; name the input whose buffer {output!r} is "
        f"written into",
        kind="input",
        name=str(source),
    )


def mapping_of(value: object, what: str, kind: str, error: type[OrtbindError], example: str) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else ``error`` saying ``what`` expected a mapping of ``example``."""
    if not is_mapping(value):
        raise error(
            f"{what}: expected a mapping of {example}, got {type(value).__name__}; pass a dict",
            kind=kind,
        )
    return value


class OutputChecker:
    """Chooses and checks the outputs of a call.

    Args:
        spec: The model's interface.
        device: The session's device.
        plans: The plan cache (its output-size limit applies to per-call shapes too).
    """

    def __init__(self, spec: ModelSpec, device: torch.device, plans: PlanCache) -> None:
        self.spec = spec
        self.device = device
        self.plans = plans
        self.index = {s.name: i for i, s in enumerate(spec.outputs)}
        self.names = tuple(s.name for s in spec.outputs)
        self.all = tuple(range(len(spec.outputs)))
        inputs = {s.name for s in spec.inputs}
        self.passes_through = any(s.name in inputs for s in spec.outputs)  # a graph output that is an input

    def unknown_message(self, name: str) -> str:
        known = ", ".join(repr(s.name) for s in self.spec.outputs)
        return f"output {name!r}: the model has no such output; its outputs are {known}"

    def select(self, output_names: object) -> tuple[int, ...]:
        """The indices of the outputs asked for, in that order.

        Raises:
            OutputError: Not a sequence of names, an unknown name, or a name given twice.
        """
        single = plain_str(output_names)
        if single is not None:
            raise OutputError(
                f"output_names: expected a sequence of names, got the string {single!r}; pass [{single!r}]",
                kind="output",
                name=single,
            )
        if not isinstance(output_names, Sequence):
            raise OutputError(
                f"output_names: expected a sequence of output names, got {type(output_names).__name__}; pass a list "
                f"of names",
                kind="output",
            )
        known, indices = self.index, []
        for given in list(output_names):  # read once; each name as a plain str (a subclass's __hash__ could lie)
            name = given if type(given) is str else plain_str(given)
            index = None if name is None else known.get(name)
            if index is None:
                raise OutputError(self.unknown_message(str(given)), kind="output", name=str(given))
            indices.append(index)
        if len(set(indices)) != len(indices):
            twice = next(self.names[i] for n, i in enumerate(indices) if i in indices[:n])
            raise OutputError(
                f"output_names: {twice!r} is named twice; name each output once", kind="output", name=twice
            )
        selected = tuple(indices)
        return self.all if selected == self.all else selected  # every output, in order: the common call

    @staticmethod
    def snapshot(
        out: object, output_shapes: object, share: object
    ) -> tuple[dict[str, Any] | None, dict[str, tuple[int, ...]] | None, dict[str, str] | None]:
        """``out=``, ``output_shapes=`` and ``share=`` read once, before anything of the call is bound.

        Reading them runs the caller's code (a mapping's methods, an int-like's ``__index__``), which
        could re-point a tensor checked and bound already; after this, the call runs none.
        """
        if out is not None:
            out = named(
                mapping_of(out, "out", "out", OutputError, "output name -> tensor"),
                "out",
                lambda message, _: OutputError(message, kind="out"),
            )
        if output_shapes is not None:
            shapes = named(
                mapping_of(output_shapes, "output_shapes", "output", ShapeError, "output name -> shape"),
                "output_shapes",
                lambda message, _: ShapeError(message, kind="output"),
            )
            checked: dict[str, tuple[int, ...]] = {}
            for name, dims in shapes.items():  # read once: the caller's sequence runs no code after this
                checked[name] = shape_of(dims, f"output_shapes[{name!r}]", "output", name)
            output_shapes = checked
        if share is not None:
            share = named(
                mapping_of(share, "share", "output", OutputError, "output name -> input name"),
                "share",
                lambda message, _: OutputError(message, kind="output"),
            )
            for output, source in share.items():
                if type(source) is str:
                    continue
                input_name = plain_str(source)
                if input_name is None:
                    raise _not_an_input(output, source)
                share[output] = input_name
        return out, output_shapes, share

    def overrides(self, slots: Sequence[Slot], shapes: Mapping[str, tuple[int, ...]]) -> list[Slot]:
        """``slots`` with per-call ``output_shapes`` applied (rule a for this call); ``shapes`` as
        :meth:`snapshot` read and checked them.

        Raises:
            ShapeError: An output not in this call, or a shape of another rank than declared, or
                beyond ``max_output_bytes``.
        """
        wanted = {s[NAME] for s in slots}
        for name in shapes:
            if name not in wanted:
                raise ShapeError(
                    f"output_shapes[{name!r}]: not among the outputs of this call "
                    f"({', '.join(repr(n) for n in wanted)})",
                    kind="output",
                    name=str(name),
                )
        result = []
        for slot in slots:
            dims = shapes.get(slot[NAME])
            if dims is None:
                result.append(slot)
                continue
            self._check_rank(f"output_shapes[{slot[NAME]!r}]", slot[INDEX], dims, "output")
            self.plans.check_override(slot[INDEX], dims)
            result.append(fixed(slot, dims))
        return result

    def _check_rank(self, where: str, index: int, shape: Sequence[int], kind: str) -> None:
        """ORT checks a caller's output against the declared rank, after running the whole graph: say it now."""
        spec = self.spec.outputs[index]
        if spec.dims is not None and len(spec.dims) != len(shape):
            raise ShapeError(
                f"{where}: shape {format_shape(shape)} has rank {len(shape)}, but the model declares rank "
                f"{len(spec.dims)} {format_dims(spec.dims)}, and ONNX Runtime refuses a buffer of another rank; "
                f"leave {spec.name!r} out of out= and output_shapes= so that ORT allocates it",
                kind=kind,
                name=spec.name,
            )

    def shared(
        self,
        share: object,
        slots: Sequence[Slot],
        tensors: Sequence[torch.Tensor],
        given: Sequence[object],
        inputs: Mapping[str, int],
    ) -> dict[str, int]:
        """Check ``share=`` (output name -> input name); output name -> input index.

        Only for models that write the output in place into the input's buffer (ORT's
        GroupQueryAttention with a shared past/present KV buffer): the output is bound to the
        input's very memory, with the input's shape. ``tensors`` are the inputs as bound,
        ``given`` the caller's values they came from.

        Raises:
            OutputError: Not a mapping, an output not in this call, a pass-through output, an
                input shared twice, an input this call also returns as a pass-through output.
            InputError: An unknown input, or one bound as a copy (``allow_copy``).
            DTypeError: The output's declared type is not the input's.
            ShapeError: The input's rank is not the output's declared rank.
        """
        pairs = mapping_of(share, "share", "output", OutputError, "output name -> input name")
        by_name = {s[NAME]: s for s in slots}
        result: dict[str, int] = {}
        for output, source in pairs.items():
            slot = by_name.get(output) if isinstance(output, str) else None
            if slot is None:
                if isinstance(output, str) and output in self.index:
                    raise OutputError(
                        f"share[{output!r}]: not among the outputs of this call; add it to output_names",
                        kind="output",
                        name=output,
                    )
                raise OutputError(self.unknown_message(str(output)), kind="output", name=str(output))
            index = inputs.get(source) if isinstance(source, str) else None
            if index is None:
                raise _not_an_input(output, source)
            if slot[PASSTHROUGH] is not None:
                raise OutputError(
                    f"share[{output!r}]: it is the input {source!r} itself (a pass-through output); leave it out",
                    kind="output",
                    name=output,
                )
            if index in result.values():
                raise OutputError(
                    f"share[{output!r}]: input {source!r} is already shared with another output; "
                    f"each input's buffer can be written by one output",
                    kind="output",
                    name=output,
                )
            spec = self.spec.outputs[slot[INDEX]]
            tensor = tensors[index]
            if spec.dtype is not tensor.dtype:
                raise DTypeError(
                    f"share[{output!r}]: output {output!r} is {spec.dtype} (ONNX {spec.elem_type_name}), input "
                    f"{source!r} is {tensor.dtype}; only an input of the output's type can hold it",
                    kind="output",
                    name=output,
                )
            self._check_rank(f"share[{output!r}]", slot[INDEX], tensor.shape, "output")
            if tensor.device != self.device:
                raise InputError(
                    f"share[{output!r}]: input {source!r} is in host memory of a CUDA session, where ORT does not "
                    f"write outputs; it cannot be shared",
                    kind="input",
                    name=source,
                )
            if tensor.requires_grad:
                raise InputError(
                    f"share[{output!r}]: input {source!r} requires grad, and the run writes it in place outside "
                    f"autograd (torch's in-place ops refuse that too); pass a tensor that does not require grad "
                    f"(e.g. .detach())",
                    kind="input",
                    name=source,
                )
            written = _binding.unwritable(tensor)
            if written is not None:
                raise InputError(f"share[{output!r}]: input {source!r} {written}", kind="input", name=source)
            if tensor is not given[index] and _binding.plain(given[index]).data_ptr() != tensor.data_ptr():  # type: ignore[arg-type]
                raise InputError(
                    f"share[{output!r}]: input {source!r} cannot be bound as it is and is bound as a copy "
                    f"(allow_copy), so {output!r} would be written into the copy, never into your tensor; pass "
                    f"{source!r} as a contiguous tensor on {self.device} (e.g. .contiguous()), and keep using that one",
                    kind="input",
                    name=source,
                )
            result[output] = index
        for slot in slots if self.passes_through else ():
            if slot[PASSTHROUGH] is not None and slot[PASSTHROUGH] in result.values():
                output = next(o for o, i in result.items() if i == slot[PASSTHROUGH])
                raise OutputError(
                    f"share[{output!r}]: the run writes input {slot[NAME]!r} in place, and this call also returns "
                    f"{slot[NAME]!r} as an output (the input passed through), which would then be the written "
                    f"values, not the input's; leave {slot[NAME]!r} out of output_names, or do not share",
                    kind="output",
                    name=slot[NAME],
                )
        # ORT writes a shared input while it runs: no other input may live in that memory.
        names = list(inputs)
        _overlap.check_no_overlap(
            ((o, tensors[i]) for o, i in result.items()),
            ((names[i], t) for i, t in enumerate(tensors) if i not in result.values()),
            label="share",
        )
        return result

    def buffers(
        self,
        out: object,
        slots: Sequence[Slot],
        tensors: Sequence[torch.Tensor],
        input_names: Sequence[str],
        shared: Mapping[str, int] | None = None,
        callers: Sequence[object] = (),
    ) -> dict[str, torch.Tensor]:
        """Check ``out=`` buffers against the outputs of this call; the buffers to write, by name.

        ``tensors`` are the inputs as bound; ``callers``, the caller's values they came from, which an
        ``out=`` buffer must not overlap either (an input bound as a copy is read from the caller's).

        Raises:
            OutputError: Not a mapping, an unknown output or one not in this call, a buffer that
                cannot be written (or overlaps another buffer or an input), a shared output.
            DTypeError, DeviceError: Wrong dtype or device.
            ShapeError: A shape other than the output's for these inputs, or another rank than declared.
        """
        given = mapping_of(out, "out", "out", OutputError, "output name -> tensor")
        by_name = {s[NAME]: s for s in slots}
        buffers: dict[str, torch.Tensor] = {}
        for name, value in given.items():
            slot = by_name.get(name) if isinstance(name, str) else None
            if slot is None:
                if isinstance(name, str) and name in self.index:
                    raise OutputError(
                        f"out {name!r}: not among output_names of this call; add it there or drop the buffer",
                        kind="out",
                        name=name,
                    )
                raise OutputError(
                    self.unknown_message(str(name)).replace("output", "out", 1), kind="out", name=str(name)
                )
            if shared and name in shared:
                raise OutputError(
                    f"out {name!r}: it is shared with input {input_names[shared[name]]!r} (share=); "
                    f"give it one or the other",
                    kind="out",
                    name=name,
                )
            spec = self.spec.outputs[slot[INDEX]]
            if slot[PROBLEM]:
                raise unsupported_output(spec)
            # A pass-through output is the input itself: its buffer must have the input's shape. A prediction
            # no run has confirmed yet is not held against the buffer: the run computes it with ORT
            # allocating, and the buffer is compared with what it produced before it receives a copy.
            source = slot[PASSTHROUGH]
            passthrough = source is not None
            expected = slot[EXPECTED]
            unconfirmed = slot[PREDICTED] and slot[SHAPE] is None and expected is not None and all(expected)
            expected = tensors[source].shape if source is not None else None if unconfirmed else slot[EXPECTED]
            buffer = _binding.check_out_buffer(
                name, spec, value, self.device, expected, slot[PREDICTED] and not passthrough
            )
            if expected is None:
                self._check_rank(f"out {name!r}", slot[INDEX], buffer.shape, "out")
            buffers[name] = buffer
        inputs = list(zip(input_names, tensors))
        for input_name, tensor, caller in zip(input_names, tensors, callers):
            if caller is not tensor and is_tensor(caller):
                inputs.append((input_name, _binding.plain(caller)))
        _overlap.check_no_overlap(buffers.items(), inputs)
        return buffers


def allocators(spec: ModelSpec, device: torch.device) -> tuple[Any, ...]:
    """Per output, what allocates its fresh tensors: ``new_empty`` of an empty tensor of its dtype on ``device``.

    ``proto.new_empty(*sizes)`` takes dtype and device from the prototype, so neither is parsed
    again on every call (``torch.empty(*sizes, dtype=..., device=...)`` costs about 0.3 µs more
    for a small tensor), and neither ``torch.set_default_dtype`` nor ``set_default_device`` can
    redirect it. ``None`` for an output ortbind cannot bind.
    """
    prototypes: dict[torch.dtype, Any] = {}
    allocate: list[Any] = []
    for output in spec.outputs:
        if output.dtype is None:
            allocate.append(None)
            continue
        if output.dtype not in prototypes:
            with _binding.without_modes(), torch.inference_mode(False):  # a session made under a fake mode too
                prototypes[output.dtype] = torch.empty(0, dtype=output.dtype, device=device).new_empty
        allocate.append(prototypes[output.dtype])
    return tuple(allocate)


def check_given(slot: Slot, shape: tuple[int, ...]) -> None:
    """Raise :class:`~ortbind.ShapeError` if an output whose shape the caller gave (``output_shapes``) came out
    another (one ORT allocated, an empty one, a pass-through: none was bound at that shape for ORT to refuse)."""
    expected = slot[EXPECTED]
    if expected is not None and not slot[PREDICTED] and shape != expected:
        name = slot[NAME]
        raise ShapeError(
            f"output_shapes[{name!r}]: the run produced shape {format_shape(shape)}, not the {format_shape(expected)} "
            f"given; give the shape the model produces, or leave {name!r} out of output_shapes= so that it follows "
            f"the model",
            kind="output",
            name=name,
        )


def deliver(slot: Slot, buffer: torch.Tensor | None, shape: tuple[int, ...], value: torch.Tensor) -> torch.Tensor:
    """What a call returns for an output ORT allocated: its tensor, or the caller's buffer holding it."""
    if buffer is None:
        check_given(slot, shape)
        return value
    check_fits(slot, buffer, shape)
    if buffer.numel():  # a prediction being checked: ORT wrote its own memory
        buffer.copy_(value)
    return buffer


def check_fits(slot: Slot, buffer: torch.Tensor, shape: tuple[int, ...]) -> None:
    """Raise :class:`~ortbind.ShapeError` if a caller's ``out=`` buffer does not have the shape the run produced."""
    if shape != tuple(buffer.shape):
        whence = " that the dims the model declares or infers gave" if slot[PREDICTED] else ""
        raise ShapeError(
            f"out {slot[NAME]!r}: the run produced shape {format_shape(shape)}, not the expected "
            f"{format_shape(buffer.shape)}{whence}; pass a buffer of shape {format_shape(shape)}"
            f"{' (later calls take it)' if slot[PREDICTED] else ''}",
            kind="out",
            name=slot[NAME],
        )
