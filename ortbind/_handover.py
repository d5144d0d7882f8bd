"""The handover of outputs ORT allocated: each becomes a torch tensor through DLPack, without a copy.

Where ortbind cannot know an output's shape ahead (rule d), ORT allocates it; the tensor handed to
the caller owns ORT's value through DLPack's deleter, so it stays valid (and is never written again)
after later runs. float8 outputs cannot go through DLPack: only their shapes come back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.utils.dlpack

from ._dtypes import from_onnx
from ._metadata import ModelSpec, TensorSpec
from ._ort import OrtCalls
from ._outputs import no_dlpack
from ._plan import DTYPE, EXPECTED, INDEX, PREDICTED, REASON
from ._prepared import Prepared

__all__ = ["collect", "dlpack_supported", "from_capsule"]

_RUN = OrtCalls("run")


def from_capsule(capsule: Any, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A tensor over an output ORT allocated, from its DLPack capsule (``None`` for an empty output).

    The tensor owns the ORT value through DLPack's deleter, so it stays valid after later runs.
    """
    if capsule is None:
        return torch.empty(tuple(shape), dtype=dtype, device=device)
    tensor = torch.utils.dlpack.from_dlpack(capsule)
    if dtype is torch.bool:
        tensor = tensor.view(torch.bool)  # DLPack carries bool as uint8
    return tensor


def dlpack_supported(spec: TensorSpec) -> bool:
    """Whether ORT can hand an output of this type over through DLPack (float8 it cannot)."""
    row = from_onnx(spec.elem_type)
    return row is not None and (row.numpy is not None or row.torch is torch.bfloat16)


def collect(
    prepared: Prepared,
    transient: bool,
    dlpack_ok: Sequence[bool],
    spec: ModelSpec,
    device: torch.device,
    copy: bool,
    stream: torch.cuda.Stream | None,
) -> list[tuple[tuple[int, ...], torch.Tensor | None]]:
    """Take over the outputs ORT allocated in a prepared call's run, through DLPack (float8: their shapes only).

    Args:
        prepared: The call; its ``pending`` outputs are the ones ORT allocated.
        transient: A plain call's binding: release ORT's outputs from it once taken.
        dlpack_ok: Per model output, whether ORT can hand it over through DLPack.
        spec: The model's interface (for messages).
        device: Where the outputs live.
        copy: Hand over copies in torch's memory (a CUDA-graph session: see below).
        stream: ORT's CUDA stream, made to wait for those copies; ``None`` on CPU.

    Returns:
        Per pending output, its shape and its tensor (``None``: float8, shape only).
    """
    got: list[tuple[tuple[int, ...], Any]] = []
    io = prepared.binding.io
    with _RUN:
        values = io.get_outputs()  # a view into the binding: convert before clearing it
        for position, slot, _ in prepared.pending:
            value = values[position]
            shape = tuple(value.shape())
            handover = dlpack_ok[slot[INDEX]] and all(shape)
            got.append((shape, value.to_dlpack() if handover else None))
        del values
        if transient:
            # The binding holds a reference to what ORT allocated; drop it so the memory lives
            # exactly as long as the caller's tensors, not until this thread's next call.
            io.clear_binding_outputs()
    if transient:
        prepared.binding.outputs = None
    produced: list[tuple[tuple[int, ...], torch.Tensor | None]] = []
    cloned = False
    for (shape, capsule), (_, slot, _) in zip(got, prepared.pending):
        if capsule is None and not dlpack_ok[slot[INDEX]] and all(shape):
            if not slot[PREDICTED] or slot[EXPECTED] is None:
                raise no_dlpack(spec.outputs[slot[INDEX]], slot[REASON])
            produced.append((shape, None))
            continue
        assert slot[DTYPE] is not None
        tensor = from_capsule(capsule, shape, slot[DTYPE], device)
        if copy and capsule is not None:
            # In a CUDA-graph session ORT's arena blocks are shared with captured graphs, whose
            # replays write into them without allocating: hand over a copy in torch's memory.
            tensor = tensor.clone()
            cloned = True
        produced.append((shape, tensor))
    if cloned and stream is not None:
        # ORT frees its blocks now, but the copies are still queued on torch's stream: later work
        # on ORT's stream (a replay) must wait for them.
        stream.wait_stream(torch.cuda.current_stream(device))
    return produced
