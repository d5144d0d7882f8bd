"""Reference runs and comparisons shared by the tests."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnxruntime as ort
import torch


def reference(
    model: bytes | str, feeds: Mapping[str, torch.Tensor], outputs: list[str] | None = None
) -> dict[str, np.ndarray]:
    """What plain ``InferenceSession.run`` with numpy returns for the same feeds."""
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = outputs or [o.name for o in sess.get_outputs()]
    values = sess.run(names, {k: v.detach().cpu().numpy() for k, v in feeds.items()})
    return dict(zip(names, values, strict=True))


def assert_equal_reference(got: Mapping[str, torch.Tensor], expected: Mapping[str, np.ndarray]) -> None:
    """Bit-for-bit: same names, shapes, dtypes and values."""
    assert list(got) == list(expected)
    for name, value in expected.items():
        tensor = got[name]
        assert isinstance(tensor, torch.Tensor), name
        assert tuple(tensor.shape) == value.shape, name
        np.testing.assert_array_equal(tensor.numpy(), value, err_msg=name)
