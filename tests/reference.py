"""Reference runs, comparisons and subprocess runs shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx.parser
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


REPO_ROOT = Path(__file__).resolve().parents[1]


def run_python(*args: str, timeout: float, check: bool = False) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in a fresh interpreter at the repo root, with the repo importable."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


_IDENTITY = onnx.parser.parse_model(
    '<ir_version: 8, opset_import: ["" : 17]> g (float[N] x) => (float[N] y) { y = Identity(x) }'
).SerializeToString()


def cuda_provider_loads() -> bool:
    """Whether torch sees a GPU and onnxruntime's CUDA provider really loads (not just is listed)."""
    if not torch.cuda.is_available():
        return False
    try:
        session = ort.InferenceSession(_IDENTITY, providers=["CUDAExecutionProvider"])
    except Exception:  # ORT raises its own types when the provider library is broken
        return False
    return "CUDAExecutionProvider" in session.get_providers()
